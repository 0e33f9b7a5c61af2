/* quants.h: weight formats (ggml-compatible block layouts), conversion, dot products and
 * matrix multiplication on the CPU.
 *
 * Every block type has: a scalar reference (quantize, dequantize, vec_dot) and an AVX2/FMA
 * path chosen at run time; tests check each fast path against its reference. Layouts are
 * bit-exact with llama.cpp's (GGUF files written by either load in the other).
 *
 * Dot products pair a weight row with an activation row converted to the weight type's
 * "vec_dot_type": q8_0 for q4_0/q5_0/q8_0, q8_1 for q4_1/q5_1/w4g128, q8_K for the K-quants, f32 for
 * f32/f16/bf16 (half weights are widened in registers; activations stay f32 for accuracy). */
#ifndef TL_QUANTS_H
#define TL_QUANTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "../../include/tailor.h"

/* tl_type, the weight formats, and their names: include/tailor.h. */

typedef struct {
    const char *name;      /* "q4_K" etc, as llama.cpp prints */
    int block_size;        /* values per block (1 for f32/f16/bf16) */
    size_t type_size;      /* bytes per block */
    tl_type vec_dot_type;  /* activation format for tl_vec_dot */
    bool supported;        /* dequantize + vec_dot implemented */
} tl_type_traits;

/* NULL if the id is not a known type. Known-but-unsupported types return traits with
 * supported = false so the loader can say "tensor X has type q2_K, which tailor does not
 * support yet". */
const tl_type_traits *tl_type_info(int type_id);
/* Bytes of a row of n values; n must be a multiple of block_size (else returns 0). */
size_t tl_row_size(tl_type t, int64_t n);

/* Conversion. n is a multiple of the block size. */
void tl_dequantize_row(tl_type t, const void *src, float *dst, int64_t n);
/* Quantize a row with llama.cpp's reference RTN algorithm for that type (bit-exact with
 * its quantize_row_*_ref where that exists). Supports f32, f16, bf16, q4_0, q4_1, q5_0,
 * q5_1, q8_0, q8_1, q8_K, q4_K, q5_K, q6_K, and w4g128 (tailor's: min/max RTN per group). */
void tl_quantize_row(tl_type t, const float *src, void *dst, int64_t n);

/* w4g128 with a per-group clipping search: for each group of 128 it tries the ranges
 * [min, max] * r for r = 1, 1 - 0.5/n_grid, ... (n_grid ratios down to 0.5 + 0.5/n_grid) and keeps the one
 * whose dequantized values minimise sum_i imp[i] * (x[i] - q[i])^2. imp (n values, the
 * input channel importance, e.g. E[x_i^2] of the activations) may be NULL (uniform);
 * n_grid <= 1 is plain RTN (tl_quantize_row). */
void tl_quantize_row_w4g128_clip(const float *src, void *dst, int64_t n, const float *imp, int n_grid);


/* Dot product of a weight row (type t) with an activation row already converted to
 * tl_type_info(t)->vec_dot_type. Dispatches to the fastest path for this CPU. */
float tl_vec_dot(tl_type t, int64_t n, const void *w, const void *x);
/* The scalar reference of the same. */
float tl_vec_dot_ref(tl_type t, int64_t n, const void *w, const void *x);

/* CPU features detected at run time (cpuid + xgetbv). amx_int8: AMX tiles with int8 products,
 * their state enabled by the OS (a process must still ask Linux for it: tlq_amx_ready). */
typedef struct {
    bool avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512vnni, avx512bf16, avx_vnni, amx_int8;
} tl_cpu_features;
tl_cpu_features tl_cpu_detect(void);
/* The one SIMD dispatcher every kernel table follows (weights, vector ops, KV stores): SCALAR
 * under TAILOR_FORCE_SCALAR=1 or tl_quants_force_scalar (the reference path, for debugging),
 * else AVX2 where the CPU has AVX2+FMA+F16C, AVX512 where it also has AVX-512 F/BW/VL + VNNI
 * with ZMM state saved, unless TAILOR_NO_AVX512=1 or tl_quants_disable_avx512. Tables are
 * picked when a store or session is made. */
typedef enum { TL_SIMD_SCALAR, TL_SIMD_AVX2, TL_SIMD_AVX512 } tl_simd_level;
tl_simd_level tl_simd_level_get(void);
/* Force the scalar reference everywhere (for tests / TAILOR_FORCE_SCALAR=1 env). */
void tl_quants_force_scalar(bool on);
/* Keep the AVX2 kernels even where AVX-512 VNNI ones exist (benchmarks / tests compare the
 * two; env TAILOR_NO_AVX512=1 does the same from the start). */
void tl_quants_disable_avx512(bool on);

struct tl_pool;

/* Y[t][o] = sum_i W[o][i] * X[t][i] for t < n_tok, o < n_out.
 *  W: n_out rows of n_in values of type wt (row stride tl_row_size(wt, n_in)).
 *  X: n_tok rows of n_in floats (row stride n_in). Y: n_tok rows, row stride ldy floats.
 * Converts X to the vec_dot_type once, then tiles rows x tokens across the pool's threads
 * so each weight row is read once per tile of tokens. `scratch` (may be NULL: then it
 * allocates) must hold tl_matmul_scratch_size(wt, n_in, n_tok) bytes. */
size_t tl_matmul_scratch_size(tl_type wt, int64_t n_in, int64_t n_tok);
void tl_matmul(struct tl_pool *pool, tl_type wt, const void *W, int64_t n_in, int64_t n_out,
               const float *X, int64_t n_tok, float *Y, int64_t ldy, void *scratch);

/* A weight matrix's copy in the integer GEMM kernels' x16 form (src/cpu/qpack.h: q4_0, q4_1, q8_0,
 * q4_K, q6_K), made on the first tl_matmul_w that runs it on a SIMD CPU (the pool's threads
 * pack it; a mutex makes concurrent first calls pack once). The model owns one slot per matrix
 * whose type has the form (tl_wpack_wanted). */
typedef struct tl_wpack tl_wpack;
bool tl_wpack_wanted(tl_type t, int64_t n_in);
/* release_src: the matrix lives in a read-only file mapping (a model's GGUF), whose pages the
 * packer releases once the copy is made (tl_release_mapped_pages): afterwards the copy is the
 * only form read, and the process holds it instead of the file's bytes. Never for memory
 * the caller wrote. */
tl_wpack *tl_wpack_new(bool release_src);
void tl_wpack_free(tl_wpack *p);
uint64_t tl_wpack_bytes(const tl_wpack *p); /* bytes of the packed copy (0 until made) */
bool tl_wpack_released(const tl_wpack *p);  /* made, and the source's pages released */
/* Row r in the weights' own layout (tl_row_size bytes) from the copy: false until it is made. */
bool tl_wpack_get_row(const tl_wpack *p, int64_t r, void *dst);
/* Make the copy now (the pool's threads pack it) where this CPU's kernels use it
 * (tlq_pack_applies); nothing when it exists or the SIMD level is scalar. */
void tl_wpack_make(tl_wpack *p, struct tl_pool *pool, tl_type t, const void *W, int64_t n_in, int64_t n_out);

/* tl_matmul_w's flags. TL_MM_Q8: round the activations to q8 and run the integer kernels for
 * any number of rows (types with an x16 form), as for decode rows; without it, 32 rows or more
 * take the f32 tiles (weights widened, activations as they are), as tl_matmul does. */
enum { TL_MM_Q8 = 1 };

/* tl_matmul for a matrix with a pack slot (NULL: tl_matmul exactly). Below 32 rows, or with
 * TL_MM_Q8, types with an x16 form run the x16 kernels: each 64-byte piece of 16 weight rows is
 * unpacked once for every activation row of the call, and each row's result does not depend
 * on the other rows of the call (nor on the SIMD level: the scalar, AVX2 and AVX-512 kernels
 * give the same bits). `scratch` must hold tl_matmul_scratch_size(wt, n_in, n_tok) bytes. */
void tl_matmul_w(struct tl_pool *pool, tl_wpack *pack, tl_type wt, const void *W, int64_t n_in, int64_t n_out,
                 const float *X, int64_t n_tok, float *Y, int64_t ldy, void *scratch, unsigned flags);
/* Several matrices over the same rows X of n_in values: tl_matmul_w for each, except that where
 * all of them run the x16 kernels of one activation layout (q4_0 / q4_1 / q8_0, or q4_K / q6_K)
 * the rows are rounded once and every matrix's tasks share one pass of the pool (the same
 * results). scratch: the largest tl_matmul_scratch_size of the jobs. At most 8 jobs share. */
typedef struct {
    tl_wpack *pack;
    tl_type type;
    const void *W;
    int64_t n_out;
    float *Y;
    int64_t ldy;
} tl_mm_job;
void tl_matmul_w_multi(struct tl_pool *pool, const tl_mm_job *jobs, int n_jobs, int64_t n_in, const float *X,
                       int64_t n_tok, void *scratch, unsigned flags);
/* tl_matmul_rounded_rows for tl_matmul_w with these flags (INT64_MAX for an x16 type under
 * TL_MM_Q8, and for a matrix without a pack slot pass has_pack false). */
int64_t tl_matmul_rounded_rows_w(tl_type wt, bool has_pack, unsigned flags);

/* The most rows for which tl_matmul rounds the activations to the weight type's dot format
 * (the integer kernels' q8 blocks); a call with more rows multiplies in f32. 0 when it never
 * rounds (float weights), INT64_MAX when it always does (no AVX2 kernel). Rows are independent
 * within either regime, so rows of several sequences batched into calls of one regime each get
 * what each sequence would get alone (up to the order of float additions). */
int64_t tl_matmul_rounded_rows(tl_type wt);

/* Gather one row of a (possibly quantized) matrix into floats (token embeddings). */
void tl_get_row(tl_type t, const void *W, int64_t n_in, int64_t row, float *dst);

#endif
