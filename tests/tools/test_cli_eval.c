/* test_cli_eval: the intervals of `tailor perplexity`, `niah`, `ruler` and `eval` as a user
 * sees them ($TL_BIN on stories260K): the perplexity progress bar counts windows (it counted
 * the pieces of a window: "16/4"), a run against its own baseline has a PPL ratio of exactly
 * [1, 1] and the verdict "no measurable loss", every result line carries lo/hi, and the
 * intervals in CSV / JSON / result lines are the Wilson intervals of the scores they
 * summarize, recomputed here from the per-sample scores the files also hold. */
#include "../testutil.h"
#include "../../src/eval/stats.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *bin;
static char model[4096], dir[256];

/* the result lines of a file, as a JSON array */
static cJSON *read_lines(const char *path) {
    cJSON *a = cJSON_CreateArray();
    char *s = tl_test_read_file(path, NULL);
    if (!s) return a;
    char *save = NULL;
    for (char *l = strtok_r(s, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(l);
        CHECKF(o != NULL, "%s: not JSON: %s", path, l);
        if (o) cJSON_AddItemToArray(a, o);
    }
    free(s);
    return a;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

static const cJSON *metric(const cJSON *lines, const char *name) {
    const cJSON *o;
    cJSON_ArrayForEach(o, lines) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "metric");
        if (cJSON_IsString(m) && !strcmp(m->valuestring, name)) return o;
    }
    return NULL;
}

static bool same_interval(const cJSON *o, tl_interval ci) {
    return o && fabs(num(o, "lo") - ci.lo) < 1e-9 && fabs(num(o, "hi") - ci.hi) < 1e-9 && num(o, "n") == (double)ci.n;
}

static void test_perplexity(void) {
    char cmd[2048], kld[300], out[300], text[4096], *o = NULL;
    snprintf(text, sizeof text, "%s", tl_test_shared("data/pg_essays/gap.txt"));
    snprintf(kld, sizeof kld, "%s/base.kld", dir);
    snprintf(out, sizeof out, "%s/ppl.jsonl", dir);
    /* 64 scored tokens per window arrive in 4 pieces of 16: the bar still counts 4 windows */
    snprintf(cmd, sizeof cmd, "%s perplexity -m %s -f %s -c 128 --chunk 16 --chunks 4 -t 1 --kl-base-write %s", bin, model,
             text, kld);
    CHECK(tl_test_run(cmd, &o) == 0);
    int bars = 0, bad = 0;
    for (const char *p = strstr(o, "perplexity ["); p; p = strstr(p + 1, "perplexity [")) {
        int done, total;
        const char *q = strstr(p, "% ");
        if (q && sscanf(q + 2, "%d/%d", &done, &total) == 2) {
            bars++;
            bad += done > total || total != 4;
        }
    }
    CHECKF(bars > 0 && bad == 0 && strstr(o, "4/4"), "progress: %s", o);
    CHECK(strstr(o, "Final estimate: PPL = ") && strstr(o, " 95% ["));
    free(o);
    /* against itself: exactly 1, no measurable loss */
    snprintf(cmd, sizeof cmd, "%s perplexity -m %s -f %s -c 128 --chunk 16 --chunks 4 -t 1 --kl-base %s --out %s -q", bin,
             model, text, kld, out);
    CHECK(tl_test_run(cmd, &o) == 0);
    CHECKF(strstr(o, "95% [1.000000, 1.000000] paired") &&
               strstr(o, "verdict: no measurable loss (PPL ratio 1.0000, 95% interval [1.0000, 1.0000] contains 1)"),
           "%s", o);
    free(o);
    cJSON *lines = read_lines(out);
    const cJSON *r = metric(lines, "ppl_ratio"), *p = metric(lines, "ppl"), *t = metric(lines, "same_top1"),
                *k = metric(lines, "kld_mean"), *mx = metric(lines, "kld_max");
    CHECK(r && num(r, "value") == 1 && num(r, "lo") == 1 && num(r, "hi") == 1);
    CHECK(r && !strcmp(cJSON_GetObjectItem(r, "verdict")->valuestring, "no_loss"));
    CHECK(p && num(p, "lo") < num(p, "value") && num(p, "value") < num(p, "hi") && num(p, "n") == 252); /* 4 windows of 63 */
    CHECK(same_interval(t, tl_wilson(252, 252)));
    CHECK(k && num(k, "value") == 0 && num(k, "lo") == 0 && num(k, "hi") == 0);
    CHECK(mx && !cJSON_GetObjectItem(mx, "lo")); /* a maximum has no interval */
    cJSON_Delete(lines);
    /* another cache: a verdict, never a gain */
    snprintf(cmd, sizeof cmd, "%s perplexity -m %s -f %s -c 128 --chunks 4 -t 1 --kl-base %s --kv bf16 -q", bin, model,
             text, kld);
    CHECK(tl_test_run(cmd, &o) == 0);
    const char *v = strstr(o, "verdict: ");
    CHECKF(v && (!strncmp(v + 9, "no measurable loss", 18) || !strncmp(v + 9, "loss ", 5) ||
                 !strncmp(v + 9, "measured lower perplexity than base", 35)) && !strstr(o, "gain"), "%s", o);
    free(o);
}

static void test_niah(void) {
    char cmd[2048], csv[300], json[300], out[300], *o = NULL;
    snprintf(csv, sizeof csv, "%s/niah.csv", dir);
    snprintf(json, sizeof json, "%s/niah.json", dir);
    snprintf(out, sizeof out, "%s/niah.jsonl", dir);
    snprintf(cmd, sizeof cmd, "%s niah -m %s --lengths 256,384 --depths 0,100 -n 2 -t 1 -q --csv %s --json %s --out %s", bin,
             model, csv, json, out);
    CHECK(tl_test_run(cmd, &o) == 0);
    CHECKF(strstr(o, "| mean | 0.") && strstr(o, " [0."), "%s", o);
    free(o);
    /* CSV: the old columns, then the cell's n, lo, hi */
    char *c = tl_test_read_file(csv, NULL);
    CHECK(c && !strncmp(c, "length,depth,sample,needle_pos,expected,output,score,seconds,reused,n,lo,hi\n", 76));
    double score[8] = {0}, lo[8], hi[8];
    int rows = 0;
    for (char *l = c ? strchr(c, '\n') : NULL; l && l[1] && rows < 8; l = strchr(l + 1, '\n'), rows++) {
        /* the output field is quoted and may hold commas: parse from the end */
        char *end = strchr(l + 1, '\n'), *f[6]; /* hi, lo, n, reused, seconds, score */
        int nf = 0;
        for (char *q = end; q && q > l && nf < 6; q--)
            if (*q == ',') f[nf++] = q + 1;
        long n;
        CHECK(nf == 6 && sscanf(f[5], "%lf", &score[rows]) == 1 && sscanf(f[2], "%ld", &n) == 1 && n == 2 &&
              sscanf(f[1], "%lf", &lo[rows]) == 1 && sscanf(f[0], "%lf", &hi[rows]) == 1);
    }
    CHECK(rows == 8);
    for (int cell = 0; cell < 4; cell++) {
        const tl_interval w = tl_wilson((int64_t)(score[2 * cell] + score[2 * cell + 1]), 2);
        for (int s = 0; s < 2; s++)
            CHECKF(fabs(lo[2 * cell + s] - w.lo) < 1e-6 && fabs(hi[2 * cell + s] - w.hi) < 1e-6, "cell %d: [%g, %g]", cell,
                   lo[2 * cell + s], hi[2 * cell + s]);
    }
    free(c);
    /* JSON: cells, lengths, depths and the mean with n, lo, hi */
    char *js = tl_test_read_file(json, NULL);
    cJSON *j = js ? cJSON_Parse(js) : NULL;
    double sum = 0;
    for (int i = 0; i < 8; i++) sum += score[i];
    CHECK(j && same_interval(j, tl_wilson((int64_t)sum, 8)) && num(j, "mean") == sum / 8);
    const cJSON *x;
    int nc = 0, nl = 0, nd = 0;
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(j, "cells")) nc += num(x, "n") == 2 && num(x, "hi") > 0;
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(j, "by_length")) nl += num(x, "n") == 4 && num(x, "hi") > 0;
    cJSON_ArrayForEach(x, cJSON_GetObjectItem(j, "by_depth")) nd += num(x, "n") == 4 && num(x, "hi") > 0;
    CHECK(nc == 4 && nl == 2 && nd == 2);
    cJSON_Delete(j);
    free(js);
    /* result lines: 4 cells, 2 lengths, the mean; each with lo and hi */
    cJSON *lines = read_lines(out);
    int n = 0, with = 0;
    cJSON_ArrayForEach(x, lines) {
        n++;
        with += num(x, "lo") <= num(x, "value") && num(x, "value") <= num(x, "hi");
    }
    CHECK(n == 7 && with == 7);
    const cJSON *last = cJSON_GetArrayItem(lines, 6);
    CHECK(same_interval(last, tl_wilson((int64_t)sum, 8)) && !cJSON_GetObjectItem(last, "length"));
    cJSON_Delete(lines);
}

static void test_ruler_eval(void) {
    char cmd[2048], out[300], pred[300], *o = NULL;
    snprintf(out, sizeof out, "%s/ruler.jsonl", dir);
    snprintf(cmd, sizeof cmd, "%s ruler -m %s --tasks niah_single,vt --lengths 450 -n 2 -t 1 -q --out %s", bin, model, out);
    CHECK(tl_test_run(cmd, &o) == 0);
    CHECKF(strstr(o, "| **average** | **0.") && strstr(o, "[0."), "%s", o);
    free(o);
    cJSON *lines = read_lines(out);
    const cJSON *avg = metric(lines, "ruler_avg"), *vt = metric(lines, "ruler_vt");
    CHECK(avg && num(avg, "n") == 4 && num(avg, "hi") > num(avg, "lo") && vt && num(vt, "n") == 2 && num(vt, "hi") > 0);
    cJSON_Delete(lines);
    /* eval: the per-item scores of --pred give the intervals of the result lines */
    snprintf(out, sizeof out, "%s/eval.jsonl", dir);
    snprintf(pred, sizeof pred, "%s/pred.jsonl", dir);
    snprintf(cmd, sizeof cmd, "%s eval -m %s --tasks %s -t 1 -q --out %s --pred %s", bin, model,
             tl_test_fixture("eval_tasks.jsonl"), out, pred);
    CHECK(tl_test_run(cmd, &o) == 0);
    CHECKF(strstr(o, "| metric | n | score | 95% lo | 95% hi |"), "%s", o);
    free(o);
    cJSON *items = read_lines(pred);
    double sc[16];
    int n = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, items) if (n < 16) sc[n++] = num(x, "score");
    CHECK(n == 5);
    lines = read_lines(out);
    CHECK(same_interval(metric(lines, "eval_score"), tl_score_interval(sc, n)));
    int with = 0;
    cJSON_ArrayForEach(x, lines) with += cJSON_IsNumber(cJSON_GetObjectItem(x, "lo")) && cJSON_IsNumber(cJSON_GetObjectItem(x, "hi"));
    CHECK(with == cJSON_GetArraySize(lines) && with >= 2);
    cJSON_Delete(lines);
    cJSON_Delete(items);
}

int main(void) {
    bin = getenv("TL_BIN");
    snprintf(model, sizeof model, "%s", tl_test_shared("models/stories260K.gguf"));
    if (!bin || !*bin) {
        tl_test_skip("TL_BIN is not set (ctest sets it to the tailor binary)");
        return tl_test_done();
    }
    if (!tl_test_have(model) || !tl_test_have(tl_test_shared("data/pg_essays/gap.txt"))) return tl_test_done();
    snprintf(dir, sizeof dir, "/tmp/tl_test_cli_eval_%d", (int)getpid());
    char cmd[512], *o = NULL;
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", dir, dir);
    CHECK(tl_test_run(cmd, &o) == 0);
    free(o);
    test_perplexity();
    test_niah();
    test_ruler_eval();
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(tl_test_run(cmd, &o) == 0);
    free(o);
    return tl_test_done();
}
