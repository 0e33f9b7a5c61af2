/* quant_kernels.c: quantization, packing and the fused attention kernels of the quantized KV
 * store; a scalar reference and an AVX2/FMA/F16C version picked at run time.
 *
 * The AVX2 kernels decode codes to f32 in registers 8 at a time (one 8-byte load, shift, mask,
 * widen, then x = code*s + z by one FMA) into a tile of at most 8 tokens x head_dim that lives
 * in L1, and let all the queries of a GQA group (times query rows) use the tile: codes are
 * decoded once per KV head, never the whole history. Token-layout tiles are rows (scores by 8
 * dot products reduced with hadd), channel-layout tiles are columns (scores by broadcast FMAs,
 * no horizontal sums; for values the column tile is transposed in registers). */
#include "quant_kernels.h"
#include "../cpu/quants.h"

#include <math.h>
#include <stdlib.h>
#include <immintrin.h>

/* ---------------- quantization ---------------- */

void kvq_params_range(float mn, float mx, int bits, bool sym, uint16_t *par) {
    if (sym) {
        const float amax = fmaxf(fabsf(mn), fabsf(mx));
        const int qm = (1 << (bits - 1)) - 1;
        par[0] = tl_fp32_to_fp16(amax / (float)qm);
    } else {
        const int qm = (1 << bits) - 1;
        par[0] = tl_fp32_to_fp16((mx - mn) / (float)qm);
        par[1] = tl_fp32_to_fp16(mn);
    }
}

void kvq_params(const float *x, int n, int stride, int bits, bool sym, uint16_t *par) {
    float mn = x[0], mx = x[0];
    for (int i = 1; i < n; i++) {
        const float v = x[(size_t)i * stride];
        mn = fminf(mn, v);
        mx = fmaxf(mx, v);
    }
    kvq_params_range(mn, mx, bits, sym, par);
}

void kvq_decode_params(const uint16_t *par, int bits, bool sym, float *s, float *z) {
    *s = tl_fp16_to_fp32(par[0]);
    *z = sym ? -(float)(1 << (bits - 1)) * *s : tl_fp16_to_fp32(par[1]);
}

int kvq_encode(float x, float s, float z, int bits) {
    const int qm = (1 << bits) - 1;
    if (!(s > 0)) return 0; /* constant group (or zero scale after f16 rounding): every code is z */
    const float q = nearbyintf((x - z) / s);
    return q < 0 ? 0 : q > (float)qm ? qm : (int)q;
}

void kvq_pack32(const uint8_t c[32], int bits, uint8_t *dst) {
    switch (bits) {
    case 8: memcpy(dst, c, 32); break;
    case 4:
        for (int j = 0; j < 16; j++) dst[j] = (uint8_t)(c[j] | c[j + 16] << 4);
        break;
    case 2:
        for (int j = 0; j < 8; j++) dst[j] = (uint8_t)(c[j] | c[j + 8] << 2 | c[j + 16] << 4 | c[j + 24] << 6);
        break;
    default:
        for (int j = 0; j < 4; j++) {
            uint8_t b = 0;
            for (int k = 0; k < 8; k++) b |= (uint8_t)(c[8 * j + k] << k);
            dst[j] = b;
        }
    }
}

static inline int code_at(const uint8_t *u, int bits, int i) {
    switch (bits) {
    case 8: return u[i];
    case 4: return (u[i & 15] >> (4 * (i >> 4))) & 15;
    case 2: return (u[i & 7] >> (2 * (i >> 3))) & 3;
    default: return (u[i >> 3] >> (i & 7)) & 1;
    }
}

void kvq_hadamard(float *x, int n) {
    for (int h = 1; h < n; h <<= 1)
        for (int i = 0; i < n; i += h << 1)
            for (int j = i; j < i + h; j++) {
                const float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    const float s = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++) x[i] *= s;
}

/* ---------------- scalar reference ---------------- */

/* Value (token t, channel c) of a run, dequantized. */
static float ref_x(const kvq_run *r, int t, int c) {
    const int ub = kvq_unit_bytes(r->bits), ppg = r->sym ? 1 : 2;
    const uint16_t *par;
    int code;
    if (r->ce == 0) { /* TOK */
        const uint8_t *row = r->codes + (size_t)t * (r->d / 32) * ub;
        code = code_at(row + (c / 32) * ub, r->bits, c % 32);
        par = r->params + (size_t)t * r->pstride + (c / r->g) * ppg;
    } else { /* CH */
        const int tg = t / r->g, tt = t % r->g;
        const uint8_t *col = r->codes + ((size_t)tg * r->d + c) * (r->g / 32) * ub;
        code = code_at(col + (tt / 32) * ub, r->bits, tt % 32);
        par = r->params + (size_t)tg * (r->d / r->ce) * ppg + (c / r->ce) * ppg;
    }
    float s, z;
    kvq_decode_params(par, r->bits, r->sym, &s, &z);
    return (float)code * s + z;
}

static void ref_scores(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss) {
    float x[KVQ_MAX_DIM];
    for (int t = 0; t < r->n; t++) {
        for (int c = 0; c < r->d; c++) x[c] = ref_x(r, t, c);
        for (int i = 0; i < nq; i++) {
            float a = 0;
            for (int c = 0; c < r->d; c++) a += q[(size_t)i * qs + c] * x[c];
            s[(size_t)i * ss + t] = a;
        }
    }
}

static void ref_accum(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as) {
    float x[KVQ_MAX_DIM];
    for (int t = 0; t < r->n; t++) {
        for (int c = 0; c < r->d; c++) x[c] = ref_x(r, t, c);
        for (int i = 0; i < nq; i++) {
            const float w = p[(size_t)i * ps + t];
            for (int c = 0; c < r->d; c++) acc[(size_t)i * as + c] += w * x[c];
        }
    }
}

static void ref_tok_scores(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss) {
    kvq_run rr = *r;
    rr.ce = 0;
    ref_scores(&rr, q, nq, qs, s, ss);
}
static void ref_tok_accum(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as) {
    kvq_run rr = *r;
    rr.ce = 0;
    ref_accum(&rr, p, nq, ps, acc, as);
}

static void ref_f16_scores(const uint16_t *x, int n, int d, const float *q, int nq, int qs, float *s, int ss) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < nq; i++) {
            float a = 0;
            for (int c = 0; c < d; c++) a += q[(size_t)i * qs + c] * tl_fp16_to_fp32(x[(size_t)t * d + c]);
            s[(size_t)i * ss + t] = a;
        }
}
static void ref_f16_accum(const uint16_t *x, int n, int d, const float *p, int nq, int ps, float *acc, int as) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < nq; i++)
            for (int c = 0; c < d; c++)
                acc[(size_t)i * as + c] += p[(size_t)i * ps + t] * tl_fp16_to_fp32(x[(size_t)t * d + c]);
}
static void ref_f32_scores(const float *x, int rs, int n, int d, const float *q, int nq, int qs, float *s, int ss) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < nq; i++) {
            float a = 0;
            for (int c = 0; c < d; c++) a += q[(size_t)i * qs + c] * x[(size_t)t * rs + c];
            s[(size_t)i * ss + t] = a;
        }
}
static void ref_f32_accum(const float *x, int rs, int n, int d, const float *p, int nq, int ps, float *acc, int as) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < nq; i++)
            for (int c = 0; c < d; c++) acc[(size_t)i * as + c] += p[(size_t)i * ps + t] * x[(size_t)t * rs + c];
}

static const kvq_kernels kernels_ref = {"scalar",       ref_tok_scores, ref_tok_accum,  ref_scores,    ref_accum,
                                        ref_f16_scores, ref_f16_accum,  ref_f32_scores, ref_f32_accum,
                                        NULL,           NULL};

const kvq_kernels *kvq_kernels_ref(void) { return &kernels_ref; }

/* ---------------- AVX2 ---------------- */
#if defined(__x86_64__) || defined(__i386__)
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

/* Codes 8i .. 8i+7 of a packed unit as floats. `bits` is a constant after inlining. */
AVX2_INLINE __m256 unpack8(const uint8_t *u, int bits, int i) {
    __m128i v;
    switch (bits) {
    case 8: v = _mm_loadl_epi64((const __m128i *)(u + 8 * i)); break;
    case 4:
        v = _mm_loadl_epi64((const __m128i *)(u + 8 * (i & 1)));
        v = _mm_and_si128(_mm_srli_epi16(v, 4 * (i >> 1)), _mm_set1_epi8(15));
        break;
    case 2:
        v = _mm_loadl_epi64((const __m128i *)u);
        v = _mm_and_si128(_mm_srl_epi16(v, _mm_cvtsi32_si128(2 * i)), _mm_set1_epi8(3));
        break;
    default: {
        const __m256i bitsel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        const __m256i b = _mm256_and_si256(_mm256_set1_epi32(u[i]), bitsel);
        return _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(b, bitsel)), _mm256_set1_ps(1.0f));
    }
    }
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}

AVX2_INLINE void decode_par(const uint16_t *par, int bits, bool sym, float *s, float *z) {
    *s = _cvtsh_ss(par[0]);
    *z = sym ? -(float)(1 << (bits - 1)) * *s : _cvtsh_ss(par[1]);
}

/* Sum of each of 8 vectors, as one vector. */
AVX2_INLINE __m256 reduce8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    const __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
    const __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* scores for up to 8 rows (row pointers; missing rows point at zeros) */
AVX2 static void rows8_scores(const float *const rp[8], int nrows, int d, const float *q, int nq, int qs, float *s,
                              int ss, int t0) {
    for (int i = 0; i < nq; i++) {
        const float *qi = q + (size_t)i * qs;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int c = 0; c < d; c += 8) {
            const __m256 qv = _mm256_loadu_ps(qi + c);
            a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rp[0] + c), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rp[1] + c), a1);
            a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rp[2] + c), a2);
            a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rp[3] + c), a3);
            a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rp[4] + c), a4);
            a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rp[5] + c), a5);
            a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rp[6] + c), a6);
            a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rp[7] + c), a7);
        }
        const __m256 r = reduce8(a0, a1, a2, a3, a4, a5, a6, a7);
        float *si = s + (size_t)i * ss + t0;
        if (nrows == 8) {
            _mm256_storeu_ps(si, r);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, r);
            for (int t = 0; t < nrows; t++) si[t] = tmp[t];
        }
    }
}

/* acc[i][c] += sum_t p[i][t0+t] * row_t[c]. Blocks of 32 channels keep 4 independent FMA chains
 * (one chain per 8 channels would wait on the FMA latency for every row). */
AVX2 static void rows8_accum(const float *const rp[8], int nrows, int d, const float *p, int nq, int ps, float *acc,
                             int as, int t0) {
    for (int i = 0; i < nq; i++) {
        const float *pi = p + (size_t)i * ps + t0;
        float *ai = acc + (size_t)i * as;
        for (int c = 0; c < d; c += 32) {
            __m256 a0 = _mm256_loadu_ps(ai + c), a1 = _mm256_loadu_ps(ai + c + 8);
            __m256 a2 = _mm256_loadu_ps(ai + c + 16), a3 = _mm256_loadu_ps(ai + c + 24);
            for (int t = 0; t < nrows; t++) {
                const __m256 w = _mm256_broadcast_ss(pi + t);
                const float *x = rp[t] + c;
                a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x), a0);
                a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 8), a1);
                a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 16), a2);
                a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 24), a3);
            }
            _mm256_storeu_ps(ai + c, a0);
            _mm256_storeu_ps(ai + c + 8, a1);
            _mm256_storeu_ps(ai + c + 16, a2);
            _mm256_storeu_ps(ai + c + 24, a3);
        }
    }
}

static const float zero_row[KVQ_MAX_DIM];

/* Dequantize TOK rows t0 .. t0+nrows-1 into buf (row stride KVQ_MAX_DIM). */
AVX2_INLINE void tok_rows(const kvq_run *r, int bits, int t0, int nrows, float *buf) {
    const int ub = 4 * bits, ppg = r->sym ? 1 : 2, nu = r->d / 32, upg = r->g / 32;
    for (int t = 0; t < nrows; t++) {
        const uint8_t *row = r->codes + (size_t)(t0 + t) * nu * ub;
        const uint16_t *par = r->params + (size_t)(t0 + t) * r->pstride;
        float *x = buf + t * KVQ_MAX_DIM;
        for (int u = 0; u < nu; u++) {
            float sf, zf;
            decode_par(par + (u / upg) * ppg, bits, r->sym, &sf, &zf);
            const __m256 s = _mm256_set1_ps(sf), z = _mm256_set1_ps(zf);
            const uint8_t *un = row + u * ub;
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(x + u * 32 + 8 * i, _mm256_fmadd_ps(unpack8(un, bits, i), s, z));
        }
    }
}

AVX2_INLINE float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* Few queries (decode: one GQA group of <= 4): decode each row in registers and FMA it into
 * two accumulators per query (even/odd chunks, to hide the FMA latency); no tile round trip
 * through memory. NQ is a constant after inlining, so the accumulators stay in registers. */
#define FMA_Q(k, x, off, a, b)                                                          \
    do {                                                                                \
        if (NQ > k) {                                                                   \
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)(k) * qs + (off)), x, a);   \
            (void)b;                                                                    \
        }                                                                               \
    } while (0)

AVX2_INLINE void tok_scores_fused(const kvq_run *r, int bits, int NQ, const float *q, int qs, float *s, int ss) {
    const int ub = 4 * bits, ppg = r->sym ? 1 : 2, nu = r->d / 32, upg = r->g / 32;
    for (int t = 0; t < r->n; t++) {
        const uint8_t *row = r->codes + (size_t)t * nu * ub;
        const uint16_t *par = r->params + (size_t)t * r->pstride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int u = 0; u < nu; u++) {
            float sf, zf;
            decode_par(par + (u / upg) * ppg, bits, r->sym, &sf, &zf);
            const __m256 sv = _mm256_set1_ps(sf), zv = _mm256_set1_ps(zf);
            const uint8_t *un = row + u * ub;
            const __m256 x0 = _mm256_fmadd_ps(unpack8(un, bits, 0), sv, zv);
            const __m256 x1 = _mm256_fmadd_ps(unpack8(un, bits, 1), sv, zv);
            const __m256 x2 = _mm256_fmadd_ps(unpack8(un, bits, 2), sv, zv);
            const __m256 x3 = _mm256_fmadd_ps(unpack8(un, bits, 3), sv, zv);
            const int o = u * 32;
            FMA_Q(0, x0, o, a0, 0); FMA_Q(0, x1, o + 8, b0, 0); FMA_Q(0, x2, o + 16, a0, 0); FMA_Q(0, x3, o + 24, b0, 0);
            FMA_Q(1, x0, o, a1, 0); FMA_Q(1, x1, o + 8, b1, 0); FMA_Q(1, x2, o + 16, a1, 0); FMA_Q(1, x3, o + 24, b1, 0);
            FMA_Q(2, x0, o, a2, 0); FMA_Q(2, x1, o + 8, b2, 0); FMA_Q(2, x2, o + 16, a2, 0); FMA_Q(2, x3, o + 24, b2, 0);
            FMA_Q(3, x0, o, a3, 0); FMA_Q(3, x1, o + 8, b3, 0); FMA_Q(3, x2, o + 16, a3, 0); FMA_Q(3, x3, o + 24, b3, 0);
        }
        s[t] = hsum8(_mm256_add_ps(a0, b0));
        if (NQ > 1) s[(size_t)ss + t] = hsum8(_mm256_add_ps(a1, b1));
        if (NQ > 2) s[(size_t)2 * ss + t] = hsum8(_mm256_add_ps(a2, b2));
        if (NQ > 3) s[(size_t)3 * ss + t] = hsum8(_mm256_add_ps(a3, b3));
    }
}

AVX2_INLINE void tok_scores_b(const kvq_run *r, int bits, const float *q, int nq, int qs, float *s, int ss) {
    switch (nq) {
    case 1: tok_scores_fused(r, bits, 1, q, qs, s, ss); return;
    case 2: tok_scores_fused(r, bits, 2, q, qs, s, ss); return;
    case 3: tok_scores_fused(r, bits, 3, q, qs, s, ss); return;
    case 4: tok_scores_fused(r, bits, 4, q, qs, s, ss); return;
    default: break;
    }
    float buf[8 * KVQ_MAX_DIM] __attribute__((aligned(32)));
    const float *rp[8];
    for (int t0 = 0; t0 < r->n; t0 += 8) {
        const int nr = TL_MIN(8, r->n - t0);
        tok_rows(r, bits, t0, nr, buf);
        for (int t = 0; t < 8; t++) rp[t] = t < nr ? buf + t * KVQ_MAX_DIM : zero_row;
        rows8_scores(rp, nr, r->d, q, nq, qs, s, ss, t0);
    }
}

/* Few queries (decode): acc[k][c] += sum_t p[k][t] * (code*s + z)
 *                                 = sum_t (p[k][t]*s_tj) * code  +  sum_t p[k][t]*z_tj.
 * The weights w = p*s are formed once per (row, group); codes are widened and FMAed straight
 * into accumulators held in registers for 16 channels x NQ queries; the z part is a scalar per
 * (query, group) added at the end. */
#define ACC_Q(k, wrow, a, b)                                            \
    do {                                                                \
        if (NQ > k) {                                                   \
            const __m256 wv = _mm256_broadcast_ss(wrow);                \
            a = _mm256_fmadd_ps(wv, x0, a);                             \
            b = _mm256_fmadd_ps(wv, x1, b);                             \
        }                                                               \
    } while (0)

AVX2_INLINE void tok_accum_fused(const kvq_run *r, int bits, int NQ, const float *p, int ps, float *acc, int as) {
    enum { TT = 64 };
    const int ub = 4 * bits, ppg = r->sym ? 1 : 2, nu = r->d / 32, ng = r->d / r->g;
    float w[4][TT * 8], zacc[4][8];
    memset(zacc, 0, sizeof zacc);
    for (int t0 = 0; t0 < r->n; t0 += TT) {
        const int nr = TL_MIN(TT, r->n - t0);
        for (int t = 0; t < nr; t++) {
            const uint16_t *par = r->params + (size_t)(t0 + t) * r->pstride;
            for (int j = 0; j < ng; j++) {
                float sf, zf;
                decode_par(par + j * ppg, bits, r->sym, &sf, &zf);
                for (int k = 0; k < NQ; k++) {
                    const float pk = p[(size_t)k * ps + t0 + t];
                    w[k][t * ng + j] = pk * sf;
                    zacc[k][j] += pk * zf;
                }
            }
        }
        for (int cb = 0; cb < r->d; cb += 16) {
            const int u = cb / 32, i0 = (cb % 32) / 8, j = cb / r->g;
            float *c0 = acc + cb, *c1 = acc + (size_t)as + cb, *c2 = acc + (size_t)2 * as + cb, *c3 = acc + (size_t)3 * as + cb;
            __m256 a0 = _mm256_loadu_ps(c0), b0 = _mm256_loadu_ps(c0 + 8), a1 = a0, b1 = b0, a2 = a0, b2 = b0, a3 = a0, b3 = b0;
            if (NQ > 1) a1 = _mm256_loadu_ps(c1), b1 = _mm256_loadu_ps(c1 + 8);
            if (NQ > 2) a2 = _mm256_loadu_ps(c2), b2 = _mm256_loadu_ps(c2 + 8);
            if (NQ > 3) a3 = _mm256_loadu_ps(c3), b3 = _mm256_loadu_ps(c3 + 8);
            const uint8_t *un = r->codes + (size_t)t0 * nu * ub + u * ub;
            for (int t = 0; t < nr; t++, un += nu * ub) {
                const __m256 x0 = unpack8(un, bits, i0), x1 = unpack8(un, bits, i0 + 1);
                ACC_Q(0, &w[0][t * ng + j], a0, b0);
                ACC_Q(1, &w[1][t * ng + j], a1, b1);
                ACC_Q(2, &w[2][t * ng + j], a2, b2);
                ACC_Q(3, &w[3][t * ng + j], a3, b3);
            }
            _mm256_storeu_ps(c0, a0), _mm256_storeu_ps(c0 + 8, b0);
            if (NQ > 1) _mm256_storeu_ps(c1, a1), _mm256_storeu_ps(c1 + 8, b1);
            if (NQ > 2) _mm256_storeu_ps(c2, a2), _mm256_storeu_ps(c2 + 8, b2);
            if (NQ > 3) _mm256_storeu_ps(c3, a3), _mm256_storeu_ps(c3 + 8, b3);
        }
    }
    for (int k = 0; k < NQ; k++)
        for (int c = 0; c < r->d; c++) acc[(size_t)k * as + c] += zacc[k][c / r->g];
}

AVX2_INLINE void tok_accum_b(const kvq_run *r, int bits, const float *p, int nq, int ps, float *acc, int as) {
    switch (nq) {
    case 1: tok_accum_fused(r, bits, 1, p, ps, acc, as); return;
    case 2: tok_accum_fused(r, bits, 2, p, ps, acc, as); return;
    case 3: tok_accum_fused(r, bits, 3, p, ps, acc, as); return;
    case 4: tok_accum_fused(r, bits, 4, p, ps, acc, as); return;
    default: break;
    }
    float buf[8 * KVQ_MAX_DIM] __attribute__((aligned(32)));
    const float *rp[8];
    for (int t0 = 0; t0 < r->n; t0 += 8) {
        const int nr = TL_MIN(8, r->n - t0);
        tok_rows(r, bits, t0, nr, buf);
        for (int t = 0; t < 8; t++) rp[t] = t < nr ? buf + t * KVQ_MAX_DIM : zero_row;
        rows8_accum(rp, nr, r->d, p, nq, ps, acc, as, t0);
    }
}

/* Per-channel (s, z) of token group tg of a CH run. */
AVX2_INLINE void ch_params(const kvq_run *r, int bits, int tg, float *sv, float *zv) {
    const int ppg = r->sym ? 1 : 2, np = r->d / r->ce;
    const uint16_t *par = r->params + (size_t)tg * np * ppg;
    for (int j = 0; j < np; j++) {
        float s, z;
        decode_par(par + j * ppg, bits, r->sym, &s, &z);
        for (int c = j * r->ce; c < (j + 1) * r->ce; c++) sv[c] = s, zv[c] = z;
    }
}

/* Column tile: xt[c*8 + k] = x(token 8*chunk + k of group tg, channel c). */
AVX2_INLINE void ch_tile(const kvq_run *r, int bits, int tg, int chunk, const float *sv, const float *zv, float *xt) {
    const int ub = 4 * bits, upc = r->g / 32; /* units per channel in a group */
    const uint8_t *base = r->codes + (size_t)tg * r->d * upc * ub + (chunk / 4) * ub;
    for (int c = 0; c < r->d; c++) {
        const __m256 x = unpack8(base + (size_t)c * upc * ub, bits, chunk & 3);
        _mm256_store_ps(xt + c * 8, _mm256_fmadd_ps(x, _mm256_set1_ps(sv[c]), _mm256_set1_ps(zv[c])));
    }
}

AVX2_INLINE void ch_scores_b(const kvq_run *r, int bits, const float *q, int nq, int qs, float *s, int ss) {
    float xt[KVQ_MAX_DIM * 8] __attribute__((aligned(32)));
    float sv[KVQ_MAX_DIM], zv[KVQ_MAX_DIM];
    for (int tg = 0; tg < r->n / r->g; tg++) {
        ch_params(r, bits, tg, sv, zv);
        for (int ch = 0; ch < r->g / 8; ch++) {
            ch_tile(r, bits, tg, ch, sv, zv, xt);
            const int t0 = tg * r->g + ch * 8;
            int i = 0;
            for (; i + 2 <= nq; i += 2) { /* two queries: 8 independent chains */
                const float *qa = q + (size_t)i * qs, *qb = qa + qs;
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for (int c = 0; c < r->d; c += 4) {
                    const __m256 x0 = _mm256_load_ps(xt + c * 8), x1 = _mm256_load_ps(xt + c * 8 + 8);
                    const __m256 x2 = _mm256_load_ps(xt + c * 8 + 16), x3 = _mm256_load_ps(xt + c * 8 + 24);
                    a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(qa + c), x0, a0);
                    a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(qa + c + 1), x1, a1);
                    a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(qa + c + 2), x2, a2);
                    a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(qa + c + 3), x3, a3);
                    b0 = _mm256_fmadd_ps(_mm256_broadcast_ss(qb + c), x0, b0);
                    b1 = _mm256_fmadd_ps(_mm256_broadcast_ss(qb + c + 1), x1, b1);
                    b2 = _mm256_fmadd_ps(_mm256_broadcast_ss(qb + c + 2), x2, b2);
                    b3 = _mm256_fmadd_ps(_mm256_broadcast_ss(qb + c + 3), x3, b3);
                }
                _mm256_storeu_ps(s + (size_t)i * ss + t0, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
                _mm256_storeu_ps(s + (size_t)(i + 1) * ss + t0, _mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)));
            }
            for (; i < nq; i++) {
                const float *qi = q + (size_t)i * qs;
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                for (int c = 0; c < r->d; c += 4) {
                    a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(qi + c), _mm256_load_ps(xt + c * 8), a0);
                    a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(qi + c + 1), _mm256_load_ps(xt + c * 8 + 8), a1);
                    a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(qi + c + 2), _mm256_load_ps(xt + c * 8 + 16), a2);
                    a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(qi + c + 3), _mm256_load_ps(xt + c * 8 + 24), a3);
                }
                _mm256_storeu_ps(s + (size_t)i * ss + t0, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            }
        }
    }
}

AVX2_INLINE void transpose8(__m256 *r) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

AVX2_INLINE void ch_accum_b(const kvq_run *r, int bits, const float *p, int nq, int ps, float *acc, int as) {
    float xt[KVQ_MAX_DIM * 8] __attribute__((aligned(32)));
    float buf[8 * KVQ_MAX_DIM] __attribute__((aligned(32)));
    float sv[KVQ_MAX_DIM], zv[KVQ_MAX_DIM];
    const float *rp[8];
    for (int t = 0; t < 8; t++) rp[t] = buf + t * KVQ_MAX_DIM;
    for (int tg = 0; tg < r->n / r->g; tg++) {
        ch_params(r, bits, tg, sv, zv);
        for (int ch = 0; ch < r->g / 8; ch++) {
            ch_tile(r, bits, tg, ch, sv, zv, xt);
            for (int c = 0; c < r->d; c += 8) { /* columns -> rows */
                __m256 m[8];
                for (int k = 0; k < 8; k++) m[k] = _mm256_load_ps(xt + (c + k) * 8);
                transpose8(m);
                for (int k = 0; k < 8; k++) _mm256_store_ps(buf + k * KVQ_MAX_DIM + c, m[k]);
            }
            rows8_accum(rp, 8, r->d, p, nq, ps, acc, as, tg * r->g + ch * 8);
        }
    }
}

#define BITS_DISPATCH(fn, r, ...)                 \
    switch ((r)->bits) {                          \
    case 8: fn(r, 8, __VA_ARGS__); break;         \
    case 4: fn(r, 4, __VA_ARGS__); break;         \
    case 2: fn(r, 2, __VA_ARGS__); break;         \
    default: fn(r, 1, __VA_ARGS__); break;        \
    }

AVX2 static void avx2_tok_scores(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss) {
    BITS_DISPATCH(tok_scores_b, r, q, nq, qs, s, ss);
}
AVX2 static void avx2_tok_accum(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as) {
    BITS_DISPATCH(tok_accum_b, r, p, nq, ps, acc, as);
}
AVX2 static void avx2_ch_scores(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss) {
    BITS_DISPATCH(ch_scores_b, r, q, nq, qs, s, ss);
}
AVX2 static void avx2_ch_accum(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as) {
    BITS_DISPATCH(ch_accum_b, r, p, nq, ps, acc, as);
}

AVX2 static void f16_rows(const uint16_t *x, int t0, int nr, int d, float *buf) {
    for (int t = 0; t < nr; t++)
        for (int c = 0; c < d; c += 8)
            _mm256_storeu_ps(buf + t * KVQ_MAX_DIM + c,
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + (size_t)(t0 + t) * d + c))));
}

AVX2_INLINE void f16_scores_fused(const uint16_t *x, int n, int d, int NQ, const float *q, int qs, float *s, int ss) {
    for (int t = 0; t < n; t++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int c = 0; c < d; c += 16) {
            const __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + (size_t)t * d + c)));
            const __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + (size_t)t * d + c + 8)));
            FMA_Q(0, x0, c, a0, 0); FMA_Q(0, x1, c + 8, b0, 0);
            FMA_Q(1, x0, c, a1, 0); FMA_Q(1, x1, c + 8, b1, 0);
            FMA_Q(2, x0, c, a2, 0); FMA_Q(2, x1, c + 8, b2, 0);
            FMA_Q(3, x0, c, a3, 0); FMA_Q(3, x1, c + 8, b3, 0);
        }
        s[t] = hsum8(_mm256_add_ps(a0, b0));
        if (NQ > 1) s[(size_t)ss + t] = hsum8(_mm256_add_ps(a1, b1));
        if (NQ > 2) s[(size_t)2 * ss + t] = hsum8(_mm256_add_ps(a2, b2));
        if (NQ > 3) s[(size_t)3 * ss + t] = hsum8(_mm256_add_ps(a3, b3));
    }
}

AVX2 static void avx2_f16_scores(const uint16_t *x, int n, int d, const float *q, int nq, int qs, float *s, int ss) {
    switch (nq) {
    case 1: f16_scores_fused(x, n, d, 1, q, qs, s, ss); return;
    case 2: f16_scores_fused(x, n, d, 2, q, qs, s, ss); return;
    case 3: f16_scores_fused(x, n, d, 3, q, qs, s, ss); return;
    case 4: f16_scores_fused(x, n, d, 4, q, qs, s, ss); return;
    default: break;
    }
    float buf[8 * KVQ_MAX_DIM] __attribute__((aligned(32)));
    const float *rp[8];
    for (int t0 = 0; t0 < n; t0 += 8) {
        const int nr = TL_MIN(8, n - t0);
        f16_rows(x, t0, nr, d, buf);
        for (int t = 0; t < 8; t++) rp[t] = t < nr ? buf + t * KVQ_MAX_DIM : zero_row;
        rows8_scores(rp, nr, d, q, nq, qs, s, ss, t0);
    }
}
AVX2 static void avx2_f16_accum(const uint16_t *x, int n, int d, const float *p, int nq, int ps, float *acc, int as) {
    float buf[8 * KVQ_MAX_DIM] __attribute__((aligned(32)));
    const float *rp[8];
    for (int t0 = 0; t0 < n; t0 += 8) {
        const int nr = TL_MIN(8, n - t0);
        f16_rows(x, t0, nr, d, buf);
        for (int t = 0; t < 8; t++) rp[t] = t < nr ? buf + t * KVQ_MAX_DIM : zero_row;
        rows8_accum(rp, nr, d, p, nq, ps, acc, as, t0);
    }
}
AVX2 static void avx2_f32_scores(const float *x, int rs, int n, int d, const float *q, int nq, int qs, float *s, int ss) {
    const float *rp[8];
    for (int t0 = 0; t0 < n; t0 += 8) {
        const int nr = TL_MIN(8, n - t0);
        for (int t = 0; t < 8; t++) rp[t] = t < nr ? x + (size_t)(t0 + t) * rs : zero_row;
        rows8_scores(rp, nr, d, q, nq, qs, s, ss, t0);
    }
}
AVX2 static void avx2_f32_accum(const float *x, int rs, int n, int d, const float *p, int nq, int ps, float *acc, int as) {
    const float *rp[8];
    for (int t0 = 0; t0 < n; t0 += 8) {
        const int nr = TL_MIN(8, n - t0);
        for (int t = 0; t < 8; t++) rp[t] = t < nr ? x + (size_t)(t0 + t) * rs : zero_row;
        rows8_accum(rp, nr, d, p, nq, ps, acc, as, t0);
    }
}

const kvq_kernels kvq_avx2_table = {"avx2",          avx2_tok_scores, avx2_tok_accum,  avx2_ch_scores,
                                         avx2_ch_accum,   avx2_f16_scores, avx2_f16_accum,  avx2_f32_scores,
                                         avx2_f32_accum,  NULL,            NULL};

const kvq_kernels *kvq_kernels_avx2(void) {
    const tl_cpu_features f = tl_cpu_detect();
    return f.avx2 && f.fma && f.f16c ? &kvq_avx2_table : &kernels_ref;
}
#else
const kvq_kernels *kvq_kernels_avx2(void) { return &kernels_ref; }
const kvq_kernels *kvq_kernels_avx512(void) { return NULL; }
#endif

const kvq_kernels *kvq_kernels_best(void) {
    const tl_simd_level level = tl_simd_level_get();
    const kvq_kernels *k = level == TL_SIMD_AVX512 ? kvq_kernels_avx512() : NULL;
    return k ? k : level >= TL_SIMD_AVX2 ? kvq_kernels_avx2() : &kernels_ref;
}
