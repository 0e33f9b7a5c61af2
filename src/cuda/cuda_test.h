/* cuda_test.h: the CUDA backend's hooks for tests and benchmarks (tests/cuda/test_cuda.c,
 * bench/bench_cuda_attn.c): one kernel family at a time on device 0, against host inputs, with
 * no model and no session. Not part of the product interface (cuda.h); builds without CUDA
 * link src/cuda/stub.c's versions, which fail saying so. */
#ifndef TL_CUDA_TEST_H
#define TL_CUDA_TEST_H

#include "cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Testing one layer's GPU KV cache alone: a cache with policy p (effective, as the session
 * would use it) and shape s on device 0; n_hist history rows kh/vh (host, kv.h layout) are
 * appended in chunks of `chunk` through the append/quantize path, then a block of m new
 * tokens (q, k, v host) is attended into out (host, [m][n_head*head_dim_v]). mode 0: the
 * kernels eval uses (decode.cu for m == 1 where it applies); 1: the general kernel only;
 * 2: as 0, but m == 1 on tensor cores (prefill_tc.cu) at any history length, for every format
 * that kernel takes (dense f16, per-token codes); 3: as 0, but per-token codes decode on
 * decode.cu's CUDA-core path instead of decode_mma.cu. */
int tl_cuda_layer_attend(const tl_kv_layer_policy *p, const tl_kv_shape *s, int n_hist, int chunk, const float *kh,
                         const float *vh, int m, const float *q, const float *k, const float *v, float *out, int mode,
                         tl_error *err);

/* Benchmarking prefill attention alone (bench/bench_cuda_attn.c): one layer of shape s (window
 * ignored) on device 0 with a dense f16 cache of n_past random rows, and a chunk of m random
 * rows (q, k, v) attending it; the attention call is run reps times after one warm-up and the
 * mean milliseconds per call go to *ms. tc 1: the kernels eval uses (prefill_tc.cu's tensor
 * cores where they apply), 0: the general kernel. out (host, [m][n_head*head_dim_v]) receives
 * the output when not NULL. */
int tl_cuda_attn_bench(const tl_kv_shape *s, int n_past, int m, int tc, int reps, double *ms, float *out, tl_error *err);

/* Testing one TailorKV sparse layer (policy kind TL_KV_OFFLOAD) alone on the GPU: n_hist
 * prompt rows (queries qh, keys kh, values vh, kv.h layout) in chunks of `chunk` (outputs to
 * outh, [n_hist][n_head*head_dim_v]), then n_dec decode steps: q/k/v per step (one token
 * each), qpred per step (NULL: no prediction), outputs to out [n_dec][n_head*head_dim_v],
 * the selection of every step to sel [n_dec][n_head_kv][maxsel] (maxsel = max(1, topk))
 * and nsel [n_dec][n_head_kv]. */
int tl_cuda_offload_layer_test(const tl_kv_layer_policy *p, const tl_kv_shape *s, int n_hist, int chunk, const float *qh,
                               const float *kh, const float *vh, float *outh, int n_dec, const float *q,
                               const float *qpred, const float *k, const float *v, float *out, int *sel, int *nsel,
                               tl_error *err);

/* Testing the products over a block-format matrix (a type with GPU kernels: q8_0, q4_0, q4_1,
 * q5_0, q5_1, q4_K, q5_K, q6_K, w4g128): W (host) holds n_out rows of n_in values of type t
 * in the GGUF layout, X (host) m rows of n_in. Each non-NULL output gets [m][n_out]: y_fast
 * the decode kernel (int8 input, dp4a) one row of X at a time, y_ref the reference kernel (a
 * thread per output, weights dequantized element by element, f32 input) one row at a time,
 * y_pre the prefill path (slabs of slab_rows rows dequantized to f16, cuBLAS GEMM) over all m
 * rows at once. */
int tl_cuda_qmatmul_test(int t, const void *W, int n_in, int n_out, const float *X, int m, int slab_rows, float *y_fast,
                         float *y_ref, float *y_pre, tl_error *err);

/* Testing the decode products over several rows at once (matvec.cu, the batched step's decode
 * rows): W (host, f32 values) n_out rows of n_in, stored on the device as wt (0 f32, 1 f16,
 * 2 bf16); glu 1/2: W2 (same shape) too and y = silu/gelu-tanh(W x) * (W2 x); bias: n_out
 * values or NULL (not with glu); y0: NULL, or m rows of n_out the product is added to (not with
 * glu). X: m rows of n_in. y_rows gets the several-row kernel's m rows, y_one tlc_matvec's, a
 * row at a time (what a sequence alone runs); the two must be equal bit for bit. */
int tl_cuda_matvec_rows_test(int wt, const float *W, const float *W2, int n_in, int n_out, const float *bias,
                             const float *y0, int glu, const float *X, int m, float *y_rows, float *y_one, tl_error *err);

/* The same for a block-format matrix (qmatvec.cu, tlc_qmatvec_rows): W, W2 (host) n_out rows of
 * n_in values of type t in the GGUF layout; y_rows the several-row kernel over the m rows, y_one
 * tlc_matvec a row at a time; equal bit for bit. */
int tl_cuda_qmatvec_rows_test(int t, const void *W, const void *W2, int n_in, int n_out, const float *bias,
                              const float *y0, int glu, const float *X, int m, float *y_rows, float *y_one, tl_error *err);

#ifdef __cplusplus
}
#endif

#endif
