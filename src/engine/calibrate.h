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
#include "../kv/policy.h"

/* 1 - (sum of the k largest of softmax(logits[0..n))), k = max(1, ceil(top * n)).
 * scratch: n floats. */
double tl_calib_row_score(const float *logits, int n, double top, float *scratch);

/* A probe around `inner` (taken over: destroying the probe destroys it). Rows at absolute
 * positions >= first_pos are scored. */
tl_kv_layer *tl_calib_probe_new(tl_kv_layer *inner, int first_pos, double top, tl_error *err);
/* Mean score so far and the number of (row, head) pairs it averages. */
double tl_calib_probe_score(const tl_kv_layer *probe, int64_t *count);

/* tl_calib_params and tl_calibrate, the run over a text: include/tailor.h. */

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

/* TL_KV_AUTO_CALIB_TOKENS, tl_kv_auto_report, tl_kv_auto_resolve (replace every TL_KV_AUTO
 * entry of a plan by its layer's measured choice), tl_kv_auto_plan_json and tl_kv_auto_summary:
 * include/tailor.h. */

/* ---- Where a quantized KV policy's error comes from (calibrate_keys.c) ----
 *
 * The same recording prefill over n tokens, then for every layer whose policy quantizes
 * (TL_KV_QUANT; sliding-window layers excepted) the relative attention error of the last
 * n_rows queries, measured as above three times: keys quantized with values exact (err_k),
 * values quantized with keys exact (err_v), and both (err_kv, also per query head). Tells
 * whether a policy's loss comes from its keys or its values, and in which layers and heads
 * (`tailor calibrate --diagnose SPEC`). tl_kv_diag_report and tl_kv_diagnose: include/tailor.h. */
enum { TL_KV_DIAG_MAX_HEADS = 128 }; /* query heads a diagnosis measures */

#endif
