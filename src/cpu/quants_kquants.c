/* quants_kquants.c: scalar references for the K-quants (q4_K, q5_K, q6_K weights, q8_K
 * activations): quantize, dequantize and dot product.
 *
 * The quantizers reproduce llama.cpp's quantize_row_*_ref searches (make_qkx2_quants for
 * q4_K/q5_K: weighted min+scale fit over a small grid of scales; make_qx_quants for q6_K:
 * symmetric scale fit weighted by x^2), with every float expression evaluated in the same
 * order, so that files we quantize are byte-identical to theirs. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* rounding must match the reference exactly */
#else
#pragma GCC optimize("fp-contract=off") /* rounding must match the reference exactly */
#endif

#include "quants_internal.h"
#include "../base/common.h"

#include <math.h>
#include <string.h>

#define GROUP_MAX_EPS 1e-15f

/* Fit x ~ scale * L + min (L in [0, nmax], min <= 0) minimising the weighted squared error:
 * a first guess from the range, then nstep+1 candidate scales around it, each refined by a
 * weighted least-squares solve. Returns the scale; *neg_min receives -min. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *neg_min, uint8_t *Laux, float rmin, float rdelta, int nstep) {
    float mn = x[0], mx = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < mn) mn = x[i];
        if (x[i] > mx) mx = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (mn > 0) mn = 0;
    if (mx == mn) {
        memset(L, 0, (size_t)n);
        *neg_min = -mn;
        return 0.f;
    }
    float iscale = nmax / (mx - mn);
    float scale = 1 / iscale;
    float best_err = 0;
    for (int i = 0; i < n; i++) {
        int l = tlq_nearest_int(iscale * (x[i] - mn));
        L[i] = (uint8_t)TL_MAX(0, TL_MIN(nmax, l));
        float diff = scale * L[i] + mn - x[i];
        best_err += w[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (mx - mn);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = tlq_nearest_int(iscale * (x[i] - mn));
            l = TL_MAX(0, TL_MIN(nmax, l));
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if (err < best_err) {
                memcpy(L, Laux, (size_t)n);
                best_err = err;
                scale = this_scale;
                mn = this_min;
            }
        }
    }
    *neg_min = -mn;
    return scale;
}

/* Symmetric fit x ~ scale * (L - nmax), L in [0, 2*nmax), weights x^2, trying 19 scales
 * around -nmax/max (the reference's rmse_type 1 with no importance weights). */
static float fit_scale_sym(int n, int nmax, const float *x, int8_t *L) {
    float mx = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; mx = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / mx;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = tlq_nearest_int(iscale * x[i]);
        l = TL_MAX(-nmax, TL_MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / mx;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = tlq_nearest_int(iscale * x[i]);
            l = TL_MAX(-nmax, TL_MIN(nmax - 1, l));
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = tlq_nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + TL_MAX(-nmax, TL_MIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Shared by q4_K and q5_K: fit the 8 sub-blocks, quantize their scales/mins to 6 bits
 * against the super-block d/dmin, then requantize x with the rounded scales (L[256]). */
static void kquant_scales(const float *x, int nmax, float rmin, int nstep, uint16_t *d_out,
                          uint16_t *dmin_out, uint8_t scales[12], uint8_t L[QKK]) {
    float sub_scale[8], sub_min[8], weights[32];
    uint8_t Laux[32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
        sub_scale[j] = fit_scale_min(32, nmax, x + 32 * j, weights, L + 32 * j, &sub_min[j], Laux,
                                     rmin, 0.1f, nstep);
        if (sub_scale[j] > max_scale) max_scale = sub_scale[j];
        if (sub_min[j] > max_min) max_min = sub_min[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(scales, 0, 12);
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)tlq_nearest_int(inv_scale * sub_scale[j]);
        uint8_t lm = (uint8_t)tlq_nearest_int(inv_min * sub_min[j]);
        ls = TL_MIN(63, ls);
        lm = TL_MIN(63, lm);
        if (j < 4) {
            scales[j] = ls;
            scales[j + 4] = lm;
        } else { /* high 2 bits go to the top of bytes j-4 (scale) and j (min) */
            scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scales[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = tl_fp32_to_fp16(max_scale / 63.f);
    *dmin_out = tl_fp32_to_fp16(max_min / 63.f);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        tlq_scale_min_k4(j, scales, &sc, &m);
        const float d = tl_fp16_to_fp32(*d_out) * sc;
        if (!d) continue;
        const float dm = tl_fp16_to_fp32(*dmin_out) * m;
        for (int i = 0; i < 32; i++) {
            int l = tlq_nearest_int((x[32 * j + i] + dm) / d);
            L[32 * j + i] = (uint8_t)TL_MAX(0, TL_MIN(nmax, l));
        }
    }
}

void tlq_quantize_q4_K_ref(const float *x, void *vy, int64_t n) {
    blk_q4_K *y = vy;
    uint8_t L[QKK];
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        kquant_scales(x, 15, -1.f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
        /* 64 values per 32 bytes: low nibbles are sub-block 2k, high nibbles 2k+1 */
        for (int j = 0; j < QKK / 64; j++)
            for (int l = 0; l < 32; l++)
                y[i].qs[32 * j + l] = (uint8_t)(L[64 * j + l] | (L[64 * j + l + 32] << 4));
    }
}

void tlq_quantize_q5_K_ref(const float *x, void *vy, int64_t n) {
    blk_q5_K *y = vy;
    uint8_t L[QKK];
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        kquant_scales(x, 31, -0.5f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
        memset(y[i].qh, 0, sizeof y[i].qh);
        /* bit 4 of value 64j+l goes to qh[l] bit 2j, of value 64j+32+l to bit 2j+1 */
        for (int j = 0; j < QKK / 64; j++) {
            for (int l = 0; l < 32; l++) {
                int a = L[64 * j + l], b = L[64 * j + l + 32];
                y[i].qh[l] |= (uint8_t)(((a >> 4) << (2 * j)) | ((b >> 4) << (2 * j + 1)));
                y[i].qs[32 * j + l] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
            }
        }
    }
}

void tlq_quantize_q6_K_ref(const float *x, void *vy, int64_t n) {
    blk_q6_K *y = vy;
    int8_t L[QKK];
    float scales[QKK / 16];
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QKK / 16; ib++) {
            scales[ib] = fit_scale_sym(16, 32, x + 16 * ib, L + 16 * ib);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float iscale = -128.f / max_scale;
        y[i].d = tl_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < QKK / 16; ib++)
            y[i].scales[ib] = (int8_t)TL_MIN(127, tlq_nearest_int(iscale * scales[ib]));
        for (int j = 0; j < QKK / 16; j++) {
            float d = tl_fp16_to_fp32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int k = 0; k < 16; k++) {
                int l = tlq_nearest_int(x[16 * j + k] / d);
                L[16 * j + k] = (int8_t)(TL_MAX(-32, TL_MIN(31, l)) + 32);
            }
        }
        /* per 128 values: ql[l] = v[l] | v[l+64] << 4, ql[l+32] = v[l+32] | v[l+96] << 4,
         * qh[l] = the 2 high bits of v[l], v[l+32], v[l+64], v[l+96] */
        for (int h = 0; h < 2; h++) {
            const int8_t *Lh = L + 128 * h;
            uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
                qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                  ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
}

void tlq_quantize_q8_K_ref(const float *x, void *vy, int64_t n) {
    blk_q8_K *y = vy;
    for (int64_t i = 0; i < n / QKK; i++, x += QKK) {
        float mx = 0, amax = 0;
        for (int j = 0; j < QKK; j++) {
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); mx = x[j]; }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.f / mx;
        for (int j = 0; j < QKK; j++) y[i].qs[j] = (int8_t)TL_MIN(127, tlq_nearest_int(iscale * x[j]));
        for (int j = 0; j < QKK / 16; j++) {
            int sum = 0;
            for (int k = 0; k < 16; k++) sum += y[i].qs[16 * j + k];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

/* Value j (0..255) of a q4_K/q5_K super-block without the high bit. */
static inline int k4_low(const uint8_t *qs, int j) {
    int g = j / 64, r = j % 64;
    return r < 32 ? (qs[32 * g + r] & 0xF) : (qs[32 * g + r - 32] >> 4);
}
static inline int k5_value(const blk_q5_K *b, int j) {
    int g = j / 64, r = j % 64; /* bit (2g + r/32) of qh[r%32] */
    return k4_low(b->qs, j) | (((b->qh[r % 32] >> (2 * g + r / 32)) & 1) << 4);
}
static inline int k6_value(const blk_q6_K *b, int j) { /* 0..63 */
    int h = j / 128, r = j % 128, q = r / 32, l = r % 32;
    const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
    int lo = q == 0 ? ql[l] & 0xF : q == 1 ? ql[l + 32] & 0xF : q == 2 ? ql[l] >> 4 : ql[l + 32] >> 4;
    return lo | (((qh[l] >> (2 * q)) & 3) << 4);
}

void tlq_dequantize_q4_K(const void *vx, float *y, int64_t n) {
    const blk_q4_K *x = vx;
    for (int64_t i = 0; i < n / QKK; i++) {
        const float d = tl_fp16_to_fp32(x[i].d), dmin = tl_fp16_to_fp32(x[i].dmin);
        for (int s = 0; s < 8; s++) {
            uint8_t sc, m;
            tlq_scale_min_k4(s, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * k4_low(x[i].qs, 32 * s + l) - m1;
        }
    }
}

void tlq_dequantize_q5_K(const void *vx, float *y, int64_t n) {
    const blk_q5_K *x = vx;
    for (int64_t i = 0; i < n / QKK; i++) {
        const float d = tl_fp16_to_fp32(x[i].d), dmin = tl_fp16_to_fp32(x[i].dmin);
        for (int s = 0; s < 8; s++) {
            uint8_t sc, m;
            tlq_scale_min_k4(s, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * k5_value(&x[i], 32 * s + l) - m1;
        }
    }
}

void tlq_dequantize_q6_K(const void *vx, float *y, int64_t n) {
    const blk_q6_K *x = vx;
    for (int64_t i = 0; i < n / QKK; i++) {
        const float d = tl_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QKK; j++) *y++ = d * x[i].scales[j / 16] * (k6_value(&x[i], j) - 32);
    }
}

void tlq_dequantize_q8_K(const void *vx, float *y, int64_t n) {
    const blk_q8_K *x = vx;
    for (int64_t i = 0; i < n / QKK; i++)
        for (int j = 0; j < QKK; j++) *y++ = x[i].d * x[i].qs[j];
}

/* Dots: integer sums per sub-block weighted by the integer scales, the mins folded in
 * through the activation's 16-value partial sums (bsums), one float step per super-block. */
float tlq_vec_dot_q4_K_ref(int64_t n, const void *vw, const void *vx) {
    const blk_q4_K *w = vw;
    const blk_q8_K *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n / QKK; i++) {
        int32_t sum_q = 0, sum_m = 0;
        for (int sb = 0; sb < 8; sb++) {
            uint8_t sc, m;
            tlq_scale_min_k4(sb, w[i].scales, &sc, &m);
            int32_t dot = 0;
            for (int l = 0; l < 32; l++) dot += k4_low(w[i].qs, 32 * sb + l) * x[i].qs[32 * sb + l];
            sum_q += sc * dot;
            sum_m += m * (x[i].bsums[2 * sb] + x[i].bsums[2 * sb + 1]);
        }
        s += tl_fp16_to_fp32(w[i].d) * x[i].d * sum_q - tl_fp16_to_fp32(w[i].dmin) * x[i].d * sum_m;
    }
    return s;
}

float tlq_vec_dot_q5_K_ref(int64_t n, const void *vw, const void *vx) {
    const blk_q5_K *w = vw;
    const blk_q8_K *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n / QKK; i++) {
        int32_t sum_q = 0, sum_m = 0;
        for (int sb = 0; sb < 8; sb++) {
            uint8_t sc, m;
            tlq_scale_min_k4(sb, w[i].scales, &sc, &m);
            int32_t dot = 0;
            for (int l = 0; l < 32; l++) dot += k5_value(&w[i], 32 * sb + l) * x[i].qs[32 * sb + l];
            sum_q += sc * dot;
            sum_m += m * (x[i].bsums[2 * sb] + x[i].bsums[2 * sb + 1]);
        }
        s += tl_fp16_to_fp32(w[i].d) * x[i].d * sum_q - tl_fp16_to_fp32(w[i].dmin) * x[i].d * sum_m;
    }
    return s;
}

float tlq_vec_dot_q6_K_ref(int64_t n, const void *vw, const void *vx) {
    const blk_q6_K *w = vw;
    const blk_q8_K *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n / QKK; i++) {
        int32_t sum_q = 0;
        for (int sb = 0; sb < 16; sb++) {
            int32_t dot = 0;
            for (int l = 0; l < 16; l++) dot += (k6_value(&w[i], 16 * sb + l) - 32) * x[i].qs[16 * sb + l];
            sum_q += w[i].scales[sb] * dot;
        }
        s += tl_fp16_to_fp32(w[i].d) * x[i].d * sum_q;
    }
    return s;
}
