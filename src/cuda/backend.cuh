/* backend.cuh: host-side declarations shared by forward.cu and attn.cu. */
#ifndef TL_CUDA_BACKEND_CUH
#define TL_CUDA_BACKEND_CUH

#include <cuda_runtime.h>

extern "C" {
#include "../base/common.h"
#include "cuda.h"
#include "../cpu/quants.h"
}
#include "kernels.cuh"

/* weight element types on the device: f32, f16, bf16, or WT_Q: a GGUF block format kept as it
 * is in the file (its tl_type beside it; qmatvec.cu) */
enum { WT_F32 = 0, WT_F16 = 1, WT_BF16 = 2, WT_Q = 3 };

/* Element i of a weight array of type WT, as f32. */
template <int WT>
__device__ __forceinline__ float ldw(const void *p, size_t i) {
    if (WT == WT_F32) return ((const float *)p)[i];
    if (WT == WT_F16) return h2f(((const uint16_t *)p)[i]);
    return bf2f(((const uint16_t *)p)[i]);
}

#define TLC_QMAX 64 /* queries (rows x GQA group) per attention block */

/* TailorKV channel-row prefetch (offload.cu, summary 0): a side stream, and two device buffers
 * shared by all sparse layers (prefetches alternate them), each [H][C][capp] f16. */
struct tlc_crow {
    cudaStream_t side;
    cudaEvent_t ready;   /* recorded on the main stream before a prefetch: its inputs are there */
    cudaEvent_t done[2]; /* buffer b filled */
    uint16_t *buf[2];
    size_t bytes; /* of each buffer */
    int next;     /* the buffer the next fetch takes */
};

/* Per-session device context. */
struct tlc_ctx {
    cudaStream_t stream;
    int n_sm;
    size_t smem_optin;    /* largest dynamic shared memory a block may ask for */
    /* kernel switches, from the options (tl_cuda_opts, --cuda-opt; ctx_init in forward.cu) */
    bool safe;            /* safe: plain attention loops (no register prefetch, no blocking) */
    bool old_decode;      /* no-decode (or safe): decode uses the general attention kernel (decode.cu off) */
    int dec_minb;         /* dec-minb=2|3: head_dim-128 decode kernels built for that many blocks/SM (0: by format) */
    bool no_tc;           /* no-tc (or safe): prefill chunks use the general attention kernel (prefill_tc.cu off) */
    int dec_tc_from;      /* f16 decode attention on tensor cores (prefill_tc.cu, m = 1) from this history length
                           * on (0: never); dec-tc=N, always (1), never (0); default TLC_DEC_TC_FROM */
    bool dec_tc_quant;    /* per-token codes too (dec-tc=always; off by default: decode_mma.cu is faster there) */
    bool no_dec_mma;      /* no-dec-mma: per-token codes decode on decode.cu's CUDA-core path, not decode_mma.cu */
    bool no_fuse;         /* no-fuse (or safe): the decode GLU activation, and rmsnorm's quantized output, as
                           * separate kernels */
    bool no_pdl;          /* no-pdl (or safe): kernels launched without programmatic dependent launch */
    bool no_batch_attn;   /* no-batch-attn (or safe): a batched step's one-token rows attend and append
                           * one sequence at a time (tlc_attn_decode_many, tlc_kv_append_many off) */
    int8_t *xq;           /* quantized-weight products: the input as int8 blocks of 32 ... */
    float2 *xd;           /* ... and (scale, scale * sum) per block (qmatvec.cu) */
    int xq_cap;           /* values xq holds */
    const float *xq_of;   /* xq/xd already hold this input (set by the caller that quantized it, e.g.
                           * the fused rmsnorm + quantize, and cleared by it): products of it skip
                           * quantize-activations. NULL: every product quantizes its own input */
    void *scratch;        /* attention partials, grown on demand */
    size_t scratch_bytes;
    tlc_crow crow;
    uint16_t *pstage;     /* TailorKV prefill: one sparse layer's host-tier K and V copied to the device
                           * ([H][cap][dk], then [H][cap][dv]), shared by all sparse layers */
    size_t pstage_bytes;
};

struct tlc_off; /* TailorKV sparse layer (offload.cu), NULL for other layers */

struct tlc_layer_kv {
    kv_side k, v;
    tlc_off *off;
    int n_head, n_head_kv, window;
    float scale;
};

#define TLC_LAUNCH_CHECK(what)                                                                            \
    do {                                                                                                  \
        cudaError_t e_ = cudaGetLastError();                                                              \
        if (e_ != cudaSuccess) return tl_fail(err, "CUDA kernel %s: %s", what, cudaGetErrorString(e_)); \
    } while (0)

int tlc_scratch(tlc_ctx *cx, size_t bytes, tl_error *err);

/* Decode matrix-vector products (matvec.cu): y[s] = W[s] x (+ bias, + y when add) for nseg
 * matrices of n_in columns sharing x. glu 1/2: y[0] = silu/gelu-tanh(W[0] x) * (W[1] x).
 * Returns 1 when the glu fusion cannot run for this shape (the caller uses act_k). */
struct tlc_mv {
    const void *W[3];
    const float *bias[3];
    float *y[3];
    int n_out[3];
    int add[3];
    int nseg, n_in, wt, glu;
    int qt; /* wt == WT_Q: the block format (tl_type) of every W[s] */
    const float *x;
};
int tlc_matvec(tlc_ctx *cx, const tlc_mv *a, tl_error *err);
/* The shape the fused gate/up product takes: two matrices of one shape, no bias, no residual add
 * (the products return 1 for any other glu request, before any launch). */
static inline bool tlc_glu_shape(const tlc_mv *a) {
    return a->nseg == 2 && a->n_out[0] == a->n_out[1] && !a->bias[0] && !a->bias[1] && !a->add[0];
}

/* tlc_matvec over nr rows of x, ldx floats apart (outputs n_out[s] apart), TLC_MV_ROWS rows
 * per launch sharing each weight load (a warp per 4 output rows sharing each input load):
 * every row gets the bits tlc_matvec gives it alone. Block formats: tlc_qmatvec_rows (ldx
 * n_in). 1 when glu cannot be fused (as tlc_matvec). */
#define TLC_MV_ROWS 8
int tlc_matvec_rows(tlc_ctx *cx, const tlc_mv *a, int nr, int ldx, tl_error *err);

/* ---- weights in GGUF block formats (qmatvec.cu) ---- */
extern "C" bool tlc_qtype_has_kernels(int t); /* q8_0 q4_0 q4_1 q5_0 q5_1 q4_K q5_K q6_K w4g128 */
/* tlc_matvec for wt == WT_Q: quantizes x into cx->xq/xd (n_in <= xq_cap; skipped when x ==
 * cx->xq_of), then the dp4a kernel. */
int tlc_qmatvec(tlc_ctx *cx, const tlc_mv *a, tl_error *err);
/* tlc_qmatvec over nr rows of x (n_in apart; outputs n_out[s] apart), TLC_MV_ROWS rows per
 * launch sharing each weight load (their inputs quantized together: xq_cap >= TLC_MV_ROWS n_in);
 * every row gets the bits tlc_qmatvec gives it alone. 1 when glu cannot be fused. */
int tlc_qmatvec_rows(tlc_ctx *cx, const tlc_mv *a, int nr, tl_error *err);
/* The reference: y = W x, a thread per row, weights dequantized element by element (tests). */
int tlc_qmatvec_ref(tlc_ctx *cx, int qt, const void *W, int n_in, int n_out, const float *x, float *y, tl_error *err);
/* Rows r0 .. r0 + nr - 1 of W to f16, row-major [nr][n_in] (the prefill GEMM's operand). */
int tlc_qdequant(tlc_ctx *cx, int qt, const void *W, int n_in, int r0, int nr, uint16_t *out, tl_error *err);
/* x[t] = row tok[t] of E * scale, t < n. */
int tlc_qembed(tlc_ctx *cx, int qt, const void *E, int n_embd, const int32_t *tok, int n, float scale, float *x,
               tl_error *err);

/* Programmatic dependent launch (sm_90): a kernel that runs pdl_trigger() lets the next kernel
 * in the stream, when that one is launched with the PDL attribute (tlc_matvec), start before
 * it ends; such a kernel runs pdl_wait() before it reads anything its predecessors write
 * (the wait returns when they have completed and their writes are visible). */
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* kern<<<grid, block, smem, st>>>(args), with the PDL attribute when pdl: the kernel may then
 * be scheduled while its predecessor runs, so it must run pdl_wait() before reading what the
 * kernels before it wrote (and it does not hurt a kernel launched plainly). */
template <typename... KArgs, typename... Args>
static inline cudaError_t tlc_launch(bool pdl, void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                                     Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kern, args...);
}
size_t tlc_attn_smem(int nqmax, int dk, int dv);
int tlc_attention(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, int m, const float *q, const float *knew,
                  const float *vnew, float *out, tl_error *err);
/* Decode (one new token) attention, decode.cu: 0 done, -1 error, 1 not handled (format or
 * head size without a decode kernel: use tlc_attention's general kernel). */
int tlc_attn_decode(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, const float *q, const float *knew, const float *vnew,
                    float *out, tl_error *err);
/* The merge of decode splits (decode.cu): part [Hkv][n_split][G][D + 2] = (max, sum, O[D]) in
 * log2 units, plus the new token (q scaled by scale, knew, vnew), into out [Hkv*G][D]. */
int tlc_dec_merge(tlc_ctx *cx, int D, int Hkv, int G, int n_split, const float *part, const float *q, float scale,
                  const float *knew, const float *vnew, float *out, tl_error *err);
/* One sequence's one-token row of a layer (tlc_attn_decode_many). */
struct tlc_dec_row {
    const tlc_layer_kv *L;
    int n_past;
    const float *q, *knew, *vnew;
    float *out;
};
/* The one-token rows of several sequences of one layer (the batched step), each attended
 * exactly as tlc_attention would attend it alone: the rows that take decode.cu's kernel there
 * (done[i] set) go in one launch per DEC_SET rows of one format (dec_many_k), the others are
 * left to the caller. 0, or -1 with err. */
int tlc_attn_decode_many(tlc_ctx *cx, int n, const tlc_dec_row *rows, bool *done, tl_error *err);
#define TLC_MANY 64 /* rows tlc_attn_decode_many groups at once (larger n: windows of this many; host arrays on the stack) */
/* Whether decode_mma.cu takes a layer's one-token attention at n_past (per-token codes). */
bool tlc_dec_mma_takes(const tlc_ctx *cx, const tlc_layer_kv *L, int n_past);
/* decode_mma.cu's part of tlc_attn_decode_many: of the rows not yet done, those that
 * decode_mma.cu takes alone, in one launch per DQ_SET of one variant (dq_many_k), done[i] set.
 * n <= TLC_MANY. */
int tlc_attn_decode_mma_many(tlc_ctx *cx, int n, const tlc_dec_row *rows, bool *done, tl_error *err);
/* One sequence's merge of decode splits (tlc_dec_merge's arguments), for tlc_dec_merge_many. */
struct tlc_merge_row {
    const float *part, *q, *knew, *vnew;
    float *out;
    int Hkv, G, n_split;
    float scale;
};
/* tlc_dec_merge of several sequences of one head size, a launch per DEC_SET rows. */
int tlc_dec_merge_many(tlc_ctx *cx, int D, int n, const tlc_merge_row *rows, tl_error *err);
/* Decode over per-token codes on tensor cores (decode_mma.cu): 0 done, -1 error, 1 not handled. */
int tlc_attn_decode_mma(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, const float *q, const float *knew,
                        const float *vnew, float *out, tl_error *err);
#define TLC_DEC_TC_FROM 65536 /* measured crossover vs decode.cu on an H100 (docs/cuda.md) */

/* Prefill (m > 1 rows; m = 1 from cx->dec_tc_from) attention on tensor cores, prefill_tc.cu: dense
 * f16 K and V, no window, head_dim 64 or 128. 0 done, -1 error, 1 not handled (use the general kernel). */
int tlc_attn_prefill_tc(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, int m, const float *q, const float *knew,
                        const float *vnew, float *out, tl_error *err);
int tlc_kv_append(tlc_ctx *cx, tlc_layer_kv *L, int n_past, int m, const float *k, const float *v, tl_error *err);
/* The one-token appends of several sequences (the batched step): the rows whose K and V are
 * dense f16 stores of the same shape go in one launch per APP_SET rows (append_many_k, the same
 * values as write_rows_k), done[i] set; the others are left to tlc_kv_append. */
int tlc_kv_append_many(tlc_ctx *cx, int n, tlc_layer_kv *const *L, const int *n_past, const float *const *k,
                       const float *const *v, bool *done, tl_error *err);


/* ---- TailorKV sparse layers on the GPU (offload.cu) ---- */
struct tlc_off_sizes {
    uint64_t dev, host; /* bytes allocated on the device / pinned mapped host memory */
    uint64_t crow;      /* summary 0: bytes of one channel-row buffer (two are shared by all layers) */
    uint64_t pstage;    /* the prefill copy of the host tier (one buffer shared by all layers) */
};
/* Sizes a layer with these parameters allocates for n_ctx tokens (budget plan; no allocation).
 * gen_cap: generated tokens held on the device (--cuda-opt gen-cap; 0 = 4096). */
int tlc_off_sizes_of(const tl_kv_offload_params *p, int n_head, int n_head_kv, int dk, int dv, int n_ctx, int gen_cap,
                     tlc_off_sizes *out, tl_error *err);
int tlc_off_new(tlc_off **out, const tl_kv_offload_params *p, int n_head, int n_head_kv, int dk, int dv, int n_ctx,
                int gen_cap, float scale, tl_error *err);
void tlc_off_free(tlc_off *o);
/* Make cx's shared TailorKV buffers large enough for layer o: the prefill copy of its host
 * tier, and (summary 0) the channel-row buffers and side stream; call for every sparse layer
 * before evaluating. *grown: device bytes added. */
int tlc_off_reserve(tlc_ctx *cx, const tlc_off *o, uint64_t *grown, tl_error *err);
/* The same for a layer of these sizes (tlc_off_sizes_of), before any exists (a batch). */
int tlc_off_reserve_sizes(tlc_ctx *cx, const tlc_off_sizes *z, uint64_t *grown, tl_error *err);
void tlc_crow_free(tlc_ctx *cx);
/* Summary 0, decode: pick layer o's channels from its predicted query and move their rows on
 * the side stream (call when the prediction is made, before the previous layer's attention);
 * the layer's next tlc_off_decode with predicted = true waits for and uses them. */
int tlc_off_prefetch(tlc_ctx *cx, tlc_off *o, const float *qpred, tl_error *err);
void tlc_off_reset(tlc_ctx *cx, tlc_off *o);
/* Prefill chunk (m > 1): exact attention over the host tier + the generated tokens + the chunk,
 * then the chunk joins the host tier. */
int tlc_off_prefill(tlc_ctx *cx, tlc_off *o, int m, const float *q, const float *k, const float *v, float *out,
                    tl_error *err);
/* Append m prompt rows without attention (tl_cuda_fill_random). */
int tlc_off_append_prompt(tlc_ctx *cx, tlc_off *o, int m, const float *k, const float *v, tl_error *err);
/* Decode (one token): channels from qsel (predicted query, or the real one), summary scores,
 * top-k, zero-copy gather, exact attention; then the token joins the generated ones. */
int tlc_off_decode(tlc_ctx *cx, tlc_off *o, const float *q, const float *qsel, bool predicted, const float *k,
                   const float *v, float *out, tl_error *err);
struct tlc_off_info {
    int n_host, n_gen;
    uint64_t dev, host, h2d_decode, h2d_chan, h2d_prefill, d2h; /* h2d_decode: top-k rows; h2d_chan: channel rows */
    int64_t steps, unpredicted;
};
void tlc_off_info_of(const tlc_off *o, tlc_off_info *out);
/* Testing: copy the last selection (host indices) of every head: sel [H][maxsel], nsel [H]. */
int tlc_off_last_selection(tlc_ctx *cx, const tlc_off *o, int *sel, int *nsel, int *maxsel, tl_error *err);

#endif
