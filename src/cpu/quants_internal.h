/* quants_internal.h: block layouts and kernel entry points shared by quants.c,
 * quants_kquants.c, quants_avx2.c and matmul.c. Not part of the public API.
 *
 * Layouts are byte-for-byte those of ggml (ggml-common.h): fp16 fields are stored as raw
 * uint16_t, and every struct is packed naturally (no padding) — checked by static asserts. */
#ifndef TL_QUANTS_INTERNAL_H
#define TL_QUANTS_INTERNAL_H

#include "quants.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define QK 32   /* values per block of the 32-wide formats */
#define QKK 256 /* values per super-block of the K formats */

typedef struct { uint16_t d; uint8_t qs[QK / 2]; } blk_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } blk_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_1;
typedef struct { uint16_t d; int8_t qs[QK]; } blk_q8_0;
typedef struct { uint16_t d, s; int8_t qs[QK]; } blk_q8_1; /* s = d * sum(qs) */
/* K-quants: 8 sub-blocks of 32 (q4_K, q5_K) with 6-bit scales/mins packed in 12 bytes. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QKK / 2]; } blk_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[QKK / 8]; uint8_t qs[QKK / 2]; } blk_q5_K;
/* q6_K: 16 sub-blocks of 16 with signed 8-bit scales. */
typedef struct { uint8_t ql[QKK / 2]; uint8_t qh[QKK / 4]; int8_t scales[QKK / 16]; uint16_t d; } blk_q6_K;
typedef struct { float d; int8_t qs[QKK]; int16_t bsums[QKK / 16]; } blk_q8_K;
/* w4g128 (tailor's own, type id 100): 128 values x = d * q + m, q in 0..15 (asymmetric; m is
 * the group minimum, i.e. minus zero-point times scale). qs[j] holds value j in its low nibble
 * and value j + 64 in its high nibble, so one 32-byte load yields the values of two 32-wide
 * activation blocks (j..j+31 and j+64..j+95). Dots pair it with q8_1 activations. */
#define QW4 128
typedef struct { uint16_t d, m; uint8_t qs[QW4 / 2]; } blk_w4g128;
/* Only the sizes of the unsupported K types are needed (the loader reports them). */
#define SIZEOF_Q2_K (QKK / 16 + QKK / 4 + 4)
#define SIZEOF_Q3_K (QKK / 8 + QKK / 4 + 12 + 2)

static_assert(sizeof(blk_q4_0) == 18, "q4_0 layout");
static_assert(sizeof(blk_q4_1) == 20, "q4_1 layout");
static_assert(sizeof(blk_q5_0) == 22, "q5_0 layout");
static_assert(sizeof(blk_q5_1) == 24, "q5_1 layout");
static_assert(sizeof(blk_q8_0) == 34, "q8_0 layout");
static_assert(sizeof(blk_q8_1) == 36, "q8_1 layout");
static_assert(sizeof(blk_q4_K) == 144, "q4_K layout");
static_assert(sizeof(blk_q5_K) == 176, "q5_K layout");
static_assert(sizeof(blk_q6_K) == 210, "q6_K layout");
static_assert(sizeof(blk_q8_K) == 292, "q8_K layout");
static_assert(sizeof(blk_w4g128) == 68, "w4g128 layout");

/* Round to nearest, ties to even, as ggml's nearest_int (valid for |f| < 2^22). */
static inline int tlq_nearest_int(float f) {
    float v = f + 12582912.f; /* 1.5 * 2^23: the integer lands in the low mantissa bits */
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* q4_K / q5_K scale and min of sub-block j (6 bits each, packed in 12 bytes). */
static inline void tlq_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *mn = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* ---- scalar references (quants.c, quants_kquants.c) ---- */
void tlq_quantize_q8_0_ref(const float *x, void *y, int64_t n);
void tlq_quantize_q8_1_ref(const float *x, void *y, int64_t n);
void tlq_quantize_q8_K_ref(const float *x, void *y, int64_t n);
void tlq_quantize_q4_K_ref(const float *x, void *y, int64_t n);
void tlq_quantize_q5_K_ref(const float *x, void *y, int64_t n);
void tlq_quantize_q6_K_ref(const float *x, void *y, int64_t n);
void tlq_dequantize_q4_K(const void *x, float *y, int64_t n);
void tlq_dequantize_q5_K(const void *x, float *y, int64_t n);
void tlq_dequantize_q6_K(const void *x, float *y, int64_t n);
void tlq_dequantize_q8_K(const void *x, float *y, int64_t n);
float tlq_vec_dot_q4_K_ref(int64_t n, const void *w, const void *x);
float tlq_vec_dot_q5_K_ref(int64_t n, const void *w, const void *x);
float tlq_vec_dot_q6_K_ref(int64_t n, const void *w, const void *x);
void tlq_quantize_w4g128_ref(const float *x, void *y, int64_t n);
void tlq_dequantize_w4g128(const void *x, float *y, int64_t n);
float tlq_vec_dot_w4g128_ref(int64_t n, const void *w, const void *x);

/* ---- kernel table (quants.c picks the entries for this CPU) ---- */
typedef float (*tlq_dot_fn)(int64_t n, const void *w, const void *x);
/* One weight row against 4 activation rows (x, x + stride, ...): the prefill kernel that
 * unpacks each weight block once and uses it 4 times. */
typedef void (*tlq_dot4_fn)(int64_t n, const void *w, const void *x, size_t x_stride, float out[4]);
typedef void (*tlq_quant_fn)(const float *x, void *y, int64_t n);
typedef void (*tlq_deq_fn)(const void *x, float *y, int64_t n);

typedef struct {
    tlq_dot_fn dot;        /* never NULL for supported types */
    tlq_dot4_fn dot4;      /* NULL: the caller loops dot over tokens */
    tlq_dot4_fn dot2;      /* 2 tokens (out[0], out[1]) for what dot4 leaves; NULL: dot per token */
    tlq_quant_fn quant_act; /* activation quantizer for vec_dot_type (NULL for f32) */
    tlq_deq_fn deq;        /* fast row dequantizer for the f32 prefill tiles (NULL: tl_dequantize_row) */
    bool avx2;             /* the AVX2 entries were chosen */
    bool avx512;           /* some AVX-512 VNNI entries were chosen (avx2 is then true too) */
    /* decode (a few tokens): dot over the "xa" activation layout (tlq_xa_size bytes per row)
     * that xa_from builds from a row of vec_dot_type blocks; NULL: use dot */
    tlq_dot_fn dot_xa;
    tlq_dot4_fn dot4_xa; /* 4 rows over the xa layout, each with dot_xa's bits */
    tlq_dot4_fn dot2_xa; /* the same for 2 rows (out[0], out[1]) */
    void (*xa_from)(const void *xq, void *xa, int64_t n);
} tlq_kernels;

/* Kernels for weight type t on this CPU, honouring the force-scalar switch. */
tlq_kernels tlq_get_kernels(tl_type t);

/* ---- AVX2/FMA/F16C kernels (quants_avx2.c); call only when the CPU has them ---- */
float tlq_dot_f32_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_f16_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_bf16_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_q4_0_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_q4_1_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_q5_0_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_q5_1_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_q8_0_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_q4_K_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_q5_K_avx2(int64_t n, const void *w, const void *x);
float tlq_dot_q6_K_avx2(int64_t n, const void *w, const void *x);
void tlq_dot4_q4_0_avx2(int64_t n, const void *w, const void *x, size_t xs, float out[4]);
void tlq_dot4_q4_1_avx2(int64_t n, const void *w, const void *x, size_t xs, float out[4]);
void tlq_dot4_q5_0_avx2(int64_t n, const void *w, const void *x, size_t xs, float out[4]);
void tlq_dot4_q5_1_avx2(int64_t n, const void *w, const void *x, size_t xs, float out[4]);
void tlq_dot4_q8_0_avx2(int64_t n, const void *w, const void *x, size_t xs, float out[4]);
float tlq_dot_w4g128_avx2(int64_t n, const void *w, const void *x);
void tlq_dot4_w4g128_avx2(int64_t n, const void *w, const void *x, size_t xs, float out[4]);
void tlq_dequantize_w4g128_avx2(const void *x, float *y, int64_t n);
void tlq_quantize_q8_0_avx2(const float *x, void *y, int64_t n);
void tlq_quantize_q8_1_avx2(const float *x, void *y, int64_t n);
void tlq_quantize_q8_K_avx2(const float *x, void *y, int64_t n);
/* Half -> float for a run of values (weight tiles in matmul). */
void tlq_f16_to_f32_avx2(const uint16_t *src, float *dst, int64_t n);
void tlq_bf16_to_f32_avx2(const uint16_t *src, float *dst, int64_t n);
/* Float GEMM tile: Y[t][o] = dot(A row o, B row t) for o < n_rows, t < n_tok, rows of
 * length k (A row stride lda floats, B row stride ldb floats, Y row stride ldy). */
void tlq_gemm_f32_avx2(int64_t k, const float *A, int64_t lda, int n_rows, const float *B,
                       int64_t ldb, int n_tok, float *Y, int64_t ldy);

/* ---- AVX-512 F/BW/VL + VNNI kernels (quants_avx512.c); call only when the CPU has them
 * and the OS saves ZMM state (tl_cpu_detect checks XCR0) ---- */
float tlq_dot_q4_K_avx512(int64_t n, const void *w, const void *x);
float tlq_dot_q5_K_avx512(int64_t n, const void *w, const void *x);
float tlq_dot_q6_K_avx512(int64_t n, const void *w, const void *x);
/* decode layout for the 32-wide formats (see quants_avx512.c): bytes per row of n values
 * (0 for types without one), builders from q8_0 / q8_1 rows and the dots over it */
size_t tlq_xa_size(tl_type t, int64_t n);
#define TLQ_XA_DECL(nm)                                                        \
    void tlq_xa_from_##nm##_avx512(const void *xq, void *xa, int64_t n);       \
    float tlq_dotxa_##nm##_avx512(int64_t n, const void *w, const void *xa);    \
    void tlq_dotxa4_##nm##_avx512(int64_t n, const void *w, const void *xa, size_t x_stride, float out[4]); \
    void tlq_dotxa2_##nm##_avx512(int64_t n, const void *w, const void *xa, size_t x_stride, float out[4]);
TLQ_XA_DECL(q4_0)
TLQ_XA_DECL(q4_1)
TLQ_XA_DECL(q5_0)
TLQ_XA_DECL(q5_1)
TLQ_XA_DECL(q8_0)
#undef TLQ_XA_DECL

#endif
