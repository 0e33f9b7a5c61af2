/* cpu/vec.h primitives: the AVX2 versions against the scalar references on random data, including
 * lengths that are not multiples of the vector width. exp: relative error < 1e-6 vs expf. */
#include "../testutil.h"
#include "../../src/cpu/vec.h"
#include "../../src/base/common.h"

#include <math.h>
#include <stdlib.h>

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return ((float)((*s >> 40) & 0xffffff) / 16777216.0f) * 2.0f - 1.0f;
}

static float rel(float a, float b) { return fabsf(a - b) / fmaxf(1e-6f, fmaxf(fabsf(a), fabsf(b))); }

int main(void) {
    const tl_vec_ops *r = tl_vec_ref(), *f = tl_vec_get();
    printf("vec ops: %s\n", f->name);
    uint64_t seed = 7;
    const int sizes[] = {1, 7, 8, 31, 64, 100, 256, 1000};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        const int n = sizes[si];
        /* at least 64 values: `a` also serves as a query of head size 64 below */
        const int na = n * 4 > 64 ? n * 4 : 64;
        float *a = malloc(na * 4), *b = malloc(na * 4), *c1 = malloc(na * 4), *c2 = malloc(na * 4);
        for (int i = 0; i < na; i++) a[i] = 4 * frand(&seed), b[i] = 4 * frand(&seed);
        CHECK(rel(r->dot(a, b, n), f->dot(a, b, n)) < 1e-4f || fabsf(r->dot(a, b, n) - f->dot(a, b, n)) < 1e-4f);
        CHECK(rel(r->sumsq(a, n), f->sumsq(a, n)) < 1e-5f);
        CHECK(r->max(a, n) == f->max(a, n));
        memcpy(c1, a, n * 4), memcpy(c2, a, n * 4);
        float s1 = r->exp_sub_sum(c1, n, 1.0f), s2 = f->exp_sub_sum(c2, n, 1.0f);
        CHECK(rel(s1, s2) < 1e-6f);
        float me = 0;
        for (int i = 0; i < n; i++) me = fmaxf(me, rel(c1[i], c2[i]));
        CHECKF(me < 1e-6f, "exp rel err %g", me);
        r->swiglu(c1, a, b, n), f->swiglu(c2, a, b, n);
        me = 0;
        for (int i = 0; i < n; i++) me = fmaxf(me, fabsf(c1[i] - c2[i]));
        CHECKF(me < 1e-5f, "swiglu %g", me);
        r->geglu(c1, a, b, n), f->geglu(c2, a, b, n);
        me = 0;
        for (int i = 0; i < n; i++) me = fmaxf(me, fabsf(c1[i] - c2[i]));
        CHECKF(me < 1e-5f, "geglu %g", me);
        /* scores over a transposed tile and p.V accumulation */
        const int d = 64, t = n < 64 ? n : 64;
        float *kt = malloc(sizeof(float) * d * t), *s1v = malloc(4 * t), *s2v = malloc(4 * t);
        for (int i = 0; i < d * t; i++) kt[i] = frand(&seed);
        r->scores_t(a, kt, d, t, s1v), f->scores_t(a, kt, d, t, s2v);
        me = 0;
        for (int i = 0; i < t; i++) me = fmaxf(me, fabsf(s1v[i] - s2v[i]));
        CHECKF(me < 1e-4f, "scores %g", me);
        float acc1[64] = {0}, acc2[64] = {0};
        r->acc_pv(s1v, kt, t, d, acc1), f->acc_pv(s1v, kt, t, d, acc2);
        me = 0;
        for (int i = 0; i < d; i++) me = fmaxf(me, fabsf(acc1[i] - acc2[i]));
        CHECKF(me < 1e-4f, "acc_pv %g", me);
        /* f16 round trip */
        uint16_t *h1 = malloc(n * 2), *h2 = malloc(n * 2);
        r->f32_to_f16(a, h1, n), f->f32_to_f16(a, h2, n);
        CHECK(!memcmp(h1, h2, n * 2));
        r->f16_to_f32(h1, c1, n), f->f16_to_f32(h1, c2, n);
        CHECK(!memcmp(c1, c2, n * 4));
        free(a), free(b), free(c1), free(c2), free(kt), free(s1v), free(s2v), free(h1), free(h2);
    }
    /* fp16 conversion: exhaustive over all halves (round trip exact for finite values) */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float x = tl_fp16_to_fp32((uint16_t)h);
        if (x == x && tl_fp32_to_fp16(x) != h) bad++;
    }
    CHECKF(bad == 0, "%d halves do not round trip", bad);
    CHECK(tl_fp32_to_fp16(65520.0f) == 0x7c00);
    CHECK(tl_fp32_to_fp16(1e-8f) == 0);
    CHECK(tl_fp32_to_fp16(5.96046448e-8f) == 1);
    return tl_test_done();
}
