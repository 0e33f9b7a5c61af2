/* matmul.c: Y[t][o] = dot(W row o, X row t) on the thread pool.
 *
 * Plan: convert X once to the weight type's activation format (in parallel over tokens),
 * then hand out tiles of output rows x all tokens, so every weight row is streamed from
 * memory once per call. Inside a tile:
 *  - quantized weights with 4 to 31 tokens: a 1 row x 4 token kernel unpacks each weight block
 *    once and uses it 4 times; tokens are the outer loop so 4 activation rows stay in L1
 *    while the tile's weight rows (a few KB) stay in L1/L2. On AVX-512 VNNI the 32-wide
 *    formats with an "xa" kernel (q4_0, q4_1, q5_0, q5_1) use it instead, 4 tokens at a time
 *    where there are 4 (each weight block unpacked once for the 4) and one at a time for the
 *    rest, every token's sum in the one-token kernel's order: a row's result does not depend
 *    on how many rows share the call (engine/batch.c);
 *  - float weights (f32/f16/bf16) with >= 4 tokens, and quantized weights with >= 32 tokens:
 *    the tile's rows are widened to f32 in a per-thread buffer, then a 3 row x 4 token FMA
 *    register tile runs over them (X used as is);
 *  - fewer tokens (decode): a plain streaming matvec, one row after another.
 * tl_matmul_w runs matrices that have a pack slot (the model's weights) through the x16
 * kernels instead (src/cpu/qpack.h; q4_0, q4_1, q8_0, q4_K, q6_K; made on the first call): below
 * 32 tokens, and for any count under TL_MM_Q8. Tasks are runs of 16-row groups times blocks of
 * up to 64 activation rows; the f32 tiles of the other regime are widened from the same copy. */
#include "quants_internal.h"
#include "qpack.h"
#include "../base/common.h"
#include "../base/threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define TILE_ROWS_Q 16   /* quantized rows per task (prefill) */
#define TILE_ROWS_F 96   /* float rows per task (prefill): 4 activation rows in L1 meet 96 rows in L2; a multiple of 3 */
#define TILE_ROWS_VEC 32 /* rows per task for decode */
#define MIN_TOK_GEMM 4   /* from this many tokens the multi-token kernels pay off */
#define MIN_PARALLEL_MACS 65536.0 /* fewer multiply-adds in a call: the caller's thread alone */
/* From this many tokens quantized weights are also widened to f32 per tile and run through
 * the FMA register tile (activations stay f32): one dequantization per weight row amortised
 * over >= 32 tokens, and the 3x4 FMA tile beats the 1x4 integer kernel (whose per-block
 * scale arithmetic dominates) by about 2x on AVX2 machines. */
#define MIN_TOK_DEQUANT_GEMM 32

/* Fewer than MIN_TOK_DEQUANT_GEMM tokens on AVX-512 VNNI: the activation rows are also
 * rebuilt in the kernels' "xa" layout, after the q8 rows, at a 64-byte aligned offset. */
static size_t xa_offset(tl_type vt, int64_t n_in, int64_t n_tok) {
    return ((size_t)n_tok * tl_row_size(vt, n_in) + 63) & ~(size_t)63;
}

size_t tl_matmul_scratch_size(tl_type wt, int64_t n_in, int64_t n_tok) {
    const tl_type_traits *tr = tl_type_info(wt);
    if (!tr || tr->vec_dot_type == TL_TYPE_F32) return 0;
    size_t sz = (size_t)n_tok * tl_row_size(tr->vec_dot_type, n_in);
    /* the x16 kernels' activation rows (tl_matmul_w): q8 blocks, then their layout */
    const size_t xp = tlq_xp_row_bytes(wt, n_in);
    const tl_type qt = tlq_xp_family(wt) == 1 ? TL_TYPE_Q8_1 : TL_TYPE_Q8_K; /* the family's blocks */
    if (xp) sz = TL_MAX(sz, (size_t)n_tok * (tl_row_size(qt, n_in) + xp) + 64);
    /* callers size the buffer once for their largest n_tok and reuse it for fewer tokens,
     * so cover the decode layout of every smaller call too */
    const size_t xa = tlq_xa_size(wt, n_in);
    const int64_t nd = TL_MIN(n_tok, MIN_TOK_DEQUANT_GEMM - 1);
    if (xa && nd > 0) sz = TL_MAX(sz, xa_offset(tr->vec_dot_type, n_in, nd) + 63 + (size_t)nd * xa);
    return sz;
}

typedef struct {
    tl_type wt;
    tlq_kernels k;
    const uint8_t *W;
    size_t w_stride;
    int64_t n_in, n_out, n_tok, ldy;
    const float *X;
    const uint8_t *Xq; /* activations in vec_dot_type; == X for float weights */
    size_t x_stride;   /* bytes between activation rows */
    uint8_t *xq_out;   /* conversion target */
    float *Y;
    int64_t tile_rows;
    float *fbuf; /* per-thread f32 tiles (float weights, prefill), TILE_ROWS_F * n_in each */
    const tlq_packed *pk; /* the weights' x16 copy: the f32 tiles are widened from it */
    uint8_t *rowbuf;      /* per-thread row in the weights' own layout (w_stride bytes) */
} mm_ctx;

static void convert_task(void *vc, int64_t i, int thread_id) {
    (void)thread_id;
    mm_ctx *c = vc;
    /* task i converts tokens [8i, 8i+8) */
    for (int64_t t = i * 8; t < TL_MIN(c->n_tok, i * 8 + 8); t++)
        c->k.quant_act(c->X + t * c->n_in, c->xq_out + (size_t)t * c->x_stride, c->n_in);
}

static void rows_task(void *vc, int64_t task, int thread_id) {
    mm_ctx *c = vc;
    const int64_t o0 = task * c->tile_rows;
    const int64_t o1 = TL_MIN(c->n_out, o0 + c->tile_rows);
    const int64_t n_tok = c->n_tok;

    if (c->fbuf) { /* float weights, many tokens: widen the tile and run the FMA tile */
        const float *A;
        int64_t lda;
        if (c->wt == TL_TYPE_F32) {
            A = (const float *)(c->W + (size_t)o0 * c->w_stride);
            lda = c->n_in;
        } else {
            float *buf = c->fbuf + (size_t)thread_id * TILE_ROWS_F * c->n_in;
            for (int64_t o = o0; o < o1; o++) {
                const void *src = c->W + (size_t)o * c->w_stride;
                float *dst = buf + (o - o0) * c->n_in;
                if (c->wt == TL_TYPE_F16) tlq_f16_to_f32_avx2(src, dst, c->n_in);
                else if (c->wt == TL_TYPE_BF16) tlq_bf16_to_f32_avx2(src, dst, c->n_in);
                else if (c->k.deq) c->k.deq(src, dst, c->n_in); /* SIMD unpacker (w4g128) */
                else if (c->pk) { /* the same bytes, from the copy the decode reads */
                    uint8_t *rb = c->rowbuf + (size_t)thread_id * c->w_stride;
                    tlq_pack_get_row(c->pk, o, rb);
                    tl_dequantize_row(c->wt, rb, dst, c->n_in);
                } else tl_dequantize_row(c->wt, src, dst, c->n_in);
            }
            A = buf;
            lda = c->n_in;
        }
        tlq_gemm_f32_avx2(c->n_in, A, lda, (int)(o1 - o0), c->X, c->n_in, (int)n_tok,
                          c->Y + o0, c->ldy);
        return;
    }

    int64_t t = 0;
    if (c->k.dot4) {
        for (; t + 4 <= n_tok; t += 4) {
            const uint8_t *x = c->Xq + (size_t)t * c->x_stride;
            for (int64_t o = o0; o < o1; o++) {
                float r[4];
                c->k.dot4(c->n_in, c->W + (size_t)o * c->w_stride, x, c->x_stride, r);
                for (int j = 0; j < 4; j++) c->Y[(t + j) * c->ldy + o] = r[j];
            }
        }
    }
    if (c->k.dot2) {
        for (; t + 2 <= n_tok; t += 2) {
            const uint8_t *x = c->Xq + (size_t)t * c->x_stride;
            for (int64_t o = o0; o < o1; o++) {
                float r[4];
                c->k.dot2(c->n_in, c->W + (size_t)o * c->w_stride, x, c->x_stride, r);
                c->Y[t * c->ldy + o] = r[0];
                c->Y[(t + 1) * c->ldy + o] = r[1];
            }
        }
    }
    for (; t < n_tok; t++) {
        const uint8_t *x = c->Xq + (size_t)t * c->x_stride;
        float *y = c->Y + t * c->ldy;
        for (int64_t o = o0; o < o1; o++) y[o] = c->k.dot(c->n_in, c->W + (size_t)o * c->w_stride, x);
    }
}

/* pool may be NULL (runs on the caller's thread) */
static void run(tl_pool *pool, int64_t n, tl_task_fn fn, void *ctx) {
    if (pool && n > 1) {
        tl_pool_run(pool, n, fn, ctx);
    } else {
        for (int64_t i = 0; i < n; i++) fn(ctx, i, 0);
    }
}

int64_t tl_matmul_rounded_rows(tl_type wt) {
    const tl_type_traits *tr = tl_type_info(wt);
    if (!tr || tr->vec_dot_type == TL_TYPE_F32) return 0;
    return tlq_get_kernels(wt).avx2 ? MIN_TOK_DEQUANT_GEMM - 1 : INT64_MAX;
}

static void matmul_impl(struct tl_pool *pool, tl_type wt, const void *W, const tlq_packed *pk, int64_t n_in,
                        int64_t n_out, const float *X, int64_t n_tok, float *Y, int64_t ldy, void *scratch) {
    const tl_type_traits *tr = tl_type_info(wt);
    if (!tr || !tr->supported || n_in % tr->block_size) {
        fprintf(stderr, "tl_matmul: weight type %s with %lld inputs is not supported\n",
                tl_type_name(wt), (long long)n_in);
        abort();
    }
    if (n_tok <= 0 || n_out <= 0) return;
    /* work too small to pay for waking the pool's threads (a few microseconds) runs on the
     * caller's: stories260K's matrices, 64 to 512 rows of 64 or 172, a few tokens at a time.
     * The tiles are planned for the pool alike and each output is computed the same either way. */
    tl_pool *exec = (double)n_out * (double)n_in * (double)n_tok < MIN_PARALLEL_MACS ? NULL : pool;
    mm_ctx c;
    memset(&c, 0, sizeof c);
    c.wt = wt;
    c.k = tlq_get_kernels(wt);
    c.W = W;
    c.w_stride = tl_row_size(wt, n_in);
    c.n_in = n_in;
    c.n_out = n_out;
    c.n_tok = n_tok;
    c.ldy = ldy;
    c.X = X;
    c.Y = Y;

    const bool f32_gemm = c.k.avx2 && (tr->vec_dot_type == TL_TYPE_F32 ? n_tok >= MIN_TOK_GEMM
                                                                        : n_tok >= MIN_TOK_DEQUANT_GEMM);
    void *owned = NULL;
    if (tr->vec_dot_type == TL_TYPE_F32 || f32_gemm) {
        c.Xq = (const uint8_t *)X;
        c.x_stride = (size_t)n_in * sizeof(float);
    } else {
        c.x_stride = tl_row_size(tr->vec_dot_type, n_in);
        if (!scratch) scratch = owned = tl_xmalloc(tl_matmul_scratch_size(wt, n_in, n_tok));
        c.xq_out = scratch;
        c.Xq = scratch;
        if (n_tok == 1) c.k.quant_act(X, scratch, n_in);
        else run(exec, (n_tok + 7) / 8, convert_task, &c);
        if (c.k.dot_xa && !f32_gemm) { /* the xa layout (see above) */
            uintptr_t a = ((uintptr_t)scratch + xa_offset(tr->vec_dot_type, n_in, n_tok) + 63) & ~(uintptr_t)63;
            uint8_t *xa = (uint8_t *)a;
            const size_t xs = tlq_xa_size(wt, n_in);
            for (int64_t t = 0; t < n_tok; t++) c.k.xa_from(c.Xq + (size_t)t * c.x_stride, xa + t * xs, n_in);
            c.Xq = xa;
            c.x_stride = xs;
            c.k.dot = c.k.dot_xa;
            c.k.dot4 = c.k.dot4_xa; /* (each row dot_xa's bits: row order never matters) */
            c.k.dot2 = c.k.dot2_xa;
        }
    }

    const int n_threads = pool ? tl_pool_size(pool) : 1;
    float *fbuf = NULL;
    uint8_t *rowbuf = NULL;
    if (f32_gemm) {
        if (wt != TL_TYPE_F32) {
            fbuf = tl_amalloc((size_t)n_threads * TILE_ROWS_F * n_in * sizeof(float));
            if (pk) {
                c.pk = pk;
                c.rowbuf = rowbuf = tl_xmalloc((size_t)n_threads * c.w_stride);
            }
            if (!fbuf) {
                fprintf(stderr, "tl_matmul: out of memory for %d x %d f32 tile buffers\n", n_threads,
                        TILE_ROWS_F * (int)n_in);
                abort();
            }
            c.fbuf = fbuf;
        } else {
            c.fbuf = (float *)X; /* marker only: f32 rows are used in place */
        }
        c.tile_rows = TILE_ROWS_F;
    } else if (n_tok >= MIN_TOK_GEMM) {
        c.tile_rows = TILE_ROWS_Q;
    } else {
        c.tile_rows = TILE_ROWS_VEC;
    }
    /* enough tasks for the dynamic scheduler to balance threads */
    while (c.tile_rows > 4 && (n_out + c.tile_rows - 1) / c.tile_rows < 4 * n_threads) {
        c.tile_rows /= 2;
        if (c.fbuf) c.tile_rows -= c.tile_rows % 3;
    }
    run(exec, (n_out + c.tile_rows - 1) / c.tile_rows, rows_task, &c);

    tl_afree(fbuf);
    free(rowbuf);
    free(owned);
}

void tl_matmul(struct tl_pool *pool, tl_type wt, const void *W, int64_t n_in, int64_t n_out,
               const float *X, int64_t n_tok, float *Y, int64_t ldy, void *scratch) {
    matmul_impl(pool, wt, W, NULL, n_in, n_out, X, n_tok, Y, ldy, scratch);
}

/* ------------------------------------------------------------------ the x16 kernels */

struct tl_wpack {
    _Atomic(tlq_packed *) p;
    bool failed;      /* packing ran out of memory: the old kernels run (under pack_mu) */
    bool release_src; /* the source is a read-only file mapping: release its pages once packed */
    bool released;    /* ... and they were (set before p is published) */
};

/* packing is once per matrix: one lock for all of them */
static pthread_mutex_t pack_mu = PTHREAD_MUTEX_INITIALIZER;

bool tl_wpack_wanted(tl_type t, int64_t n_in) { return tlq_pack_supported(t, n_in); }
tl_wpack *tl_wpack_new(bool release_src) {
    tl_wpack *w = tl_xcalloc(1, sizeof(tl_wpack));
    w->release_src = release_src;
    return w;
}
void tl_wpack_free(tl_wpack *w) {
    if (!w) return;
    tlq_pack_free(atomic_load(&w->p));
    free(w);
}
static const tlq_packed *wpack_made(const tl_wpack *w) {
    return w ? atomic_load_explicit(&((tl_wpack *)w)->p, memory_order_acquire) : NULL;
}
uint64_t tl_wpack_bytes(const tl_wpack *w) {
    const tlq_packed *p = wpack_made(w);
    return p ? p->bytes : 0;
}
bool tl_wpack_released(const tl_wpack *w) { return wpack_made(w) && w->released; }
bool tl_wpack_get_row(const tl_wpack *w, int64_t row, void *dst) {
    const tlq_packed *p = wpack_made(w);
    if (!p || row < 0 || row >= p->n_out) return false;
    tlq_pack_get_row(p, row, dst);
    return true;
}

typedef struct {
    tlq_packed *p;
    const void *W;
    bool release; /* the source's pages, as each task's rows are packed */
} pack_ctx;

static void pack_task(void *vc, int64_t i, int thread_id) {
    (void)thread_id;
    pack_ctx *c = vc;
    const int64_t g0 = i * 16, g1 = TL_MIN(c->p->n_groups, i * 16 + 16);
    tlq_pack_groups(c->p, c->W, g0, g1);
    if (c->release) { /* the task's whole pages; those it shares with a neighbour go at the end */
        const size_t rs = tl_row_size(c->p->type, c->p->n_in);
        const int64_t r0 = g0 * TLQ_PACK_ROWS, r1 = TL_MIN(c->p->n_out, g1 * TLQ_PACK_ROWS);
        tl_release_mapped_pages((const uint8_t *)c->W + (size_t)r0 * rs, (size_t)(r1 - r0) * rs);
    }
}

static const tlq_packed *wpack_get(tl_wpack *w, tl_pool *pool, tl_type t, const void *W, int64_t n_in, int64_t n_out) {
    tlq_packed *p = atomic_load_explicit(&w->p, memory_order_acquire);
    if (p) return p;
    pthread_mutex_lock(&pack_mu);
    p = atomic_load_explicit(&w->p, memory_order_relaxed);
    if (!p && !w->failed) {
        p = tlq_pack_alloc(t, n_in, n_out);
        if (p) {
            /* every reader of these rows now takes the copy (the x16 kernels, the f32 tiles
             * widened from it, tl_wpack_get_row), so the file's pages need not stay resident:
             * the process holds the copy instead of the file's bytes, not both, and not even
             * while packing (each task releases the pages it has packed) */
            pack_ctx pc = {p, W, w->release_src};
            run(pool, (p->n_groups + 15) / 16, pack_task, &pc);
            if (w->release_src) tl_release_mapped_pages(W, tl_row_size(t, n_in) * (size_t)n_out);
            w->released = w->release_src;
            atomic_store_explicit(&w->p, p, memory_order_release);
        } else {
            w->failed = true;
        }
    }
    pthread_mutex_unlock(&pack_mu);
    return p;
}

#define PK_MAX_JOBS 8
#define PK_X_BLOCK 64 /* activation rows per task: their kernel rows stay in L2 beside a group */

void tl_wpack_make(tl_wpack *w, struct tl_pool *pool, tl_type t, const void *W, int64_t n_in, int64_t n_out) {
    if (w && n_out > 0 && tlq_pack_applies(t, n_in)) wpack_get(w, pool, t, W, n_in, n_out);
}

typedef struct {
    int n_jobs;
    const tlq_packed *p[PK_MAX_JOBS];
    tlq_gemm_fn gemm[PK_MAX_JOBS];
    float *Y[PK_MAX_JOBS];
    int64_t ldy[PK_MAX_JOBS];
    int64_t gpt[PK_MAX_JOBS];     /* groups per task */
    int64_t task0[PK_MAX_JOBS + 1]; /* first task of each job (tasks of a job: x blocks x group runs) */
    tl_type qt;                   /* the family's activation blocks: q8_1 or q8_K */
    tlq_quant_fn quant;
    bool direct;                  /* AVX-512: the rows straight from floats */
    const float *X;
    int64_t n_tok, n_in, x_block, n_xb;
    uint8_t *xq, *xp;  /* q8 rows, kernel rows */
    size_t xq_stride, xp_stride;
} pk_ctx;

static void pk_convert_task(void *vc, int64_t i, int thread_id) {
    (void)thread_id;
    pk_ctx *c = vc;
    const tl_type ft = c->qt == TL_TYPE_Q8_1 ? TL_TYPE_Q4_1 : TL_TYPE_Q4_K; /* a type of the family */
    for (int64_t t = i * 8; t < TL_MIN(c->n_tok, i * 8 + 8); t++) {
        uint8_t *xp = c->xp + (size_t)t * c->xp_stride;
        if (c->direct) {
            tlq_xp_quantize_avx512(ft, c->X + t * c->n_in, xp, c->n_in);
            continue;
        }
        uint8_t *q = c->xq + (size_t)t * c->xq_stride;
        c->quant(c->X + t * c->n_in, q, c->n_in);
        tlq_xp_from_q8(ft, q, xp, c->n_in);
    }
}

/* task i: job j (task0[j] <= i < task0[j+1]), then activation block k / n_gtasks, groups of k % n_gtasks */
static void pk_gemm_task(void *vc, int64_t i, int thread_id) {
    (void)thread_id;
    pk_ctx *c = vc;
    int j = 0;
    while (i >= c->task0[j + 1]) j++;
    const tlq_packed *p = c->p[j];
    const int64_t k = i - c->task0[j], n_gtasks = (p->n_groups + c->gpt[j] - 1) / c->gpt[j];
    const int64_t xb = k / n_gtasks, gt = k % n_gtasks;
    const int64_t g0 = gt * c->gpt[j], g1 = TL_MIN(p->n_groups, g0 + c->gpt[j]);
    const int64_t x0 = xb * c->x_block, nx = TL_MIN(c->n_tok - x0, c->x_block);
    c->gemm[j](p, g0, g1, c->xp + (size_t)x0 * c->xp_stride, c->xp_stride, nx, c->Y[j] + x0 * c->ldy[j], c->ldy[j]);
}

/* the activation rows once, then every job's tasks in one pass of the pool */
static void matmul_packed(tl_pool *pool, pk_ctx *c, const float *X, int64_t n_tok, void *scratch) {
    const tl_type t0 = c->p[0]->type;
    const int64_t n_in = c->p[0]->n_in;
    double macs = 0;
    for (int j = 0; j < c->n_jobs; j++) macs += (double)c->p[j]->n_out * (double)n_in * (double)n_tok;
    tl_pool *exec = macs < MIN_PARALLEL_MACS ? NULL : pool;
    c->qt = tlq_xp_family(t0) == 1 ? TL_TYPE_Q8_1 : TL_TYPE_Q8_K;
    c->quant = tlq_get_kernels(c->qt == TL_TYPE_Q8_1 ? TL_TYPE_Q4_1 : TL_TYPE_Q4_K).quant_act;
    c->direct = tl_simd_level_get() == TL_SIMD_AVX512;
    c->X = X;
    c->n_tok = n_tok;
    c->n_in = n_in;
    c->xp_stride = tlq_xp_row_bytes(t0, n_in);
    c->xq_stride = tl_row_size(c->qt, n_in);
    c->xp = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    c->xq = c->xp + (size_t)n_tok * c->xp_stride;
    const int64_t n_conv = (n_tok + 7) / 8;
    if (exec && n_tok >= 8) run(exec, n_conv, pk_convert_task, c);
    else for (int64_t i = 0; i < n_conv; i++) pk_convert_task(c, i, 0);

    const int n_threads = exec ? tl_pool_size(exec) : 1;
    c->x_block = n_tok <= PK_X_BLOCK ? n_tok : PK_X_BLOCK;
    c->n_xb = (n_tok + c->x_block - 1) / c->x_block;
    int64_t groups = 0;
    for (int j = 0; j < c->n_jobs; j++) groups += c->p[j]->n_groups;
    /* enough tasks for the dynamic scheduler to balance the threads, each a run of groups */
    int64_t gpt = TL_MAX((int64_t)1, groups / (int64_t)(8 * n_threads));
    if (c->n_xb > 1) gpt = TL_MIN(gpt, (int64_t)4);
    c->task0[0] = 0;
    for (int j = 0; j < c->n_jobs; j++) {
        c->gpt[j] = TL_MIN(gpt, c->p[j]->n_groups);
        c->task0[j + 1] = c->task0[j] + c->n_xb * ((c->p[j]->n_groups + c->gpt[j] - 1) / c->gpt[j]);
    }
    run(exec, c->task0[c->n_jobs], pk_gemm_task, c);
}

void tl_matmul_w_multi(struct tl_pool *pool, const tl_mm_job *jobs, int n_jobs, int64_t n_in, const float *X,
                       int64_t n_tok, void *scratch, unsigned flags) {
    if (n_tok <= 0) return;
    pk_ctx c = {0};
    bool packed = n_jobs <= PK_MAX_JOBS && (n_tok < MIN_TOK_DEQUANT_GEMM || (flags & TL_MM_Q8));
    for (int j = 0; j < n_jobs && packed; j++) {
        const tl_mm_job *q = &jobs[j];
        tlq_gemm_fn gemm = q->pack ? tlq_gemm_kernel(q->type) : NULL;
        const tlq_packed *p = gemm && q->n_out > 0 ? wpack_get(q->pack, pool, q->type, q->W, n_in, q->n_out) : NULL;
        packed = p && tlq_xp_family(q->type) == tlq_xp_family(jobs[0].type);
        c.p[j] = p, c.gemm[j] = gemm, c.Y[j] = q->Y, c.ldy[j] = q->ldy;
    }
    if (!packed) {
        for (int j = 0; j < n_jobs; j++) {
            const tl_mm_job *q = &jobs[j];
            tl_matmul_w(pool, q->pack, q->type, q->W, n_in, q->n_out, X, n_tok, q->Y, q->ldy, scratch, flags);
        }
        return;
    }
    c.n_jobs = n_jobs;
    void *owned = scratch ? NULL : tl_xmalloc(tl_matmul_scratch_size(jobs[0].type, n_in, n_tok));
    matmul_packed(pool, &c, X, n_tok, scratch ? scratch : owned);
    free(owned);
}

void tl_matmul_w(struct tl_pool *pool, tl_wpack *pack, tl_type wt, const void *W, int64_t n_in, int64_t n_out,
                 const float *X, int64_t n_tok, float *Y, int64_t ldy, void *scratch, unsigned flags) {
    const tlq_packed *p = NULL;
    tlq_gemm_fn gemm = pack ? tlq_gemm_kernel(wt) : NULL;
    if (gemm && n_tok > 0 && n_out > 0) p = wpack_get(pack, pool, wt, W, n_in, n_out);
    if (p && (n_tok < MIN_TOK_DEQUANT_GEMM || (flags & TL_MM_Q8))) {
        pk_ctx c = {.n_jobs = 1, .p = {p}, .gemm = {gemm}, .Y = {Y}, .ldy = {ldy}};
        void *owned = scratch ? NULL : tl_xmalloc(tl_matmul_scratch_size(wt, n_in, n_tok));
        matmul_packed(pool, &c, X, n_tok, scratch ? scratch : owned);
        free(owned);
        return;
    }
    matmul_impl(pool, wt, W, p, n_in, n_out, X, n_tok, Y, ldy, scratch);
}

int64_t tl_matmul_rounded_rows_w(tl_type wt, bool has_pack, unsigned flags) {
    if (has_pack && (flags & TL_MM_Q8) && tlq_gemm_kernel(wt)) return INT64_MAX;
    return tl_matmul_rounded_rows(wt);
}
