/* TailorKV calibration (src/engine/calibrate.c):
 *  - the row score 1 - (top-k softmax mass) on patterns with a closed-form answer;
 *  - the probe on a synthetic attention pattern: one head attends uniformly (score
 *    1 - ceil(0.05 n)/n per row), the other puts all its mass on one key (score ~0), GQA sharing
 *    one KV head, the last n_q rows of a chunked prefill; the wrapped store's output unchanged;
 *  - a sliding-window layer scores only its window;
 *  - on the test model (skipped if absent): scores in [0, 1], deterministic, plan JSON written
 *    from them reads back to the same decisions;
 *  - auto:B key layouts (engine/calibrate_keys.c) on the test model: every layer resolved to a
 *    quantized candidate within 10% of the best measured, per-token chosen when it is best,
 *    the GPU set limited to per-token/per-channel, deterministic, the JSON plan reads back
 *    to the same policies, and a session made with auto:4 holds those stores. */
#include "../testutil.h"
#include "../../src/engine/calibrate.h"
#include "../../src/kv/tailor_plan.h"
#include "../../include/tailor.h"

#include <math.h>
#include <stdlib.h>

static double uniform_score(int n, double top) {
    int k = (int)ceil(top * n - 1e-9);
    k = k < 1 ? 1 : k;
    return 1.0 - (double)k / n;
}

static void test_row_score(void) {
    float lg[1000], scr[1000];
    for (int i = 0; i < 1000; i++) lg[i] = 0.0f;
    CHECK(fabs(tl_calib_row_score(lg, 100, 0.05, scr) - 0.95) < 1e-6);
    CHECK(fabs(tl_calib_row_score(lg, 10, 0.05, scr) - 0.9) < 1e-6);    /* k = ceil(0.5) = 1 */
    CHECK(fabs(tl_calib_row_score(lg, 1000, 0.05, scr) - 0.95) < 1e-6); /* k = 50 */
    CHECK(fabs(tl_calib_row_score(lg, 1, 0.05, scr)) < 1e-9);
    /* two levels: 5 keys with weight e^2, 95 with weight 1 (n = 100, k = 5): outside = 95/(5e^2+95) */
    for (int i = 0; i < 100; i++) lg[i] = (i % 20 == 7) ? 2.0f : 0.0f;
    const double e2 = exp(2.0);
    CHECK(fabs(tl_calib_row_score(lg, 100, 0.05, scr) - 95.0 / (5 * e2 + 95)) < 1e-6);
    /* top = 0.1: k = 10, five high + five low inside */
    CHECK(fabs(tl_calib_row_score(lg, 100, 0.1, scr) - 90.0 / (5 * e2 + 95)) < 1e-6);
    lg[3] = 60.0f;
    CHECK(tl_calib_row_score(lg, 100, 0.05, scr) < 1e-20);
}

static void test_probe(int window) {
    tl_pool *pool = tl_pool_new(2);
    const int n = 300, n_q = 32, dk = 8;
    tl_kv_shape sh = {.n_head = 2, .n_head_kv = 1, .head_dim_k = dk, .head_dim_v = dk, .n_ctx = n, .window = window, .scale = 1.0f};
    tl_error err;
    tl_kv_layer *inner = tl_kv_dense_new(TL_KV_F32, &sh, &err);
    tl_kv_layer *ref = tl_kv_dense_new(TL_KV_F32, &sh, &err);
    tl_kv_layer *p = tl_calib_probe_new(inner, n - n_q, 0.05, &err);
    CHECKF(p != NULL, "%s", err.msg);
    if (!p) return;
    float *q = calloc((size_t)n * 2 * dk, 4), *k = calloc((size_t)n * dk, 4), *v = calloc((size_t)n * dk, 4);
    uint64_t s = 11;
    for (int t = 0; t < n; t++) {
        /* head 0: query 0 -> uniform; head 1: query 60 * e0 and keys with e0 = 1 at positions
         * that are multiples of 7 (0 elsewhere) -> all the mass spread evenly over those keys */
        q[((size_t)t * 2 + 1) * dk + 0] = 60.0f;
        k[(size_t)t * dk + 0] = (t % 7 == 0) ? 1.0f : 0.0f;
        for (int c = 1; c < dk; c++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            k[(size_t)t * dk + c] = (float)((s >> 40) & 0xffff) / 65536.0f;
            v[(size_t)t * dk + c] = (float)((s >> 20) & 0xffff) / 65536.0f;
        }
    }
    float *o1 = malloc(sizeof(float) * n * 2 * dk), *o2 = malloc(sizeof(float) * n * 2 * dk);
    const int chunks[] = {100, 50, 7, 143};
    double maxd = 0;
    for (int pos = 0, ci = 0; pos < n; ci++) {
        const int c = TL_MIN(chunks[ci % 4], n - pos);
        CHECK(tl_kv_forward(p, pool, c, q + (size_t)pos * 2 * dk, k + (size_t)pos * dk, v + (size_t)pos * dk, o1, &err) == 0);
        tl_kv_forward(ref, pool, c, q + (size_t)pos * 2 * dk, k + (size_t)pos * dk, v + (size_t)pos * dk, o2, &err);
        for (int i = 0; i < c * 2 * dk; i++) maxd = fmax(maxd, fabs(o1[i] - o2[i]));
        pos += c;
    }
    CHECKF(maxd == 0.0, "probe changed the attention output by %g", maxd);
    /* expected: head 0 uniform over the visible keys; head 1: the mass sits evenly on the m keys
     * with e0 = 1 (up to e^-60): score 0 if m <= k, else 1 - k/m (the top k hold k of them) */
    double want = 0;
    int rows = 0;
    for (int pos = n - n_q; pos < n; pos++) {
        const int lo = window > 0 ? TL_MAX(0, pos - window + 1) : 0, nv = pos - lo + 1;
        want += uniform_score(nv, 0.05);
        int m = 0, kk = (int)ceil(0.05 * nv - 1e-9);
        for (int t = lo; t <= pos; t++) m += t % 7 == 0;
        want += m > kk ? 1.0 - (double)kk / m : 0.0;
        rows += 2;
    }
    want /= rows;
    int64_t count;
    const double got = tl_calib_probe_score(p, &count);
    CHECKF(count == rows && fabs(got - want) < 1e-6, "window %d: probe score %.6f (%lld rows), expected %.6f (%d rows)",
           window, got, (long long)count, want, rows);
    free(q);
    free(k);
    free(v);
    free(o1);
    free(o2);
    tl_kv_destroy(p);
    tl_kv_destroy(ref);
    tl_pool_free(pool);
}

static void test_model(void) {
    const char *path = tl_test_shared("models/tailor-test-31m.gguf");
    const char *text_path = tl_test_shared("data/pg_essays/founders.txt");
    if (!tl_test_have(path) || !tl_test_have(text_path)) return;
    tl_error err;
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    size_t len;
    char *text = tl_test_read_file(text_path, &len);
    int32_t *ids = malloc(sizeof(int32_t) * (len + 8));
    size_t n_ids = 0;
    CHECK(tl_tokenize(m->tok, text, len, true, true, ids, len + 8, &n_ids, &err) == 0);
    const int n = (int)TL_MIN(n_ids, (size_t)600), L = m->cfg.n_layer;
    double *s1 = calloc(L, sizeof(double)), *s2 = calloc(L, sizeof(double));
    bool *win = calloc(L, sizeof(bool));
    tl_calib_params cp = {.n_q = 32, .top = 0.05, .n_threads = 2, .chunk = 128};
    CHECKF(tl_calibrate(m, ids, n, &cp, s1, win, &err) == 0, "%s", err.msg);
    cp.chunk = 256; /* chunking does not change the scores (f32 store, same keys) */
    CHECKF(tl_calibrate(m, ids, n, &cp, s2, win, &err) == 0, "%s", err.msg);
    int *kinds = calloc(L, sizeof(int)), *back = calloc(L, sizeof(int));
    for (int i = 0; i < L; i++) {
        CHECKF(s1[i] >= 0 && s1[i] <= 1 && fabs(s1[i] - s2[i]) < 1e-4, "layer %d: %g vs %g", i, s1[i], s2[i]);
        kinds[i] = s1[i] > 0.2 ? TL_TAILOR_DENSE : TL_TAILOR_SPARSE;
        printf("layer %d: score %.4f %s\n", i, s1[i], kinds[i] == TL_TAILOR_DENSE ? "dense" : "sparse");
    }
    char *js = tl_tailor_plan_json("tailor-test-31m.gguf", L, s1, kinds, 0.2, 0.05, 32, n);
    CHECK(tl_tailor_plan_read(js, "plan", L, back, NULL, NULL, &err) == 0 && !memcmp(kinds, back, sizeof(int) * L));
    CHECK(tl_calibrate(m, ids, 1, &cp, s1, win, &err) != 0 && strstr(err.msg, "short"));
    free(js);
    free(kinds);
    free(back);
    free(s1);
    free(s2);
    free(win);
    free(ids);
    free(text);
    tl_model_free(m);
}

static void test_auto(void) {
    const char *path = tl_test_shared("models/tailor-test-31m.gguf");
    if (!tl_test_have(path)) return;
    tl_error err;
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    const int L = m->cfg.n_layer;
    tl_kv_layer_policy a, *p1 = calloc(L, sizeof *p1), *p2 = calloc(L, sizeof *p2), *pg = calloc(L, sizeof *pg);
    CHECK(tl_kv_policy_parse("auto:4", &a, &err) == 0 && a.kind == TL_KV_AUTO);
    for (int i = 0; i < L; i++) p1[i] = p2[i] = pg[i] = a;
    p2[1].kind = TL_KV_F16; /* a layer that is not auto stays as it is */
    tl_kv_auto_report r1, r2, rg;
    CHECKF(tl_kv_auto_resolve(m, p1, NULL, 0, false, 2, &r1, &err) == 0, "%s", err.msg);
    CHECKF(tl_kv_auto_resolve(m, p2, NULL, 0, false, 1, &r2, &err) == 0, "%s", err.msg);
    CHECKF(tl_kv_auto_resolve(m, pg, NULL, 0, true, 2, &rg, &err) == 0, "%s", err.msg);
    CHECK(r1.n_candidates == TL_KV_AUTO_MAX_CANDIDATES && rg.n_candidates == 2 && r1.n_tokens >= 64);
    tl_kv_layer_policy cand[TL_KV_AUTO_MAX_CANDIDATES];
    tl_kv_auto_candidates(&a, false, cand);
    for (int i = 0; i < L; i++) {
        const int k = r1.chosen[i];
        CHECKF(k >= 0 && k < r1.n_candidates && p1[i].kind == TL_KV_QUANT && tl_kv_policy_equal(&p1[i], &cand[k]),
               "layer %d: chose %d", i, k);
        double best = INFINITY;
        for (int c = 0; c < r1.n_candidates; c++) {
            CHECKF(isfinite(r1.err[i][c]) && r1.err[i][c] >= 0 && r1.err[i][c] < 1, "layer %d candidate %d: %g", i, c,
                   r1.err[i][c]);
            best = fmin(best, r1.err[i][c]);
        }
        CHECK(r1.err[i][k] <= 1.1 * best);
        for (int c = 0; c < k; c++) CHECK(r1.err[i][c] > 1.1 * best); /* no earlier candidate qualified */
        if (i != 1) /* deterministic (1 or 2 threads: the same stores, the same rows) */
            CHECKF(fabs(r2.err[i][k] - r1.err[i][k]) <= 1e-3 * r1.err[i][k] && r2.chosen[i] == k, "layer %d", i);
        CHECK(rg.chosen[i] == 0 || rg.chosen[i] == 1);
        CHECK(fabs(rg.err[i][0] - r1.err[i][0]) <= 1e-3 * r1.err[i][0]);
    }
    CHECK(p2[1].kind == TL_KV_F16 && r2.chosen[1] == -1);
    /* the JSON plan reads back to the same policies */
    char *js = tl_kv_auto_plan_json(&r1, p1, "auto:4", "built-in");
    tl_kv_plan plan;
    CHECKF(tl_kv_plan_parse_json(&plan, js, "auto plan", L, &err) == 0, "%s", err.msg);
    for (int i = 0; i < L && plan.layers; i++) CHECKF(tl_kv_policy_equal(&plan.layers[i], &p1[i]), "plan layer %d", i);
    tl_kv_plan_free(&plan);
    free(js);
    /* a session made with auto:4 holds quantized stores of the measured layouts */
    tl_session_params sp = tl_session_default_params();
    tl_kv_plan auto4 = {0};
    CHECK(tl_kv_plan_parse(&auto4, "auto:4", NULL, L, &err) == 0);
    sp.kv = &auto4;
    sp.n_ctx = 256;
    sp.n_threads = 2;
    tl_session *s = tl_session_new(m, &sp, &err);
    CHECKF(s != NULL, "%s", err.msg);
    for (int i = 0; s && i < L; i++) CHECK(!strcmp(s->kv[i]->ops->name, "quant"));
    tl_session_free(s);
    /* tl_kv_plan_resolve_auto (the server's slots): a copy with the auto layers measured as the
     * session measures them (r1's choices); a plan without auto layers copied as it is; a plan
     * of another model refused */
    tl_kv_plan res = {0}, k8 = {0}, res8 = {0}, short_plan = {0}, res_short = {0};
    CHECKF(tl_kv_plan_resolve_auto(&res, m, &auto4, 2, &err) == 0 && res.n_layers == L && res.layers != auto4.layers,
           "%s", err.msg);
    for (int i = 0; i < L && res.layers; i++) CHECKF(tl_kv_policy_equal(&res.layers[i], &p1[i]), "resolved layer %d", i);
    CHECK(tl_kv_plan_parse(&k8, "k8v8", NULL, L, &err) == 0);
    CHECK(tl_kv_plan_resolve_auto(&res8, m, &k8, 1, &err) == 0 && res8.layers != k8.layers);
    for (int i = 0; i < L && res8.layers; i++) CHECK(tl_kv_policy_equal(&res8.layers[i], &k8.layers[i]));
    CHECK(tl_kv_plan_parse(&short_plan, "k8v8", NULL, L - 1, &err) == 0);
    CHECK(tl_kv_plan_resolve_auto(&res_short, m, &short_plan, 1, &err) != 0 && strstr(err.msg, "layers") &&
          !res_short.layers);
    tl_kv_plan_free(&res);
    tl_kv_plan_free(&k8);
    tl_kv_plan_free(&res8);
    tl_kv_plan_free(&short_plan);
    tl_kv_plan_free(&auto4);
    /* a text too short to measure */
    CHECK(tl_kv_auto_resolve(m, p1, "hi", 2, false, 1, NULL, &err) == 0); /* nothing auto left: no-op */
    for (int i = 0; i < L; i++) p1[i] = a;
    CHECK(tl_kv_auto_resolve(m, p1, "hi", 2, false, 1, NULL, &err) != 0 && strstr(err.msg, "calibration text"));
    free(p1);
    free(p2);
    free(pg);
    tl_model_free(m);
}

/* tl_kv_diagnose: the keys' and the values' shares of a policy's attention error. Checks:
 * finite errors in [0, 1) for quantized layers, none for f16 ones; 8-bit codes far below 2-bit
 * ones in every part; and the parts measure what they claim: with 8-bit keys and 2-bit values
 * the values' error is the larger in every layer, and "both" is at least the larger part's
 * (less 20%: the two errors are not independent, but neither cancels the other here). */
static void test_diagnose(void) {
    const char *path = tl_test_shared("models/tailor-test-31m.gguf");
    if (!tl_test_have(path)) return;
    tl_error err;
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    const int L = m->cfg.n_layer, n = 256;
    int32_t *ids = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) ids[i] = 1 + (i * 7919) % (m->cfg.n_vocab - 1);
    const char *specs[3] = {"k8v8", "k2v2:kivi", "k8v2"};
    tl_kv_diag_report rep[3];
    for (int k = 0; k < 3; k++) {
        tl_kv_plan plan = {0};
        CHECKF(tl_kv_plan_parse(&plan, specs[k], k == 1 ? "0=f16" : NULL, L, &err) == 0, "%s", err.msg);
        CHECKF(tl_kv_diagnose(m, plan.layers, ids, n, 16, 2, &rep[k], &err) == 0, "%s: %s", specs[k], err.msg);
        tl_kv_plan_free(&plan);
        CHECK(rep[k].n_tokens == n && rep[k].n_rows == 16);
    }
    CHECK(!rep[1].layer[0].measured && isnan(rep[1].layer[0].err_kv)); /* the f16 layer */
    for (int il = 0; il < L; il++) {
        for (int k = 0; k < 3; k++) {
            const tl_kv_diag_layer *d = &rep[k].layer[il];
            if (k == 1 && il == 0) continue;
            CHECKF(d->measured && d->err_k >= 0 && d->err_k < 1 && d->err_v >= 0 && d->err_v < 1 && d->err_kv >= 0 &&
                       d->err_kv < 1 && d->worst_head >= 0 && d->worst_head_err >= d->err_kv * 0.999,
                   "%s layer %d: %g %g %g head %d %g", specs[k], il, d->err_k, d->err_v, d->err_kv, d->worst_head,
                   d->worst_head_err);
            CHECKF(d->err_kv >= 0.8 * fmax(d->err_k, d->err_v), "%s layer %d", specs[k], il);
        }
        const tl_kv_diag_layer *a = &rep[0].layer[il], *c = &rep[2].layer[il];
        CHECKF(a->err_kv < 0.2 * c->err_kv && a->err_v < 0.2 * c->err_v, "layer %d: k8v8 %g vs k8v2 %g", il, a->err_kv,
               c->err_kv);
        CHECKF(c->err_v > 3 * c->err_k && fabs(c->err_k - a->err_k) <= 1e-6 + 1e-3 * a->err_k, "layer %d: k8v2 keys %g values %g",
               il, c->err_k, c->err_v);
    }
    CHECK(tl_kv_diagnose(m, NULL, ids, n, n, 1, &rep[0], &err) != 0 && strstr(err.msg, "query rows"));
    free(ids);
    tl_model_free(m);
}

int main(void) {
    test_diagnose();
    test_auto();
    test_row_score();
    test_probe(0);
    test_probe(64);
    test_model();
    return tl_test_done();
}
