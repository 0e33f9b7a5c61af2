/* quants.c: type table, CPU feature detection, run-time kernel choice, and the scalar
 * references for the 32-wide block formats (q4_0 ... q8_1) and the float formats.
 * K-quant references live in quants_kquants.c, AVX2 kernels in quants_avx2.c.
 *
 * The quantizers follow llama.cpp's reference RTN math operation for operation (same
 * float expressions in the same order) so that the bytes we write equal theirs. */
/* No fused multiply-add contraction: the quantizers must round exactly as the references. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* rounding must match the reference exactly */
#else
#pragma GCC optimize("fp-contract=off") /* rounding must match the reference exactly */
#endif

#include "quants_internal.h"
#include "../base/common.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ type table */

#define T(id, nm, bs, ts, vdt, sup) [id] = {nm, bs, ts, vdt, sup}
static const tl_type_traits k_traits[TL_TYPE_COUNT] = {
    T(TL_TYPE_F32, "f32", 1, 4, TL_TYPE_F32, true),
    T(TL_TYPE_F16, "f16", 1, 2, TL_TYPE_F32, true),
    T(TL_TYPE_BF16, "bf16", 1, 2, TL_TYPE_F32, true),
    T(TL_TYPE_Q4_0, "q4_0", QK, sizeof(blk_q4_0), TL_TYPE_Q8_0, true),
    T(TL_TYPE_Q4_1, "q4_1", QK, sizeof(blk_q4_1), TL_TYPE_Q8_1, true),
    T(TL_TYPE_Q5_0, "q5_0", QK, sizeof(blk_q5_0), TL_TYPE_Q8_0, true),
    T(TL_TYPE_Q5_1, "q5_1", QK, sizeof(blk_q5_1), TL_TYPE_Q8_1, true),
    T(TL_TYPE_Q8_0, "q8_0", QK, sizeof(blk_q8_0), TL_TYPE_Q8_0, true),
    /* q8_1 / q8_K are activation formats: they quantize and dequantize, but there is no
     * weight x activation dot for them, so they are not "supported" as weight types. */
    T(TL_TYPE_Q8_1, "q8_1", QK, sizeof(blk_q8_1), TL_TYPE_Q8_1, false),
    T(TL_TYPE_Q2_K, "q2_K", QKK, SIZEOF_Q2_K, TL_TYPE_Q8_K, false),
    T(TL_TYPE_Q3_K, "q3_K", QKK, SIZEOF_Q3_K, TL_TYPE_Q8_K, false),
    T(TL_TYPE_Q4_K, "q4_K", QKK, sizeof(blk_q4_K), TL_TYPE_Q8_K, true),
    T(TL_TYPE_Q5_K, "q5_K", QKK, sizeof(blk_q5_K), TL_TYPE_Q8_K, true),
    T(TL_TYPE_Q6_K, "q6_K", QKK, sizeof(blk_q6_K), TL_TYPE_Q8_K, true),
    T(TL_TYPE_Q8_K, "q8_K", QKK, sizeof(blk_q8_K), TL_TYPE_Q8_K, false),
    T(TL_TYPE_W4G128, "w4g128", QW4, sizeof(blk_w4g128), TL_TYPE_Q8_1, true),
};
#undef T

const tl_type_traits *tl_type_info(int type_id) {
    if (type_id < 0 || type_id >= TL_TYPE_COUNT || !k_traits[type_id].name) return NULL;
    return &k_traits[type_id];
}

const char *tl_type_name(int type_id) {
    const tl_type_traits *tr = tl_type_info(type_id);
    return tr ? tr->name : "unknown";
}

double tl_type_bits_per_weight(tl_type t) {
    const tl_type_traits *tr = tl_type_info(t);
    return tr ? 8.0 * (double)tr->type_size / tr->block_size : 0.0;
}

size_t tl_row_size(tl_type t, int64_t n) {
    const tl_type_traits *tr = tl_type_info(t);
    if (!tr || n < 0 || n % tr->block_size) return 0;
    return (size_t)(n / tr->block_size) * tr->type_size;
}

/* ------------------------------------------------------------------ CPU features */

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
#else
    r[0] = r[1] = r[2] = r[3] = 0;
    (void)leaf; (void)sub;
#endif
}

tl_cpu_features tl_cpu_detect(void) {
    tl_cpu_features f;
    memset(&f, 0, sizeof f);
#if defined(__x86_64__) || defined(__i386__)
    uint32_t r[4];
    cpuid(0, 0, r);
    uint32_t max_leaf = r[0];
    if (max_leaf < 1) return f;
    cpuid(1, 0, r);
    bool osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1;
    bool fma = (r[2] >> 12) & 1, f16c = (r[2] >> 29) & 1;
    if (!osxsave || !avx) return f;
    /* The OS must save YMM (XCR0 bits 1,2) and, for AVX-512, opmask/ZMM state (bits 5..7). */
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
    bool ymm_ok = (xcr0 & 0x6) == 0x6;
    bool zmm_ok = ymm_ok && (xcr0 & 0xe0) == 0xe0;
    if (!ymm_ok) return f;
    f.fma = fma;
    f.f16c = f16c;
    if (max_leaf >= 7) {
        cpuid(7, 0, r);
        f.avx2 = (r[1] >> 5) & 1;
        if (zmm_ok) {
            f.avx512f = (r[1] >> 16) & 1;
            f.avx512bw = (r[1] >> 30) & 1;
            f.avx512vl = (r[1] >> 31) & 1;
            f.avx512vnni = (r[2] >> 11) & 1;
        }
        /* AMX-TILE (EDX 24) and AMX-INT8 (EDX 25), with XTILECFG and XTILEDATA in XCR0 (17, 18) */
        f.amx_int8 = ((r[3] >> 24) & 1) && ((r[3] >> 25) & 1) && (xcr0 & (3ull << 17)) == (3ull << 17);
        uint32_t max_sub = r[0];
        if (max_sub >= 1) {
            cpuid(7, 1, r);
            f.avx_vnni = (r[0] >> 4) & 1;
            if (zmm_ok) f.avx512bf16 = (r[0] >> 5) & 1;
        }
    }
#endif
    return f;
}

/* The only mutable global in this module, by design: one atomic word caching "CPU has
 * AVX2+FMA+F16C" (cpuid traps in a VM, too slow to repeat per call) and the force-scalar
 * switch. Bit 0: initialised, bit 1: AVX2 usable, bit 2: force scalar, bit 3: AVX-512
 * F/BW/VL + VNNI usable (OS saves ZMM state), bit 4: AVX-512 switched off (env
 * TAILOR_NO_AVX512=1 or tl_quants_disable_avx512). Writes are idempotent (detection gives
 * the same answer every time), so races are harmless. */
static atomic_uint g_dispatch;

static unsigned dispatch_state(void) {
    unsigned s = atomic_load_explicit(&g_dispatch, memory_order_relaxed);
    if (s & 1) return s;
    tl_cpu_features f = tl_cpu_detect();
    unsigned v = 1;
    if (f.avx2 && f.fma && f.f16c) v |= 2;
    if ((v & 2) && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni) v |= 8;
    const char *env = getenv("TAILOR_FORCE_SCALAR");
    if (env && env[0] && strcmp(env, "0") != 0) v |= 4;
    env = getenv("TAILOR_NO_AVX512");
    if (env && env[0] && strcmp(env, "0") != 0) v |= 16;
    unsigned expected = 0;
    atomic_compare_exchange_strong(&g_dispatch, &expected, v);
    return atomic_load(&g_dispatch);
}

tl_simd_level tl_simd_level_get(void) {
    const unsigned s = dispatch_state();
    if (!(s & 2) || (s & 4)) return TL_SIMD_SCALAR;
    return (s & 8) && !(s & 16) ? TL_SIMD_AVX512 : TL_SIMD_AVX2;
}

void tl_quants_force_scalar(bool on) {
    dispatch_state();
    if (on) atomic_fetch_or(&g_dispatch, 4u);
    else atomic_fetch_and(&g_dispatch, ~4u);
}

void tl_quants_disable_avx512(bool on) {
    dispatch_state();
    if (on) atomic_fetch_or(&g_dispatch, 16u);
    else atomic_fetch_and(&g_dispatch, ~16u);
}

/* ------------------------------------------------------------------ float formats */

static float dot_f32_ref(int64_t n, const void *w, const void *x) {
    const float *a = w, *b = x;
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return (float)s;
}
static float dot_f16_ref(int64_t n, const void *w, const void *x) {
    const uint16_t *a = w;
    const float *b = x;
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)tl_fp16_to_fp32(a[i]) * b[i];
    return (float)s;
}
static float dot_bf16_ref(int64_t n, const void *w, const void *x) {
    const uint16_t *a = w;
    const float *b = x;
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)tl_bf16_to_fp32(a[i]) * b[i];
    return (float)s;
}

/* ------------------------------------------------------------------ 32-wide blocks */

static inline float h2f(uint16_t h) { return tl_fp16_to_fp32(h); }

/* Largest-magnitude value, keeping its sign (first one wins on ties, as ggml). */
static float signed_absmax(const float *x, int n) {
    float amax = 0, max = 0;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
    }
    return max;
}

static void quantize_q4_0(const float *x, void *vy, int64_t n) {
    blk_q4_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        const float d = signed_absmax(x, QK) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = tl_fp32_to_fp16(d);
        for (int j = 0; j < QK / 2; j++) {
            int a = (int8_t)(x[j] * id + 8.5f), b = (int8_t)(x[j + QK / 2] * id + 8.5f);
            y[i].qs[j] = (uint8_t)(TL_MIN(15, a) | (TL_MIN(15, b) << 4));
        }
    }
}

static void quantize_q4_1(const float *x, void *vy, int64_t n) {
    blk_q4_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float mn = FLT_MAX, mx = -FLT_MAX;
        for (int j = 0; j < QK; j++) {
            if (x[j] < mn) mn = x[j];
            if (x[j] > mx) mx = x[j];
        }
        const float d = (mx - mn) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = tl_fp32_to_fp16(d);
        y[i].m = tl_fp32_to_fp16(mn);
        for (int j = 0; j < QK / 2; j++) {
            int a = (int8_t)((x[j] - mn) * id + 0.5f), b = (int8_t)((x[j + QK / 2] - mn) * id + 0.5f);
            y[i].qs[j] = (uint8_t)(TL_MIN(15, a) | (TL_MIN(15, b) << 4));
        }
    }
}

static void quantize_q5_0(const float *x, void *vy, int64_t n) {
    blk_q5_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        const float d = signed_absmax(x, QK) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = tl_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            int a = TL_MIN(31, (int8_t)(x[j] * id + 16.5f));
            int b = TL_MIN(31, (int8_t)(x[j + QK / 2] * id + 16.5f));
            y[i].qs[j] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
            qh |= (uint32_t)((a >> 4) & 1) << j;
            qh |= (uint32_t)((b >> 4) & 1) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void quantize_q5_1(const float *x, void *vy, int64_t n) {
    blk_q5_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float mn = FLT_MAX, mx = -FLT_MAX;
        for (int j = 0; j < QK; j++) {
            if (x[j] < mn) mn = x[j];
            if (x[j] > mx) mx = x[j];
        }
        const float d = (mx - mn) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = tl_fp32_to_fp16(d);
        y[i].m = tl_fp32_to_fp16(mn);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            uint8_t a = (uint8_t)((x[j] - mn) * id + 0.5f);
            uint8_t b = (uint8_t)((x[j + QK / 2] - mn) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
            qh |= (uint32_t)((a >> 4) & 1) << j;
            qh |= (uint32_t)((b >> 4) & 1) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

void tlq_quantize_q8_0_ref(const float *x, void *vy, int64_t n) {
    blk_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = TL_MAX(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = tl_fp32_to_fp16(d);
        for (int j = 0; j < QK; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

void tlq_quantize_q8_1_ref(const float *x, void *vy, int64_t n) {
    blk_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = TL_MAX(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = tl_fp32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = tl_fp32_to_fp16(sum * d);
    }
}

static void dequantize_q4_0(const void *vx, float *y, int64_t n) {
    const blk_q4_0 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = ((x[i].qs[j] & 0xF) - 8) * d;
            y[j + QK / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequantize_q4_1(const void *vx, float *y, int64_t n) {
    const blk_q4_1 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (x[i].qs[j] & 0xF) * d + m;
            y[j + QK / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

/* The 5-bit value j of a q5 block: low nibble from qs, bit 4 from bit j of qh. */
static inline int q5_value(const uint8_t *qs, uint32_t qh, int j) {
    int lo = j < QK / 2 ? (qs[j] & 0xF) : (qs[j - QK / 2] >> 4);
    return lo | (int)(((qh >> j) & 1) << 4);
}

static void dequantize_q5_0(const void *vx, float *y, int64_t n) {
    const blk_q5_0 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < QK; j++) y[j] = (q5_value(x[i].qs, qh, j) - 16) * d;
    }
}

static void dequantize_q5_1(const void *vx, float *y, int64_t n) {
    const blk_q5_1 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < QK; j++) y[j] = q5_value(x[i].qs, qh, j) * d + m;
    }
}

static void dequantize_q8_0(const void *vx, float *y, int64_t n) {
    const blk_q8_0 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK; j++) y[j] = x[i].qs[j] * d;
    }
}

static void dequantize_q8_1(const void *vx, float *y, int64_t n) {
    const blk_q8_1 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK; j++) y[j] = x[i].qs[j] * d;
    }
}

/* Reference dots: exact integer sums per block, one float multiply-add per block (the
 * same grouping as ggml's reference, so results agree to rounding). */
static float dot_q4_0_ref(int64_t n, const void *vw, const void *vx) {
    const blk_q4_0 *w = vw;
    const blk_q8_0 *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++)
            sumi += ((w[i].qs[j] & 0xF) - 8) * x[i].qs[j] + ((w[i].qs[j] >> 4) - 8) * x[i].qs[j + QK / 2];
        s += sumi * h2f(w[i].d) * h2f(x[i].d);
    }
    return s;
}

static float dot_q4_1_ref(int64_t n, const void *vw, const void *vx) {
    const blk_q4_1 *w = vw;
    const blk_q8_1 *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++)
            sumi += (w[i].qs[j] & 0xF) * x[i].qs[j] + (w[i].qs[j] >> 4) * x[i].qs[j + QK / 2];
        s += sumi * h2f(w[i].d) * h2f(x[i].d) + h2f(w[i].m) * h2f(x[i].s);
    }
    return s;
}

static float dot_q5_0_ref(int64_t n, const void *vw, const void *vx) {
    const blk_q5_0 *w = vw;
    const blk_q8_0 *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        uint32_t qh;
        memcpy(&qh, w[i].qh, 4);
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += (q5_value(w[i].qs, qh, j) - 16) * x[i].qs[j];
        s += sumi * h2f(w[i].d) * h2f(x[i].d);
    }
    return s;
}

static float dot_q5_1_ref(int64_t n, const void *vw, const void *vx) {
    const blk_q5_1 *w = vw;
    const blk_q8_1 *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        uint32_t qh;
        memcpy(&qh, w[i].qh, 4);
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += q5_value(w[i].qs, qh, j) * x[i].qs[j];
        s += sumi * h2f(w[i].d) * h2f(x[i].d) + h2f(w[i].m) * h2f(x[i].s);
    }
    return s;
}

static float dot_q8_0_ref(int64_t n, const void *vw, const void *vx) {
    const blk_q8_0 *w = vw;
    const blk_q8_0 *x = vx;
    float s = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += w[i].qs[j] * x[i].qs[j];
        s += sumi * h2f(w[i].d) * h2f(x[i].d);
    }
    return s;
}

/* ------------------------------------------------------------------ public entry points */

void tl_dequantize_row(tl_type t, const void *src, float *dst, int64_t n) {
    switch (t) {
    case TL_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case TL_TYPE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = tl_fp16_to_fp32(s[i]);
        break;
    }
    case TL_TYPE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = tl_bf16_to_fp32(s[i]);
        break;
    }
    case TL_TYPE_Q4_0: dequantize_q4_0(src, dst, n); break;
    case TL_TYPE_Q4_1: dequantize_q4_1(src, dst, n); break;
    case TL_TYPE_Q5_0: dequantize_q5_0(src, dst, n); break;
    case TL_TYPE_Q5_1: dequantize_q5_1(src, dst, n); break;
    case TL_TYPE_Q8_0: dequantize_q8_0(src, dst, n); break;
    case TL_TYPE_Q8_1: dequantize_q8_1(src, dst, n); break;
    case TL_TYPE_Q4_K: tlq_dequantize_q4_K(src, dst, n); break;
    case TL_TYPE_Q5_K: tlq_dequantize_q5_K(src, dst, n); break;
    case TL_TYPE_Q6_K: tlq_dequantize_q6_K(src, dst, n); break;
    case TL_TYPE_Q8_K: tlq_dequantize_q8_K(src, dst, n); break;
    case TL_TYPE_W4G128: tlq_dequantize_w4g128(src, dst, n); break;
    default:
        /* Unsupported types never reach here: the loader rejects them by their traits. */
        fprintf(stderr, "tl_dequantize_row: type %s is not supported\n", tl_type_name(t));
        abort();
    }
}

void tl_quantize_row(tl_type t, const float *src, void *dst, int64_t n) {
    switch (t) {
    case TL_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case TL_TYPE_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = tl_fp32_to_fp16(src[i]);
        break;
    }
    case TL_TYPE_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = tl_fp32_to_bf16(src[i]);
        break;
    }
    case TL_TYPE_Q4_0: quantize_q4_0(src, dst, n); break;
    case TL_TYPE_Q4_1: quantize_q4_1(src, dst, n); break;
    case TL_TYPE_Q5_0: quantize_q5_0(src, dst, n); break;
    case TL_TYPE_Q5_1: quantize_q5_1(src, dst, n); break;
    case TL_TYPE_Q8_0: tlq_quantize_q8_0_ref(src, dst, n); break;
    case TL_TYPE_Q8_1: tlq_quantize_q8_1_ref(src, dst, n); break;
    case TL_TYPE_Q8_K: tlq_quantize_q8_K_ref(src, dst, n); break;
    case TL_TYPE_Q4_K: tlq_quantize_q4_K_ref(src, dst, n); break;
    case TL_TYPE_Q5_K: tlq_quantize_q5_K_ref(src, dst, n); break;
    case TL_TYPE_Q6_K: tlq_quantize_q6_K_ref(src, dst, n); break;
    case TL_TYPE_W4G128: tlq_quantize_w4g128_ref(src, dst, n); break;
    default:
        fprintf(stderr, "tl_quantize_row: cannot quantize to type %s\n", tl_type_name(t));
        abort();
    }
}

static tlq_dot_fn ref_dot(tl_type t) {
    switch (t) {
    case TL_TYPE_F32: return dot_f32_ref;
    case TL_TYPE_F16: return dot_f16_ref;
    case TL_TYPE_BF16: return dot_bf16_ref;
    case TL_TYPE_Q4_0: return dot_q4_0_ref;
    case TL_TYPE_Q4_1: return dot_q4_1_ref;
    case TL_TYPE_Q5_0: return dot_q5_0_ref;
    case TL_TYPE_Q5_1: return dot_q5_1_ref;
    case TL_TYPE_Q8_0: return dot_q8_0_ref;
    case TL_TYPE_Q4_K: return tlq_vec_dot_q4_K_ref;
    case TL_TYPE_Q5_K: return tlq_vec_dot_q5_K_ref;
    case TL_TYPE_Q6_K: return tlq_vec_dot_q6_K_ref;
    case TL_TYPE_W4G128: return tlq_vec_dot_w4g128_ref;
    default: return NULL;
    }
}

tlq_kernels tlq_get_kernels(tl_type t) {
    tlq_kernels k = {.dot = ref_dot(t)};
    tl_type vt = k_traits[t].vec_dot_type;
    if (vt == TL_TYPE_Q8_0) k.quant_act = tlq_quantize_q8_0_ref;
    else if (vt == TL_TYPE_Q8_1) k.quant_act = tlq_quantize_q8_1_ref;
    else if (vt == TL_TYPE_Q8_K) k.quant_act = tlq_quantize_q8_K_ref;
    const tl_simd_level level = tl_simd_level_get();
    if (level >= TL_SIMD_AVX2) {
        k.avx2 = true;
        switch (t) {
        case TL_TYPE_F32: k.dot = tlq_dot_f32_avx2; break;
        case TL_TYPE_F16: k.dot = tlq_dot_f16_avx2; break;
        case TL_TYPE_BF16: k.dot = tlq_dot_bf16_avx2; break;
        case TL_TYPE_Q4_0: k.dot = tlq_dot_q4_0_avx2; k.dot4 = tlq_dot4_q4_0_avx2; break;
        case TL_TYPE_Q4_1: k.dot = tlq_dot_q4_1_avx2; k.dot4 = tlq_dot4_q4_1_avx2; break;
        case TL_TYPE_Q5_0: k.dot = tlq_dot_q5_0_avx2; k.dot4 = tlq_dot4_q5_0_avx2; break;
        case TL_TYPE_Q5_1: k.dot = tlq_dot_q5_1_avx2; k.dot4 = tlq_dot4_q5_1_avx2; break;
        case TL_TYPE_Q8_0: k.dot = tlq_dot_q8_0_avx2; k.dot4 = tlq_dot4_q8_0_avx2; break;
        case TL_TYPE_Q4_K: k.dot = tlq_dot_q4_K_avx2; break;
        case TL_TYPE_Q5_K: k.dot = tlq_dot_q5_K_avx2; break;
        case TL_TYPE_Q6_K: k.dot = tlq_dot_q6_K_avx2; break;
        case TL_TYPE_W4G128:
            k.dot = tlq_dot_w4g128_avx2;
            k.dot4 = tlq_dot4_w4g128_avx2;
            k.deq = tlq_dequantize_w4g128_avx2;
            break;
        default: k.avx2 = false; break;
        }
        /* The SIMD activation quantizers give the same bytes as the references. */
        if (vt == TL_TYPE_Q8_0) k.quant_act = tlq_quantize_q8_0_avx2;
        else if (vt == TL_TYPE_Q8_1) k.quant_act = tlq_quantize_q8_1_avx2;
        else if (vt == TL_TYPE_Q8_K) k.quant_act = tlq_quantize_q8_K_avx2;
    }
    if (level == TL_SIMD_AVX512) { /* AVX-512 VNNI replaces the integer dots */
        k.avx512 = true;
        switch (t) {
        /* 32-wide formats: the per-block scale chain bounds them, so the single-row dot
         * wins only over the xa layout (matmul's decode path, with its 4-row form that
         * unpacks each weight block once for 4 rows and gives each row the one-row bits);
         * tl_vec_dot keeps AVX2, as does q8_0 (its AVX2 dot streams 40 GB/s per core, the
         * xa one measured 33) */
        case TL_TYPE_Q4_0:
            k.dot_xa = tlq_dotxa_q4_0_avx512;
            k.dot4_xa = tlq_dotxa4_q4_0_avx512;
            k.dot2_xa = tlq_dotxa2_q4_0_avx512;
            k.xa_from = tlq_xa_from_q4_0_avx512;
            break;
        case TL_TYPE_Q4_1:
            k.dot_xa = tlq_dotxa_q4_1_avx512;
            k.dot4_xa = tlq_dotxa4_q4_1_avx512;
            k.dot2_xa = tlq_dotxa2_q4_1_avx512;
            k.xa_from = tlq_xa_from_q4_1_avx512;
            break;
        case TL_TYPE_Q5_0:
            k.dot_xa = tlq_dotxa_q5_0_avx512;
            k.dot4_xa = tlq_dotxa4_q5_0_avx512;
            k.dot2_xa = tlq_dotxa2_q5_0_avx512;
            k.xa_from = tlq_xa_from_q5_0_avx512;
            break;
        case TL_TYPE_Q5_1:
            k.dot_xa = tlq_dotxa_q5_1_avx512;
            k.dot4_xa = tlq_dotxa4_q5_1_avx512;
            k.dot2_xa = tlq_dotxa2_q5_1_avx512;
            k.xa_from = tlq_xa_from_q5_1_avx512;
            break;
        case TL_TYPE_Q4_K: k.dot = tlq_dot_q4_K_avx512; break;
        case TL_TYPE_Q5_K: k.dot = tlq_dot_q5_K_avx512; break;
        case TL_TYPE_Q6_K: k.dot = tlq_dot_q6_K_avx512; break;
        default: k.avx512 = false; break;
        }
    }
    return k;
}

float tl_vec_dot(tl_type t, int64_t n, const void *w, const void *x) {
    tlq_kernels k = tlq_get_kernels(t);
    if (!k.dot) {
        fprintf(stderr, "tl_vec_dot: weight type %s is not supported\n", tl_type_name(t));
        abort();
    }
    return k.dot(n, w, x);
}

float tl_vec_dot_ref(tl_type t, int64_t n, const void *w, const void *x) {
    tlq_dot_fn f = ref_dot(t);
    if (!f) {
        fprintf(stderr, "tl_vec_dot_ref: weight type %s is not supported\n", tl_type_name(t));
        abort();
    }
    return f(n, w, x);
}

void tl_get_row(tl_type t, const void *W, int64_t n_in, int64_t row, float *dst) {
    const uint8_t *p = (const uint8_t *)W + (size_t)row * tl_row_size(t, n_in);
    tl_dequantize_row(t, p, dst, n_in);
}
