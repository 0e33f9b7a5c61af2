/* qpack_avx2.c: the x16 GEMM kernels (qpack.h) with AVX2 + FMA + F16C, for CPUs without
 * AVX-512 VNNI (and under TAILOR_NO_AVX512=1). The same loops as qpack_avx512.c on two ymm
 * halves (rows 0-7, 8-15); the 4-input step is vpmaddubsw + vpmaddwd (no VNNI): the weights are
 * the unsigned operand (q4 nibbles 0..15, q6 values 0..63: pair sums fit int16), and q8_0's
 * signed weights go through the sign trick (|w| times x with w's sign), so no offset term is
 * needed there (its sum is the same integer). Block sums are exact and the float steps those
 * of the reference: the bits equal the scalar and AVX-512 kernels'. */
#include "qpack.h"
#include "quants_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define TGT "avx2,fma,f16c"
#define AVX2 __attribute__((target(TGT)))
#define INL static inline __attribute__((target(TGT), always_inline))

#define PF 4096


typedef struct { __m256i a, b; } v16i; /* rows 0-7, 8-15 */
typedef struct { __m256 a, b; } v16f;

INL v16i zi(void) { return (v16i){_mm256_setzero_si256(), _mm256_setzero_si256()}; }
INL v16f zf(void) { return (v16f){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
INL v16i ld(const uint8_t *p) { return (v16i){_mm256_loadu_si256((const __m256i *)p), _mm256_loadu_si256((const __m256i *)(p + 32))}; }
INL v16f ld_h16(const uint8_t *p) {
    return (v16f){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)))};
}
INL __m256i bc32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
/* acc + 4-input dot of unsigned u with signed broadcast x, per int32 lane */
INL __m256i dp(__m256i acc, __m256i u, __m256i x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
}
INL v16i dp16(v16i acc, v16i u, __m256i x) { return (v16i){dp(acc.a, u.a, x), dp(acc.b, u.b, x)}; }
/* signed w: |w| (unsigned) times x with w's sign */
INL v16i dp16s(v16i acc, v16i w, __m256i x) {
    return (v16i){dp(acc.a, _mm256_sign_epi8(w.a, w.a), _mm256_sign_epi8(x, w.a)),
                  dp(acc.b, _mm256_sign_epi8(w.b, w.b), _mm256_sign_epi8(x, w.b))};
}
INL v16i and16(v16i x, __m256i m) { return (v16i){_mm256_and_si256(x.a, m), _mm256_and_si256(x.b, m)}; }
INL v16i srl16(v16i x, int k) { return (v16i){_mm256_srli_epi16(x.a, k), _mm256_srli_epi16(x.b, k)}; }
INL v16i sll16(v16i x, int k) { return (v16i){_mm256_slli_epi16(x.a, k), _mm256_slli_epi16(x.b, k)}; }
INL v16i or16(v16i x, v16i y) { return (v16i){_mm256_or_si256(x.a, y.a), _mm256_or_si256(x.b, y.b)}; }
INL v16i add16(v16i x, v16i y) { return (v16i){_mm256_add_epi32(x.a, y.a), _mm256_add_epi32(x.b, y.b)}; }
INL v16i mul16(v16i x, v16i y) { return (v16i){_mm256_mullo_epi32(x.a, y.a), _mm256_mullo_epi32(x.b, y.b)}; }
INL v16f mulf(v16f x, __m256 s) { return (v16f){_mm256_mul_ps(x.a, s), _mm256_mul_ps(x.b, s)}; }
INL v16f fma16(v16i i, v16f s, v16f acc) {
    return (v16f){_mm256_fmadd_ps(_mm256_cvtepi32_ps(i.a), s.a, acc.a), _mm256_fmadd_ps(_mm256_cvtepi32_ps(i.b), s.b, acc.b)};
}
INL v16i u8x16(const uint8_t *p) { /* 16 bytes -> 16 int32 (zero-extended) */
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    return (v16i){_mm256_cvtepu8_epi32(v), _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))};
}
INL v16i s8x16(const uint8_t *p) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    return (v16i){_mm256_cvtepi8_epi32(v), _mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))};
}
INL void prefetch_tile(const uint8_t *t, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)t + PF + o, _MM_HINT_T0);
}
INL void store16(float *y, int64_t n_valid, v16f v) {
    if (n_valid >= 16) {
        _mm256_storeu_ps(y, v.a);
        _mm256_storeu_ps(y + 8, v.b);
    } else {
        float tmp[16];
        _mm256_storeu_ps(tmp, v.a);
        _mm256_storeu_ps(tmp + 8, v.b);
        memcpy(y, tmp, sizeof(float) * (size_t)n_valid);
    }
}

enum { A_Q4_0, A_Q4_1, A_Q8_0 };

INL void gemm_a(int f, int NB, const tlq_packed *p, int64_t g, const uint8_t *xp, size_t xs, float *Y, int64_t ldy,
                bool pf) {
    const int64_t nc = p->n_cols, n = p->n_in;
    const size_t tb = p->tile;
    const uint8_t *tile = p->data + (size_t)g * (size_t)nc * tb;
    const int8_t *xq[4];
    const float *dx[4];
    const int32_t *aux[4];
    for (int j = 0; j < NB; j++) {
        const tlq_xp_view v = tlq_xp_row(xp, xs, j, n, nc);
        xq[j] = v.q, dx[j] = v.d, aux[j] = v.aux;
    }
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    v16f fa[4], ma[4];
    for (int j = 0; j < NB; j++) fa[j] = ma[j] = zf();
    for (int64_t c = 0; c < nc; c++, tile += tb) {
        if (pf) prefetch_tile(tile, tb);
        const v16f dw = ld_h16(tile);
        v16i acc[4];
        for (int j = 0; j < NB; j++) {
            acc[j] = zi();
            if (f == A_Q4_0) acc[j].a = acc[j].b = _mm256_set1_epi32(-8 * aux[j][c]);
        }
        const int8_t *xo[4];
        for (int j = 0; j < NB; j++) xo[j] = xq[j] + QK * c;
        if (f == A_Q8_0) {
            const uint8_t *ch = tile + 32;
#pragma GCC unroll 8
            for (int s = 0; s < 8; s++) {
                const v16i w = ld(ch + 64 * s);
#pragma GCC unroll 4
                for (int j = 0; j < NB; j++) acc[j] = dp16s(acc[j], w, bc32(xo[j] + 4 * s));
            }
        } else {
            const uint8_t *ch = tile + (f == A_Q4_0 ? 32 : 64);
#pragma GCC unroll 4
            for (int s = 0; s < 4; s++) {
                const v16i q = ld(ch + 64 * s);
                const v16i lo = and16(q, m4), hi = and16(srl16(q, 4), m4);
#pragma GCC unroll 4
                for (int j = 0; j < NB; j++) {
                    acc[j] = dp16(acc[j], lo, bc32(xo[j] + 4 * s));
                    acc[j] = dp16(acc[j], hi, bc32(xo[j] + 16 + 4 * s));
                }
            }
        }
        v16f mw = zf();
        if (f == A_Q4_1) mw = ld_h16(tile + 32);
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) {
            fa[j] = fma16(acc[j], mulf(dw, _mm256_set1_ps(dx[j][c])), fa[j]);
            if (f == A_Q4_1) {
                float sx;
                memcpy(&sx, &aux[j][nc + c], 4);
                const __m256 vs = _mm256_set1_ps(sx);
                ma[j].a = _mm256_fmadd_ps(mw.a, vs, ma[j].a);
                ma[j].b = _mm256_fmadd_ps(mw.b, vs, ma[j].b);
            }
        }
    }
    const int64_t valid = p->n_out - g * TLQ_PACK_ROWS;
    for (int j = 0; j < NB; j++) {
        v16f r = fa[j];
        if (f == A_Q4_1) r = (v16f){_mm256_add_ps(fa[j].a, ma[j].a), _mm256_add_ps(fa[j].b, ma[j].b)};
        store16(Y + (size_t)j * ldy + g * TLQ_PACK_ROWS, valid, r);
    }
}

INL void gemm_q4k(int NB, const tlq_packed *p, int64_t g, const uint8_t *xp, size_t xs, float *Y, int64_t ldy, bool pf) {
    const int64_t nc = p->n_cols, n = p->n_in;
    const size_t tb = p->tile;
    const uint8_t *tile = p->data + (size_t)g * (size_t)nc * tb;
    const int8_t *xq[2];
    const float *dx[2];
    const int32_t *aux[2];
    for (int j = 0; j < NB; j++) {
        const tlq_xp_view v = tlq_xp_row(xp, xs, j, n, nc);
        xq[j] = v.q, dx[j] = v.d, aux[j] = v.aux;
    }
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    v16f fa[2], ma[2];
    for (int j = 0; j < NB; j++) fa[j] = ma[j] = zf();
    for (int64_t c = 0; c < nc; c++, tile += tb) {
        if (pf) prefetch_tile(tile, tb);
        v16i tot[2], mins[2];
        for (int j = 0; j < NB; j++) tot[j] = mins[j] = zi();
        const uint8_t *ch = tile + 320;
#pragma GCC unroll 1
        for (int jj = 0; jj < 4; jj++) {
            v16i lo_acc[2], hi_acc[2];
            for (int j = 0; j < NB; j++) lo_acc[j] = hi_acc[j] = zi();
            const int8_t *xo[2];
            for (int j = 0; j < NB; j++) xo[j] = xq[j] + QKK * c + 64 * jj;
#pragma GCC unroll 8
            for (int s = 0; s < 8; s++) {
                const v16i q = ld(ch + 64 * (8 * jj + s));
                const v16i lo = and16(q, m4), hi = and16(srl16(q, 4), m4);
                for (int j = 0; j < NB; j++) {
                    lo_acc[j] = dp16(lo_acc[j], lo, bc32(xo[j] + 4 * s));
                    hi_acc[j] = dp16(hi_acc[j], hi, bc32(xo[j] + 32 + 4 * s));
                }
            }
            const v16i sl = u8x16(tile + 64 + 16 * (2 * jj)), sh = u8x16(tile + 64 + 16 * (2 * jj + 1));
            const v16i ml = u8x16(tile + 192 + 16 * (2 * jj)), mh = u8x16(tile + 192 + 16 * (2 * jj + 1));
            for (int j = 0; j < NB; j++) {
                tot[j] = add16(tot[j], add16(mul16(lo_acc[j], sl), mul16(hi_acc[j], sh)));
                const int16_t *bs = (const int16_t *)(aux[j] + 16 * c + 8 + jj);
                const __m256i b0 = _mm256_set1_epi32(bs[0]), b1 = _mm256_set1_epi32(bs[1]);
                mins[j].a = _mm256_add_epi32(mins[j].a, _mm256_add_epi32(_mm256_mullo_epi32(ml.a, b0), _mm256_mullo_epi32(mh.a, b1)));
                mins[j].b = _mm256_add_epi32(mins[j].b, _mm256_add_epi32(_mm256_mullo_epi32(ml.b, b0), _mm256_mullo_epi32(mh.b, b1)));
            }
        }
        const v16f d = ld_h16(tile), dmin = ld_h16(tile + 32);
        for (int j = 0; j < NB; j++) {
            const __m256 vdx = _mm256_set1_ps(dx[j][c]);
            fa[j] = fma16(tot[j], mulf(d, vdx), fa[j]);
            ma[j] = fma16(mins[j], mulf(dmin, vdx), ma[j]);
        }
    }
    const int64_t valid = p->n_out - g * TLQ_PACK_ROWS;
    for (int j = 0; j < NB; j++)
        store16(Y + (size_t)j * ldy + g * TLQ_PACK_ROWS, valid,
                (v16f){_mm256_sub_ps(fa[j].a, ma[j].a), _mm256_sub_ps(fa[j].b, ma[j].b)});
}

INL void gemm_q6k(int NB, const tlq_packed *p, int64_t g, const uint8_t *xp, size_t xs, float *Y, int64_t ldy, bool pf) {
    const int64_t nc = p->n_cols, n = p->n_in;
    const size_t tb = p->tile;
    const uint8_t *tile = p->data + (size_t)g * (size_t)nc * tb;
    const int8_t *xq[2];
    const float *dx[2];
    const int32_t *aux[2];
    for (int j = 0; j < NB; j++) {
        const tlq_xp_view v = tlq_xp_row(xp, xs, j, n, nc);
        xq[j] = v.q, dx[j] = v.d, aux[j] = v.aux;
    }
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    v16f fa[2];
    for (int j = 0; j < NB; j++) fa[j] = zf();
    for (int64_t c = 0; c < nc; c++, tile += tb) {
        if (pf) prefetch_tile(tile, tb);
        v16i tot[2];
        for (int j = 0; j < NB; j++) tot[j] = zi();
#pragma GCC unroll 1
        for (int hq = 0; hq < 4; hq++) {
            const int h = hq >> 1, s0 = 4 * (hq & 1);
            v16i a[2][4];
            for (int j = 0; j < NB; j++) a[j][0] = a[j][1] = a[j][2] = a[j][3] = zi();
            const int8_t *xo[2];
            for (int j = 0; j < NB; j++) xo[j] = xq[j] + QKK * c + 128 * h;
            for (int s = s0; s < s0 + 4; s++) {
                const uint8_t *ch = tile + 288 + 192 * (8 * h + s);
                const v16i l0 = ld(ch), l1 = ld(ch + 64), hb = ld(ch + 128);
                const v16i v0 = or16(and16(l0, m4), and16(sll16(hb, 4), m30));
                const v16i v1 = or16(and16(l1, m4), and16(sll16(hb, 2), m30));
                const v16i v2 = or16(and16(srl16(l0, 4), m4), and16(hb, m30));
                const v16i v3 = or16(and16(srl16(l1, 4), m4), and16(srl16(hb, 2), m30));
                for (int j = 0; j < NB; j++) {
                    a[j][0] = dp16(a[j][0], v0, bc32(xo[j] + 4 * s));
                    a[j][1] = dp16(a[j][1], v1, bc32(xo[j] + 32 + 4 * s));
                    a[j][2] = dp16(a[j][2], v2, bc32(xo[j] + 64 + 4 * s));
                    a[j][3] = dp16(a[j][3], v3, bc32(xo[j] + 96 + 4 * s));
                }
            }
            for (int q = 0; q < 4; q++) {
                const int sb = 8 * h + 2 * q + (hq & 1);
                const v16i sc = s8x16(tile + 32 + 16 * sb);
                for (int j = 0; j < NB; j++) {
                    const int16_t *bs = (const int16_t *)(aux[j] + 16 * c);
                    const __m256i corr = _mm256_set1_epi32(32 * (int32_t)bs[sb]);
                    const v16i t = {_mm256_sub_epi32(a[j][q].a, corr), _mm256_sub_epi32(a[j][q].b, corr)};
                    tot[j] = add16(tot[j], mul16(t, sc));
                }
            }
        }
        const v16f d = ld_h16(tile);
        for (int j = 0; j < NB; j++) fa[j] = fma16(tot[j], mulf(d, _mm256_set1_ps(dx[j][c])), fa[j]);
    }
    const int64_t valid = p->n_out - g * TLQ_PACK_ROWS;
    for (int j = 0; j < NB; j++) store16(Y + (size_t)j * ldy + g * TLQ_PACK_ROWS, valid, fa[j]);
}

#define A_CASE(F, NB) gemm_a(F, NB, p, g, xr, x_stride, y, ldy, pf)

AVX2 void tlq_gemm_avx2(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x,
                        float *Y, int64_t ldy) {
    const tl_type t = p->type;
    const int maxnb = t == TL_TYPE_Q4_K || t == TL_TYPE_Q6_K ? 2 : 4;
    for (int64_t g = g0; g < g1; g++) {
        for (int64_t i = 0; i < n_x;) {
            const int nb = (int)(n_x - i < maxnb ? n_x - i : maxnb);
            const uint8_t *xr = xp + (size_t)i * x_stride;
            float *y = Y + i * ldy;
            const bool pf = i == 0;
            switch (t) {
            case TL_TYPE_Q4_0:
                switch (nb) { case 1: A_CASE(A_Q4_0, 1); break; case 2: A_CASE(A_Q4_0, 2); break;
                              case 3: A_CASE(A_Q4_0, 3); break; default: A_CASE(A_Q4_0, 4); break; }
                break;
            case TL_TYPE_Q4_1:
                switch (nb) { case 1: A_CASE(A_Q4_1, 1); break; case 2: A_CASE(A_Q4_1, 2); break;
                              case 3: A_CASE(A_Q4_1, 3); break; default: A_CASE(A_Q4_1, 4); break; }
                break;
            case TL_TYPE_Q8_0:
                switch (nb) { case 1: A_CASE(A_Q8_0, 1); break; case 2: A_CASE(A_Q8_0, 2); break;
                              case 3: A_CASE(A_Q8_0, 3); break; default: A_CASE(A_Q8_0, 4); break; }
                break;
            case TL_TYPE_Q4_K:
                if (nb == 1) gemm_q4k(1, p, g, xr, x_stride, y, ldy, pf);
                else gemm_q4k(2, p, g, xr, x_stride, y, ldy, pf);
                break;
            case TL_TYPE_Q6_K:
                if (nb == 1) gemm_q6k(1, p, g, xr, x_stride, y, ldy, pf);
                else gemm_q6k(2, p, g, xr, x_stride, y, ldy, pf);
                break;
            default: break;
            }
            i += nb;
        }
    }
}

#else
#include <stdlib.h>
void tlq_gemm_avx2(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x,
                   float *Y, int64_t ldy) {
    (void)p; (void)g0; (void)g1; (void)xp; (void)x_stride; (void)n_x; (void)Y; (void)ldy;
    abort();
}
#endif
