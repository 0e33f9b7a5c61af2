/* quant.c: the quantized KV store (bits 8/4/2/1 per side, KIVI-style residual window,
 * K-smoothing, Hadamard rotation).
 *
 * ---- Semantics ----
 * Each side (K, V) is independent: bits, quantizer, granularity, group size. A side is one of
 *   DENSE16  bits 16: every token kept in f16 (counted as "codes").
 *   SLIDE    per-token (groups of g channels, or whole head) and per-tensor granularity: a
 *            sliding f16 window of the R latest tokens; a token is quantized when it leaves
 *            the window (R = 0: quantized at once, from f32). After n tokens, nq = max(0, n-R)
 *            tokens are quantized.
 *   FLUSH    per-channel (KIVI keys: groups of g tokens per channel) and per-block (g tokens x g
 *            channels): new tokens collect in an f16 block; when it holds F = max(R, g) rounded up
 *            to a multiple of g tokens, the whole block is quantized (F/g token groups) and the
 *            block restarts empty. After n tokens, nq = floor(n/F)*F are quantized.
 * Both rules depend only on the token count, never on how tokens were chunked, so the stored
 * codes are chunking-invariant (tested). Residual tokens are kept in f16 (as in KIVI); a token
 * that passed through the window is quantized from its f16 copy.
 *
 * Quantizers (parameters stored as IEEE halves, codes computed with the rounded values):
 *   asymmetric RTN: s = (max-min)/(2^b-1), z = min, q = clamp(round((x-z)/s), 0, 2^b-1);
 *                   bits 1: each value becomes its group's min or max.
 *   symmetric absmax (b >= 2): s = absmax/(2^(b-1)-1), q in [-(2^(b-1)-1), 2^(b-1)-1], stored
 *                   offset by 2^(b-1) so the kernels see x = code*s + z with z = -2^(b-1)*s.
 *   per-tensor: one (s, z) per KV head, computed from the first chunk (after rotation and
 *                   smoothing) and then fixed; later values outside that range are clamped.
 *                   A first chunk of one token gives a poor range: prefill first.
 *
 * K-smoothing: mu[h][c] = mean of K over the first chunk (the prefill), per KV head and channel,
 * then FIXED. Every key the attention sees -- quantized, residual, and the new block itself -- is
 * k - mu, so each query's scores shift by the same constant q.mu and softmax is unchanged
 * (exact up to rounding). Soft-capped scores (Gemma 2) are not shift-invariant: there q.mu is
 * added back before the cap (cap_scores). A running mean would change the meaning of codes already stored
 * (they would need re-quantizing or a per-group correction), and buys little: the channel
 * offsets smoothing removes are a property of the layer, visible in any prefill.
 *
 * Rotation: normalized Walsh-Hadamard H (H = H^T = H^-1) over head_dim (a power of two) per
 * head, applied to K and to q (q.k = Hq.Hk), and to V with H applied again to the output
 * (sum p Hv = H sum p v). It spreads outlier channels over all channels before quantizing.
 * Only quantized sides are rotated. Order: rotate, then subtract the mean.
 *
 * Attention (kv.h semantics): the new block is attended exactly (f32, after the transforms
 * above, causal inside the block), the history through the store (codes + f16 residual), then
 * the block is appended (and quantized as the rules say). Work is split into tasks of
 * (KV head, block of query rows, range of history tokens); a task serves all query heads of
 * the GQA group (times its rows) at once, so codes are decoded once per task, in tiles of 8
 * tokens, with an online softmax over tiles of TILE tokens: nothing history-sized is ever
 * materialized. With several history ranges (decode at long context), the partial softmax
 * states are merged by their log-sum-exp weights.
 *
 * Kernels (quant_kernels.c): for decode (<= 4 queries per KV head, i.e. one GQA group) codes
 * are widened and FMAed straight into register accumulators (keys: code*s+z then q.x; values:
 * (p*s).code plus a per-group p*z term); for prefill blocks (more queries) codes are decoded
 * into an 8-token f32 tile in L1 that all queries of the task share.
 *
 * On AVX-512 VNNI CPUs (quant_kernels_avx512.c) per-token codes are used as integers: key scores
 * take the query rounded to int8 (per 32-channel block, once per attention task) times the codes
 * by vpdpbusd; values take the weights p*s rounded to u8 (per 32-token sub-block) times the codes.
 * Per-channel (KIVI) and per-block keys take the weights q*s rounded to int8 per token group.
 *
 * Speed: docs/kv-accuracy.md ("Decode speed"). On CPU, decode attention is compute-bound
 * (3-20 GB/s of KV read at 1-2 threads), not bandwidth-bound: fewer bytes help only as far as
 * the kernels need fewer instructions per value, which the integer kernels achieve (k4v4 and
 * k2v2 1.3-1.8x faster than f16 at 16k).
 *
 * Sliding-window layers (shape.window > 0) are refused: give them a dense policy.
 *
 * ---- Memory (exact, what bytes() reports and tl_kv_quant_bytes_formula projects) ----
 * per side, per KV head, d = head dim, pb = 4 (asym: s,z halves) or 2 (sym: s):
 *   DENSE16: codes = n*d*2
 *   SLIDE:   codes = nq*d*b/8; scales = nq*(d/g)*pb (per-tensor: pb once n > 0);
 *            residual = min(n, R)*d*2
 *   FLUSH:   codes = nq*d*b/8; scales = (nq/g)*(d/ce)*pb (ce = 1 per-channel, g per-block);
 *            residual = (n-nq)*d*2
 *   other:   smoothing means n_head_kv*d_k*4 (f32) once n > 0. */
#include "policy.h"
#include "quant_kernels.h"
#include "../cpu/vec.h"

#include <math.h>
#include <stdlib.h>

#define TILE 128 /* history tokens per softmax step; a multiple of every group size */
#define QMAX 32  /* queries per task (GQA group x rows) */

static const tl_kv_ops quant_ops; /* defined below */

typedef enum { SIDE_DENSE16, SIDE_SLIDE, SIDE_FLUSH } side_mode;

typedef struct {
    tl_kv_side pol;
    side_mode mode;
    int d;
    int g;          /* SLIDE: channels per group (d for whole-head/tensor); FLUSH: tokens per group */
    int ce;         /* FLUSH: channels per parameter set (1 or g) */
    int ppg;        /* halves per parameter set */
    int R;          /* SLIDE: window length; FLUSH: flush length F */
    bool tensor;    /* per-tensor parameters */
    bool rotate;
    size_t row_bytes;   /* SLIDE: code bytes per token */
    int pstride;        /* SLIDE: halves per token (0: per-tensor) */
    size_t grp_bytes;   /* FLUSH: code bytes per token group */
    size_t grp_halves;  /* FLUSH: parameter halves per token group */
    size_t codes_head, params_head, fp_head; /* per-head strides (bytes, halves, halves) */
    uint8_t *codes;
    uint16_t *params;
    uint16_t *fp; /* DENSE16: all tokens; SLIDE: ring of R; FLUSH: block of F */
    int nq;       /* tokens quantized */
} side_t;

typedef struct {
    tl_kv_layer base;
    tl_kv_layer_policy pol;
    side_t k, v;
    bool smooth, have_mu;
    float *mu; /* [n_head_kv][dk] */
    int first; /* tokens of the first chunk, which fixed mu and the per-tensor ranges */
    const kvq_kernels *kern;
    const tl_vec_ops *vo;
    tl_kv_key_check check; /* per-token keys: what the first chunk measured (key_check) */
    /* scratch, grown as needed (forward is not re-entrant per layer) */
    float *scratch;
    size_t scratch_n;
} qstore;

/* ---------------- side setup ---------------- */

static int side_init(side_t *sd, const tl_kv_side *p, int d, int residual, bool rotate, int n_ctx, int n_kv,
                     const char *name, tl_error *err) {
    memset(sd, 0, sizeof *sd);
    sd->pol = *p;
    sd->d = d;
    sd->ppg = p->quantizer == TL_KV_SYM ? 1 : 2;
    if (p->bits == 16) {
        sd->mode = SIDE_DENSE16;
        sd->fp_head = (size_t)n_ctx * d;
        return 0;
    }
    if (p->bits != 8 && p->bits != 4 && p->bits != 2 && p->bits != 1)
        return tl_fail(err, "%s: bits %d not supported (use 16, 8, 4, 2, 1)", name, p->bits);
    if (p->quantizer == TL_KV_SYM && p->bits < 2)
        return tl_fail(err, "%s: symmetric quantizer needs at least 2 bits", name);
    if (p->group != 0 && p->group != 32 && p->group != 64 && p->group != 128)
        return tl_fail(err, "%s: group %d not supported (use 32, 64, 128, or whole head)", name, p->group);
    sd->rotate = rotate;
    const size_t ub = (size_t)kvq_unit_bytes(p->bits);
    switch (p->gran) {
    case TL_KV_GRAN_TOKEN:
    case TL_KV_GRAN_TENSOR:
        sd->mode = SIDE_SLIDE;
        sd->tensor = p->gran == TL_KV_GRAN_TENSOR;
        sd->g = (sd->tensor || p->group == 0) ? d : p->group;
        if (d % sd->g != 0) return tl_fail(err, "%s: group %d does not divide head_dim %d", name, sd->g, d);
        sd->R = residual;
        sd->row_bytes = (size_t)(d / 32) * ub;
        sd->pstride = sd->tensor ? 0 : (d / sd->g) * sd->ppg;
        sd->codes_head = (size_t)n_ctx * sd->row_bytes;
        sd->params_head = sd->tensor ? (size_t)sd->ppg : (size_t)n_ctx * sd->pstride;
        sd->fp_head = (size_t)residual * d;
        break;
    case TL_KV_GRAN_CHANNEL:
    case TL_KV_GRAN_BLOCK: {
        sd->mode = SIDE_FLUSH;
        if (p->group == 0)
            return tl_fail(err, "%s: %s granularity needs a group size (32, 64, 128)", name,
                           p->gran == TL_KV_GRAN_CHANNEL ? "per-channel" : "per-block");
        sd->g = p->group;
        sd->ce = p->gran == TL_KV_GRAN_CHANNEL ? 1 : p->group;
        if (d % sd->ce != 0) return tl_fail(err, "%s: block group %d does not divide head_dim %d", name, sd->ce, d);
        const int base = TL_MAX(residual, sd->g);
        sd->R = (base + sd->g - 1) / sd->g * sd->g;
        sd->grp_bytes = (size_t)d * (sd->g / 32) * ub;
        sd->grp_halves = (size_t)(d / sd->ce) * sd->ppg;
        const size_t n_grp = ((size_t)n_ctx + sd->g - 1) / sd->g;
        sd->codes_head = n_grp * sd->grp_bytes;
        sd->params_head = n_grp * sd->grp_halves;
        sd->fp_head = (size_t)sd->R * d;
        break;
    }
    default: return tl_fail(err, "%s: unknown granularity %d", name, (int)p->gran);
    }
    (void)n_kv;
    return 0;
}

static int side_alloc(side_t *sd, int n_kv, const char *name, tl_error *err) {
    const size_t cb = sd->codes_head * n_kv, pb = sd->params_head * n_kv * 2, fb = sd->fp_head * n_kv * 2;
    if (cb && !(sd->codes = tl_amalloc(cb))) return tl_fail(err, "%s: cannot allocate %zu bytes of codes", name, cb);
    if (pb && !(sd->params = tl_amalloc(pb))) return tl_fail(err, "%s: cannot allocate %zu bytes of scales", name, pb);
    if (fb && !(sd->fp = tl_amalloc(fb))) return tl_fail(err, "%s: cannot allocate %zu bytes of residual", name, fb);
    return 0;
}

static void side_free(side_t *sd) {
    tl_afree(sd->codes);
    tl_afree(sd->params);
    tl_afree(sd->fp);
}

/* Tokens quantized after n tokens (see the top comment). */
static int64_t side_nq(const side_t *sd, int64_t n) {
    switch (sd->mode) {
    case SIDE_SLIDE: return TL_MAX(0, n - sd->R);
    case SIDE_FLUSH: return n / sd->R * sd->R;
    default: return 0;
    }
}

static void side_bytes(const side_t *sd, int n_kv, int64_t n, tl_kv_bytes *b) {
    const uint64_t d = (uint64_t)sd->d, H = (uint64_t)n_kv, pb = 2 * (uint64_t)sd->ppg;
    const uint64_t nq = (uint64_t)side_nq(sd, n);
    switch (sd->mode) {
    case SIDE_DENSE16: b->codes += H * (uint64_t)n * d * 2; break;
    case SIDE_SLIDE:
        b->codes += H * nq * d * sd->pol.bits / 8;
        b->scales += sd->tensor ? (n > 0 ? H * pb : 0) : H * nq * (d / sd->g) * pb;
        b->residual += H * (uint64_t)TL_MIN(n, sd->R) * d * 2;
        break;
    case SIDE_FLUSH:
        b->codes += H * nq * d * sd->pol.bits / 8;
        b->scales += H * (nq / sd->g) * (d / sd->ce) * pb;
        b->residual += H * ((uint64_t)n - nq) * d * 2;
        break;
    }
}

/* ---------------- quantizing ---------------- */

/* Quantize one token row x[d] of head h into SLIDE slot t. */
static void slide_quant_token(side_t *sd, int h, int64_t t, const float *x) {
    const int b = sd->pol.bits, sym = sd->pol.quantizer == TL_KV_SYM, ub = kvq_unit_bytes(b);
    uint8_t *row = sd->codes + h * sd->codes_head + (size_t)t * sd->row_bytes;
    uint16_t *par = sd->tensor ? sd->params + h * sd->params_head : sd->params + h * sd->params_head + (size_t)t * sd->pstride;
    for (int j = 0; j < sd->d / sd->g; j++) {
        const float *xg = x + j * sd->g;
        uint16_t *pj = par + (sd->tensor ? 0 : j * sd->ppg);
        if (!sd->tensor) kvq_params(xg, sd->g, 1, b, sym, pj);
        float s, z;
        kvq_decode_params(pj, b, sym, &s, &z);
        for (int u = 0; u < sd->g / 32; u++) {
            uint8_t c[32];
            for (int i = 0; i < 32; i++) c[i] = (uint8_t)kvq_encode(xg[u * 32 + i], s, z, b);
            kvq_pack32(c, b, row + (size_t)(j * sd->g / 32 + u) * ub);
        }
    }
}

/* Quantize the FLUSH block of head h (F tokens, f16 rows) starting at token t0 (multiple of g). */
static void flush_quant_block(side_t *sd, int h, int64_t t0) {
    const int b = sd->pol.bits, sym = sd->pol.quantizer == TL_KV_SYM, ub = kvq_unit_bytes(b), d = sd->d, g = sd->g;
    float *x = tl_xmalloc((size_t)g * d * sizeof(float));
    for (int gi = 0; gi < sd->R / g; gi++) {
        const uint16_t *src = sd->fp + h * sd->fp_head + (size_t)gi * g * d;
        for (int i = 0; i < g * d; i++) x[i] = tl_fp16_to_fp32(src[i]);
        const size_t grp = (size_t)(t0 / g + gi);
        uint8_t *codes = sd->codes + h * sd->codes_head + grp * sd->grp_bytes;
        uint16_t *par = sd->params + h * sd->params_head + grp * sd->grp_halves;
        for (int j = 0; j < d / sd->ce; j++) {
            float mn = INFINITY, mx = -INFINITY;
            for (int t = 0; t < g; t++)
                for (int c = j * sd->ce; c < (j + 1) * sd->ce; c++) {
                    mn = fminf(mn, x[t * d + c]);
                    mx = fmaxf(mx, x[t * d + c]);
                }
            kvq_params_range(mn, mx, b, sym, par + j * sd->ppg);
        }
        for (int c = 0; c < d; c++) {
            float s, z;
            kvq_decode_params(par + (c / sd->ce) * sd->ppg, b, sym, &s, &z);
            for (int u = 0; u < g / 32; u++) {
                uint8_t cc[32];
                for (int i = 0; i < 32; i++) cc[i] = (uint8_t)kvq_encode(x[(u * 32 + i) * d + c], s, z, b);
                kvq_pack32(cc, b, codes + ((size_t)c * (g / 32) + u) * ub);
            }
        }
    }
    free(x);
}

/* Append token t (rows x[h*d ..] for every head, transformed already). */
static void side_append(side_t *sd, int n_kv, int64_t t, const float *x) {
    const int d = sd->d;
    float tmp[KVQ_MAX_DIM];
    switch (sd->mode) {
    case SIDE_DENSE16:
        for (int h = 0; h < n_kv; h++)
            for (int c = 0; c < d; c++) sd->fp[h * sd->fp_head + (size_t)t * d + c] = tl_fp32_to_fp16(x[h * d + c]);
        break;
    case SIDE_SLIDE:
        if (sd->R == 0) {
            for (int h = 0; h < n_kv; h++) slide_quant_token(sd, h, t, x + h * d);
            sd->nq++;
            break;
        }
        if (t - sd->nq == sd->R) { /* window full: the oldest leaves it and is quantized */
            for (int h = 0; h < n_kv; h++) {
                const uint16_t *r = sd->fp + h * sd->fp_head + (size_t)(sd->nq % sd->R) * d;
                for (int c = 0; c < d; c++) tmp[c] = tl_fp16_to_fp32(r[c]);
                slide_quant_token(sd, h, sd->nq, tmp);
            }
            sd->nq++;
        }
        for (int h = 0; h < n_kv; h++)
            for (int c = 0; c < d; c++)
                sd->fp[h * sd->fp_head + (size_t)(t % sd->R) * d + c] = tl_fp32_to_fp16(x[h * d + c]);
        break;
    case SIDE_FLUSH:
        for (int h = 0; h < n_kv; h++)
            for (int c = 0; c < d; c++)
                sd->fp[h * sd->fp_head + (size_t)(t - sd->nq) * d + c] = tl_fp32_to_fp16(x[h * d + c]);
        if (t + 1 - sd->nq == sd->R) {
            for (int h = 0; h < n_kv; h++) flush_quant_block(sd, h, sd->nq);
            sd->nq += sd->R;
        }
        break;
    }
}

/* ---------------- attention ---------------- */

/* Scores (is_v = 0) or accumulation (is_v = 1) over history tokens [a, b) of head h. */
static void side_run(const qstore *st, const side_t *sd, int h, int a, int b, bool is_v, const float *x, int nq,
                     int xs, float *y, int ys, const void *qp) {
    const kvq_kernels *K = st->kern;
    const int d = sd->d;
    int q_end = TL_MIN(b, sd->nq); /* quantized part [a, q_end) */
    if (sd->mode == SIDE_DENSE16) q_end = a;
    if (q_end > a) {
        kvq_run r = {.n = q_end - a, .d = d, .g = sd->g, .bits = sd->pol.bits, .sym = sd->pol.quantizer == TL_KV_SYM};
        if (sd->mode == SIDE_SLIDE) {
            r.codes = sd->codes + h * sd->codes_head + (size_t)a * sd->row_bytes;
            r.params = sd->params + h * sd->params_head + (size_t)a * sd->pstride;
            r.pstride = sd->pstride;
            if (is_v) K->tok_accum(&r, x, nq, xs, y, ys);
            else if (qp) K->tok_scores_q(&r, qp, x, nq, xs, y, ys);
            else K->tok_scores(&r, x, nq, xs, y, ys);
        } else {
            r.codes = sd->codes + h * sd->codes_head + (size_t)(a / sd->g) * sd->grp_bytes;
            r.params = sd->params + h * sd->params_head + (size_t)(a / sd->g) * sd->grp_halves;
            r.ce = sd->ce;
            if (is_v) K->ch_accum(&r, x, nq, xs, y, ys);
            else K->ch_scores(&r, x, nq, xs, y, ys);
        }
    }
    /* full-precision part [t, b), in contiguous pieces */
    for (int t = TL_MAX(a, q_end); t < b;) {
        int slot, len;
        if (sd->mode == SIDE_DENSE16) slot = t, len = b - t;
        else if (sd->mode == SIDE_FLUSH) slot = t - sd->nq, len = b - t;
        else slot = t % sd->R, len = TL_MIN(b - t, sd->R - slot);
        const uint16_t *rows = sd->fp + h * sd->fp_head + (size_t)slot * d;
        const int off = t - a; /* column in the score/probability tile */
        if (is_v) K->f16_accum(rows, len, d, x + off, nq, xs, y, ys);
        else K->f16_scores(rows, len, d, x, nq, xs, y + off, ys);
        t += len;
    }
}

typedef struct {
    const qstore *st;
    int n_past, m, G, rows_per_task, n_rowblk, n_split;
    const float *q, *k, *v; /* transformed (q scaled) */
    float *out;
    float *partial; /* [task][QMAX][dv + 2] when n_split > 1 */
} attn_job;

/* Soft-capping of the scores of queries [i0, i1) over n keys, s[i*ss + 0..n); qmu: each query's
 * q.mu when keys are smoothed (the cap needs the true score), else NULL. */
static void cap_scores(const qstore *st, float *s, int ss, int n, int i0, int i1, const float *qmu) {
    const float cap = st->base.shape.softcap;
    if (!(cap > 0.0f)) return;
    for (int i = i0; i < i1; i++) {
        float *si = s + (size_t)i * ss;
        if (qmu)
            for (int t = 0; t < n; t++) si[t] += qmu[i];
        tl_softcap(si, n, cap);
    }
}

/* Online softmax step for queries [i0, i1): s[i*ss + 0..n) become probabilities. */
static void softmax_step(const tl_vec_ops *vo, float *s, int ss, int n, int i0, int i1, float *mx, float *l, float *acc,
                         int dv) {
    for (int i = i0; i < i1; i++) {
        float *si = s + (size_t)i * ss;
        const float m = fmaxf(mx[i], vo->max(si, n));
        const float corr = expf(mx[i] - m);
        const float sum = vo->exp_sub_sum(si, n, m);
        if (corr != 1.0f) vo->scale(acc + (size_t)i * dv, dv, corr);
        l[i] = l[i] * corr + sum;
        mx[i] = m;
    }
}

static void attn_task(void *ctx, int64_t task, int thread_id) {
    const attn_job *j = ctx;
    const qstore *st = j->st;
    const tl_kv_shape *s = &st->base.shape;
    const int dk = s->head_dim_k, dv = s->head_dim_v, Hkv = s->n_head_kv, G = j->G;
    const int sp = (int)(task % j->n_split), rb = (int)(task / j->n_split % j->n_rowblk), h = (int)(task / j->n_split / j->n_rowblk);
    const int r0 = rb * j->rows_per_task, r1 = TL_MIN(j->m, r0 + j->rows_per_task);
    const int nq = (r1 - r0) * G;
    float qb[QMAX * KVQ_MAX_DIM], acc[QMAX * KVQ_MAX_DIM], sc[QMAX * TILE], mx[QMAX], l[QMAX];
    for (int r = r0; r < r1; r++)
        memcpy(qb + (size_t)(r - r0) * G * dk, j->q + ((size_t)r * s->n_head + (size_t)h * G) * dk, sizeof(float) * G * dk);
    for (int i = 0; i < nq; i++) mx[i] = -INFINITY, l[i] = 0;
    memset(acc, 0, sizeof(float) * nq * dv);
    float qmu_buf[QMAX];
    const float *qmu = NULL;
    if (st->smooth && s->softcap > 0.0f) {
        for (int i = 0; i < nq; i++) qmu_buf[i] = st->vo->dot(qb + (size_t)i * dk, st->mu + (size_t)h * dk, dk);
        qmu = qmu_buf;
    }
    /* integer-query key kernels: quantize the queries once per task, not once per tile */
    _Alignas(64) unsigned char qpbuf[KVQ_QPREP_BYTES(QMAX)];
    const void *qp = NULL;
    if (st->k.mode == SIDE_SLIDE && st->kern->tok_qprep && st->kern->tok_qprep(st->k.pol.bits, dk, qb, nq, dk, qpbuf))
        qp = qpbuf;
    /* history */
    const int64_t n_tiles = (j->n_past + TILE - 1) / TILE; /* split sp: tiles [sp*n/ns, (sp+1)*n/ns) */
    const int lo = (int)(sp * n_tiles / j->n_split * TILE), hi = (int)TL_MIN(j->n_past, (sp + 1) * n_tiles / j->n_split * TILE);
    for (int a = lo; a < hi; a += TILE) {
        const int b = TL_MIN(hi, a + TILE);
        side_run(st, &st->k, h, a, b, false, qb, nq, dk, sc, TILE, qp);
        cap_scores(st, sc, TILE, b - a, 0, nq, qmu);
        softmax_step(st->vo, sc, TILE, b - a, 0, nq, mx, l, acc, dv);
        side_run(st, &st->v, h, a, b, true, sc, nq, TILE, acc, dv, NULL);
    }
    /* the new block, exact and causal: row r sees new tokens 0..r */
    if (sp == j->n_split - 1) {
        const size_t ks = (size_t)Hkv * dk, vs = (size_t)Hkv * dv;
        for (int r = r0; r < r1; r++) {
            const int i0 = (r - r0) * G;
            for (int a = 0; a <= r; a += TILE) {
                const int n = TL_MIN(r + 1, a + TILE) - a;
                st->kern->f32_scores(j->k + (size_t)a * ks + (size_t)h * dk, (int)ks, n, dk, qb + (size_t)i0 * dk, G, dk,
                                     sc + (size_t)i0 * TILE, TILE);
                cap_scores(st, sc, TILE, n, i0, i0 + G, qmu);
                softmax_step(st->vo, sc, TILE, n, i0, i0 + G, mx, l, acc, dv);
                st->kern->f32_accum(j->v + (size_t)a * vs + (size_t)h * dv, (int)vs, n, dv, sc + (size_t)i0 * TILE, G, TILE,
                                    acc + (size_t)i0 * dv, dv);
            }
        }
    }
    if (j->n_split == 1) {
        for (int i = 0; i < nq; i++) {
            const int r = r0 + i / G, hq = h * G + i % G;
            float *o = j->out + ((size_t)r * s->n_head + hq) * dv;
            const float inv = 1.0f / l[i];
            for (int c = 0; c < dv; c++) o[c] = acc[(size_t)i * dv + c] * inv;
        }
    } else {
        float *p = j->partial + (size_t)task * QMAX * (dv + 2);
        for (int i = 0; i < nq; i++) {
            float *pi = p + (size_t)i * (dv + 2);
            pi[0] = mx[i];
            pi[1] = l[i];
            memcpy(pi + 2, acc + (size_t)i * dv, sizeof(float) * dv);
        }
    }
    (void)thread_id;
}

/* Scratch of at least n floats, kept between calls; NULL when out of memory. */
static float *scratch(qstore *st, size_t n) {
    if (st->scratch_n < n) {
        tl_afree(st->scratch);
        st->scratch = tl_amalloc(n * sizeof(float));
        st->scratch_n = st->scratch ? n : 0;
    }
    return st->scratch;
}

/* The store's view of new keys/values: K rotated then smoothed (the mean fixed by the first
 * chunk), V rotated; per-tensor ranges fixed by the first chunk. */
static void transform_kv(qstore *st, int m, const float *k, const float *v, float *kt, float *vt) {
    const tl_kv_shape *s = &st->base.shape;
    const int Hkv = s->n_head_kv, dk = s->head_dim_k, dv = s->head_dim_v, n_past = st->base.n_tokens;
    memcpy(kt, k, (size_t)m * Hkv * dk * sizeof(float));
    memcpy(vt, v, (size_t)m * Hkv * dv * sizeof(float));
    if (st->k.rotate)
        for (size_t r = 0; r < (size_t)m * Hkv; r++) kvq_hadamard(kt + r * dk, dk);
    if (st->v.rotate)
        for (size_t r = 0; r < (size_t)m * Hkv; r++) kvq_hadamard(vt + r * dv, dv);
    if (st->smooth) {
        if (!st->have_mu) { /* first chunk: fix the per-channel means */
            memset(st->mu, 0, sizeof(float) * Hkv * dk);
            for (int t = 0; t < m; t++)
                for (int i = 0; i < Hkv * dk; i++) st->mu[i] += kt[(size_t)t * Hkv * dk + i];
            for (int i = 0; i < Hkv * dk; i++) st->mu[i] /= (float)m;
            st->have_mu = true;
        }
        for (int t = 0; t < m; t++)
            for (int i = 0; i < Hkv * dk; i++) kt[(size_t)t * Hkv * dk + i] -= st->mu[i];
    }
    if (n_past == 0) st->first = m;
    /* per-tensor parameters from the first chunk */
    if (n_past == 0) {
        side_t *sides[2] = {&st->k, &st->v};
        const float *xs[2] = {kt, vt};
        for (int si = 0; si < 2; si++) {
            side_t *sd = sides[si];
            if (!sd->tensor) continue;
            for (int h = 0; h < Hkv; h++) {
                float mn = INFINITY, mxv = -INFINITY;
                for (int t = 0; t < m; t++)
                    for (int c = 0; c < sd->d; c++) {
                        const float x = xs[si][((size_t)t * Hkv + h) * sd->d + c];
                        mn = fminf(mn, x);
                        mxv = fmaxf(mxv, x);
                    }
                kvq_params_range(mn, mxv, sd->pol.bits, sd->pol.quantizer == TL_KV_SYM, sd->params + h * sd->params_head);
            }
        }
    }
}

/* Squared error of quantizing x[n] (stride apart) with one (s, z) fitted to it. */
static double group_sq_err(const float *x, int n, int stride, int bits) {
    uint16_t par[2];
    float sc, z;
    kvq_params(x, n, stride, bits, false, par);
    kvq_decode_params(par, bits, false, &sc, &z);
    double e = 0;
    for (int i = 0; i < n; i++) {
        const float xi = x[(size_t)i * stride], d = kvq_encode(xi, sc, z, bits) * sc + z - xi;
        e += (double)d * d;
    }
    return e;
}

/* On the first chunk of a store with per-token keys (no smoothing, no rotation): the relative
 * error of those keys, and of the same keys quantized after smoothing and per channel, each
 * against the energy of the mean-removed keys (the part of K that moves the softmax: q.mu is
 * the same for every key). Outlier channels make the first large and leave the others small. */
static void key_check(qstore *st, int m, const float *kt) {
    const tl_kv_shape *s = &st->base.shape;
    const int Hkv = s->n_head_kv, dk = s->head_dim_k, W = Hkv * dk, b = st->k.pol.bits, g = st->k.g;
    const int mg = m / 32 * 32; /* whole token groups of 32 for the per-channel figure */
    if (mg < 32 || st->k.mode != SIDE_SLIDE || st->k.tensor || st->smooth || st->k.rotate || b > 4) return;
    float *mu = tl_xcalloc((size_t)W, sizeof(float)), *xc = tl_xmalloc(sizeof(float) * (size_t)dk);
    for (int t = 0; t < mg; t++)
        for (int i = 0; i < W; i++) mu[i] += kt[(size_t)t * W + i] / (float)mg;
    double energy = 0, e_tok = 0, e_smooth = 0, e_chan = 0;
    for (int t = 0; t < mg; t++)
        for (int h = 0; h < Hkv; h++) {
            const float *x = kt + (size_t)t * W + (size_t)h * dk;
            for (int c = 0; c < dk; c++) {
                xc[c] = x[c] - mu[h * dk + c];
                energy += (double)xc[c] * xc[c];
            }
            for (int j = 0; j < dk / g; j++) {
                e_tok += group_sq_err(x + j * g, g, 1, b);
                e_smooth += group_sq_err(xc + j * g, g, 1, b);
            }
        }
    for (int t0 = 0; t0 < mg; t0 += 32)
        for (int i = 0; i < W; i++) e_chan += group_sq_err(kt + (size_t)t0 * W + i, 32, W, b);
    if (energy > 0) {
        st->check = (tl_kv_key_check){.measured = true, .bits = b, .tokens = mg, .err_tok = sqrt(e_tok / energy),
                                      .err_smooth = sqrt(e_smooth / energy), .err_chan = sqrt(e_chan / energy)};
    }
    free(mu);
    free(xc);
}

bool tl_kv_quant_key_check(const tl_kv_layer *l, tl_kv_key_check *out) {
    if (!l || l->ops != &quant_ops || !((const qstore *)l)->check.measured) return false;
    *out = ((const qstore *)l)->check;
    return true;
}

static int quant_forward(tl_kv_layer *l, tl_pool *pool, int m, const float *q, const float *k, const float *v,
                         float *out, tl_error *err) {
    qstore *st = (qstore *)l;
    const tl_kv_shape *s = &l->shape;
    const int Hkv = s->n_head_kv, Hq = s->n_head, dk = s->head_dim_k, dv = s->head_dim_v, G = Hq / Hkv;
    const int n_past = l->n_tokens;
    if (m <= 0) return 0;
    if ((int64_t)n_past + m > s->n_ctx)
        return tl_fail(err, "quantized KV store: %d + %d tokens exceed the capacity n_ctx %d", n_past, m, s->n_ctx);
    const int rpt = TL_MAX(1, QMAX / G), n_rowblk = (m + rpt - 1) / rpt;
    const int nthreads = pool ? tl_pool_size(pool) : 1;
    const int n_split = n_past >= 2 * TILE ? tl_kv_history_splits(Hkv * n_rowblk, nthreads, n_past / TILE) : 1;
    const int64_t n_tasks = (int64_t)Hkv * n_rowblk * n_split;

    const size_t nqk = (size_t)m * Hq * dk, nk = (size_t)m * Hkv * dk, nv = (size_t)m * Hkv * dv;
    const size_t npart = n_split > 1 ? (size_t)n_tasks * QMAX * (dv + 2) : 0;
    float *qt = scratch(st, nqk + nk + nv + npart);
    if (!qt) return tl_fail(err, "quantized KV store: cannot allocate %zu bytes of scratch", (nqk + nk + nv + npart) * 4);
    float *kt = qt + nqk, *vt = kt + nk, *part = vt + nv;

    /* transforms: scale and rotate q like K; K and V as the store sees them */
    for (size_t i = 0; i < nqk; i++) qt[i] = q[i] * s->scale;
    if (st->k.rotate)
        for (size_t r = 0; r < (size_t)m * Hq; r++) kvq_hadamard(qt + r * dk, dk);
    transform_kv(st, m, k, v, kt, vt);
    if (n_past == 0) key_check(st, m, kt);

    attn_job job = {st, n_past, m, G, rpt, n_rowblk, n_split, qt, kt, vt, out, part};
    if (pool) tl_pool_run(pool, n_tasks, attn_task, &job);
    else
        for (int64_t i = 0; i < n_tasks; i++) attn_task(&job, i, 0);
    if (n_split > 1) { /* merge partial softmax states */
        for (int64_t tb = 0; tb < (int64_t)Hkv * n_rowblk; tb++) {
            const int h = (int)(tb / n_rowblk), rb = (int)(tb % n_rowblk);
            const int r0 = rb * rpt, r1 = TL_MIN(m, r0 + rpt);
            for (int i = 0; i < (r1 - r0) * G; i++) {
                float M = -INFINITY, L = 0;
                for (int sp = 0; sp < n_split; sp++) M = fmaxf(M, part[((tb * n_split + sp) * QMAX + i) * (dv + 2)]);
                float *o = out + ((size_t)(r0 + i / G) * Hq + h * G + i % G) * dv;
                memset(o, 0, sizeof(float) * dv);
                for (int sp = 0; sp < n_split; sp++) {
                    const float *pi = part + ((tb * n_split + sp) * QMAX + i) * (dv + 2);
                    const float w = expf(pi[0] - M);
                    L += w * pi[1];
                    for (int c = 0; c < dv; c++) o[c] += w * pi[2 + c];
                }
                for (int c = 0; c < dv; c++) o[c] /= L;
            }
        }
    }
    if (st->v.rotate)
        for (size_t r = 0; r < (size_t)m * Hq; r++) kvq_hadamard(out + r * dv, dv);
    /* the block joins the history */
    for (int t = 0; t < m; t++) {
        side_append(&st->k, Hkv, (int64_t)n_past + t, kt + (size_t)t * Hkv * dk);
        side_append(&st->v, Hkv, (int64_t)n_past + t, vt + (size_t)t * Hkv * dv);
    }
    l->n_tokens += m;
    return 0;
}

int tl_kv_quant_append(tl_kv_layer *l, int m, const float *k, const float *v, tl_error *err) {
    if (!l || l->ops != &quant_ops) return tl_fail(err, "tl_kv_quant_append: not a quantized KV store");
    qstore *st = (qstore *)l;
    const tl_kv_shape *s = &l->shape;
    if (m <= 0) return 0;
    if ((int64_t)l->n_tokens + m > s->n_ctx)
        return tl_fail(err, "quantized KV store: %d + %d tokens exceed the capacity n_ctx %d", l->n_tokens, m, s->n_ctx);
    const size_t nk = (size_t)m * s->n_head_kv * s->head_dim_k, nv = (size_t)m * s->n_head_kv * s->head_dim_v;
    float *kt = scratch(st, nk + nv);
    if (!kt) return tl_fail(err, "quantized KV store: cannot allocate %zu bytes of scratch", (nk + nv) * 4);
    float *vt = kt + nk;
    transform_kv(st, m, k, v, kt, vt);
    for (int t = 0; t < m; t++) {
        side_append(&st->k, s->n_head_kv, (int64_t)l->n_tokens + t, kt + (size_t)t * s->n_head_kv * s->head_dim_k);
        side_append(&st->v, s->n_head_kv, (int64_t)l->n_tokens + t, vt + (size_t)t * s->n_head_kv * s->head_dim_v);
    }
    l->n_tokens += m;
    return 0;
}

static void quant_bytes(const tl_kv_layer *l, tl_kv_bytes *b) {
    const qstore *st = (const qstore *)l;
    memset(b, 0, sizeof *b);
    side_bytes(&st->k, l->shape.n_head_kv, l->n_tokens, b);
    side_bytes(&st->v, l->shape.n_head_kv, l->n_tokens, b);
    if (st->smooth && st->have_mu) b->other += (uint64_t)l->shape.n_head_kv * l->shape.head_dim_k * 4;
}

static void quant_clear(tl_kv_layer *l) {
    qstore *st = (qstore *)l;
    l->n_tokens = 0;
    st->k.nq = st->v.nq = 0;
    st->have_mu = false;
    st->first = 0;
    st->check.measured = false;
}

/* The largest count m <= n (n <= N, the tokens held) to which one side can be cut back so that
 * it holds exactly what it would after m tokens, the rest forgotten:
 *   DENSE16, SLIDE with R = 0: any m (each token's codes depend on that token alone).
 *   SLIDE with R > 0: tokens [m-R, m) must still be in the f16 window, which holds [N-R, N):
 *            m = N, or any m while nothing has been quantized (N <= R); else 0 (recompute).
 *   FLUSH:   m >= nq (the block holds [nq, N) in f16), or a multiple of F below it (whole
 *            quantized blocks, the block empty); a cut inside a quantized block gives F's
 *            multiple below it. */
static int side_truncate_max(const side_t *sd, int N, int n) {
    switch (sd->mode) {
    case SIDE_SLIDE: return sd->R == 0 || n == N || sd->nq == 0 ? n : 0;
    case SIDE_FLUSH: return n >= sd->nq ? n : n / sd->R * sd->R;
    default: return n;
    }
}

static void side_truncate(side_t *sd, int m) {
    switch (sd->mode) {
    case SIDE_SLIDE: sd->nq = (int)side_nq(sd, m); break; /* the window's ring slots stay t % R */
    case SIDE_FLUSH: sd->nq = TL_MIN(sd->nq, m); break;   /* block rows t - nq stay in place */
    default: break;
    }
}

/* Both sides, and the first chunk's means and per-tensor ranges: a cut inside the first chunk
 * would keep statistics of tokens it drops, so there only 0 (clear) is exact. */
static int quant_truncate_max(const tl_kv_layer *l, int n) {
    const qstore *st = (const qstore *)l;
    const int N = l->n_tokens;
    n = TL_MAX(0, TL_MIN(n, N));
    for (;;) { /* the sides' sets of exact counts differ: narrow until both accept it */
        const int m = side_truncate_max(&st->v, N, side_truncate_max(&st->k, N, n));
        if (m == n) break;
        n = m;
    }
    const bool first_stats = st->smooth || st->k.tensor || st->v.tensor;
    return first_stats && n > 0 && n < st->first ? 0 : n;
}

static int quant_truncate(tl_kv_layer *l, int n, bool dry_run, tl_error *err) {
    qstore *st = (qstore *)l;
    if (n < 0 || n > l->n_tokens) return tl_fail(err, "truncate to %d tokens: the cache holds %d", n, l->n_tokens);
    const int m = quant_truncate_max(l, n);
    if (m != n)
        return tl_fail(err, "truncate to %d tokens: the quantized store holds its tokens exactly only at %d of them "
                       "(its f16 window or block has moved past the cut, or the cut is inside the first chunk)", n, m);
    if (dry_run) return 0;
    if (n == 0) return quant_clear(l), 0;
    side_truncate(&st->k, n);
    side_truncate(&st->v, n);
    l->n_tokens = n;
    return 0;
}

static void quant_destroy(tl_kv_layer *l) {
    qstore *st = (qstore *)l;
    side_free(&st->k);
    side_free(&st->v);
    free(st->mu);
    tl_afree(st->scratch);
    free(st);
}

/* The attention scratch is working memory of one call, like the activations: released after
 * each call so that 30 layers do not each hold their own (tens of MiB on SmolLM2 at chunk
 * 256), and so that bytes() counts exactly what the cache holds. */
static int quant_forward_release(tl_kv_layer *l, tl_pool *pool, int m, const float *q, const float *k,
                                 const float *v, float *out, tl_error *err) {
    const int rc = quant_forward(l, pool, m, q, k, v, out, err);
    qstore *st = (qstore *)l;
    tl_afree(st->scratch);
    st->scratch = NULL;
    st->scratch_n = 0;
    return rc;
}

static const tl_kv_ops quant_ops = {.name = "quant",
                                    .forward = quant_forward_release,
                                    .bytes = quant_bytes,
                                    .clear = quant_clear,
                                    .destroy = quant_destroy,
                                    .truncate = quant_truncate,
                                    .truncate_max = quant_truncate_max};

static bool is_pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

/* Shape and policy checks shared by the store and the formula. */
static int check_fit(const tl_kv_layer_policy *p, const tl_kv_shape *s, side_t *k, side_t *v, tl_error *err) {
    if (p->kind != TL_KV_QUANT) return tl_fail(err, "quantized KV store: policy is not a quantized kind");
    if (s->n_head <= 0 || s->n_head_kv <= 0 || s->n_head % s->n_head_kv != 0 || s->n_ctx <= 0 || s->window < 0)
        return tl_fail(err, "quantized KV store: bad shape (heads %d/%d, ctx %d, window %d)", s->n_head, s->n_head_kv,
                       s->n_ctx, s->window);
    if (s->window > 0)
        return tl_fail(err, "quantized KV store: sliding-window layers (window %d) are not supported; give this layer a dense policy (f16)",
                       s->window);
    if (s->n_head / s->n_head_kv > QMAX)
        return tl_fail(err, "quantized KV store: GQA group %d exceeds %d", s->n_head / s->n_head_kv, QMAX);
    const int dims[2] = {s->head_dim_k, s->head_dim_v};
    for (int i = 0; i < 2; i++)
        if (dims[i] <= 0 || dims[i] % 32 != 0 || dims[i] > KVQ_MAX_DIM)
            return tl_fail(err, "quantized KV store: head_dim %s %d must be a multiple of 32 and at most %d",
                           i ? "v" : "k", dims[i], KVQ_MAX_DIM);
    if (p->residual < 0) return tl_fail(err, "quantized KV store: residual %d < 0", p->residual);
    const bool rk = p->rotate && p->k.bits < 16, rv = p->rotate && p->v.bits < 16;
    if ((rk && !is_pow2(s->head_dim_k)) || (rv && !is_pow2(s->head_dim_v)))
        return tl_fail(err, "quantized KV store: Hadamard rotation needs a power-of-two head_dim (k %d, v %d)",
                       s->head_dim_k, s->head_dim_v);
    if (side_init(k, &p->k, s->head_dim_k, p->residual, rk, s->n_ctx, s->n_head_kv, "K", err)) return -1;
    if (side_init(v, &p->v, s->head_dim_v, p->residual, rv, s->n_ctx, s->n_head_kv, "V", err)) return -1;
    return 0;
}

tl_kv_layer *tl_kv_quant_new(const tl_kv_layer_policy *p, const tl_kv_shape *s, tl_error *err) {
    qstore *st = tl_xcalloc(1, sizeof *st);
    st->base.ops = &quant_ops;
    st->base.shape = *s;
    st->pol = *p;
    if (check_fit(p, s, &st->k, &st->v, err) || side_alloc(&st->k, s->n_head_kv, "K", err) ||
        side_alloc(&st->v, s->n_head_kv, "V", err)) {
        quant_destroy(&st->base);
        return NULL;
    }
    st->smooth = p->smooth_k && p->k.bits < 16;
    if (st->smooth) st->mu = tl_xcalloc((size_t)s->n_head_kv * s->head_dim_k, sizeof(float));
    st->kern = kvq_kernels_best();
    st->vo = tl_vec_get();
    return &st->base;
}

void tl_kv_quant_force_scalar(tl_kv_layer *l, bool scalar) {
    if (l && l->ops == &quant_ops) {
        ((qstore *)l)->kern = scalar ? kvq_kernels_ref() : kvq_kernels_best();
        ((qstore *)l)->vo = scalar ? tl_vec_ref() : tl_vec_get();
    }
}

int tl_kv_quant_bytes_formula(const tl_kv_layer_policy *p, const tl_kv_shape *s, int64_t n, tl_kv_bytes *b,
                              tl_error *err) {
    side_t k, v;
    memset(b, 0, sizeof *b);
    if (check_fit(p, s, &k, &v, err)) return -1;
    side_bytes(&k, s->n_head_kv, n, b);
    side_bytes(&v, s->n_head_kv, n, b);
    if (p->smooth_k && p->k.bits < 16 && n > 0) b->other += (uint64_t)s->n_head_kv * s->head_dim_k * 4;
    return 0;
}

/* Testing hook (quant_kernels.h): the stored representation of token t of head h, dequantized
 * (in the store's transformed space: rotated and smoothed keys). */
int kvq_debug_row(const tl_kv_layer *l, int h, int64_t t, bool is_v, float *out) {
    if (!l || l->ops != &quant_ops || t < 0 || t >= l->n_tokens || h < 0 || h >= l->shape.n_head_kv) return -1;
    const qstore *st = (const qstore *)l;
    const side_t *sd = is_v ? &st->v : &st->k;
    const int d = sd->d;
    if (sd->mode == SIDE_DENSE16 || t >= sd->nq) {
        const int64_t slot = sd->mode == SIDE_DENSE16 ? t : sd->mode == SIDE_FLUSH ? t - sd->nq : t % sd->R;
        for (int c = 0; c < d; c++) out[c] = tl_fp16_to_fp32(sd->fp[h * sd->fp_head + (size_t)slot * d + c]);
        return 0;
    }
    /* one-hot queries through the reference kernel give exactly the dequantized values */
    const kvq_kernels *K = kvq_kernels_ref();
    float p[TILE] = {0};
    memset(out, 0, sizeof(float) * d);
    kvq_run r = {.d = d, .g = sd->g, .bits = sd->pol.bits, .sym = sd->pol.quantizer == TL_KV_SYM};
    if (sd->mode == SIDE_SLIDE) {
        r.codes = sd->codes + h * sd->codes_head + (size_t)t * sd->row_bytes;
        r.params = sd->params + h * sd->params_head + (size_t)t * sd->pstride;
        r.pstride = sd->pstride;
        r.n = 1;
        p[0] = 1;
        K->tok_accum(&r, p, 1, 1, out, d);
    } else {
        const int64_t tg = t / sd->g;
        r.codes = sd->codes + h * sd->codes_head + (size_t)tg * sd->grp_bytes;
        r.params = sd->params + h * sd->params_head + (size_t)tg * sd->grp_halves;
        r.ce = sd->ce;
        r.n = sd->g;
        p[t % sd->g] = 1;
        K->ch_accum(&r, p, 1, sd->g, out, d);
    }
    return 0;
}
