/* forward.cu: the CUDA forward pass (llama / mistral / qwen2 / gemma3), the same math as
 * session.c, step for step:
 *   embed (gemma: * sqrt(E)); per layer: rmsnorm -> q,k,v (+bias) -> gemma q/k head norms ->
 *   RoPE (cos/sin from double angles, like the CPU) -> attention over the cache (attn.cu) ->
 *   Wo (gemma: post-norm) + residual -> rmsnorm -> gate/up -> silu|gelu-tanh * up -> Wdown
 *   (gemma: post-norm) + residual; final rmsnorm and the output projection.
 * Weights: f32/f16/bf16 tensors and the GGUF block formats with kernels (qmatvec.cu: q8_0,
 * q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K, w4g128) are uploaded as they are; other types are
 * dequantized to f16 once at upload. Decode (one token) multiplies with bandwidth-bound
 * matrix-vector kernels (a warp per row, several matrices sharing one input in one launch;
 * block formats through int8 dot products); prefill chunks use cuBLAS GEMM (bf16/f16
 * operands, fp32 accumulate and output; f32 weights in plain fp32; block formats dequantized
 * to f16 into a workspace, a slab of rows at a time, just before their GEMM). */
#include "forward.cuh"
#include "cuda_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "../model.h"
#include "../session.h"
#include "../kv/policy.h"
#include "../kv/offload.h"
#include "../engine/plan.h"
}

/* ---------------- --cuda-opt prof: GPU time per part of the one-token steps ----------------
 * Events are recorded at the boundaries of the parts of each decode step (prefill chunks are
 * not timed); the sums are printed to stderr when the session is freed. The events cost a
 * little time themselves, so a profiled run is slightly slower than a plain one. */
enum { PF_EMBED, PF_QKV, PF_ROPE, PF_ATTN, PF_APPEND, PF_WO, PF_GATEUP, PF_DOWN, PF_LOGITS, PF_N };
static const char *const pf_name[PF_N] = {"embedding, rope table", "rmsnorm + q/k/v", "q/k norms, rope", "attention",
                                          "KV append", "wo + residual", "rmsnorm + gate/up + act", "down + residual",
                                          "final norm, logits"};
#define PF_MAX 1024
struct tlc_prof {
    cudaEvent_t ev[PF_MAX];
    int cat[PF_MAX], n;
    bool active; /* the chunk being computed is one token */
    double ms[PF_N];
    long long steps;
};

static void prof_mark(tl_cuda_session *g, int cat) {
    tlc_prof *P = g->prof;
    if (!P || !P->active || P->n >= PF_MAX) return;
    if (cudaEventRecord(P->ev[P->n], g->cx.stream) == cudaSuccess) P->cat[P->n++] = cat;
}

/* After the step's synchronisation: add the intervals to their parts. */
static void prof_collect(tl_cuda_session *g) {
    tlc_prof *P = g->prof;
    if (!P || !P->active) return;
    for (int i = 0; i + 1 < P->n; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, P->ev[i], P->ev[i + 1]) == cudaSuccess) P->ms[P->cat[i]] += ms;
    }
    if (P->n > 1) P->steps++;
    P->n = 0;
    P->active = false;
}

static void prof_report(tl_cuda_session *g) {
    tlc_prof *P = g->prof;
    if (!P->steps) return;
    double tot = 0;
    for (int i = 0; i < PF_N; i++) tot += P->ms[i];
    fprintf(stderr, "tailor cuda profile: %lld one-token steps at depth <= %d, %.3f ms/step of GPU time\n", P->steps, g->n_past, tot / P->steps);
    for (int i = 0; i < PF_N; i++)
        if (P->ms[i] > 0) fprintf(stderr, "  %-26s %8.3f ms/step %5.1f%%\n", pf_name[i], P->ms[i] / P->steps, 100.0 * P->ms[i] / tot);
    const double mv = (P->ms[PF_QKV] + P->ms[PF_WO] + P->ms[PF_GATEUP] + P->ms[PF_DOWN] + P->ms[PF_LOGITS]) / P->steps;
    fprintf(stderr, "  matrix parts: %.3f ms/step for %.2f GB of weights: %.0f GB/s\n", mv, g->w->read_bytes / 1e9,
            g->w->read_bytes / 1e6 / mv);
}

#define CK(call)                                                                                              \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) return tl_fail(err, "%s: %s (%s:%d)", #call, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)

/* ---------------- kernels ---------------- */

template <int WT>
__global__ void embed_k(const void *E, const int32_t *tok, int n_embd, float scale, float *x) {
    const int t = blockIdx.x;
    const size_t base = (size_t)tok[t] * n_embd;
    for (int i = threadIdx.x; i < n_embd; i += blockDim.x) x[(size_t)t * n_embd + i] = ldw<WT>(E, base + i) * scale;
}

__device__ float block_sum(float v, float *red) {
    v = wsum(v);
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < nw; i++) s += red[i];
    return s;
}

/* out = x * 1/sqrt(mean(x^2) + eps) * w (add: out += that). Row per block; in place is fine. */
__global__ void rmsnorm_k(const float *x, const float *w, float *out, int dim, float eps, int add) {
    __shared__ float red[32];
    pdl_trigger();
    pdl_wait();
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *o = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = xr[i] * inv * w[i];
        o[i] = add ? o[i] + v : v;
    }
}

/* cos/sin per token and base: rope[((t*2 + b)*half + i)*2 + {0,1}], angles in double, times
 * mscale (the rope's attention factor, as session.c's rope_cs). */
__global__ void rope_table_k(const double *inv_freq, int half, int pos0, int n, float mscale, float *rope) {
    pdl_trigger();
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n * 2 * half) return;
    const int i = e % half, b = (e / half) % 2, t = e / half / 2;
    double sn, cs;
    sincos((double)(pos0 + t) * inv_freq[b * half + i], &sn, &cs);
    rope[(size_t)e * 2] = (float)cs * mscale;
    rope[(size_t)e * 2 + 1] = (float)sn * mscale;
}

/* RoPE of token blockIdx.x: x0 (n0 heads) when blockIdx.y == 0, x1 (n1 heads) when 1, so q
 * and k take one launch. */
__global__ void rope_k(float *x0, int n0, float *x1, int n1, int hd, int n_rot, int neox, int base, const float *__restrict__ rope) {
    const int t = blockIdx.x, half = n_rot / 2;
    pdl_trigger();
    pdl_wait();
    float *x = blockIdx.y ? x1 : x0;
    const int n_heads = blockIdx.y ? n1 : n0;
    const float *cs0 = rope + ((size_t)t * 2 + base) * half * 2;
    for (int e = threadIdx.x; e < n_heads * half; e += blockDim.x) {
        const int h = e / half, i = e % half;
        float *hp = x + ((size_t)t * n_heads + h) * hd;
        const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        const float c = cs0[2 * i], s = cs0[2 * i + 1], x0 = hp[a], x1 = hp[b];
        hp[a] = x0 * c - x1 * s;
        hp[b] = x0 * s + x1 * c;
    }
}

__global__ void act_k(float *g, const float *u, size_t n, int gelu) {
    pdl_trigger();
    pdl_wait();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = g[i];
        float a;
        if (gelu) a = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
        else a = x / (1.0f + expf(-x));
        g[i] = a * u[i];
    }
}

__global__ void bias_k(float *y, const float *b, int n_tok, int dim) {
    const size_t n = (size_t)n_tok * dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) y[i] += b[i % dim];
}

template <int WT>
__global__ void to16_k(const float *x, uint16_t *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = WT == WT_F16 ? __half_as_ushort(__float2half_rn(x[i])) : __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}

/* Pseudo-random K/V rows (a hash of seed, token, element): sum of 4 uniforms, unit-ish scale. */
__global__ void random_k(float *x, size_t n, uint64_t seed, size_t off) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = seed ^ ((off + i) * 0x9E3779B97F4A7C15ull);
        float s = 0.0f;
        for (int k = 0; k < 4; k++) {
            z += 0x9E3779B97F4A7C15ull;
            uint64_t r = z;
            r = (r ^ (r >> 30)) * 0xBF58476D1CE4E5B9ull;
            r = (r ^ (r >> 27)) * 0x94D049BB133111EBull;
            r ^= r >> 31;
            s += (float)(r >> 40) * (1.0f / 16777216.0f);
        }
        x[i] = (s - 2.0f) * 1.7f;
    }
}

static int grid1(size_t n, int thr) {
    size_t b = (n + thr - 1) / thr;
    return (int)(b > 1048576 ? 1048576 : (b ? b : 1));
}

/* ---------------- weights ---------------- */

/* Block formats with kernels (qmatvec.cu) stay as they are in the file; widen (--cuda-opt
 * widen) widens them to f16 at upload instead (the 16-bit deployment: 3.3x the memory of a
 * Q4_K_M file, and the way to compare the two paths). Verified on an H100 (docs/cuda.md,
 * "Weights in GGUF block formats"). */
static int wt_of(tl_type t, bool widen) {
    return t == TL_TYPE_F32 ? WT_F32 : t == TL_TYPE_BF16 ? WT_BF16 : tlc_qtype_has_kernels(t) && !widen ? WT_Q : WT_F16;
}
/* Device bytes of a matrix as upload_weights stores it. */
static uint64_t mat_bytes(const tl_mat *t, bool widen) {
    const int wt = wt_of(t->type, widen);
    if (wt == WT_Q) return (uint64_t)tl_row_size(t->type, t->n_in) * t->n_out;
    return (uint64_t)t->n_in * t->n_out * (wt == WT_F32 ? 4 : 2);
}

/* Block-format workspace of a session (0 when no product reads a block format): the prefill
 * GEMM's f16 slab (*wdq_elems values: the largest such layer matrix, and at least
 * TLC_WDQ_MIN_ROWS rows of the output projection, which goes through in slabs) and the
 * decode's quantized input (int8 values + a float2 per 32) for the widest input. */
#define TLC_WDQ_MIN_ROWS 4096
static uint64_t ws_bytes_of(const tl_model *m, bool widen, size_t *wdq_elems, int *xq_cap) {
    const tl_config *c = &m->cfg;
    size_t most = 0;
    for (int il = 0; il < c->n_layer; il++) {
        const tl_layer_weights *S = &m->w.layers[il];
        const tl_mat *mats[] = {&S->wq, &S->wk, &S->wv, &S->wo, &S->w_gate, &S->w_up, &S->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
            if (wt_of(mats[i]->type, widen) == WT_Q) most = TL_MAX(most, (size_t)mats[i]->n_in * mats[i]->n_out);
    }
    const tl_mat *out = m->w.tied_output ? &m->w.tok_embd : &m->w.output;
    if (wt_of(out->type, widen) == WT_Q)
        most = TL_MAX(most, (size_t)out->n_in * TL_MIN((size_t)out->n_out, (size_t)TLC_WDQ_MIN_ROWS));
    const int max_in = TL_MAX(c->n_embd, TL_MAX(c->n_head * c->head_dim_v, c->n_ff));
    *wdq_elems = most;
    *xq_cap = most ? max_in : 0;
    return most ? 2 * (uint64_t)most + (uint64_t)max_in + sizeof(float2) * (uint64_t)(max_in / 32) : 0;
}

static int up_vec(tlc_weights *w, const float *src, int64_t n, float **dst, tl_error *err) {
    *dst = NULL;
    if (!src) return 0;
    CK(cudaMalloc((void **)dst, sizeof(float) * (size_t)n));
    CK(cudaMemcpy(*dst, src, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
    w->bytes += sizeof(float) * (size_t)n;
    w->read_bytes += sizeof(float) * (size_t)n;
    return 0;
}

static int up_mat(tlc_weights *w, const tl_mat *src, dmat *dst, bool read_all, tl_error *err) {
    dst->d = NULL;
    dst->n_in = (int)src->n_in;
    dst->n_out = (int)src->n_out;
    dst->wt = wt_of(src->type, w->widen);
    dst->qt = src->type;
    const size_t bytes = mat_bytes(src, w->widen);
    CK(cudaMalloc(&dst->d, bytes));
    if (dst->wt == WT_Q || src->type == TL_TYPE_F32 || src->type == TL_TYPE_F16 || src->type == TL_TYPE_BF16) {
        CK(cudaMemcpy(dst->d, src->data, bytes, cudaMemcpyHostToDevice));
    } else { /* other formats: dequantize to f16 once, in slabs of rows */
        static bool said;
        if (!said && !tlc_qtype_has_kernels(src->type)) {
            fprintf(stderr, "cuda: %s weights have no GPU kernels: widened to f16 at upload (the first: %s)\n",
                    tl_type_name(src->type), src->name);
            said = true;
        }
        const size_t rs = tl_row_size(src->type, src->n_in);
        const int64_t slab = TL_MAX(1, (int64_t)(16 << 20) / (src->n_in * 2));
        float *f = (float *)tl_xmalloc(sizeof(float) * (size_t)src->n_in);
        uint16_t *h = (uint16_t *)tl_xmalloc(sizeof(uint16_t) * (size_t)src->n_in * slab);
        for (int64_t r0 = 0; r0 < src->n_out; r0 += slab) {
            const int64_t nr = TL_MIN(slab, src->n_out - r0);
            for (int64_t r = 0; r < nr; r++) {
                tl_dequantize_row(src->type, (const uint8_t *)src->data + (size_t)(r0 + r) * rs, f, src->n_in);
                for (int64_t i = 0; i < src->n_in; i++) h[r * src->n_in + i] = tl_fp32_to_fp16(f[i]);
            }
            cudaError_t e = cudaMemcpy((uint16_t *)dst->d + (size_t)r0 * src->n_in, h, sizeof(uint16_t) * (size_t)nr * src->n_in,
                                       cudaMemcpyHostToDevice);
            if (e != cudaSuccess) {
                free(f);
                free(h);
                return tl_fail(err, "uploading %s: %s", src->name, cudaGetErrorString(e));
            }
        }
        free(f);
        free(h);
    }
    w->bytes += bytes;
    if (read_all) w->read_bytes += bytes;
    return 0;
}

static void free_weights(tlc_weights *w) {
    if (!w) return;
    cudaFree(w->tok_embd.d);
    if (w->output.d != w->tok_embd.d) cudaFree(w->output.d);
    cudaFree(w->output_norm);
    for (int i = 0; w->L && i < w->n_layer; i++) {
        dlayer *L = &w->L[i];
        void *p[] = {L->attn_norm, L->ffn_norm, L->attn_post_norm, L->ffn_post_norm, L->q_norm, L->k_norm, L->bq,
                     L->bk, L->bv, L->wq.d, L->wk.d, L->wv.d, L->wo.d, L->gate.d, L->up.d, L->down.d};
        for (size_t j = 0; j < sizeof p / sizeof *p; j++) cudaFree(p[j]);
    }
    free(w->L);
    free(w);
}

extern "C" void tl_cuda_weights_free(void *w) { free_weights((tlc_weights *)w); }

static tlc_weights *upload_weights(tl_model *m, const tl_cuda_opts *o, tl_error *err) {
    const tl_config *c = &m->cfg;
    tlc_weights *w = (tlc_weights *)tl_xcalloc(1, sizeof *w);
    w->n_layer = c->n_layer;
    w->widen = o->widen;
    w->L = (dlayer *)tl_xcalloc((size_t)c->n_layer, sizeof(dlayer));
    const double t0 = tl_time_s();
    int rc = up_mat(w, &m->w.tok_embd, &w->tok_embd, m->w.tied_output, err);
    if (!rc) rc = up_vec(w, m->w.output_norm, c->n_embd, &w->output_norm, err);
    if (!rc) {
        if (m->w.tied_output) w->output = w->tok_embd;
        else rc = up_mat(w, &m->w.output, &w->output, true, err);
    }
    const int qdim = c->n_head * c->head_dim_k, kdim = c->n_head_kv * c->head_dim_k, vdim = c->n_head_kv * c->head_dim_v;
    for (int il = 0; il < c->n_layer && !rc; il++) {
        const tl_layer_weights *S = &m->w.layers[il];
        dlayer *L = &w->L[il];
        rc = up_vec(w, S->attn_norm, c->n_embd, &L->attn_norm, err) || up_vec(w, S->ffn_norm, c->n_embd, &L->ffn_norm, err) ||
             up_vec(w, S->attn_post_norm, c->n_embd, &L->attn_post_norm, err) ||
             up_vec(w, S->ffn_post_norm, c->n_embd, &L->ffn_post_norm, err) ||
             up_vec(w, S->q_norm, c->head_dim_k, &L->q_norm, err) || up_vec(w, S->k_norm, c->head_dim_k, &L->k_norm, err) ||
             up_vec(w, S->bq, qdim, &L->bq, err) || up_vec(w, S->bk, kdim, &L->bk, err) || up_vec(w, S->bv, vdim, &L->bv, err) ||
             up_mat(w, &S->wq, &L->wq, true, err) || up_mat(w, &S->wk, &L->wk, true, err) ||
             up_mat(w, &S->wv, &L->wv, true, err) || up_mat(w, &S->wo, &L->wo, true, err) ||
             up_mat(w, &S->w_gate, &L->gate, true, err) || up_mat(w, &S->w_up, &L->up, true, err) ||
             up_mat(w, &S->w_down, &L->down, true, err);
    }
    if (rc) {
        tl_fail_prefix(err, "uploading weights to the GPU");
        free_weights(w);
        return NULL;
    }
    if (o->verbose)
        fprintf(stderr, "cuda: uploaded %.2f GiB of weights in %.2f s\n", w->bytes / 1073741824.0, tl_time_s() - t0);
    return w;
}

/* ---------------- matrix products ---------------- */

/* y (+)= M x for n rows xh (f16) of a block-format matrix: slabs of rows dequantized to f16
 * into wdq (wdq_elems values), each multiplied by cuBLAS. */
static int qgemm(tlc_ctx *cx, cublasHandle_t blas, const dmat *M, const uint16_t *xh, int n, float *y, bool add, uint16_t *wdq,
                 size_t wdq_elems, tl_error *err) {
    const int slab = (int)TL_MIN((size_t)M->n_out, wdq_elems / (size_t)M->n_in);
    if (slab < 1) return tl_fail(err, "%s GEMM: the dequantization workspace (%zu values) holds no row of %d", tl_type_name(M->qt), wdq_elems, M->n_in);
    const float alpha = 1.0f, beta = add ? 1.0f : 0.0f;
    for (int r0 = 0; r0 < M->n_out; r0 += slab) {
        const int nr = TL_MIN(slab, M->n_out - r0);
        if (tlc_qdequant(cx, M->qt, M->d, M->n_in, r0, nr, wdq, err)) return -1;
        cublasStatus_t st = cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, nr, n, M->n_in, &alpha, wdq, CUDA_R_16F, M->n_in, xh,
                                         CUDA_R_16F, M->n_in, &beta, y + r0, CUDA_R_32F, M->n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS)
            return tl_fail(err, "cublasGemmEx (%s rows %d..%d of %dx%d x %d tokens): status %d", tl_type_name(M->qt), r0, r0 + nr - 1,
                           M->n_out, M->n_in, n, (int)st);
    }
    return 0;
}

/* Up to this many rows, block-format products run as one decode product per row: a 4-bit one
 * reads ~0.6 bytes per weight, the dequantize + GEMM path ~4.6 (the blocks, the f16 slab
 * written and read back), so rows are cheaper until about 8. */
#define TLC_QGEMM_MIN_ROWS 8

/* The decode product's arguments for up to three matrices sharing x (their format and n_in). */
tlc_mv tlc_mv_of(int nseg, const dmat *const *W, const float *x, float *const *y, const float *const *bias, const int *add) {
    tlc_mv a;
    memset(&a, 0, sizeof a);
    a.nseg = nseg;
    a.n_in = W[0]->n_in;
    a.wt = W[0]->wt;
    a.qt = W[0]->qt;
    a.x = x;
    for (int s = 0; s < nseg; s++) {
        a.W[s] = W[s]->d;
        a.bias[s] = bias ? bias[s] : NULL;
        a.y[s] = y[s];
        a.n_out[s] = W[s]->n_out;
        a.add[s] = add ? add[s] : 0;
    }
    return a;
}

/* y_s (+)= W_s x (+ b_s) for up to three matrices sharing x and n_in. n tokens. */
int tlc_linear(tl_cuda_session *g, int nseg, const dmat *const *W, const float *x, int n, float *const *y,
                  const float *const *bias, const int *add, tl_error *err) {
    const int n_in = W[0]->n_in, wt = W[0]->wt;
    bool same = true;
    for (int s = 1; s < nseg; s++) same = same && W[s]->wt == wt && (wt != WT_Q || W[s]->qt == W[0]->qt) && W[s]->n_in == n_in;
    bool blocks = true;
    for (int s = 0; s < nseg; s++) blocks = blocks && W[s]->wt == WT_Q;
    if (n > 1 && n <= TLC_QGEMM_MIN_ROWS && blocks) { /* a few rows: one decode product per row */
        for (int r = 0; r < n; r++) {
            float *yr[3];
            for (int s = 0; s < nseg; s++) yr[s] = y[s] + (size_t)r * W[s]->n_out;
            if (tlc_linear(g, nseg, W, x + (size_t)r * n_in, 1, yr, bias, add, err)) return -1;
        }
        return 0;
    }
    if (n == 1 && !same) { /* e.g. q4_K q/k with a q6_K v: one product each */
        for (int s = 0; s < nseg; s++)
            if (tlc_linear(g, 1, &W[s], x, 1, &y[s], bias ? &bias[s] : NULL, add ? &add[s] : NULL, err)) return -1;
        return 0;
    }
    if (n == 1) {
        const tlc_mv a = tlc_mv_of(nseg, W, x, y, bias, add);
        return tlc_matvec(&g->cx, &a, err);
    }
    for (int s = 0; s < nseg; s++) {
        const dmat *M = W[s];
        const void *B = x;
        cudaDataType_t ty = CUDA_R_32F;
        if (M->wt != WT_F32) {
            const size_t ne = (size_t)n * M->n_in;
            const bool f16 = M->wt == WT_F16 || M->wt == WT_Q;
            if (f16) to16_k<WT_F16><<<grid1(ne, 256), 256, 0, g->cx.stream>>>(x, (uint16_t *)g->xb, ne);
            else to16_k<WT_BF16><<<grid1(ne, 256), 256, 0, g->cx.stream>>>(x, (uint16_t *)g->xb, ne);
            TLC_LAUNCH_CHECK("convert activations");
            B = g->xb;
            ty = f16 ? CUDA_R_16F : CUDA_R_16BF;
        }
        const bool acc = add && add[s];
        if (M->wt == WT_Q) {
            if (qgemm(&g->cx, g->blas, M, (const uint16_t *)B, n, y[s], acc, g->wdq, g->wdq_elems, err)) return -1;
        } else {
            const float alpha = 1.0f, beta = acc ? 1.0f : 0.0f;
            cublasStatus_t st = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, M->n_out, n, M->n_in, &alpha, M->d, ty, M->n_in, B,
                                             ty, M->n_in, &beta, y[s], CUDA_R_32F, M->n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (st != CUBLAS_STATUS_SUCCESS)
                return tl_fail(err, "cublasGemmEx (%dx%d x %d tokens): status %d", M->n_out, M->n_in, n, (int)st);
        }
        if (bias && bias[s]) {
            bias_k<<<grid1((size_t)n * M->n_out, 256), 256, 0, g->cx.stream>>>(y[s], bias[s], n, M->n_out);
            TLC_LAUNCH_CHECK("bias");
        }
    }
    return 0;
}

static int linear1(tl_cuda_session *g, const dmat *W, const float *x, int n, float *y, const float *bias, int add, tl_error *err) {
    const dmat *Ws[1] = {W};
    float *ys[1] = {y};
    const float *bs[1] = {bias};
    int ad[1] = {add};
    return tlc_linear(g, 1, Ws, x, n, ys, bs, ad, err);
}

int tlc_rmsnorm(tl_cuda_session *g, const float *x, const float *w, float *out, int rows, int dim, int add, tl_error *err) {
    const int thr = dim >= 1024 ? 1024 : dim >= 256 ? 256 : dim > 64 ? 128 : 64;
    cudaError_t e = tlc_launch(!g->cx.no_pdl, rmsnorm_k, dim3(rows), dim3(thr), 0, g->cx.stream, x, w, out, dim, g->m->cfg.norm_eps, add);
    if (e != cudaSuccess) return tl_fail(err, "CUDA kernel rmsnorm: %s", cudaGetErrorString(e));
    TLC_LAUNCH_CHECK("rmsnorm");
    return 0;
}

int tlc_embed(tl_cuda_session *g, int n, tl_error *err) {
    const tl_config *c = &g->m->cfg;
    const tlc_weights *w = g->w;
    cudaStream_t st = g->cx.stream;
    const int E = c->n_embd;
    const float escale = c->embd_scale ? sqrtf((float)E) : 1.0f;
    const int ethr = E >= 256 ? 256 : 64;
    switch (w->tok_embd.wt) {
    case WT_F32: embed_k<WT_F32><<<n, ethr, 0, st>>>(w->tok_embd.d, g->tok, E, escale, g->x); break;
    case WT_F16: embed_k<WT_F16><<<n, ethr, 0, st>>>(w->tok_embd.d, g->tok, E, escale, g->x); break;
    case WT_Q:
        if (tlc_qembed(&g->cx, w->tok_embd.qt, w->tok_embd.d, E, g->tok, n, escale, g->x, err)) return -1;
        break;
    default: embed_k<WT_BF16><<<n, ethr, 0, st>>>(w->tok_embd.d, g->tok, E, escale, g->x); break;
    }
    TLC_LAUNCH_CHECK("embedding");
    return 0;
}

int tlc_rope_table(tl_cuda_session *g, const double *inv_freq, int pos0, int n, float *rope, tl_error *err) {
    const int half = g->m->cfg.n_rot / 2;
    rope_table_k<<<grid1((size_t)n * 2 * half, 128), 128, 0, g->cx.stream>>>(inv_freq, half, pos0, n, g->m->cfg.rope_attn_factor, rope);
    TLC_LAUNCH_CHECK("rope table");
    return 0;
}

int tlc_rope(tl_cuda_session *g, float *q, int nq, float *k, int nk, int n, int base, const float *rope, tl_error *err) {
    const tl_config *c = &g->m->cfg;
    cudaError_t e = tlc_launch(!g->cx.no_pdl, rope_k, dim3(n, k ? 2 : 1), dim3(512), 0, g->cx.stream, q, nq, k, nk, c->head_dim_k,
                               c->n_rot, c->rope_style == TL_ROPE_NEOX ? 1 : 0, base, rope);
    if (e != cudaSuccess) return tl_fail(err, "CUDA kernel rope: %s", cudaGetErrorString(e));
    return 0;
}

int tlc_act(tl_cuda_session *g, float *gate, const float *up, size_t n, int glu, tl_error *err) {
    act_k<<<grid1(n, 256), 256, 0, g->cx.stream>>>(gate, up, n, glu == 2);
    TLC_LAUNCH_CHECK("activation");
    return 0;
}

/* ---------------- session ---------------- */

/* y = W (rmsnorm(x) * norm_w) for nseg matrices sharing the input; glu (gate/up, nseg 2):
 * y[0] = act(W0 xn) * (W1 xn), y[1] scratch, the activation fused into the products for one
 * token when the shape allows (matvec.cu), else act_k after them. */
static int norm_linear(tl_cuda_session *g, const float *x, const float *norm_w, int n, int nseg, const dmat *const *W,
                       float *const *y, const float *const *bias, int glu, tl_error *err) {
    const tl_config *c = &g->m->cfg;
    if (tlc_rmsnorm(g, x, norm_w, g->xn, n, c->n_embd, 0, err)) return -1;
    if (glu && n == 1 && !g->cx.no_fuse && W[0]->wt == W[1]->wt && (W[0]->wt != WT_Q || W[0]->qt == W[1]->qt) &&
        W[0]->n_in == W[1]->n_in) {
        tlc_mv a;
        memset(&a, 0, sizeof a);
        a.nseg = 2;
        a.n_in = W[0]->n_in;
        a.wt = W[0]->wt;
        a.qt = W[0]->qt;
        a.x = g->xn;
        a.glu = glu;
        for (int s = 0; s < 2; s++) {
            a.W[s] = W[s]->d;
            a.y[s] = y[s];
            a.n_out[s] = W[s]->n_out;
        }
        const int rc = tlc_matvec(&g->cx, &a, err);
        if (rc <= 0) return rc;
    }
    if (tlc_linear(g, nseg, W, g->xn, n, y, bias, NULL, err)) return -1;
    return glu ? tlc_act(g, y[0], y[1], (size_t)n * W[0]->n_out, glu, err) : 0;
}

int tlc_scratch(tlc_ctx *cx, size_t bytes, tl_error *err) {
    if (bytes <= cx->scratch_bytes) return 0;
    if (cx->scratch) {
        cudaStreamSynchronize(cx->stream);
        cudaFree(cx->scratch);
    }
    cx->scratch = NULL;
    cx->scratch_bytes = 0;
    CK(cudaMalloc(&cx->scratch, bytes));
    cx->scratch_bytes = bytes;
    return 0;
}

extern "C" bool tl_cuda_available(char *why, size_t n) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        if (why && n) snprintf(why, n, "no CUDA device (cudaGetDeviceCount: %s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return false;
    }
    if (why && n) why[0] = 0;
    return true;
}

extern "C" bool tl_cuda_device_bandwidth(char *name, size_t n, double *peak_gbs) {
    *peak_gbs = 0;
    if (!tl_cuda_available(name, n)) return false;
    cudaDeviceProp prop;
    int clock_khz = 0, bus_bits = 0;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0) != cudaSuccess) {
        if (name && n) snprintf(name, n, "cannot read the device's properties");
        return false;
    }
    if (name && n) snprintf(name, n, "%s", prop.name);
    *peak_gbs = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
    return true;
}

/* Set up one side of a layer cache (mirrors quant.c's side_init) and allocate it. */
static int side_setup(tl_cuda_session *g, kv_side *S, const tl_kv_side *p, tl_kv_kind kind, int d, int residual, int cap,
                      int n_kv, const char *name, tl_error *err) {
    memset(S, 0, sizeof *S);
    S->d = d;
    S->cap = cap;
    if (kind != TL_KV_QUANT || p->bits == 16) {
        S->mode = KV_DENSE;
        S->dt = kind == TL_KV_F32 ? DT_F32 : kind == TL_KV_BF16 ? DT_BF16 : DT_F16;
        S->fp_head = (size_t)cap * d;
        const size_t b = S->fp_head * n_kv * (S->dt == DT_F32 ? 4 : 2);
        CK(cudaMalloc(&S->fp, b));
        g->kv_alloc += b;
        return 0;
    }
    S->bits = p->bits;
    S->sym = p->quantizer == TL_KV_SYM;
    S->ppg = S->sym ? 1 : 2;
    const size_t ub = 4 * (size_t)p->bits;
    if (d % 32) return tl_fail(err, "%s: head_dim %d is not a multiple of 32", name, d);
    if (p->gran == TL_KV_GRAN_TOKEN) {
        S->mode = KV_SLIDE;
        S->g = p->group == 0 ? d : p->group;
        if (d % S->g || S->g % 32 || S->g > 256) return tl_fail(err, "%s: group %d does not fit head_dim %d", name, S->g, d);
        S->R = residual;
        S->row_bytes = (size_t)(d / 32) * ub;
        S->pstride = (d / S->g) * S->ppg;
        S->codes_head = (size_t)cap * S->row_bytes;
        S->params_head = (size_t)cap * S->pstride;
        S->fp_head = (size_t)residual * d;
    } else if (p->gran == TL_KV_GRAN_CHANNEL) {
        S->mode = KV_FLUSH;
        S->g = p->group;
        if (S->g != 32 && S->g != 64 && S->g != 128) return tl_fail(err, "%s: per-channel group %d (use 32, 64, 128)", name, S->g);
        const int base = TL_MAX(residual, S->g);
        S->R = (base + S->g - 1) / S->g * S->g;
        S->grp_bytes = (size_t)d * (S->g / 32) * ub;
        S->grp_halves = (size_t)d * S->ppg;
        const size_t n_grp = ((size_t)cap + S->g - 1) / S->g;
        S->codes_head = n_grp * S->grp_bytes;
        S->params_head = n_grp * S->grp_halves;
        S->fp_head = (size_t)S->R * d;
    } else {
        return tl_fail(err, "%s: per-block and per-tensor granularity have no GPU implementation", name);
    }
    const size_t cb = S->codes_head * n_kv, pb = S->params_head * n_kv * 2, fb = S->fp_head * n_kv * 2;
    CK(cudaMalloc((void **)&S->codes, cb));
    CK(cudaMalloc((void **)&S->params, pb));
    if (fb) CK(cudaMalloc(&S->fp, fb));
    g->kv_alloc += cb + pb + fb;
    return 0;
}

static void *dalloc(tl_cuda_session *g, size_t bytes, int *rc) {
    void *p = NULL;
    if (*rc) return NULL;
    if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) {
        *rc = -1;
        return NULL;
    }
    g->act_bytes += bytes;
    return p;
}

extern "C" void tl_cuda_session_free(tl_cuda_session *g) {
    if (!g) return;
    if (g->cx.stream) cudaStreamSynchronize(g->cx.stream);
    if (g->prof) {
        prof_report(g);
        for (int i = 0; i < PF_MAX; i++) cudaEventDestroy(g->prof->ev[i]);
        free(g->prof);
    }
    for (int il = 0; g->kv && il < g->m->cfg.n_layer; il++) {
        tlc_off_free(g->kv[il].off);
        kv_side *sides[2] = {&g->kv[il].k, &g->kv[il].v};
        for (int s = 0; s < 2; s++) {
            cudaFree(sides[s]->codes);
            cudaFree(sides[s]->params);
            cudaFree(sides[s]->fp);
        }
    }
    free(g->kv);
    free(g->pol);
    void *bufs[] = {g->x, g->xn, g->q, g->k, g->v, g->attn, g->gate, g->up, g->tmp, g->rope, g->logits, g->all_logits,
                    g->xb, g->tok, g->inv_freq, g->cx.scratch, g->qpred, g->wdq, g->cx.xq, g->cx.xd};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) cudaFree(bufs[i]);
    if (g->blas) cublasDestroy(g->blas);
    tlc_crow_free(&g->cx);
    if (g->cx.stream) cudaStreamDestroy(g->cx.stream);
    free(g);
}

/* Device 0, a non-blocking stream and the kernel switches of the options (backend.cuh,
 * docs/cuda.md), for a session or a batch. safe: every reference choice. */
static int ctx_init(tlc_ctx *cx, const tl_cuda_opts *o, char *dev_name, size_t n, tl_error *err) {
    cudaDeviceProp prop;
    if (cudaSetDevice(0) != cudaSuccess || cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking) != cudaSuccess)
        return tl_fail(err, "--device cuda: cannot initialise device 0: %s", cudaGetErrorString(cudaGetLastError()));
    snprintf(dev_name, n, "%.64s (sm_%d%d, %d SMs)", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    cx->n_sm = prop.multiProcessorCount;
    cx->smem_optin = prop.sharedMemPerBlockOptin;
    cx->safe = o->safe;
    cx->old_decode = o->safe || o->no_decode;
    cx->no_dec_mma = o->no_dec_mma;
    cx->dec_minb = o->dec_minb;
    cx->no_tc = o->safe || o->no_tc;
    cx->dec_tc_from = o->safe || o->dec_tc < 0 ? 0 : o->dec_tc > 0 ? o->dec_tc : TLC_DEC_TC_FROM;
    cx->dec_tc_quant = o->dec_tc_quant;
    cx->no_fuse = o->safe || o->no_fuse;
    cx->no_pdl = o->safe || o->no_pdl;
    return 0;
}

static const tl_cuda_opts default_opts = {};
const tl_cuda_opts *tlc_opts(const tl_cuda_opts *o) { return o ? o : &default_opts; }

extern "C" tl_cuda_session *tl_cuda_session_new(tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                                                const tl_cuda_opts *o, tl_error *err) {
    return tlc_session_make(m, n_ctx, chunk, policies, TLC_PART_KV | TLC_PART_WS, o, err);
}

extern "C" tl_cuda_session *tl_cuda_session_new_kv(tl_model *m, int n_ctx, const tl_kv_layer_policy *policies,
                                                   const tl_cuda_opts *o, tl_error *err) {
    return tlc_session_make(m, n_ctx, 1, policies, TLC_PART_KV, o, err);
}

extern "C" const tl_cuda_opts *tl_cuda_session_opts(const tl_cuda_session *g) { return &g->opt; }

tl_cuda_session *tlc_session_make(tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies, int parts,
                                  const tl_cuda_opts *o, tl_error *err) {
    o = tlc_opts(o);
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) {
        tl_fail(err, "--device cuda: %s", why);
        return NULL;
    }
    const tl_config *c = &m->cfg;
    const bool kv = parts & TLC_PART_KV, ws = parts & TLC_PART_WS;
    n_ctx = tl_plan_n_ctx(c, n_ctx);
    if (kv) chunk = tl_plan_chunk(n_ctx, chunk); /* a batch's workspace alone: its rows, whatever the context */
    if (chunk < 1) {
        tl_fail(err, "--device cuda: a workspace for %d rows", chunk);
        return NULL;
    }
    if (c->head_dim_k % 4 || c->head_dim_v % 4 || c->n_rot / 2 > 512) {
        tl_fail(err, "--device cuda: head sizes %d/%d (need multiples of 4)", c->head_dim_k, c->head_dim_v);
        return NULL;
    }
    if (c->n_head / c->n_head_kv > TLC_QMAX) {
        tl_fail(err, "--device cuda: GQA group %d exceeds %d", c->n_head / c->n_head_kv, TLC_QMAX);
        return NULL;
    }
    if (m->dev_weights && ((const tlc_weights *)m->dev_weights)->widen != o->widen) {
        tl_fail(err, "--cuda-opt widen: this model's weights are on the GPU already, %s by an earlier session, and its "
                     "sessions share that copy: give them all the same widen",
                o->widen ? "in their block formats" : "widened to f16");
        return NULL;
    }
    tl_cuda_session *g = (tl_cuda_session *)tl_xcalloc(1, sizeof *g);
    g->m = m;
    g->opt = *o;
    g->parts = parts;
    g->n_ctx = n_ctx;
    g->chunk = chunk;
    int rc = 0;
    if (ctx_init(&g->cx, o, g->dev_name, sizeof g->dev_name, err)) {
        tl_cuda_session_free(g);
        return NULL;
    }
    if (kv && ws && o->prof) {
        g->prof = (tlc_prof *)tl_xcalloc(1, sizeof *g->prof);
        for (int i = 0; i < PF_MAX; i++) cudaEventCreate(&g->prof->ev[i]);
    }
    if (ws && (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(g->blas, g->cx.stream) != CUBLAS_STATUS_SUCCESS)) {
        tl_fail(err, "--device cuda: cublasCreate failed");
        tl_cuda_session_free(g);
        return NULL;
    }
    /* weights: once per model */
    if (!m->dev_weights) {
        m->dev_weights = upload_weights(m, o, err);
        if (!m->dev_weights) {
            tl_cuda_session_free(g);
            return NULL;
        }
        m->dev_weights_free = tl_cuda_weights_free;
    }
    g->w = (tlc_weights *)m->dev_weights;
    /* KV caches: the CPU session's rules (sliding-window layers stay dense f16, ring of window) */
    if (kv) {
        g->kv = (tlc_layer_kv *)tl_xcalloc((size_t)c->n_layer, sizeof(tlc_layer_kv));
        g->pol = (tl_kv_layer_policy *)tl_xcalloc((size_t)c->n_layer, sizeof(tl_kv_layer_policy));
    }
    for (int il = 0; kv && il < c->n_layer && !rc; il++) {
        tl_kv_shape sh;
        tl_kv_layer_policy p;
        tl_plan_layer_kv(c, n_ctx, il, policies ? &policies[il] : NULL, &sh, &p); /* the planner's rule */
        const int window = sh.window;
        char pname[128];
        tl_kv_policy_format(&p, pname, sizeof pname);
        if (p.kind == TL_KV_QUANT && (p.rotate || (p.smooth_k && p.k.bits < 16))) {
            tl_fail(err, "--device cuda: layer %d: KV policy '%s' has no GPU implementation (GPU: f32, f16, bf16, "
                         "k<B>v<B> per-token or per-channel/KIVI, with residual; TailorKV offload with summary)", il, pname);
            rc = -1;
            break;
        }
        g->pol[il] = p;
        tlc_layer_kv *L = &g->kv[il];
        L->n_head = c->n_head;
        L->n_head_kv = c->n_head_kv;
        L->window = window;
        L->scale = c->attn_scale;
        const int cap = window > 0 ? TL_MIN(window, n_ctx) : n_ctx;
        if (p.kind == TL_KV_OFFLOAD) {
            if (tlc_off_new(&L->off, &p.off, c->n_head, c->n_head_kv, c->head_dim_k, c->head_dim_v, n_ctx, o->gen_cap,
                            c->attn_scale, err)) {
                tl_fail_prefix(err, "--device cuda: layer %d KV cache ('%s')", il, pname);
                rc = -1;
                break;
            }
            tlc_off_info inf;
            tlc_off_info_of(L->off, &inf);
            g->kv_alloc += inf.dev;
            g->host_alloc += inf.host;
            uint64_t grown;
            if (ws && tlc_off_reserve(&g->cx, L->off, &grown, err)) { /* a batch reserves its own */
                tl_fail_prefix(err, "--device cuda: layer %d KV cache ('%s')", il, pname);
                rc = -1;
                break;
            }
            if (ws) g->act_bytes += grown; /* transient workspace, like the attention partials */
            continue;
        }
        if (side_setup(g, &L->k, &p.k, p.kind, c->head_dim_k, p.residual, cap, c->n_head_kv, "K", err) ||
            side_setup(g, &L->v, &p.v, p.kind, c->head_dim_v, p.residual, cap, c->n_head_kv, "V", err)) {
            tl_fail_prefix(err, "--device cuda: layer %d KV cache ('%s')", il, pname);
            rc = -1;
        }
    }
    if (rc) {
        tl_cuda_session_free(g);
        return NULL;
    }
    if (ws) {
        const size_t E = (size_t)c->n_embd, C = (size_t)chunk;
        const size_t qd = (size_t)c->n_head * c->head_dim_k, kd = (size_t)c->n_head_kv * c->head_dim_k,
                     vd = (size_t)c->n_head_kv * c->head_dim_v, od = (size_t)c->n_head * c->head_dim_v;
        size_t max_in = TL_MAX(E, TL_MAX(od, (size_t)c->n_ff));
        g->x = (float *)dalloc(g, 4 * C * E, &rc);
        g->xn = (float *)dalloc(g, 4 * C * E, &rc);
        g->q = (float *)dalloc(g, 4 * C * qd, &rc);
        g->k = (float *)dalloc(g, 4 * C * kd, &rc);
        g->v = (float *)dalloc(g, 4 * C * vd, &rc);
        g->attn = (float *)dalloc(g, 4 * C * od, &rc);
        g->gate = (float *)dalloc(g, 4 * C * c->n_ff, &rc);
        g->up = (float *)dalloc(g, 4 * C * c->n_ff, &rc);
        g->tmp = (float *)dalloc(g, 4 * C * E, &rc);
        g->rope = (float *)dalloc(g, 4 * C * 2 * (size_t)c->n_rot, &rc);
        g->logits = (float *)dalloc(g, 4 * (size_t)c->n_vocab, &rc);
        g->xb = dalloc(g, 2 * C * max_in, &rc);
        g->tok = (int32_t *)dalloc(g, 4 * C, &rc);
        g->ws_bytes = ws_bytes_of(m, o->widen, &g->wdq_elems, &g->cx.xq_cap);
        if (g->ws_bytes && !rc &&
            (cudaMalloc((void **)&g->wdq, 2 * g->wdq_elems) != cudaSuccess || cudaMalloc((void **)&g->cx.xq, g->cx.xq_cap) != cudaSuccess ||
             cudaMalloc((void **)&g->cx.xd, sizeof(float2) * (g->cx.xq_cap / 32)) != cudaSuccess))
            rc = -1;
    }
    if (kv) g->inv_freq = (double *)dalloc(g, sizeof(double) * (size_t)c->n_rot, &rc);
    g->qpred_for[0] = g->qpred_for[1] = -1;
    for (int il = 0; kv && ws && il < c->n_layer; il++)
        if (g->kv[il].off && !g->qpred) g->qpred = (float *)dalloc(g, 2 * 4 * (size_t)c->n_head * c->head_dim_k, &rc);
    if (rc) {
        tl_fail(err, "--device cuda: out of GPU memory allocating activations for chunk %d", chunk);
        tl_cuda_session_free(g);
        return NULL;
    }
    /* RoPE inverse frequencies: the model's rule (tl_model_rope_freqs), as the CPU session */
    cudaError_t e = cudaSuccess;
    if (kv) {
        const int half = c->n_rot / 2;
        double *f = (double *)tl_xmalloc(sizeof(double) * 2 * half);
        for (int b = 0; b < 2; b++) tl_model_rope_freqs(m, n_ctx, b == 1, f + b * half);
        e = cudaMemcpy(g->inv_freq, f, sizeof(double) * 2 * half, cudaMemcpyHostToDevice);
        free(f);
    }
    /* The weights, the RoPE table and the KV stores' cudaMemset went through the legacy
     * stream: cudaMemcpy from pageable memory may return before its DMA lands and cudaMemset
     * is asynchronous, while the session's stream is non-blocking (not ordered after the
     * legacy stream). Without this the first evaluation may read them in flight: a
     * candidate cause of the first-model-only 0.12 logit error test_cuda once showed on an
     * H200 (issue 17). */
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        tl_fail(err, "--device cuda: %s", cudaGetErrorString(e));
        tl_cuda_session_free(g);
        return NULL;
    }
    return g;
}

/* The predicted-query buffer of layer il (halves alternate by layer parity). */
static float *qpred_of(tl_cuda_session *g, int il) {
    return g->qpred + (size_t)(il & 1) * g->m->cfg.n_head * g->m->cfg.head_dim_k;
}

/* One chunk of n tokens (already on the device in g->tok). */
static int forward_chunk(tl_cuda_session *g, int n, float *logits, bool all_logits, tl_error *err) {
    const tl_config *c = &g->m->cfg;
    const tlc_weights *w = g->w;
    cudaStream_t st = g->cx.stream;
    const int E = c->n_embd, Hq = c->n_head, Hkv = c->n_head_kv;
    if (g->prof) g->prof->active = n == 1;
    prof_mark(g, PF_EMBED);
    if (tlc_embed(g, n, err) || tlc_rope_table(g, g->inv_freq, g->n_past, n, g->rope, err)) return -1;
    const int neox = c->rope_style == TL_ROPE_NEOX;
    for (int il = 0; il < c->n_layer; il++) {
        const dlayer *L = &w->L[il];
        tlc_layer_kv *KV = &g->kv[il];
        const int base = c->layer_swa[il] ? 1 : 0;
        prof_mark(g, PF_QKV);
        {
            const dmat *Ws[3] = {&L->wq, &L->wk, &L->wv};
            float *ys[3] = {g->q, g->k, g->v};
            const float *bs[3] = {L->bq, L->bk, L->bv};
            if (norm_linear(g, g->x, L->attn_norm, n, 3, Ws, ys, bs, 0, err)) return -1;
        }
        prof_mark(g, PF_ROPE);
        if (L->q_norm && tlc_rmsnorm(g, g->q, L->q_norm, g->q, n * Hq, c->head_dim_k, 0, err)) return -1;
        if (L->k_norm && tlc_rmsnorm(g, g->k, L->k_norm, g->k, n * Hkv, c->head_dim_k, 0, err)) return -1;
        if (tlc_rope(g, g->q, Hq, g->k, Hkv, n, base, g->rope, err)) return -1;
        /* TailorKV: the next layer's query predicted from this layer's normed input (as
         * session.c), with that layer's Wq (+bias, q-norm, RoPE); decode only */
        if (n == 1 && il + 1 < c->n_layer && g->kv[il + 1].off) {
            const dlayer *L1 = &w->L[il + 1];
            float *qp = qpred_of(g, il + 1);
            if (linear1(g, &L1->wq, g->xn, 1, qp, L1->bq, 0, err)) return -1;
            if (L1->q_norm && tlc_rmsnorm(g, qp, L1->q_norm, qp, Hq, c->head_dim_k, 0, err)) return -1;
            rope_k<<<1, 128, 0, st>>>(qp, Hq, NULL, 0, c->head_dim_k, c->n_rot, neox, c->layer_swa[il + 1] ? 1 : 0, g->rope);
            TLC_LAUNCH_CHECK("rope q (prediction)");
            g->qpred_for[(il + 1) & 1] = il + 1;
            /* summary 0: layer il+1's channel rows cross PCIe while this layer attends and runs its FFN */
            if (tlc_off_prefetch(&g->cx, g->kv[il + 1].off, qp, err)) return tl_fail_prefix(err, "layer %d", il + 1);
        }
        prof_mark(g, PF_ATTN);
        if (KV->off) {
            const int rc = n > 1 ? tlc_off_prefill(&g->cx, KV->off, n, g->q, g->k, g->v, g->attn, err)
                                 : tlc_off_decode(&g->cx, KV->off, g->q, qpred_of(g, il), g->qpred_for[il & 1] == il, g->k, g->v,
                                                  g->attn, err);
            if (g->qpred_for[il & 1] == il) g->qpred_for[il & 1] = -1;
            if (rc) return tl_fail_prefix(err, "layer %d", il);
        } else {
            if (tlc_attention(&g->cx, KV, g->n_past, n, g->q, g->k, g->v, g->attn, err)) return tl_fail_prefix(err, "layer %d", il);
            prof_mark(g, PF_APPEND);
            if (tlc_kv_append(&g->cx, KV, g->n_past, n, g->k, g->v, err)) return tl_fail_prefix(err, "layer %d", il);
        }
        prof_mark(g, PF_WO);
        if (L->attn_post_norm) {
            if (linear1(g, &L->wo, g->attn, n, g->tmp, NULL, 0, err) || tlc_rmsnorm(g, g->tmp, L->attn_post_norm, g->x, n, E, 1, err))
                return -1;
        } else if (linear1(g, &L->wo, g->attn, n, g->x, NULL, 1, err)) {
            return -1;
        }
        prof_mark(g, PF_GATEUP);
        {
            const dmat *Ws[2] = {&L->gate, &L->up};
            float *ys[2] = {g->gate, g->up};
            if (norm_linear(g, g->x, L->ffn_norm, n, 2, Ws, ys, NULL, c->gelu_ffn ? 2 : 1, err)) return -1;
        }
        prof_mark(g, PF_DOWN);
        if (L->ffn_post_norm) {
            if (linear1(g, &L->down, g->gate, n, g->tmp, NULL, 0, err) || tlc_rmsnorm(g, g->tmp, L->ffn_post_norm, g->x, n, E, 1, err))
                return -1;
        } else if (linear1(g, &L->down, g->gate, n, g->x, NULL, 1, err)) {
            return -1;
        }
    }
    prof_mark(g, PF_LOGITS);
    if (logits) {
        const int first = all_logits ? 0 : n - 1, rows = n - first, V = c->n_vocab;
        if (tlc_rmsnorm(g, g->x + (size_t)first * E, w->output_norm, g->xn, rows, E, 0, err)) return -1;
        float *dl = g->logits;
        if (rows > 1) {
            if (g->all_logits_rows < (size_t)rows) {
                cudaStreamSynchronize(st);
                cudaFree(g->all_logits);
                g->all_logits = NULL;
                g->all_logits_rows = 0;
                CK(cudaMalloc((void **)&g->all_logits, sizeof(float) * (size_t)rows * V));
                g->all_logits_rows = rows;
            }
            dl = g->all_logits;
        }
        if (linear1(g, &w->output, g->xn, rows, dl, NULL, 0, err)) return -1;
        CK(cudaMemcpyAsync(logits, dl, sizeof(float) * (size_t)rows * V, cudaMemcpyDeviceToHost, st));
    }
    prof_mark(g, PF_N); /* end of the step */
    g->n_past += n;
    return 0;
}

/* A batch's sequence has no workspace of its own. */
static int whole(const tl_cuda_session *g, const char *what, tl_error *err) {
    if (g->parts == (TLC_PART_KV | TLC_PART_WS)) return 0;
    return tl_fail(err, "%s: this GPU session holds only a batched sequence's KV caches; the batch's step evaluates it "
                        "(tl_batch_eval)", what);
}

extern "C" int tl_cuda_eval(tl_cuda_session *g, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err) {
    const tl_config *c = &g->m->cfg;
    const int V = c->n_vocab;
    if (whole(g, "eval", err)) return -1;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return tl_fail(err, "token id %d at position %d is outside the vocabulary (0..%d)", tokens[i], g->n_past + i, V - 1);
    if (g->n_past + n > g->n_ctx)
        return tl_fail(err, "context overflow: %d tokens held + %d new exceed the context size %d (raise -c)", g->n_past, n, g->n_ctx);
    for (int i = 0; i < n; i += g->chunk) {
        const int nc = TL_MIN(g->chunk, n - i);
        const bool last = i + nc == n;
        float *out = NULL;
        if (all_logits && logits) out = logits + (size_t)i * V;
        else if (last && logits) out = logits;
        CK(cudaMemcpyAsync(g->tok, tokens + i, sizeof(int32_t) * nc, cudaMemcpyHostToDevice, g->cx.stream));
        if (forward_chunk(g, nc, out, all_logits, err)) return -1;
        /* the token upload and logits download use pageable host memory: keep each chunk's
         * buffers alive until the device is done with them */
        CK(cudaStreamSynchronize(g->cx.stream));
        prof_collect(g);
    }
    return 0;
}

extern "C" void tl_cuda_reset(tl_cuda_session *g) {
    g->n_past = 0;
    g->qpred_for[0] = g->qpred_for[1] = -1;
    for (int il = 0; g->kv && il < g->m->cfg.n_layer; il++) { /* a batch's workspace has none */
        g->kv[il].k.nq = g->kv[il].v.nq = 0;
        if (g->kv[il].off) tlc_off_reset(&g->cx, g->kv[il].off);
    }
    /* the resets are on this session's stream; a batch evaluates the session on its own */
    cudaStreamSynchronize(g->cx.stream);
}

extern "C" int tl_cuda_n_past(const tl_cuda_session *g) { return g->n_past; }

extern "C" int tl_cuda_fill_random(tl_cuda_session *g, int n, uint64_t seed, tl_error *err) {
    const tl_config *c = &g->m->cfg;
    if (whole(g, "fill", err)) return -1;
    if (g->n_past + n > g->n_ctx) return tl_fail(err, "fill: %d + %d tokens exceed the context size %d", g->n_past, n, g->n_ctx);
    const size_t kd = (size_t)c->n_head_kv * c->head_dim_k, vd = (size_t)c->n_head_kv * c->head_dim_v;
    for (int i = 0; i < n; i += g->chunk) {
        const int nc = TL_MIN(g->chunk, n - i);
        for (int il = 0; il < c->n_layer; il++) {
            random_k<<<grid1(nc * kd, 256), 256, 0, g->cx.stream>>>(g->k, nc * kd, seed + 2 * il, (size_t)(g->n_past) * kd);
            random_k<<<grid1(nc * vd, 256), 256, 0, g->cx.stream>>>(g->v, nc * vd, seed + 2 * il + 1, (size_t)(g->n_past) * vd);
            TLC_LAUNCH_CHECK("random fill");
            const int rc = g->kv[il].off ? tlc_off_append_prompt(&g->cx, g->kv[il].off, nc, g->k, g->v, err)
                                         : tlc_kv_append(&g->cx, &g->kv[il], g->n_past, nc, g->k, g->v, err);
            if (rc) return tl_fail_prefix(err, "layer %d", il);
        }
        g->n_past += nc;
    }
    CK(cudaStreamSynchronize(g->cx.stream));
    return 0;
}

extern "C" void tl_cuda_memory(const tl_cuda_session *g, tl_device_mem *out) {
    memset(out, 0, sizeof *out);
    const tl_config *c = &g->m->cfg;
    out->weights = g->w->bytes;
    out->weights_read = g->w->read_bytes;
    out->kv_alloc = g->kv_alloc;
    out->activations = g->act_bytes + g->cx.scratch_bytes + g->all_logits_rows * (size_t)c->n_vocab * 4;
    out->workspace = g->ws_bytes;
    for (int il = 0; g->kv && il < c->n_layer; il++) {
        tl_kv_shape sh;
        tl_kv_layer_policy eff;
        tl_plan_layer_kv(c, g->n_ctx, il, &g->pol[il], &sh, &eff);
        tl_kv_bytes b;
        tl_error e;
        int frc;
        if (g->kv[il].off) {
            tlc_off_info inf;
            tlc_off_info_of(g->kv[il].off, &inf);
            frc = tl_kv_offload_bytes_formula2(&g->pol[il], &sh, inf.n_host, inf.n_gen, &b, &e);
            out->n_offload++;
            out->host_alloc += inf.host;
            out->h2d_decode += inf.h2d_decode;
            out->h2d_chan += inf.h2d_chan;
            out->h2d_prefill += inf.h2d_prefill;
            out->d2h += inf.d2h;
            out->decode_steps = TL_MAX(out->decode_steps, inf.steps);
        } else {
            frc = tl_kv_layer_bytes_formula(&g->pol[il], &sh, g->n_past, &b, &e);
        }
        if (frc == 0) {
            out->kv_held.codes += b.codes;
            out->kv_held.scales += b.scales;
            out->kv_held.residual += b.residual;
            out->kv_held.other += b.other;
            out->kv_held.host += b.host;
        }
    }
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) == cudaSuccess) {
        out->dev_free = fr;
        out->dev_total = tot;
    }
    memcpy(out->device, g->dev_name, sizeof out->device);
}

/* ---------------- one layer alone (tests) ---------------- */

extern "C" int tl_cuda_layer_attend(const tl_kv_layer_policy *p, const tl_kv_shape *s, int n_hist, int chunk, const float *kh,
                                    const float *vh, int m, const float *q, const float *k, const float *v, float *out, int mode,
                                    tl_error *err) {
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) return tl_fail(err, "%s", why);
    if (chunk <= 0 || m <= 0) return tl_fail(err, "tl_cuda_layer_attend: chunk %d, m %d", chunk, m);
    if (s->softcap > 0) return tl_fail(err, "tl_cuda_layer_attend: soft-capped scores have no GPU implementation");
    tl_cuda_session *g = (tl_cuda_session *)tl_xcalloc(1, sizeof *g);
    tlc_layer_kv L;
    memset(&L, 0, sizeof L);
    float *dq = NULL, *dk = NULL, *dv = NULL, *dout = NULL;
    int rc = -1;
    /* capacity rounded up to 8 tokens, like a session with a round n_ctx: every per-token
     * parameter layout then starts its heads 16-byte aligned, as the tensor-core kernel needs */
    const int n_ctx = (n_hist + m + 7) / 8 * 8, Hq = s->n_head, Hkv = s->n_head_kv, dkd = s->head_dim_k, dvd = s->head_dim_v;
    const int rows = TL_MAX(chunk, m);
    const size_t kdim = (size_t)Hkv * dkd, vdim = (size_t)Hkv * dvd;
    cudaDeviceProp prop;
    if (cudaSetDevice(0) != cudaSuccess || cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaStreamCreateWithFlags(&g->cx.stream, cudaStreamNonBlocking) != cudaSuccess) {
        tl_fail(err, "tl_cuda_layer_attend: device 0: %s", cudaGetErrorString(cudaGetLastError()));
        goto done;
    }
    g->cx.n_sm = prop.multiProcessorCount;
    g->cx.smem_optin = prop.sharedMemPerBlockOptin;
    g->cx.old_decode = g->cx.no_tc = mode == 1; /* mode 1: the general kernel only */
    g->cx.dec_tc_from = mode == 2 ? 1 : 0; /* mode 2: decode on tensor cores (quantized sides too) */
    g->cx.dec_tc_quant = mode == 2;
    g->cx.no_dec_mma = mode == 3; /* mode 3: as 0, per-token codes on decode.cu's CUDA-core path */
    L.n_head = Hq;
    L.n_head_kv = Hkv;
    L.window = s->window;
    L.scale = s->scale;
    {
        const int cap = s->window > 0 ? TL_MIN(s->window, n_ctx) : n_ctx;
        if (side_setup(g, &L.k, &p->k, p->kind, dkd, p->residual, cap, Hkv, "K", err) ||
            side_setup(g, &L.v, &p->v, p->kind, dvd, p->residual, cap, Hkv, "V", err))
            goto done;
    }
    if (cudaMalloc((void **)&dq, sizeof(float) * (size_t)m * Hq * dkd) != cudaSuccess ||
        cudaMalloc((void **)&dk, sizeof(float) * (size_t)rows * kdim) != cudaSuccess ||
        cudaMalloc((void **)&dv, sizeof(float) * (size_t)rows * vdim) != cudaSuccess ||
        cudaMalloc((void **)&dout, sizeof(float) * (size_t)m * Hq * dvd) != cudaSuccess) {
        tl_fail(err, "tl_cuda_layer_attend: out of GPU memory");
        goto done;
    }
    for (int i = 0; i < n_hist; i += chunk) {
        const int nc = TL_MIN(chunk, n_hist - i);
        /* uploads on the session's stream: a plain cudaMemcpy from pageable memory may return
         * before its DMA lands, and the non-blocking stream would not wait for it */
        if (cudaMemcpyAsync(dk, kh + (size_t)i * kdim, sizeof(float) * nc * kdim, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess ||
            cudaMemcpyAsync(dv, vh + (size_t)i * vdim, sizeof(float) * nc * vdim, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess) {
            tl_fail(err, "tl_cuda_layer_attend: upload");
            goto done;
        }
        if (tlc_kv_append(&g->cx, &L, i, nc, dk, dv, err)) goto done;
        if (cudaStreamSynchronize(g->cx.stream) != cudaSuccess) {
            tl_fail(err, "tl_cuda_layer_attend: append: %s", cudaGetErrorString(cudaGetLastError()));
            goto done;
        }
    }
    if (cudaMemcpyAsync(dq, q, sizeof(float) * (size_t)m * Hq * dkd, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess ||
        cudaMemcpyAsync(dk, k, sizeof(float) * (size_t)m * kdim, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess ||
        cudaMemcpyAsync(dv, v, sizeof(float) * (size_t)m * vdim, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess) {
        tl_fail(err, "tl_cuda_layer_attend: upload");
        goto done;
    }
    if (tlc_attention(&g->cx, &L, n_hist, m, dq, dk, dv, dout, err)) goto done;
    {
        cudaError_t e = cudaStreamSynchronize(g->cx.stream);
        if (e == cudaSuccess) e = cudaMemcpyAsync(out, dout, sizeof(float) * (size_t)m * Hq * dvd, cudaMemcpyDeviceToHost, g->cx.stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(g->cx.stream);
        if (e != cudaSuccess) {
            tl_fail(err, "tl_cuda_layer_attend: attention: %s", cudaGetErrorString(e));
            goto done;
        }
    }
    rc = 0;
done:
    if (g->cx.stream) cudaStreamSynchronize(g->cx.stream);
    kv_side *sides[2] = {&L.k, &L.v};
    for (int i = 0; i < 2; i++) {
        cudaFree(sides[i]->codes);
        cudaFree(sides[i]->params);
        cudaFree(sides[i]->fp);
    }
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(g->cx.scratch);
    if (g->cx.stream) cudaStreamDestroy(g->cx.stream);
    free(g);
    return rc;
}

/* ---------------- memory plan (--gpu-mem-budget) ---------------- */

/* Bytes side_setup allocates for one side (0 with err when it would refuse). */
static int side_bytes(const tl_kv_side *p, tl_kv_kind kind, int d, int residual, int cap, int n_kv, uint64_t *out,
                      tl_error *err) {
    if (kind != TL_KV_QUANT || p->bits == 16) {
        *out = (uint64_t)cap * d * n_kv * (kind == TL_KV_F32 ? 4 : 2);
        return 0;
    }
    const uint64_t ub = 4 * (uint64_t)p->bits;
    if (d % 32) return tl_fail(err, "head_dim %d is not a multiple of 32", d);
    if (p->gran == TL_KV_GRAN_TOKEN) {
        const int g = p->group == 0 ? d : p->group;
        const uint64_t row = (uint64_t)(d / 32) * ub, ps = (uint64_t)(d / g) * (p->quantizer == TL_KV_SYM ? 1 : 2);
        *out = ((uint64_t)cap * row + (uint64_t)cap * ps * 2 + (uint64_t)residual * d * 2) * n_kv;
    } else if (p->gran == TL_KV_GRAN_CHANNEL) {
        const int g = p->group, base = TL_MAX(residual, g), R = (base + g - 1) / g * g;
        const uint64_t ngrp = ((uint64_t)cap + g - 1) / g, ppg = p->quantizer == TL_KV_SYM ? 1 : 2;
        *out = (ngrp * (uint64_t)d * (g / 32) * ub + ngrp * (uint64_t)d * ppg * 2 + (uint64_t)R * d * 2) * n_kv;
    } else {
        return tl_fail(err, "per-block and per-tensor granularity have no GPU implementation");
    }
    return 0;
}

uint64_t tlc_plan_weights(const tl_model *m, bool widen) {
    /* as upload_weights stores them (block formats with kernels as they are unless widen,
     * other non-float types widened to f16) */
    const tl_config *c = &m->cfg;
    uint64_t w = mat_bytes(&m->w.tok_embd, widen) + (uint64_t)c->n_embd * 4;
    if (!m->w.tied_output) w += mat_bytes(&m->w.output, widen);
    const uint64_t qdim = (uint64_t)c->n_head * c->head_dim_k, kdim = (uint64_t)c->n_head_kv * c->head_dim_k,
                   vdim = (uint64_t)c->n_head_kv * c->head_dim_v;
    for (int il = 0; il < c->n_layer; il++) {
        const tl_layer_weights *S = &m->w.layers[il];
        const tl_mat *mats[] = {&S->wq, &S->wk, &S->wv, &S->wo, &S->w_gate, &S->w_up, &S->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++) w += mat_bytes(mats[i], widen);
        w += (uint64_t)c->n_embd * 4 * (2 + (S->attn_post_norm ? 1 : 0) + (S->ffn_post_norm ? 1 : 0));
        w += (uint64_t)c->head_dim_k * 4 * ((S->q_norm ? 1 : 0) + (S->k_norm ? 1 : 0));
        w += 4 * ((S->bq ? qdim : 0) + (S->bk ? kdim : 0) + (S->bv ? vdim : 0));
    }
    return w;
}

int tlc_plan_kv(const tl_model *m, int n_ctx, const tl_kv_layer_policy *policies, int gen_cap, uint64_t *dev, uint64_t *host,
                uint64_t *crow, uint64_t *pstage, bool *any_off, tl_error *err) {
    const tl_config *c = &m->cfg;
    *dev = *host = *crow = *pstage = 0;
    *any_off = false;
    for (int il = 0; il < c->n_layer; il++) {
        tl_kv_shape sh;
        tl_kv_layer_policy p;
        tl_plan_layer_kv(c, n_ctx, il, policies ? &policies[il] : NULL, &sh, &p);
        if (p.kind == TL_KV_OFFLOAD) {
            tlc_off_sizes z;
            if (tlc_off_sizes_of(&p.off, c->n_head, c->n_head_kv, c->head_dim_k, c->head_dim_v, n_ctx, gen_cap, &z, err))
                return tl_fail_prefix(err, "layer %d", il);
            *dev += z.dev;
            *host += z.host;
            *crow = TL_MAX(*crow, z.crow);       /* two are allocated, shared by the layers */
            *pstage = TL_MAX(*pstage, z.pstage); /* one, shared */
            *any_off = true;
            continue;
        }
        const int cap = sh.window > 0 ? TL_MIN(sh.window, n_ctx) : n_ctx;
        /* auto:B, not resolved yet: the larger of the layouts the GPU can be given */
        tl_kv_layer_policy cand[TL_KV_AUTO_MAX_CANDIDATES];
        const int nc = p.kind == TL_KV_AUTO ? tl_kv_auto_candidates(&p, true, cand) : 1;
        if (p.kind != TL_KV_AUTO) cand[0] = p;
        uint64_t most = 0;
        for (int i = 0; i < nc; i++) {
            uint64_t bk = 0, bv = 0;
            if (side_bytes(&cand[i].k, cand[i].kind, c->head_dim_k, cand[i].residual, cap, c->n_head_kv, &bk, err) ||
                side_bytes(&cand[i].v, cand[i].kind, c->head_dim_v, cand[i].residual, cap, c->n_head_kv, &bv, err))
                return tl_fail_prefix(err, "layer %d", il);
            most = TL_MAX(most, bk + bv);
        }
        *dev += most;
    }
    return 0;
}

uint64_t tlc_plan_rows(const tl_config *c, int rows) {
    const uint64_t E = c->n_embd, C = (uint64_t)rows, od = (uint64_t)c->n_head * c->head_dim_v;
    const uint64_t qdim = (uint64_t)c->n_head * c->head_dim_k, kdim = (uint64_t)c->n_head_kv * c->head_dim_k,
                   vdim = (uint64_t)c->n_head_kv * c->head_dim_v;
    const uint64_t max_in = TL_MAX(E, TL_MAX(od, (uint64_t)c->n_ff));
    return 4 * C * (3 * E + qdim + kdim + vdim + od + 2 * (uint64_t)c->n_ff + 2 * (uint64_t)c->n_rot) + 4 * (uint64_t)c->n_vocab +
           2 * C * max_in + 4 * C;
}

uint64_t tlc_plan_ws(const tl_model *m, bool widen) {
    size_t wdq;
    int xq_cap;
    return ws_bytes_of(m, widen, &wdq, &xq_cap);
}

extern "C" int tl_cuda_plan_memory(const tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                                   const tl_cuda_opts *o, tl_device_plan *out, tl_error *err) {
    o = tlc_opts(o);
    memset(out, 0, sizeof *out);
    const tl_config *c = &m->cfg;
    n_ctx = tl_plan_n_ctx(c, n_ctx);
    chunk = tl_plan_chunk(n_ctx, chunk);
    out->weights = tlc_plan_weights(m, o->widen);
    uint64_t crow, pstage;
    bool any_off;
    if (tlc_plan_kv(m, n_ctx, policies, o->gen_cap, &out->kv_device, &out->kv_host, &crow, &pstage, &any_off, err))
        return -1;
    const uint64_t qdim = (uint64_t)c->n_head * c->head_dim_k;
    out->activations = tlc_plan_rows(c, chunk) + 8 * (uint64_t)c->n_rot + (any_off ? 2 * 4 * qdim : 0) + 2 * crow + pstage +
                       TLC_PLAN_PARTIALS; /* + attention partials (grown on demand) */
    out->workspace = tlc_plan_ws(m, o->widen);
    out->reserve = TLC_PLAN_RESERVE; /* CUDA context, module images, cuBLAS workspace */
    out->total = out->weights + out->workspace + out->kv_device + out->activations + out->reserve;
    return 0;
}

static double gib(uint64_t b) { return (double)b / 1073741824.0; }

int tlc_check_plan(const tl_device_plan *p, uint64_t budget, const char *name, const char *what, int rows, tl_error *err) {
    if (p->total <= budget) return 0;
    const uint64_t fixed = p->weights + p->workspace + p->activations + p->reserve;
    char part[200];
    if (p->weights > budget)
        snprintf(part, sizeof part, "the weights alone (%.2f GiB) do not fit", gib(p->weights));
    else if (fixed > budget)
        snprintf(part, sizeof part, "weights + workspace + activations for %d rows + runtime reserve (%.2f GiB) do not fit",
                 rows, gib(fixed));
    else
        snprintf(part, sizeof part, "the KV device tier (%.2f GiB for %s) does not fit in the %.2f GiB left", gib(p->kv_device),
                 what, gib(budget - fixed));
    return tl_fail(err,
                   "%s %.2f GiB: %s; over by %.2f GiB (plan: weights %.2f + block-format workspace %.2f + "
                   "KV device tier %.2f + activations %.2f + CUDA/cuBLAS reserve %.2f = %.2f GiB; KV host tier %.2f GiB)",
                   name, gib(budget), part, gib(p->total - budget), gib(p->weights), gib(p->workspace), gib(p->kv_device),
                   gib(p->activations), gib(p->reserve), gib(p->total), gib(p->kv_host));
}

extern "C" int tl_cuda_check_budget(const tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                                    const tl_cuda_opts *o, uint64_t budget, tl_error *err) {
    tl_device_plan p;
    if (tl_cuda_plan_memory(m, n_ctx, chunk, policies, o, &p, err)) return tl_fail_prefix(err, "--gpu-mem-budget");
    n_ctx = tl_plan_n_ctx(&m->cfg, n_ctx);
    chunk = tl_plan_chunk(n_ctx, chunk);
    char what[64];
    snprintf(what, sizeof what, "%d tokens", n_ctx);
    return tlc_check_plan(&p, budget, "--gpu-mem-budget", what, chunk, err);
}

/* ---------------- one TailorKV layer alone (tests) ---------------- */

extern "C" int tl_cuda_offload_layer_test(const tl_kv_layer_policy *p, const tl_kv_shape *s, int n_hist, int chunk,
                                          const float *qh, const float *kh, const float *vh, float *outh, int n_dec,
                                          const float *q, const float *qpred, const float *k, const float *v, float *out,
                                          int *sel, int *nsel, tl_error *err) {
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) return tl_fail(err, "%s", why);
    if (p->kind != TL_KV_OFFLOAD || chunk < 2) return tl_fail(err, "tl_cuda_offload_layer_test: offload policy, chunk >= 2");
    if (s->softcap > 0) return tl_fail(err, "tl_cuda_offload_layer_test: soft-capped scores have no GPU implementation");
    tlc_ctx cx;
    memset(&cx, 0, sizeof cx);
    tlc_off *o = NULL;
    float *dq = NULL, *dqp = NULL, *dk = NULL, *dv = NULL, *dout = NULL;
    int rc = -1;
    const int Hq = s->n_head, Hkv = s->n_head_kv, dkd = s->head_dim_k, dvd = s->head_dim_v;
    const size_t qdim = (size_t)Hq * dkd, kdim = (size_t)Hkv * dkd, vdim = (size_t)Hkv * dvd, odim = (size_t)Hq * dvd;
    const int n_ctx = n_hist + n_dec;
    cudaDeviceProp prop;
    if (cudaSetDevice(0) != cudaSuccess || cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaStreamCreateWithFlags(&cx.stream, cudaStreamNonBlocking) != cudaSuccess)
        return tl_fail(err, "tl_cuda_offload_layer_test: device 0: %s", cudaGetErrorString(cudaGetLastError()));
    cx.n_sm = prop.multiProcessorCount;
    cx.smem_optin = prop.sharedMemPerBlockOptin;
    uint64_t grown;
    if (tlc_off_new(&o, &p->off, Hq, Hkv, dkd, dvd, n_ctx, 0, s->scale, err) || tlc_off_reserve(&cx, o, &grown, err)) goto done;
    if (cudaMalloc((void **)&dq, sizeof(float) * chunk * qdim) != cudaSuccess ||
        cudaMalloc((void **)&dqp, sizeof(float) * qdim) != cudaSuccess ||
        cudaMalloc((void **)&dk, sizeof(float) * chunk * kdim) != cudaSuccess ||
        cudaMalloc((void **)&dv, sizeof(float) * chunk * vdim) != cudaSuccess ||
        cudaMalloc((void **)&dout, sizeof(float) * chunk * odim) != cudaSuccess) {
        tl_fail(err, "tl_cuda_offload_layer_test: out of GPU memory");
        goto done;
    }
#define UP(dst, src, n) (cudaMemcpyAsync(dst, src, sizeof(float) * (n), cudaMemcpyHostToDevice, cx.stream) != cudaSuccess)
    for (int i = 0; i < n_hist; i += chunk) {
        const int nc = TL_MIN(chunk, n_hist - i);
        if (nc < 2) {
            tl_fail(err, "tl_cuda_offload_layer_test: a 1-token prefill chunk would be a generated token");
            goto done;
        }
        if (UP(dq, qh + i * qdim, nc * qdim) || UP(dk, kh + i * kdim, nc * kdim) || UP(dv, vh + i * vdim, nc * vdim)) {
            tl_fail(err, "upload");
            goto done;
        }
        if (tlc_off_prefill(&cx, o, nc, dq, dk, dv, dout, err)) goto done;
        if (cudaMemcpyAsync(outh + i * odim, dout, sizeof(float) * nc * odim, cudaMemcpyDeviceToHost, cx.stream) != cudaSuccess ||
            cudaStreamSynchronize(cx.stream) != cudaSuccess) {
            tl_fail(err, "prefill: %s", cudaGetErrorString(cudaGetLastError()));
            goto done;
        }
    }
    for (int j = 0; j < n_dec; j++) {
        if (UP(dq, q + j * qdim, qdim) || UP(dk, k + j * kdim, kdim) || UP(dv, v + j * vdim, vdim) ||
            (qpred && UP(dqp, qpred + j * qdim, qdim))) {
            tl_fail(err, "upload");
            goto done;
        }
        /* with a prediction, the channel rows (summary 0) come by the side-stream prefetch, as in a model */
        if (qpred && tlc_off_prefetch(&cx, o, dqp, err)) goto done;
        if (tlc_off_decode(&cx, o, dq, dqp, qpred != NULL, dk, dv, dout, err)) goto done;
        if (cudaMemcpyAsync(out + j * odim, dout, sizeof(float) * odim, cudaMemcpyDeviceToHost, cx.stream) != cudaSuccess ||
            cudaStreamSynchronize(cx.stream) != cudaSuccess) {
            tl_fail(err, "decode: %s", cudaGetErrorString(cudaGetLastError()));
            goto done;
        }
        int ms;
        if (tlc_off_last_selection(&cx, o, sel + (size_t)j * Hkv * TL_MAX(1, p->off.topk), nsel + (size_t)j * Hkv, &ms, err))
            goto done;
    }
#undef UP
    rc = 0;
done:
    if (cx.stream) cudaStreamSynchronize(cx.stream);
    tlc_off_free(o);
    cudaFree(dq);
    cudaFree(dqp);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(cx.scratch);
    tlc_crow_free(&cx);
    if (cx.stream) cudaStreamDestroy(cx.stream);
    return rc;
}

/* ---------------- block-format products alone (tests) ---------------- */

extern "C" int tl_cuda_qmatmul_test(int t, const void *W, int n_in, int n_out, const float *X, int m, int slab_rows,
                                    float *y_fast, float *y_ref, float *y_pre, tl_error *err) {
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) return tl_fail(err, "%s", why);
    if (!tlc_qtype_has_kernels(t)) return tl_fail(err, "tl_cuda_qmatmul_test: %s has no GPU kernels", tl_type_name(t));
    const size_t rb = tl_row_size((tl_type)t, n_in);
    if (!rb || m < 1 || n_out < 1 || slab_rows < 1)
        return tl_fail(err, "tl_cuda_qmatmul_test: %s with %d columns, %d rows, m %d, slab %d", tl_type_name(t), n_in, n_out, m,
                       slab_rows);
    tlc_ctx cx;
    memset(&cx, 0, sizeof cx);
    cublasHandle_t blas = NULL;
    void *dW = NULL;
    float *dX = NULL, *dY = NULL;
    uint16_t *dXh = NULL, *wdq = NULL;
    const size_t ny = (size_t)m * n_out, nx = (size_t)m * n_in;
    int rc = -1;
    if (cudaSetDevice(0) != cudaSuccess || cudaStreamCreateWithFlags(&cx.stream, cudaStreamNonBlocking) != cudaSuccess)
        return tl_fail(err, "tl_cuda_qmatmul_test: device 0: %s", cudaGetErrorString(cudaGetLastError()));
    cx.xq_cap = n_in;
    if (cudaMalloc(&dW, rb * n_out) != cudaSuccess || cudaMalloc((void **)&dX, sizeof(float) * nx) != cudaSuccess ||
        cudaMalloc((void **)&dY, sizeof(float) * ny) != cudaSuccess || cudaMalloc((void **)&dXh, 2 * nx) != cudaSuccess ||
        cudaMalloc((void **)&wdq, 2 * (size_t)slab_rows * n_in) != cudaSuccess ||
        cudaMalloc((void **)&cx.xq, n_in) != cudaSuccess || cudaMalloc((void **)&cx.xd, sizeof(float2) * (n_in / 32)) != cudaSuccess) {
        tl_fail(err, "tl_cuda_qmatmul_test: out of GPU memory");
        goto done;
    }
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(blas, cx.stream) != CUBLAS_STATUS_SUCCESS) {
        tl_fail(err, "tl_cuda_qmatmul_test: cublasCreate failed");
        goto done;
    }
    if (cudaMemcpyAsync(dW, W, rb * n_out, cudaMemcpyHostToDevice, cx.stream) != cudaSuccess ||
        cudaMemcpyAsync(dX, X, sizeof(float) * nx, cudaMemcpyHostToDevice, cx.stream) != cudaSuccess) {
        tl_fail(err, "tl_cuda_qmatmul_test: upload");
        goto done;
    }
    for (int path = 0; path < 3; path++) {
        float *out = path == 0 ? y_fast : path == 1 ? y_ref : y_pre;
        if (!out) continue;
        cudaMemsetAsync(dY, 0xff, sizeof(float) * ny, cx.stream); /* NaN: every output must be written */
        for (int r = 0; r < m && path < 2; r++) {
            if (path == 1) {
                if (tlc_qmatvec_ref(&cx, t, dW, n_in, n_out, dX + (size_t)r * n_in, dY + (size_t)r * n_out, err)) goto done;
                continue;
            }
            tlc_mv a;
            memset(&a, 0, sizeof a);
            a.W[0] = dW;
            a.y[0] = dY + (size_t)r * n_out;
            a.n_out[0] = n_out;
            a.nseg = 1;
            a.n_in = n_in;
            a.wt = WT_Q;
            a.qt = t;
            a.x = dX + (size_t)r * n_in;
            if (tlc_matvec(&cx, &a, err)) goto done;
        }
        if (path == 2) {
            to16_k<WT_F16><<<grid1(nx, 256), 256, 0, cx.stream>>>(dX, dXh, nx);
            const dmat M = {dW, WT_Q, t, n_in, n_out};
            if (qgemm(&cx, blas, &M, dXh, m, dY, false, wdq, (size_t)slab_rows * n_in, err)) goto done;
        }
        cudaError_t e = cudaMemcpyAsync(out, dY, sizeof(float) * ny, cudaMemcpyDeviceToHost, cx.stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(cx.stream);
        if (e != cudaSuccess) {
            tl_fail(err, "tl_cuda_qmatmul_test: %s path %d: %s", tl_type_name(t), path, cudaGetErrorString(e));
            goto done;
        }
    }
    rc = 0;
done:
    cudaStreamSynchronize(cx.stream);
    if (blas) cublasDestroy(blas);
    void *bufs[] = {dW, dX, dY, dXh, wdq, cx.xq, cx.xd};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) cudaFree(bufs[i]);
    cudaStreamDestroy(cx.stream);
    return rc;
}
