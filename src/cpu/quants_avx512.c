/* quants_avx512.c: AVX-512 (F/BW/VL) + VNNI kernels, chosen at run time by tlq_get_kernels
 * when the CPU has them and the OS saves ZMM state (the file is compiled for baseline
 * x86-64; every function carries its own target attribute).
 *
 * K-quants (q4_K, q5_K, q6_K x q8_K): 64 values per maddubs, the sub-block scales applied
 * and accumulated by one vpdpwssd, scales/mins unpacked with 32-bit word arithmetic and the
 * min terms by one vpmaddwd: ~2.5x the AVX2 dots.
 * 32-wide formats (q4_0, q4_1, q5_0, q5_1): the decode matvec over the "xa" activation
 * layout (below): two consecutive weight blocks fill one zmm with their 64 values in
 * natural order (block i in int32 lanes 0..7 of vpdpbusd's result, block i+1 in 8..15);
 * signed weights (q4_0, q5_0) are made unsigned by an offset o (8, 16) and the integer
 * accumulator starts at -o * sum(x) (precomputed per activation pair), so every block's
 * integer sum is exact, as in the reference; only the float summation order differs.
 * (Tried and dropped: gathering 8 blocks' fp16 scales with vpgatherdd, for the single-row
 * and 4-token kernels: gathers are slow on Zen 4, and both lost to AVX2.) */
#include "quants_internal.h"
#include "../base/common.h"

/* pairs of 32-value blocks in a row of n (the decode layout "xa", described below) */
static inline size_t xa_np(int64_t n) { return (size_t)((n / QK + 1) / 2); }

/* CPU-independent (matmul sizes its scratch with it on every machine) */
size_t tlq_xa_size(tl_type t, int64_t n) {
    const size_t np = xa_np(n);
    switch (t) {
    case TL_TYPE_Q4_1: case TL_TYPE_Q5_1: return np * (64 + 16);
    case TL_TYPE_Q4_0: case TL_TYPE_Q5_0: case TL_TYPE_Q8_0: return np * (64 + 16 + 64);
    default: return 0;
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define TGT "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
#define AVX512 __attribute__((target(TGT)))
#define AVX512_INLINE static inline __attribute__((target(TGT), always_inline))

/* Which 32-wide format (compile-time constant at every call after inlining). */
enum { F_Q4_0, F_Q4_1, F_Q5_0, F_Q5_1, F_Q8_0 };

/* byte offsets of the quants, and block sizes */
#define QS_OFF(f) ((f) == F_Q4_0 ? 2 : (f) == F_Q4_1 ? 4 : (f) == F_Q5_0 ? 6 : (f) == F_Q5_1 ? 8 : 2)
#define QH_OFF(f) ((f) == F_Q5_0 ? 2 : 4)
#define WSZ(f)                                                                                        \
    ((f) == F_Q4_0 ? sizeof(blk_q4_0) : (f) == F_Q4_1 ? sizeof(blk_q4_1) : (f) == F_Q5_0 ? sizeof(blk_q5_0) \
     : (f) == F_Q5_1 ? sizeof(blk_q5_1) : sizeof(blk_q8_0))
#define UNSIGNED(f) ((f) == F_Q4_1 || (f) == F_Q5_1)              /* q8_1 activations with s */
#define OFFSET(f) ((f) == F_Q4_0 ? 8 : (f) == F_Q5_0 ? 16 : (f) == F_Q8_0 ? 128 : 0)
#define XSZ(f) (UNSIGNED(f) ? sizeof(blk_q8_1) : sizeof(blk_q8_0))

/* 16 nibble bytes of block b0 (and b1) -> zmm of 64 values 0..15 in natural order:
 * [b0 low nibbles (values 0..15), b0 high (16..31), b1 low, b1 high]. */
AVX512_INLINE __m512i nib_pair(const uint8_t *q0, const uint8_t *q1, bool two) {
    __m128i a = _mm_loadu_si128((const __m128i *)q0);
    __m256i q = two ? _mm256_inserti128_si256(_mm256_castsi128_si256(a), _mm_loadu_si128((const __m128i *)q1), 1)
                    : _mm256_zextsi128_si256(a);
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
    z = _mm512_and_si512(z, _mm512_set1_epi8(0xF));
    return _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
}

/* Weights of blocks at b0 (and b0 + WSZ) as unsigned bytes (value + OFFSET). */
AVX512_INLINE __m512i w_pair(int f, const uint8_t *b0, bool two) {
    const uint8_t *b1 = b0 + WSZ(f);
    if (f == F_Q8_0) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(b0 + 2));
        __m512i z = two ? _mm512_inserti64x4(_mm512_castsi256_si512(a), _mm256_loadu_si256((const __m256i *)(b1 + 2)), 1)
                        : _mm512_zextsi256_si512(a);
        return _mm512_xor_si512(z, _mm512_set1_epi8((char)0x80)); /* w + 128 as u8 */
    }
    __m512i z = nib_pair(b0 + QS_OFF(f), b1 + QS_OFF(f), two);
    if (f == F_Q5_0 || f == F_Q5_1) { /* bit j of qh is bit 4 of value j */
        uint32_t h0, h1 = 0;
        memcpy(&h0, b0 + QH_OFF(f), 4);
        if (two) memcpy(&h1, b1 + QH_OFF(f), 4);
        __mmask64 m = (__mmask64)h0 | ((__mmask64)h1 << 32);
        z = _mm512_mask_add_epi8(z, m, z, _mm512_set1_epi8(16));
    }
    return z;
}

/* ------------------------------------------------------------------ decode layout "xa" */

/* The matvec's activation row, rebuilt once per matmul from the q8_0 / q8_1 blocks (so its
 * quantized values are exactly the reference's) in the form the pair loop wants:
 *   int8  qs[np * 64]     the values, pair p = blocks 2p, 2p+1 in 64 contiguous bytes
 *   float sc[np * 4]      dx(2p), sx(2p), dx(2p+1), sx(2p+1)  (sx = q8_1's s; 0 for q8_0)
 *   int32 corr[np * 16]   signed formats: -OFFSET * (vpdpbusd lane sums of the pair's x),
 *                         the start value of each pair's integer accumulator
 * with np = ceil(blocks / 2); a missing last block is zeros. Weight block scales then cost
 * two 32-bit loads, one vcvtph2ps and one multiply per pair instead of a scalar chain per block. */


AVX512_INLINE void xa_build(int f, const void *vq, void *vxa, int64_t n) {
    const uint8_t *q = vq;
    const int64_t nb = n / QK;
    const size_t np = xa_np(n);
    int8_t *xq = vxa;
    float *sc = (float *)(xq + np * 64);
    for (size_t p = 0; p < np; p++) {
        for (int k = 0; k < 2; k++) {
            const int64_t b = 2 * (int64_t)p + k;
            if (b < nb) {
                const uint8_t *blk = q + b * XSZ(f);
                uint16_t d, s = 0;
                memcpy(&d, blk, 2);
                if (UNSIGNED(f)) memcpy(&s, blk + 2, 2);
                memcpy(xq + 64 * p + 32 * k, blk + (UNSIGNED(f) ? 4 : 2), 32);
                sc[4 * p + 2 * k] = _cvtsh_ss(d);
                sc[4 * p + 2 * k + 1] = UNSIGNED(f) ? _cvtsh_ss(s) : 0.0f;
            } else {
                memset(xq + 64 * p + 32 * k, 0, 32);
                sc[4 * p + 2 * k] = sc[4 * p + 2 * k + 1] = 0.0f;
            }
        }
        if (OFFSET(f)) {
            __m512i *corr = (__m512i *)(sc + np * 4);
            const __m512i o = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)OFFSET(f)),
                                                  _mm512_loadu_si512(xq + 64 * p));
            _mm512_storeu_si512(corr + p, _mm512_sub_epi32(_mm512_setzero_si512(), o));
        }
    }
}

AVX512_INLINE float dot_xa(int f, int64_t n, const void *vw, const void *vxa) {
    const uint8_t *w = vw;
    const int64_t nb = n / QK;
    const size_t np = xa_np(n);
    const int8_t *xq = vxa;
    const float *sc = (const float *)(xq + np * 64);
    const __m512i *corr = (const __m512i *)(sc + np * 4);
    const __m512i idx = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    __m128 accm = _mm_setzero_ps();
#pragma GCC unroll 2
    for (size_t p = 0; p < np; p++) {
        const uint8_t *b0 = w + 2 * p * WSZ(f);
        const bool two = 2 * (int64_t)p + 1 < nb;
        const __m512i u = w_pair(f, b0, two);
        const __m512i s = _mm512_dpbusd_epi32(OFFSET(f) ? _mm512_loadu_si512(corr + p) : _mm512_setzero_si512(), u,
                                              _mm512_loadu_si512(xq + 64 * p));
        /* halves d0, m0, d1, m1 of the two weight blocks (first 32 bits of each block) */
        uint32_t h0, h1 = 0;
        memcpy(&h0, b0, 4);
        if (two) memcpy(&h1, b0 + WSZ(f), 4);
        __m128i dm = _mm_insert_epi32(_mm_cvtsi32_si128((int)h0), (int)h1, 1);
        if (!UNSIGNED(f)) dm = _mm_shufflelo_epi16(dm, _MM_SHUFFLE(2, 2, 0, 0)); /* no m: d0 d0 d1 d1 */
        const __m128 prod = _mm_mul_ps(_mm_cvtph_ps(dm), _mm_loadu_ps(sc + 4 * p)); /* dw*dx, m*s, ... */
        if (UNSIGNED(f)) accm = _mm_add_ps(accm, prod);
        const __m512 cw = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(prod));
        acc[p & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), cw, acc[p & 1]);
    }
    float r = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    if (UNSIGNED(f)) {
        float m[4];
        _mm_storeu_ps(m, accm);
        r += m[1] + m[3];
    }
    return r;
}

/* dot_xa for R (2 to 4) activation rows (xa layouts x_stride bytes apart) against one weight
 * row: each pair of weight blocks is unpacked once for the R, and each row's sum takes exactly
 * dot_xa's operations in dot_xa's order, so every row gets dot_xa's bits whatever shares the
 * call. R is a constant at every call, so the row loops unroll. */
AVX512_INLINE void dot_xan(int f, int R, int64_t n, const void *vw, const void *vxa, size_t x_stride, float out[4]) {
    const uint8_t *w = vw;
    const int64_t nb = n / QK;
    const size_t np = xa_np(n);
    const int8_t *xq[4];
    const float *sc[4];
    const __m512i *corr[4];
    for (int j = 0; j < R; j++) {
        xq[j] = (const int8_t *)vxa + (size_t)j * x_stride;
        sc[j] = (const float *)(xq[j] + np * 64);
        corr[j] = (const __m512i *)(sc[j] + np * 4);
    }
    const __m512i idx = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc[4][2];
    __m128 accm[4];
    for (int j = 0; j < R; j++) {
        acc[j][0] = acc[j][1] = _mm512_setzero_ps();
        accm[j] = _mm_setzero_ps();
    }
    for (size_t p = 0; p < np; p++) {
        const uint8_t *b0 = w + 2 * p * WSZ(f);
        const bool two = 2 * (int64_t)p + 1 < nb;
        const __m512i u = w_pair(f, b0, two);
        uint32_t h0, h1 = 0;
        memcpy(&h0, b0, 4);
        if (two) memcpy(&h1, b0 + WSZ(f), 4);
        __m128i dm = _mm_insert_epi32(_mm_cvtsi32_si128((int)h0), (int)h1, 1);
        if (!UNSIGNED(f)) dm = _mm_shufflelo_epi16(dm, _MM_SHUFFLE(2, 2, 0, 0));
        const __m128 dmf = _mm_cvtph_ps(dm);
#pragma GCC unroll 4
        for (int j = 0; j < R; j++) {
            const __m512i s = _mm512_dpbusd_epi32(OFFSET(f) ? _mm512_loadu_si512(corr[j] + p) : _mm512_setzero_si512(), u,
                                                  _mm512_loadu_si512(xq[j] + 64 * p));
            const __m128 prod = _mm_mul_ps(dmf, _mm_loadu_ps(sc[j] + 4 * p));
            if (UNSIGNED(f)) accm[j] = _mm_add_ps(accm[j], prod);
            const __m512 cw = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(prod));
            acc[j][p & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), cw, acc[j][p & 1]);
        }
    }
    for (int j = 0; j < R; j++) {
        float r = _mm512_reduce_add_ps(_mm512_add_ps(acc[j][0], acc[j][1]));
        if (UNSIGNED(f)) {
            float m[4];
            _mm_storeu_ps(m, accm[j]);
            r += m[1] + m[3];
        }
        out[j] = r;
    }
}

#define XA_FUNCS(nm, F)                                                                               \
    AVX512 void tlq_xa_from_##nm##_avx512(const void *q, void *xa, int64_t n) { xa_build(F, q, xa, n); } \
    AVX512 float tlq_dotxa_##nm##_avx512(int64_t n, const void *w, const void *xa) { return dot_xa(F, n, w, xa); } \
    AVX512 void tlq_dotxa4_##nm##_avx512(int64_t n, const void *w, const void *xa, size_t x_stride, float out[4]) { \
        dot_xan(F, 4, n, w, xa, x_stride, out);                                                       \
    }                                                                                                 \
    AVX512 void tlq_dotxa2_##nm##_avx512(int64_t n, const void *w, const void *xa, size_t x_stride, float out[4]) { \
        dot_xan(F, 2, n, w, xa, x_stride, out);                                                       \
    }
XA_FUNCS(q4_0, F_Q4_0)
XA_FUNCS(q4_1, F_Q4_1)
XA_FUNCS(q5_0, F_Q5_0)
XA_FUNCS(q5_1, F_Q5_1)
XA_FUNCS(q8_0, F_Q8_0)

AVX512_INLINE float hsum8(__m256 v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
}

/* ------------------------------------------------------------------ K-quants x q8_K */

/* q4_K / q5_K 6-bit scales and mins of the 8 sub-blocks, unpacked with 32-bit word
 * arithmetic (the same bits tlq_scale_min_k4 picks): bytes j of *sc / *mn. */
static inline void k4_scales(const uint8_t *q, uint64_t *sc, uint64_t *mn) {
    uint32_t u0, u1, u2;
    memcpy(&u0, q, 4);
    memcpy(&u1, q + 4, 4);
    memcpy(&u2, q + 8, 4);
    const uint32_t s_lo = u0 & 0x3f3f3f3fu, m_lo = u1 & 0x3f3f3f3fu;
    const uint32_t s_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
    const uint32_t m_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
    *sc = s_lo | ((uint64_t)s_hi << 32);
    *mn = m_lo | ((uint64_t)m_hi << 32);
}

/* int16 lanes 0..15 <- scale 2j, 16..31 <- scale 2j+1, from 8 scales in int16 lanes 0..7 */
AVX512_INLINE __m512i sc_pair16(__m512i sc8, int j) {
    const __m512i idx = _mm512_add_epi16(
        _mm512_set_epi32(0x00010001, 0x00010001, 0x00010001, 0x00010001, 0x00010001, 0x00010001, 0x00010001, 0x00010001,
                         0, 0, 0, 0, 0, 0, 0, 0),
        _mm512_set1_epi16((short)(2 * j)));
    return _mm512_permutexvar_epi16(idx, sc8);
}

/* sum_j mn_j * (bsums[2j] + bsums[2j+1]) as 8 int32 lanes */
AVX512_INLINE __m256i k4_min_terms(uint64_t mn, const int16_t *bsums) {
    __m128i m = _mm_cvtsi64_si128((long long)mn);
    __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m)); /* mn_j in lanes 2j, 2j+1 */
    return _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums), m16);
}

AVX512_INLINE float k45_dot(bool five, int64_t n, const void *vw, const void *vx) {
    const uint8_t *wb = vw;
    const blk_q8_K *x = vx;
    const size_t wsz = five ? sizeof(blk_q5_K) : sizeof(blk_q4_K);
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QKK; i++) {
        const uint8_t *b = wb + i * wsz;
        uint16_t d16, dmin16;
        memcpy(&d16, b, 2);
        memcpy(&dmin16, b + 2, 2);
        const uint8_t *qs = b + (five ? offsetof(blk_q5_K, qs) : offsetof(blk_q4_K, qs));
        uint64_t sc, mn;
        k4_scales(b + 4, &sc, &mn);
        const __m512i sc8 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
        __m512i qh = five ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + offsetof(blk_q5_K, qh))))
                          : _mm512_setzero_si512();
        __m512i sumi = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            /* sub-blocks 2j (low nibbles of qs[32j..]) and 2j+1 (high nibbles) */
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
            z = _mm512_and_si512(z, _mm512_set1_epi8(0xF));
            if (five) { /* bit 2j of qh[l] is bit 4 of value l of sub-block 2j, bit 2j+1 of 2j+1 */
                const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * j))),
                                                       _mm256_set1_epi8((char)(1 << (2 * j + 1))), 1);
                z = _mm512_mask_add_epi8(z, _mm512_test_epi8_mask(qh, bit), z, _mm512_set1_epi8(16));
            }
            /* u8 (<= 31) x s8 pair sums fit int16; vpdpwssd scales and accumulates */
            const __m512i p = _mm512_maddubs_epi16(z, _mm512_loadu_si512(x[i].qs + 64 * j));
            sumi = _mm512_dpwssd_epi32(sumi, p, sc_pair16(sc8, j));
        }
        const float d = _cvtsh_ss(d16) * x[i].d;
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(dmin16) * x[i].d),
                               _mm256_cvtepi32_ps(k4_min_terms(mn, x[i].bsums)), accm);
    }
    return _mm512_reduce_add_ps(acc) - hsum8(accm);
}

AVX512 float tlq_dot_q4_K_avx512(int64_t n, const void *w, const void *x) { return k45_dot(false, n, w, x); }
AVX512 float tlq_dot_q5_K_avx512(int64_t n, const void *w, const void *x) { return k45_dot(true, n, w, x); }

AVX512 float tlq_dot_q6_K_avx512(int64_t n, const void *vw, const void *vx) {
    const blk_q6_K *w = vw;
    const blk_q8_K *x = vx;
    const __m512i m4 = _mm512_set1_epi8(0xF), m3 = _mm512_set1_epi8(3);
    __m512 acc = _mm512_setzero_ps();
    __m256 accc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QKK; i++) {
        /* 16 signed scales as int16 lanes 0..15 */
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[i].scales));
        const __m512i scz = _mm512_castsi256_si512(sc16);
        __m512i sumi = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            /* values 128h + [0,64): low nibbles of ql[64h..64h+64) with qh bits 0-1 / 2-3;
             * values 128h + [64,128): high nibbles with qh bits 4-5 / 6-7 */
            const __m512i l = _mm512_loadu_si512(w[i].ql + 64 * h);
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(w[i].qh + 32 * h));
            const __m512i qhz = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
            const __m512i q01 = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(qhz, m3), 4));
            const __m512i q23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                                _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qhz, 4), m3), 4));
            const __m512i qq[2] = {q01, q23};
#pragma GCC unroll 2
            for (int k = 0; k < 2; k++) {
                /* 64 values = 4 sub-blocks of 16: int16 pair lanes 8s..8s+7 <- scale 8h+4k+s */
                const int sb = 8 * h + 4 * k;
                const __m512i idx = _mm512_add_epi16(
                    _mm512_set_epi64(0x0003000300030003LL, 0x0003000300030003LL, 0x0002000200020002LL, 0x0002000200020002LL,
                                     0x0001000100010001LL, 0x0001000100010001LL, 0, 0),
                    _mm512_set1_epi16((short)sb));
                const __m512i p = _mm512_maddubs_epi16(qq[k], _mm512_loadu_si512(x[i].qs + 128 * h + 64 * k));
                sumi = _mm512_dpwssd_epi32(sumi, p, _mm512_permutexvar_epi16(idx, scz));
            }
        }
        /* the -32 offset of every value: 32 * sum_sb scale_sb * bsum_sb */
        const __m256i corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)x[i].bsums));
        const float d = _cvtsh_ss(w[i].d) * x[i].d;
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        accc = _mm256_fmadd_ps(_mm256_set1_ps(32.0f * d), _mm256_cvtepi32_ps(corr), accc);
    }
    return _mm512_reduce_add_ps(acc) - hsum8(accc);
}

#else /* not x86: the dispatcher never selects these */
#include <stdlib.h>
#define STUB_F(name) float name(int64_t n, const void *w, const void *x) { (void)n; (void)w; (void)x; abort(); }
STUB_F(tlq_dot_q4_K_avx512) STUB_F(tlq_dot_q5_K_avx512) STUB_F(tlq_dot_q6_K_avx512)
#define STUB_XA(nm)                                                                                     \
    void tlq_xa_from_##nm##_avx512(const void *q, void *xa, int64_t n) { (void)q; (void)xa; (void)n; abort(); } \
    STUB_F(tlq_dotxa_##nm##_avx512)                                                                     \
    void tlq_dotxa4_##nm##_avx512(int64_t n, const void *w, const void *xa, size_t xs, float out[4]) {  \
        (void)n; (void)w; (void)xa; (void)xs; (void)out; abort();                                       \
    }                                                                                                   \
    void tlq_dotxa2_##nm##_avx512(int64_t n, const void *w, const void *xa, size_t xs, float out[4]) {  \
        (void)n; (void)w; (void)xa; (void)xs; (void)out; abort();                                       \
    }
STUB_XA(q4_0) STUB_XA(q4_1) STUB_XA(q5_0) STUB_XA(q5_1) STUB_XA(q8_0)
#endif
