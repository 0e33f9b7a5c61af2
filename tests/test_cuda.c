/* The CUDA backend against the CPU forward pass (the reference: session.c, verified against
 * goldens). SKIPs (exit 0) when the build has no CUDA or no GPU is present (CI).
 *  - synthetic f32 fixtures (llama tied/untied, llama3 rope factors, qwen2 biases, gemma3
 *    sliding window + norms): f32 KV on both, prefill in chunks (history + causal block),
 *    then single-token decode (matrix-vector path, split attention): logits within 1e-3 of
 *    the CPU's (f32 everywhere; summation order differs). Also f16 KV, and every-row logits.
 *  - with TL_CUDA_MODEL (a synth with head_dim 64, e.g. `tailor synth --shape smollm2-135m
 *    --layers 2 --type f32`): quantized KV (k8v8, k4v4, k2v2, KIVI) on GPU vs the same policy
 *    on the CPU, relative L2 error of the logits; codes are computed by the same rules from
 *    inputs equal up to rounding, so only codes at rounding boundaries may differ. */
#include "testutil.h"
#include "../src/session.h"
#include "../src/kv/policy.h"
#include "../src/cuda/cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static tl_session *make(tl_model *m, const char *kv, int n_ctx, int chunk, const char *device) {
    tl_error err;
    tl_kv_plan plan = {0};
    if (tl_kv_plan_parse(&plan, kv, NULL, m->cfg.n_layer, &err)) {
        fprintf(stderr, "plan %s: %s\n", kv, err.msg);
        return NULL;
    }
    tl_session *s = tl_session_new_on(m, n_ctx, 2, chunk, plan.layers, device, &err);
    tl_kv_plan_free(&plan);
    if (!s) fprintf(stderr, "session (%s, %s): %s\n", device ? device : "cpu", kv, err.msg);
    return s;
}

typedef struct {
    double max_abs, rel_l2;
    int argmax_agree, rows;
} cmp_stats;

static void cmp(const float *a, const float *b, int n, cmp_stats *st) {
    double num = 0, den = 0;
    int ia = 0, ib = 0;
    for (int i = 0; i < n; i++) {
        const double d = (double)a[i] - b[i];
        if (!(fabs(d) <= st->max_abs)) st->max_abs = fabs(d); /* NaN sticks */
        num += d * d;
        den += (double)b[i] * b[i];
        if (a[i] > a[ia]) ia = i;
        if (b[i] > b[ib]) ib = i;
    }
    const double r = sqrt(num / (den > 0 ? den : 1));
    if (!(r <= st->rel_l2)) st->rel_l2 = r;
    st->argmax_agree += ia == ib;
    st->rows++;
}

/* Prefill n_prompt tokens (chunk `chunk`), then n_gen single tokens; compare the last-token
 * logits of the prefill and of every decode step (and all rows of the prefill when all). */
static cmp_stats run_pair(tl_model *m, const char *kv, int n_prompt, int n_gen, int chunk, bool all) {
    cmp_stats st = {0};
    const int V = m->cfg.n_vocab, n_ctx = n_prompt + n_gen + 8;
    tl_session *c = make(m, kv, n_ctx, chunk, "cpu"), *g = make(m, kv, n_ctx, chunk, "cuda");
    CHECKF(c && g, "sessions for %s", kv);
    if (!c || !g) {
        tl_session_free(c);
        tl_session_free(g);
        st.max_abs = st.rel_l2 = INFINITY;
        return st;
    }
    int32_t *tok = malloc(sizeof(int32_t) * (n_prompt + n_gen));
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < n_prompt + n_gen; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        tok[i] = (int32_t)(x % (uint64_t)V);
    }
    const int rows = all ? n_prompt : 1;
    float *lc = malloc(sizeof(float) * (size_t)rows * V), *lg = malloc(sizeof(float) * (size_t)rows * V);
    tl_error err;
    for (size_t i = 0; i < (size_t)rows * V; i++) lg[i] = NAN; /* poison: every logit must be written */
    int rc = tl_session_eval(c, tok, n_prompt, lc, all, &err);
    CHECKF(rc == 0, "cpu eval %s: %s", kv, err.msg);
    rc = tl_session_eval(g, tok, n_prompt, lg, all, &err);
    CHECKF(rc == 0, "gpu eval %s: %s", kv, err.msg);
    for (int r = 0; r < rows; r++) cmp(lg + (size_t)r * V, lc + (size_t)r * V, V, &st);
    for (int i = 0; i < n_gen && !rc; i++) {
        rc = tl_session_eval(c, tok + n_prompt + i, 1, lc, false, &err) || tl_session_eval(g, tok + n_prompt + i, 1, lg, false, &err);
        CHECKF(rc == 0, "decode %s step %d: %s", kv, i, err.msg);
        cmp(lg, lc, V, &st);
    }
    CHECK(tl_session_n_past(g) == n_prompt + n_gen);
    tl_session_mem mc, mg;
    tl_session_memory(c, &mc);
    tl_session_memory(g, &mg);
    CHECKF(mc.kv == mg.kv, "%s: KV bytes held cpu %llu gpu %llu", kv, (unsigned long long)mc.kv, (unsigned long long)mg.kv);
    free(lc);
    free(lg);
    free(tok);
    tl_session_free(c);
    tl_session_free(g);
    return st;
}

static void fixtures(void) {
    const char *names[] = {"synth_llama_tied.gguf", "synth_llama_untied.gguf", "synth_llama3_ropescale.gguf", "synth_qwen2.gguf",
                           "synth_gemma3.gguf"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const char *path = tl_test_fixture(names[i]);
        if (!tl_test_have(path)) continue;
        tl_error err;
        tl_model *m = tl_model_load(path, &err);
        CHECKF(m != NULL, "%s: %s", path, err.msg);
        if (!m) continue;
        const char *kvs[] = {"f32", "f16"};
        for (int k = 0; k < 2; k++) {
            cmp_stats a = run_pair(m, kvs[k], 40, 8, 16, false);
            printf("%-28s kv %-4s prefill 40 (chunk 16) + 8 decode: max|diff| %.3g rel %.3g argmax %d/%d\n", names[i], kvs[k],
                   a.max_abs, a.rel_l2, a.argmax_agree, a.rows);
            CHECKF(a.max_abs < 1e-3, "%s kv %s: max |logit diff| %g", names[i], kvs[k], a.max_abs);
        }
        cmp_stats b = run_pair(m, "f32", 37, 0, 64, true);
        printf("%-28s kv f32  all-row logits (37 tokens, one chunk): max|diff| %.3g\n", names[i], b.max_abs);
        CHECKF(b.max_abs < 1e-3, "%s all rows: max |logit diff| %g", names[i], b.max_abs);
        tl_model_free(m);
    }
}

static void quantized(const char *path) {
    tl_error err;
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s: %s", path, err.msg);
    if (!m) return;
    struct {
        const char *kv;
        double tol;
    } cases[] = {{"f16", 2e-3},       {"k8v8", 1e-2},          {"k4v4", 3e-2},          {"k2v2", 8e-2},
                 {"k2v2:kivi", 8e-2}, {"k4v2:kivi:r64", 8e-2}, {"k4v4:g64:sym", 3e-2}, {"k16v4:r32", 3e-2}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cmp_stats a = run_pair(m, cases[i].kv, 700, 6, 128, false);
        printf("TL_CUDA_MODEL kv %-14s prefill 700 (chunk 128) + 6 decode: max|diff| %.3g rel %.3g argmax %d/%d\n", cases[i].kv,
               a.max_abs, a.rel_l2, a.argmax_agree, a.rows);
        CHECKF(a.rel_l2 < cases[i].tol, "kv %s: relative L2 logit error %g (tol %g)", cases[i].kv, a.rel_l2, cases[i].tol);
    }
    tl_model_free(m);
}

int main(void) {
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) {
        printf("SKIP: %s\n", why);
        return 0;
    }
    fixtures();
    const char *qm = getenv("TL_CUDA_MODEL");
    if (qm && *qm) quantized(qm);
    else printf("TL_CUDA_MODEL not set: quantized-KV comparison skipped\n");
    return tl_test_done();
}
