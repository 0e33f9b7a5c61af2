/* forward.cuh: the session and weight structures of the CUDA forward pass, and the host-side
 * pieces it is made of, which the batched step (batch.cu) runs too, so that both compute alike:
 *   weights.cu  the weights on the device (upload, bytes, the block-format workspace)
 *   linear.cu   the weight products (matrix-vector kernels for a token, cuBLAS for more)
 *   forward.cu  the session (constructor, KV caches, forward pass, eval, memory), small kernels
 *   plan.cu     the device memory plan (tl_cuda_plan_memory, --gpu-mem-budget)
 *   hooks.cu    the test hooks (cuda_test.h) */
#ifndef TL_CUDA_FORWARD_CUH
#define TL_CUDA_FORWARD_CUH

#include "backend.cuh"

#include <cublas_v2.h>

extern "C" {
#include "../model/model.h"
}

struct dmat {
    void *d;
    int wt;
    int qt; /* wt == WT_Q: the block format (tl_type) */
    int n_in, n_out;
};

struct dlayer {
    float *attn_norm, *ffn_norm, *attn_post_norm, *ffn_post_norm, *q_norm, *k_norm, *bq, *bk, *bv;
    dmat wq, wk, wv, wo, gate, up, down;
};

struct tlc_weights {
    int n_layer;
    bool widen; /* block formats widened to f16 at upload (--cuda-opt widen) */
    dmat tok_embd, output;
    float *output_norm;
    dlayer *L;
    uint64_t bytes, read_bytes;
};

struct tlc_prof;

/* ---- weights.cu ---- */
/* Device bytes of a matrix as tlc_upload_weights stores it (widen: block formats as f16). */
uint64_t tlc_mat_bytes(const tl_mat *t, bool widen);
/* Block-format workspace of a session (0 when no product reads a block format): the prefill
 * GEMM's f16 slab (*wdq_elems values: the largest such layer matrix, and at least 4096 rows of
 * the output projection, which goes through in slabs) and the decode's quantized input (int8
 * values + a float2 per 32, *xq_cap values) for TLC_MV_ROWS rows of the widest input. */
uint64_t tlc_ws_bytes(const tl_model *m, bool widen, size_t *wdq_elems, int *xq_cap);
/* m's weights on device 0: block formats with kernels as they are (o->widen: as f16), other
 * non-float types widened to f16; o->verbose says the bytes and seconds. NULL with err. */
tlc_weights *tlc_upload_weights(tl_model *m, const tl_cuda_opts *o, tl_error *err);

/* What a session holds: TLC_PART_KV the KV caches of one sequence (its stores, position and
 * RoPE frequencies), TLC_PART_WS the workspace of a forward pass over up to `chunk` rows
 * (activations, cuBLAS, the block-format slab, TailorKV's staging). tl_cuda_session_new makes
 * both; a batch's sequences (tl_cuda_session_new_kv) hold the KV part and the batch
 * (batch.cu) one workspace for all of them. */
enum { TLC_PART_KV = 1, TLC_PART_WS = 2 };

struct tl_cuda_session {
    tl_model *m;
    tlc_weights *w;
    int parts; /* TLC_PART_* */
    tlc_ctx cx;
    cublasHandle_t blas;
    int n_ctx, chunk, n_past;
    tlc_layer_kv *kv;
    tl_kv_layer_policy *pol; /* effective policy per layer */
    /* activations (f32 unless noted) */
    float *x, *xn, *q, *k, *v, *attn, *gate, *up, *tmp, *rope, *logits, *all_logits;
    size_t all_logits_rows;
    void *xb; /* GEMM operand in the weights' 16-bit type */
    uint16_t *wdq;     /* block-format weights dequantized for a prefill GEMM, wdq_elems values */
    size_t wdq_elems;
    uint64_t ws_bytes; /* wdq + the matvec's quantized input (cx.xq, cx.xd) */
    int32_t *tok;
    double *inv_freq; /* [2][n_rot/2] */
    float *qpred;     /* TailorKV: the next sparse layer's predicted query (decode), [2][q dim] by layer parity:
                       * a side-stream prefetch may still read one while the next is made */
    int qpred_for[2]; /* layer each half was made for (-1: none); layer il makes il+1's before its own
                       * attention, so two predictions are live at once */
    uint64_t act_bytes, kv_alloc, host_alloc;
    char dev_name[128];
    tl_cuda_opts opt; /* the options it was made with */
    tlc_prof *prof;   /* --cuda-opt prof */
};

/* The constructor behind tl_cuda_session_new (parts KV | WS) and tl_cuda_session_new_kv (KV);
 * WS alone is a batch's workspace for `chunk` rows (not bounded by n_ctx), without KV. */
tl_cuda_session *tlc_session_make(tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies, int parts,
                                  const tl_cuda_opts *o, tl_error *err);
/* o, or the defaults for NULL. */
const tl_cuda_opts *tlc_opts(const tl_cuda_opts *o);

/* ---- linear.cu ---- */
/* y (+)= M x for n rows xh (f16) of a block-format matrix: slabs of rows dequantized to f16
 * into wdq (wdq_elems values), each multiplied by cuBLAS. */
int tlc_qgemm(tlc_ctx *cx, cublasHandle_t blas, const dmat *M, const uint16_t *xh, int n, float *y, bool add, uint16_t *wdq,
              size_t wdq_elems, tl_error *err);
/* y = x rounded to f16, n values, on stream st. */
int tlc_to_f16(cudaStream_t st, const float *x, uint16_t *y, size_t n, tl_error *err);
/* The decode product's arguments for up to three matrices sharing x (their format and n_in). */
tlc_mv tlc_mv_of(int nseg, const dmat *const *W, const float *x, float *const *y, const float *const *bias, const int *add);
/* y_s (+)= W_s x (+ b_s) for up to three matrices sharing x and n_in, n rows: matrix-vector
 * kernels for one row (block formats: for up to TLC_QGEMM_MIN_ROWS rows, a row at a time),
 * else a GEMM over the n rows (cuBLAS; 16-bit operands). On g's stream and workspace. */
int tlc_linear(tl_cuda_session *g, int nseg, const dmat *const *W, const float *x, int n, float *const *y,
               const float *const *bias, const int *add, tl_error *err);
/* ---- forward.cu ---- */
/* One side (K or V) of a layer cache of cap tokens for n_kv heads of d values under policy p
 * (mirrors quant.c's side_init), allocated on the device (g->kv_alloc counts it); name ("K",
 * "V") for the errors. */
int tlc_side_setup(tl_cuda_session *g, kv_side *S, const tl_kv_side *p, tl_kv_kind kind, int d, int residual, int cap,
                   int n_kv, const char *name, tl_error *err);
/* out (+)= rmsnorm(x) * w, rows rows of dim (a block per row; in place is fine). */
int tlc_rmsnorm(tl_cuda_session *g, const float *x, const float *w, float *out, int rows, int dim, int add, tl_error *err);
/* g->x = the embeddings of g->tok's n tokens (gemma: times sqrt(n_embd)). */
int tlc_embed(tl_cuda_session *g, int n, tl_error *err);
/* cos/sin of positions pos0 .. pos0 + n - 1, both RoPE bases, into rope (rows of 2 x n_rot floats). */
int tlc_rope_table(tl_cuda_session *g, const double *inv_freq, int pos0, int n, float *rope, tl_error *err);
/* RoPE of n rows: q (nq heads per row) and, when k is not NULL, k (nk heads), row t by the
 * table's row t, base 0 (global) or 1 (sliding-window layers). */
int tlc_rope(tl_cuda_session *g, float *q, int nq, float *k, int nk, int n, int base, const float *rope, tl_error *err);
/* gate[i] = silu(gate[i]) * up[i] (glu 1) or gelu-tanh (glu 2), n values. */
int tlc_act(tl_cuda_session *g, float *gate, const float *up, size_t n, int glu, tl_error *err);

/* ---- plan.cu: parts of the device memory plan (tl_cuda_plan_memory), shared with the batch's
 * plan ---- */
uint64_t tlc_plan_weights(const tl_model *m, bool widen);
/* The device and host tiers of one session's KV at n_ctx tokens; the largest TailorKV
 * channel-row buffer and prefill copy its sparse layers need (*crow, *pstage: 0 when none),
 * *any_off whether a layer is sparse. */
int tlc_plan_kv(const tl_model *m, int n_ctx, const tl_kv_layer_policy *policies, int gen_cap, uint64_t *dev, uint64_t *host,
                uint64_t *crow, uint64_t *pstage, bool *any_off, tl_error *err);
/* The activation buffers a workspace for `rows` rows allocates (x .. tok, the 16-bit GEMM
 * operand, the logits of one row). */
uint64_t tlc_plan_rows(const tl_config *c, int rows);
/* The block-format workspace (wdq slab, quantized input) of a model. */
uint64_t tlc_plan_ws(const tl_model *m, bool widen);
/* The attention partials' allowance (grown on demand) and the CUDA context + cuBLAS reserve. */
#define TLC_PLAN_PARTIALS ((uint64_t)64 << 20)
#define TLC_PLAN_RESERVE ((uint64_t)512 << 20)
/* A plan against budget bytes: fails naming the part that does not fit and by how much. name:
 * the budget's ("--gpu-mem-budget"), what: what the KV is for ("8192 tokens", "16 slots of 8192
 * tokens"), rows: the activations'. */
int tlc_check_plan(const tl_device_plan *p, uint64_t budget, const char *name, const char *what, int rows, tl_error *err);

#endif
