/* calibrate.h: TailorKV's offline layer identification (arXiv 2505.19586, section 3.2).
 *
 * Prefill a calibration text with full-precision (f32) KV stores. For each layer, take the
 * query rows of the last n_q positions and every query head; A = softmax over the keys the row
 * sees (GQA: the head's KV head; sliding-window layers: their window). Per row, the mass of its
 * largest k = ceil(top * n_visible) weights; the layer's dense-preference score is
 *   P_l = mean over rows and heads of (1 - top-k mass),
 * the attention mass outside each row's top 5%. Dense ("quantization-friendly") iff P_l > tau.
 *
 * The probe is a KV store that wraps the session's own store (whose output the model uses
 * unchanged) and keeps an f32 copy of the keys to score the chosen rows exactly. */
#ifndef TL_CALIBRATE_H
#define TL_CALIBRATE_H

#include "session.h"

/* 1 - (sum of the k largest of softmax(logits[0..n))), k = max(1, ceil(top * n)).
 * scratch: n floats. */
double tl_calib_row_score(const float *logits, int n, double top, float *scratch);

/* A probe around `inner` (taken over: destroying the probe destroys it). Rows at absolute
 * positions >= first_pos are scored. */
tl_kv_layer *tl_calib_probe_new(tl_kv_layer *inner, int first_pos, double top, tl_error *err);
/* Mean score so far and the number of (row, head) pairs it averages. */
double tl_calib_probe_score(const tl_kv_layer *probe, int64_t *count);

typedef struct {
    int n_q;      /* query rows scored (32) */
    double top;   /* fraction of keys counted as "top" (0.05) */
    int n_threads;
    int chunk;
} tl_calib_params;

/* Run the calibration over tokens[0..n) of model m: scores[n_layer] (NAN for none), window[i]
 * true for sliding-window layers (they keep their window whatever the plan). */
int tl_calibrate(tl_model *m, const int32_t *tokens, int n, const tl_calib_params *p, double *scores, bool *window,
                 tl_error *err);

#endif
