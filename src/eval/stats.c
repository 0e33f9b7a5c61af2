/* stats.c: see stats.h. */
#include "stats.h"
#include "tasks.h" /* tl_rng */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static tl_interval empty(int64_t n) { return (tl_interval){NAN, NAN, NAN, n}; }

/* Wilson's interval: the p whose normal test at the observed k / n is not rejected, i.e. the
 * roots of (k/n - p)^2 = z^2 p (1 - p) / n. k may be fractional (a summed [0, 1] score). */
static tl_interval wilson(double k, int64_t n) {
    if (n <= 0) return empty(n);
    const double z = TL_STATS_Z95, z2 = z * z, nn = (double)n, p = k / nn;
    const double den = 1 + z2 / nn;
    const double centre = (p + z2 / (2 * nn)) / den;
    const double half = z / den * sqrt(fmax(0, p * (1 - p)) / nn + z2 / (4 * nn * nn));
    tl_interval r = {p, centre - half, centre + half, n};
    /* the roots are exactly 0 at k = 0 and 1 at k = n; do not let rounding move them */
    r.lo = k <= 0 ? 0 : fmax(0, r.lo);
    r.hi = k >= nn ? 1 : fmin(1, r.hi);
    return r;
}

tl_interval tl_wilson(int64_t k, int64_t n) { return wilson((double)k, n); }

tl_interval tl_score_interval(const double *scores, int64_t n) {
    double sum = 0;
    bool binary = true;
    for (int64_t i = 0; i < n; i++) {
        sum += scores[i];
        binary &= scores[i] == 0 || scores[i] == 1;
    }
    if (binary) return tl_wilson((int64_t)sum, n);
    if (n < TL_STATS_MIN_BOOT_N) return wilson(sum, n);
    return tl_block_mean(scores, n, 1);
}

static int64_t block_len(int64_t n, int block) {
    int64_t L = block < 1 ? 1 : block;
    if (L > n / 2) L = n / 2;
    return L < 1 ? 1 : L;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* the 2.5% and 97.5% points of the resampled means (sorted in place) */
static void percentiles(double *means, tl_interval *r) {
    qsort(means, TL_STATS_RESAMPLES, sizeof(double), cmp_double);
    const int i = (int)(0.025 * TL_STATS_RESAMPLES);
    r->lo = means[i];
    r->hi = means[TL_STATS_RESAMPLES - 1 - i];
}

/* Each resample draws ceil(n / L) block starts s, uniform in [0, n), from one splitmix64
 * stream seeded with TL_STATS_SEED, and takes x[s], x[s+1], ... (indices mod n), L per block,
 * the last block cut so that the resample has n values. Block sums come from prefix sums. */
tl_interval tl_block_mean(const double *x, int64_t n, int block) {
    if (n <= 0) return empty(n);
    double *pre = tl_xmalloc(sizeof(double) * (size_t)(n + 1)), *means = tl_xmalloc(sizeof(double) * TL_STATS_RESAMPLES);
    pre[0] = 0;
    for (int64_t i = 0; i < n; i++) pre[i + 1] = pre[i] + x[i];
    tl_interval r = {pre[n] / (double)n, 0, 0, n};
    const int64_t L = block_len(n, block);
    tl_rng rng = {TL_STATS_SEED};
    for (int b = 0; b < TL_STATS_RESAMPLES; b++) {
        double sum = 0;
        for (int64_t got = 0; got < n; got += L) {
            const int64_t s = (int64_t)tl_rng_below(&rng, (uint64_t)n), len = TL_MIN(L, n - got);
            sum += s + len <= n ? pre[s + len] - pre[s] : (pre[n] - pre[s]) + pre[s + len - n];
        }
        means[b] = sum / (double)n;
    }
    percentiles(means, &r);
    free(pre);
    free(means);
    return r;
}

tl_interval tl_block_mean_ref(const double *x, int64_t n, int block) {
    if (n <= 0) return empty(n);
    double sum = 0, *means = tl_xmalloc(sizeof(double) * TL_STATS_RESAMPLES);
    for (int64_t i = 0; i < n; i++) sum += x[i];
    tl_interval r = {sum / (double)n, 0, 0, n};
    const int64_t L = block_len(n, block);
    int64_t *idx = tl_xmalloc(sizeof(int64_t) * (size_t)n);
    tl_rng rng = {TL_STATS_SEED};
    for (int b = 0; b < TL_STATS_RESAMPLES; b++) {
        int64_t m = 0;
        while (m < n) {
            const int64_t s = (int64_t)tl_rng_below(&rng, (uint64_t)n);
            for (int64_t j = 0; j < L && m < n; j++) idx[m++] = (s + j) % n;
        }
        double t = 0;
        for (int64_t i = 0; i < n; i++) t += x[idx[i]];
        means[b] = t / (double)n;
    }
    percentiles(means, &r);
    free(idx);
    free(means);
    return r;
}

static tl_interval interval_exp(tl_interval r) {
    r.value = exp(r.value);
    r.lo = exp(r.lo);
    r.hi = exp(r.hi);
    return r;
}

tl_interval tl_ppl_interval(const double *nll, int64_t n) { return interval_exp(tl_block_mean(nll, n, TL_STATS_BLOCK)); }

tl_interval tl_ppl_ratio_interval(const double *nll_base, const double *nll_new, int64_t n) {
    if (n <= 0) return empty(n);
    double *d = tl_xmalloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) d[i] = nll_new[i] - nll_base[i];
    const tl_interval r = interval_exp(tl_block_mean(d, n, TL_STATS_BLOCK));
    free(d);
    return r;
}

tl_verdict tl_ratio_verdict(tl_interval r) {
    if (r.lo > 1 && r.hi > 1 + TL_STATS_RATIO_RESOLUTION) return TL_VERDICT_LOSS;
    if (r.hi < 1 && r.lo < 1 - TL_STATS_RATIO_RESOLUTION) return TL_VERDICT_LOWER;
    return TL_VERDICT_NO_LOSS;
}

const char *tl_verdict_name(tl_verdict v) {
    return v == TL_VERDICT_LOSS ? "loss" : v == TL_VERDICT_LOWER ? "lower" : "no_loss";
}

const char *tl_ratio_verdict_text(tl_interval r, char *buf, size_t cap) {
    if (!(r.lo <= r.hi)) {
        snprintf(buf, cap, "no interval (%lld tokens)", (long long)r.n);
        return buf;
    }
    switch (tl_ratio_verdict(r)) {
    case TL_VERDICT_LOSS:
        snprintf(buf, cap, "loss %.2f%% [%.2f%%, %.2f%%] (PPL ratio %.4f, 95%% interval [%.4f, %.4f])",
                 100 * (r.value - 1), 100 * (r.lo - 1), 100 * (r.hi - 1), r.value, r.lo, r.hi);
        break;
    case TL_VERDICT_LOWER:
        snprintf(buf, cap, "measured lower perplexity than base (PPL ratio %.4f, 95%% interval [%.4f, %.4f])", r.value,
                 r.lo, r.hi);
        break;
    case TL_VERDICT_NO_LOSS:
        if (r.lo <= 1 && r.hi >= 1)
            snprintf(buf, cap, "no measurable loss (PPL ratio %.4f, 95%% interval [%.4f, %.4f] contains 1)", r.value, r.lo,
                     r.hi);
        else
            snprintf(buf, cap, "no measurable loss (PPL ratio %.5f, 95%% interval [%.5f, %.5f] within the %g%% resolution)",
                     r.value, r.lo, r.hi, 100 * TL_STATS_RATIO_RESOLUTION);
        break;
    }
    return buf;
}
