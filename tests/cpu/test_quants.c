/* test_quants.c: block formats, quantizers, dot products and tl_matmul.
 *
 * Independent references used here:
 *  - hand-built blocks with values decoded by hand (layouts of ggml-common.h);
 *  - tests/fixtures/quant_golden.bin from the `gguf` Python package (gen_quant_golden.py):
 *    its quantizers for f16/bf16/q4_0/q4_1/q5_0/q5_1/q8_0 and its dequantizers for
 *    q4_K/q5_K/q6_K (gguf has no K-quant quantizer);
 *  - FNV-1a hashes of llama.cpp's quantize_row_{q4,q5,q6,q8}_K_ref output on the golden
 *    input (computed once by compiling those reference functions from the llama.cpp
 *    snapshot; tailor's quantizers must give the same bytes);
 *  - exact f64 arithmetic for dot products and matmul.
 *
 * Thresholds (relative RMSE = rms(dequant(quant(x)) - x) / rms(x), N(0,1) data; the
 * outlier data multiplies 1 value in 64 by 20 and allows 2x — the fitted K-quants shrug off
 * outliers, the absmax formats lose resolution on their blocks):
 *   f16 1e-3, bf16 5e-3, q8_0/q8_1 0.01, q8_K 0.015, q6_K 0.025, q5_* 0.05, q4_* 0.1
 * (measured: f16 2e-4, q8_0 0.0055, q6_K 0.018, q5_K 0.037, q4_K 0.072, q4_0 0.088).
 * Dot products: |dot - exact f64| / (|w| |x|) below f16 1e-3 ... q4 0.08 (dot_threshold);
 * AVX2 vs scalar within 2e-6 of |w||x| (integer sums are exact, float order differs);
 * SIMD activation quantizers byte-identical to the references.
 * AVX-512 VNNI kernels (test_avx512, skipped on CPUs without them): within 2e-6 of |w||x|
 * of the scalar reference on real data, and identical on random codes with unit scales and
 * small activations (every partial sum an exact integer).
 * x16 GEMM kernels (test_packed, src/cpu/qpack.h; q4_0, q4_1, q8_0, q4_K, q6_K): the packed form
 * gives every row's bytes back; the scalar, AVX2 and AVX-512 kernels give identical bits, on
 * real data and on random codes (every code pattern, random scales and activations), for any
 * number of activation rows in a call (one call over all rows = one call per row); within
 * 2e-6 of |w||x| of tl_vec_dot_ref; tl_matmul_w through them (decode rows, and TL_MM_Q8 prompt
 * rows) within check_matmul's bound of the exact f64 product. */
#include "../../src/cpu/quants.h"
#include "../../src/cpu/quants_internal.h"
#include "../../src/cpu/qpack.h"
#include "../../src/base/common.h"
#include "../../src/base/threads.h"
#include "../testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t rng_u64(void) { /* xorshift64*: reproducible across machines */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}
static double rng_uniform(void) { return ((rng_u64() >> 11) + 0.5) / 9007199254740992.0; }
static float rng_normal(void) {
    return (float)(sqrt(-2 * log(rng_uniform())) * cos(6.283185307179586 * rng_uniform()));
}
static void fill_normal(float *x, int64_t n, bool outliers) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = rng_normal();
        if (outliers && rng_u64() % 64 == 0) x[i] *= 20;
    }
}

static uint64_t fnv1a(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ULL; }
    return h;
}

static const tl_type k_weight_types[] = {TL_TYPE_F32, TL_TYPE_F16, TL_TYPE_BF16, TL_TYPE_Q4_0,
                                         TL_TYPE_Q4_1, TL_TYPE_Q5_0, TL_TYPE_Q5_1, TL_TYPE_Q8_0,
                                         TL_TYPE_Q4_K, TL_TYPE_Q5_K, TL_TYPE_Q6_K, TL_TYPE_W4G128};
#define N_WT (int)(sizeof k_weight_types / sizeof k_weight_types[0])

static double rt_threshold(tl_type t) {
    switch (t) {
    case TL_TYPE_F32: return 1e-7;
    case TL_TYPE_F16: return 1e-3;
    case TL_TYPE_BF16: return 5e-3;
    case TL_TYPE_Q8_0: case TL_TYPE_Q8_1: return 0.01;
    case TL_TYPE_Q8_K: return 0.015; /* one scale per 256 values */
    case TL_TYPE_Q6_K: return 0.025;
    case TL_TYPE_Q5_0: case TL_TYPE_Q5_1: case TL_TYPE_Q5_K: return 0.05;
    /* one scale per 128 values: the range of 128 normals is ~5.2 sigma, so the step is
     * ~0.35 and the rmse ~0.10 (measured 0.103; outlier data 0.264, limit 0.35): an outlier
     * stretches its whole group */
    case TL_TYPE_W4G128: return 0.12;
    default: return 0.1;
    }
}
/* the outlier data's limit (2x for the others) */
static double rt_threshold_outliers(tl_type t) { return t == TL_TYPE_W4G128 ? 0.35 : 2 * rt_threshold(t); }

/* ------------------------------------------------------------------ traits */
static void test_traits(void) {
    CHECK(tl_row_size(TL_TYPE_F32, 10) == 40);
    CHECK(tl_row_size(TL_TYPE_F16, 10) == 20);
    CHECK(tl_row_size(TL_TYPE_BF16, 3) == 6);
    CHECK(tl_row_size(TL_TYPE_Q4_0, 64) == 36);
    CHECK(tl_row_size(TL_TYPE_Q4_0, 33) == 0);
    CHECK(tl_row_size(TL_TYPE_Q4_1, 576) == 18 * 20);
    CHECK(tl_row_size(TL_TYPE_Q5_0, 32) == 22);
    CHECK(tl_row_size(TL_TYPE_Q5_1, 32) == 24);
    CHECK(tl_row_size(TL_TYPE_Q8_0, 32) == 34);
    CHECK(tl_row_size(TL_TYPE_Q8_1, 32) == 36);
    CHECK(tl_row_size(TL_TYPE_Q2_K, 256) == 84);
    CHECK(tl_row_size(TL_TYPE_Q3_K, 256) == 110);
    CHECK(tl_row_size(TL_TYPE_Q4_K, 512) == 288);
    CHECK(tl_row_size(TL_TYPE_Q5_K, 256) == 176);
    CHECK(tl_row_size(TL_TYPE_Q6_K, 256) == 210);
    CHECK(tl_row_size(TL_TYPE_Q8_K, 256) == 292);
    CHECK(tl_row_size(TL_TYPE_Q4_K, 128) == 0);
    CHECK(tl_row_size(TL_TYPE_W4G128, 256) == 136);
    CHECK(tl_row_size(TL_TYPE_W4G128, 64) == 0);
    CHECK(tl_type_info(100) && strcmp(tl_type_name(100), "w4g128") == 0);
    CHECK(tl_type_info(TL_TYPE_W4G128)->vec_dot_type == TL_TYPE_Q8_1);
    CHECK(tl_type_bits_per_weight(TL_TYPE_W4G128) == 4.25 && tl_type_bits_per_weight(TL_TYPE_Q8_0) == 8.5 &&
          tl_type_bits_per_weight(TL_TYPE_Q4_K) == 4.5 && tl_type_bits_per_weight(TL_TYPE_F16) == 16);
    CHECK(tl_type_info(4) == NULL && tl_type_info(99) == NULL && tl_type_info(-1) == NULL);
    CHECK(strcmp(tl_type_name(99), "unknown") == 0);
    CHECK(strcmp(tl_type_name(TL_TYPE_Q4_K), "q4_K") == 0);
    CHECK(tl_type_info(TL_TYPE_Q2_K) && !tl_type_info(TL_TYPE_Q2_K)->supported);
    CHECK(tl_type_info(TL_TYPE_Q3_K) && !tl_type_info(TL_TYPE_Q3_K)->supported);
    for (int i = 0; i < N_WT; i++) CHECK(tl_type_info(k_weight_types[i])->supported);
    CHECK(tl_type_info(TL_TYPE_Q4_1)->vec_dot_type == TL_TYPE_Q8_1);
    CHECK(tl_type_info(TL_TYPE_Q5_0)->vec_dot_type == TL_TYPE_Q8_0);
    CHECK(tl_type_info(TL_TYPE_Q6_K)->vec_dot_type == TL_TYPE_Q8_K);
    CHECK(tl_type_info(TL_TYPE_F16)->vec_dot_type == TL_TYPE_F32);
    tl_cpu_features f = tl_cpu_detect();
    printf("cpu: avx2=%d fma=%d f16c=%d avx512f=%d avx512bw=%d avx512vl=%d vnni512=%d avx_vnni=%d bf16=%d\n",
           f.avx2, f.fma, f.f16c, f.avx512f, f.avx512bw, f.avx512vl, f.avx512vnni, f.avx_vnni, f.avx512bf16);
}

/* ------------------------------------------------------------------ hand-built blocks */
static void test_known_blocks(void) {
    float y[256];
    { /* w4g128: d = 0.5, m = -1; byte 0 = 0x3F: value 0 = 15*0.5-1, value 64 = 3*0.5-1;
         byte 63 = 0xA0: value 63 = -1, value 127 = 10*0.5-1 */
        blk_w4g128 b;
        memset(&b, 0x22, sizeof b);
        b.d = tl_fp32_to_fp16(0.5f);
        b.m = tl_fp32_to_fp16(-1.0f);
        b.qs[0] = 0x3F;
        b.qs[63] = 0xA0;
        tl_dequantize_row(TL_TYPE_W4G128, &b, y, 128);
        CHECK(y[0] == 6.5f && y[64] == 0.5f && y[63] == -1.0f && y[127] == 4.0f && y[1] == 0.0f && y[65] == 0.0f);
        /* quantizing what we decoded gives the same codes back */
        blk_w4g128 b2;
        tl_quantize_row(TL_TYPE_W4G128, y, &b2, 128);
        float y2[128];
        tl_dequantize_row(TL_TYPE_W4G128, &b2, y2, 128);
        int same = 0;
        for (int j = 0; j < 128; j++) same += fabsf(y2[j] - y[j]) < 1e-3f;
        CHECK(same == 128);
    }
    { /* q4_0: d = 0.5; byte 0 = 0x9F: element 0 = (15-8)*0.5, element 16 = (9-8)*0.5 */
        blk_q4_0 b;
        memset(&b, 0x88, sizeof b);
        b.d = tl_fp32_to_fp16(0.5f);
        b.qs[0] = 0x9F;
        b.qs[15] = 0x0F;
        tl_dequantize_row(TL_TYPE_Q4_0, &b, y, 32);
        CHECK(y[0] == 3.5f && y[16] == 0.5f && y[1] == 0.0f && y[15] == 3.5f && y[31] == -4.0f);
    }
    { /* q4_1: d = 0.25, m = -1: value = q*0.25 - 1 */
        blk_q4_1 b;
        memset(&b, 0, sizeof b);
        b.d = tl_fp32_to_fp16(0.25f);
        b.m = tl_fp32_to_fp16(-1.0f);
        b.qs[3] = 0xA4;
        tl_dequantize_row(TL_TYPE_Q4_1, &b, y, 32);
        CHECK(y[3] == 0.0f && y[19] == 1.5f && y[0] == -1.0f);
    }
    { /* q5_0: qh bit j is bit 4 of element j; value = (q - 16) * d */
        blk_q5_0 b;
        memset(&b, 0, sizeof b);
        b.d = tl_fp32_to_fp16(2.0f);
        uint32_t qh = (1u << 0) | (1u << 17);
        memcpy(b.qh, &qh, 4);
        b.qs[0] = 0x03; /* element 0: 3 | 16 = 19 -> 6; element 16: 0 -> -32 */
        b.qs[1] = 0x50; /* element 1: 0 -> -32; element 17: 5 | 16 = 21 -> 10 */
        tl_dequantize_row(TL_TYPE_Q5_0, &b, y, 32);
        CHECK(y[0] == 6.0f && y[16] == -32.0f && y[1] == -32.0f && y[17] == 10.0f);
    }
    { /* q5_1 */
        blk_q5_1 b;
        memset(&b, 0, sizeof b);
        b.d = tl_fp32_to_fp16(1.0f);
        b.m = tl_fp32_to_fp16(0.5f);
        uint32_t qh = 1u << 31;
        memcpy(b.qh, &qh, 4);
        b.qs[15] = 0xF0;
        tl_dequantize_row(TL_TYPE_Q5_1, &b, y, 32);
        CHECK(y[31] == 31.5f && y[15] == 0.5f);
    }
    { /* q8_0 */
        blk_q8_0 b;
        memset(&b, 0, sizeof b);
        b.d = tl_fp32_to_fp16(0.125f);
        b.qs[5] = -128;
        b.qs[31] = 127;
        tl_dequantize_row(TL_TYPE_Q8_0, &b, y, 32);
        CHECK(y[5] == -16.0f && y[31] == 15.875f && y[0] == 0.0f);
    }
    { /* q4_K: sub-block 0 scale 2 min 3; sub-block 5 scale 33 (0b100001) min 40 (0b101000) */
        blk_q4_K b;
        memset(&b, 0, sizeof b);
        b.d = tl_fp32_to_fp16(0.5f);
        b.dmin = tl_fp32_to_fp16(0.25f);
        b.scales[0] = 2;
        b.scales[4] = 3;
        b.scales[9] = (uint8_t)((33 & 0xF) | ((40 & 0xF) << 4)); /* j=5: byte j+4 */
        b.scales[1] |= (uint8_t)((33 >> 4) << 6);                 /* byte j-4 */
        b.scales[5] |= (uint8_t)((40 >> 4) << 6);                 /* byte j */
        b.qs[0] = 0x07;      /* element 0 (sub-block 0) = 7 */
        b.qs[64 + 7] = 0xC0; /* group 2 high nibbles = sub-block 5, element 160 + 7 = 12 */
        uint8_t sc, mn;
        tlq_scale_min_k4(5, b.scales, &sc, &mn);
        CHECK(sc == 33 && mn == 40);
        tl_dequantize_row(TL_TYPE_Q4_K, &b, y, 256);
        CHECK(y[0] == 0.5f * 2 * 7 - 0.25f * 3);
        CHECK(y[1] == -0.75f);
        CHECK(y[167] == 0.5f * 33 * 12 - 0.25f * 40);
        CHECK(y[160] == -10.0f);
    }
    { /* q5_K: element 32*2+3 = 67 is sub-block 2 (low nibbles of group 1), high bit at qh[3] bit 2 */
        blk_q5_K b;
        memset(&b, 0, sizeof b);
        b.d = tl_fp32_to_fp16(1.0f);
        b.dmin = tl_fp32_to_fp16(1.0f);
        b.scales[2] = 1; /* sub-block 2 scale 1, min 0 */
        b.qs[32 + 3] = 0x05;
        b.qh[3] = 1 << 2;
        tl_dequantize_row(TL_TYPE_Q5_K, &b, y, 256);
        CHECK(y[67] == 21.0f && y[66] == 0.0f);
    }
    { /* q6_K: element 96+5 = 101 (q = 3): high nibble of ql[32+5], qh[5] bits 6-7 */
        blk_q6_K b;
        memset(&b, 0, sizeof b);
        b.d = tl_fp32_to_fp16(0.5f);
        for (int i = 0; i < 16; i++) b.scales[i] = (int8_t)(i - 8);
        b.ql[32 + 5] = 0xA0;       /* low 4 bits of element 101 = 10 */
        b.qh[5] = 2 << 6;          /* high 2 bits = 2 -> 42 - 32 = 10 */
        tl_dequantize_row(TL_TYPE_Q6_K, &b, y, 256);
        CHECK(y[101] == 0.5f * (101 / 16 - 8) * 10);
        CHECK(y[0] == 0.5f * -8 * -32);
        CHECK(y[255] == 0.5f * 7 * -32);
    }
}

/* ------------------------------------------------------------------ golden file */
static void test_golden(void) {
    const char *path = tl_test_fixture("quant_golden.bin");
    size_t len = 0;
    char *data = tl_test_read_file(path, &len);
    CHECKF(data != NULL, "cannot read %s", path);
    if (!data) return;
    const uint8_t *p = (const uint8_t *)data, *end = p + len;
    uint32_t version, n, n_entries;
    CHECK(len > 16 && memcmp(p, "TLQG", 4) == 0);
    memcpy(&version, p + 4, 4);
    memcpy(&n, p + 8, 4);
    p += 12;
    CHECK(version == 1 && n == 512);
    float *x = tl_xmalloc(n * 4), *y = tl_xmalloc(n * 4);
    memcpy(x, p, n * 4);
    p += n * 4;
    memcpy(&n_entries, p, 4);
    p += 4;
    uint8_t *buf = tl_xmalloc(4096);
    int n_quant = 0, n_deq = 0;
    for (uint32_t e = 0; e < n_entries && p + 12 <= end; e++) {
        uint32_t type, kind, nbytes;
        memcpy(&type, p, 4);
        memcpy(&kind, p + 4, 4);
        memcpy(&nbytes, p + 8, 4);
        p += 12;
        CHECK(nbytes == tl_row_size((tl_type)type, n) && p + nbytes <= end);
        if (kind == 0) {
            tl_quantize_row((tl_type)type, x, buf, n);
            CHECKF(memcmp(buf, p, nbytes) == 0, "%s quantization differs from gguf-py", tl_type_name((int)type));
            n_quant++;
            p += nbytes;
        } else {
            tl_dequantize_row((tl_type)type, p, y, n);
            const float *expect = (const float *)(p + nbytes);
            int bad = 0;
            for (uint32_t i = 0; i < n; i++) {
                float ev;
                memcpy(&ev, expect + i, 4);
                bad += y[i] != ev;
            }
            CHECKF(bad == 0, "%s dequantization differs from gguf-py at %d values", tl_type_name((int)type), bad);
            n_deq++;
            p += nbytes + n * 4;
        }
    }
    CHECK(n_quant == 7 && n_deq == 3);
    /* K-quant quantizers: bytes of llama.cpp's *_ref functions on this input */
    struct { tl_type t; uint64_t h; } kh[] = {
        {TL_TYPE_Q4_K, 0x458cbd2f66811cebULL}, {TL_TYPE_Q5_K, 0x9e66ae4c654f7524ULL},
        {TL_TYPE_Q6_K, 0x5e6815a665eca15fULL}, {TL_TYPE_Q8_K, 0x6de71461cac5a07fULL}};
    for (int i = 0; i < 4; i++) {
        size_t sz = tl_row_size(kh[i].t, n);
        tl_quantize_row(kh[i].t, x, buf, n);
        CHECKF(fnv1a(buf, sz) == kh[i].h, "%s quantization differs from llama.cpp's reference",
               tl_type_name(kh[i].t));
    }
    free(buf);
    free(x);
    free(y);
    free(data);
}

/* ------------------------------------------------------------------ round trips */
static void test_round_trip(void) {
    const int64_t n = 4096;
    float *x = tl_xmalloc(n * 4), *y = tl_xmalloc(n * 4);
    void *q = tl_xmalloc(tl_row_size(TL_TYPE_F32, n));
    const tl_type types[] = {TL_TYPE_F32, TL_TYPE_F16, TL_TYPE_BF16, TL_TYPE_Q4_0, TL_TYPE_Q4_1,
                             TL_TYPE_Q5_0, TL_TYPE_Q5_1, TL_TYPE_Q8_0, TL_TYPE_Q8_1, TL_TYPE_Q4_K,
                             TL_TYPE_Q5_K, TL_TYPE_Q6_K, TL_TYPE_Q8_K, TL_TYPE_W4G128};
    for (int out = 0; out < 2; out++) {
        fill_normal(x, n, out);
        for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
            tl_type t = types[k];
            tl_quantize_row(t, x, q, n);
            tl_dequantize_row(t, q, y, n);
            double e2 = 0, s2 = 0;
            for (int64_t i = 0; i < n; i++) {
                e2 += (double)(y[i] - x[i]) * (y[i] - x[i]);
                s2 += (double)x[i] * x[i];
            }
            double rel = sqrt(e2 / s2), lim = out ? rt_threshold_outliers(t) : rt_threshold(t);
            printf("  round trip %-5s %s: rel rmse %.5f (limit %.4f)\n", tl_type_name(t),
                   out ? "outliers" : "normal  ", rel, lim);
            CHECKF(rel < lim, "%s round trip rel rmse %g >= %g", tl_type_name(t), rel, lim);
        }
    }
    /* all-zero input must give exact zeros (no NaN from 0/0) */
    memset(x, 0, n * 4);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        tl_quantize_row(types[k], x, q, n);
        tl_dequantize_row(types[k], q, y, n);
        int bad = 0;
        for (int64_t i = 0; i < n; i++) bad += y[i] != 0.0f;
        CHECKF(bad == 0, "%s: zeros do not round-trip", tl_type_name(types[k]));
    }
    /* w4g128 clipping search: never worse than RTN on its own weighted objective, much
     * better with outliers when their channels matter little; n_grid 1 is RTN itself */
    {
        void *q2 = tl_xmalloc(tl_row_size(TL_TYPE_W4G128, n));
        float *imp = tl_xmalloc(n * 4);
        fill_normal(x, n, true);
        for (int64_t i = 0; i < n; i++) imp[i] = fabsf(x[i]) > 6 ? 0.01f : 1.0f; /* outliers unimportant */
        tl_quantize_row(TL_TYPE_W4G128, x, q, n);
        tl_quantize_row_w4g128_clip(x, q2, n, NULL, 1);
        CHECK(memcmp(q, q2, tl_row_size(TL_TYPE_W4G128, n)) == 0);
        double e_rtn = 0, e_clip = 0;
        tl_dequantize_row(TL_TYPE_W4G128, q, y, n);
        for (int64_t i = 0; i < n; i++) e_rtn += imp[i] * (double)(y[i] - x[i]) * (y[i] - x[i]);
        tl_quantize_row_w4g128_clip(x, q2, n, imp, 20);
        tl_dequantize_row(TL_TYPE_W4G128, q2, y, n);
        for (int64_t i = 0; i < n; i++) e_clip += imp[i] * (double)(y[i] - x[i]) * (y[i] - x[i]);
        printf("  w4g128 clip search: weighted error %.2f -> %.2f\n", e_rtn, e_clip);
        CHECKF(e_clip <= e_rtn * 0.7, "clip search %g vs RTN %g", e_clip, e_rtn);
        free(q2);
        free(imp);
    }
    free(x);
    free(y);
    free(q);
}

/* ------------------------------------------------------------------ dots */
static double dot_threshold(tl_type t) { /* |dot - exact| / (|w| |x|) */
    switch (t) {
    case TL_TYPE_F32: return 1e-6;
    case TL_TYPE_F16: return 1e-3;
    case TL_TYPE_BF16: return 5e-3;
    case TL_TYPE_Q8_0: return 0.01;
    case TL_TYPE_Q6_K: return 0.02;
    case TL_TYPE_Q5_0: case TL_TYPE_Q5_1: case TL_TYPE_Q5_K: return 0.04;
    default: return 0.08;
    }
}

static void test_dots(void) {
    const int64_t n = 2048;
    float *w = tl_xmalloc(n * 4), *x = tl_xmalloc(n * 4);
    void *wq = tl_xmalloc(n * 4 + 64), *xq = tl_xmalloc(n * 4 + 64), *xq2 = tl_xmalloc(n * 4 + 64);
    for (int trial = 0; trial < 6; trial++) {
        fill_normal(w, n, trial & 1);
        fill_normal(x, n, trial >= 4);
        double exact = 0, nw = 0, nx = 0;
        for (int64_t i = 0; i < n; i++) {
            exact += (double)w[i] * x[i];
            nw += (double)w[i] * w[i];
            nx += (double)x[i] * x[i];
        }
        double norm = sqrt(nw * nx);
        for (int k = 0; k < N_WT; k++) {
            tl_type t = k_weight_types[k], vt = tl_type_info(t)->vec_dot_type;
            tl_quantize_row(t, w, wq, n);
            tl_quantize_row(vt, x, xq, n);
            /* the dispatched activation quantizer must give the reference's bytes */
            tlq_kernels kern = tlq_get_kernels(t);
            if (kern.quant_act) {
                kern.quant_act(x, xq2, n);
                CHECKF(memcmp(xq, xq2, tl_row_size(vt, n)) == 0, "%s: SIMD activation quantizer differs",
                       tl_type_name(vt));
            }
            float ref = tl_vec_dot_ref(t, n, wq, xq);
            float fast = tl_vec_dot(t, n, wq, xq);
            double err = fabs(ref - exact) / norm;
            CHECKF(err < dot_threshold(t), "%s dot error %g (trial %d)", tl_type_name(t), err, trial);
            /* SIMD vs scalar: integer sums are exact, only float summation order differs */
            double agree = fabs((double)fast - ref) / norm;
            CHECKF(agree < 2e-6, "%s AVX2 vs scalar differ by %g (trial %d)", tl_type_name(t), agree, trial);
            if (kern.dot4) { /* 4 copies of the same activation through the 4-token kernel */
                size_t rs = tl_row_size(vt, n);
                uint8_t *x4 = tl_xmalloc(4 * rs);
                for (int j = 0; j < 4; j++) memcpy(x4 + j * rs, xq, rs);
                float r4[4];
                kern.dot4(n, wq, x4, rs, r4);
                for (int j = 0; j < 4; j++)
                    CHECKF(fabs((double)r4[j] - fast) / norm < 1e-6, "%s dot4 lane %d", tl_type_name(t), j);
                free(x4);
            }
            if (trial == 0)
                printf("  dot %-5s rel err vs f64 %.2e (limit %.0e), avx2-vs-ref %.1e\n", tl_type_name(t), err,
                       dot_threshold(t), agree);
        }
    }
    /* force-scalar switch: dispatch must then return the reference bit for bit */
    tl_quants_force_scalar(true);
    tl_quantize_row(TL_TYPE_Q4_K, w, wq, n);
    tl_quantize_row(TL_TYPE_Q8_K, x, xq, n);
    CHECK(tl_vec_dot(TL_TYPE_Q4_K, n, wq, xq) == tl_vec_dot_ref(TL_TYPE_Q4_K, n, wq, xq));
    CHECK(!tlq_get_kernels(TL_TYPE_Q4_1).avx2);
    tl_quants_force_scalar(false);
    free(w);
    free(x);
    free(wq);
    free(xq);
    free(xq2);
}

/* ------------------------------------------------------------------ matmul */
static void check_matmul(tl_pool *pool, tl_type t, int64_t n_in, int64_t n_out, int64_t n_tok, bool scalar) {
    size_t rs = tl_row_size(t, n_in);
    float *Wf = tl_xmalloc(n_out * n_in * 4), *X = tl_xmalloc(n_tok * n_in * 4);
    uint8_t *W = tl_xmalloc(n_out * rs);
    const int64_t ldy = n_out + 3;
    float *Y = tl_xmalloc(n_tok * ldy * 4), *row = tl_xmalloc(n_in * 4);
    fill_normal(Wf, n_out * n_in, false);
    fill_normal(X, n_tok * n_in, false);
    for (int64_t o = 0; o < n_out; o++) tl_quantize_row(t, Wf + o * n_in, W + o * rs, n_in);
    for (int64_t i = 0; i < n_tok * ldy; i++) Y[i] = NAN;
    tl_quants_force_scalar(scalar);
    void *scratch = NULL;
    size_t ss = tl_matmul_scratch_size(t, n_in, n_tok);
    if (n_tok % 2) scratch = tl_xmalloc(ss + 1); /* odd token counts use a caller buffer */
    tl_matmul(pool, t, W, n_in, n_out, X, n_tok, Y, ldy, scratch);
    tl_quants_force_scalar(false);
    free(scratch);
    double worst = 0;
    int bad_pad = 0;
    for (int64_t o = 0; o < n_out; o++) {
        tl_get_row(t, W, n_in, o, row);
        for (int64_t tk = 0; tk < n_tok; tk++) {
            double exact = 0, nw = 0, nx = 0;
            for (int64_t i = 0; i < n_in; i++) {
                exact += (double)row[i] * X[tk * n_in + i];
                nw += (double)row[i] * row[i];
                nx += (double)X[tk * n_in + i] * X[tk * n_in + i];
            }
            double e = fabs(Y[tk * ldy + o] - exact) / sqrt(nw * nx);
            if (!(e <= worst)) worst = e; /* NaN (unwritten) sticks */
        }
    }
    for (int64_t tk = 0; tk < n_tok; tk++)
        for (int64_t o = n_out; o < ldy; o++) bad_pad += !isnan(Y[tk * ldy + o]);
    /* against dequantized weights only the activation rounding remains */
    tl_type vt = tl_type_info(t)->vec_dot_type;
    double lim = vt == TL_TYPE_F32 ? 1e-5 : 0.012;
    CHECKF(worst < lim && bad_pad == 0, "matmul %s %lldx%lld tok %lld %s: err %g (limit %g), %d pad writes",
           tl_type_name(t), (long long)n_in, (long long)n_out, (long long)n_tok, scalar ? "scalar" : "simd",
           worst, lim, bad_pad);
    free(Wf);
    free(X);
    free(W);
    free(Y);
    free(row);
}

static void test_matmul(void) {
    tl_pool *pool = tl_pool_new(2);
    const int64_t toks[] = {1, 3, 7, 64};
    for (int k = 0; k < N_WT; k++) {
        tl_type t = k_weight_types[k];
        int bs = tl_type_info(t)->block_size;
        int64_t n_in = bs == 256 ? 512 : bs == 128 ? 384 : bs == 32 ? 96 : 45; /* odd lengths for float tails */
        for (int j = 0; j < 4; j++) {
            check_matmul(pool, t, n_in, 37, toks[j], false);
            check_matmul(j == 2 ? NULL : pool, t, n_in, 37, toks[j], j == 1);
        }
        check_matmul(pool, t, bs >= 128 ? bs : 64, 101, 9, false);
        if (bs == 128) check_matmul(pool, t, 256, 40, 33, false); /* the f32-tile prefill path */
    }
    tl_pool_free(pool);
}


/* ------------------------------------------------------------------ AVX-512 VNNI kernels */
/* Random raw blocks: every byte random, then the fp16 scale fields set to `scale` (and the
 * min fields to `mn`), so that every code pattern occurs. */
static void random_blocks(tl_type t, void *dst, int64_t n, float scale, float mn) {
    const size_t rs = tl_row_size(t, n), bs = tl_type_info(t)->type_size;
    uint8_t *b = dst;
    for (size_t i = 0; i < rs; i++) b[i] = (uint8_t)rng_u64();
    for (size_t o = 0; o < rs; o += bs) {
        uint16_t d = tl_fp32_to_fp16(scale), m = tl_fp32_to_fp16(mn);
        if (t == TL_TYPE_Q6_K) memcpy(b + o + offsetof(blk_q6_K, d), &d, 2);
        else memcpy(b + o, &d, 2);
        if (t == TL_TYPE_Q4_1 || t == TL_TYPE_Q5_1 || t == TL_TYPE_Q4_K || t == TL_TYPE_Q5_K) memcpy(b + o + 2, &m, 2);
    }
}

/* q8 activations with codes in [-lim, lim] and scale 1 (s and bsums consistent) */
static void small_acts(tl_type vt, void *dst, int64_t n, int lim) {
    if (vt == TL_TYPE_Q8_K) {
        blk_q8_K *y = dst;
        for (int64_t i = 0; i < n / QKK; i++) {
            y[i].d = 1.0f;
            for (int j = 0; j < QKK; j++) y[i].qs[j] = (int8_t)((int)(rng_u64() % (2 * lim + 1)) - lim);
            for (int j = 0; j < QKK / 16; j++) {
                int s = 0;
                for (int l = 0; l < 16; l++) s += y[i].qs[16 * j + l];
                y[i].bsums[j] = (int16_t)s;
            }
        }
        return;
    }
    const size_t bs = tl_type_info(vt)->type_size;
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / QK; i++) {
        int8_t qs[QK];
        int s = 0;
        for (int j = 0; j < QK; j++) s += qs[j] = (int8_t)((int)(rng_u64() % (2 * lim + 1)) - lim);
        uint16_t d = tl_fp32_to_fp16(1.0f), hs = tl_fp32_to_fp16((float)s);
        memcpy(b + i * bs, &d, 2);
        if (vt == TL_TYPE_Q8_1) memcpy(b + i * bs + 2, &hs, 2);
        memcpy(b + i * bs + bs - QK, qs, QK);
    }
}

static void test_avx512(void) {
    tl_cpu_features f = tl_cpu_detect();
    if (!(f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni)) {
        printf("SKIP: AVX-512 VNNI kernels (CPU lacks AVX-512 F/BW/VL/VNNI or the OS does not save ZMM state)\n");
        return;
    }
    struct { tl_type t; tlq_dot_fn dot; void (*xa_from)(const void *, void *, int64_t); } ks[] = {
        {TL_TYPE_Q4_0, tlq_dotxa_q4_0_avx512, tlq_xa_from_q4_0_avx512},
        {TL_TYPE_Q4_1, tlq_dotxa_q4_1_avx512, tlq_xa_from_q4_1_avx512},
        {TL_TYPE_Q5_0, tlq_dotxa_q5_0_avx512, tlq_xa_from_q5_0_avx512},
        {TL_TYPE_Q5_1, tlq_dotxa_q5_1_avx512, tlq_xa_from_q5_1_avx512},
        {TL_TYPE_Q8_0, tlq_dotxa_q8_0_avx512, tlq_xa_from_q8_0_avx512},
        {TL_TYPE_Q4_K, tlq_dot_q4_K_avx512, NULL},
        {TL_TYPE_Q5_K, tlq_dot_q5_K_avx512, NULL},
        {TL_TYPE_Q6_K, tlq_dot_q6_K_avx512, NULL},
    };
    const int64_t ns[] = {32, 96, 256, 576, 768, 2048}; /* odd block counts: 1, 3 */
    const int64_t nmax = 2048;
    float *w = tl_xmalloc(nmax * 4), *x = tl_xmalloc(nmax * 4);
    uint8_t *wq = tl_xmalloc(nmax * 2), *xq = tl_xmalloc(nmax * 2), *xa = tl_amalloc(nmax * 8);
    int n_cases = 0;
    for (size_t k = 0; k < sizeof ks / sizeof ks[0]; k++) {
        const tl_type t = ks[k].t, vt = tl_type_info(t)->vec_dot_type;
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
            const int64_t n = ns[j];
            if (n % tl_type_info(t)->block_size) continue;
            for (int trial = 0; trial < 3; trial++) {
                /* (a) real data: agreement with the scalar reference to float reordering */
                fill_normal(w, n, trial == 1);
                fill_normal(x, n, trial == 2);
                tl_quantize_row(t, w, wq, n);
                tl_quantize_row(vt, x, xq, n);
                const void *xin = xq;
                if (ks[k].xa_from) {
                    CHECK(tlq_xa_size(t, n) > 0 && tlq_xa_size(t, n) <= (size_t)nmax * 8);
                    ks[k].xa_from(xq, xa, n);
                    xin = xa;
                }
                double nw = 0, nx = 0;
                for (int64_t i = 0; i < n; i++) {
                    nw += (double)w[i] * w[i];
                    nx += (double)x[i] * x[i];
                }
                const float ref = tl_vec_dot_ref(t, n, wq, xq), fast = ks[k].dot(n, wq, xin);
                CHECKF(fabs((double)fast - ref) / sqrt(nw * nx) < 2e-6, "%s n=%lld avx512 %g vs ref %g", tl_type_name(t),
                       (long long)n, fast, ref);
                /* (b) every code pattern, unit scales, zero mins, small activations: all sums
                 * are integers below 2^24, so the results must be identical */
                random_blocks(t, wq, n, 1.0f, 0.0f);
                small_acts(vt, xq, n, 3);
                if (ks[k].xa_from) ks[k].xa_from(xq, xa, n);
                const float ri = tl_vec_dot_ref(t, n, wq, xq), fi = ks[k].dot(n, wq, xin);
                CHECKF(ri == fi && ri == floorf(ri), "%s n=%lld integer case: avx512 %.1f vs ref %.1f", tl_type_name(t),
                       (long long)n, fi, ri);
                n_cases++;
            }
        }
    }
    printf("  avx512: %d kernel cases agree with the scalar reference\n", n_cases);
    /* the 4-row and 2-row xa kernels give each row the one-row kernel's bits (engine/batch.c relies on it); the
     * random sequence of the checks below is left as it was */
    {
        const uint64_t rng_saved = rng_state;
        struct { tl_type t; tlq_dot_fn dot; tlq_dot4_fn dot4, dot2; void (*xa_from)(const void *, void *, int64_t); } k4[] = {
            {TL_TYPE_Q4_0, tlq_dotxa_q4_0_avx512, tlq_dotxa4_q4_0_avx512, tlq_dotxa2_q4_0_avx512, tlq_xa_from_q4_0_avx512},
            {TL_TYPE_Q4_1, tlq_dotxa_q4_1_avx512, tlq_dotxa4_q4_1_avx512, tlq_dotxa2_q4_1_avx512, tlq_xa_from_q4_1_avx512},
            {TL_TYPE_Q5_0, tlq_dotxa_q5_0_avx512, tlq_dotxa4_q5_0_avx512, tlq_dotxa2_q5_0_avx512, tlq_xa_from_q5_0_avx512},
            {TL_TYPE_Q5_1, tlq_dotxa_q5_1_avx512, tlq_dotxa4_q5_1_avx512, tlq_dotxa2_q5_1_avx512, tlq_xa_from_q5_1_avx512},
        };
        uint8_t *xa4 = tl_amalloc(4 * (size_t)nmax * 8);
        int n4 = 0;
        for (size_t k = 0; k < sizeof k4 / sizeof *k4; k++)
            for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
                const int64_t n = ns[j];
                const size_t xs = tlq_xa_size(k4[k].t, n);
                fill_normal(w, n, false);
                tl_quantize_row(k4[k].t, w, wq, n);
                for (int r = 0; r < 4; r++) {
                    fill_normal(x, n, r == 2);
                    tl_quantize_row(tl_type_info(k4[k].t)->vec_dot_type, x, xq, n);
                    k4[k].xa_from(xq, xa4 + r * xs, n);
                }
                float out[4], out2[4];
                k4[k].dot4(n, wq, xa4, xs, out);
                k4[k].dot2(n, wq, xa4 + 2 * xs, xs, out2); /* rows 2 and 3 */
                for (int r = 0; r < 4; r++) {
                    const float one = k4[k].dot(n, wq, xa4 + r * xs);
                    CHECKF(memcmp(&one, &out[r], sizeof one) == 0, "%s n=%lld row %d: 4-row %.9g vs one-row %.9g",
                           tl_type_name(k4[k].t), (long long)n, r, out[r], one);
                    if (r >= 2)
                        CHECKF(memcmp(&one, &out2[r - 2], sizeof one) == 0, "%s n=%lld row %d: 2-row %.9g vs one-row %.9g",
                               tl_type_name(k4[k].t), (long long)n, r, out2[r - 2], one);
                }
                n4++;
            }
        tl_afree(xa4);
        rng_state = rng_saved;
        printf("  avx512: the 4-row and 2-row xa kernels equal the one-row kernel bit for bit (%d cases)\n", n4);
    }
    /* matmul decode path with and without AVX-512: same results within float reordering */
    {
        tl_pool *pool = tl_pool_new(2);
        const int64_t n_in = 576, n_out = 67;
        const tl_type ts[] = {TL_TYPE_Q4_0, TL_TYPE_Q4_1, TL_TYPE_Q5_0, TL_TYPE_Q5_1, TL_TYPE_Q4_K /* 512 */};
        for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) {
            const int64_t ni = ts[k] == TL_TYPE_Q4_K ? 512 : n_in;
            const size_t rs = tl_row_size(ts[k], ni);
            uint8_t *W = tl_xmalloc(rs * n_out);
            float *X = tl_xmalloc(3 * ni * 4), *Y1 = tl_xmalloc(3 * n_out * 4), *Y2 = tl_xmalloc(3 * n_out * 4);
            float *row = tl_xmalloc(ni * 4);
            for (int64_t o = 0; o < n_out; o++) {
                fill_normal(row, ni, false);
                tl_quantize_row(ts[k], row, W + o * rs, ni);
            }
            fill_normal(X, 3 * ni, false);
            for (int64_t nt = 1; nt <= 3; nt++) {
                tl_matmul(pool, ts[k], W, ni, n_out, X, nt, Y1, n_out, NULL);
                tl_quants_disable_avx512(true);
                CHECK(!tlq_get_kernels(ts[k]).avx512);
                tl_matmul(pool, ts[k], W, ni, n_out, X, nt, Y2, n_out, NULL);
                tl_quants_disable_avx512(false);
                double worst = 0;
                for (int64_t i = 0; i < nt * n_out; i++) worst = fmax(worst, fabs((double)Y1[i] - Y2[i]) / (1 + fabs(Y2[i])));
                CHECKF(worst < 1e-5, "matmul %s n_tok %lld: avx512 vs avx2 differ by %g", tl_type_name(ts[k]),
                       (long long)nt, worst);
            }
            free(W); free(X); free(Y1); free(Y2); free(row);
        }
        tl_pool_free(pool);
    }
    free(w); free(x); free(wq); free(xq); tl_afree(xa);
}

/* ------------------------------------------------------------------ x16 GEMM kernels */
static void check_packed(tl_type t, int64_t n_in, int64_t n_out, int64_t n_x, bool raw) {
    const tl_type vt = tl_type_info(t)->vec_dot_type;
    const size_t rs = tl_row_size(t, n_in), xrs = tl_row_size(vt, n_in), xps = tlq_xp_row_bytes(t, n_in);
    uint8_t *W = tl_xmalloc(rs * n_out), *xq = tl_xmalloc(xrs * n_x), *row = tl_xmalloc(rs);
    uint8_t *xp = tl_amalloc(xps * n_x);
    float *wf = tl_xmalloc(sizeof(float) * n_in * n_out), *xf = tl_xmalloc(sizeof(float) * n_in * n_x);
    if (raw) { /* every code pattern, scales of both signs */
        for (int64_t o = 0; o < n_out; o++) random_blocks(t, W + o * rs, n_in, (o % 3 - 1) * 0.03f, 0.01f * (o % 5));
        for (int64_t i = 0; i < n_x; i++) small_acts(vt, xq + i * xrs, n_in, 127);
    } else {
        fill_normal(wf, n_in * n_out, true);
        fill_normal(xf, n_in * n_x, false);
        for (int64_t o = 0; o < n_out; o++) tl_quantize_row(t, wf + o * n_in, W + o * rs, n_in);
        for (int64_t i = 0; i < n_x; i++) tl_quantize_row(vt, xf + i * n_in, xq + i * xrs, n_in);
    }
    for (int64_t i = 0; i < n_x; i++) tlq_xp_from_q8(t, xq + i * xrs, xp + i * xps, n_in);
    tlq_packed *p = tlq_pack_alloc(t, n_in, n_out);
    CHECK(p != NULL);
    if (!p) return;
    tlq_pack_groups(p, W, 0, p->n_groups);
    int bad_rows = 0;
    for (int64_t o = 0; o < n_out; o++) {
        tlq_pack_get_row(p, o, row);
        bad_rows += memcmp(row, W + o * rs, rs) != 0;
    }
    CHECKF(bad_rows == 0, "x16 %s: %d rows not given back by tlq_pack_get_row", tl_type_name(t), bad_rows);

    const int64_t ldy = n_out + 1;
    tl_cpu_features f = tl_cpu_detect();
    const bool has2 = f.avx2 && f.fma && f.f16c;
    const bool has512 = has2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
    struct { const char *name; tlq_gemm_fn fn; bool ok; } ks[] = {
        {"scalar", tlq_gemm_ref, true}, {"avx2", tlq_gemm_avx2, has2}, {"avx512", tlq_gemm_avx512, has512},
        {"amx", tlq_gemm_amx, has512 && tlq_amx_ready()}};
    enum { NK = sizeof ks / sizeof *ks };
    float *Y[NK], *Y1 = tl_xmalloc(sizeof(float) * n_x * ldy);
    for (int k = 0; k < NK; k++) {
        Y[k] = tl_xmalloc(sizeof(float) * n_x * ldy);
        for (int64_t i = 0; i < n_x * ldy; i++) Y[k][i] = NAN;
        if (!ks[k].ok) continue;
        ks[k].fn(p, 0, p->n_groups, xp, xps, n_x, Y[k], ldy);
        CHECKF(memcmp(Y[k], Y[0], sizeof(float) * n_x * ldy) == 0 || k == 0, "x16 %s %s: bits differ from the scalar kernel",
               tl_type_name(t), ks[k].name);
        /* each row alone, groups in two calls: the same bits */
        for (int64_t i = 0; i < n_x * ldy; i++) Y1[i] = NAN;
        const int64_t gh = p->n_groups / 2;
        for (int64_t i = 0; i < n_x; i++) {
            ks[k].fn(p, 0, gh, xp + i * xps, xps, 1, Y1 + i * ldy, ldy);
            ks[k].fn(p, gh, p->n_groups, xp + i * xps, xps, 1, Y1 + i * ldy, ldy);
        }
        CHECKF(memcmp(Y1, Y[k], sizeof(float) * n_x * ldy) == 0, "x16 %s %s: one row per call differs from %lld rows",
               tl_type_name(t), ks[k].name, (long long)n_x);
    }
    double worst = 0;
    int pad = 0;
    for (int64_t i = 0; i < n_x; i++) {
        pad += !isnan(Y[0][i * ldy + n_out]);
        for (int64_t o = 0; o < n_out; o++) {
            const double ref = tl_vec_dot_ref(t, n_in, W + o * rs, xq + i * xrs);
            double nw = 0, nx = 0;
            tl_dequantize_row(t, W + o * rs, wf, n_in);
            tl_dequantize_row(vt, xq + i * xrs, xf, n_in);
            for (int64_t j = 0; j < n_in; j++) nw += (double)wf[j] * wf[j], nx += (double)xf[j] * xf[j];
            const double e = fabs(Y[0][i * ldy + o] - ref) / (sqrt(nw * nx) + 1e-30);
            if (!(e <= worst)) worst = e;
        }
    }
    CHECKF(worst < 2e-6 && pad == 0, "x16 %s %lldx%lld, %lld rows%s: %g of |w||x| from tl_vec_dot_ref, %d pad writes",
           tl_type_name(t), (long long)n_in, (long long)n_out, (long long)n_x, raw ? " (raw codes)" : "", worst, pad);
    tlq_pack_free(p);
    for (int k = 0; k < NK; k++) free(Y[k]);
    free(Y1), free(W), free(xq), free(row), free(wf), free(xf);
    tl_afree(xp);
}

/* tl_matmul_w over a pack slot: decode rows, and prompt rows with TL_MM_Q8, against f64 */
static void check_matmul_w(tl_pool *pool, tl_type t, int64_t n_in, int64_t n_out, int64_t n_tok, unsigned flags) {
    const size_t rs = tl_row_size(t, n_in);
    float *Wf = tl_xmalloc(sizeof(float) * n_out * n_in), *X = tl_xmalloc(sizeof(float) * n_tok * n_in);
    uint8_t *W = tl_xmalloc(n_out * rs);
    const int64_t ldy = n_out + 3;
    float *Y = tl_xmalloc(sizeof(float) * n_tok * ldy), *Y2 = tl_xmalloc(sizeof(float) * n_tok * ldy);
    float *row = tl_xmalloc(sizeof(float) * n_in);
    fill_normal(Wf, n_out * n_in, false);
    fill_normal(X, n_tok * n_in, false);
    for (int64_t o = 0; o < n_out; o++) tl_quantize_row(t, Wf + o * n_in, W + o * rs, n_in);
    for (int64_t i = 0; i < n_tok * ldy; i++) Y[i] = Y2[i] = NAN;
    tl_wpack *pk = tl_wpack_new(false);
    tl_matmul_w(pool, pk, t, W, n_in, n_out, X, n_tok, Y, ldy, NULL, flags);
    CHECKF(tl_wpack_bytes(pk) > 0 || !tlq_gemm_kernel(t), "%s: no packed copy made", tl_type_name(t));
    /* row by row: the same bits (a sequence's rows do not depend on what shares the call) */
    for (int64_t tk = 0; tk < n_tok; tk++)
        tl_matmul_w(pool, pk, t, W, n_in, n_out, X + tk * n_in, 1, Y2 + tk * ldy, ldy, NULL, flags);
    CHECKF(memcmp(Y, Y2, sizeof(float) * n_tok * ldy) == 0 || !(flags & TL_MM_Q8 || n_tok < 32),
           "tl_matmul_w %s: %lld rows at once differ from one at a time", tl_type_name(t), (long long)n_tok);
    double worst = 0;
    for (int64_t o = 0; o < n_out; o++) {
        tl_get_row(t, W, n_in, o, row);
        for (int64_t tk = 0; tk < n_tok; tk++) {
            double exact = 0, nw = 0, nx = 0;
            for (int64_t i = 0; i < n_in; i++) {
                exact += (double)row[i] * X[tk * n_in + i];
                nw += (double)row[i] * row[i];
                nx += (double)X[tk * n_in + i] * X[tk * n_in + i];
            }
            const double e = fabs(Y[tk * ldy + o] - exact) / sqrt(nw * nx);
            if (!(e <= worst)) worst = e;
        }
    }
    CHECKF(worst < 0.012, "tl_matmul_w %s %lldx%lld tok %lld flags %u: err %g", tl_type_name(t), (long long)n_in,
           (long long)n_out, (long long)n_tok, flags, worst);
    tl_wpack_free(pk);
    free(Wf), free(X), free(W), free(Y), free(Y2), free(row);
}

/* the AVX-512 row builder straight from floats: the bytes of the reference quantizer's blocks */
static void check_xp_quantize(void) {
    tl_cpu_features f = tl_cpu_detect();
    if (!(f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni)) return;
    const int64_t n = 1024;
    float *x = tl_xmalloc(sizeof(float) * n);
    uint8_t *q = tl_xmalloc(tl_row_size(TL_TYPE_Q8_1, n) + tl_row_size(TL_TYPE_Q8_K, n));
    const size_t xs = TL_MAX(tlq_xp_row_bytes(TL_TYPE_Q4_1, n), tlq_xp_row_bytes(TL_TYPE_Q4_K, n));
    uint8_t *a = tl_amalloc(xs), *b = tl_amalloc(xs);
    int bad = 0;
    for (int trial = 0; trial < 8; trial++) {
        fill_normal(x, n, trial & 1);
        if (trial == 2) for (int64_t i = 0; i < n; i++) x[i] = (float)(i % 32) + 0.5f - 16; /* ties at .5 */
        if (trial == 3) for (int64_t i = 0; i < n; i++) x[i] = i % 32 == 31 ? 127.0f : (float)(i % 127) - 63.5f;
        if (trial == 4) for (int64_t i = 0; i < n; i++) x[i] = i < 300 ? 0.0f : x[i] * 1e-6f; /* zero blocks, tiny */
        if (trial == 5) for (int64_t i = 0; i < n; i++) x[i] = (i % 7 == 0 ? -1.0f : 1.0f) * 3e4f; /* s overflows fp16 */
        const tl_type fams[2][2] = {{TL_TYPE_Q4_1, TL_TYPE_Q8_1}, {TL_TYPE_Q6_K, TL_TYPE_Q8_K}};
        for (int k = 0; k < 2; k++) {
            memset(a, 0, xs), memset(b, 0, xs);
            tl_quantize_row(fams[k][1], x, q, n);
            tlq_xp_from_q8(fams[k][0], q, a, n);
            tlq_xp_quantize_avx512(fams[k][0], x, b, n);
            bad += memcmp(a, b, tlq_xp_row_bytes(fams[k][0], n)) != 0;
        }
    }
    CHECKF(bad == 0, "x16 activation rows straight from floats: %d of 16 differ from the reference quantizer's", bad);
    free(x), free(q);
    tl_afree(a), tl_afree(b);
}

static void test_packed(void) {
    check_xp_quantize();
    const tl_type ts[] = {TL_TYPE_Q4_0, TL_TYPE_Q4_1, TL_TYPE_Q8_0, TL_TYPE_Q4_K, TL_TYPE_Q6_K};
    tl_pool *pool = tl_pool_new(2);
    for (int k = 0; k < 5; k++) {
        const tl_type t = ts[k];
        const bool kq = tl_type_info(t)->block_size == QKK;
        const int64_t n_in = kq ? 768 : 224;
        CHECK(tlq_pack_supported(t, n_in) && !tlq_pack_supported(t, n_in + (kq ? 32 : 16)));
        const int64_t nx[] = {1, 2, 5, 9, 13, 16, 35};
        for (int j = 0; j < 7; j++) check_packed(t, n_in, 37, nx[j], false);
        check_packed(t, n_in, 40, 48, true);
        check_packed(t, n_in, 16, 3, true);
        check_packed(t, n_in, 53, 6, true);
        const int64_t toks[] = {1, 4, 31, 40};
        for (int j = 0; j < 4; j++) check_matmul_w(pool, t, n_in, 45, toks[j], toks[j] >= 32 ? TL_MM_Q8 : 0);
        check_matmul_w(pool, t, n_in, 45, 40, 0); /* f32 tiles widened from the packed copy */
        check_matmul_w(NULL, t, n_in, 45, 3, 0);
    }
    CHECK(!tlq_pack_supported(TL_TYPE_Q5_0, 64) && !tlq_pack_supported(TL_TYPE_F16, 64));
    tl_pool_free(pool);
    printf("  x16 kernels: scalar / avx2 / avx512%s bit for bit over q4_0 q4_1 q8_0 q4_K q6_K\n",
           tlq_amx_ready() ? " / amx" : " (no AMX on this CPU: its kernel not run)");
}

int main(void) {
    test_traits();
    test_known_blocks();
    test_golden();
    test_round_trip();
    test_dots();
    test_matmul();
    test_avx512();
    test_packed();
    return tl_test_done();
}
