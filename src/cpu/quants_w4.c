/* quants_w4.c: scalar reference of tailor's w4g128 weight format (quants_internal.h has the
 * layout): round-to-nearest quantization with an optional clipping search, dequantization,
 * and the dot product with q8_1 activations. The AVX2 kernels are in quants_avx2.c. */
#include "quants_internal.h"
#include "../base/common.h"

#include <float.h>
#include <math.h>

/* One group quantized over the range [lo, hi] (values outside clamp to the ends). Codes
 * are computed against the fp16-rounded scale and minimum that will be stored, so the
 * stored block is the best RTN fit of what dequantization will actually produce.
 * Returns sum_j imp[j] * (x[j] - deq[j])^2 (imp NULL: weight 1). */
static double w4_group(const float *x, float lo, float hi, const float *imp, blk_w4g128 *b) {
    b->d = tl_fp32_to_fp16((hi - lo) / 15);
    b->m = tl_fp32_to_fp16(lo);
    const float d = tl_fp16_to_fp32(b->d), m = tl_fp16_to_fp32(b->m);
    const float id = d ? 1.0f / d : 0.0f;
    uint8_t q[QW4];
    double err = 0;
    for (int j = 0; j < QW4; j++) {
        int v = tlq_nearest_int((x[j] - m) * id);
        v = v < 0 ? 0 : v > 15 ? 15 : v;
        q[j] = (uint8_t)v;
        const double e = (double)x[j] - ((float)v * d + m);
        err += (imp ? imp[j] : 1.0) * e * e;
    }
    for (int j = 0; j < QW4 / 2; j++) b->qs[j] = (uint8_t)(q[j] | (q[j + QW4 / 2] << 4));
    return err;
}

static void group_range(const float *x, float *lo, float *hi) {
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < QW4; j++) {
        if (x[j] < mn) mn = x[j];
        if (x[j] > mx) mx = x[j];
    }
    *lo = mn;
    *hi = mx;
}

void tlq_quantize_w4g128_ref(const float *x, void *vy, int64_t n) {
    blk_w4g128 *y = vy;
    for (int64_t i = 0; i < n / QW4; i++, x += QW4) {
        float lo, hi;
        group_range(x, &lo, &hi);
        w4_group(x, lo, hi, NULL, &y[i]);
    }
}

void tl_quantize_row_w4g128_clip(const float *x, void *vy, int64_t n, const float *imp, int n_grid) {
    blk_w4g128 *y = vy;
    for (int64_t i = 0; i < n / QW4; i++, x += QW4) {
        float lo, hi;
        group_range(x, &lo, &hi);
        const float *im = imp ? imp + i * QW4 : NULL;
        double best = w4_group(x, lo, hi, im, &y[i]);
        for (int g = 1; g < n_grid; g++) {
            const float r = 1.0f - 0.5f * (float)g / (float)n_grid;
            blk_w4g128 cand;
            const double e = w4_group(x, lo * r, hi * r, im, &cand);
            if (e < best) { /* strict: ties keep the wider (unclipped) range */
                best = e;
                y[i] = cand;
            }
        }
    }
}

void tlq_dequantize_w4g128(const void *vx, float *y, int64_t n) {
    const blk_w4g128 *x = vx;
    for (int64_t i = 0; i < n / QW4; i++, y += QW4) {
        const float d = tl_fp16_to_fp32(x[i].d), m = tl_fp16_to_fp32(x[i].m);
        for (int j = 0; j < QW4 / 2; j++) {
            y[j] = (float)(x[i].qs[j] & 0xF) * d + m;
            y[j + QW4 / 2] = (float)(x[i].qs[j] >> 4) * d + m;
        }
    }
}

/* sum_j (d q_j + m) * dx_b xq_j = d * sum_b dx_b * (sum_{j in b} q_j xq_j) + m * sum_b s_b,
 * with s_b = dx_b * sum(xq in b) carried by the q8_1 block. Integer sums are exact; one
 * float multiply-add per 32 values, as the q4_1 reference. */
float tlq_vec_dot_w4g128_ref(int64_t n, const void *vw, const void *vx) {
    const blk_w4g128 *w = vw;
    const blk_q8_1 *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n / QW4; i++) {
        const float d = tl_fp16_to_fp32(w[i].d), m = tl_fp16_to_fp32(w[i].m);
        const blk_q8_1 *xb = x + 4 * i;
        for (int b = 0; b < 4; b++) {
            /* activation block b covers values 32b .. 32b+31 of the group */
            int sumi = 0;
            for (int j = 0; j < QK; j++) {
                const int v = 32 * b + j;
                const int q = v < QW4 / 2 ? (w[i].qs[v] & 0xF) : (w[i].qs[v - QW4 / 2] >> 4);
                sumi += q * xb[b].qs[j];
            }
            s += (float)sumi * d * tl_fp16_to_fp32(xb[b].d) + m * tl_fp16_to_fp32(xb[b].s);
        }
    }
    return s;
}
