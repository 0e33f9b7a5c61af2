/* test_eval_metrics.c: scoring functions (unicode, whitespace, hand-computed F1), the KL
 * divergence of a row against an independent double-precision formula, baseline file
 * round trips (self-comparison gives KLD 0 and 100% same top-1; a perturbed run matches
 * hand-computed statistics), result lines and the SVG heatmap. */
#include "../testutil.h"
#include "../../src/eval/kld.h"
#include "../../src/eval/report.h"
#include "../../src/eval/score.h"
#include "../../src/eval/stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_scores(void) {
    /* exact: case, surrounding and unicode whitespace, a trailing full stop */
    CHECK(tl_score_exact("71432.", "71432") == 1);
    CHECK(tl_score_exact(" 71432", "71432") == 1);
    CHECK(tl_score_exact("714321", "71432") == 0);
    CHECK(tl_score_exact("\xe3\x80\x80 Hello \t\n World\xe2\x80\x83", "hello world") == 1); /* U+3000, U+2003 */
    CHECK(tl_score_exact("hello\xc2\xa0world", "Hello World") == 1);                       /* NBSP */
    CHECK(tl_score_exact("\xc3\x89\x43OLE", "\xc3\xa9\x63ole") == 1);                       /* ÉCOLE / école */
    CHECK(tl_score_exact("\xce\x91\xce\x98\xce\x97\xce\x9d\xce\x91", "\xce\xb1\xce\xb8\xce\xb7\xce\xbd\xce\xb1") == 1); /* ΑΘΗΝΑ */
    CHECK(tl_score_exact("\xd0\x9c\xd0\x9e\xd0\xa1\xd0\x9a\xd0\x92\xd0\x90", "\xd0\xbc\xd0\xbe\xd1\x81\xd0\xba\xd0\xb2\xd0\xb0") == 1); /* МОСКВА */
    CHECK(tl_score_exact("zero\xe2\x80\x8bwidth", "zero width") == 1);                     /* U+200B */
    CHECK(tl_score_exact("a, b", "a b") == 0); /* exact keeps inner punctuation */
    CHECK(tl_score_exact("\xff\xfe", "x") == 0); /* invalid UTF-8 does not crash */
    /* contains: word bounded, punctuation and articles ignored */
    CHECK(tl_score_contains("The answer is Paris, France.", "paris") == 1);
    CHECK(tl_score_contains("The answer is Paris, France.", "par") == 0);
    CHECK(tl_score_contains("It is the Eiffel Tower!", "Eiffel tower") == 1);
    CHECK(tl_score_contains("", "x") == 0);
    /* F1 by hand: "cat sat on mat" vs "cat on mat": P = 3/4, R = 1, F1 = 6/7 */
    CHECK(fabs(tl_score_f1("the cat sat on the mat", "a cat on a mat") - 6.0 / 7.0) < 1e-12);
    CHECK(tl_score_f1("nothing here", "cat") == 0);
    CHECK(tl_score_f1("Cat!", "cat") == 1);
    /* duplicates count once per reference word: "a a a" vs "a b": common 1, P 1/3, R 1/2 -> 0.4 */
    CHECK(fabs(tl_score_f1("x x x", "x y") - 0.4) < 1e-12);
    /* CJK counts characters: 我爱北京 vs 北京: P = 2/4, R = 1 -> 2/3 */
    CHECK(fabs(tl_score_f1("\xe6\x88\x91\xe7\x88\xb1\xe5\x8c\x97\xe4\xba\xac", "\xe5\x8c\x97\xe4\xba\xac") - 2.0 / 3.0) < 1e-12);
    /* number: the first number in the output */
    CHECK(tl_score_number(" 71432. Remember it.", "71432") == 1);
    CHECK(tl_score_number(" 714321", "71432") == 0);
    CHECK(tl_score_number(" 7143", "71432") == 0);
    CHECK(tl_score_number(" is 12 and 71432", "71432") == 0);
    CHECK(tl_score_number("none", "71432") == 0);
    /* all: fraction of references found, whole numbers only */
    const char *refs[] = {"1234567", "2345678", "9999999", "3456789"};
    CHECK(fabs(tl_score_all("1234567, 2345678 and 3456789.", refs, 4) - 0.75) < 1e-12);
    CHECK(tl_score_all("12345678", refs, 1) == 0);
    CHECK(tl_score_all("VAR ABCDE, VAR FGHIJ", (const char *const[]){"ABCDE", "FGHIJ"}, 2) == 1);
    /* multi-reference max */
    CHECK(tl_score(TL_METRIC_EXACT, "Lyon", (const char *const[]){"Paris", "lyon"}, 2) == 1);
    CHECK(tl_metric_parse("f1") == TL_METRIC_F1 && tl_metric_parse("em") == TL_METRIC_EXACT && tl_metric_parse("x") < 0);
}

/* independent reference: full softmax in double, coarsened to top-K of the base + rest */
static double ref_kl(const float *b, const float *q, int V, int K) {
    double pb[64], pq[64], sb = 0, sq = 0;
    for (int i = 0; i < V; i++) sb += exp(b[i]), sq += exp(q[i]);
    for (int i = 0; i < V; i++) pb[i] = exp(b[i]) / sb, pq[i] = exp(q[i]) / sq;
    int idx[64];
    for (int i = 0; i < V; i++) idx[i] = i;
    for (int i = 0; i < V; i++) /* selection sort by base probability */
        for (int j = i + 1; j < V; j++)
            if (pb[idx[j]] > pb[idx[i]]) {
                int t = idx[i];
                idx[i] = idx[j];
                idx[j] = t;
            }
    double kl = 0, rb = 1, rq = 1;
    for (int i = 0; i < K; i++) {
        kl += pb[idx[i]] * log(pb[idx[i]] / pq[idx[i]]);
        rb -= pb[idx[i]];
        rq -= pq[idx[i]];
    }
    if (K < V) kl += rb * log(rb / rq);
    return kl;
}

static void test_kl_row(void) {
    const float b[6] = {2.0f, 1.0f, 0.5f, -1.0f, 0.0f, 0.3f};
    const float q[6] = {1.5f, 1.2f, 0.1f, -0.5f, 0.2f, 0.0f};
    float lb[6], lq[6];
    tl_kld_log_softmax(b, 6, -1, lb);
    tl_kld_log_softmax(q, 6, -1, lq);
    /* top-3 of the base: ids 0, 1, 2 */
    const int32_t ids[3] = {0, 1, 2};
    const float tlp[3] = {lb[0], lb[1], lb[2]};
    double rest = 1 - exp((double)lb[0]) - exp((double)lb[1]) - exp((double)lb[2]);
    double k3 = tl_kld_row(ids, tlp, 3, (float)log(rest), lq);
    CHECKF(fabs(k3 - ref_kl(b, q, 6, 3)) < 1e-6, "top-3 KL %g vs %g", k3, ref_kl(b, q, 6, 3));
    /* the full distribution (K = V, no rest) is the full KL, and the coarse one is a lower bound */
    const int32_t all[6] = {0, 1, 2, 5, 4, 3};
    const float alp[6] = {lb[0], lb[1], lb[2], lb[5], lb[4], lb[3]};
    double k6 = tl_kld_row(all, alp, 6, -INFINITY, lq);
    CHECKF(fabs(k6 - ref_kl(b, q, 6, 6)) < 1e-6, "full KL %g vs %g", k6, ref_kl(b, q, 6, 6));
    CHECK(k3 <= k6 + 1e-9);
    /* against itself: exactly 0 */
    CHECK(tl_kld_row(ids, tlp, 3, (float)log(rest), lb) == 0);
}

static void test_kl_file(void) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/tl_test_kld_%d.bin", (int)getpid());
    enum { V = 7, CTX = 8, ROWS = CTX - 1 - CTX / 2, W = 3 };
    int32_t text[CTX * W];
    for (int i = 0; i < CTX * W; i++) text[i] = (i * 5 + 1) % V;
    float base[W][ROWS * V], other[W][ROWS * V];
    int32_t tg[W][ROWS];
    uint64_t r = 99;
    for (int w = 0; w < W; w++)
        for (int i = 0; i < ROWS * V; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            base[w][i] = (float)((r >> 40) % 1000) / 250.0f - 2.0f;
            other[w][i] = base[w][i] + ((i % 3) - 1) * 0.3f;
        }
    for (int w = 0; w < W; w++)
        for (int j = 0; j < ROWS; j++) tg[w][j] = (w + j) % V;
    /* tl_kld_window takes log-probabilities, as tl_perplexity hands them on */
    float lbase[W][ROWS * V], lother[W][ROWS * V];
    for (int w = 0; w < W; w++)
        for (int j = 0; j < ROWS; j++) {
            tl_kld_log_softmax(base[w] + j * V, V, -1, lbase[w] + j * V);
            tl_kld_log_softmax(other[w] + j * V, V, -1, lother[w] + j * V);
        }
    tl_error err = {{0}};
    tl_kld k;
    CHECK(tl_kld_open_write(&k, path, V, CTX, 3, text, CTX * W, &err) == 0);
    for (int w = 0; w < W; w++) CHECK(tl_kld_window(&k, lbase[w], tg[w], ROWS, &err) == 0);
    CHECK(tl_kld_finish(&k, &err) == 0);
    tl_kld_close(&k);
    /* self comparison */
    CHECK(tl_kld_open_read(&k, path, V, CTX, text, CTX * W, &err) == 0);
    for (int w = 0; w < W; w++) CHECK(tl_kld_window(&k, lbase[w], tg[w], ROWS, &err) == 0);
    tl_kld_stats st;
    tl_kld_stats_get(&k, &st);
    CHECK(st.n == W * ROWS);
    CHECK(st.kld_mean == 0 && st.kld_max == 0 && st.kld_p99 == 0);
    CHECK(st.same_top1 == 1.0);
    CHECK(st.mean_abs_dp == 0);
    CHECK(st.ppl_base == st.ppl_new && st.ppl_ratio == 1.0);
    tl_kld_close(&k);
    /* a perturbed run against hand-computed values */
    CHECK(tl_kld_open_read(&k, path, V, CTX, text, CTX * W, &err) == 0);
    for (int w = 0; w < W; w++) CHECK(tl_kld_window(&k, lother[w], tg[w], ROWS, &err) == 0);
    tl_kld_stats_get(&k, &st);
    double sum = 0, mx = 0, nb = 0, nn = 0, adp = 0, rows_b[W * ROWS], rows_n[W * ROWS], rows_kl[W * ROWS];
    int same = 0;
    for (int w = 0; w < W; w++)
        for (int j = 0; j < ROWS; j++) {
            const float *b = base[w] + j * V, *q = other[w] + j * V;
            const double kl = ref_kl(b, q, V, 3);
            sum += kl;
            mx = kl > mx ? kl : mx;
            double sb = 0, sq = 0;
            int ab = 0, aq = 0;
            for (int i = 0; i < V; i++) {
                sb += exp(b[i]), sq += exp(q[i]);
                if (b[i] > b[ab]) ab = i;
                if (q[i] > q[aq]) aq = i;
            }
            nb -= log(exp(b[tg[w][j]]) / sb);
            nn -= log(exp(q[tg[w][j]]) / sq);
            rows_b[w * ROWS + j] = -log(exp(b[tg[w][j]]) / sb);
            rows_n[w * ROWS + j] = -log(exp(q[tg[w][j]]) / sq);
            rows_kl[w * ROWS + j] = kl;
            adp += fabs(exp(q[tg[w][j]]) / sq - exp(b[tg[w][j]]) / sb);
            same += ab == aq;
        }
    const int n = W * ROWS;
    CHECKF(fabs(st.kld_mean - sum / n) < 1e-6, "mean KLD %g vs %g", st.kld_mean, sum / n);
    CHECKF(fabs(st.kld_max - mx) < 1e-6, "max KLD %g vs %g", st.kld_max, mx);
    CHECK(fabs(st.ppl_base - exp(nb / n)) < 1e-4 * st.ppl_base);
    CHECK(fabs(st.ppl_new - exp(nn / n)) < 1e-4 * st.ppl_new);
    CHECK(fabs(st.mean_abs_dp - adp / n) < 1e-6);
    CHECK(fabs(st.same_top1 - (double)same / n) < 1e-12);
    CHECK(st.kld_mean > 0);
    /* the intervals are those of stats.h over the hand-computed per-token values */
    const tl_interval ratio = tl_ppl_ratio_interval(rows_b, rows_n, n), kli = tl_block_mean(rows_kl, n, TL_STATS_BLOCK),
                      top1 = tl_wilson(same, n), pb = tl_ppl_interval(rows_b, n);
    CHECKF(fabs(st.ci_ratio.lo - ratio.lo) < 1e-5 && fabs(st.ci_ratio.hi - ratio.hi) < 1e-5, "ratio [%g, %g] vs [%g, %g]",
           st.ci_ratio.lo, st.ci_ratio.hi, ratio.lo, ratio.hi);
    CHECK(fabs(st.ci_kld.lo - kli.lo) < 1e-6 && fabs(st.ci_kld.hi - kli.hi) < 1e-6);
    CHECK(fabs(st.ci_ppl_base.lo - pb.lo) < 1e-4 * pb.lo && fabs(st.ci_ppl_base.hi - pb.hi) < 1e-4 * pb.hi);
    CHECK(st.ci_same_top1.lo == top1.lo && st.ci_same_top1.hi == top1.hi);
    CHECK(fabs(st.ci_ln_ratio.hi - log(st.ci_ratio.hi)) < 1e-15 && st.ci_rms_dp.lo <= st.rms_dp && st.rms_dp <= st.ci_rms_dp.hi);
    tl_kld_close(&k);
    /* mismatches are refused with a message naming the problem */
    CHECK(tl_kld_open_read(&k, path, V, CTX * 2, text, CTX * W, &err) != 0 && strstr(err.msg, "-c"));
    text[3] ^= 1;
    CHECK(tl_kld_open_read(&k, path, V, CTX, text, CTX * W, &err) != 0 && strstr(err.msg, "tokens differ"));
    CHECK(tl_kld_open_read(&k, "/nonexistent/x.kld", V, CTX, text, CTX * W, &err) != 0 &&
          strstr(err.msg, "--kl-base-write"));
    unlink(path);
}

static void test_report(void) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/tl_test_results_%d.jsonl", (int)getpid());
    unlink(path);
    tl_error err = {{0}};
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "kv", "k4v2:kivi");
    CHECK(tl_result_append(path, "niah", cfg, "acc", 0.5, 10, 1.5, NULL, &err) == 0);
    CHECK(tl_result_append(path, "niah", cfg, "acc", 1.0, 2, 0.5, NULL, &err) == 0);
    cJSON *x = cJSON_CreateObject();
    cJSON_AddNumberToObject(x, "length", 1024);
    CHECK(tl_result_append_ci(path, "niah", cfg, "acc", tl_wilson(4, 5), 0.5, x, &err) == 0);
    CHECK(tl_result_append_ci(path, "niah", cfg, "acc", tl_wilson(0, 0), 0.5, NULL, &err) == 0);
    cJSON_Delete(x);
    cJSON_Delete(cfg);
    size_t len;
    char *s = tl_test_read_file(path, &len);
    CHECK(s != NULL);
    if (s) {
        char *nl = strchr(s, '\n');
        CHECK(nl && strchr(nl + 1, '\n'));
        *nl = 0;
        cJSON *o = cJSON_Parse(s);
        CHECK(o && !strcmp(cJSON_GetObjectItem(o, "metric")->valuestring, "acc"));
        CHECK(o && cJSON_GetObjectItem(o, "value")->valuedouble == 0.5 && cJSON_GetObjectItem(o, "n")->valuedouble == 10);
        CHECK(o && !strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "config"), "kv")->valuestring, "k4v2:kivi"));
        cJSON_Delete(o);
        /* lines 3 and 4: value, n, lo and hi from the interval, after the extra fields */
        char *l3 = strchr(nl + 1, '\n') + 1, *l4 = strchr(l3, '\n') + 1;
        l4[-1] = 0;
        o = cJSON_Parse(l3);
        const tl_interval w = tl_wilson(4, 5);
        CHECK(o && cJSON_GetObjectItem(o, "value")->valuedouble == 0.8 && cJSON_GetObjectItem(o, "n")->valuedouble == 5);
        CHECK(o && cJSON_GetObjectItem(o, "lo")->valuedouble == w.lo && cJSON_GetObjectItem(o, "hi")->valuedouble == w.hi);
        CHECK(o && cJSON_GetObjectItem(o, "length")->valuedouble == 1024);
        CHECK(strstr(l3, "\"length\":1024,\"lo\":"));
        cJSON_Delete(o);
        CHECK(strstr(l4, "\"value\":null") && strstr(l4, "\"lo\":null,\"hi\":null"));
        free(s);
    }
    unlink(path);
    char buf[64];
    CHECK(!strcmp(tl_interval_str(tl_wilson(4, 5), 2, buf, sizeof buf), "0.80 [0.38, 0.96]"));
    /* the progress bar counts items, not the pieces an item arrives in */
    tl_progress p;
    tl_progress_init(&p, "t", 100, 2, false);
    tl_progress_add(&p, 20, 0);
    tl_progress_add(&p, 30, 1);
    tl_progress_add(&p, 25, 0);
    CHECK(p.items_done == 1 && p.done == 75);
    tl_progress_add(&p, 25, 1);
    CHECK(p.items_done == 2 && p.done == 100);
    tl_progress_done(&p);
    const char *xs[] = {"1k", "2k"}, *ys[] = {"0%", "100%"};
    const double v[] = {1, 0.5, 0, NAN};
    char *svg = tl_svg_heatmap("t <&>", "len", xs, 2, "depth", ys, 2, v);
    CHECK(strstr(svg, "<svg") && strstr(svg, "t &lt;&amp;&gt;") && strstr(svg, "0.50") && strstr(svg, "#dddddd"));
    free(svg);
}

int main(void) {
    test_scores();
    test_kl_row();
    test_kl_file();
    test_report();
    return tl_test_done();
}
