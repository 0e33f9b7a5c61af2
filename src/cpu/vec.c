/* vec.c: scalar references and AVX2/FMA versions of the primitives in vec.h. The AVX2 exp is
 * a Cephes-style range reduction (x = n ln2 + r) with a degree-5 polynomial: relative error
 * below 2e-7 over the range softmax uses, checked against expf in tests/cpu/test_vec.c. */
#include "vec.h"
#include "../base/common.h"
#include "quants.h"

#include <math.h>
#include <stdlib.h>
#include <immintrin.h>

/* ---------------- scalar reference ---------------- */

static void scores_t_ref(const float *q, const float *kt, int d, int t, float *s) {
    for (int j = 0; j < t; j++) s[j] = 0.0f;
    for (int i = 0; i < d; i++) {
        const float qi = q[i];
        const float *row = kt + (size_t)i * t;
        for (int j = 0; j < t; j++) s[j] += qi * row[j];
    }
}

static void acc_pv_ref(const float *p, const float *v, int t, int n, float *acc) {
    for (int j = 0; j < t; j++) {
        const float pj = p[j];
        if (pj == 0.0f) continue;
        const float *row = v + (size_t)j * n;
        for (int i = 0; i < n; i++) acc[i] += pj * row[i];
    }
}

static float exp_sub_sum_ref(float *x, int n, float m) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    return sum;
}

static float max_ref(const float *x, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static float dot_ref(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void scale_ref(float *x, int n, float s) {
    for (int i = 0; i < n; i++) x[i] *= s;
}

static void axpy_ref(float *y, const float *x, int n, float a) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static void f16_to_f32_ref(const uint16_t *src, float *dst, int n) {
    for (int i = 0; i < n; i++) dst[i] = tl_fp16_to_fp32(src[i]);
}

static void f32_to_f16_ref(const float *src, uint16_t *dst, int n) {
    for (int i = 0; i < n; i++) dst[i] = tl_fp32_to_fp16(src[i]);
}

static void bf16_to_f32_ref(const uint16_t *src, float *dst, int n) {
    for (int i = 0; i < n; i++) dst[i] = tl_bf16_to_fp32(src[i]);
}

static float sumsq_ref(const float *x, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    return (float)s;
}

static void swiglu_ref(float *out, const float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static float gelu_tanh(float x) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

static void geglu_ref(float *out, const float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) out[i] = gelu_tanh(g[i]) * u[i];
}

static const tl_vec_ops vec_ref = {
    "scalar", scores_t_ref, acc_pv_ref, exp_sub_sum_ref, max_ref, dot_ref, scale_ref, axpy_ref,
    f16_to_f32_ref, f32_to_f16_ref, bf16_to_f32_ref, sumsq_ref, swiglu_ref, geglu_ref,
};

/* ---------------- AVX2 / FMA ---------------- */
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

AVX2 static inline __m256 exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504f);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* r = x - fx*ln2 in two steps for accuracy */
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

AVX2 static void scores_t_avx2(const float *q, const float *kt, int d, int t, float *s) {
    int j = 0;
    for (; j + 32 <= t; j += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps();
        for (int i = 0; i < d; i++) {
            const __m256 qi = _mm256_broadcast_ss(q + i);
            const float *row = kt + (size_t)i * t + j;
            a0 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(row), a0);
            a1 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(row + 8), a1);
            a2 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(row + 16), a2);
            a3 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(row + 24), a3);
        }
        _mm256_storeu_ps(s + j, a0);
        _mm256_storeu_ps(s + j + 8, a1);
        _mm256_storeu_ps(s + j + 16, a2);
        _mm256_storeu_ps(s + j + 24, a3);
    }
    for (; j + 8 <= t; j += 8) {
        __m256 a0 = _mm256_setzero_ps();
        for (int i = 0; i < d; i++)
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(q + i), _mm256_loadu_ps(kt + (size_t)i * t + j), a0);
        _mm256_storeu_ps(s + j, a0);
    }
    for (; j < t; j++) {
        float a = 0.0f;
        for (int i = 0; i < d; i++) a += q[i] * kt[(size_t)i * t + j];
        s[j] = a;
    }
}

AVX2 static void axpy_avx2(float *y, const float *x, int n, float a) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

AVX2 static void acc_pv_avx2(const float *p, const float *v, int t, int n, float *acc) {
    if (n % 32 == 0 && n <= 256) {
        /* keep the accumulator row in registers 32 lanes at a time */
        for (int i = 0; i < n; i += 32) {
            __m256 a0 = _mm256_loadu_ps(acc + i), a1 = _mm256_loadu_ps(acc + i + 8),
                   a2 = _mm256_loadu_ps(acc + i + 16), a3 = _mm256_loadu_ps(acc + i + 24);
            for (int j = 0; j < t; j++) {
                const __m256 pj = _mm256_broadcast_ss(p + j);
                const float *row = v + (size_t)j * n + i;
                a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(row), a0);
                a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(row + 8), a1);
                a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(row + 16), a2);
                a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(row + 24), a3);
            }
            _mm256_storeu_ps(acc + i, a0);
            _mm256_storeu_ps(acc + i + 8, a1);
            _mm256_storeu_ps(acc + i + 16, a2);
            _mm256_storeu_ps(acc + i + 24, a3);
        }
        return;
    }
    for (int j = 0; j < t; j++) axpy_avx2(acc, v + (size_t)j * n, n, p[j]);
}

AVX2 static float exp_sub_sum_avx2(float *x, int n, float m) {
    const __m256 vm = _mm256_set1_ps(m);
    __m256 sum = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        sum = _mm256_add_ps(sum, e);
    }
    float s = hsum256(sum);
    for (; i < n; i++) {
        x[i] = expf(x[i] - m);
        s += x[i];
    }
    return s;
}

AVX2 static float max_avx2(const float *x, int n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    __m128 lo = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_max_ss(lo, _mm_movehdup_ps(lo));
    float r = _mm_cvtss_f32(lo);
    for (; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}

AVX2 static float dot_avx2(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

AVX2 static void scale_avx2(float *x, int n, float s) {
    const __m256 vs = _mm256_set1_ps(s);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    for (; i < n; i++) x[i] *= s;
}

AVX2 static void f16_to_f32_avx2(const uint16_t *src, float *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = tl_fp16_to_fp32(src[i]);
}

AVX2 static void f32_to_f16_avx2(const float *src, uint16_t *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = tl_fp32_to_fp16(src[i]);
}

AVX2 static void bf16_to_f32_avx2(const uint16_t *src, float *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; i++) dst[i] = tl_bf16_to_fp32(src[i]);
}

AVX2 static float sumsq_avx2(const float *x, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps(x + i);
        s0 = _mm256_fmadd_ps(a, a, s0);
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += x[i] * x[i];
    return s;
}

AVX2 static void swiglu_avx2(float *out, const float *g, const float *u, int n) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vg = _mm256_loadu_ps(g + i);
        __m256 den = _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, vg)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(vg, den), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

AVX2 static void geglu_avx2(float *out, const float *g, const float *u, int n) {
    /* 0.5 x (1 + tanh(y)) = x * sigmoid(2y) */
    const __m256 c = _mm256_set1_ps(2.0f * 0.7978845608028654f), c3 = _mm256_set1_ps(0.044715f);
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 y = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(c3, x), _mm256_mul_ps(x, x), x));
        __m256 den = _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, y)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(x, den), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = gelu_tanh(g[i]) * u[i];
}

static const tl_vec_ops vec_avx2 = {
    "avx2", scores_t_avx2, acc_pv_avx2, exp_sub_sum_avx2, max_avx2, dot_avx2, scale_avx2, axpy_avx2,
    f16_to_f32_avx2, f32_to_f16_avx2, bf16_to_f32_avx2, sumsq_avx2, swiglu_avx2, geglu_avx2,
};

const tl_vec_ops *tl_vec_ref(void) { return &vec_ref; }

const tl_vec_ops *tl_vec_get(void) { return tl_simd_level_get() >= TL_SIMD_AVX2 ? &vec_avx2 : &vec_ref; }

void tl_softcap(float *x, int n, float cap) {
    if (!(cap > 0.0f)) return;
    for (int i = 0; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}
