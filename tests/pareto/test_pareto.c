/* test_pareto.c: the KV Pareto sweep.
 *  - frontier on hand-made points: ties, duplicates, one point, all dominated, failed points,
 *    3-objective dominance, budget / max-loss picks;
 *  - grids: axes product, modifiers only on quantized specs, JSON files and their errors;
 *  - memory projection equals a real session's accounting at the evaluated length;
 *  - end to end with the tailor binary on the long-context test model at a tiny context: a
 *    crashing and an unsupported configuration are recorded and the sweep goes on; an
 *    interrupted sweep (lines cut, a torn last line) resumed with --resume gives the same
 *    table (configurations, memory, accuracy, frontier); --merge; --emit-jobs. */
#define _GNU_SOURCE
#include "../testutil.h"
#include "../../src/eval/stats.h"
#include "../../src/kv/policy.h"
#include "../../src/model/model.h"
#include "../../src/pareto/pareto.h"
#include "../../src/engine/session.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void test_frontier(void) {
    int on[16];
    /* one point */
    tl_pareto_point one[1] = {{100, 0.9, NAN, 0}};
    CHECK(tl_pareto_frontier(one, 1, false, on) == 1 && on[0] == 1);
    /* a staircase plus dominated points */
    tl_pareto_point p[6] = {
        {100, 1.00, NAN, 0}, /* baseline: most memory, best accuracy -> frontier */
        {60, 0.99, NAN, 0},  /* frontier */
        {70, 0.98, NAN, 0},  /* dominated by 1 */
        {30, 0.90, NAN, 0},  /* frontier */
        {30, 0.85, NAN, 0},  /* same memory, worse accuracy: dominated by 3 */
        {20, 0.95, NAN, 1},  /* failed: never on the frontier, dominates nothing */
    };
    CHECK(tl_pareto_frontier(p, 6, false, on) == 3);
    CHECK(on[0] && on[1] && !on[2] && on[3] && !on[4] && !on[5]);
    /* exact duplicates are both kept; a tie in one objective is broken by the other */
    tl_pareto_point d[3] = {{50, 0.9, NAN, 0}, {50, 0.9, NAN, 0}, {50, 0.8, NAN, 0}};
    CHECK(tl_pareto_frontier(d, 3, false, on) == 2 && on[0] && on[1] && !on[2]);
    /* all dominated by one point */
    tl_pareto_point a[4] = {{10, 1.0, NAN, 0}, {20, 0.9, NAN, 0}, {30, 1.0, NAN, 0}, {10, 0.5, NAN, 0}};
    CHECK(tl_pareto_frontier(a, 4, false, on) == 1 && on[0] && !on[1] && !on[2] && !on[3]);
    /* speed as a third objective keeps a slower-memory but faster point */
    tl_pareto_point s[2] = {{10, 1.0, 100, 0}, {20, 1.0, 200, 0}};
    CHECK(tl_pareto_frontier(s, 2, false, on) == 1 && on[0] && !on[1]);
    CHECK(tl_pareto_frontier(s, 2, true, on) == 2);
    /* NaN accuracy is not a candidate */
    tl_pareto_point nn[2] = {{10, NAN, NAN, 0}, {20, 0.5, NAN, 0}};
    CHECK(tl_pareto_frontier(nn, 2, false, on) == 1 && !on[0] && on[1]);
    /* picks */
    CHECK(tl_pareto_pick_budget(p, 6, 65) == 1);
    CHECK(tl_pareto_pick_budget(p, 6, 1000) == 0);
    CHECK(tl_pareto_pick_budget(p, 6, 25) == -1); /* only the failed point fits */
    CHECK(tl_pareto_pick_min_mem(p, 6, 0.99) == 1);
    CHECK(tl_pareto_pick_min_mem(p, 6, 0.97) == 1);
    CHECK(tl_pareto_pick_min_mem(p, 6, 0.89) == 3);
    CHECK(tl_pareto_pick_min_mem(p, 6, 1.01) == -1);
    /* ties in memory: the more accurate */
    CHECK(tl_pareto_pick_min_mem(d, 3, 0.5) == 0);
}

static void test_grid(void) {
    tl_error err = {{0}};
    tl_pareto_grid g = {0};
    tl_pareto_axes a = {.weights = "base,w4g128", .kv = "f16,k4v4", .gran = "tok,chan", .smooth = "0,1", .chunk = "64,full"};
    CHECK(tl_pareto_grid_from_axes(&g, &a, &err) == 0);
    /* f16 takes no modifiers: per (weights, chunk) 1 + 2*2 configurations */
    CHECKF(g.n == 2 * 2 * 5, "n %d", g.n);
    bool seen_chan = false, seen_full = false;
    for (int i = 0; i < g.n; i++) {
        seen_chan |= strstr(g.v[i].kv, "kchan:vtok") != NULL;
        seen_full |= g.v[i].chunk == 0 && strstr(g.v[i].id, "chunk=full") != NULL;
        CHECK(strcmp(g.v[i].kv, "f16") || !strchr(g.v[i].kv, ':'));
    }
    CHECK(seen_chan && seen_full);
    tl_pareto_grid_free(&g);
    CHECK(tl_pareto_grid_default(&g, "paper", false, &err) == 0 && g.n == 29);
    CHECK(!strcmp(g.v[0].id, "w=base kv=f16 chunk=256"));
    bool seen_auto = false;
    for (int i = 0; i < g.n; i++) seen_auto |= !strcmp(g.v[i].kv, "auto:4");
    CHECK(seen_auto);
    tl_pareto_grid_free(&g);
    CHECK(tl_pareto_grid_default(&g, "paper", true, &err) == 0 && g.n == 36);
    tl_pareto_grid_free(&g);
    CHECK(tl_pareto_grid_default(&g, "huge", false, &err) != 0 && strstr(err.msg, "huge"));
    const char *js = "{\"axes\": {\"kv\": [\"f16\", \"k8v8\"], \"chunk\": [128, \"full\"]},"
                     " \"configs\": [{\"weights\": \"q4_0\", \"kv\": \"k2v2:kivi\", \"kv_layer\": \"0=f16\", \"chunk\": 64},"
                     "               {\"kv\": \"k8v8\", \"chunk\": 128}]}";
    CHECK(tl_pareto_grid_from_json(&g, js, "grid.json", &err) == 0);
    CHECKF(g.n == 5, "n %d", g.n); /* 4 from axes + 1 new (the second config duplicates an axis one) */
    CHECK(!strcmp(g.v[4].id, "w=q4_0 kv=k2v2:kivi kvl=0=f16 chunk=64"));
    tl_pareto_grid_free(&g);
    CHECK(tl_pareto_grid_from_json(&g, "{\"axes\": {\"kvs\": [\"f16\"]}}", "g.json", &err) != 0 && strstr(err.msg, "kvs"));
    tl_pareto_grid_free(&g);
    CHECK(tl_pareto_grid_from_json(&g, "[1,2]", "g.json", &err) != 0 && strstr(err.msg, "g.json"));
    tl_pareto_grid_free(&g);
    CHECK(tl_pareto_grid_from_json(&g, "{\"configs\": [{\"chunk\": \"lots\"}]}", "g.json", &err) != 0 &&
          strstr(err.msg, "configs[0]"));
    tl_pareto_grid_free(&g);
}

/* Relative accuracy intervals in the report: a niah task of 20 samples paired with the
 * baseline's (one lost: [1 - wilson_hi(1, 20), 1 + wilson_hi(0, 20) - wilson_lo(1, 20)] around
 * 0.95); identical samples give an interval around 1 as wide as 20 agreeing samples allow (no
 * measurable loss, never exactly 1); a ppl line's paired ratio interval turns into
 * [1/hi, 1/lo]; the frontier takes the pessimistic end, so a config whose point estimate beats
 * another's at less memory is still dominated when its lower end is below. */
static void test_report_intervals(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/tl_pareto_ci_%d.jsonl", (int)getpid());
    FILE *f = fopen(path, "w");
    char ones[200] = "", lost1[200] = "";
    for (int i = 0; i < 20; i++) {
        strcat(ones, i ? ",1" : "1");
        strcat(lost1, i ? (i == 7 ? ",0" : ",1") : "1");
    }
    const char *cfgs[3][2] = {{"w=base kv=f16 chunk=256", "f16"}, {"w=base kv=k4v4 chunk=256", "k4v4"},
                              {"w=base kv=k2v2 chunk=256", "k2v2"}};
    const double mem[3] = {300e6, 200e6, 150e6};
    for (int c = 0; c < 3; c++) {
        fprintf(f, "{\"cmd\":\"pareto\",\"config\":{\"id\":\"%s\",\"label\":\"%s\",\"weights\":\"base\",\"kv\":\"%s\","
                   "\"kv_layer\":\"\",\"chunk\":256,\"model\":\"m\",\"ctx\":1024},\"metric\":\"niah\",\"status\":\"ok\","
                   "\"value\":%g,\"n\":20,\"samples\":[%s],\"mem\":{\"weights\":1,\"kv\":1,\"act\":1,\"logits\":0,\"total\":%g}}\n",
                cfgs[c][0], cfgs[c][1], cfgs[c][1], c == 1 ? 0.95 : 1.0, c == 1 ? lost1 : ones, mem[c]);
        fprintf(f, "{\"cmd\":\"pareto\",\"config\":{\"id\":\"%s\",\"label\":\"%s\",\"weights\":\"base\",\"kv\":\"%s\","
                   "\"kv_layer\":\"\",\"chunk\":256,\"model\":\"m\",\"ctx\":1024},\"metric\":\"ppl\",\"status\":\"ok\","
                   "\"value\":%g,\"n\":1000%s}\n",
                cfgs[c][0], cfgs[c][1], cfgs[c][1], c == 0 ? 10.0 : c == 1 ? 10.1 : 9.95,
                c == 1 ? ",\"ppl_ratio_ci\":{\"value\":1.01,\"lo\":1.004,\"hi\":1.016,\"n\":1000}"
                       : c == 2 ? ",\"ppl_ratio_ci\":{\"value\":0.995,\"lo\":0.97,\"hi\":1.02,\"n\":1000}" : "");
    }
    fclose(f);
    tl_pareto_table t;
    tl_error err = {{0}};
    const char *paths[1] = {path};
    CHECKF(tl_pareto_load(&t, paths, 1, NULL, false, &err) == 0, "%s", err.msg);
    if (t.n == 3) {
        const tl_pareto_row *b = &t.rows[0], *k4 = &t.rows[1], *k2 = &t.rows[2];
        const int ni = !strcmp(t.tasks[0], "niah") ? 0 : 1, pi = 1 - ni;
        CHECK(b->baseline && b->rel_lo[ni] == 1 && b->rel_hi[ni] == 1 && b->acc_lo == 1);
        CHECK(fabs(k4->rel[ni] - 0.95) < 1e-12);
        CHECK(fabs(k4->rel_lo[ni] - (1 - tl_wilson(1, 20).hi)) < 1e-9);
        CHECK(fabs(k4->rel_hi[ni] - (1 + tl_wilson(0, 20).hi - tl_wilson(1, 20).lo)) < 1e-9);
        CHECK(fabs(k4->rel_lo[pi] - 1 / 1.016) < 1e-9 && fabs(k4->rel_hi[pi] - 1 / 1.004) < 1e-9);
        CHECK(k2->rel_lo[ni] < 1 && k2->rel_hi[ni] > 1 && fabs(k2->rel_lo[ni] - (1 - tl_wilson(0, 20).hi)) < 1e-9);
        CHECK(fabs(k2->acc_lo - (k2->rel_lo[0] + k2->rel_lo[1]) / 2) < 1e-12);
        /* k2v2: point estimate 1.0025 at the least memory; its lower end is below k4v4's? Either
         * way the frontier is decided on acc_lo, which is what the flags must agree with */
        const bool k4_dominated = k2->acc_lo >= k4->acc_lo; /* k2 has less memory */
        CHECK(k4->frontier == !k4_dominated && k2->frontier && b->frontier == (b->acc_lo > TL_MAX(k2->acc_lo, k4->acc_lo)));
        char *md = tl_pareto_report_md(&t, NULL);
        CHECK(md && strstr(md, "no measurable loss") && strstr(md, "pessimistic end"));
        free(md);
    } else {
        CHECKF(0, "%d rows", t.n);
    }
    tl_pareto_table_free(&t);
    unlink(path);
}

/* projection at the evaluated length == what the session's stores and buffers hold */
static void test_projection(const char *model) {
    tl_error err = {{0}};
    tl_model *m = tl_model_load(model, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    const char *specs[] = {"f16", "k8v8", "k4v4:smooth", "k2v2:kivi", "k4v2:kchan:vtok:g64:r32", "k4v4:tensor"};
    const int chunks[] = {64, 100, 0};
    const int n_tok = 300;
    int32_t *ids = malloc(sizeof(int32_t) * n_tok);
    for (int i = 0; i < n_tok; i++) ids[i] = (i * 37 + 11) % m->cfg.n_vocab;
    for (size_t k = 0; k < sizeof specs / sizeof *specs; k++)
        for (size_t c = 0; c < 3; c++) {
            tl_kv_plan plan = {0};
            CHECK(tl_kv_plan_parse(&plan, specs[k], NULL, m->cfg.n_layer, &err) == 0);
            const int chunk = chunks[c] > 0 ? chunks[c] : n_tok;
            tl_session *s = tl_session_new_with_policies(m, n_tok + 8, 1, chunk, plan.layers, &err);
            CHECKF(s != NULL, "%s", err.msg);
            if (!s) continue;
            CHECK(tl_session_eval(s, ids, n_tok, NULL, false, &err) == 0);
            tl_session_mem sm;
            tl_session_memory(s, &sm);
            tl_pareto_mem pm;
            CHECK(tl_pareto_mem_project(m, &plan, chunks[c], n_tok, &pm, &err) == 0);
            CHECKF(pm.kv == sm.kv, "%s: kv %llu vs %llu", specs[k], (unsigned long long)pm.kv, (unsigned long long)sm.kv);
            CHECKF(pm.act == sm.activations, "%s chunk %d: act %llu vs %llu", specs[k], chunk,
                   (unsigned long long)pm.act, (unsigned long long)sm.activations);
            CHECK(pm.weights == sm.weights);
            CHECK(pm.total == sm.weights + sm.kv + sm.activations + sizeof(float) * (uint64_t)m->cfg.n_vocab);
            tl_session_free(s);
            tl_kv_plan_free(&plan);
        }
    /* projecting to a synth shape: KV of f16 Llama-3.1-8B at 128k is 16 GiB, k8v8 ~ half + scales */
    tl_pareto_mem a, b;
    tl_kv_plan f16 = {0}, k8v8 = {0}, over = {0};
    CHECK(tl_kv_plan_parse(&f16, "f16", NULL, m->cfg.n_layer, &err) == 0);
    CHECK(tl_kv_plan_parse(&k8v8, "k8v8", NULL, m->cfg.n_layer, &err) == 0);
    CHECK(tl_pareto_mem_project_to("llama-3.1-8b", "base", &f16, 256, 131072, &a, &err) == 0);
    CHECKF(a.kv == 16ull << 30, "kv %llu", (unsigned long long)a.kv);
    CHECK(tl_pareto_mem_project_to("llama-3.1-8b", "w4g128", &k8v8, 256, 131072, &b, &err) == 0);
    CHECK(b.kv < a.kv * 6 / 10 && b.kv > a.kv / 2 && b.weights < a.weights / 3);
    CHECK(tl_pareto_mem_project_to("no-such-model", "base", &f16, 256, 1024, &a, &err) != 0 &&
          strstr(err.msg, "no-such-model"));
    /* an override on a layer the target lacks is named; one it has is kept */
    char hi[32];
    snprintf(hi, sizeof hi, "%d=k8v8", m->cfg.n_layer - 1);
    CHECK(tl_kv_plan_parse(&over, "f16", hi, m->cfg.n_layer, &err) == 0);
    if (m->cfg.n_layer > 32)
        CHECK(tl_pareto_mem_project_to("llama-3.1-8b", "base", &over, 256, 1024, &a, &err) != 0 &&
              strstr(err.msg, "out of range"));
    else
        CHECK(tl_pareto_mem_project_to("llama-3.1-8b", "base", &over, 256, 131072, &b, &err) == 0 && b.kv < 16ull << 30);
    tl_kv_plan_free(&f16);
    tl_kv_plan_free(&k8v8);
    tl_kv_plan_free(&over);
    free(ids);
    tl_model_free(m);
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int r = system(cmd);
    return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

static int count_lines(const char *path, const char *needle) {
    size_t len;
    char *t = tl_test_read_file(path, &len);
    if (!t) return -1;
    int n = 0;
    for (char *l = t; l && *l;) {
        char *nl = strchr(l, '\n');
        if (nl) *nl = 0;
        if (!needle || strstr(l, needle)) n++;
        l = nl ? nl + 1 : NULL;
    }
    free(t);
    return n;
}

static bool same_tables(const char *a, const char *b) {
    tl_error err = {{0}};
    tl_pareto_table ta, tb;
    const char *fa[1] = {a}, *fb[1] = {b};
    if (tl_pareto_load(&ta, fa, 1, NULL, false, &err)) return fprintf(stderr, "%s\n", err.msg), false;
    if (tl_pareto_load(&tb, fb, 1, NULL, false, &err)) return tl_pareto_table_free(&ta), false;
    bool same = ta.n == tb.n && ta.base >= 0 && tb.base >= 0;
    for (int i = 0; same && i < ta.n; i++) {
        const tl_pareto_row *x = &ta.rows[i], *y = NULL;
        for (int j = 0; j < tb.n; j++)
            if (!strcmp(tb.rows[j].id, x->id)) y = &tb.rows[j];
        if (!y || x->failed != y->failed || x->frontier != y->frontier || x->baseline != y->baseline) same = false;
        else if (!x->failed && (x->mem_total != y->mem_total || fabs(x->acc - y->acc) > 1e-12 || x->proj_total != y->proj_total))
            same = false;
        if (!same) fprintf(stderr, "differs at %s\n", x->id);
    }
    tl_pareto_table_free(&ta);
    tl_pareto_table_free(&tb);
    return same;
}

static void test_sweep(const char *model) {
    const char *bin = getenv("TL_BIN");
    if (!bin || access(bin, X_OK)) {
        tl_test_skip("sweep tests need the tailor binary (TL_BIN)");
        return;
    }
    char dir[] = "/tmp/tl_pareto_XXXXXX";
    if (!mkdtemp(dir)) return;
    char grid[512], common[4096];
    snprintf(grid, sizeof grid, "%s/grid.json", dir);
    FILE *f = fopen(grid, "w");
    /* k8v8 is made to crash (TL_PARETO_CRASH); g128 does not fit head_dim 64 ("unsupported") */
    fprintf(f, "{\"configs\": [{\"kv\": \"f16\", \"chunk\": 64}, {\"kv\": \"k8v8\", \"chunk\": 64},"
               " {\"kv\": \"k4v4:smooth\", \"chunk\": 64}, {\"kv\": \"k2v2:kivi\", \"chunk\": 64},"
               " {\"kv\": \"k4v4:g128\", \"chunk\": 64}, {\"kv\": \"k4v4:smooth\", \"chunk\": \"full\"}]}\n");
    fclose(f);
    snprintf(common, sizeof common,
             "-m %s --grid %s -c 192 --windows 1 --decode 2 --tasks ppl -t 1 --target-ctx 4096 "
             "--project-to llama-3.1-8b --haystack %s --max-loss 2%% --budget 30MiB",
             model, grid, tl_test_shared("data/pg_essays"));
    int rc = sh("TL_PARETO_CRASH='kv=k8v8' %s pareto %s -o %s/a 2> %s/a.log", bin, common, dir, dir);
    CHECKF(rc == 0, "sweep rc %d (see %s/a.log)", rc, dir);
    char res[600], res2[600], p[600];
    snprintf(res, sizeof res, "%s/a/results.jsonl", dir);
    CHECKF(count_lines(res, NULL) == 6, "%d lines", count_lines(res, NULL));
    CHECK(count_lines(res, "\"status\":\"failed\"") == 2);
    CHECK(count_lines(res, "signal 6") == 1);                  /* the crash, recorded by the parent */
    CHECK(count_lines(res, "g128") >= 1 && count_lines(res, "\"status\":\"ok\"") == 4);
    snprintf(p, sizeof p, "%s/a/report.md", dir);
    CHECK(count_lines(p, "★") >= 1 && count_lines(p, "failed") >= 2 && count_lines(p, "Budget") == 1);
    /* the PNG is drawn with cairo (test_pareto_plot decodes it); without cairo the sweep says
     * once that it writes SVG only */
    snprintf(p, sizeof p, "%s/a/frontier.png", dir);
    size_t len = 0;
    char *png = tl_test_read_file(p, &len);
#ifdef TL_HAVE_CAIRO
    CHECK(png && len > 1000 && !memcmp(png + 1, "PNG", 3));
#else
    CHECK(!png);
    snprintf(p, sizeof p, "%s/a.log", dir);
    CHECK(count_lines(p, "PNG plots need cairo") == 1);
#endif
    free(png);
    snprintf(p, sizeof p, "%s/a/frontier.svg", dir);
    CHECK(count_lines(p, "<polyline") == 1 || count_lines(p, "<circle") >= 2);

    /* interrupted: keep the first 3 lines and half of the 4th (a kill mid-write) beside the
     * baseline's KL file, then resume */
    CHECK(sh("mkdir -p %s/b && head -n 3 %s > %s/b/results.jsonl && sed -n 4p %s | head -c 40 >> %s/b/results.jsonl && "
             "cp %s/a/baseline.kldb %s/b/",
             dir, res, dir, res, dir, dir, dir) == 0);
    CHECK(sh("%s pareto %s -o %s/b 2> %s/b0.log", bin, common, dir, dir) == 2); /* refuses without --resume */
    rc = sh("TL_PARETO_CRASH='kv=k8v8' %s pareto %s -o %s/b --resume 2> %s/b.log", bin, common, dir, dir);
    CHECKF(rc == 0, "resume rc %d", rc);
    snprintf(res2, sizeof res2, "%s/b/results.jsonl", dir);
    CHECKF(count_lines(res2, NULL) == 6, "%d lines after resume", count_lines(res2, NULL));
    snprintf(p, sizeof p, "%s/b.log", dir);
    CHECK(count_lines(p, "3 already done") == 1);
    CHECK(same_tables(res, res2));
    /* resuming a finished sweep runs nothing and changes nothing */
    rc = sh("%s pareto %s -o %s/b --resume 2> %s/b2.log", bin, common, dir, dir);
    CHECK(rc == 0 && count_lines(res2, NULL) == 6);
    /* the same without the baseline's KL file: its ppl runs again (the comparisons need it), so
     * every configuration run after it has its KLD and paired PPL-ratio interval */
    CHECK(sh("mkdir -p %s/c && head -n 3 %s > %s/c/results.jsonl", dir, res, dir) == 0);
    rc = sh("%s pareto %s -o %s/c --resume 2> %s/c.log", bin, common, dir, dir);
    snprintf(p, sizeof p, "%s/c.log", dir);
    CHECK(rc == 0 && count_lines(p, "baseline.kldb is missing") == 1);
    snprintf(p, sizeof p, "%s/c/results.jsonl", dir);
    CHECK(count_lines(p, NULL) == 7 && count_lines(p, "ppl_ratio_ci") == 3);
    /* merge two halves */
    CHECK(sh("mkdir -p %s/h1 %s/h2 && head -n 3 %s > %s/h1/results.jsonl && tail -n 3 %s > %s/h2/results.jsonl", dir,
             dir, res, dir, res, dir) == 0);
    rc = sh("%s pareto --merge %s/h1 %s/h2/results.jsonl -o %s/m 2> %s/m.log", bin, dir, dir, dir, dir);
    CHECK(rc == 0);
    snprintf(p, sizeof p, "%s/m/results.jsonl", dir);
    CHECK(same_tables(res, p));
    /* emit-jobs: header comments + one line per configuration */
    rc = sh("%s pareto %s -o %s/e --emit-jobs > %s/jobs.txt 2>/dev/null", bin, common, dir, dir);
    snprintf(p, sizeof p, "%s/jobs.txt", dir);
    CHECK(rc == 0 && count_lines(p, "--only") == 6 && count_lines(p, "--child") == 6);
    if (tl_test_failed == 0) sh("rm -rf %s", dir);
    else fprintf(stderr, "kept %s for inspection\n", dir);
}

/* Run argv (no shell) with stderr to log; returns the exit status or -1. */
static int run_argv(char *const *argv, const char *log) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "w", stderr) || !freopen("/dev/null", "w", stdout)) _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Paths are data: a haystack folder and an output folder with spaces work, and shell syntax in
 * --haystack runs nothing (it named a folder that does not exist). */
static void test_paths(const char *bin) {
    char dir[] = "/tmp/tl_pareto_paths_XXXXXX";
    if (!mkdtemp(dir)) return;
    char hay[600], out[600], log[600], want[600], eval[700], marker[600], inj[1200], out2[600];
    snprintf(hay, sizeof hay, "%s/hay stack", dir);
    snprintf(out, sizeof out, "%s/out dir", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    CHECK(sh("mkdir '%s' && cp %s/apple.txt %s/boss.txt '%s'/ && cat '%s'/*.txt > %s/want.txt", hay,
             tl_test_shared("data/pg_essays"), tl_test_shared("data/pg_essays"), hay, hay, dir) == 0);
    char *model = (char *)tl_test_shared("models/stories260K.gguf");
    char *common[] = {(char *)bin, "pareto", "-m", model, "--kv-axis", "f16", "--chunks", "64", "-c", "128",
                      "--tasks", "ppl", "--decode", "2", "-t", "1", "--haystack", hay, "-o", out, NULL};
    int rc = run_argv(common, log);
    CHECKF(rc == 0, "pareto with spaces in --haystack and -o: rc %d (see %s)", rc, log);
    snprintf(want, sizeof want, "%s/want.txt", dir);
    snprintf(eval, sizeof eval, "%s/eval_text.txt", out);
    size_t la = 0, lb = 0;
    char *a = tl_test_read_file(want, &la), *b = tl_test_read_file(eval, &lb);
    CHECKF(a && b && la == lb && !memcmp(a, b, la), "%s is not the haystack's text files joined", eval);
    free(a);
    free(b);
    snprintf(marker, sizeof marker, "%s/pwned", dir);
    snprintf(inj, sizeof inj, "%s/x >/dev/null; touch %s; cat %s/y", dir, marker, dir);
    snprintf(out2, sizeof out2, "%s/inj", dir);
    common[17] = inj;
    common[19] = out2;
    rc = run_argv(common, log);
    CHECKF(rc != 0 && count_lines(log, "/x >/dev/null; touch") >= 1, "injected --haystack: rc %d (see %s)", rc, log);
    CHECKF(access(marker, F_OK) != 0, "--haystack ran a shell command: %s exists", marker);
    if (tl_test_failed == 0) sh("rm -rf %s", dir);
    else fprintf(stderr, "kept %s for inspection\n", dir);
}

/* The pid of a child of ppid whose command line holds needle, or 0. */
static pid_t find_child(pid_t ppid, const char *needle) {
    DIR *d = opendir("/proc");
    pid_t found = 0;
    for (struct dirent *e; d && !found && (e = readdir(d));) {
        const pid_t pid = (pid_t)atoi(e->d_name);
        if (pid <= 0) continue;
        char path[64], buf[4096];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f) fclose(f);
        buf[n] = 0;
        const char *rp = strrchr(buf, ')'); /* "pid (comm) state ppid ..." */
        int parent = 0;
        if (!rp || sscanf(rp + 1, " %*c %d", &parent) != 1 || parent != ppid) continue;
        snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
        f = fopen(path, "r");
        n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f) fclose(f);
        for (size_t i = 0; i < n; i++) buf[i] = buf[i] ? buf[i] : ' ';
        buf[n] = 0;
        if (strstr(buf, needle)) found = pid;
    }
    if (d) closedir(d);
    return found;
}

/* A sweep killed (SIGKILL) while a configuration runs: that child dies with it, and --resume
 * runs the configuration again exactly once; a resume started while a sweep still runs waits
 * for it. This test is the subreaper of the sweeps' processes, so an orphaned child becomes its
 * own to wait for. */
static void test_kill_resume(const char *bin) {
    char dir[] = "/tmp/tl_pareto_kill_XXXXXX";
    if (!mkdtemp(dir) || prctl(PR_SET_CHILD_SUBREAPER, 1)) return;
    char out[600], log[600], res[700], jn[700];
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    char *argv[] = {(char *)bin, "pareto", "-m", (char *)tl_test_shared("models/stories260K.gguf"), "-f",
                    (char *)tl_test_shared("data/pg_essays/apple.txt"), "--kv-axis", "f16,k8v8", "--chunks", "64",
                    "-c", "128", "--tasks", "ppl", "--decode", "2", "-t", "1", "-o", out, NULL, NULL};
    fflush(NULL);
    const pid_t sweep = fork();
    if (sweep == 0) {
        setenv("TL_PARETO_STALL", "kv=k8v8", 1); /* that child sleeps 5 s before its work */
        if (!freopen("/dev/null", "w", stderr)) _exit(126);
        execv(bin, argv);
        _exit(127);
    }
    pid_t child = 0;
    for (int t = 0; t < 6000 && !child; t++) { /* the k8v8 configuration's process, in its stall */
        child = find_child(sweep, "kv=k8v8");
        if (!child) nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    CHECKF(child > 0, "no k8v8 child of the sweep appeared");
    kill(sweep, SIGKILL);
    waitpid(sweep, NULL, 0);
    argv[20] = "--resume";
    const int rc = run_argv(argv, log);
    CHECKF(rc == 0, "resume rc %d (see %s)", rc, log);
    int st = 0;
    if (child > 0) {
        CHECK(waitpid(child, &st, 0) == child); /* an orphan is ours now: it has ended, or ends now */
        CHECKF(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "the killed sweep's child ended with status %#x", st);
    }
    snprintf(res, sizeof res, "%s/results.jsonl", out);
    CHECKF(count_lines(res, "kv=k8v8") == 1 && count_lines(res, NULL) == 2, "%d k8v8 lines of %d",
           count_lines(res, "kv=k8v8"), count_lines(res, NULL));
    snprintf(jn, sizeof jn, "%s/journal.tsv", out);
    CHECK(count_lines(jn, "start\tw=base kv=k8v8") == 2 && count_lines(jn, "end\tw=base kv=k8v8") == 1);
    CHECK(count_lines(log, "kv=k8v8 chunk=64 was interrupted") == 1);

    /* a second sweep in the folder while the first runs (its k8v8 child stalled) waits for the
     * first to end instead of running the same configuration beside it */
    snprintf(out, sizeof out, "%s/out2", dir);
    argv[20] = NULL;
    fflush(NULL);
    const pid_t first = fork();
    if (first == 0) {
        setenv("TL_PARETO_STALL", "kv=k8v8", 1);
        if (!freopen("/dev/null", "w", stderr)) _exit(126);
        execv(bin, argv);
        _exit(127);
    }
    child = 0;
    for (int t = 0; t < 6000 && !child; t++) {
        child = find_child(first, "kv=k8v8");
        if (!child) nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    argv[20] = "--resume";
    CHECK(run_argv(argv, log) == 0);
    CHECK(waitpid(first, &st, 0) == first && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(count_lines(log, "is in use; waiting") == 1);
    snprintf(res, sizeof res, "%s/results.jsonl", out);
    CHECKF(count_lines(res, "kv=k8v8") == 1 && count_lines(res, NULL) == 2, "%d k8v8 lines of %d",
           count_lines(res, "kv=k8v8"), count_lines(res, NULL));
    prctl(PR_SET_CHILD_SUBREAPER, 0);
    if (tl_test_failed == 0) sh("rm -rf %s", dir);
    else fprintf(stderr, "kept %s for inspection\n", dir);
}

int main(void) {
    test_report_intervals();
    test_frontier();
    test_grid();
    const char *bin = getenv("TL_BIN");
    if (bin && !access(bin, X_OK) && tl_test_have(tl_test_shared("models/stories260K.gguf"))) {
        test_paths(bin);
        test_kill_resume(bin);
    }
    const char *model = tl_test_shared("models/tailor-test-31m.gguf");
    if (tl_test_have(model)) {
        test_projection(model);
        test_sweep(model);
    }
    return tl_test_done();
}
