/* test_eval_stats.c: the intervals of src/eval/stats.h.
 * Wilson against published values (Newcombe 1998, Table I: 81/263, 15/148, 0/20, 1/29) and
 * against the roots of (k/n - p)^2 = z^2 p(1-p)/n solved separately (Python, quadratic
 * formula); the block bootstrap against its by-the-definition reference, deterministic,
 * exactly [1, 1] for an identical pair, covering a known PPL ratio on correlated synthetic
 * tokens about 95% of the time (where a token-by-token bootstrap does not), narrowing with
 * more tokens; fractional scores; verdict lines. */
#include "../testutil.h"
#include "../../src/eval/stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void check_wilson(int64_t k, int64_t n, double lo, double hi, double tol) {
    const tl_interval r = tl_wilson(k, n);
    CHECKF(fabs(r.lo - lo) <= tol && fabs(r.hi - hi) <= tol && r.n == n && r.value == (double)k / (double)n,
           "Wilson %lld/%lld: [%.10f, %.10f], expected [%.10f, %.10f]", (long long)k, (long long)n, r.lo, r.hi, lo, hi);
}

static void test_wilson(void) {
    /* published, 4 decimals */
    check_wilson(81, 263, 0.2553, 0.3662, 5e-5);
    check_wilson(15, 148, 0.0624, 0.1605, 5e-5);
    check_wilson(0, 20, 0.0, 0.1611, 5e-5);
    check_wilson(1, 29, 0.0061, 0.1718, 5e-5);
    /* quadratic roots computed in Python */
    check_wilson(0, 10, 0.0, 0.2775327999, 1e-9);
    check_wilson(10, 10, 0.7224672001, 1.0, 1e-9);
    check_wilson(5, 10, 0.2365930905, 0.7634069095, 1e-9);
    check_wilson(81, 263, 0.2552885199, 0.3662095770, 1e-9);
    check_wilson(1, 1, 0.2065493144, 1.0, 1e-9);
    check_wilson(0, 1, 0.0, 0.7934506856, 1e-9);
    /* the ends are exact, and nothing is known from nothing */
    CHECK(tl_wilson(0, 7).lo == 0 && tl_wilson(7, 7).hi == 1);
    const tl_interval e = tl_wilson(0, 0);
    CHECK(isnan(e.value) && isnan(e.lo) && isnan(e.hi) && e.n == 0);
}

/* Gaussian AR(1) noise: x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t (unit variance) */
typedef struct {
    uint64_t s;
    double prev;
} gen;
static double unif(gen *g) {
    g->s = g->s * 6364136223846793005ull + 1442695040888963407ull;
    return ((double)(g->s >> 11) + 0.5) / 9007199254740992.0;
}
static double ar1(gen *g, double phi) {
    const double e = sqrt(-2 * log(unif(g))) * cos(6.283185307179586 * unif(g));
    return g->prev = phi * g->prev + sqrt(1 - phi * phi) * e;
}

/* per-token NLLs of a base and a new run of n tokens whose true ln PPL ratio is delta: the
 * text's difficulty (shared, strongly correlated) plus a correlated per-token difference */
static void synth(uint64_t seed, int64_t n, double delta, double *base, double *nw) {
    gen a = {seed * 2 + 1, 0}, b = {seed * 2 + 2, 0};
    for (int64_t i = 0; i < n; i++) {
        base[i] = 3 + 1.5 * ar1(&a, 0.95);
        nw[i] = base[i] + delta + 0.2 * ar1(&b, 0.8);
    }
}

static void test_block_bootstrap(void) {
    enum { N = 16384 };
    double *x = malloc(sizeof(double) * N), *y = malloc(sizeof(double) * N);
    gen g = {7, 0};
    for (int i = 0; i < N; i++) x[i] = 2 + ar1(&g, 0.5);
    /* the prefix-sum version against the definition, short inputs and odd block lengths too */
    const int64_t ns[] = {1, 2, 3, 7, 100, 1000};
    const int blocks[] = {1, 3, 64, 5000};
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
        for (size_t j = 0; j < sizeof blocks / sizeof *blocks; j++) {
            const tl_interval f = tl_block_mean(x, ns[i], blocks[j]), r = tl_block_mean_ref(x, ns[i], blocks[j]);
            CHECKF(fabs(f.value - r.value) < 1e-12 && fabs(f.lo - r.lo) < 1e-12 && fabs(f.hi - r.hi) < 1e-12 && f.n == ns[i],
                   "n %lld block %d: [%.15g, %.15g] vs reference [%.15g, %.15g]", (long long)ns[i], blocks[j], f.lo,
                   f.hi, r.lo, r.hi);
            CHECK(f.lo <= f.value && f.value <= f.hi);
        }
    /* two values, blocks of 1: a resample's mean is 2, 2.5 or 3 */
    const double two[2] = {2, 3};
    const tl_interval t = tl_block_mean(two, 2, 1);
    CHECK(t.lo == 2 && t.hi == 3 && t.value == 2.5);
    /* deterministic */
    const tl_interval d1 = tl_block_mean(x, N, TL_STATS_BLOCK), d2 = tl_block_mean(x, N, TL_STATS_BLOCK);
    CHECK(!memcmp(&d1, &d2, sizeof d1));
    CHECK(isnan(tl_block_mean(x, 0, 64).lo));
    /* an identical pair: exactly 1 */
    const tl_interval one = tl_ppl_ratio_interval(x, x, N);
    CHECK(one.value == 1 && one.lo == 1 && one.hi == 1 && one.n == N);
    /* perplexity is exp of the mean NLL, interval included */
    const tl_interval m = tl_block_mean(x, N, TL_STATS_BLOCK), p = tl_ppl_interval(x, N);
    CHECK(p.value == exp(m.value) && p.lo == exp(m.lo) && p.hi == exp(m.hi));
    /* the ratio is the paired one: exp of the mean difference */
    for (int i = 0; i < N; i++) y[i] = x[i] + 0.01 * (i % 7 - 3);
    const tl_interval rr = tl_ppl_ratio_interval(x, y, N);
    for (int i = 0; i < N; i++) y[i] -= x[i];
    const tl_interval md = tl_block_mean(y, N, TL_STATS_BLOCK);
    CHECK(fabs(rr.value - exp(md.value)) < 1e-15 && fabs(rr.lo - exp(md.lo)) < 1e-15 && fabs(rr.hi - exp(md.hi)) < 1e-15);
    free(x);
    free(y);
}

/* A known ratio: over 100 synthetic texts the paired block bootstrap's interval covers
 * exp(delta) about 95% of the time; resampling single tokens ignores the correlation and
 * covers it far less often. Pairing matters too: the difficulty of the text is 7.5 times the
 * size of the per-token difference, and the paired interval is much narrower than the two
 * PPL intervals. */
static void test_coverage(void) {
    enum { N = 2048, REPS = 100 };
    const double delta = 0.01;
    double *b = malloc(sizeof(double) * N), *w = malloc(sizeof(double) * N), *d = malloc(sizeof(double) * N);
    int cover_block = 0, cover_token = 0;
    for (int rep = 0; rep < REPS; rep++) {
        synth(100 + rep, N, delta, b, w);
        const tl_interval r = tl_ppl_ratio_interval(b, w, N);
        cover_block += r.lo <= exp(delta) && exp(delta) <= r.hi;
        for (int i = 0; i < N; i++) d[i] = w[i] - b[i];
        const tl_interval t = tl_block_mean(d, N, 1);
        cover_token += t.lo <= delta && delta <= t.hi;
        if (rep == 0) {
            const tl_interval pb = tl_ppl_interval(b, N);
            CHECKF(r.hi - r.lo < 0.1 * (pb.hi - pb.lo) / pb.value, "paired width %g vs PPL(base) relative width %g",
                   r.hi - r.lo, (pb.hi - pb.lo) / pb.value);
        }
    }
    CHECKF(cover_block >= 88 && cover_block <= 100, "block bootstrap covered the true ratio %d of %d times", cover_block,
           REPS);
    CHECKF(cover_token < 75, "token bootstrap covered the true ratio %d of %d times", cover_token, REPS);
    /* more tokens, narrower: 16x the tokens, about 1/4 of the width */
    enum { BIG = 16 * N };
    double *bb = malloc(sizeof(double) * BIG), *ww = malloc(sizeof(double) * BIG);
    synth(7, N, delta, b, w);
    synth(7, BIG, delta, bb, ww);
    const tl_interval s = tl_ppl_ratio_interval(b, w, N), l = tl_ppl_ratio_interval(bb, ww, BIG);
    CHECKF(l.hi - l.lo < 0.5 * (s.hi - s.lo), "width %g at %d tokens, %g at %d", s.hi - s.lo, N, l.hi - l.lo, BIG);
    CHECK(l.lo <= exp(delta) && exp(delta) <= l.hi);
    free(bb);
    free(ww);
    free(b);
    free(w);
    free(d);
}

static void test_scores(void) {
    /* 0/1 scores: Wilson of the count */
    const double bin[5] = {1, 0, 1, 1, 0};
    const tl_interval wb = tl_score_interval(bin, 5), w35 = tl_wilson(3, 5);
    CHECK(!memcmp(&wb, &w35, sizeof wb));
    /* a few fractional scores: Wilson of the summed score (Python: 0.25 of 1, 2.5 of 7) */
    const double one[1] = {0.25}, seven[7] = {0.5, 0.25, 0, 1, 0.75, 0, 0};
    const tl_interval a = tl_score_interval(one, 1), b = tl_score_interval(seven, 7);
    CHECKF(fabs(a.lo - 0.0146349308) < 1e-9 && fabs(a.hi - 0.8820904120) < 1e-9 && a.value == 0.25, "[%.10f, %.10f]", a.lo,
           a.hi);
    CHECKF(fabs(b.lo - 0.1180830113) < 1e-9 && fabs(b.hi - 0.6974399702) < 1e-9, "[%.10f, %.10f]", b.lo, b.hi);
    /* enough of them: the bootstrap over samples, narrower here than the Wilson bound */
    double f1[40];
    double sum = 0;
    for (int i = 0; i < 40; i++) sum += f1[i] = 0.4 + 0.05 * (i % 5);
    const tl_interval c = tl_score_interval(f1, 40), cb = tl_block_mean(f1, 40, 1);
    CHECK(!memcmp(&c, &cb, sizeof c));
    CHECK(fabs(c.value - sum / 40) < 1e-15 && c.lo < c.value && c.value < c.hi);
    const tl_interval cw = tl_wilson(20, 40);
    CHECK(c.hi - c.lo < cw.hi - cw.lo);
    CHECK(isnan(tl_score_interval(f1, 0).value));
}

static void test_verdict(void) {
    char buf[256];
    const struct {
        double v, lo, hi;
        tl_verdict want;
        const char *text;
    } cases[] = {
        {1.0005, 0.999, 1.002, TL_VERDICT_NO_LOSS, "no measurable loss (PPL ratio 1.0005, 95% interval [0.9990, 1.0020] contains 1)"},
        {1.009, 1.005, 1.013, TL_VERDICT_LOSS, "loss 0.90% [0.50%, 1.30%] (PPL ratio 1.0090, 95% interval [1.0050, 1.0130])"},
        {1.00003, 1.00001, 1.00005, TL_VERDICT_NO_LOSS, "no measurable loss (PPL ratio 1.00003, 95% interval [1.00001, 1.00005] within the 0.01% resolution)"},
        {0.985, 0.98, 0.99, TL_VERDICT_LOWER, "measured lower perplexity than base (PPL ratio 0.9850, 95% interval [0.9800, 0.9900])"},
        {0.99997, 0.99995, 0.99999, TL_VERDICT_NO_LOSS, NULL},
        {1.0001, 1.00002, 1.0003, TL_VERDICT_LOSS, NULL}, /* above 1, reaching past the resolution */
        {1, 1, 1, TL_VERDICT_NO_LOSS, "no measurable loss (PPL ratio 1.0000, 95% interval [1.0000, 1.0000] contains 1)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const tl_interval r = {cases[i].v, cases[i].lo, cases[i].hi, 1000};
        CHECKF(tl_ratio_verdict(r) == cases[i].want, "case %zu", i);
        tl_ratio_verdict_text(r, buf, sizeof buf);
        CHECKF(!cases[i].text || !strcmp(buf, cases[i].text), "case %zu: '%s'", i, buf);
        CHECKF(!strstr(buf, "gain"), "case %zu: '%s'", i, buf);
    }
    CHECK(!strcmp(tl_verdict_name(TL_VERDICT_NO_LOSS), "no_loss") && !strcmp(tl_verdict_name(TL_VERDICT_LOSS), "loss") &&
          !strcmp(tl_verdict_name(TL_VERDICT_LOWER), "lower"));
}

int main(void) {
    test_wilson();
    test_block_bootstrap();
    test_coverage();
    test_scores();
    test_verdict();
    return tl_test_done();
}
