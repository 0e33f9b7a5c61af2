/* qpack.h: weight matrices repacked 16 rows at a time for the integer GEMM kernels.
 *
 * The CPU matmul of q4_0, q4_1, q8_0, q4_K and q6_K weights runs on a copy of the matrix in
 * "x16" form: groups of 16 output rows (the last one padded with zero rows), and within a
 * group one tile per block column (32 inputs for the 32-wide formats, 256 for the K-quants)
 * holding the 16 rows' scales, then their quants interleaved 4 bytes at a time:
 *
 *     chunk k (64 bytes) = row 0 bytes [4k, 4k+4), row 1 bytes [4k, 4k+4), ... row 15 ...
 *
 * so one 64-byte load gives, in int32 lane r, four quants of row r, and one vpdpbusd against
 * four activation bytes broadcast to every lane does a 4-input step of 16 dot products at once.
 * Each weight chunk is unpacked once per step and used for every activation row of the call,
 * and an activation row is read as broadcasts, so a call over N rows costs little more than
 * one over a single row while the weights come from memory (decode is bound by them).
 *
 * The activations are rounded to q8 blocks exactly as the single-row kernels round them
 * (tl_quantize_row's q8_0 / q8_1 / q8_K bytes), then laid out for the kernels (tlq_xp_*).
 * Every kernel (scalar reference, AVX2, AVX-512 VNNI) computes each block's integer sum
 * exactly and then the same float operations in the same order:
 *
 *     q4_0, q8_0:  f = fma(float(isum_b), dw * dx_b, f)                      y = f
 *     q4_1:        f as above, m = fma(mw, sx_b, m)  (sx = q8_1's d * sum)   y = f + m
 *     q4_K:        per super-block: isum = sum_j sc_j * isum_j, mins = sum_j mn_j * bsum_j;
 *                  f = fma(float(isum), d * dx, f), m = fma(float(mins), dmin * dx, m)   y = f - m
 *     q6_K:        isum = sum_s sc_s * (isum_s - 32 * bsum_s); f = fma(float(isum), d * dx, f)
 *
 * so all of them give the same bits, for any number of activation rows in a call and any
 * split of the rows between calls (tests/cpu/test_quants.c checks both). */
#ifndef TL_QPACK_H
#define TL_QPACK_H

#include "quants.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLQ_PACK_ROWS 16

typedef struct {
    tl_type type;     /* the weights' own type */
    int64_t n_in, n_out;
    int64_t n_groups; /* ceil(n_out / 16) */
    int64_t n_cols;   /* block columns: n_in / 32, or n_in / 256 for the K-quants */
    size_t tile;      /* bytes per (group, column) tile */
    uint8_t *data;    /* n_groups * n_cols tiles, group after group */
    size_t bytes;     /* tlq_pack_bytes: what the data takes (an mmap is this, page-rounded) */
    bool huge;        /* data is an mmap (MADV_HUGEPAGE), not tl_amalloc */
} tlq_packed;

/* Whether weights of type t with n_in inputs have an x16 form (q4_0, q4_1, q8_0, q4_K, q6_K). */
bool tlq_pack_supported(tl_type t, int64_t n_in);
/* Whether this CPU's kernels run t's x16 form (supported, and an AVX2 or AVX-512 kernel: none
 * under the scalar level): the one rule for whether a matrix gets a packed copy, for the packer
 * (tl_wpack_make, tl_matmul_w) and the planner's projection of it (engine/plan.c). */
bool tlq_pack_applies(tl_type t, int64_t n_in);
/* Bytes of the x16 form of n_out rows of n_in values of type t (0 when t has none): tiles of 16
 * rows, the last group padded with zero rows; the same bytes per block as the file's except
 * q4_K (148 for 144: its 6-bit scales and mins unpacked). tlq_pack_alloc allocates this, and the
 * planner counts it. */
size_t tlq_pack_bytes(tl_type t, int64_t n_in, int64_t n_out);
/* Bytes of one tile of type t (0 when t has no x16 form). */
size_t tlq_pack_tile_bytes(tl_type t);
/* Allocate the x16 form of W (n_out rows of n_in values of type t, row stride tl_row_size);
 * groups [g0, g1) are filled by tlq_pack_groups (the caller may split them across threads).
 * Returns NULL when t has no x16 form or memory is short. */
tlq_packed *tlq_pack_alloc(tl_type t, int64_t n_in, int64_t n_out);
void tlq_pack_groups(tlq_packed *p, const void *W, int64_t g0, int64_t g1);
void tlq_pack_free(tlq_packed *p);
/* Rebuild row r in the weights' own layout (tl_row_size bytes), e.g. to dequantize it. */
void tlq_pack_get_row(const tlq_packed *p, int64_t r, void *dst);

/* Activation rows for the kernels: bytes per row of n values (a multiple of 64), and the
 * builder from a row of the weight type's vec_dot_type blocks (q8_0 / q8_1 / q8_K). The rows
 * are one layout per family (1: q4_0, q4_1, q8_0, built from q8_1 blocks for all three;
 * 2: q4_K, q6_K; 0: none), shared by the matrices of a family over the same inputs. */
int tlq_xp_family(tl_type t);
size_t tlq_xp_row_bytes(tl_type t, int64_t n);
/* A row's layout (the one rule its writers and the kernels read by): n int8 codes, then at
 * tlq_xp_scales_at(n) the nc per-block scales (float), then the family's other words
 * (family 1: nc sums, nc scaled sums; family 2: the q8_K block sums). */
static inline size_t tlq_xp_scales_at(int64_t n) { return ((size_t)n + 63) & ~(size_t)63; }
typedef struct {
    const int8_t *q;
    const float *d;
    const int32_t *aux; /* after the nc scales */
} tlq_xp_view;
/* Row j of the activation rows at xp, xs bytes apart, of n values in nc blocks. */
static inline tlq_xp_view tlq_xp_row(const uint8_t *xp, size_t xs, int j, int64_t n, int64_t nc) {
    const uint8_t *r = xp + (size_t)j * xs;
    const float *d = (const float *)(r + tlq_xp_scales_at(n));
    return (tlq_xp_view){(const int8_t *)r, d, (const int32_t *)(d + nc)};
}
void tlq_xp_from_q8(tl_type t, const void *xq, void *xp, int64_t n);
/* The same row straight from n floats (the bytes of the family's reference quantizer, q8_1 or
 * q8_K, then tlq_xp_from_q8), AVX-512; tlq_xp_quantize picks it or that path. */
void tlq_xp_quantize_avx512(tl_type t, const float *x, void *xp, int64_t n);

/* Y[i][16g + r] (row stride ldy floats) for activation rows i < n_x (xp rows x_stride bytes
 * apart) and groups g in [g0, g1), rows 16g + r < n_out only. */
typedef void (*tlq_gemm_fn)(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride,
                            int64_t n_x, float *Y, int64_t ldy);
/* The kernel for p's type on this CPU (NULL when the SIMD level is scalar: the caller keeps
 * its reference path), and each implementation by name for the tests. */
tlq_gemm_fn tlq_gemm_kernel(tl_type t);
void tlq_gemm_ref(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x,
                  float *Y, int64_t ldy);
void tlq_gemm_avx2(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x,
                   float *Y, int64_t ldy);
void tlq_gemm_avx512(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x,
                     float *Y, int64_t ldy);
/* AMX tiles for calls of 16 or more activation rows (tlq_gemm_avx512 for fewer), qpack_amx.c;
 * only where tlq_amx_ready(): the CPU has AMX-INT8, the dispatch level is AVX-512, TAILOR_NO_AMX
 * is unset, and Linux granted the process the tile state (asked once, on the first call). */
bool tlq_amx_ready(void);
void tlq_gemm_amx(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x,
                  float *Y, int64_t ldy);

#endif
