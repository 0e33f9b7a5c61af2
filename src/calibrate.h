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
#include "kv/policy.h"

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

/* ---- Key layout calibration for auto:B (calibrate_keys.c) ----
 *
 * Prefill a calibration text with f32 stores, recording every layer's keys and values and the
 * queries of the last n_q rows. For each layer and each key layout tl_kv_auto_candidates
 * offers, build a store with that layout for K (values kept exact, so only the keys' error is
 * seen), append the first n - n_q tokens, attend the last n_q rows, and measure
 *   err = sqrt(sum |o - o_exact|^2 / sum |o_exact|^2)   over rows and query heads,
 * o_exact from f32 attention over the same keys and values. The layer takes the first
 * candidate in preference order whose err is within `slack` (10%) of the smallest. */
extern const char tl_calib_builtin_text[];

enum { TL_KV_AUTO_CALIB_TOKENS = 512, TL_KV_AUTO_CALIB_ROWS = 32 };

typedef struct {
    int n_layer;
    int chosen[TL_MAX_LAYERS];                          /* candidate index; -1 for a window layer */
    double err[TL_MAX_LAYERS][TL_KV_AUTO_MAX_CANDIDATES]; /* NAN where a candidate does not fit */
    int n_candidates;
    int n_tokens; /* calibration tokens */
    double seconds;
} tl_kv_auto_report;

/* Replace every TL_KV_AUTO entry of policies[n_layer] by its layer's measured choice. text NULL:
 * the built-in text (its first TL_KV_AUTO_CALIB_TOKENS tokens; a given text is cut the same
 * way). gpu_only: choose among the layouts the CUDA backend runs. rep may be NULL. A plan
 * without auto entries is left alone (0, nothing run). */
int tl_kv_auto_resolve(tl_model *m, tl_kv_layer_policy *policies, const char *text, size_t text_len, bool gpu_only,
                       int n_threads, tl_kv_auto_report *rep, tl_error *err);
/* The resolved plan as a JSON plan file (usable as --kv FILE): "n_layers", "default" (the most
 * common choice), "layers" (every other layer), and "measured" (informational: the auto spec,
 * the text, the tokens, each layer's error per candidate). malloc'd. */
char *tl_kv_auto_plan_json(const tl_kv_auto_report *rep, const tl_kv_layer_policy *resolved, const char *spec,
                           const char *text_name);
/* One line: how many layers took each layout, the calibration's size and time, the worst error. */
void tl_kv_auto_summary(const tl_kv_auto_report *rep, char *buf, size_t n);

/* ---- Where a quantized KV policy's error comes from (calibrate_keys.c) ----
 *
 * The same recording prefill over n tokens, then for every layer whose policy quantizes
 * (TL_KV_QUANT; sliding-window layers excepted) the relative attention error of the last
 * n_rows queries, measured as above three times: keys quantized with values exact (err_k),
 * values quantized with keys exact (err_v), and both (err_kv, also per query head). Tells
 * whether a policy's loss comes from its keys or its values, and in which layers and heads
 * (`tailor calibrate --diagnose SPEC`). */
enum { TL_KV_DIAG_MAX_HEADS = 128 };
typedef struct {
    bool measured;
    double err_k, err_v, err_kv;
    int worst_head;        /* the query head with the largest err_kv */
    double worst_head_err;
} tl_kv_diag_layer;
typedef struct {
    int n_layer, n_tokens, n_rows;
    tl_kv_diag_layer layer[TL_MAX_LAYERS];
    double seconds;
} tl_kv_diag_report;
int tl_kv_diagnose(tl_model *m, const tl_kv_layer_policy *policies, const int32_t *ids, int n, int n_rows, int n_threads,
                   tl_kv_diag_report *rep, tl_error *err);

#endif
