/* qpack_avx512.c: the x16 GEMM kernels (qpack.h) with AVX-512 F/BW/VL + VNNI, chosen at run
 * time (the file is compiled for baseline x86-64; every function carries its target).
 *
 * A 64-byte weight chunk holds 4 quant bytes of each of the 16 rows; one vpdpbusd against 4
 * activation bytes broadcast to all lanes does one 4-input step of the 16 dot products. The
 * chunk is unpacked once and used for up to NB activation rows (the rows' accumulators live in
 * registers); a block's integer sums are exact, then the float steps of qpack.h, in the same
 * order as the scalar reference, so every kernel gives the reference's bits. Signed weights
 * (q4_0: value - 8 stored as 0..15; q8_0: xored with 0x80) enter vpdpbusd as unsigned bytes
 * and the offset comes back through the activation row's -offset * sum term, which starts the
 * accumulator. While the weights stream from memory (a few activation rows) the kernels
 * prefetch X16_PF bytes ahead of the tile they read. */
#include "qpack.h"
#include "quants_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "qpack_x512.h"

#define TGT "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
#define AVX512 __attribute__((target(TGT)))
#define INL static inline __attribute__((target(TGT), always_inline))

INL __m512i bc32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* ------------------------------------------------------------------ 32-wide formats */

enum { A_Q4_0, A_Q4_1, A_Q8_0 };

/* NB activation rows (x rows xs bytes apart) against group g, all columns */
INL void gemm_a(int f, int NB, const tlq_packed *p, int64_t g, const uint8_t *xp, size_t xs, float *Y, int64_t ldy,
                bool pf) {
    const int64_t nc = p->n_cols, n = p->n_in;
    const size_t tb = p->tile;
    const uint8_t *tile = p->data + (size_t)g * (size_t)nc * tb;
    const int8_t *xq[8];
    const float *dx[8];
    const int32_t *aux[8];
    for (int j = 0; j < NB; j++) {
        const tlq_xp_view v = tlq_xp_row(xp, xs, j, n, nc);
        xq[j] = v.q, dx[j] = v.d, aux[j] = v.aux;
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 fa[8], ma[8];
    for (int j = 0; j < NB; j++) fa[j] = ma[j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < nc; c++, tile += tb) {
        if (pf) prefetch_tile(tile, tb);
        const __m512 dw = ld_h16(tile);
        __m512i acc[8], acc2[8];
        for (int j = 0; j < NB; j++) {
            acc[j] = f == A_Q4_1 ? _mm512_setzero_si512() : _mm512_set1_epi32((f == A_Q4_0 ? -8 : -128) * aux[j][c]);
            acc2[j] = _mm512_setzero_si512();
        }
        const int8_t *xo[8];
        for (int j = 0; j < NB; j++) xo[j] = xq[j] + QK * c;
        if (f == A_Q8_0) {
            const uint8_t *ch = tile + 32;
#pragma GCC unroll 8
            for (int s = 0; s < 8; s++) {
                const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(ch + 64 * s), _mm512_set1_epi8((char)0x80));
#pragma GCC unroll 8
                for (int j = 0; j < NB; j++) {
                    if (s & 1) acc2[j] = _mm512_dpbusd_epi32(acc2[j], u, bc32(xo[j] + 4 * s));
                    else acc[j] = _mm512_dpbusd_epi32(acc[j], u, bc32(xo[j] + 4 * s));
                }
            }
        } else {
            const uint8_t *ch = tile + (f == A_Q4_0 ? 32 : 64);
#pragma GCC unroll 4
            for (int s = 0; s < 4; s++) {
                const __m512i q = _mm512_loadu_si512(ch + 64 * s);
                const __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
#pragma GCC unroll 8
                for (int j = 0; j < NB; j++) {
                    acc[j] = _mm512_dpbusd_epi32(acc[j], lo, bc32(xo[j] + 4 * s));
                    acc2[j] = _mm512_dpbusd_epi32(acc2[j], hi, bc32(xo[j] + 16 + 4 * s));
                }
            }
        }
        __m512 mw = _mm512_setzero_ps();
        if (f == A_Q4_1) mw = ld_h16(tile + 32);
#pragma GCC unroll 8
        for (int j = 0; j < NB; j++) {
            const __m512i isum = _mm512_add_epi32(acc[j], acc2[j]);
            const __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(dx[j][c]));
            fa[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, fa[j]);
            if (f == A_Q4_1) {
                float sx;
                memcpy(&sx, &aux[j][nc + c], 4);
                ma[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), ma[j]);
            }
        }
    }
    const int64_t valid = p->n_out - g * TLQ_PACK_ROWS;
    for (int j = 0; j < NB; j++)
        store16(Y + (size_t)j * ldy + g * TLQ_PACK_ROWS, valid, f == A_Q4_1 ? _mm512_add_ps(fa[j], ma[j]) : fa[j]);
}

/* ------------------------------------------------------------------ q4_K */

INL void gemm_q4k(int NB, const tlq_packed *p, int64_t g, const uint8_t *xp, size_t xs, float *Y, int64_t ldy, bool pf) {
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
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 fa[4], ma[4];
    for (int j = 0; j < NB; j++) fa[j] = ma[j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < nc; c++, tile += tb) {
        if (pf) prefetch_tile(tile, tb);
        __m512i tot[4], mins[4];
        for (int j = 0; j < NB; j++) tot[j] = mins[j] = _mm512_setzero_si512();
        const uint8_t *ch = tile + 320;
#pragma GCC unroll 1
        for (int jj = 0; jj < 4; jj++) {
            __m512i lo_acc[4], hi_acc[4];
            for (int j = 0; j < NB; j++) lo_acc[j] = hi_acc[j] = _mm512_setzero_si512();
            const int8_t *xo[4];
            for (int j = 0; j < NB; j++) xo[j] = xq[j] + QKK * c + 64 * jj;
#pragma GCC unroll 8
            for (int s = 0; s < 8; s++) {
                const __m512i q = _mm512_loadu_si512(ch + 64 * (8 * jj + s));
                const __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
#pragma GCC unroll 4
                for (int j = 0; j < NB; j++) {
                    lo_acc[j] = _mm512_dpbusd_epi32(lo_acc[j], lo, bc32(xo[j] + 4 * s));
                    hi_acc[j] = _mm512_dpbusd_epi32(hi_acc[j], hi, bc32(xo[j] + 32 + 4 * s));
                }
            }
            const __m512i sl = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(tile + 64 + 16 * (2 * jj))));
            const __m512i sh = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(tile + 64 + 16 * (2 * jj + 1))));
            const __m512i ml = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(tile + 192 + 16 * (2 * jj))));
            const __m512i mh = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(tile + 192 + 16 * (2 * jj + 1))));
            const __m512i mpair = _mm512_or_si512(ml, _mm512_slli_epi32(mh, 16));
#pragma GCC unroll 4
            for (int j = 0; j < NB; j++) {
                tot[j] = _mm512_add_epi32(tot[j], _mm512_add_epi32(_mm512_mullo_epi32(lo_acc[j], sl), _mm512_mullo_epi32(hi_acc[j], sh)));
                mins[j] = _mm512_dpwssd_epi32(mins[j], mpair, _mm512_set1_epi32(aux[j][16 * c + 8 + jj]));
            }
        }
        const __m512 d = ld_h16(tile), dmin = ld_h16(tile + 32);
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) {
            const __m512 vdx = _mm512_set1_ps(dx[j][c]);
            fa[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[j]), _mm512_mul_ps(d, vdx), fa[j]);
            ma[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins[j]), _mm512_mul_ps(dmin, vdx), ma[j]);
        }
    }
    const int64_t valid = p->n_out - g * TLQ_PACK_ROWS;
    for (int j = 0; j < NB; j++) store16(Y + (size_t)j * ldy + g * TLQ_PACK_ROWS, valid, _mm512_sub_ps(fa[j], ma[j]));
}

/* ------------------------------------------------------------------ q6_K */

INL void gemm_q6k(int NB, const tlq_packed *p, int64_t g, const uint8_t *xp, size_t xs, float *Y, int64_t ldy, bool pf) {
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
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512 fa[4];
    for (int j = 0; j < NB; j++) fa[j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < nc; c++, tile += tb) {
        if (pf) prefetch_tile(tile, tb);
        __m512i tot[4];
        for (int j = 0; j < NB; j++) tot[j] = _mm512_setzero_si512();
#pragma GCC unroll 1
        for (int hq = 0; hq < 4; hq++) { /* h = hq / 2; s in [4 (hq % 2), +4): sub-blocks 8h + 2q + hq % 2 */
            const int h = hq >> 1, s0 = 4 * (hq & 1);
            __m512i a[4][4];
            for (int j = 0; j < NB; j++) a[j][0] = a[j][1] = a[j][2] = a[j][3] = _mm512_setzero_si512();
            const int8_t *xo[4];
            for (int j = 0; j < NB; j++) xo[j] = xq[j] + QKK * c + 128 * h;
#pragma GCC unroll 4
            for (int s = s0; s < s0 + 4; s++) {
                const uint8_t *ch = tile + 288 + 192 * (8 * h + s);
                const __m512i l0 = _mm512_loadu_si512(ch), l1 = _mm512_loadu_si512(ch + 64), hb = _mm512_loadu_si512(ch + 128);
                const __m512i v0 = _mm512_or_si512(_mm512_and_si512(l0, m4), _mm512_and_si512(_mm512_slli_epi16(hb, 4), m30));
                const __m512i v1 = _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_and_si512(_mm512_slli_epi16(hb, 2), m30));
                const __m512i v2 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m4), _mm512_and_si512(hb, m30));
                const __m512i v3 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4),
                                                   _mm512_and_si512(_mm512_srli_epi16(hb, 2), m30));
#pragma GCC unroll 4
                for (int j = 0; j < NB; j++) {
                    a[j][0] = _mm512_dpbusd_epi32(a[j][0], v0, bc32(xo[j] + 4 * s));
                    a[j][1] = _mm512_dpbusd_epi32(a[j][1], v1, bc32(xo[j] + 32 + 4 * s));
                    a[j][2] = _mm512_dpbusd_epi32(a[j][2], v2, bc32(xo[j] + 64 + 4 * s));
                    a[j][3] = _mm512_dpbusd_epi32(a[j][3], v3, bc32(xo[j] + 96 + 4 * s));
                }
            }
            /* sub-block of q: 8h + 2q + (hq & 1); its scales, and the -32 offset against its bsum */
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                const int sb = 8 * h + 2 * q + (hq & 1);
                const __m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(tile + 32 + 16 * sb)));
#pragma GCC unroll 4
                for (int j = 0; j < NB; j++) {
                    const int16_t *bs = (const int16_t *)(aux[j] + 16 * c);
                    const __m512i corr = _mm512_set1_epi32(32 * (int32_t)bs[sb]);
                    tot[j] = _mm512_add_epi32(tot[j], _mm512_mullo_epi32(_mm512_sub_epi32(a[j][q], corr), sc));
                }
            }
        }
        const __m512 d = ld_h16(tile);
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++)
            fa[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[j]), _mm512_mul_ps(d, _mm512_set1_ps(dx[j][c])), fa[j]);
    }
    const int64_t valid = p->n_out - g * TLQ_PACK_ROWS;
    for (int j = 0; j < NB; j++) store16(Y + (size_t)j * ldy + g * TLQ_PACK_ROWS, valid, fa[j]);
}

/* ------------------------------------------------------------------ activation rows */

/* roundf (half away from zero), exactly: trunc, then a step away from zero where |frac| >= 0.5 */
INL __m512i roundf_epi32(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __mmask16 big = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u));
    const __m512 step = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_set1_ps(1.0f)), sign));
    return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, big, t, step));
}

/* The kernel row of x straight from floats: the bytes tlq_xp_from_q8 builds from the q8_1 /
 * q8_K reference quantizers' blocks (the same float operations, fp16 by F16C's round to
 * nearest even, as tl_fp32_to_fp16 for finite values). */
AVX512 void tlq_xp_quantize_avx512(tl_type t, const float *x, void *vxp, int64_t n) {
    uint8_t *xp = vxp;
    if (tlq_xp_family(t) == 1) {
        const int64_t nb = n / QK;
        float *dx = (float *)(xp + tlq_xp_scales_at(n));
        int32_t *sum = (int32_t *)(dx + nb);
        float *sx = (float *)(sum + nb);
        for (int64_t b = 0; b < nb; b++) {
            const __m512 a = _mm512_loadu_ps(x + QK * b), c = _mm512_loadu_ps(x + QK * b + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(c)));
            const float d = amax / 127;
            const float id = d ? 1.0f / d : 0.0f;
            const __m512 vid = _mm512_set1_ps(id);
            const __m512i ra = roundf_epi32(_mm512_mul_ps(a, vid)), rc = roundf_epi32(_mm512_mul_ps(c, vid));
            _mm_storeu_si128((__m128i *)(xp + QK * b), _mm512_cvtsepi32_epi8(ra));
            _mm_storeu_si128((__m128i *)(xp + QK * b + 16), _mm512_cvtsepi32_epi8(rc));
            const int32_t s = _mm512_reduce_add_epi32(_mm512_add_epi32(ra, rc));
            dx[b] = _cvtsh_ss(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
            sum[b] = s;
            sx[b] = _cvtsh_ss(_cvtss_sh((float)s * d, _MM_FROUND_TO_NEAREST_INT));
        }
        return;
    }
    const int64_t nc = n / QKK;
    float *dx = (float *)(xp + tlq_xp_scales_at(n));
    int32_t *aux = (int32_t *)(dx + nc);
    for (int64_t c = 0; c < nc; c++, x += QKK) {
        __m512 m = _mm512_setzero_ps();
        for (int k = 0; k < 16; k++) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + 16 * k)));
        const float amax = _mm512_reduce_max_ps(m);
        int16_t bs[32] = {0};
        if (!amax) {
            memset(xp + QKK * c, 0, QKK);
            dx[c] = 0.0f;
            memcpy(aux + 16 * c, bs, 64);
            continue;
        }
        float mx = 0; /* the first value of largest magnitude, with its sign */
        const __m512 va = _mm512_set1_ps(amax);
        for (int k = 0; k < 16; k++) {
            const __mmask16 e = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * k)), va, _CMP_EQ_OQ);
            if (e) {
                mx = x[16 * k + __builtin_ctz(e)];
                break;
            }
        }
        const float iscale = -127.f / mx;
        const __m512 vs = _mm512_set1_ps(iscale);
        for (int k = 0; k < 16; k++) { /* cvtps rounds to nearest even, as nearest_int */
            const __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(vs, _mm512_loadu_ps(x + 16 * k))),
                                               _mm512_set1_epi32(127));
            _mm_storeu_si128((__m128i *)(xp + QKK * c + 16 * k), _mm512_cvtsepi32_epi8(q));
            bs[k] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        for (int j = 0; j < 8; j++) bs[16 + j] = (int16_t)(bs[2 * j] + bs[2 * j + 1]);
        dx[c] = 1 / iscale;
        memcpy(aux + 16 * c, bs, 64);
    }
}

/* ------------------------------------------------------------------ entry */

#define A_CASE(F, NB) gemm_a(F, NB, p, g, xr, x_stride, y, ldy, pf)
#define K_CASE(FN, NB) FN(NB, p, g, xr, x_stride, y, ldy, pf)

AVX512 void tlq_gemm_avx512(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride,
                            int64_t n_x, float *Y, int64_t ldy) {
    const tl_type t = p->type;
    const int maxnb = t == TL_TYPE_Q4_K || t == TL_TYPE_Q6_K ? 4 : 8;
    for (int64_t g = g0; g < g1; g++) {
        for (int64_t i = 0; i < n_x;) {
            const int nb = (int)(n_x - i < maxnb ? n_x - i : maxnb);
            const uint8_t *xr = xp + (size_t)i * x_stride;
            float *y = Y + i * ldy;
            const bool pf = i == 0;
            switch (t) {
            case TL_TYPE_Q4_0:
                switch (nb) {
                case 1: A_CASE(A_Q4_0, 1); break; case 2: A_CASE(A_Q4_0, 2); break; case 3: A_CASE(A_Q4_0, 3); break;
                case 4: A_CASE(A_Q4_0, 4); break; case 5: A_CASE(A_Q4_0, 5); break; case 6: A_CASE(A_Q4_0, 6); break;
                case 7: A_CASE(A_Q4_0, 7); break; default: A_CASE(A_Q4_0, 8); break;
                }
                break;
            case TL_TYPE_Q4_1:
                switch (nb) {
                case 1: A_CASE(A_Q4_1, 1); break; case 2: A_CASE(A_Q4_1, 2); break; case 3: A_CASE(A_Q4_1, 3); break;
                case 4: A_CASE(A_Q4_1, 4); break; case 5: A_CASE(A_Q4_1, 5); break; case 6: A_CASE(A_Q4_1, 6); break;
                case 7: A_CASE(A_Q4_1, 7); break; default: A_CASE(A_Q4_1, 8); break;
                }
                break;
            case TL_TYPE_Q8_0:
                switch (nb) {
                case 1: A_CASE(A_Q8_0, 1); break; case 2: A_CASE(A_Q8_0, 2); break; case 3: A_CASE(A_Q8_0, 3); break;
                case 4: A_CASE(A_Q8_0, 4); break; case 5: A_CASE(A_Q8_0, 5); break; case 6: A_CASE(A_Q8_0, 6); break;
                case 7: A_CASE(A_Q8_0, 7); break; default: A_CASE(A_Q8_0, 8); break;
                }
                break;
            case TL_TYPE_Q4_K:
                switch (nb) {
                case 1: K_CASE(gemm_q4k, 1); break; case 2: K_CASE(gemm_q4k, 2); break;
                case 3: K_CASE(gemm_q4k, 3); break; default: K_CASE(gemm_q4k, 4); break;
                }
                break;
            case TL_TYPE_Q6_K:
                switch (nb) {
                case 1: K_CASE(gemm_q6k, 1); break; case 2: K_CASE(gemm_q6k, 2); break;
                case 3: K_CASE(gemm_q6k, 3); break; default: K_CASE(gemm_q6k, 4); break;
                }
                break;
            default: break;
            }
            i += nb;
        }
    }
}

#else
#include <stdlib.h>
void tlq_xp_quantize_avx512(tl_type t, const float *x, void *xp, int64_t n) {
    (void)t; (void)x; (void)xp; (void)n;
    abort();
}
void tlq_gemm_avx512(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x,
                     float *Y, int64_t ldy) {
    (void)p; (void)g0; (void)g1; (void)xp; (void)x_stride; (void)n_x; (void)Y; (void)ldy;
    abort();
}
#endif
