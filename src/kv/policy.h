/* policy.h: KV cache policies in text and JSON form, per-layer plans, store creation and the
 * exact memory formula.
 *
 * Text form of one layer's policy (fields separated by ':', order free, later fields win):
 *   f32 | f16 | bf16                dense stores (no further fields)
 *   k<B>v<B>                        B in 16, 8, 4, 2, 1 (16: that side kept whole in f16);
 *                                   k16v16 is f16. Defaults: per-token groups of 32, asymmetric,
 *                                   no residual, no smoothing, no rotation (k8v8 ~ q8_0-like)
 *   g<N> | kg<N> | vg<N>            group size 32, 64, 128 or 'head' (whole head, per-token only)
 *   tok|chan|block|tensor           granularity of both sides; ktok, kchan, kblock, ktensor,
 *                                   vtok, vchan, vblock, vtensor for one side
 *   asym | sym | kasym | ksym | vasym | vsym   quantizer
 *   r<N>                            full-precision residual window of the N latest tokens
 *   smooth                          subtract the per-channel mean of K (fixed after 1st chunk)
 *   rot                             Hadamard rotation of K (with q) and V (undone on the output)
 *   kivi                            = kchan:vtok:g32:r128:asym (KIVI's defaults)
 * Automatic key layout (kind TL_KV_AUTO, resolved per layer when a session is made):
 *   auto:<B> | auto:k<B>v<B>        B-bit keys and values (B in 8, 4, 2); per layer the key side
 *                                   becomes the candidate (tl_kv_auto_candidates) with the least
 *                                   measured attention error; values per-token. Fields g<N> and
 *                                   r<N> apply to every candidate.
 * e.g. "k4v2:g64:kchan:vtok:r128:smooth", "k8v8", "k2v2:kivi", "k16v4:r64".
 * Formatting gives the canonical form (only non-default fields, fixed order);
 * parse(format(p)) == p for every normalized policy.
 *
 * Per-layer overrides: "0=k8v8,1-3=k2v2:kivi" (layer or inclusive range '=' policy, ',' between).
 * JSON plan file: {"default": "k2v2:kivi", "layers": {"0": "k8v8", "30-31": "f16"}}
 * (both keys optional; "default" falls back to the spec given alongside, or f16; "n_layers", if
 * present, must match the model; "measured", written by calibrations, is not read). */
#ifndef TL_KV_POLICY_H
#define TL_KV_POLICY_H

#include "kv.h"
#include "../../include/tailor.h"

/* The key layouts auto:B chooses from, in order of preference (faster kernels first; a later
 * one must measure clearly better to be chosen): per-token, per-channel (KIVI's layout),
 * per-token + smoothing, per-token + rotation, per-token + smoothing + rotation. gpu_only
 * keeps those the CUDA backend runs (per-token, per-channel). Returns the count (<= 5). */
int tl_kv_auto_candidates(const tl_kv_layer_policy *autop, bool gpu_only, tl_kv_layer_policy *out);
/* TL_KV_AUTO_MAX_CANDIDATES and the candidates' names (tl_kv_auto_candidate_name): tailor.h. */

/* Parse one layer policy. Errors look like "'k4v3': bits 3 not supported (use 16, 8, 4, 2, 1)". */
int tl_kv_policy_parse(const char *text, tl_kv_layer_policy *p, tl_error *err);
/* Canonical text; returns the length it needs (snprintf-like). */
int tl_kv_policy_format(const tl_kv_layer_policy *p, char *buf, size_t n);
/* Fill the defaults of `kind` (dense kinds, or TL_KV_QUANT with k8v8 defaults). */
void tl_kv_policy_default(tl_kv_layer_policy *p, tl_kv_kind kind);
/* Reset fields that do not matter (a 16-bit side's grouping, tensor groups, ...) so that
 * equal behaviour means equal structs. */
void tl_kv_policy_normalize(tl_kv_layer_policy *p);
bool tl_kv_policy_equal(const tl_kv_layer_policy *a, const tl_kv_layer_policy *b);

/* tl_kv_plan (one policy per layer), tl_kv_plan_parse / _format / _format_layer / _free and
 * tl_kv_policy_check are part of the public face: include/tailor.h. */
/* JSON plan text (`where` names it in errors, e.g. the file path); base = default before "default". */
int tl_kv_plan_parse_json(tl_kv_plan *plan, const char *json, const char *where, int n_layers, tl_error *err);
/* Apply "0=k8v8,1-3=k2v2" to a plan. */
int tl_kv_plan_apply_overrides(tl_kv_plan *plan, const char *overrides, tl_error *err);
/* The same as the two texts --kv and --kv-layer would take (identities, file names): the
 * policy most layers use, and the layers that differ ("" when none); parsing them for the
 * same layer count gives the plan back. Both malloc'd. */
void tl_kv_plan_format_parts(const tl_kv_plan *plan, char **base, char **overrides);
/* The plan for a model of n_layers layers (projecting to another model): the base policy
 * everywhere, each layer that differs kept where the target has it; such a layer beyond
 * n_layers is an error naming it. */
int tl_kv_plan_retarget(const tl_kv_plan *src, int n_layers, tl_kv_plan *dst, tl_error *err);
/* A deep copy. */
void tl_kv_plan_copy(const tl_kv_plan *src, tl_kv_plan *dst);

/* Quantized store (quant.c). Refuses sliding-window shapes (window > 0): such layers need a
 * dense policy. */
tl_kv_layer *tl_kv_quant_new(const tl_kv_layer_policy *p, const tl_kv_shape *s, tl_error *err);

/* Exact bytes a store of this policy and shape holds after n_tokens tokens (whatever the
 * chunking), without allocating anything. Equals what ops->bytes reports. For auto:B, not
 * yet resolved, the largest of its candidates (they differ by at most a partial token group
 * of f16 keys and the smoothing means). Returns 0, or -1
 * with err when the policy does not fit the shape. */
int tl_kv_layer_bytes_formula(const tl_kv_layer_policy *p, const tl_kv_shape *s, int64_t n_tokens, tl_kv_bytes *b,
                              tl_error *err);
/* Whole plan: shapes[i] is layer i's shape; per_layer (may be NULL) gets n_layers entries,
 * total the field-wise sum. Errors name the layer. */
int tl_kv_plan_bytes_formula(const tl_kv_plan *plan, const tl_kv_shape *shapes, int64_t n_tokens, tl_kv_bytes *per_layer,
                             tl_kv_bytes *total, tl_error *err);
int tl_kv_quant_bytes_formula(const tl_kv_layer_policy *p, const tl_kv_shape *s, int64_t n_tokens, tl_kv_bytes *b,
                              tl_error *err);

/* Append K/V rows ([n][n_head_kv*head_dim]) to a quantized store without attending (restoring
 * a saved cache, building a long history for benchmarks). Same transforms and rules as forward. */
int tl_kv_quant_append(tl_kv_layer *l, int n, const float *k, const float *v, tl_error *err);

/* What a store with per-token keys of <= 4 bits (no smoothing, no rotation) measured on its
 * first chunk (>= 32 tokens): the relative error of its keys, and of the same keys smoothed
 * or quantized per channel, against the energy of the mean-removed keys. */
typedef struct {
    bool measured;
    int bits, tokens;
    double err_tok, err_smooth, err_chan;
} tl_kv_key_check;
/* false when the layer is not such a store or has not measured yet. */
bool tl_kv_quant_key_check(const tl_kv_layer *l, tl_kv_key_check *out);

/* Testing/benchmarking hook: make a quantized store use the scalar reference kernels. */
void tl_kv_quant_force_scalar(tl_kv_layer *l, bool scalar);

#endif
