/* test_eval_run.c: end-to-end pieces of the accuracy harness on the tiny stories260K model:
 * KL divergence of a perplexity run against itself is exactly 0 with 100% same top-1 (and
 * positive for a bf16 cache), and the job runner's greedy answers and choice
 * log-likelihoods equal a hand-written decode loop, with 1 or 2 parallel sessions. */
#include "../testutil.h"
#include "../../include/tailor.h"
#include "../../src/eval/kld.h"
#include "../../src/eval/perplexity.h"
#include "../../src/eval/runner.h"
#include "../../src/eval/stats.h"
#include "../../src/kv/policy.h"
#include "../../src/engine/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static tl_session *mk(tl_model *m, const char *kv, int n_ctx, int threads) {
    tl_session_params p = tl_session_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = threads;
    p.chunk = 64;
    tl_error err = {{0}};
    tl_kv_plan plan = {0};
    if (tl_kv_plan_parse(&plan, kv, NULL, m->cfg.n_layer, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    p.kv = &plan;
    tl_session *s = tl_session_new(m, &p, &err);
    if (!s) fprintf(stderr, "%s\n", err.msg);
    tl_kv_plan_free(&plan);
    return s;
}

typedef struct {
    tl_kld *k;
    tl_error *err;
} kctx;

static int on_win(void *ctx, int w, const float *logprobs, const int32_t *t, int n, int V) {
    kctx *c = ctx;
    return tl_kld_window(c->k, logprobs, t, n, c->err) != 0;
}

static int32_t *tokenize(tl_model *m, const char *text, bool bos, int *n) {
    size_t cap = strlen(text) + 8, need = 0;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    tl_error err = {{0}};
    if (tl_tokenize(m->tok, text, strlen(text), bos, false, ids, cap, &need, &err) || need > cap) {
        free(ids);
        return NULL;
    }
    *n = (int)need;
    return ids;
}

static void test_kld(tl_model *m) {
    size_t len;
    char *text = tl_test_read_file(tl_test_shared("data/pg_essays/gap.txt"), &len);
    if (!text) {
        tl_test_have(tl_test_shared("data/pg_essays/gap.txt")); /* a skip, or a failure under TL_REQUIRE_FILES */
        return;
    }
    int n = 0;
    int32_t *ids = tokenize(m, text, true, &n);
    CHECK(ids && n > 600);
    char path[256];
    snprintf(path, sizeof path, "/tmp/tl_test_kldrun_%d.kld", (int)getpid());
    tl_error err = {{0}};
    const int ctx = 128, W = 3;
    tl_kld k;
    tl_ppl_result base, r2;
    tl_session *s = mk(m, "f16", ctx, 1);
    CHECK(tl_kld_open_write(&k, path, m->cfg.n_vocab, ctx, 16, ids, n, &err) == 0);
    kctx kc = {&k, &err};
    CHECK(tl_perplexity(s, ids, n, ctx, W, false, on_win, &kc, &base, &err) == 0);
    CHECK(tl_kld_finish(&k, &err) == 0);
    tl_kld_close(&k);
    tl_session_free(s);
    /* the same configuration again (2 threads: the partition must not change the numbers) */
    s = mk(m, "f16", ctx, 2);
    CHECK(tl_kld_open_read(&k, path, m->cfg.n_vocab, ctx, ids, n, &err) == 0);
    CHECK(tl_perplexity(s, ids, n, ctx, W, false, on_win, &kc, &r2, &err) == 0);
    tl_kld_stats st;
    tl_kld_stats_get(&k, &st);
    CHECK(st.n == base.n_scored);
    CHECKF(st.kld_mean == 0 && st.kld_max == 0, "self KLD mean %g max %g", st.kld_mean, st.kld_max);
    CHECK(st.same_top1 == 1.0);
    CHECK(st.mean_abs_dp == 0);
    CHECKF(fabs(st.ppl_base - base.ppl) < 1e-3 * base.ppl, "PPL(base) %g vs %g", st.ppl_base, base.ppl);
    CHECK(st.ppl_ratio == 1.0);
    /* the same run: exactly [1, 1], no measurable loss */
    CHECK(st.ci_ratio.value == 1 && st.ci_ratio.lo == 1 && st.ci_ratio.hi == 1);
    CHECK(tl_ratio_verdict(st.ci_ratio) == TL_VERDICT_NO_LOSS);
    CHECK(st.ci_kld.lo == 0 && st.ci_kld.hi == 0 && st.ci_same_top1.hi == 1);
    /* every scored token's NLL, in order, adds up to the PPL */
    double sum = 0;
    for (int64_t i = 0; i < base.n_scored; i++) sum += base.nll[i];
    CHECK(base.n_scored == (int64_t)W * (ctx - 1 - ctx / 2) && fabs(sum - base.nll_sum) < 1e-9 * sum);
    double worst = 0; /* the baseline file's (float) NLL of each token */
    for (int64_t i = 0; i < base.n_scored; i++) worst = fmax(worst, fabs(base.nll[i] - k.nll_base_row[i]));
    CHECKF(worst < 1e-4, "per-token NLL differs from the baseline's by %g", worst);
    const tl_interval pi = tl_ppl_interval(base.nll, base.n_scored);
    CHECKF(pi.lo < base.ppl && base.ppl < pi.hi && fabs(pi.value - base.ppl) < 1e-9 * base.ppl, "PPL %g [%g, %g]",
           base.ppl, pi.lo, pi.hi);
    tl_ppl_result_free(&r2);
    tl_kld_close(&k);
    tl_session_free(s);
    /* a lossier cache: positive but small divergence */
    s = mk(m, "bf16", ctx, 1);
    CHECK(tl_kld_open_read(&k, path, m->cfg.n_vocab, ctx, ids, n, &err) == 0);
    CHECK(tl_perplexity(s, ids, n, ctx, W, false, on_win, &kc, &r2, &err) == 0);
    tl_kld_stats_get(&k, &st);
    CHECKF(st.kld_mean > 0 && st.kld_mean < 0.05, "bf16 KLD %g", st.kld_mean);
    CHECKF(st.same_top1 > 0.9, "bf16 same top-1 %g", st.same_top1);
    CHECKF(fabs(st.ppl_new - r2.ppl) < 1e-3 * r2.ppl, "PPL(new) %g vs %g", st.ppl_new, r2.ppl);
    CHECK(st.ci_kld.lo > 0 && st.ci_kld.lo <= st.kld_mean && st.kld_mean <= st.ci_kld.hi);
    CHECK(st.ci_ratio.lo <= st.ppl_ratio && st.ppl_ratio <= st.ci_ratio.hi && st.ci_ratio.lo < st.ci_ratio.hi);
    tl_ppl_result_free(&r2);
    tl_ppl_result_free(&base);
    tl_kld_close(&k);
    tl_session_free(s);
    unlink(path);
    free(ids);
    free(text);
}

/* f32 KV: a reused prefix is then bit-identical to one attended in the same chunk, so the
 * runner's results can be compared exactly with sessions evaluated from scratch. */
static tl_session *factory(void *ctx, int n_ctx, int n_threads, tl_error *err) {
    tl_model *m = ctx;
    tl_kv_plan plan = {0};
    if (tl_kv_plan_parse(&plan, "f32", NULL, m->cfg.n_layer, err)) return NULL;
    tl_session_params p = tl_session_default_params();
    p.kv = &plan;
    p.n_ctx = n_ctx;
    p.n_threads = n_threads;
    p.chunk = 32;
    tl_session *s = tl_session_new(m, &p, err);
    tl_kv_plan_free(&plan);
    return s;
}

static void test_runner(tl_model *m) {
    const char *prompts[] = {"Once upon a time", "Once upon a time, there was", "Lily and Ben", "The cat"};
    enum { NJ = 4, NEW = 12 };
    tl_eval_job jobs[2][NJ];
    int32_t *ids[NJ];
    int nids[NJ];
    for (int i = 0; i < NJ; i++) ids[i] = tokenize(m, prompts[i], true, &nids[i]);
    /* choices for job 3 */
    int32_t c0[1], c1[2];
    c0[0] = ids[0][1];
    c1[0] = ids[1][2];
    c1[1] = ids[1][1];
    int32_t *cids[2] = {c0, c1};
    const int clen[2] = {1, 2};
    for (int P = 1; P <= 2; P++) {
        tl_eval_job *J = jobs[P - 1];
        for (int i = 0; i < NJ; i++) J[i] = (tl_eval_job){.ids = ids[i], .n_ids = nids[i], .max_new = NEW};
        J[3].n_choices = 2;
        J[3].choice_ids = cids;
        J[3].choice_len = clen;
        tl_runner r = {.model = m, .new_session = factory, .factory_ctx = m, .n_threads = 2, .n_parallel = P};
        tl_error err = {{0}};
        CHECKF(tl_run_jobs(&r, J, NJ, &err) == 0, "%s", err.msg);
    }
    /* the reference: a plain greedy loop */
    const int V = m->cfg.n_vocab;
    float *lg = malloc(sizeof(float) * V * 2);
    tl_error err = {{0}};
    tl_session *s = factory(m, 256, 1, &err);
    for (int i = 0; i < 3; i++) {
        tl_session_reset(s);
        tl_session_eval(s, ids[i], nids[i], lg, false, &err);
        int32_t gen[NEW];
        int ng = 0;
        for (;;) {
            int32_t t = tl_argmax(lg, V);
            if (tl_tok_is_eog(m->tok, t)) break;
            gen[ng++] = t;
            if (ng == NEW) break;
            tl_session_eval(s, &t, 1, lg, false, &err);
        }
        char *ref = tl_detokenize_ex(m->tok, gen, (size_t)ng, 0, NULL);
        CHECKF(jobs[0][i].output && !strcmp(jobs[0][i].output, ref), "job %d: '%s' vs '%s'", i, jobs[0][i].output, ref);
        CHECK(jobs[1][i].output && !strcmp(jobs[1][i].output, ref));
        CHECK(jobs[0][i].n_gen == ng);
        free(ref);
    }
    /* choice log-likelihoods by hand */
    double ll[2];
    for (int c = 0; c < 2; c++) {
        tl_session_reset(s);
        tl_session_eval(s, ids[3], nids[3], lg, false, &err);
        float mx = lg[0];
        for (int v = 1; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
        double z = 0;
        for (int v = 0; v < V; v++) z += exp((double)lg[v] - mx);
        ll[c] = lg[cids[c][0]] - mx - log(z);
        for (int t = 1; t < clen[c]; t++) {
            tl_session_eval(s, &cids[c][t - 1], 1, lg, false, &err);
            mx = lg[0];
            for (int v = 1; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
            z = 0;
            for (int v = 0; v < V; v++) z += exp((double)lg[v] - mx);
            ll[c] += lg[cids[c][t]] - mx - log(z);
        }
        for (int P = 0; P < 2; P++)
            CHECKF(jobs[P][3].choice_ll && fabs(jobs[P][3].choice_ll[c] - ll[c]) < 1e-3, "choice %d: %g vs %g", c,
                   jobs[P][3].choice_ll ? jobs[P][3].choice_ll[c] : NAN, ll[c]);
    }
    CHECK(jobs[0][3].chosen == (ll[1] > ll[0] ? 1 : 0));
    tl_session_free(s);
    free(lg);
    for (int P = 0; P < 2; P++)
        for (int i = 0; i < NJ; i++) tl_eval_job_clear(&jobs[P][i]);
    for (int i = 0; i < NJ; i++) free(ids[i]);
}

static int failing_truncate(tl_session *s, int n, tl_error *err) { return tl_fail(err, "no"); }

/* Prompts sharing a long prefix give the same answers with and without reuse, and reuse
 * really skips the shared tokens. */
static void test_reuse(tl_model *m) {
    const char *ctx = "Once upon a time, there was a little girl named Lily. She liked to play with her ball in the "
                      "park. One day, she saw a big dog.";
    const char *qs[] = {" Lily was", " The dog was", " The dog was big and", " She"};
    enum { NJ = 4 };
    int32_t *ids[NJ];
    int nids[NJ];
    for (int i = 0; i < NJ; i++) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s%s", ctx, qs[i]);
        ids[i] = tokenize(m, buf, true, &nids[i]);
    }
    tl_eval_job J[3][NJ];
    tl_truncate_fn fns[3] = {NULL, tl_session_truncate, failing_truncate};
    for (int v = 0; v < 3; v++) {
        for (int i = 0; i < NJ; i++) J[v][i] = (tl_eval_job){.ids = ids[i], .n_ids = nids[i], .max_new = 10};
        tl_runner r = {.model = m, .new_session = factory, .factory_ctx = m, .n_threads = 1, .n_parallel = 1,
                       .truncate = fns[v], .no_reuse = v == 0};
        tl_error err = {{0}};
        CHECKF(tl_run_jobs(&r, J[v], NJ, &err) == 0, "%s", err.msg);
    }
    for (int i = 0; i < NJ; i++) {
        CHECKF(!strcmp(J[0][i].output, J[1][i].output), "reuse changed job %d: '%s' vs '%s'", i, J[0][i].output,
               J[1][i].output);
        CHECK(!strcmp(J[0][i].output, J[2][i].output));
        CHECK(J[0][i].reused == 0 && J[2][i].reused == 0);
    }
    /* job 1 shares the context (and more) with job 0 */
    int lcp = 0;
    while (lcp < nids[0] && lcp < nids[1] && ids[0][lcp] == ids[1][lcp]) lcp++;
    CHECKF(J[1][1].reused == lcp && lcp > 20, "reused %d, common prefix %d", J[1][1].reused, lcp);
    CHECK(J[1][0].reused == 0);
    for (int v = 0; v < 3; v++)
        for (int i = 0; i < NJ; i++) tl_eval_job_clear(&J[v][i]);
    for (int i = 0; i < NJ; i++) free(ids[i]);
}

int main(void) {
    const char *path = tl_test_shared("models/stories260K.gguf");
    if (!tl_test_have(path)) return tl_test_done();
    tl_error err = {{0}};
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (m) {
        test_kld(m);
        test_runner(m);
        test_reuse(m);
        tl_model_free(m);
    }
    return tl_test_done();
}
