/* Dense KV stores: attention output vs a naive double-precision reference (causal, GQA,
 * sliding window, key splits for long decode, soft-capped scores), across chunkings, for f32/f16/bf16; byte
 * counts. Tolerances: f32 store 1e-5 (summation order only); f16 3e-3 and bf16 2e-2 relative
 * to the output scale (storage rounding of K and V: 2^-11 and 2^-8 relative). */
#include "../testutil.h"
#include "../../src/kv/kv.h"
#include "../../src/cpu/vec.h"

#include <math.h>
#include <stdlib.h>

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return ((float)((*s >> 40) & 0xffffff) / 16777216.0f) * 2.0f - 1.0f;
}

/* out for query i (absolute position p = i) over keys 0..p (window W) */
static void ref_attention(const tl_kv_shape *s, int n, const float *q, const float *k, const float *v, float *out) {
    const int G = s->n_head / s->n_head_kv, dk = s->head_dim_k, dv = s->head_dim_v;
    double *sc = malloc(sizeof(double) * n);
    for (int i = 0; i < n; i++)
        for (int h = 0; h < s->n_head; h++) {
            const int hk = h / G;
            const int lo = s->window > 0 ? (i - s->window + 1 > 0 ? i - s->window + 1 : 0) : 0;
            double mx = -1e300;
            for (int t = lo; t <= i; t++) {
                double d = 0;
                for (int c = 0; c < dk; c++)
                    d += (double)q[((size_t)i * s->n_head + h) * dk + c] * k[((size_t)t * s->n_head_kv + hk) * dk + c];
                sc[t] = d * s->scale;
                if (s->softcap > 0) sc[t] = s->softcap * tanh(sc[t] / s->softcap);
                if (sc[t] > mx) mx = sc[t];
            }
            double sum = 0;
            for (int t = lo; t <= i; t++) sum += sc[t] = exp(sc[t] - mx);
            for (int c = 0; c < dv; c++) {
                double a = 0;
                for (int t = lo; t <= i; t++) a += sc[t] * v[((size_t)t * s->n_head_kv + hk) * dv + c];
                out[((size_t)i * s->n_head + h) * dv + c] = (float)(a / sum);
            }
        }
    free(sc);
}

static void run_case(tl_kv_kind kind, tl_kv_shape sh, int n, const int *chunks, int n_chunks, float tol, tl_pool *pool) {
    uint64_t seed = 1234 + (uint64_t)n;
    const size_t qn = (size_t)n * sh.n_head * sh.head_dim_k, kn = (size_t)n * sh.n_head_kv * sh.head_dim_k;
    const size_t vn = (size_t)n * sh.n_head_kv * sh.head_dim_v, on = (size_t)n * sh.n_head * sh.head_dim_v;
    float *q = malloc(qn * 4), *k = malloc(kn * 4), *v = malloc(vn * 4), *ref = malloc(on * 4), *out = malloc(on * 4);
    for (size_t i = 0; i < qn; i++) q[i] = 2.0f * frand(&seed);
    for (size_t i = 0; i < kn; i++) k[i] = 2.0f * frand(&seed);
    for (size_t i = 0; i < vn; i++) v[i] = frand(&seed);
    ref_attention(&sh, n, q, k, v, ref);
    tl_error err;
    tl_kv_layer *l = tl_kv_dense_new(kind, &sh, &err);
    CHECKF(l != NULL, "%s", err.msg);
    if (!l) return;
    int pos = 0, ci = 0;
    while (pos < n) {
        int c = chunks[ci++ % n_chunks];
        if (c > n - pos) c = n - pos;
        CHECK(tl_kv_forward(l, pool, c, q + (size_t)pos * sh.n_head * sh.head_dim_k, k + (size_t)pos * sh.n_head_kv * sh.head_dim_k,
                            v + (size_t)pos * sh.n_head_kv * sh.head_dim_v, out + (size_t)pos * sh.n_head * sh.head_dim_v, &err) == 0);
        pos += c;
    }
    float md = 0;
    for (size_t i = 0; i < on; i++) md = fmaxf(md, fabsf(out[i] - ref[i]));
    CHECKF(md < tol, "kind %d heads %d/%d d %d window %d softcap %g n %d chunk0 %d: max diff %g (tol %g)", kind, sh.n_head,
           sh.n_head_kv, sh.head_dim_k, sh.window, sh.softcap, n, chunks[0], md, tol);
    tl_kv_bytes b;
    l->ops->bytes(l, &b);
    const int held = sh.window > 0 ? (n < sh.window ? n : sh.window) : n;
    const int elt = kind == TL_KV_F32 ? 4 : 2;
    CHECK(b.codes == (uint64_t)held * sh.n_head_kv * (sh.head_dim_k + sh.head_dim_v) * elt);
    CHECK(l->n_tokens == n);
    tl_kv_clear(l);
    CHECK(l->n_tokens == 0);
    tl_kv_destroy(l);
    free(q), free(k), free(v), free(ref), free(out);
}

int main(void) {
    tl_pool *pool = tl_pool_new(2);
    const int whole[] = {100000}, ones[] = {1}, mixed[] = {7, 1, 64, 3};
    tl_kv_shape llama = {.n_head = 8, .n_head_kv = 2, .head_dim_k = 64, .head_dim_v = 64, .n_ctx = 2048, .window = 0, .scale = 0.125f};
    tl_kv_shape smol = {.n_head = 9, .n_head_kv = 3, .head_dim_k = 64, .head_dim_v = 64, .n_ctx = 2048, .window = 0, .scale = 0.125f};
    tl_kv_shape gem = {.n_head = 4, .n_head_kv = 1, .head_dim_k = 256, .head_dim_v = 256, .n_ctx = 2048, .window = 37, .scale = 0.0625f};
    tl_kv_shape odd = {.n_head = 3, .n_head_kv = 3, .head_dim_k = 24, .head_dim_v = 40, .n_ctx = 600, .window = 0, .scale = 0.2f};
    /* gemma2: scores soft-capped (here about 1.3 before the cap of 1, so tanh's curve matters) */
    tl_kv_shape gem2 = gem, capped = llama;
    gem2.softcap = 1.0f;
    capped.softcap = 2.0f;
    const tl_kv_kind kinds[] = {TL_KV_F32, TL_KV_F16, TL_KV_BF16};
    const float tols[] = {2e-5f, 3e-3f, 2e-2f};
    for (int ki = 0; ki < 3; ki++) {
        run_case(kinds[ki], llama, 300, whole, 1, tols[ki], pool);
        run_case(kinds[ki], llama, 300, mixed, 4, tols[ki], pool);
        run_case(kinds[ki], smol, 1500, mixed, 4, tols[ki], pool); /* long enough for key splits on decode */
        run_case(kinds[ki], gem, 200, mixed, 4, tols[ki], pool);
        run_case(kinds[ki], gem, 120, ones, 1, tols[ki], pool);
        run_case(kinds[ki], odd, 500, mixed, 4, tols[ki], pool);
        run_case(kinds[ki], gem2, 200, mixed, 4, tols[ki], pool);
        run_case(kinds[ki], capped, 1500, mixed, 4, tols[ki], pool); /* key splits on decode */
    }
    /* capacity: one token past n_ctx is an error, not a crash */
    {
        tl_kv_shape sh = llama;
        sh.n_ctx = 4;
        tl_error err;
        tl_kv_layer *l = tl_kv_dense_new(TL_KV_F16, &sh, &err);
        float q[8 * 64 * 5] = {0}, kv[2 * 64 * 5] = {0}, o[8 * 64 * 5];
        CHECK(tl_kv_forward(l, pool, 4, q, kv, kv, o, &err) == 0);
        CHECK(tl_kv_forward(l, pool, 1, q, kv, kv, o, &err) != 0);
        CHECK(strstr(err.msg, "KV cache full") != NULL);
        tl_kv_destroy(l);
    }
    /* truncate: cutting back and re-appending the same tokens gives the same outputs; a
     * window store refuses once the window has moved past the cut */
    {
        tl_kv_shape sh = llama;
        tl_error err;
        const int n = 40, qd = sh.n_head * sh.head_dim_k, kd = sh.n_head_kv * sh.head_dim_k;
        float *q = calloc((size_t)n * qd, 4), *k = calloc((size_t)n * kd, 4), *o1 = calloc((size_t)n * qd, 4),
              *o2 = calloc((size_t)n * qd, 4);
        uint64_t seed = 99;
        for (int i = 0; i < n * qd; i++) q[i] = frand(&seed);
        for (int i = 0; i < n * kd; i++) k[i] = frand(&seed);
        tl_kv_layer *l = tl_kv_dense_new(TL_KV_F32, &sh, &err);
        CHECK(tl_kv_forward(l, pool, 30, q, k, k, o1, &err) == 0);
        CHECK(tl_kv_forward(l, pool, 10, q + 30 * qd, k + 30 * kd, k + 30 * kd, o1 + 30 * qd, &err) == 0);
        CHECK(l->ops->truncate(l, 30, false, &err) == 0 && l->n_tokens == 30);
        CHECK(tl_kv_forward(l, pool, 10, q + 30 * qd, k + 30 * kd, k + 30 * kd, o2 + 30 * qd, &err) == 0);
        CHECK(!memcmp(o1 + 30 * qd, o2 + 30 * qd, sizeof(float) * 10 * qd));
        CHECK(l->ops->truncate(l, 41, true, &err) != 0);
        tl_kv_destroy(l);
        sh.window = 16;
        l = tl_kv_dense_new(TL_KV_F32, &sh, &err);
        CHECK(tl_kv_forward(l, pool, 12, q, k, k, o1, &err) == 0);
        CHECK(l->ops->truncate(l, 5, true, &err) == 0); /* nothing overwritten yet */
        CHECK(tl_kv_forward(l, pool, 10, q + 12 * qd, k + 12 * kd, k + 12 * kd, o1, &err) == 0);
        CHECK(l->ops->truncate(l, 5, true, &err) != 0 && strstr(err.msg, "sliding window"));
        tl_kv_destroy(l);
        free(q), free(k), free(o1), free(o2);
    }
    tl_pool_free(pool);
    return tl_test_done();
}
