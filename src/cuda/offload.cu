/* offload.cu: TailorKV sparse layers (policy kind TL_KV_OFFLOAD) on the GPU, the same
 * semantics as the CPU store (src/kv/offload.c; read its header comment first):
 *   host tier (pinned, mapped: cudaHostAlloc(cudaHostAllocMapped)): K and V of every prompt
 *     token, f16, [head][token][dim]. Prefill kernels write it directly through the mapped
 *     pointer (posted PCIe writes, no stall); decode kernels read the top-k rows from it
 *     directly (zero-copy gather into the attention kernel, no staging copy).
 *     With summary 0 (the paper's variant) also a channel-major copy of K, [head][channel][token]
 *     (rows padded to 8 tokens), written by a transposing kernel in 64-token runs.
 *   device tier: sinks, the recent ring, generated tokens (f16), max|K| per channel (f32), and
 *     (summary b > 0) the channel-major b-bit key summary (per token, groups of 32 channels,
 *     f16 scale/min).
 * Prefill chunk (m > 1): exact attention over the host tier, the generated tokens (a chunk after
 * decoding: a chat's next turn) and the chunk, then the chunk joins the host tier (host index =
 * prompt token order, as on the CPU: prompt and generated tokens may interleave in position).
 * Token-level retrieval only (page 0); pages fail with a clear message.
 * Decode, per KV head: channels = top C of |mean_g q_pred|·max|K| (the real query when there
 * is no prediction), scores s_t = Σ_c qbar_c K[t,c] in the CPU's order and rounding, with
 * K[t,c] = code·s + z from the summary, or (summary 0) the f16 channel rows moved from host
 * memory; exact top-k by a radix select on the float bits (ties: lower index, as the CPU), the
 * selected host indices in ascending order, then attention over sinks + recent + selected +
 * generated + the new token (f32), split over blocks and merged by log-sum-exp.
 * Channel-row prefetch (summary 0): when layer l-1 has made layer l's predicted query,
 * tlc_off_prefetch picks l's channels and copies their rows (candidates only) from the mapped
 * host copy into one of two device buffers shared by all sparse layers, on a side stream, so
 * the PCIe transfer overlaps layer l-1's attention and FFN; layer l's decode waits for it.
 * The copy is a kernel of H*C small blocks reading the mapped rows (16-byte loads, several in
 * flight per thread): the channel indices live on the device, and a few blocks keep enough
 * bytes in flight for PCIe without taking SMs from the main stream's kernels. */
#include "backend.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OFF_NSPL_MAX 32
#define OFF_WARPS 8

struct tlc_off {
    int H, G, dk, dv, cap, gcap, S, R, topk, C, sb, sg, maxsel;
    float scale;
    int n_host, n_gen;
    uint16_t *hk, *hv, *hkt;    /* host tier (host pointers); hkt: channel-major K, summary 0 only */
    uint16_t *dhk, *dhv, *dhkt; /* the same memory as device pointers */
    int capp;                   /* hkt row length: cap rounded up to 8 tokens (16-byte rows) */
    int pend;                   /* channel-row buffer prefetched for the next decode, -1: none */
    const tlc_ctx *pend_cx;     /* ... in this context's buffers (a batch runs the layer in its own) */
    uint16_t *sk, *sv, *rk, *rv, *gk, *gv;
    float *kmax;
    uint32_t *sum_codes; /* [H][dk][row_words] */
    size_t row_words;
    uint16_t *sum_sz; /* [H][dk/sg][cap][2] */
    int *chan;        /* [H][C] */
    float *qbar;      /* [H][dk] */
    uint32_t *keys;   /* [H][cap] ordered score keys */
    int *sel, *nsel;  /* [H][maxsel], [H] */
    float *part;      /* [H][NSPL_MAX][G][dv+2] */
    uint64_t dev_bytes, host_bytes, h2d_decode, h2d_chan, h2d_prefill, d2h;
    int64_t steps, unpredicted;
};

#define CK(call)                                                                                              \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) return tl_fail(err, "%s: %s (%s:%d)", #call, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)

static int check_params(const tl_kv_offload_params *p, int n_head, int n_head_kv, int dk, int dv, tl_error *err) {
    if (p->summary_bits != 0 && p->summary_bits != 2 && p->summary_bits != 4 && p->summary_bits != 8)
        return tl_fail(err, "TailorKV on the GPU: summary=%d (0: the paper's channel-row fetch, or 2|4|8 bits)",
                       p->summary_bits);
    if (p->page > 0) return tl_fail(err, "TailorKV on the GPU: page-level retrieval (page=%d) is CPU only", p->page);
    if (dk % 32 || dv % 32 || dk > 256 || dv > 256 || dk != dv)
        return tl_fail(err, "TailorKV on the GPU: head sizes %d/%d (need equal multiples of 32, at most 256)", dk, dv);
    if (n_head % n_head_kv || n_head / n_head_kv > 8)
        return tl_fail(err, "TailorKV on the GPU: GQA group %d (at most 8)", n_head / n_head_kv);
    if (p->sinks < 0 || p->recent < 0 || p->topk < 0 || p->channels < 1)
        return tl_fail(err, "TailorKV on the GPU: bad sinks/recent/topk/channels");
    return 0;
}

/* Generated tokens a layer holds on the device: gen_cap (--cuda-opt gen-cap), 0 = 4096, at most
 * the context. */
static int gen_cap_of(int n_ctx, int gen_cap) { return TL_MIN(n_ctx, gen_cap > 0 ? gen_cap : 4096); }

static void sizes(const tl_kv_offload_params *p, int n_head, int H, int dk, int dv, int cap, int gen_cap, tlc_off_sizes *o) {
    const int G = n_head / H, gcap = gen_cap_of(cap, gen_cap), C = TL_MIN(p->channels, dk);
    const int maxsel = TL_MAX(1, p->topk);
    const size_t row_words = ((size_t)cap * p->summary_bits + 31) / 32;
    const uint64_t capp = ((uint64_t)cap + 7) / 8 * 8;
    uint64_t d = 0;
    d += (uint64_t)H * (p->sinks + p->recent + gcap) * (dk + dv) * 2; /* sinks, ring, generated */
    d += (uint64_t)H * dk * 4 * 2;                                    /* max|K|, qbar */
    if (p->summary_bits) d += (uint64_t)H * dk * row_words * 4 + (uint64_t)H * (dk / 32) * cap * 4; /* summary */
    d += (uint64_t)H * C * 4 + (uint64_t)H * cap * 4 + (uint64_t)H * (maxsel + 1) * 4;
    d += (uint64_t)H * OFF_NSPL_MAX * G * (dv + 2) * 4;
    o->dev = d;
    o->host = (uint64_t)H * cap * (dk + dv) * 2 + (p->summary_bits ? 0 : (uint64_t)H * dk * capp * 2);
    o->crow = p->summary_bits ? 0 : (uint64_t)H * C * capp * 2;
    o->pstage = (uint64_t)H * cap * (dk + dv) * 2;
}

int tlc_off_sizes_of(const tl_kv_offload_params *p, int n_head, int n_head_kv, int dk, int dv, int n_ctx, int gen_cap,
                     tlc_off_sizes *out, tl_error *err) {
    if (check_params(p, n_head, n_head_kv, dk, dv, err)) return -1;
    sizes(p, n_head, n_head_kv, dk, dv, n_ctx, gen_cap, out);
    return 0;
}

void tlc_off_free(tlc_off *o) {
    if (!o) return;
    if (o->hk) cudaFreeHost(o->hk);
    if (o->hv) cudaFreeHost(o->hv);
    if (o->hkt) cudaFreeHost(o->hkt);
    void *d[] = {o->sk, o->sv, o->rk, o->rv, o->gk, o->gv, o->kmax, o->sum_codes, o->sum_sz, o->chan, o->qbar, o->keys,
                 o->sel, o->nsel, o->part};
    for (size_t i = 0; i < sizeof d / sizeof *d; i++) cudaFree(d[i]);
    free(o);
}

int tlc_off_new(tlc_off **out, const tl_kv_offload_params *p, int n_head, int n_head_kv, int dk, int dv, int n_ctx,
                int gen_cap, float scale, tl_error *err) {
    *out = NULL;
    if (check_params(p, n_head, n_head_kv, dk, dv, err)) return -1;
    tlc_off *o = (tlc_off *)tl_xcalloc(1, sizeof *o);
    o->H = n_head_kv;
    o->G = n_head / n_head_kv;
    o->dk = dk;
    o->dv = dv;
    o->cap = n_ctx;
    o->gcap = gen_cap_of(n_ctx, gen_cap);
    o->S = p->sinks;
    o->R = p->recent;
    o->topk = p->topk;
    o->C = TL_MIN(p->channels, dk);
    o->sb = p->summary_bits;
    o->sg = 32;
    o->maxsel = TL_MAX(1, p->topk);
    o->scale = scale;
    o->row_words = ((size_t)n_ctx * o->sb + 31) / 32;
    o->capp = (n_ctx + 7) / 8 * 8;
    o->pend = -1;
    tlc_off_sizes sz;
    sizes(p, n_head, o->H, dk, dv, n_ctx, gen_cap, &sz);
    o->dev_bytes = sz.dev;
    o->host_bytes = sz.host;
    const size_t H = o->H, cap = o->cap;
    cudaError_t e = cudaSuccess;
#define DA(ptr, bytes) \
    if (e == cudaSuccess) e = cudaMalloc((void **)&(ptr), TL_MAX((size_t)(bytes), (size_t)16))
    if ((e = cudaHostAlloc((void **)&o->hk, H * cap * dk * 2, cudaHostAllocMapped)) != cudaSuccess ||
        (e = cudaHostAlloc((void **)&o->hv, H * cap * dv * 2, cudaHostAllocMapped)) != cudaSuccess ||
        (e = cudaHostGetDevicePointer((void **)&o->dhk, o->hk, 0)) != cudaSuccess ||
        (e = cudaHostGetDevicePointer((void **)&o->dhv, o->hv, 0)) != cudaSuccess ||
        (o->sb == 0 && ((e = cudaHostAlloc((void **)&o->hkt, H * dk * o->capp * 2, cudaHostAllocMapped)) != cudaSuccess ||
                        (e = cudaHostGetDevicePointer((void **)&o->dhkt, o->hkt, 0)) != cudaSuccess))) {
        tlc_off_free(o);
        return tl_fail(err, "TailorKV host tier: %.2f MiB of pinned mapped host memory: %s",
                       (double)sz.host / 1048576.0, cudaGetErrorString(e));
    }
    DA(o->sk, H * o->S * dk * 2);
    DA(o->sv, H * o->S * dv * 2);
    DA(o->rk, H * o->R * dk * 2);
    DA(o->rv, H * o->R * dv * 2);
    DA(o->gk, H * o->gcap * dk * 2);
    DA(o->gv, H * o->gcap * dv * 2);
    DA(o->kmax, H * dk * 4);
    if (o->sb) {
        DA(o->sum_codes, H * dk * o->row_words * 4);
        DA(o->sum_sz, H * (dk / 32) * cap * 4);
    }
    DA(o->chan, H * o->C * 4);
    DA(o->qbar, H * dk * 4);
    DA(o->keys, H * cap * 4);
    DA(o->sel, H * o->maxsel * 4);
    DA(o->nsel, H * 4);
    DA(o->part, H * OFF_NSPL_MAX * o->G * (dv + 2) * 4);
#undef DA
    if (e == cudaSuccess) e = cudaMemset(o->kmax, 0, H * dk * 4);
    if (e == cudaSuccess) e = cudaMemset(o->nsel, 0, H * 4);
    if (e == cudaSuccess && o->sb) e = cudaMemset(o->sum_codes, 0, H * dk * o->row_words * 4);
    if (e != cudaSuccess) {
        tlc_off_free(o);
        return tl_fail(err, "TailorKV device tier (%.2f MiB): %s", (double)sz.dev / 1048576.0, cudaGetErrorString(e));
    }
    *out = o;
    return 0;
}

void tlc_off_reset(tlc_ctx *cx, tlc_off *o) {
    o->n_host = o->n_gen = 0;
    o->pend = -1;
    o->h2d_decode = o->h2d_chan = o->h2d_prefill = o->d2h = 0;
    o->steps = o->unpredicted = 0;
    cudaMemsetAsync(o->kmax, 0, sizeof(float) * o->H * o->dk, cx->stream);
    cudaMemsetAsync(o->nsel, 0, sizeof(int) * o->H, cx->stream);
}

void tlc_off_info_of(const tlc_off *o, tlc_off_info *out) {
    out->n_host = o->n_host;
    out->n_gen = o->n_gen;
    out->dev = o->dev_bytes;
    out->host = o->host_bytes;
    out->h2d_decode = o->h2d_decode;
    out->h2d_chan = o->h2d_chan;
    out->h2d_prefill = o->h2d_prefill;
    out->d2h = o->d2h;
    out->steps = o->steps;
    out->unpredicted = o->unpredicted;
}

/* ---------------- prompt append ---------------- */

struct app_p {
    const float *k, *v;
    uint16_t *dhk, *dhv, *sk, *sv, *rk, *rv, *sum_sz;
    uint32_t *codes;
    float *kmax;
    size_t row_words;
    int H, dk, dv, cap, S, R, sb, t0, n_after;
};

/* grid (m tokens, H heads), block dk threads (a warp per 32-channel summary group). */
__global__ void off_append_k(app_p a) {
    const int i = blockIdx.x, h = blockIdx.y, c = threadIdx.x, t = a.t0 + i;
    const int lane = c & 31;
    const bool ring = a.R > 0 && t >= a.S && t >= a.n_after - a.R; /* the last writer of each slot */
    for (int j = c; j < a.dv; j += blockDim.x) {
        const uint16_t hv = __half_as_ushort(__float2half_rn(a.v[((size_t)i * a.H + h) * a.dv + j]));
        a.dhv[((size_t)h * a.cap + t) * a.dv + j] = hv;
        if (t < a.S) a.sv[((size_t)h * a.S + t) * a.dv + j] = hv;
        else if (ring) a.rv[((size_t)h * a.R + t % a.R) * a.dv + j] = hv;
    }
    const uint16_t hk = __half_as_ushort(__float2half_rn(a.k[((size_t)i * a.H + h) * a.dk + c]));
    const float x = h2f(hk); /* the stored (rounded) key from here on, like the CPU */
    a.dhk[((size_t)h * a.cap + t) * a.dk + c] = hk;
    if (t < a.S) a.sk[((size_t)h * a.S + t) * a.dk + c] = hk;
    else if (ring) a.rk[((size_t)h * a.R + t % a.R) * a.dk + c] = hk;
    atomicMax((int *)&a.kmax[(size_t)h * a.dk + c], __float_as_int(fabsf(x))); /* x >= 0: int order = float order */
    if (a.sb == 0) return; /* no summary (channel rows: off_append_kt_k) */
    /* summary: min/max over the 32 channels of this warp's group */
    float mn = x, mx = x;
    for (int o = 16; o; o >>= 1) {
        mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    const int maxq = (1 << a.sb) - 1;
    const uint16_t s16 = __half_as_ushort(__float2half_rn(__fdiv_rn(__fsub_rn(mx, mn), (float)maxq)));
    const uint16_t z16 = __half_as_ushort(__float2half_rn(mn));
    const float s = h2f(s16), z = h2f(z16);
    if (lane == 0) {
        uint16_t *sz = a.sum_sz + (((size_t)h * (a.dk / 32) + c / 32) * a.cap + t) * 2;
        sz[0] = s16;
        sz[1] = z16;
    }
    int q = 0;
    if (s > 0.0f) q = (int)rintf(__fdiv_rn(__fsub_rn(x, z), s));
    q = q < 0 ? 0 : q > maxq ? maxq : q;
    const size_t bit = (size_t)t * a.sb;
    uint32_t *w = a.codes + ((size_t)h * a.dk + c) * a.row_words + bit / 32;
    const int sh = (int)(bit % 32);
    atomicAnd(w, ~((uint32_t)maxq << sh)); /* neighbours in the word are other tokens' bits */
    atomicOr(w, (uint32_t)q << sh);
}

/* grid (ceil(m/64), H), 256 threads: 64 tokens of the chunk into the channel-major host copy,
 * through a shared-memory transpose so that each channel row gets one 128-byte run (whole
 * posted PCIe writes instead of 2-byte ones); the same f16 rounding as the token-major copy. */
constexpr int KT_TOK = 64;
__global__ void off_append_kt_k(const float *k, uint16_t *dhkt, int H, int dk, int capp, int t0, int m) {
    __shared__ uint16_t tile[KT_TOK][256 + 2];
    const int h = blockIdx.y, i0 = blockIdx.x * KT_TOK, n = min(KT_TOK, m - i0);
    for (int e = threadIdx.x; e < n * dk; e += blockDim.x) {
        const int i = e / dk, c = e % dk;
        tile[i][c] = __half_as_ushort(__float2half_rn(k[((size_t)(i0 + i) * H + h) * dk + c]));
    }
    __syncthreads();
    for (int e = threadIdx.x; e < dk * KT_TOK; e += blockDim.x) {
        const int c = e / KT_TOK, i = e % KT_TOK;
        if (i < n) dhkt[((size_t)h * dk + c) * capp + t0 + i0 + i] = tile[i][c];
    }
}

int tlc_off_append_prompt(tlc_ctx *cx, tlc_off *o, int m, const float *k, const float *v, tl_error *err) {
    if (m <= 0) return 0;
    if (o->n_host + m > o->cap) return tl_fail(err, "TailorKV layer full: %d + %d prompt tokens > %d", o->n_host, m, o->cap);
    app_p a;
    a.k = k;
    a.v = v;
    a.dhk = o->dhk;
    a.dhv = o->dhv;
    a.sk = o->sk;
    a.sv = o->sv;
    a.rk = o->rk;
    a.rv = o->rv;
    a.sum_sz = o->sum_sz;
    a.codes = o->sum_codes;
    a.kmax = o->kmax;
    a.row_words = o->row_words;
    a.H = o->H;
    a.dk = o->dk;
    a.dv = o->dv;
    a.cap = o->cap;
    a.S = o->S;
    a.R = o->R;
    a.sb = o->sb;
    a.t0 = o->n_host;
    a.n_after = o->n_host + m;
    off_append_k<<<dim3(m, o->H), o->dk, 0, cx->stream>>>(a);
    TLC_LAUNCH_CHECK("TailorKV append");
    o->d2h += (uint64_t)m * o->H * (o->dk + o->dv) * 2;
    if (o->sb == 0) {
        off_append_kt_k<<<dim3((m + KT_TOK - 1) / KT_TOK, o->H), 256, 0, cx->stream>>>(k, o->dhkt, o->H, o->dk, o->capp, o->n_host, m);
        TLC_LAUNCH_CHECK("TailorKV append (channel-major K)");
        o->d2h += (uint64_t)m * o->H * o->dk * 2;
    }
    o->n_host += m;
    return 0;
}

int tlc_off_prefill(tlc_ctx *cx, tlc_off *o, int m, const float *q, const float *k, const float *v, float *out,
                    tl_error *err) {
    if (o->n_host + o->n_gen + m > o->cap)
        return tl_fail(err, "TailorKV layer full: %d prompt + %d generated + %d new tokens > %d", o->n_host, o->n_gen, m, o->cap);
    /* the paper prefills densely: attention over every token held (the host tier, then the
     * generated tokens: a chunk after decoding, e.g. a chat's next turn, sees the answer too,
     * as the CPU store does) plus the chunk (causal), through a dense f16 cache of
     * n_host + n_gen rows per head. The host tier is copied to the device once per chunk (H x
     * n_host rows of K and of V, one 2D copy each, at PCIe bandwidth): reading it through the
     * mapped pointer instead would move it over PCIe once per query block, ~50x as many bytes.
     * The generated rows follow it, copied on the device (they are f16 there already). The
     * order of the keys does not matter to attention (RoPE put the positions into them). */
    tlc_layer_kv T;
    memset(&T, 0, sizeof T);
    T.n_head = o->H * o->G;
    T.n_head_kv = o->H;
    T.scale = o->scale;
    kv_side *sd[2] = {&T.k, &T.v};
    const size_t kbytes = (size_t)o->H * o->cap * o->dk * 2;
    if (kbytes + (size_t)o->H * o->cap * o->dv * 2 > cx->pstage_bytes)
        return tl_fail(err, "TailorKV prefill: the host-tier copy is not reserved (tlc_off_reserve)");
    uint16_t *fp[2] = {cx->pstage, (uint16_t *)((uint8_t *)cx->pstage + kbytes)};
    const uint16_t *host[2] = {o->hk, o->hv}, *gen[2] = {o->gk, o->gv};
    const int d[2] = {o->dk, o->dv};
    for (int i = 0; i < 2; i++) {
        const size_t pitch = (size_t)o->cap * d[i] * 2;
        if (o->n_host > 0) {
            CK(cudaMemcpy2DAsync(fp[i], pitch, host[i], pitch, (size_t)o->n_host * d[i] * 2, o->H, cudaMemcpyHostToDevice,
                                 cx->stream));
            o->h2d_prefill += (uint64_t)o->H * o->n_host * d[i] * 2;
        }
        if (o->n_gen > 0) /* rows n_host .. n_host + n_gen - 1 of each head */
            CK(cudaMemcpy2DAsync(fp[i] + (size_t)o->n_host * d[i], pitch, gen[i], (size_t)o->gcap * d[i] * 2,
                                 (size_t)o->n_gen * d[i] * 2, o->H, cudaMemcpyDeviceToDevice, cx->stream));
    }
    for (int i = 0; i < 2; i++) {
        sd[i]->mode = KV_DENSE;
        sd[i]->dt = DT_F16;
        sd[i]->d = d[i];
        sd[i]->cap = o->cap;
        sd[i]->fp_head = (size_t)o->cap * d[i];
        sd[i]->fp = fp[i];
    }
    if (tlc_attention(cx, &T, o->n_host + o->n_gen, m, q, k, v, out, err)) return -1;
    return tlc_off_append_prompt(cx, o, m, k, v, err);
}

/* ---------------- decode ---------------- */

/* Channels per KV head (block = 256 threads, one head). qsel: the query the channels come from
 * (predicted or real); q: the real query (its group mean qbar is what scores use). Either half
 * may be skipped: chan == NULL (channels prefetched already), q == NULL (the prefetch, before
 * the real query exists). */
__global__ void off_chan_k(const float *qsel, const float *q, const float *kmax, int G, int dk, int C, int *chan,
                           float *qbar) {
    extern __shared__ float sm[];
    float *sc = sm;            /* [dk] */
    int *flag = (int *)(sm + dk); /* [dk] */
    const int h = blockIdx.x;
    const float invG = 1.0f / (float)G;
    for (int c = threadIdx.x; c < dk; c += blockDim.x) {
        float a = 0.0f, b = 0.0f;
        for (int g = 0; g < G; g++) {
            if (chan) a = __fadd_rn(a, qsel[(size_t)(h * G + g) * dk + c]);
            if (q) b = __fadd_rn(b, q[(size_t)(h * G + g) * dk + c]);
        }
        if (q) qbar[(size_t)h * dk + c] = __fmul_rn(b, invG);
        if (chan) sc[c] = __fmul_rn(fabsf(__fmul_rn(a, invG)), kmax[(size_t)h * dk + c]);
    }
    if (!chan) return;
    __syncthreads();
    for (int c = threadIdx.x; c < dk; c += blockDim.x) {
        int rank = 0;
        const float s = sc[c];
        for (int j = 0; j < dk; j++) rank += sc[j] > s || (sc[j] == s && j < c);
        flag[c] = rank < C;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < dk; c += blockDim.x)
        if (flag[c]) {
            int pos = 0;
            for (int j = 0; j < c; j++) pos += flag[j];
            chan[h * C + pos] = c;
        }
}

__device__ __forceinline__ uint32_t f2key(float f) {
    f = f + 0.0f; /* -0 -> +0: the CPU compares them equal */
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* grid (H*C), 128 threads: the candidate part [lo8, hi) of the chosen channels' rows, from the
 * mapped host copy (dhkt) into buf [H][C][capp]; lo8 = lo rounded down to 8 tokens (16-byte
 * loads; the few tokens before lo are moved but not scored). 4 loads in flight per thread:
 * 64 blocks x 8 KB cover the PCIe latency-bandwidth product. */
__global__ void __launch_bounds__(128) off_fetch_k(const uint16_t *dhkt, const int *chan, int dk, int C, int capp, int lo8,
                                                   int hi, uint16_t *buf) {
    const int hc = blockIdx.x, h = hc / C;
    const uint4 *src = (const uint4 *)(dhkt + ((size_t)h * dk + chan[hc]) * capp);
    uint4 *dst = (uint4 *)(buf + (size_t)hc * capp);
    const int u1 = (hi + 7) / 8;
    int u = lo8 / 8 + threadIdx.x;
    for (; u + 3 * 128 < u1; u += 4 * 128) {
        uint4 w[4];
#pragma unroll
        for (int j = 0; j < 4; j++) w[j] = src[u + j * 128];
#pragma unroll
        for (int j = 0; j < 4; j++) dst[u + j * 128] = w[j];
    }
    for (; u < u1; u += 128) dst[u] = src[u];
}

/* grid (ceil(cand/256), H): approximate scores of candidates [lo, hi) on the chosen channels,
 * in the CPU's order: s_t = fma(qbar_c, row, s_t) by channel, row = code*s + z (two roundings)
 * from the summary, or (rows != NULL, summary 0) the f16 channel rows fetched into rows. */
__global__ void off_score_k(const uint32_t *codes, size_t row_words, const uint16_t *sum_sz, const uint16_t *rows,
                            int capp, const int *chan, const float *qbar, int dk, int C, int sb, int cap, int lo, int cand,
                            uint32_t *keys) {
    __shared__ int ch[256];
    __shared__ float qc[256];
    const int h = blockIdx.y;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        ch[i] = chan[h * C + i];
        qc[i] = qbar[(size_t)h * dk + ch[i]];
    }
    __syncthreads();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= cand) return;
    const int t = lo + i, mask = (1 << sb) - 1;
    const size_t bit = (size_t)t * sb;
    float s = 0.0f;
    if (rows) {
        for (int ci = 0; ci < C; ci++) s = fmaf(qc[ci], h2f(rows[((size_t)h * C + ci) * capp + t]), s);
        keys[(size_t)h * cap + i] = f2key(s);
        return;
    }
    for (int ci = 0; ci < C; ci++) {
        const int c = ch[ci];
        const uint32_t w = codes[((size_t)h * dk + c) * row_words + bit / 32];
        const int code = (int)(w >> (bit % 32)) & mask;
        const uint16_t *sz = sum_sz + (((size_t)h * (dk / 32) + c / 32) * cap + t) * 2;
        const float row = __fadd_rn(__fmul_rn((float)code, h2f(sz[0])), h2f(sz[1]));
        s = fmaf(qc[ci], row, s);
    }
    keys[(size_t)h * cap + i] = f2key(s);
}

/* One block (1024 threads) per KV head: the top k keys (ties: lower index) by a 4-pass radix
 * select, then the selection in ascending index order. all: every candidate.
 * Scores of one head are close in magnitude, so most keys of a pass share a few histogram bins:
 * the lanes of a warp that hit the same bin add once (match_any), not 32 times in a row. The
 * ordered compaction gives each warp a contiguous segment: a first sweep counts its keys above
 * the threshold and equal to it (ballots, no block barriers), one barrier publishes the counts,
 * and a second sweep writes the taken indices at their global ranks. */
__global__ void __launch_bounds__(1024) off_select_k(const uint32_t *keys, int cap, int lo, int cand, int k, int all,
                                                     int *sel, int *nsel, int maxsel) {
    __shared__ int hist[256];
    __shared__ int cnt[32][2]; /* per warp: keys > T, keys == T in its segment */
    __shared__ uint32_t s_prefix;
    __shared__ int s_krem;
    const int h = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    int *out = sel + (size_t)h * maxsel;
    if (cand <= 0 || all) {
        for (int i = threadIdx.x; i < cand; i += blockDim.x) out[i] = lo + i;
        if (threadIdx.x == 0) nsel[h] = TL_MAX(cand, 0);
        return;
    }
    const uint32_t *kh = keys + (size_t)h * cap;
    uint32_t prefix = 0, pmask = 0;
    if (threadIdx.x == 0) s_krem = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        for (int base = 0; base < cand; base += blockDim.x) { /* uniform trip count: whole warps */
            const int i = base + threadIdx.x;
            const uint32_t key = i < cand ? kh[i] : 0u;
            const int bin = i < cand && (key & pmask) == prefix ? (int)((key >> shift) & 255) : -1;
            const unsigned peers = __match_any_sync(0xffffffffu, bin);
            if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int cum = 0, krem = s_krem, b = 255;
            for (; b > 0; b--) {
                if (cum + hist[b] >= krem) break;
                cum += hist[b];
            }
            s_krem = krem - cum;
            s_prefix = prefix | ((uint32_t)b << shift);
        }
        __syncthreads();
        prefix = s_prefix;
        pmask |= 255u << shift;
    }
    const uint32_t T = prefix;
    const int krem = s_krem; /* how many keys equal to T to take (the lowest indices) */
    const int seg = (cand + nwarps * 32 - 1) / (nwarps * 32) * 32, i0 = warp * seg, i1 = min(cand, i0 + seg);
    int ngt = 0, neq = 0;
    for (int base = i0; base < i1; base += 32) {
        const int i = base + lane;
        const uint32_t key = i < i1 ? kh[i] : 0u;
        ngt += __popc(__ballot_sync(0xffffffffu, i < i1 && key > T));
        neq += __popc(__ballot_sync(0xffffffffu, i < i1 && key == T));
    }
    if (lane == 0) {
        cnt[warp][0] = ngt;
        cnt[warp][1] = neq;
    }
    __syncthreads();
    int out_pos = 0, eq_before = 0; /* indices taken by, and keys equal to T in, the warps before */
    for (int w = 0; w < warp; w++) {
        out_pos += cnt[w][0] + min(max(krem - eq_before, 0), cnt[w][1]);
        eq_before += cnt[w][1];
    }
    const unsigned below = (1u << lane) - 1;
    for (int base = i0; base < i1; base += 32) {
        const int i = base + lane;
        const uint32_t key = i < i1 ? kh[i] : 0u;
        const int gt = i < i1 && key > T, eq = i < i1 && key == T;
        const unsigned beq = __ballot_sync(0xffffffffu, eq);
        const int take = gt || (eq && eq_before + __popc(beq & below) < krem);
        const unsigned btake = __ballot_sync(0xffffffffu, take);
        if (take) out[out_pos + __popc(btake & below)] = lo + i;
        out_pos += __popc(btake);
        eq_before += __popc(beq);
    }
    if (threadIdx.x == 0) nsel[h] = k; /* cand > k: k - krem keys above T, krem of those equal */
}

struct oattn_p {
    const float *q, *knew, *vnew;
    const uint16_t *sk, *sv, *rk, *rv, *hk, *hv, *gk, *gv;
    const int *sel, *nsel;
    float *part;
    int H, G, dk, dv, cap, gcap, S, R, maxsel, n_s, n_r, hi, n_gen, nspl;
    float scale;
};

/* grid (nspl, H), OFF_WARPS warps. A warp takes tokens i = warp_global, + nwarps, ... of the
 * virtual list sinks | recent | selected (mapped host rows) | generated | new; lane holds
 * dims [lane*EK, lane*EK + EK). Online softmax per query of the GQA group in registers. */
template <int EK, int EV>
__global__ void __launch_bounds__(OFF_WARPS * 32) off_attn_k(oattn_p p) {
    extern __shared__ float sm[];
    const int h = blockIdx.y, G = p.G, dk = p.dk, dv = p.dv;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *qs = sm;                    /* [G][dk], scaled */
    float *wpart = sm + (size_t)G * dk; /* [warps][G][dv + 2] */
    for (int e = threadIdx.x; e < G * dk; e += blockDim.x) qs[e] = p.q[(size_t)h * G * dk + e] * p.scale;
    __syncthreads();
    const int nsel = p.nsel[h];
    const int n1 = p.n_s, n2 = n1 + p.n_r, n3 = n2 + nsel, n4 = n3 + p.n_gen, total = n4 + 1;
    float m[8], l[8], acc[8][EV];
#pragma unroll
    for (int g = 0; g < 8; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EV; e++) acc[g][e] = 0.0f;
    }
    const int nw = p.nspl * OFF_WARPS;
    for (int i = blockIdx.x * OFF_WARPS + warp; i < total; i += nw) {
        float kx[EK], vx[EV];
        const uint16_t *kr = NULL, *vr = NULL;
        if (i < n1) {
            kr = p.sk + ((size_t)h * p.S + i) * dk;
            vr = p.sv + ((size_t)h * p.S + i) * dv;
        } else if (i < n2) {
            const int slot = (p.hi + i - n1) % p.R;
            kr = p.rk + ((size_t)h * p.R + slot) * dk;
            vr = p.rv + ((size_t)h * p.R + slot) * dv;
        } else if (i < n3) {
            const int t = p.sel[(size_t)h * p.maxsel + i - n2];
            kr = p.hk + ((size_t)h * p.cap + t) * dk;
            vr = p.hv + ((size_t)h * p.cap + t) * dv;
        } else if (i < n4) {
            kr = p.gk + ((size_t)h * p.gcap + i - n3) * dk;
            vr = p.gv + ((size_t)h * p.gcap + i - n3) * dv;
        }
        if (kr) {
#pragma unroll
            for (int e = 0; e < EK; e++) kx[e] = h2f(kr[lane * EK + e]);
#pragma unroll
            for (int e = 0; e < EV; e++) vx[e] = h2f(vr[lane * EV + e]);
        } else {
#pragma unroll
            for (int e = 0; e < EK; e++) kx[e] = p.knew[(size_t)h * dk + lane * EK + e];
#pragma unroll
            for (int e = 0; e < EV; e++) vx[e] = p.vnew[(size_t)h * dv + lane * EV + e];
        }
#pragma unroll
        for (int g = 0; g < 8; g++) {
            if (g >= G) break;
            float s = 0.0f;
#pragma unroll
            for (int e = 0; e < EK; e++) s = fmaf(qs[g * dk + lane * EK + e], kx[e], s);
            s = wsum(s);
            const float mn = fmaxf(m[g], s), corr = expf(m[g] - mn), pe = expf(s - mn);
            l[g] = l[g] * corr + pe;
            m[g] = mn;
#pragma unroll
            for (int e = 0; e < EV; e++) acc[g][e] = acc[g][e] * corr + pe * vx[e];
        }
    }
    const int stride = dv + 2;
#pragma unroll
    for (int g = 0; g < 8; g++) {
        if (g >= G) break;
        float *wp = wpart + ((size_t)warp * G + g) * stride;
        if (lane == 0) {
            wp[0] = m[g];
            wp[1] = l[g];
        }
#pragma unroll
        for (int e = 0; e < EV; e++) wp[2 + lane * EV + e] = acc[g][e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * (dv + 2); e += blockDim.x) {
        const int g = e / stride, c = e % stride;
        float M = -INFINITY;
        for (int w = 0; w < OFF_WARPS; w++) M = fmaxf(M, wpart[((size_t)w * G + g) * stride]);
        float v = 0.0f;
        if (c == 0) v = M;
        else
            for (int w = 0; w < OFF_WARPS; w++) {
                const float mw = wpart[((size_t)w * G + g) * stride];
                if (mw == -INFINITY) continue;
                v += wpart[((size_t)w * G + g) * stride + c] * expf(mw - M);
            }
        p.part[(((size_t)h * OFF_NSPL_MAX + blockIdx.x) * G + g) * stride + c] = v;
    }
}

/* grid H*G, block dv: merge the splits; out[(h*G+g)*dv + c]. */
__global__ void off_merge_k(const float *part, int G, int dv, int nspl, float *out) {
    const int hg = blockIdx.x, h = hg / G, g = hg % G, stride = dv + 2;
    float M = -INFINITY;
    for (int s = 0; s < nspl; s++) M = fmaxf(M, part[(((size_t)h * OFF_NSPL_MAX + s) * G + g) * stride]);
    for (int c = threadIdx.x; c < dv; c += blockDim.x) {
        float L = 0.0f, a = 0.0f;
        for (int s = 0; s < nspl; s++) {
            const float *pp = part + (((size_t)h * OFF_NSPL_MAX + s) * G + g) * stride;
            if (pp[0] == -INFINITY) continue;
            const float w = expf(pp[0] - M);
            L += pp[1] * w;
            a += pp[2 + c] * w;
        }
        out[(size_t)hg * dv + c] = L > 0.0f ? a / L : 0.0f;
    }
}

__global__ void off_gen_k(const float *k, const float *v, int dk, int dv, int gcap, int slot, uint16_t *gk, uint16_t *gv) {
    const int h = blockIdx.x;
    for (int c = threadIdx.x; c < dk; c += blockDim.x)
        gk[((size_t)h * gcap + slot) * dk + c] = __half_as_ushort(__float2half_rn(k[(size_t)h * dk + c]));
    for (int c = threadIdx.x; c < dv; c += blockDim.x)
        gv[((size_t)h * gcap + slot) * dv + c] = __half_as_ushort(__float2half_rn(v[(size_t)h * dv + c]));
}

/* Candidates of the decode step: prompt tokens that are neither sinks nor recent, [lo, hi). */
static void candidates(const tlc_off *o, int *lo, int *hi) {
    const int n = o->n_host, S = TL_MIN(o->S, n), R = TL_MIN(o->R, n - S);
    *lo = S;
    *hi = n - R;
}

/* The chosen channels' candidate rows into channel-row buffer b, on stream st. */
static int fetch_rows(tlc_ctx *cx, tlc_off *o, int b, cudaStream_t st, tl_error *err) {
    int lo, hi;
    candidates(o, &lo, &hi);
    if ((size_t)o->H * o->C * o->capp * 2 > cx->crow.bytes)
        return tl_fail(err, "TailorKV channel rows: buffers not reserved (tlc_off_reserve)");
    off_fetch_k<<<o->H * o->C, 128, 0, st>>>(o->dhkt, o->chan, o->dk, o->C, o->capp, lo & ~7, hi, cx->crow.buf[b]);
    TLC_LAUNCH_CHECK("TailorKV channel rows");
    o->h2d_chan += (uint64_t)o->H * o->C * (hi - lo) * 2; /* the rows' candidate part, as the CPU counts */
    return 0;
}

int tlc_off_reserve(tlc_ctx *cx, const tlc_off *o, uint64_t *grown, tl_error *err) {
    tlc_off_sizes z;
    memset(&z, 0, sizeof z);
    z.pstage = (uint64_t)o->H * o->cap * (o->dk + o->dv) * 2;
    z.crow = o->sb ? 0 : (uint64_t)o->H * o->C * o->capp * 2;
    return tlc_off_reserve_sizes(cx, &z, grown, err);
}

int tlc_off_reserve_sizes(tlc_ctx *cx, const tlc_off_sizes *z, uint64_t *grown, tl_error *err) {
    *grown = 0;
    const size_t pneed = z->pstage;
    if (pneed > cx->pstage_bytes) {
        cudaFree(cx->pstage);
        cx->pstage = NULL;
        if (cudaMalloc((void **)&cx->pstage, pneed) != cudaSuccess) {
            cx->pstage_bytes = 0;
            return tl_fail(err, "TailorKV prefill copy of the host tier: %.2f MiB of GPU memory", (double)pneed / 1048576.0);
        }
        *grown += pneed - cx->pstage_bytes;
        cx->pstage_bytes = pneed;
    }
    if (!z->crow) return 0; /* a summary: no channel rows move */
    tlc_crow &r = cx->crow;
    if (!r.side) {
        CK(cudaStreamCreateWithFlags(&r.side, cudaStreamNonBlocking));
        CK(cudaEventCreateWithFlags(&r.ready, cudaEventDisableTiming));
        for (int b = 0; b < 2; b++) CK(cudaEventCreateWithFlags(&r.done[b], cudaEventDisableTiming));
    }
    const size_t need = z->crow, old = r.bytes;
    if (need <= old) return 0;
    for (int b = 0; b < 2; b++) {
        cudaFree(r.buf[b]);
        r.buf[b] = NULL;
    }
    r.bytes = 0;
    for (int b = 0; b < 2; b++)
        if (cudaMalloc((void **)&r.buf[b], need) != cudaSuccess)
            return tl_fail(err, "TailorKV channel-row buffers: 2 x %.2f MiB of GPU memory", (double)need / 1048576.0);
    *grown += 2 * (uint64_t)(need - old);
    r.bytes = need;
    return 0;
}

void tlc_crow_free(tlc_ctx *cx) {
    cudaFree(cx->pstage);
    cx->pstage = NULL;
    cx->pstage_bytes = 0;
    tlc_crow &r = cx->crow;
    if (r.side) cudaStreamSynchronize(r.side);
    for (int b = 0; b < 2; b++) {
        cudaFree(r.buf[b]);
        if (r.done[b]) cudaEventDestroy(r.done[b]);
    }
    if (r.ready) cudaEventDestroy(r.ready);
    if (r.side) cudaStreamDestroy(r.side);
    memset(&r, 0, sizeof r);
}

int tlc_off_prefetch(tlc_ctx *cx, tlc_off *o, const float *qpred, tl_error *err) {
    int lo, hi;
    candidates(o, &lo, &hi);
    o->pend = -1;
    if (o->sb != 0 || hi - lo <= 0 || o->topk >= hi - lo) return 0; /* nothing to move */
    tlc_crow &r = cx->crow;
    if (!r.side) return tl_fail(err, "TailorKV channel rows: no side stream (tlc_off_reserve)");
    CK(cudaEventRecord(r.ready, cx->stream)); /* qpred made, and the prompt's K written */
    CK(cudaStreamWaitEvent(r.side, r.ready, 0));
    off_chan_k<<<o->H, 256, sizeof(float) * 2 * o->dk, r.side>>>(qpred, NULL, o->kmax, o->G, o->dk, o->C, o->chan, NULL);
    TLC_LAUNCH_CHECK("TailorKV channels (prefetch)");
    const int b = r.next;
    r.next ^= 1;
    if (fetch_rows(cx, o, b, r.side, err)) return -1;
    CK(cudaEventRecord(r.done[b], r.side));
    o->pend = b;
    o->pend_cx = cx;
    return 0;
}

int tlc_off_decode(tlc_ctx *cx, tlc_off *o, const float *q, const float *qsel, bool predicted, const float *k,
                   const float *v, float *out, tl_error *err) {
    if (o->n_gen >= o->gcap)
        return tl_fail(err, "TailorKV on the GPU: more than %d generated tokens in a sparse layer (raise --cuda-opt gen-cap=N)",
                       o->gcap);
    cudaStream_t st = cx->stream;
    int lo, hi;
    candidates(o, &lo, &hi);
    const int n = o->n_host, S = lo, R = n - hi, cand = hi - lo;
    const bool all = o->topk >= cand;
    const bool prefetched = predicted && o->pend >= 0 && o->pend_cx == cx;
    int buf = -1;
    if (prefetched) { /* channels and their rows came on the side stream (tlc_off_prefetch) */
        buf = o->pend;
        CK(cudaStreamWaitEvent(st, cx->crow.done[buf], 0));
    }
    o->pend = -1;
    off_chan_k<<<o->H, 256, sizeof(float) * 2 * o->dk, st>>>(predicted ? qsel : q, q, o->kmax, o->G, o->dk, o->C,
                                                             prefetched ? NULL : o->chan, o->qbar);
    TLC_LAUNCH_CHECK("TailorKV channels");
    if (cand > 0 && !all) {
        if (o->sb == 0 && !prefetched) { /* no prediction: move the rows now, on this stream */
            buf = cx->crow.next;
            cx->crow.next ^= 1;
            if (fetch_rows(cx, o, buf, st, err)) return -1;
        }
        off_score_k<<<dim3((cand + 255) / 256, o->H), 256, 0, st>>>(o->sum_codes, o->row_words, o->sum_sz,
                                                                    buf >= 0 ? cx->crow.buf[buf] : NULL, o->capp, o->chan,
                                                                    o->qbar, o->dk, o->C, o->sb, o->cap, lo, cand, o->keys);
        TLC_LAUNCH_CHECK("TailorKV scores");
    }
    off_select_k<<<o->H, 1024, 0, st>>>(o->keys, o->cap, lo, cand, o->topk, all ? 1 : 0, o->sel, o->nsel, o->maxsel);
    TLC_LAUNCH_CHECK("TailorKV top-k");
    oattn_p p;
    p.q = q;
    p.knew = k;
    p.vnew = v;
    p.sk = o->sk;
    p.sv = o->sv;
    p.rk = o->rk;
    p.rv = o->rv;
    p.hk = o->dhk;
    p.hv = o->dhv;
    p.gk = o->gk;
    p.gv = o->gv;
    p.sel = o->sel;
    p.nsel = o->nsel;
    p.part = o->part;
    p.H = o->H;
    p.G = o->G;
    p.dk = o->dk;
    p.dv = o->dv;
    p.cap = o->cap;
    p.gcap = o->gcap;
    p.S = o->S;
    p.R = TL_MAX(o->R, 1);
    p.maxsel = o->maxsel;
    p.n_s = S;
    p.n_r = R;
    p.hi = hi;
    p.n_gen = o->n_gen;
    p.scale = o->scale;
    const int nsel_max = cand <= 0 ? 0 : all ? cand : o->topk;
    const int total = S + R + nsel_max + o->n_gen + 1;
    p.nspl = TL_MAX(1, TL_MIN(OFF_NSPL_MAX, (total + OFF_WARPS * 2 - 1) / (OFF_WARPS * 2)));
    const size_t smem = sizeof(float) * ((size_t)o->G * o->dk + (size_t)OFF_WARPS * o->G * (o->dv + 2));
    if (smem > 48 * 1024) return tl_fail(err, "TailorKV attention: %zu bytes of shared memory", smem);
    const dim3 grid(p.nspl, o->H);
    switch (o->dk) {
    case 64: off_attn_k<2, 2><<<grid, OFF_WARPS * 32, smem, st>>>(p); break;
    case 128: off_attn_k<4, 4><<<grid, OFF_WARPS * 32, smem, st>>>(p); break;
    case 256: off_attn_k<8, 8><<<grid, OFF_WARPS * 32, smem, st>>>(p); break;
    case 32: off_attn_k<1, 1><<<grid, OFF_WARPS * 32, smem, st>>>(p); break;
    default: return tl_fail(err, "TailorKV attention: head size %d (GPU: 32, 64, 128, 256)", o->dk);
    }
    TLC_LAUNCH_CHECK("TailorKV attention");
    off_merge_k<<<o->H * o->G, TL_MIN(o->dv, 256), 0, st>>>(o->part, o->G, o->dv, p.nspl, out);
    TLC_LAUNCH_CHECK("TailorKV merge");
    off_gen_k<<<o->H, 128, 0, st>>>(k, v, o->dk, o->dv, o->gcap, o->n_gen, o->gk, o->gv);
    TLC_LAUNCH_CHECK("TailorKV generated append");
    o->h2d_decode += (uint64_t)o->H * nsel_max * (o->dk + o->dv) * 2;
    o->steps++;
    if (!predicted) o->unpredicted++;
    o->n_gen++;
    return 0;
}

int tlc_off_last_selection(tlc_ctx *cx, const tlc_off *o, int *sel, int *nsel, int *maxsel, tl_error *err) {
    *maxsel = o->maxsel;
    CK(cudaMemcpyAsync(sel, o->sel, sizeof(int) * o->H * o->maxsel, cudaMemcpyDeviceToHost, cx->stream));
    CK(cudaMemcpyAsync(nsel, o->nsel, sizeof(int) * o->H, cudaMemcpyDeviceToHost, cx->stream));
    CK(cudaStreamSynchronize(cx->stream));
    return 0;
}
