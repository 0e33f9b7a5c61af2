/* awq.h: activation-aware weight quantization (AWQ, Lin et al. 2023) into w4g128.
 *
 * 1. Statistics: calibration text runs through the unquantized model (a session with an
 *    activation observer); at the input of every linear group it accumulates the mean |x|
 *    and mean x^2 of each input channel over all tokens, and keeps up to max_samples rows
 *    (every k-th token) for the error search.
 * 2. Search, per layer and group (q/k/v, o, gate/up, down): for alpha = 0, 1/n_grid, ...:
 *    s = mean|x|^alpha (normalised so max(s) * min(s) = 1), quantize W * diag(s) with
 *    w4g128 RTN and measure the output error sum ||X W^T - X diag(1/s) Q^T||^2 over the
 *    kept rows, summed over the group's matrices. alpha = 0 is plain RTN, so the chosen
 *    scales are never worse than RTN on this objective. Optionally a clipping search per
 *    group of 128 (weighted by E[x^2] of the scaled input) is kept when it lowers the same
 *    objective further.
 * 3. Fold: X diag(1/s) must be what the matrix sees, so 1/s goes into what produces X:
 *      q/k/v    -> attn_norm weight (divided by s)
 *      gate/up  -> ffn_norm weight
 *      down     -> the rows of w_up (act(g) * u is linear in u), and w_down's columns * s
 *      o        -> the rows of w_v (and b_v) — only when n_head == n_head_kv; with GQA one
 *                  V channel feeds several heads' outputs, so o is skipped (group reported
 *                  with applied = false).
 * Memory: the kept rows (max_samples x (3 n_embd + n_ff) floats per layer) plus one layer's
 * matrices in f32 at a time, plus the quantized output (held until the file is written). */
#ifndef TL_AWQ_H
#define TL_AWQ_H

#include "../engine/session.h"

/* tl_awq_params: include/tailor.h (within tl_quantize_params). */

void tl_awq_default_params(tl_awq_params *p);

struct tl_awq_group { /* typedef tl_awq_group: include/tailor.h */
    int layer;
    tl_act_point point; /* which group: its input (ATTN_IN = q/k/v, ATTN_OUT = o, FFN_IN = gate/up, FFN_MID = down) */
    bool applied;       /* false: skipped, scales 1 (why says so) */
    const char *why;    /* static text when skipped */
    float alpha;        /* chosen exponent */
    bool clipped;       /* the clipping search lowered the objective and was kept */
    double out_sq;      /* sum of squared outputs of the unquantized group over the kept rows */
    double err_rtn;     /* sum of squared output errors with plain w4g128 RTN */
    double err_awq;     /* ... with the chosen scales (and clipping): <= err_rtn */
};

/* A tensor AWQ wrote: matrices in w4g128, rescaled norm weights / biases in f32. */
typedef struct {
    char *name;
    tl_type type;
    uint32_t n_dims;
    int64_t ne[4];
    void *data;
    size_t nbytes;
} tl_awq_tensor;

typedef struct {
    tl_awq_group *groups;
    int n_groups;
    tl_awq_tensor *tensors;
    int n_tensors;
    int64_t n_tokens;  /* calibration tokens run */
    int n_samples;     /* rows per group in the search */
    double seconds_stats, seconds_search;
} tl_awq_result;

/* Says whether the caller will store tensor `name` as w4g128. A group is scaled only when
 * all matrices it changes pass (for down also w_up, for o also w_v); NULL: all do. */
typedef bool (*tl_awq_filter)(void *ctx, const char *tensor_name);

/* Runs statistics, search and folding over model m (its file's weights are not changed).
 * tokens: the calibration text as the model tokenizes it (BOS first if it adds one), run in
 * windows of n_ctx tokens. Fills res (free with tl_awq_result_free, also after an error). */
int tl_awq_run(tl_model *m, const int32_t *tokens, int64_t n_tokens, const tl_awq_params *p, tl_awq_filter filter,
               void *filter_ctx, tl_awq_result *res, tl_error *err);
const tl_awq_tensor *tl_awq_find(const tl_awq_result *r, const char *name); /* NULL if AWQ did not write it */
void tl_awq_result_free(tl_awq_result *r);
const char *tl_awq_point_name(tl_act_point p); /* "qkv", "o", "gate_up", "down" */

#endif
