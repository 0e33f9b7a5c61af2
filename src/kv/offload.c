/* offload.c: TailorKV's sparse-layer store (arXiv 2505.19586, section 3.3), on the CPU with the
 * two memory tiers of a GPU deployment kept as separate allocations.
 *
 * ---- What lives where ----
 * "Prompt" tokens are those appended in calls with n_tok > 1 (prefill chunks); "generated"
 * tokens are those appended one at a time (decode). Host index i = i-th prompt token.
 *   host tier:   K and V of every prompt token, f16, [head][token][dim]; plus (summary_bits == 0,
 *                the paper) a channel-major copy of K, [head][channel][token], so that a few
 *                channels of all tokens are contiguous reads.
 *   device tier: the first `sinks` prompt tokens; the last `recent` prompt tokens (a ring; the
 *                sinks are never in it); every generated token; per KV head and channel
 *                max_t |K[t,c]| over the prompt (f32); with summary_bits = b > 0, a b-bit
 *                channel-major key summary of the prompt (codes [head][channel][token], per token
 *                groups of 32 channels with f16 scale and minimum, asymmetric round-to-nearest).
 * Sink/recent/generated K/V are f16 like the host tier, so with topk >= context the store is
 * exactly an f16 cache (tested against the dense f16 store).
 *
 * ---- Attention ----
 * Prefill chunk (n_tok > 1): exact attention over all prompt tokens (read from the host tier:
 * the paper prefills densely), the generated tokens and the chunk itself (causal); then the
 * chunk is appended: K/V to the host tier (counted as d2h bytes), sinks/ring/max|K|/summary
 * updated on the device.
 * Decode (n_tok == 1), per KV head h with G query heads:
 *   1. channels: qhat = mean over the G heads of the predicted query (predicted_query(), made by
 *      the session from the previous layer's normed input); score_c = |qhat_c| * max|K[.,c]|;
 *      the top `channels` c. Without a prediction (e.g. layer 0) the real query is used.
 *   2. candidates = prompt tokens that are neither sinks nor recent: the contiguous host range
 *      [S', n_prompt - R'). If more candidates than the budget: approximate scores
 *      s_t = sum_{c in channels} qbar_c K[t,c] with qbar the mean of the REAL queries of the
 *      group, K[t,c] from the host channel rows (moved: channels x candidates x 2 bytes) or from
 *      the device summary (nothing moved); top `topk` tokens (or, with page P > 0, the top
 *      topk/P pages of P candidates ranked by their best token). Otherwise all candidates.
 *   3. the selected K/V rows are copied host -> device staging (moved: rows x (dk+dv) x 2).
 *   4. exact attention, softmax over sinks + recent + selected + generated + the new token.
 * Soft-capped scores (Gemma 2) are capped before softmax in both; the selection ranks by raw
 * scores, which the cap's monotone curve would not reorder.
 * Ties in top-k break toward the lower index, so selection is deterministic.
 *
 * ---- Bytes (exact; per KV head; n = prompt tokens, m = generated tokens) ----
 *   device codes = (min(n,S) + min(R, max(0, n-S)) + m) * (dk + dv) * 2
 *   device other = dk * 4 (max|K|)  [+ summary: dk * ceil(n*b/8) codes + (dk/32) * n * 4]
 *   host         = n * (dk + dv) * 2  [+ n * dk * 2 channel-major copy when summary_bits == 0]
 * Staging buffers (the top-k rows, the scored channel rows) are transient workspace, like
 * activations, and not counted. */
#include "offload.h"
#include "../cpu/vec.h"

#include <math.h>
#include <stdlib.h>

#define TILE 64
#define SUM_GROUP 32

typedef struct {
    tl_kv_layer base;
    tl_kv_offload_params p;
    const tl_vec_ops *vo;
    int H, G, dk, dv, cap, C, sg; /* C: channels used; sg: summary channel group */
    /* host tier */
    uint16_t *hk, *hv; /* [H][cap][d] */
    uint16_t *hkt;     /* [H][dk][cap], summary_bits == 0 only */
    int n_host;
    /* device tier */
    uint16_t *sk, *sv; /* [H][S][d] sinks */
    uint16_t *rk, *rv; /* [H][R][d] ring of recent prompt tokens, slot = host index % R */
    uint16_t *gk, *gv; /* [H][cap][d] generated */
    int n_gen;
    int gen_first_pos; /* position of the first generated token (-1: none) */
    float *kmax;       /* [H][dk] */
    uint8_t *sum_codes;/* [H][dk][sum_row] */
    uint16_t *sum_sz;  /* [H][dk/sg][cap][2] (scale, min) */
    size_t sum_row;
    /* query prediction for the coming decode step */
    int *chan;         /* [H][C] */
    int chan_pos;      /* position the channels were predicted for, -1: none */
    /* staging / scratch */
    uint16_t *stk, *stv; /* [H][maxsel][d] retrieved rows (device staging) */
    int maxsel;
    int *sel;          /* [H][maxsel] last selection (host indices, ascending) */
    int *nsel;         /* [H] */
    tl_kv_offload_stats st;
} off_layer;

/* A run of key/value rows: f16 rows (k16/v16, with optional index list) or f32 rows
 * (k32/v32 with a row stride). causal < 0: every query row sees every row; causal = c >= 0:
 * the rows are a prefill chunk and query row r (query c + r/G of the chunk) sees rows 0..c + r/G. */
typedef struct {
    const uint16_t *k16, *v16;
    const int *idx;
    const float *k32, *v32;
    size_t kstride, vstride; /* f32 rows: elements between rows */
    int n;
    int causal;
} segment;

/* ---------- small helpers ---------- */

static int device_prompt_rows(int n, int S, int R) { return TL_MIN(n, S) + TL_MIN(R, TL_MAX(0, n - S)); }

/* The candidate host range [lo, hi): neither sinks nor recent. */
static void candidate_range(const off_layer *o, int *lo, int *hi) {
    const int n = o->n_host, S = TL_MIN(o->p.sinks, n);
    const int R = TL_MIN(o->p.recent, n - S);
    *lo = S;
    *hi = n - R;
}

/* Larger score first; ties: lower index first. */
typedef struct {
    float s;
    int i;
} scored;

static bool before(const scored *a, const scored *b) { return a->s > b->s || (a->s == b->s && a->i < b->i); }

/* Partially order a[0..n) so that a[0..k) are the k best (in any order). Quickselect. */
static void select_top(scored *a, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        const scored piv = a[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (before(&a[i], &piv)) i++;
            while (before(&piv, &a[j])) j--;
            if (i <= j) {
                const scored t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

static int cmp_int(const void *a, const void *b) {
    const int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* ---------- attention over segments (online softmax, tiles of TILE keys) ---------- */

/* qr: rows x dk, already scaled; row r belongs to query (block-relative) r / G.
 * out row r -> dst rows via out_of(r). acc/m/l scratch given by caller. */
typedef struct {
    const off_layer *o;
    float *qr, *acc, *m, *l, *sc, *kt, *vt, *krow;
    int rows;
} attn_state;

static void attn_init(attn_state *a, const off_layer *o, int rows) {
    const int dk = o->dk, dv = o->dv;
    a->o = o;
    a->rows = rows;
    a->qr = tl_xmalloc(sizeof(float) * ((size_t)rows * dk + (size_t)rows * dv + (size_t)rows * 2 + (size_t)rows * TILE +
                                        (size_t)dk * TILE + (size_t)TILE * dv + (size_t)TL_MAX(dk, dv)));
    a->acc = a->qr + (size_t)rows * dk;
    a->m = a->acc + (size_t)rows * dv;
    a->l = a->m + rows;
    a->sc = a->l + rows;
    a->kt = a->sc + (size_t)rows * TILE;
    a->vt = a->kt + (size_t)dk * TILE;
    a->krow = a->vt + (size_t)TILE * dv;
    memset(a->acc, 0, sizeof(float) * (size_t)rows * dv);
    for (int r = 0; r < rows; r++) {
        a->m[r] = -INFINITY;
        a->l[r] = 0.0f;
    }
}

static void attn_segment(attn_state *a, const segment *sg) {
    const off_layer *o = a->o;
    const tl_vec_ops *vo = o->vo;
    const int dk = o->dk, dv = o->dv, G = o->G;
    for (int t0 = 0; t0 < sg->n; t0 += TILE) {
        const int tn = TL_MIN(TILE, sg->n - t0);
        for (int t = 0; t < tn; t++) {
            const int row = sg->idx ? sg->idx[t0 + t] : t0 + t;
            if (sg->k16) {
                vo->f16_to_f32(sg->k16 + (size_t)row * dk, a->krow, dk);
                vo->f16_to_f32(sg->v16 + (size_t)row * dv, a->vt + (size_t)t * dv, dv);
            } else {
                memcpy(a->krow, sg->k32 + (size_t)row * sg->kstride, sizeof(float) * dk);
                memcpy(a->vt + (size_t)t * dv, sg->v32 + (size_t)row * sg->vstride, sizeof(float) * dv);
            }
            for (int c = 0; c < dk; c++) a->kt[(size_t)c * tn + t] = a->krow[c];
        }
        for (int r = 0; r < a->rows; r++) {
            int nv = tn;
            if (sg->causal >= 0) {
                const int qi = sg->causal + r / G; /* sees rows 0..qi of the block */
                nv = TL_MIN(tn, qi - t0 + 1);
            }
            if (nv <= 0) continue;
            float *srow = a->sc + (size_t)r * TILE;
            vo->scores_t(a->qr + (size_t)r * dk, a->kt, dk, tn, srow);
            tl_softcap(srow, nv, o->base.shape.softcap);
            const float mt = vo->max(srow, nv);
            const float mnew = mt > a->m[r] ? mt : a->m[r];
            const float corr = expf(a->m[r] - mnew);
            float *ar = a->acc + (size_t)r * dv;
            if (corr != 1.0f) vo->scale(ar, dv, corr);
            const float sum = vo->exp_sub_sum(srow, nv, mnew);
            a->l[r] = a->l[r] * corr + sum;
            a->m[r] = mnew;
            vo->acc_pv(srow, a->vt, nv, dv, ar);
        }
    }
}

/* ---------- prefill: exact attention, then append to the host tier ---------- */

typedef struct {
    off_layer *o;
    int n_tok, q_block, n_qblocks;
    const float *q, *k, *v;
    float *out;
} prefill_job;

static void prefill_task(void *ctx, int64_t task, int thread_id) {
    (void)thread_id;
    const prefill_job *j = ctx;
    const off_layer *o = j->o;
    const int G = o->G, dk = o->dk, dv = o->dv, H = o->H;
    const int h = (int)(task / j->n_qblocks), qb = (int)(task % j->n_qblocks);
    const int i0 = qb * j->q_block, i1 = TL_MIN(j->n_tok, i0 + j->q_block);
    attn_state a;
    attn_init(&a, o, (i1 - i0) * G);
    for (int i = i0; i < i1; i++)
        for (int g = 0; g < G; g++) {
            float *dst = a.qr + (size_t)((i - i0) * G + g) * dk;
            memcpy(dst, j->q + ((size_t)i * o->base.shape.n_head + (size_t)h * G + g) * dk, sizeof(float) * dk);
            o->vo->scale(dst, dk, o->base.shape.scale);
        }
    const segment host = {.k16 = o->hk + (size_t)h * o->cap * dk, .v16 = o->hv + (size_t)h * o->cap * dv, .n = o->n_host, .causal = -1};
    const segment gen = {.k16 = o->gk + (size_t)h * o->cap * dk, .v16 = o->gv + (size_t)h * o->cap * dv, .n = o->n_gen, .causal = -1};
    attn_segment(&a, &host);
    attn_segment(&a, &gen);
    /* the chunk itself, causal: query i sees chunk rows 0..i (qr row r is query i0 + r/G) */
    const segment blk = {.k32 = j->k + (size_t)h * dk, .v32 = j->v + (size_t)h * dv, .kstride = (size_t)H * dk, .vstride = (size_t)H * dv, .n = i1, .causal = i0};
    attn_segment(&a, &blk);
    for (int r = 0; r < a.rows; r++) {
        const int i = i0 + r / G, g = r % G;
        float *dst = j->out + ((size_t)i * o->base.shape.n_head + (size_t)h * G + g) * dv;
        const float inv = a.l[r] > 0.0f ? 1.0f / a.l[r] : 0.0f;
        for (int c = 0; c < dv; c++) dst[c] = a.acc[(size_t)r * dv + c] * inv;
    }
    free(a.qr);
}

/* b-bit summary of one key row (head h, host index t). */
static void summary_put(off_layer *o, int h, int t, const float *krow) {
    const int b = o->p.summary_bits, dk = o->dk, maxq = (1 << b) - 1;
    for (int g0 = 0; g0 < dk; g0 += o->sg) {
        float mn = krow[g0], mx = krow[g0];
        for (int c = g0; c < g0 + o->sg; c++) {
            mn = krow[c] < mn ? krow[c] : mn;
            mx = krow[c] > mx ? krow[c] : mx;
        }
        const uint16_t s16 = tl_fp32_to_fp16((mx - mn) / (float)maxq), z16 = tl_fp32_to_fp16(mn);
        const float s = tl_fp16_to_fp32(s16), z = tl_fp16_to_fp32(z16);
        uint16_t *sz = o->sum_sz + (((size_t)h * (dk / o->sg) + g0 / o->sg) * o->cap + t) * 2;
        sz[0] = s16;
        sz[1] = z16;
        for (int c = g0; c < g0 + o->sg; c++) {
            int q = s > 0.0f ? (int)lrintf((krow[c] - z) / s) : 0;
            q = q < 0 ? 0 : q > maxq ? maxq : q;
            uint8_t *row = o->sum_codes + ((size_t)h * dk + c) * o->sum_row;
            const size_t bit = (size_t)t * b;
            uint8_t *byte = row + bit / 8;
            const int sh = (int)(bit % 8);
            *byte = (uint8_t)((*byte & ~(maxq << sh)) | (q << sh));
        }
    }
}

static void append_prompt(off_layer *o, int n_tok, const float *k, const float *v) {
    const int H = o->H, dk = o->dk, dv = o->dv, S = o->p.sinks, R = o->p.recent;
    float *krow = tl_xmalloc(sizeof(float) * dk);
    for (int i = 0; i < n_tok; i++) {
        const int t = o->n_host + i;
        for (int h = 0; h < H; h++) {
            const float *ks = k + ((size_t)i * H + h) * dk, *vs = v + ((size_t)i * H + h) * dv;
            uint16_t *kd = o->hk + ((size_t)h * o->cap + t) * dk, *vd = o->hv + ((size_t)h * o->cap + t) * dv;
            o->vo->f32_to_f16(ks, kd, dk);
            o->vo->f32_to_f16(vs, vd, dv);
            o->vo->f16_to_f32(kd, krow, dk); /* the stored (rounded) key from here on */
            float *km = o->kmax + (size_t)h * dk;
            for (int c = 0; c < dk; c++) {
                const float a = fabsf(krow[c]);
                if (a > km[c]) km[c] = a;
            }
            if (o->hkt)
                for (int c = 0; c < dk; c++) o->hkt[((size_t)h * dk + c) * o->cap + t] = kd[c];
            if (o->sum_codes) summary_put(o, h, t, krow);
            if (t < S) {
                memcpy(o->sk + ((size_t)h * S + t) * dk, kd, sizeof(uint16_t) * dk);
                memcpy(o->sv + ((size_t)h * S + t) * dv, vd, sizeof(uint16_t) * dv);
            } else if (R > 0) {
                memcpy(o->rk + ((size_t)h * R + t % R) * dk, kd, sizeof(uint16_t) * dk);
                memcpy(o->rv + ((size_t)h * R + t % R) * dv, vd, sizeof(uint16_t) * dv);
            }
        }
    }
    free(krow);
    o->st.d2h += (uint64_t)n_tok * H * (dk + dv) * 2;
    o->n_host += n_tok;
}

/* ---------- decode: retrieval ---------- */

/* Top channels of KV head h for the group-mean query qg (dk values). */
static void pick_channels(const off_layer *o, int h, const float *qg, int *chan) {
    scored *sc = tl_xmalloc(sizeof(scored) * o->dk);
    for (int c = 0; c < o->dk; c++) {
        sc[c].s = fabsf(qg[c]) * o->kmax[(size_t)h * o->dk + c];
        sc[c].i = c;
    }
    select_top(sc, o->dk, o->C);
    for (int i = 0; i < o->C; i++) chan[i] = sc[i].i;
    qsort(chan, o->C, sizeof(int), cmp_int);
    free(sc);
}

/* Mean over the G query heads of KV head h. */
static void group_mean(const off_layer *o, const float *q, int h, float *qg) {
    const int dk = o->dk;
    for (int c = 0; c < dk; c++) qg[c] = 0.0f;
    for (int g = 0; g < o->G; g++) o->vo->axpy(qg, q + (size_t)(h * o->G + g) * dk, dk, 1.0f);
    o->vo->scale(qg, dk, 1.0f / (float)o->G);
}

typedef struct {
    off_layer *o;
    const float *q, *k, *v;
    float *out;
    bool predicted;
    uint64_t *h2d, *h2d_ch; /* per head */
} decode_job;

static void decode_task(void *ctx, int64_t hh, int thread_id) {
    (void)thread_id;
    const decode_job *j = ctx;
    off_layer *o = j->o;
    const int h = (int)hh, dk = o->dk, dv = o->dv, G = o->G, H = o->H;
    const tl_vec_ops *vo = o->vo;
    float *qg = tl_xmalloc(sizeof(float) * dk);
    group_mean(o, j->q, h, qg);
    int *chan = o->chan + (size_t)h * o->C;
    if (!j->predicted) pick_channels(o, h, qg, chan);

    int lo, hi;
    candidate_range(o, &lo, &hi);
    const int cand = hi - lo;
    int *sel = o->sel + (size_t)h * o->maxsel;
    int nsel = 0;
    const int P = o->p.page;
    const int npages = P > 0 ? (cand + P - 1) / P : 0;
    const int npick = P > 0 ? TL_MAX(1, o->p.topk / P) : 0;
    const bool all = P > 0 ? npick >= npages : o->p.topk >= cand;
    if (cand > 0 && all) {
        for (int t = lo; t < hi; t++) sel[nsel++] = t;
    } else if (cand > 0) {
        /* approximate scores on the chosen channels */
        float *s = tl_xcalloc((size_t)cand, sizeof(float));
        float *row = tl_xmalloc(sizeof(float) * cand);
        for (int ci = 0; ci < o->C; ci++) {
            const int c = chan[ci];
            if (o->hkt) { /* the paper: move the channel row of the candidates */
                vo->f16_to_f32(o->hkt + ((size_t)h * dk + c) * o->cap + lo, row, cand);
                j->h2d_ch[h] += (uint64_t)cand * 2;
            } else { /* device summary */
                const int b = o->p.summary_bits, mask = (1 << b) - 1;
                const uint8_t *codes = o->sum_codes + ((size_t)h * dk + c) * o->sum_row;
                const uint16_t *sz = o->sum_sz + (((size_t)h * (dk / o->sg) + c / o->sg) * o->cap) * 2;
                for (int t = lo; t < hi; t++) {
                    const size_t bit = (size_t)t * b;
                    const int q = (codes[bit / 8] >> (bit % 8)) & mask;
                    row[t - lo] = (float)q * tl_fp16_to_fp32(sz[2 * t]) + tl_fp16_to_fp32(sz[2 * t + 1]);
                }
            }
            vo->axpy(s, row, cand, qg[c]);
        }
        if (P == 0) {
            scored *a = tl_xmalloc(sizeof(scored) * cand);
            for (int t = 0; t < cand; t++) a[t] = (scored){s[t], lo + t};
            select_top(a, cand, o->p.topk);
            for (int i = 0; i < o->p.topk; i++) sel[nsel++] = a[i].i;
            free(a);
        } else {
            scored *a = tl_xmalloc(sizeof(scored) * npages);
            for (int pg = 0; pg < npages; pg++) {
                const int a0 = pg * P, a1 = TL_MIN(cand, a0 + P);
                a[pg] = (scored){vo->max(s + a0, a1 - a0), pg};
            }
            select_top(a, npages, npick);
            for (int i = 0; i < npick; i++) {
                const int a0 = a[i].i * P, a1 = TL_MIN(cand, a0 + P);
                for (int t = a0; t < a1; t++) sel[nsel++] = lo + t;
            }
            free(a);
        }
        qsort(sel, nsel, sizeof(int), cmp_int);
        free(s);
        free(row);
    }
    o->nsel[h] = nsel;
    /* fetch the selected rows into device staging */
    uint16_t *stk = o->stk + (size_t)h * o->maxsel * dk, *stv = o->stv + (size_t)h * o->maxsel * dv;
    for (int i = 0; i < nsel; i++) {
        memcpy(stk + (size_t)i * dk, o->hk + ((size_t)h * o->cap + sel[i]) * dk, sizeof(uint16_t) * dk);
        memcpy(stv + (size_t)i * dv, o->hv + ((size_t)h * o->cap + sel[i]) * dv, sizeof(uint16_t) * dv);
    }
    j->h2d[h] += (uint64_t)nsel * (dk + dv) * 2;

    /* exact attention over sinks + recent + selected + generated + the new token */
    attn_state a;
    attn_init(&a, o, G);
    for (int g = 0; g < G; g++) {
        memcpy(a.qr + (size_t)g * dk, j->q + (size_t)(h * G + g) * dk, sizeof(float) * dk);
        vo->scale(a.qr + (size_t)g * dk, dk, o->base.shape.scale);
    }
    const int S = o->p.sinks, R = o->p.recent;
    const int n_s = TL_MIN(S, o->n_host), n_r = o->n_host - hi;
    int *ridx = tl_xmalloc(sizeof(int) * (size_t)TL_MAX(1, n_r));
    for (int i = 0; i < n_r; i++) ridx[i] = (hi + i) % TL_MAX(R, 1);
    const segment segs[] = {
        {.k16 = o->sk + (size_t)h * S * dk, .v16 = o->sv + (size_t)h * S * dv, .n = n_s, .causal = -1},
        {.k16 = o->rk ? o->rk + (size_t)h * R * dk : NULL, .v16 = o->rv ? o->rv + (size_t)h * R * dv : NULL, .idx = ridx, .n = n_r, .causal = -1},
        {.k16 = stk, .v16 = stv, .n = nsel, .causal = -1},
        {.k16 = o->gk + (size_t)h * o->cap * dk, .v16 = o->gv + (size_t)h * o->cap * dv, .n = o->n_gen, .causal = -1},
        {.k32 = j->k + (size_t)h * dk, .v32 = j->v + (size_t)h * dv, .kstride = (size_t)H * dk, .vstride = (size_t)H * dv, .n = 1, .causal = -1},
    };
    for (size_t i = 0; i < sizeof segs / sizeof *segs; i++)
        if (segs[i].n > 0) attn_segment(&a, &segs[i]);
    for (int g = 0; g < G; g++) {
        float *dst = j->out + (size_t)(h * G + g) * dv;
        const float inv = a.l[g] > 0.0f ? 1.0f / a.l[g] : 0.0f;
        for (int c = 0; c < dv; c++) dst[c] = a.acc[(size_t)g * dv + c] * inv;
    }
    free(ridx);
    free(a.qr);
    free(qg);
}

static int off_forward(tl_kv_layer *l, tl_pool *pool, int n_tok, const float *q, const float *k, const float *v,
                       float *out, tl_error *err) {
    off_layer *o = (off_layer *)l;
    if (n_tok <= 0) return 0;
    if (l->n_tokens + n_tok > o->cap)
        return tl_fail(err, "KV cache full: %d tokens held + %d new > context %d (raise -c)", l->n_tokens, n_tok, o->cap);
    if (n_tok > 1) {
        prefill_job j = {.o = o, .n_tok = n_tok, .q = q, .k = k, .v = v, .out = out};
        j.q_block = TL_MAX(1, 64 / o->G);
        if (j.q_block > n_tok) j.q_block = n_tok;
        j.n_qblocks = (n_tok + j.q_block - 1) / j.q_block;
        tl_pool_run(pool, (int64_t)o->H * j.n_qblocks, prefill_task, &j);
        o->st.h2d_prefill += (uint64_t)o->n_host * o->H * (o->dk + o->dv) * 2;
        append_prompt(o, n_tok, k, v);
        o->chan_pos = -1;
    } else {
        uint64_t *cnt = tl_xcalloc((size_t)o->H * 2, sizeof(uint64_t));
        decode_job j = {.o = o, .q = q, .k = k, .v = v, .out = out, .predicted = o->chan_pos == l->n_tokens,
                        .h2d = cnt, .h2d_ch = cnt + o->H};
        tl_pool_run(pool, o->H, decode_task, &j);
        int lo, hi;
        candidate_range(o, &lo, &hi);
        for (int h = 0; h < o->H; h++) {
            o->st.h2d_decode += cnt[h] + cnt[o->H + h];
            o->st.h2d_channels += cnt[o->H + h];
            o->st.tokens_attended += (uint64_t)(o->n_host - (hi - lo)) + o->nsel[h] + o->n_gen + 1;
        }
        free(cnt);
        o->st.decode_steps++;
        if (!j.predicted) o->st.unpredicted++;
        o->chan_pos = -1;
        /* the new token joins the generated tokens on the device */
        for (int h = 0; h < o->H; h++) {
            o->vo->f32_to_f16(k + (size_t)h * o->dk, o->gk + ((size_t)h * o->cap + o->n_gen) * o->dk, o->dk);
            o->vo->f32_to_f16(v + (size_t)h * o->dv, o->gv + ((size_t)h * o->cap + o->n_gen) * o->dv, o->dv);
        }
        if (o->n_gen == 0) o->gen_first_pos = l->n_tokens;
        o->n_gen++;
    }
    l->n_tokens += n_tok;
    return 0;
}

static void off_predicted_query(tl_kv_layer *l, tl_pool *pool, int n_tok, const float *q_pred) {
    (void)pool;
    off_layer *o = (off_layer *)l;
    if (n_tok != 1) return; /* prefill attends everything: nothing to pick */
    float *qg = tl_xmalloc(sizeof(float) * o->dk);
    for (int h = 0; h < o->H; h++) {
        group_mean(o, q_pred, h, qg);
        pick_channels(o, h, qg, o->chan + (size_t)h * o->C);
    }
    free(qg);
    o->chan_pos = l->n_tokens;
}

static void bytes_of(const tl_kv_offload_params *p, const tl_kv_shape *s, int64_t n, int64_t m, tl_kv_bytes *b) {
    const uint64_t H = (uint64_t)s->n_head_kv, dk = (uint64_t)s->head_dim_k, dv = (uint64_t)s->head_dim_v;
    memset(b, 0, sizeof *b);
    if (n + m == 0) return;
    b->codes = H * (uint64_t)(device_prompt_rows((int)n, p->sinks, p->recent) + m) * (dk + dv) * 2;
    b->other = H * dk * 4;
    if (p->summary_bits > 0) {
        const uint64_t sg = dk % SUM_GROUP == 0 ? SUM_GROUP : dk;
        b->other += H * dk * (((uint64_t)n * p->summary_bits + 7) / 8) + H * (dk / sg) * (uint64_t)n * 4;
        b->host = H * (uint64_t)n * (dk + dv) * 2;
    } else {
        b->host = H * (uint64_t)n * (2 * dk + dv) * 2;
    }
}

static void off_bytes(const tl_kv_layer *l, tl_kv_bytes *b) {
    const off_layer *o = (const off_layer *)l;
    bytes_of(&o->p, &l->shape, o->n_host, o->n_gen, b);
}

static void off_clear(tl_kv_layer *l) {
    off_layer *o = (off_layer *)l;
    l->n_tokens = 0;
    o->n_host = o->n_gen = 0;
    o->gen_first_pos = -1;
    o->chan_pos = -1;
    memset(o->kmax, 0, sizeof(float) * (size_t)o->H * o->dk);
    memset(o->nsel, 0, sizeof(int) * o->H);
    memset(&o->st, 0, sizeof o->st);
}

/* Keep the first n tokens. Generated tokens sit after the prompt in position unless a prefill
 * chunk came after decoding; then a cut below the prompt's end is refused. max|K| and the
 * recent ring are rebuilt from the host tier (a GPU would read the kept rows back once). */
static int off_truncate(tl_kv_layer *l, int n, bool dry_run, tl_error *err) {
    off_layer *o = (off_layer *)l;
    if (n < 0 || n > l->n_tokens) return tl_fail(err, "truncate to %d tokens: the cache holds %d", n, l->n_tokens);
    const bool gen_after_prompt = o->n_gen == 0 || o->gen_first_pos == o->n_host;
    if (n < o->n_host + o->n_gen && !gen_after_prompt && n < l->n_tokens)
        return tl_fail(err, "truncate to %d tokens: prompt and generated tokens interleave (prefill after decode)", n);
    if (dry_run) return 0;
    if (n >= o->n_host) {
        o->n_gen = n - o->n_host;
    } else {
        const int H = o->H, dk = o->dk, dv = o->dv, R = o->p.recent;
        o->n_gen = 0;
        o->n_host = n;
        memset(o->kmax, 0, sizeof(float) * (size_t)H * dk);
        float *krow = tl_xmalloc(sizeof(float) * dk);
        for (int h = 0; h < H; h++)
            for (int t = 0; t < n; t++) {
                const uint16_t *kd = o->hk + ((size_t)h * o->cap + t) * dk;
                o->vo->f16_to_f32(kd, krow, dk);
                for (int c = 0; c < dk; c++) o->kmax[(size_t)h * dk + c] = fmaxf(o->kmax[(size_t)h * dk + c], fabsf(krow[c]));
                if (R > 0 && t >= o->p.sinks && t >= n - R) {
                    memcpy(o->rk + ((size_t)h * R + t % R) * dk, kd, sizeof(uint16_t) * dk);
                    memcpy(o->rv + ((size_t)h * R + t % R) * dv, o->hv + ((size_t)h * o->cap + t) * dv, sizeof(uint16_t) * dv);
                }
            }
        free(krow);
    }
    if (o->n_gen == 0) o->gen_first_pos = -1;
    l->n_tokens = n;
    o->chan_pos = -1;
    return 0;
}

static int off_truncate_max(const tl_kv_layer *l, int n) {
    const off_layer *o = (const off_layer *)l;
    n = TL_MAX(0, TL_MIN(n, l->n_tokens));
    const bool gen_after_prompt = o->n_gen == 0 || o->gen_first_pos == o->n_host;
    return n < o->n_host + o->n_gen && !gen_after_prompt && n < l->n_tokens ? 0 : n;
}

static void off_destroy(tl_kv_layer *l) {
    off_layer *o = (off_layer *)l;
    void *bufs[] = {o->hk, o->hv, o->hkt, o->sk, o->sv, o->rk, o->rv, o->gk, o->gv, o->kmax, o->sum_codes,
                    o->sum_sz, o->chan, o->stk, o->stv, o->sel, o->nsel};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(o);
}

static const tl_kv_ops off_ops = {
    .name = "offload",
    .forward = off_forward,
    .bytes = off_bytes,
    .clear = off_clear,
    .destroy = off_destroy,
    .predicted_query = off_predicted_query,
    .wants_query_prediction = true,
    .truncate = off_truncate,
    .truncate_max = off_truncate_max,
};

bool tl_kv_is_offload(const tl_kv_layer *l) { return l && l->ops == &off_ops; }

static int check(const tl_kv_offload_params *p, const tl_kv_shape *s, tl_error *err) {
    if (s->window > 0)
        return tl_fail(err, "offload KV store: sliding-window layers (window %d) keep a dense store", s->window);
    if (s->n_head <= 0 || s->n_head_kv <= 0 || s->n_head % s->n_head_kv || s->head_dim_k <= 0 || s->head_dim_v <= 0 ||
        s->n_ctx <= 0)
        return tl_fail(err, "offload KV store: bad shape (heads %d/%d, dims %d/%d, ctx %d)", s->n_head, s->n_head_kv,
                       s->head_dim_k, s->head_dim_v, s->n_ctx);
    if (p->sinks < 0 || p->recent < 0 || p->topk < 0 || p->channels < 1 || p->page < 0)
        return tl_fail(err, "offload KV store: sinks %d, recent %d, topk %d, page %d must be >= 0 and channels %d >= 1",
                       p->sinks, p->recent, p->topk, p->page, p->channels);
    if (p->summary_bits != 0 && p->summary_bits != 2 && p->summary_bits != 4 && p->summary_bits != 8)
        return tl_fail(err, "offload KV store: summary bits %d not supported (use 0, 2, 4, 8)", p->summary_bits);
    return 0;
}

tl_kv_layer *tl_kv_offload_new(const tl_kv_layer_policy *pol, const tl_kv_shape *s, tl_error *err) {
    const tl_kv_offload_params *p = &pol->off;
    if (check(p, s, err)) return NULL;
    off_layer *o = tl_xcalloc(1, sizeof *o);
    o->base.ops = &off_ops;
    o->base.shape = *s;
    o->p = *p;
    o->vo = tl_vec_get();
    o->H = s->n_head_kv;
    o->G = s->n_head / s->n_head_kv;
    o->dk = s->head_dim_k;
    o->dv = s->head_dim_v;
    o->cap = s->n_ctx;
    o->C = TL_MIN(p->channels, o->dk);
    o->sg = o->dk % SUM_GROUP == 0 ? SUM_GROUP : o->dk;
    o->chan_pos = -1;
    o->gen_first_pos = -1;
    o->maxsel = TL_MAX(1, p->page > 0 ? TL_MAX(1, p->topk / p->page) * p->page : p->topk);
    const size_t H = (size_t)o->H, cap = (size_t)o->cap, dk = (size_t)o->dk, dv = (size_t)o->dv;
    const size_t S = (size_t)p->sinks, R = (size_t)p->recent;
    bool ok = true;
    /* big tiers: plain malloc (untouched pages cost nothing until used) */
#define ALLOC(ptr, n) ok = ok && ((ptr) = malloc(TL_MAX((size_t)(n), (size_t)1))) != NULL
    ALLOC(o->hk, H * cap * dk * 2);
    ALLOC(o->hv, H * cap * dv * 2);
    if (p->summary_bits == 0) ALLOC(o->hkt, H * dk * cap * 2);
    ALLOC(o->sk, H * S * dk * 2);
    ALLOC(o->sv, H * S * dv * 2);
    if (R > 0) {
        ALLOC(o->rk, H * R * dk * 2);
        ALLOC(o->rv, H * R * dv * 2);
    }
    ALLOC(o->gk, H * cap * dk * 2);
    ALLOC(o->gv, H * cap * dv * 2);
    if (p->summary_bits > 0) {
        o->sum_row = (cap * p->summary_bits + 7) / 8;
        ok = ok && (o->sum_codes = calloc(H * dk * o->sum_row, 1)) != NULL;
        ALLOC(o->sum_sz, H * (dk / o->sg) * cap * 2 * 2);
    }
    ALLOC(o->stk, H * o->maxsel * dk * 2);
    ALLOC(o->stv, H * o->maxsel * dv * 2);
#undef ALLOC
    o->kmax = tl_xcalloc(H * dk, sizeof(float));
    o->chan = tl_xcalloc(H * o->C, sizeof(int));
    o->sel = tl_xcalloc(H * o->maxsel, sizeof(int));
    o->nsel = tl_xcalloc(H, sizeof(int));
    if (!ok) {
        tl_fail(err, "offload KV store: cannot allocate the tiers for %d tokens", o->cap);
        off_destroy(&o->base);
        return NULL;
    }
    return &o->base;
}

int tl_kv_offload_bytes_formula2(const tl_kv_layer_policy *p, const tl_kv_shape *s, int64_t n_prompt, int64_t n_gen,
                                 tl_kv_bytes *b, tl_error *err) {
    memset(b, 0, sizeof *b);
    if (check(&p->off, s, err)) return -1;
    if (n_prompt < 0 || n_gen < 0) return tl_fail(err, "offload KV bytes formula: negative token count");
    bytes_of(&p->off, s, n_prompt, n_gen, b);
    return 0;
}

int tl_kv_offload_bytes_formula(const tl_kv_layer_policy *p, const tl_kv_shape *s, int64_t n_tokens, tl_kv_bytes *b,
                                tl_error *err) {
    return tl_kv_offload_bytes_formula2(p, s, n_tokens, 0, b, err);
}

uint64_t tl_kv_offload_step_traffic(const tl_kv_offload_params *p, const tl_kv_shape *s, int64_t n,
                                    uint64_t *channels_part) {
    const uint64_t H = (uint64_t)s->n_head_kv, dk = (uint64_t)s->head_dim_k, dv = (uint64_t)s->head_dim_v;
    const int64_t S = TL_MIN(p->sinks, n), R = TL_MIN(p->recent, n - S), cand = n - S - R;
    uint64_t ch = 0, sel;
    bool all;
    if (p->page > 0) {
        const int64_t npages = (cand + p->page - 1) / p->page, npick = TL_MAX(1, p->topk / p->page);
        all = npick >= npages;
        sel = all ? (uint64_t)cand : (uint64_t)(npick * p->page);
    } else {
        all = p->topk >= cand;
        sel = all ? (uint64_t)cand : (uint64_t)p->topk;
    }
    if (cand > 0 && !all && p->summary_bits == 0) ch = H * (uint64_t)TL_MIN(p->channels, s->head_dim_k) * (uint64_t)cand * 2;
    if (channels_part) *channels_part = ch;
    return cand > 0 ? ch + H * sel * (dk + dv) * 2 : 0;
}

int tl_kv_offload_traffic(const tl_kv_layer *l, tl_kv_offload_stats *st) {
    if (!tl_kv_is_offload(l)) return -1;
    *st = ((const off_layer *)l)->st;
    return 0;
}

int tl_kv_offload_last_selection(const tl_kv_layer *l, int h, int *idx, int max) {
    if (!tl_kv_is_offload(l)) return 0;
    const off_layer *o = (const off_layer *)l;
    if (h < 0 || h >= o->H) return 0;
    const int n = TL_MIN(max, o->nsel[h]);
    memcpy(idx, o->sel + (size_t)h * o->maxsel, sizeof(int) * (size_t)n);
    return o->nsel[h];
}
