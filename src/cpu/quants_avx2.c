/* quants_avx2.c: AVX2/FMA/F16C kernels, chosen at run time by tlq_get_kernels (the file is
 * compiled for baseline x86-64; each function carries its own target attribute).
 *
 * Integer formats use the usual byte-dot recipe: weights as unsigned bytes (or |w| with the
 * sign moved onto the activation), _mm256_maddubs_epi16 into int16 pairs, _mm256_madd_epi16
 * into int32, then one float FMA per block with the product of the two block scales.
 * The dot4 variants unpack each weight block once and use it for 4 activation rows, which
 * is what makes prefill fast. Activation quantizers give the same bytes as the references. */
#include "quants_internal.h"
#include "../base/common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <math.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE static inline __attribute__((target("avx2,fma,f16c"), always_inline))

AVX2_INLINE float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2_INLINE float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* 32 nibbles -> 32 bytes 0..15: low lane = low nibbles (values 0..15), high lane = high. */
AVX2_INLINE __m256i unpack_nibbles(const uint8_t *qs) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(q, _mm_set1_epi8(0xF));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0xF));
    return _mm256_set_m128i(hi, lo);
}

/* Bit j of the 32-bit word -> byte j = 0xFF if set, else 0. */
AVX2_INLINE __m256i bits_to_bytes(const uint8_t *qh4) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    __m256i v = _mm256_set1_epi32((int)qh);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                           0x0101010101010101LL, 0x0000000000000000LL);
    v = _mm256_shuffle_epi8(v, shuf); /* byte j <- byte j/8 of qh */
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL)); /* all bits but j%8 */
    return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

/* sum over pairs of u8 x s8 products, widened to 8 int32 lanes, as floats */
AVX2_INLINE __m256 dot_us8(__m256i u, __m256i s) {
    __m256i p = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* ---- weight block unpackers: bytes plus float scale (and min) ---- */
/* Signed weights (q4_0, q5_0, q8_0) are returned as |w| with their signs separately applied
 * to activations by _mm256_sign_epi8 (maddubs needs one unsigned operand). */
AVX2_INLINE __m256i w_q4_0(const blk_q4_0 *b) {
    return _mm256_sub_epi8(unpack_nibbles(b->qs), _mm256_set1_epi8(8));
}
AVX2_INLINE __m256i w_q5_0(const blk_q5_0 *b) {
    /* (nib | h<<4) - 16 == h ? nib : nib | 0xF0 (as int8) */
    __m256i hb = bits_to_bytes(b->qh);
    return _mm256_or_si256(unpack_nibbles(b->qs), _mm256_andnot_si256(hb, _mm256_set1_epi8((char)0xF0)));
}
AVX2_INLINE __m256i w_q5_1(const blk_q5_1 *b) {
    __m256i hb = bits_to_bytes(b->qh);
    return _mm256_or_si256(unpack_nibbles(b->qs), _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
}
AVX2_INLINE __m256i load_q8(const int8_t *qs) { return _mm256_loadu_si256((const __m256i *)qs); }

/* ------------------------------------------------------------------ single-row dots */

#define SIGNED_DOT(wv, xv) dot_us8(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv))

AVX2 float tlq_dot_q4_0_avx2(int64_t n, const void *vw, const void *vx) {
    const blk_q4_0 *w = vw;
    const blk_q8_0 *x = vx;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t nb = n / QK, i = 0;
    for (; i + 1 < nb; i += 2) {
        __m256i w0 = w_q4_0(&w[i]), w1 = w_q4_0(&w[i + 1]);
        __m256 p0 = SIGNED_DOT(w0, load_q8(x[i].qs));
        __m256 p1 = SIGNED_DOT(w1, load_q8(x[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), p0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i + 1].d) * h2f(x[i + 1].d)), p1, acc1);
    }
    for (; i < nb; i++) {
        __m256i w0 = w_q4_0(&w[i]);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), SIGNED_DOT(w0, load_q8(x[i].qs)), acc0);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1));
}

AVX2 float tlq_dot_q5_0_avx2(int64_t n, const void *vw, const void *vx) {
    const blk_q5_0 *w = vw;
    const blk_q8_0 *x = vx;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++) {
        __m256i w0 = w_q5_0(&w[i]);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), SIGNED_DOT(w0, load_q8(x[i].qs)), acc);
    }
    return hsum_ps(acc);
}

AVX2 float tlq_dot_q8_0_avx2(int64_t n, const void *vw, const void *vx) {
    const blk_q8_0 *w = vw;
    const blk_q8_0 *x = vx;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t nb = n / QK, i = 0;
    for (; i + 1 < nb; i += 2) {
        __m256i w0 = load_q8(w[i].qs), w1 = load_q8(w[i + 1].qs);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), SIGNED_DOT(w0, load_q8(x[i].qs)), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i + 1].d) * h2f(x[i + 1].d)),
                               SIGNED_DOT(w1, load_q8(x[i + 1].qs)), acc1);
    }
    for (; i < nb; i++) {
        __m256i w0 = load_q8(w[i].qs);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), SIGNED_DOT(w0, load_q8(x[i].qs)), acc0);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1));
}

AVX2 float tlq_dot_q4_1_avx2(int64_t n, const void *vw, const void *vx) {
    const blk_q4_1 *w = vw;
    const blk_q8_1 *x = vx;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float summ = 0;
    int64_t nb = n / QK, i = 0;
    for (; i + 1 < nb; i += 2) {
        __m256 p0 = dot_us8(unpack_nibbles(w[i].qs), load_q8(x[i].qs));
        __m256 p1 = dot_us8(unpack_nibbles(w[i + 1].qs), load_q8(x[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), p0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i + 1].d) * h2f(x[i + 1].d)), p1, acc1);
        summ += h2f(w[i].m) * h2f(x[i].s) + h2f(w[i + 1].m) * h2f(x[i + 1].s);
    }
    for (; i < nb; i++) {
        __m256 p0 = dot_us8(unpack_nibbles(w[i].qs), load_q8(x[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), p0, acc0);
        summ += h2f(w[i].m) * h2f(x[i].s);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1)) + summ;
}

AVX2 float tlq_dot_q5_1_avx2(int64_t n, const void *vw, const void *vx) {
    const blk_q5_1 *w = vw;
    const blk_q8_1 *x = vx;
    __m256 acc = _mm256_setzero_ps();
    float summ = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        __m256 p = dot_us8(w_q5_1(&w[i]), load_q8(x[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), p, acc);
        summ += h2f(w[i].m) * h2f(x[i].s);
    }
    return hsum_ps(acc) + summ;
}

/* ------------------------------------------------------------------ 1 row x 4 tokens */

/* UNSIGNED: weights are 0..31 bytes and the activation blocks carry s = d * sum(q) (q8_1);
 * otherwise weights are signed and the sign trick is used (q8_0 activations). */
#define DOT4_BODY(WBLK, XBLK, UNPACK, UNSIGNED)                                           \
    const WBLK *w = vw;                                                                   \
    const uint8_t *xb = vx;                                                               \
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),       \
                     _mm256_setzero_ps()};                                                \
    float summ[4] = {0, 0, 0, 0};                                                         \
    for (int64_t i = 0; i < n / QK; i++) {                                                \
        __m256i wv = UNPACK;                                                              \
        const float dw = h2f(w[i].d);                                                     \
        __m256i wa = UNSIGNED ? wv : _mm256_sign_epi8(wv, wv);                            \
        _Pragma("GCC unroll 4")                                                           \
        for (int t = 0; t < 4; t++) {                                                     \
            const XBLK *xt = (const XBLK *)(xb + (size_t)t * xs) + i;                     \
            __m256i xv = load_q8(xt->qs);                                                 \
            if (!UNSIGNED) xv = _mm256_sign_epi8(xv, wv);                                 \
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * h2f(xt->d)), dot_us8(wa, xv), acc[t]); \
        }                                                                                 \
        DOT4_MIN(UNSIGNED)                                                                \
    }                                                                                     \
    for (int t = 0; t < 4; t++) out[t] = hsum_ps(acc[t]) + summ[t];

#define DOT4_MIN(UNSIGNED)                                                                \
    if (UNSIGNED) {                                                                       \
        const float mw = h2f(((const uint16_t *)&w[i])[1]); /* m follows d */            \
        for (int t = 0; t < 4; t++)                                                       \
            summ[t] += mw * h2f(((const blk_q8_1 *)(xb + (size_t)t * xs))[i].s);          \
    }

AVX2 void tlq_dot4_q4_0_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float out[4]) {
    DOT4_BODY(blk_q4_0, blk_q8_0, w_q4_0(&w[i]), 0)
}
AVX2 void tlq_dot4_q5_0_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float out[4]) {
    DOT4_BODY(blk_q5_0, blk_q8_0, w_q5_0(&w[i]), 0)
}
/* q8_0 sums each token's blocks exactly as tlq_dot_q8_0_avx2 does (even and odd blocks in two
 * accumulators), so a row gets the same bits from either kernel, whatever shares its call. */
AVX2 void tlq_dot4_q8_0_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float out[4]) {
    const blk_q8_0 *w = vw;
    const blk_q8_0 *x[4];
    __m256 acc0[4], acc1[4];
    for (int t = 0; t < 4; t++) {
        x[t] = (const blk_q8_0 *)((const uint8_t *)vx + (size_t)t * xs);
        acc0[t] = acc1[t] = _mm256_setzero_ps();
    }
    int64_t nb = n / QK, i = 0;
    for (; i + 1 < nb; i += 2) {
        __m256i w0 = load_q8(w[i].qs), w1 = load_q8(w[i + 1].qs);
        const float d0 = h2f(w[i].d), d1 = h2f(w[i + 1].d);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < 4; t++) {
            acc0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * h2f(x[t][i].d)), SIGNED_DOT(w0, load_q8(x[t][i].qs)), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * h2f(x[t][i + 1].d)), SIGNED_DOT(w1, load_q8(x[t][i + 1].qs)),
                                      acc1[t]);
        }
    }
    for (; i < nb; i++) {
        __m256i w0 = load_q8(w[i].qs);
        const float d0 = h2f(w[i].d);
        for (int t = 0; t < 4; t++)
            acc0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * h2f(x[t][i].d)), SIGNED_DOT(w0, load_q8(x[t][i].qs)), acc0[t]);
    }
    for (int t = 0; t < 4; t++) out[t] = hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
}
AVX2 void tlq_dot4_q4_1_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float out[4]) {
    DOT4_BODY(blk_q4_1, blk_q8_1, unpack_nibbles(w[i].qs), 1)
}
AVX2 void tlq_dot4_q5_1_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float out[4]) {
    DOT4_BODY(blk_q5_1, blk_q8_1, w_q5_1(&w[i]), 1)
}

/* ------------------------------------------------------------------ K-quants */

AVX2 float tlq_dot_q4_K_avx2(int64_t n, const void *vw, const void *vx) {
    const blk_q4_K *w = vw;
    const blk_q8_K *x = vx;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    float summ = 0;
    for (int64_t i = 0; i < n / QKK; i++) {
        uint8_t sc[8], mn[8];
        int32_t sum_m = 0;
        for (int j = 0; j < 8; j++) {
            tlq_scale_min_k4(j, w[i].scales, &sc[j], &mn[j]);
            sum_m += mn[j] * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]);
        }
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * j));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            __m256i p0 = _mm256_maddubs_epi16(lo, load_q8(x[i].qs + 64 * j));
            __m256i p1 = _mm256_maddubs_epi16(hi, load_q8(x[i].qs + 64 * j + 32));
            p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * j]));
            p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * j + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        const float d = h2f(w[i].d) * x[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        summ += h2f(w[i].dmin) * x[i].d * sum_m;
    }
    return hsum_ps(acc) - summ;
}

AVX2 float tlq_dot_q5_K_avx2(int64_t n, const void *vw, const void *vx) {
    const blk_q5_K *w = vw;
    const blk_q8_K *x = vx;
    const __m256i m4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float summ = 0;
    for (int64_t i = 0; i < n / QKK; i++) {
        uint8_t sc[8], mn[8];
        int32_t sum_m = 0;
        for (int j = 0; j < 8; j++) {
            tlq_scale_min_k4(j, w[i].scales, &sc[j], &mn[j]);
            sum_m += mn[j] * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]);
        }
        __m256i qh = _mm256_loadu_si256((const __m256i *)w[i].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * j));
            /* bit 2j of qh is bit 4 of the low-nibble values, bit 2j+1 of the high ones */
            __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, one), 4);
            __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4);
            qh = _mm256_srli_epi16(qh, 2);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), h0);
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h1);
            __m256i p0 = _mm256_maddubs_epi16(lo, load_q8(x[i].qs + 64 * j));
            __m256i p1 = _mm256_maddubs_epi16(hi, load_q8(x[i].qs + 64 * j + 32));
            p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * j]));
            p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * j + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        const float d = h2f(w[i].d) * x[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        summ += h2f(w[i].dmin) * x[i].d * sum_m;
    }
    return hsum_ps(acc) - summ;
}

AVX2 float tlq_dot_q6_K_avx2(int64_t n, const void *vw, const void *vx) {
    const blk_q6_K *w = vw;
    const blk_q8_K *x = vx;
    const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    float corr = 0;
    for (int64_t i = 0; i < n / QKK; i++) {
        const int8_t *sc = w[i].scales;
        int32_t sum_sb = 0; /* sum sc * bsum: the -32 offset of every value */
        for (int j = 0; j < 16; j++) sum_sb += sc[j] * x[i].bsums[j];
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w[i].ql + 64 * h;
            const int8_t *xq = x[i].qs + 128 * h;
            __m256i qh = _mm256_loadu_si256((const __m256i *)(w[i].qh + 32 * h));
            __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
            for (int k = 0; k < 4; k++) {
                const int s = 8 * h + 2 * k; /* sub-blocks of 16: s for the low lane, s+1 high */
                __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1]), _mm_set1_epi16(sc[s]));
                __m256i p = _mm256_maddubs_epi16(q[k], load_q8(xq + 32 * k));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
            }
        }
        const float d = h2f(w[i].d) * x[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        corr += d * (float)(32 * sum_sb);
    }
    return hsum_ps(acc) - corr;
}

/* ------------------------------------------------------------------ float formats */

AVX2 float tlq_dot_f32_avx2(int64_t n, const void *vw, const void *vx) {
    const float *a = vw, *b = vx;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

AVX2_INLINE __m256 load_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
AVX2_INLINE __m256 load_bf16(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

AVX2 float tlq_dot_f16_avx2(int64_t n, const void *vw, const void *vx) {
    const uint16_t *a = vw;
    const float *b = vx;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(load_f16(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(load_f16(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(load_f16(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(load_f16(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(load_f16(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s += h2f(a[i]) * b[i];
    return s;
}

AVX2 float tlq_dot_bf16_avx2(int64_t n, const void *vw, const void *vx) {
    const uint16_t *a = vw;
    const float *b = vx;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(load_bf16(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(load_bf16(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(load_bf16(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum_ps(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += tl_bf16_to_fp32(a[i]) * b[i];
    return s;
}

AVX2 void tlq_f16_to_f32_avx2(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16(src + i));
    for (; i < n; i++) dst[i] = h2f(src[i]);
}

AVX2 void tlq_bf16_to_f32_avx2(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_bf16(src + i));
    for (; i < n; i++) dst[i] = tl_bf16_to_fp32(src[i]);
}

/* R rows x T tokens register tile (R*T accumulators + R row vectors + 1 token vector must
 * fit the 16 ymm registers: 3x4 is the largest). */
AVX2_INLINE void gemm_tile(int R, int T, int64_t k, const float *A, int64_t lda, const float *B,
                           int64_t ldb, float *Y, int64_t ldy) {
    /* R and T are compile-time constants at every call: the pragmas make the loops over
     * them disappear so the accumulators live in registers */
    __m256 acc[3][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t kk = 0;
    for (; kk + 8 <= k; kk += 8) {
        __m256 a[3];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) a[r] = _mm256_loadu_ps(A + r * lda + kk);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m256 b = _mm256_loadu_ps(B + t * ldb + kk);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(a[r], b, acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            float s = hsum_ps(acc[r][t]);
            for (int64_t j = kk; j < k; j++) s += A[r * lda + j] * B[t * ldb + j];
            Y[t * ldy + r] = s;
        }
    }
}

AVX2 void tlq_gemm_f32_avx2(int64_t k, const float *A, int64_t lda, int n_rows, const float *B,
                            int64_t ldb, int n_tok, float *Y, int64_t ldy) {
    int t = 0;
    for (; t + 4 <= n_tok; t += 4) {
        const float *Bt = B + t * ldb;
        float *Yt = Y + t * ldy;
        int r = 0;
        for (; r + 3 <= n_rows; r += 3) gemm_tile(3, 4, k, A + r * lda, lda, Bt, ldb, Yt + r, ldy);
        for (; r < n_rows; r++) gemm_tile(1, 4, k, A + r * lda, lda, Bt, ldb, Yt + r, ldy);
    }
    for (; t < n_tok; t++) {
        int r = 0;
        for (; r + 3 <= n_rows; r += 3) gemm_tile(3, 1, k, A + r * lda, lda, B + t * ldb, ldb, Y + t * ldy + r, ldy);
        for (; r < n_rows; r++) gemm_tile(1, 1, k, A + r * lda, lda, B + t * ldb, ldb, Y + t * ldy + r, ldy);
    }
}

/* ------------------------------------------------------------------ activation quantizers */

AVX2_INLINE __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
AVX2_INLINE float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
/* roundf (half away from zero), exactly: trunc, then step away from zero if |frac| >= 0.5 */
AVX2_INLINE __m256i roundf_epi32(__m256 v) {
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 big = _mm256_cmp_ps(abs_ps(_mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 step = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, _mm256_set1_ps(-0.0f)));
    return _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(big, step)));
}
/* 4 x 8 int32 (each in [-128, 127]) -> 32 int8 in order */
AVX2_INLINE __m256i pack_i32x4(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    __m256i v = _mm256_packs_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

AVX2_INLINE float q8_block(const float *x, int8_t *qs, int32_t *sum) {
    __m256 v[4];
    for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(x + 8 * k);
    __m256 m = _mm256_max_ps(_mm256_max_ps(abs_ps(v[0]), abs_ps(v[1])), _mm256_max_ps(abs_ps(v[2]), abs_ps(v[3])));
    const float d = hmax_ps(m) / 127;
    const float id = d ? 1.0f / d : 0.0f;
    __m256i r[4];
    for (int k = 0; k < 4; k++) r[k] = roundf_epi32(_mm256_mul_ps(v[k], _mm256_set1_ps(id)));
    _mm256_storeu_si256((__m256i *)qs, pack_i32x4(r[0], r[1], r[2], r[3]));
    if (sum) {
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        *sum = _mm_cvtsi128_si32(s4);
    }
    return d;
}

AVX2 void tlq_quantize_q8_0_avx2(const float *x, void *vy, int64_t n) {
    blk_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) y[i].d = tl_fp32_to_fp16(q8_block(x + QK * i, y[i].qs, NULL));
}

AVX2 void tlq_quantize_q8_1_avx2(const float *x, void *vy, int64_t n) {
    blk_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        int32_t sum;
        float d = q8_block(x + QK * i, y[i].qs, &sum);
        y[i].d = tl_fp32_to_fp16(d);
        y[i].s = tl_fp32_to_fp16(sum * d);
    }
}

AVX2 void tlq_quantize_q8_K_avx2(const float *x, void *vy, int64_t n) {
    blk_q8_K *y = vy;
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < QKK; j += 8) m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(x + j)));
        const float amax = hmax_ps(m);
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float mx = 0; /* the first value of largest magnitude, with its sign */
        for (int j = 0; j < QKK; j++)
            if (fabsf(x[j]) == amax) { mx = x[j]; break; }
        const float iscale = -127.f / mx;
        const __m256 vs = _mm256_set1_ps(iscale);
        for (int j = 0; j < QKK; j += 32) {
            __m256i r[4];
            for (int k = 0; k < 4; k++) /* cvtps rounds to nearest even, as nearest_int */
                r[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * k))),
                                        _mm256_set1_epi32(127));
            __m256i q = pack_i32x4(r[0], r[1], r[2], r[3]);
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), q);
            /* 16-value sums: maddubs with 1s gives pair sums, madd folds to 8 int32 of 4 */
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
            int32_t s4[8];
            _mm256_storeu_si256((__m256i *)s4, p);
            y[i].bsums[j / 16] = (int16_t)(s4[0] + s4[1] + s4[2] + s4[3]);
            y[i].bsums[j / 16 + 1] = (int16_t)(s4[4] + s4[5] + s4[6] + s4[7]);
        }
        y[i].d = 1 / iscale;
    }
}

/* ------------------------------------------------------------------ w4g128 */

/* A group's 128 codes as 4 x 32 bytes 0..15, v[b] = values 32b .. 32b+31 in order: low
 * nibbles of bytes 0..31 are values 0..31, their high nibbles values 64..95 (layout in
 * quants_internal.h), likewise bytes 32..63 for 32..63 and 96..127. */
AVX2_INLINE void w4_unpack(const blk_w4g128 *b, __m256i v[4]) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i a = _mm256_loadu_si256((const __m256i *)b->qs);
    const __m256i c = _mm256_loadu_si256((const __m256i *)(b->qs + 32));
    v[0] = _mm256_and_si256(a, m4);
    v[1] = _mm256_and_si256(c, m4);
    v[2] = _mm256_and_si256(_mm256_srli_epi16(a, 4), m4);
    v[3] = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);
}

/* m * sum of the 4 activation blocks' s = d * sum(q) */
AVX2_INLINE float w4_sum_s(const blk_q8_1 *xb) {
    return h2f(xb[0].s) + h2f(xb[1].s) + h2f(xb[2].s) + h2f(xb[3].s);
}

AVX2 float tlq_dot_w4g128_avx2(int64_t n, const void *vw, const void *vx) {
    const blk_w4g128 *w = vw;
    const blk_q8_1 *x = vx;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float summ = 0;
    for (int64_t i = 0; i < n / QW4; i++) {
        __m256i v[4];
        w4_unpack(&w[i], v);
        const blk_q8_1 *xb = x + 4 * i;
        const float d = h2f(w[i].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * h2f(xb[0].d)), dot_us8(v[0], load_q8(xb[0].qs)), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d * h2f(xb[1].d)), dot_us8(v[1], load_q8(xb[1].qs)), acc1);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * h2f(xb[2].d)), dot_us8(v[2], load_q8(xb[2].qs)), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d * h2f(xb[3].d)), dot_us8(v[3], load_q8(xb[3].qs)), acc1);
        summ += h2f(w[i].m) * w4_sum_s(xb);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1)) + summ;
}

AVX2 void tlq_dot4_w4g128_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float out[4]) {
    const blk_w4g128 *w = vw;
    const uint8_t *xbase = vx;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float summ[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < n / QW4; i++) {
        __m256i v[4];
        w4_unpack(&w[i], v); /* once for all 4 tokens */
        const float d = h2f(w[i].d), m = h2f(w[i].m);
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            const blk_q8_1 *xb = (const blk_q8_1 *)(xbase + (size_t)t * xs) + 4 * i;
#pragma GCC unroll 4
            for (int b = 0; b < 4; b++)
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * h2f(xb[b].d)), dot_us8(v[b], load_q8(xb[b].qs)), acc[t]);
            summ[t] += m * w4_sum_s(xb);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum_ps(acc[t]) + summ[t];
}

AVX2 void tlq_dequantize_w4g128_avx2(const void *vx, float *y, int64_t n) {
    const blk_w4g128 *x = vx;
    for (int64_t i = 0; i < n / QW4; i++, y += QW4) {
        __m256i v[4];
        w4_unpack(&x[i], v);
        const __m256 d = _mm256_set1_ps(h2f(x[i].d)), m = _mm256_set1_ps(h2f(x[i].m));
        for (int b = 0; b < 4; b++) {
            const __m128i lo = _mm256_castsi256_si128(v[b]), hi = _mm256_extracti128_si256(v[b], 1);
            const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
            for (int k = 0; k < 4; k++) {
                const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k]));
                _mm256_storeu_ps(y + 32 * b + 8 * k, _mm256_fmadd_ps(q, d, m));
            }
        }
    }
}

#else /* not x86: the dispatcher never selects these */
#include <stdlib.h>
#define STUB_F(name) float name(int64_t n, const void *w, const void *x) { (void)n; (void)w; (void)x; abort(); }
STUB_F(tlq_dot_f32_avx2) STUB_F(tlq_dot_f16_avx2) STUB_F(tlq_dot_bf16_avx2) STUB_F(tlq_dot_q4_0_avx2)
STUB_F(tlq_dot_q4_1_avx2) STUB_F(tlq_dot_q5_0_avx2) STUB_F(tlq_dot_q5_1_avx2) STUB_F(tlq_dot_q8_0_avx2)
STUB_F(tlq_dot_q4_K_avx2) STUB_F(tlq_dot_q5_K_avx2) STUB_F(tlq_dot_q6_K_avx2) STUB_F(tlq_dot_w4g128_avx2)
#endif
