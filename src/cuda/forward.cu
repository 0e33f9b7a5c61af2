/* forward.cu: the CUDA forward pass (llama / mistral / qwen2 / gemma3), the same math as
 * engine/session.c, step for step:
 *   embed (gemma: * sqrt(E)); per layer: rmsnorm -> q,k,v (+bias) -> gemma q/k head norms ->
 *   RoPE (cos/sin from double angles, like the CPU) -> attention over the cache (attn.cu) ->
 *   Wo (gemma: post-norm) + residual -> rmsnorm -> gate/up -> silu|gelu-tanh * up -> Wdown
 *   (gemma: post-norm) + residual; final rmsnorm and the output projection.
 * Weights (weights.cu): f32/f16/bf16 tensors and the GGUF block formats with kernels
 * (qmatvec.cu: q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K, w4g128) are uploaded as they
 * are; other types are dequantized to f16 once at upload. Products (linear.cu): decode (one
 * token) multiplies with bandwidth-bound matrix-vector kernels (a warp per row, several
 * matrices sharing one input in one launch; block formats through int8 dot products); prefill
 * chunks use cuBLAS GEMM (bf16/f16 operands, fp32 accumulate and output; f32 weights in plain
 * fp32; block formats dequantized to f16 into a workspace, a slab of rows at a time, just
 * before their GEMM). Here: the session (its KV caches, buffers and device context), the
 * forward pass and its small kernels, eval / reset / fill / memory. */
#include "forward.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "../model/model.h"
#include "../engine/session.h"
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

/* rmsnorm_k (one row, add 0) and then quant_x_k over its output, in one kernel and with the same
 * float operations (the same block sum, the same per-block scale): out, xq and xd get the bits
 * the two kernels give. dim % 32 == 0. Several blocks: each sums the whole row (the same
 * threads, the same order, so the same inverse norm) and normalizes and quantizes its own
 * 32-value blocks, a warp each: one round of loads instead of dim / 32 / warps. x != out. */
__global__ void rmsnorm_quant_k(const float *x, const float *w, float *out, int dim, float eps, int8_t *xq, float2 *xd) {
    __shared__ float red[32];
    pdl_trigger();
    pdl_wait();
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(x[i], x[i], ss);
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    const int lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
    for (int b = blockIdx.x * wpb + (threadIdx.x >> 5); b < dim / 32; b += gridDim.x * wpb) {
        const int i = 32 * b + lane;
        const float v = x[i] * inv * w[i];
        out[i] = v;
        quant_block32(v, lane, xq + 32 * b, xd + b);
    }
}

/* cos/sin per token and base: rope[((t*2 + b)*half + i)*2 + {0,1}], angles in double, times
 * mscale (the rope's attention factor, as engine/session.c's rope_cs). */
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

/* Threads of a norm's block: they fix the order of its sum, so rmsnorm_k and rmsnorm_quant_k
 * take the same count to give the same bits. */
static int rmsnorm_threads(int dim) { return dim >= 1024 ? 1024 : dim >= 256 ? 256 : dim > 64 ? 128 : 64; }

int tlc_rmsnorm(tl_cuda_session *g, const float *x, const float *w, float *out, int rows, int dim, int add, tl_error *err) {
    const int thr = rmsnorm_threads(dim);
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

static int linear1(tl_cuda_session *g, const dmat *W, const float *x, int n, float *y, const float *bias, int add, tl_error *err) {
    const dmat *Ws[1] = {W};
    float *ys[1] = {y};
    const float *bs[1] = {bias};
    int ad[1] = {add};
    return tlc_linear(g, 1, Ws, x, n, ys, bs, ad, err);
}

/* ---------------- session ---------------- */

/* norm_linear's products of g->xn. */
static int norm_linear_q(tl_cuda_session *g, int n, int nseg, const dmat *const *W, float *const *y, const float *const *bias,
                         int glu, tl_error *err) {
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

/* y = W (rmsnorm(x) * norm_w) for nseg matrices sharing the input; glu (gate/up, nseg 2):
 * y[0] = act(W0 xn) * (W1 xn), y[1] scratch, the activation fused into the products for one
 * token when the shape allows (matvec.cu), else act_k after them. One token with block-format
 * weights: the norm also quantizes its output for the products (rmsnorm_quant_k), which then
 * skip quantize-activations. */
static int norm_linear(tl_cuda_session *g, const float *x, const float *norm_w, int n, int nseg, const dmat *const *W,
                       float *const *y, const float *const *bias, int glu, tl_error *err) {
    const tl_config *c = &g->m->cfg;
    const int E = c->n_embd;
    bool fq = n == 1 && !g->cx.no_fuse && E % 32 == 0 && E <= g->cx.xq_cap;
    for (int s = 0; s < nseg; s++) fq = fq && W[s]->wt == WT_Q;
    if (fq) {
        const int thr = rmsnorm_threads(E), nblk = (E / 32 + thr / 32 - 1) / (thr / 32);
        cudaError_t e = tlc_launch(!g->cx.no_pdl, rmsnorm_quant_k, dim3(nblk), dim3(thr), 0, g->cx.stream, x, norm_w, g->xn, E,
                                   c->norm_eps, g->cx.xq, g->cx.xd);
        if (e != cudaSuccess) return tl_fail(err, "CUDA kernel rmsnorm + quantize: %s", cudaGetErrorString(e));
        g->cx.xq_of = g->xn;
        const int rc = norm_linear_q(g, n, nseg, W, y, bias, glu, err);
        g->cx.xq_of = NULL;
        return rc;
    }
    if (tlc_rmsnorm(g, x, norm_w, g->xn, n, E, 0, err)) return -1;
    return norm_linear_q(g, n, nseg, W, y, bias, glu, err);
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
int tlc_side_setup(tl_cuda_session *g, kv_side *S, const tl_kv_side *p, tl_kv_kind kind, int d, int residual, int cap,
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
    cx->no_batch_attn = o->safe || o->no_batch_attn;
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
        m->dev_weights = tlc_upload_weights(m, o, err);
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
        if (tlc_side_setup(g, &L->k, &p.k, p.kind, c->head_dim_k, p.residual, cap, c->n_head_kv, "K", err) ||
            tlc_side_setup(g, &L->v, &p.v, p.kind, c->head_dim_v, p.residual, cap, c->n_head_kv, "V", err)) {
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
        g->ws_bytes = tlc_ws_bytes(m, o->widen, &g->wdq_elems, &g->cx.xq_cap);
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
         * engine/session.c), with that layer's Wq (+bias, q-norm, RoPE); decode only */
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

/* The largest count <= n (n < n_past) that one side can be cut back to, holding exactly the rows
 * it held for them (the CPU stores' rules, docs/server.md "Prefix reuse"): a dense cache while its
 * ring has not wrapped; per-token codes without an f16 residual anywhere, with one only while
 * nothing has been quantized; per-channel keys at or past the last quantized group block, or at
 * a multiple of the block below it. */
static int side_cut_max(const kv_side &S, int n_past, int n) {
    if (S.mode == KV_DENSE) return n_past <= S.cap ? n : 0;
    if (S.mode == KV_SLIDE) return S.R == 0 || S.nq == 0 ? n : 0;
    return n >= S.nq ? n : n / S.R * S.R; /* FLUSH: S.R is a multiple of the group */
}

extern "C" int tl_cuda_truncate_max(const tl_cuda_session *g, int n) {
    if (!g->kv || n >= g->n_past) return TL_MIN(n, g->n_past);
    for (;;) { /* each layer's largest count at or below n, until every layer accepts the same */
        int m = n;
        for (int il = 0; il < g->m->cfg.n_layer && m > 0; il++) {
            const tlc_layer_kv &L = g->kv[il];
            if (L.off) return 0; /* TailorKV's sparse layers (host tier, generated tokens): not yet */
            m = side_cut_max(L.k, g->n_past, m);
            m = side_cut_max(L.v, g->n_past, m);
        }
        if (m == n) return n;
        n = m;
    }
}

extern "C" int tl_cuda_truncate(tl_cuda_session *g, int n, tl_error *err) {
    if (n < 0 || n > g->n_past) return tl_fail(err, "truncate to %d tokens: the session holds %d", n, g->n_past);
    if (n == g->n_past) return 0;
    if (tl_cuda_truncate_max(g, n) != n)
        return tl_fail(err, "truncate to %d tokens: a layer's KV store cannot drop tokens there (it can at %d)", n,
                       tl_cuda_truncate_max(g, n));
    for (int il = 0; il < g->m->cfg.n_layer; il++)
        for (kv_side *S : {&g->kv[il].k, &g->kv[il].v}) {
            if (S->mode == KV_SLIDE) S->nq = TL_MIN(S->nq, n); /* no residual: every token's codes */
            if (S->mode == KV_FLUSH) S->nq = n / S->R * S->R;  /* whole blocks quantized, the rest in the f16 block */
        }
    g->n_past = n;
    g->qpred_for[0] = g->qpred_for[1] = -1;
    return 0;
}

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

