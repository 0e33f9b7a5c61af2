/* vec.h: small float vector primitives used by attention and the model's elementwise ops,
 * each with a scalar reference and an AVX2/FMA version picked once at run time.
 * tl_vec_get() returns the table of the SIMD level tl_simd_level_get gives (quants.h). */
#ifndef TL_VEC_H
#define TL_VEC_H

#include <stdint.h>

typedef struct {
    const char *name;
    /* s[j] = sum_d q[d] * kt[d * t + j], j < t (kt: a transposed key tile, d rows of t) */
    void (*scores_t)(const float *q, const float *kt, int d, int t, float *s);
    /* acc[i] += sum_j p[j] * v[j * n + i], i < n (v: t rows of n) */
    void (*acc_pv)(const float *p, const float *v, int t, int n, float *acc);
    /* x[i] = exp(x[i] - m); returns the sum of the results */
    float (*exp_sub_sum)(float *x, int n, float m);
    float (*max)(const float *x, int n);
    float (*dot)(const float *a, const float *b, int n);
    void (*scale)(float *x, int n, float s);
    /* y[i] += a * x[i] */
    void (*axpy)(float *y, const float *x, int n, float a);
    void (*f16_to_f32)(const uint16_t *src, float *dst, int n);
    void (*f32_to_f16)(const float *src, uint16_t *dst, int n);
    void (*bf16_to_f32)(const uint16_t *src, float *dst, int n);
    /* sum of squares (for RMSNorm) */
    float (*sumsq)(const float *x, int n);
    /* x[i] = silu(g[i]) * u[i]  (SwiGLU) */
    void (*swiglu)(float *out, const float *g, const float *u, int n);
    /* x[i] = gelu_tanh(g[i]) * u[i]  (GeGLU, Gemma) */
    void (*geglu)(float *out, const float *g, const float *u, int n);
} tl_vec_ops;

const tl_vec_ops *tl_vec_get(void);
const tl_vec_ops *tl_vec_ref(void);

/* Soft-capping (Gemma 2's attention scores and final logits): x[i] = cap * tanh(x[i] / cap)
 * for cap > 0; nothing for cap <= 0. The one definition every store and the logits use. */
void tl_softcap(float *x, int n, float cap);

#endif
