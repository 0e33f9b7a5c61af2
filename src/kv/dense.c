/* dense.c: full-precision KV stores (f32, f16, bf16).
 *
 * Storage: per KV head a ring of `cap` token rows ([n_head_kv][cap][head_dim]), so one head's
 * keys are contiguous for streaming; token at absolute position p lives in row p % cap.
 * Full-attention layers have cap = n_ctx; sliding-window layers cap = window (they only ever
 * need the last `window` tokens), which is what makes Gemma-3's local layers cheap.
 *
 * Attention (flash-attention style, never materializing a score matrix larger than a tile):
 * work is split into tasks of (KV head, block of queries, range of keys). A task takes the
 * query rows of all heads sharing the KV head (GQA: each key row is read once for the whole
 * group), walks the keys in tiles of TILE tokens with the fused multi-query kernels of
 * quant_kernels.h straight over the stored f16/f32 rows (bf16 rows widened per tile), and
 * keeps an online softmax state (running max m, sum l, accumulator) per query row. Decode (few queries) splits the keys
 * over tasks too and merges the partial states with their log-sum-exp weights. Soft-capped
 * scores (Gemma 2) are capped per tile, before the mask and softmax. */
#include "kv.h"
#include "../cpu/vec.h"
#include "quant_kernels.h"

#include <math.h>
#include <stdlib.h>

#define TILE 64

typedef struct {
    tl_kv_layer base;
    tl_kv_kind type;
    int cap;       /* rows per head */
    size_t elt;    /* bytes per stored element */
    uint8_t *k, *v;
    const tl_vec_ops *vo;
    const kvq_kernels *kk; /* fused multi-query score/accumulate kernels over f16/f32 rows */
} dense_layer;

/* One forward call's shared, read-only description. */
typedef struct {
    const dense_layer *d;
    int n_past, n_tok;
    const float *q, *k_new, *v_new;
    float *out;
    int q_block;    /* queries per task */
    int n_qblocks;
    int n_split;    /* key ranges per (head, query block) */
    float *partial; /* [task][rows][dv + 2] when n_split > 1 */
    int rows_max;
} attn_job;

static const char *kind_name(tl_kv_kind t) {
    return t == TL_KV_F32 ? "f32" : t == TL_KV_F16 ? "f16" : t == TL_KV_BF16 ? "bf16" : "?";
}

static void store_row(const dense_layer *d, const float *src, uint8_t *dst, int n) {
    switch (d->type) {
    case TL_KV_F16: d->vo->f32_to_f16(src, (uint16_t *)dst, n); break;
    case TL_KV_BF16:
        for (int i = 0; i < n; i++) ((uint16_t *)dst)[i] = tl_fp32_to_bf16(src[i]);
        break;
    default: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    }
}

/* A run of consecutive key positions [p0, p0 + n) whose rows are contiguous in memory:
 * either in the ring (history) or in the new block (f32, given by the caller). */
typedef struct {
    int p0, n;
    bool is_new;
    const void *k, *v; /* first row of the run */
    int ks, vs;        /* row strides in elements (new block only) */
} key_run;

/* Split [lo, hi) at the history/new boundary and at the ring's wrap. Returns runs written. */
static int key_runs(const attn_job *j, int h, int lo, int hi, key_run *runs) {
    const dense_layer *d = j->d;
    const tl_kv_shape *s = &d->base.shape;
    int n = 0;
    for (int p = lo; p < hi;) {
        key_run *r = &runs[n++];
        r->p0 = p;
        if (p < j->n_past) {
            const int row = p % d->cap;
            r->n = TL_MIN(TL_MIN(hi, j->n_past) - p, d->cap - row);
            r->is_new = false;
            r->k = d->k + ((size_t)h * d->cap + row) * s->head_dim_k * d->elt;
            r->v = d->v + ((size_t)h * d->cap + row) * s->head_dim_v * d->elt;
        } else {
            r->n = hi - p;
            r->is_new = true;
            r->ks = s->n_head_kv * s->head_dim_k;
            r->vs = s->n_head_kv * s->head_dim_v;
            r->k = j->k_new + (size_t)(p - j->n_past) * r->ks + (size_t)h * s->head_dim_k;
            r->v = j->v_new + (size_t)(p - j->n_past) * r->vs + (size_t)h * s->head_dim_v;
        }
        p += r->n;
    }
    return n;
}

/* scores[r][t] for all query rows over one run; bf16 runs are widened into `tmp` first. */
static void run_scores(const attn_job *j, const key_run *r, const float *q, int rows, float *sc, int ss, float *tmp) {
    const dense_layer *d = j->d;
    const int dk = d->base.shape.head_dim_k;
    if (r->is_new) d->kk->f32_scores(r->k, r->ks, r->n, dk, q, rows, dk, sc, ss);
    else if (d->type == TL_KV_F16) d->kk->f16_scores(r->k, r->n, dk, q, rows, dk, sc, ss);
    else if (d->type == TL_KV_F32) d->kk->f32_scores(r->k, dk, r->n, dk, q, rows, dk, sc, ss);
    else {
        d->vo->bf16_to_f32(r->k, tmp, r->n * dk);
        d->kk->f32_scores(tmp, dk, r->n, dk, q, rows, dk, sc, ss);
    }
}

static void run_accum(const attn_job *j, const key_run *r, const float *p, int rows, int ps, float *acc, float *tmp) {
    const dense_layer *d = j->d;
    const int dv = d->base.shape.head_dim_v;
    if (r->is_new) d->kk->f32_accum(r->v, r->vs, r->n, dv, p, rows, ps, acc, dv);
    else if (d->type == TL_KV_F16) d->kk->f16_accum(r->v, r->n, dv, p, rows, ps, acc, dv);
    else if (d->type == TL_KV_F32) d->kk->f32_accum(r->v, dv, r->n, dv, p, rows, ps, acc, dv);
    else {
        d->vo->bf16_to_f32(r->v, tmp, r->n * dv);
        d->kk->f32_accum(tmp, dv, r->n, dv, p, rows, ps, acc, dv);
    }
}

static void attn_task(void *ctx, int64_t task, int thread_id) {
    const attn_job *j = ctx;
    const dense_layer *d = j->d;
    const tl_kv_shape *s = &d->base.shape;
    const tl_vec_ops *vo = d->vo;
    const int G = s->n_head / s->n_head_kv, dk = s->head_dim_k, dv = s->head_dim_v;
    const int split = (int)(task % j->n_split);
    const int qb = (int)((task / j->n_split) % j->n_qblocks);
    const int h = (int)(task / j->n_split / j->n_qblocks);
    const int i0 = qb * j->q_block, i1 = TL_MIN(j->n_tok, i0 + j->q_block);
    const int rows = (i1 - i0) * G;

    /* Keys visible to any query of the block: [lo, hi), then this task's share in whole tiles. */
    const int last_pos = j->n_past + i1 - 1, first_pos = j->n_past + i0;
    int lo = s->window > 0 ? TL_MAX(0, first_pos - s->window + 1) : 0;
    int hi = last_pos + 1;
    {
        /* tiles spread evenly: split s takes tiles [s*n/ns, (s+1)*n/ns); one may be empty (early
         * query blocks of a prefill chunk see few keys): its state stays -inf, the merge skips it */
        const int64_t n_tiles = (hi - lo + TILE - 1) / TILE;
        const int a = lo + (int)(split * n_tiles / j->n_split) * TILE;
        hi = TL_MIN(hi, lo + (int)((split + 1) * n_tiles / j->n_split) * TILE);
        lo = a;
    }

    const int dmax = TL_MAX(dk, dv);
    float *qr = tl_xmalloc(sizeof(float) * ((size_t)rows * dk + (size_t)rows * dv + (size_t)rows * TILE +
                                            (size_t)TILE * dmax + (size_t)rows * 2));
    float *acc = qr + (size_t)rows * dk;
    float *sc = acc + (size_t)rows * dv;
    float *tmp = sc + (size_t)rows * TILE;
    float *mrow = tmp + (size_t)TILE * dmax;
    float *lrow = mrow + rows;
    for (int i = i0; i < i1; i++)
        for (int g = 0; g < G; g++) {
            float *dst = qr + (size_t)((i - i0) * G + g) * dk;
            memcpy(dst, j->q + (size_t)i * s->n_head * dk + (size_t)(h * G + g) * dk, sizeof(float) * dk);
            vo->scale(dst, dk, s->scale);
        }
    memset(acc, 0, sizeof(float) * (size_t)rows * dv);
    for (int r = 0; r < rows; r++) {
        mrow[r] = -INFINITY;
        lrow[r] = 0.0f;
    }

    key_run runs[4];
    for (int t0 = lo; t0 < hi; t0 += TILE) {
        const int tn = TL_MIN(TILE, hi - t0);
        const int nr = key_runs(j, h, t0, t0 + tn, runs);
        for (int k = 0; k < nr; k++) run_scores(j, &runs[k], qr, rows, sc + (runs[k].p0 - t0), TILE, tmp);
        if (s->softcap > 0)
            for (int r = 0; r < rows; r++) tl_softcap(sc + (size_t)r * TILE, tn, s->softcap);
        /* mask, online softmax: sc rows become probabilities relative to each row's max */
        for (int r = 0; r < rows; r++) {
            const int qpos = j->n_past + i0 + r / G;
            int tv_lo = 0, tv_hi = tn; /* visible keys within the tile */
            if (t0 + tv_hi - 1 > qpos) tv_hi = qpos - t0 + 1;
            if (s->window > 0 && t0 < qpos - s->window + 1) tv_lo = qpos - s->window + 1 - t0;
            float *srow = sc + (size_t)r * TILE;
            if (tv_hi <= tv_lo) {
                memset(srow, 0, sizeof(float) * tn);
                continue;
            }
            const int nv = tv_hi - tv_lo;
            const float mt = vo->max(srow + tv_lo, nv);
            const float mnew = mt > mrow[r] ? mt : mrow[r];
            const float corr = expf(mrow[r] - mnew);
            if (corr != 1.0f) vo->scale(acc + (size_t)r * dv, dv, corr);
            lrow[r] = lrow[r] * corr + vo->exp_sub_sum(srow + tv_lo, nv, mnew);
            mrow[r] = mnew;
            for (int t = 0; t < tv_lo; t++) srow[t] = 0.0f;
            for (int t = tv_hi; t < tn; t++) srow[t] = 0.0f;
        }
        for (int k = 0; k < nr; k++) run_accum(j, &runs[k], sc + (runs[k].p0 - t0), rows, TILE, acc, tmp);
    }

    if (j->n_split == 1) {
        for (int r = 0; r < rows; r++) {
            const int i = i0 + r / G, g = r % G;
            float *o = j->out + (size_t)i * s->n_head * dv + (size_t)(h * G + g) * dv;
            const float inv = lrow[r] > 0.0f ? 1.0f / lrow[r] : 0.0f;
            for (int c = 0; c < dv; c++) o[c] = acc[(size_t)r * dv + c] * inv;
        }
    } else {
        float *p = j->partial + (size_t)task * j->rows_max * (dv + 2);
        for (int r = 0; r < rows; r++) {
            float *pr = p + (size_t)r * (dv + 2);
            pr[0] = mrow[r];
            pr[1] = lrow[r];
            memcpy(pr + 2, acc + (size_t)r * dv, sizeof(float) * dv);
        }
    }
    free(qr);
}

/* Combine the key-range partial states of each (head, query block). */
static void merge_partials(const attn_job *j) {
    const tl_kv_shape *s = &j->d->base.shape;
    const int G = s->n_head / s->n_head_kv, dv = s->head_dim_v;
    for (int h = 0; h < s->n_head_kv; h++)
        for (int qb = 0; qb < j->n_qblocks; qb++) {
            const int i0 = qb * j->q_block, i1 = TL_MIN(j->n_tok, i0 + j->q_block);
            const int rows = (i1 - i0) * G;
            const int64_t t0 = ((int64_t)h * j->n_qblocks + qb) * j->n_split;
            for (int r = 0; r < rows; r++) {
                float m = -INFINITY;
                for (int sp = 0; sp < j->n_split; sp++) {
                    const float pm = j->partial[((size_t)(t0 + sp) * j->rows_max + r) * (dv + 2)];
                    m = pm > m ? pm : m;
                }
                const int i = i0 + r / G, g = r % G;
                float *o = j->out + (size_t)i * s->n_head * dv + (size_t)(h * G + g) * dv;
                memset(o, 0, sizeof(float) * dv);
                float l = 0.0f;
                for (int sp = 0; sp < j->n_split; sp++) {
                    const float *pr = j->partial + ((size_t)(t0 + sp) * j->rows_max + r) * (dv + 2);
                    if (pr[0] == -INFINITY) continue;
                    const float w = expf(pr[0] - m);
                    l += w * pr[1];
                    j->d->vo->axpy(o, pr + 2, dv, w);
                }
                j->d->vo->scale(o, dv, l > 0.0f ? 1.0f / l : 0.0f);
            }
        }
}

static int dense_forward(tl_kv_layer *l, tl_pool *pool, int n_tok, const float *q, const float *k, const float *v,
                         float *out, tl_error *err) {
    dense_layer *d = (dense_layer *)l;
    const tl_kv_shape *s = &l->shape;
    const int n_past = l->n_tokens;
    if (n_tok <= 0) return 0;
    if (s->window == 0 && n_past + n_tok > d->cap)
        return tl_fail(err, "KV cache full: %d tokens held + %d new > context %d (raise -c)", n_past, n_tok, d->cap);

    attn_job j = {.d = d, .n_past = n_past, .n_tok = n_tok, .q = q, .k_new = k, .v_new = v, .out = out};
    const int G = s->n_head / s->n_head_kv;
    j.q_block = TL_MAX(1, 64 / G);
    if (j.q_block > n_tok) j.q_block = n_tok;
    j.n_qblocks = (n_tok + j.q_block - 1) / j.q_block;
    j.rows_max = j.q_block * G;
    /* Enough tasks to keep every thread busy: split the keys when heads x blocks are few. */
    const int n_threads = tl_pool_size(pool);
    const int base_tasks = s->n_head_kv * j.n_qblocks;
    const int n_keys = s->window > 0 ? TL_MIN(n_past + n_tok, s->window + n_tok) : n_past + n_tok;
    j.n_split = base_tasks < 4 * n_threads ? tl_kv_history_splits(base_tasks, n_threads, n_keys / (4 * TILE)) : 1;
    const int64_t n_tasks = (int64_t)base_tasks * j.n_split;
    if (j.n_split > 1) j.partial = tl_xmalloc(sizeof(float) * (size_t)n_tasks * j.rows_max * (s->head_dim_v + 2));
    tl_pool_run(pool, n_tasks, attn_task, &j);
    if (j.n_split > 1) {
        merge_partials(&j);
        free(j.partial);
    }

    /* Append the new block (for a window layer only its last `cap` tokens survive anyway). */
    const int first = TL_MAX(0, n_tok - d->cap);
    for (int i = first; i < n_tok; i++) {
        const int row = (n_past + i) % d->cap;
        for (int h = 0; h < s->n_head_kv; h++) {
            store_row(d, k + (size_t)i * s->n_head_kv * s->head_dim_k + (size_t)h * s->head_dim_k,
                      d->k + ((size_t)h * d->cap + row) * s->head_dim_k * d->elt, s->head_dim_k);
            store_row(d, v + (size_t)i * s->n_head_kv * s->head_dim_v + (size_t)h * s->head_dim_v,
                      d->v + ((size_t)h * d->cap + row) * s->head_dim_v * d->elt, s->head_dim_v);
        }
    }
    l->n_tokens += n_tok;
    return 0;
}

static void dense_bytes(const tl_kv_layer *l, tl_kv_bytes *b) {
    const dense_layer *d = (const dense_layer *)l;
    const tl_kv_shape *s = &l->shape;
    const uint64_t held = (uint64_t)TL_MIN(l->n_tokens, d->cap);
    memset(b, 0, sizeof *b);
    b->codes = held * s->n_head_kv * (uint64_t)(s->head_dim_k + s->head_dim_v) * d->elt;
}

static void dense_clear(tl_kv_layer *l) { l->n_tokens = 0; }

/* Rows of the ring hold positions [n_tokens - cap, n_tokens): cutting back to n needs
 * [n - cap, n), which later positions have overwritten once the ring has wrapped. */
static int dense_truncate(tl_kv_layer *l, int n, bool dry_run, tl_error *err) {
    const dense_layer *d = (const dense_layer *)l;
    if (n < 0 || n > l->n_tokens) return tl_fail(err, "truncate to %d tokens: the cache holds %d", n, l->n_tokens);
    if (n < l->n_tokens && l->n_tokens > d->cap)
        return tl_fail(err, "truncate to %d tokens: the sliding window of %d has moved past it", n, d->cap);
    if (!dry_run) l->n_tokens = n;
    return 0;
}

static int dense_truncate_max(const tl_kv_layer *l, int n) {
    const dense_layer *d = (const dense_layer *)l;
    n = TL_MAX(0, TL_MIN(n, l->n_tokens));
    return n == l->n_tokens || l->n_tokens <= d->cap ? n : 0;
}

static void dense_destroy(tl_kv_layer *l) {
    dense_layer *d = (dense_layer *)l;
    tl_afree(d->k);
    tl_afree(d->v);
    free(d);
}

static const tl_kv_ops dense_ops = {"dense",       dense_forward, dense_bytes,    dense_clear,       dense_destroy,
                                    NULL,          false,         dense_truncate, dense_truncate_max};

tl_kv_layer *tl_kv_dense_new(tl_kv_kind type, const tl_kv_shape *s, tl_error *err) {
    if (type != TL_KV_F32 && type != TL_KV_F16 && type != TL_KV_BF16) {
        tl_fail(err, "dense KV store: unsupported type %d", (int)type);
        return NULL;
    }
    if (s->n_head <= 0 || s->n_head_kv <= 0 || s->n_head % s->n_head_kv != 0 || s->head_dim_k <= 0 ||
        s->head_dim_v <= 0 || s->n_ctx <= 0 || s->window < 0) {
        tl_fail(err, "dense KV store: bad shape (heads %d/%d, dims %d/%d, ctx %d)", s->n_head, s->n_head_kv,
                s->head_dim_k, s->head_dim_v, s->n_ctx);
        return NULL;
    }
    dense_layer *d = tl_xcalloc(1, sizeof *d);
    d->base.ops = &dense_ops;
    d->base.shape = *s;
    d->type = type;
    d->elt = type == TL_KV_F32 ? 4 : 2;
    d->cap = s->window > 0 ? TL_MIN(s->window, s->n_ctx) : s->n_ctx;
    d->vo = tl_vec_get();
    /* the AVX2 kernels take head sizes in multiples of 32 (every real model); others use the reference */
    d->kk = s->head_dim_k % 32 == 0 && s->head_dim_v % 32 == 0 ? kvq_kernels_best() : kvq_kernels_ref();
    const size_t kb = (size_t)s->n_head_kv * d->cap * s->head_dim_k * d->elt;
    const size_t vb = (size_t)s->n_head_kv * d->cap * s->head_dim_v * d->elt;
    d->k = tl_amalloc(kb);
    d->v = tl_amalloc(vb);
    if (!d->k || !d->v) {
        tl_fail(err, "dense KV store (%s): cannot allocate %zu bytes for %d tokens", kind_name(type), kb + vb, d->cap);
        dense_destroy(&d->base);
        return NULL;
    }
    return &d->base;
}
