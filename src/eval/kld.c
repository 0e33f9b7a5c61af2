/* kld.c: see kld.h. */
#define _GNU_SOURCE
#include "kld.h"
#include "perplexity.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HEADER_BYTES 64
static const char MAGIC[8] = {'T', 'L', 'K', 'L', 'D', '0', '0', '1'};

uint64_t tl_kld_hash_ids(const int32_t *ids, int64_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int64_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) {
            h ^= ((uint32_t)ids[i] >> (8 * b)) & 0xff;
            h *= 0x100000001b3ull;
        }
    return h;
}

double tl_kld_log_softmax(const float *x, int n, int32_t target, float *out) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    const double ls = log(sum), lp = target >= 0 ? (double)x[target] - mx - ls : 0.0; /* before out overwrites x */
    for (int i = 0; i < n; i++) out[i] = (float)((double)x[i] - mx - ls);
    return lp;
}

/* log of the probability outside the top-K, from float log-probs (the same arithmetic on both
 * sides, so identical inputs give identical results) */
static float log_rest(const float *top_lp, int k) {
    double s = 0;
    for (int i = 0; i < k; i++) s += exp((double)top_lp[i]);
    const double rest = 1.0 - s;
    return rest > 1e-30 ? (float)log(rest) : -INFINITY;
}

double tl_kld_row(const int32_t *top_id, const float *top_lp, int k, float lp_rest, const float *new_lp) {
    double kl = 0;
    float *q = tl_xmalloc(sizeof(float) * (size_t)(k > 0 ? k : 1));
    for (int i = 0; i < k; i++) {
        q[i] = new_lp[top_id[i]];
        kl += exp((double)top_lp[i]) * ((double)top_lp[i] - (double)q[i]);
    }
    const float q_rest = log_rest(q, k);
    free(q);
    if (isfinite(lp_rest)) {
        /* the base puts mass on the rest; the new run must too (else KL is infinite) */
        const double lq = isfinite(q_rest) ? (double)q_rest : log(1e-30);
        kl += exp((double)lp_rest) * ((double)lp_rest - lq);
    }
    return kl < 0 ? 0 : kl; /* rounding can make a zero divergence slightly negative */
}

static size_t rec_bytes(int k) { return 12 + 8 * (size_t)k; }

static void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get_u64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int write_header(tl_kld *k, tl_error *err) {
    unsigned char h[HEADER_BYTES] = {0};
    memcpy(h, MAGIC, 8);
    put_u32(h + 8, (uint32_t)k->n_vocab);
    put_u32(h + 12, (uint32_t)k->n_ctx);
    put_u32(h + 16, (uint32_t)k->top_k);
    put_u32(h + 20, (uint32_t)k->n_windows);
    put_u32(h + 24, (uint32_t)k->rows_per_window);
    put_u64(h + 32, k->n_text_tokens);
    put_u64(h + 40, k->hash);
    if (fseek(k->f, 0, SEEK_SET) || fwrite(h, 1, HEADER_BYTES, k->f) != HEADER_BYTES)
        return tl_fail(err, "%s: cannot write header: %s", k->path, strerror(errno));
    return 0;
}

static void init_common(tl_kld *k, const char *path, int n_vocab, int n_ctx, const int32_t *ids, int64_t n_ids) {
    memset(k, 0, sizeof *k);
    k->path = tl_xstrdup(path);
    k->n_vocab = n_vocab;
    k->n_ctx = n_ctx;
    k->rows_per_window = tl_ppl_rows_per_window(n_ctx);
    k->n_text_tokens = (uint64_t)n_ids;
    k->hash = tl_kld_hash_ids(ids, n_ids);
    k->order = tl_xmalloc(sizeof(int32_t) * (size_t)n_vocab);
}

int tl_kld_open_write(tl_kld *k, const char *path, int n_vocab, int n_ctx, int top_k, const int32_t *ids,
                      int64_t n_ids, tl_error *err) {
    init_common(k, path, n_vocab, n_ctx, ids, n_ids);
    if (top_k < 1 || top_k > n_vocab) top_k = TL_MIN(32, n_vocab);
    k->top_k = top_k;
    k->writing = true;
    k->rec = tl_xmalloc(rec_bytes(top_k));
    if (tl_outfile_open(&k->out, path, NULL, err)) {
        tl_fail_prefix(err, "--kl-base-write");
        tl_kld_close(k);
        return -1;
    }
    k->f = k->out.f;
    if (write_header(k, err)) {
        tl_kld_close(k);
        return -1;
    }
    return 0;
}

int tl_kld_open_read(tl_kld *k, const char *path, int n_vocab, int n_ctx, const int32_t *ids, int64_t n_ids,
                     tl_error *err) {
    init_common(k, path, n_vocab, n_ctx, ids, n_ids);
    k->f = fopen(path, "rb");
    unsigned char h[HEADER_BYTES];
    if (!k->f) {
        tl_fail(err, "--kl-base %s: %s (write one first with --kl-base-write)", path, strerror(errno));
        goto fail;
    }
    if (fread(h, 1, HEADER_BYTES, k->f) != HEADER_BYTES || memcmp(h, MAGIC, 8)) {
        tl_fail(err, "--kl-base %s: not a tailor KL baseline file (bad magic)", path);
        goto fail;
    }
    k->top_k = (int)get_u32(h + 16);
    k->n_windows = (int)get_u32(h + 20);
    const int fv = (int)get_u32(h + 8), fc = (int)get_u32(h + 12), rpw = (int)get_u32(h + 24);
    const uint64_t fn = get_u64(h + 32), fh = get_u64(h + 40);
    if (fv != n_vocab) {
        tl_fail(err, "--kl-base %s: baseline vocabulary has %d tokens, this model %d", path, fv, n_vocab);
        goto fail;
    }
    if (fc != n_ctx || rpw != k->rows_per_window) {
        tl_fail(err, "--kl-base %s: baseline was written with -c %d, this run uses -c %d", path, fc, n_ctx);
        goto fail;
    }
    if (fn != (uint64_t)n_ids || fh != k->hash) {
        tl_fail(err, "--kl-base %s: the text's tokens differ from the baseline's (%llu vs %lld tokens)", path,
                (unsigned long long)fn, (long long)n_ids);
        goto fail;
    }
    if (k->top_k < 1 || k->top_k > n_vocab) {
        tl_fail(err, "--kl-base %s: top_k %d invalid", path, k->top_k);
        goto fail;
    }
    k->rec = tl_xmalloc(rec_bytes(k->top_k));
    return 0;
fail:
    tl_kld_close(k);
    return -1;
}

/* indices of the k largest values, descending (partial selection then sort) */
static int cmp_desc_lp(const void *a, const void *b, void *ctx) {
    const float *lp = ctx;
    const float x = lp[*(const int32_t *)a], y = lp[*(const int32_t *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

static void top_k_ids(const float *lp, int n, int k, int32_t *out, int32_t *scratch) {
    /* keep a running top-k by insertion: k is small */
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m == k && lp[i] <= lp[scratch[m - 1]]) continue;
        int j = m < k ? m++ : k - 1;
        while (j > 0 && lp[scratch[j - 1]] < lp[i]) {
            scratch[j] = scratch[j - 1];
            j--;
        }
        scratch[j] = i;
    }
    qsort_r(scratch, (size_t)m, sizeof(int32_t), cmp_desc_lp, (void *)lp);
    memcpy(out, scratch, sizeof(int32_t) * (size_t)m);
}

int tl_kld_window(tl_kld *k, const float *logprobs, const int32_t *targets, int n_rows, tl_error *err) {
    const int V = k->n_vocab, K = k->top_k;
    const size_t rb = rec_bytes(K);
    unsigned char *rec = k->rec;
    if (n_rows <= 0 || k->rows_in_window + n_rows > k->rows_per_window)
        return tl_fail(err, "KL: %d more rows in a window of %d rows that has %d", n_rows, k->rows_per_window,
                       k->rows_in_window);
    if (!k->writing && k->rows_in_window == 0 && k->windows_read >= k->n_windows)
        return tl_fail(err, "--kl-base %s: holds %d windows, this run has more (use --chunks %d)", k->path,
                       k->n_windows, k->n_windows);
    for (int r = 0; r < n_rows; r++) {
        const float *lp = logprobs + (size_t)r * V;
        if (k->writing) {
            int32_t *ids = (int32_t *)(void *)(rec + 12);
            float *lps = (float *)(void *)(rec + 12 + 4 * (size_t)K);
            top_k_ids(lp, V, K, ids, k->order);
            for (int i = 0; i < K; i++) lps[i] = lp[ids[i]];
            const float lp_t = lp[targets[r]], rest = log_rest(lps, K);
            memcpy(rec, &targets[r], 4);
            memcpy(rec + 4, &lp_t, 4);
            memcpy(rec + 8, &rest, 4);
            if (fwrite(rec, 1, rb, k->f) != rb) return tl_fail(err, "%s: write failed: %s", k->out.tmp, strerror(errno));
            continue;
        }
        if (fread(rec, 1, rb, k->f) != rb) return tl_fail(err, "--kl-base %s: file truncated", k->path);
        int32_t target;
        float lp_t, rest;
        memcpy(&target, rec, 4);
        memcpy(&lp_t, rec + 4, 4);
        memcpy(&rest, rec + 8, 4);
        if (target != targets[r]) return tl_fail(err, "--kl-base %s: target token differs at row %lld", k->path, (long long)k->n_rows);
        const int32_t *ids = (const int32_t *)(void *)(rec + 12);
        const float *lps = (const float *)(void *)(rec + 12 + 4 * (size_t)K);
        for (int i = 0; i < K; i++)
            if (ids[i] < 0 || ids[i] >= V) return tl_fail(err, "--kl-base %s: token id %d out of range", k->path, ids[i]);
        const double kl = tl_kld_row(ids, lps, K, rest, lp);
        if (k->n_rows == k->rows_cap) {
            k->rows_cap = k->rows_cap ? k->rows_cap * 2 : 4096;
            const size_t bytes = sizeof(double) * (size_t)k->rows_cap;
            k->kl = tl_xrealloc(k->kl, bytes);
            k->nll_base_row = tl_xrealloc(k->nll_base_row, bytes);
            k->nll_new_row = tl_xrealloc(k->nll_new_row, bytes);
            k->dp_row = tl_xrealloc(k->dp_row, bytes);
        }
        const double dp = exp((double)lp[targets[r]]) - exp((double)lp_t);
        k->kl[k->n_rows] = kl;
        k->nll_base_row[k->n_rows] = -(double)lp_t;
        k->nll_new_row[k->n_rows] = -(double)lp[targets[r]];
        k->dp_row[k->n_rows++] = dp;
        k->sum_kl += kl;
        k->sum_kl2 += kl * kl;
        k->nll_base -= lp_t;
        k->nll_new -= lp[targets[r]];
        k->sum_absdp += fabs(dp);
        k->sum_dp2 += dp * dp;
        k->tail_base += isfinite(rest) ? exp((double)rest) : 0;
        /* argmax of the new row, first on ties (as tl_argmax) */
        int32_t best = 0;
        for (int i = 1; i < V; i++)
            if (lp[i] > lp[best]) best = i;
        k->same_top1 += best == ids[0];
    }
    k->rows_in_window += n_rows;
    if (k->rows_in_window == k->rows_per_window) { /* the window is complete */
        k->rows_in_window = 0;
        if (k->writing) k->n_windows++;
        else k->windows_read++;
    }
    return 0;
}

int tl_kld_finish(tl_kld *k, tl_error *err) {
    if (!k->writing) return 0;
    if (write_header(k, err)) return -1;
    k->f = NULL;
    return tl_outfile_commit(&k->out, err);
}

void tl_kld_close(tl_kld *k) {
    if (k->writing) tl_outfile_abort(&k->out); /* an unfinished baseline never replaces a good one */
    else if (k->f) fclose(k->f);
    free(k->path);
    free(k->order);
    free(k->rec);
    free(k->kl);
    free(k->nll_base_row);
    free(k->nll_new_row);
    free(k->dp_row);
    memset(k, 0, sizeof *k);
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile of sorted values */
static double pct(const double *v, int64_t n, double p) {
    if (n == 0) return NAN;
    int64_t i = (int64_t)ceil(p / 100.0 * (double)n) - 1;
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return v[i];
}

void tl_kld_stats_get(tl_kld *k, tl_kld_stats *st) {
    memset(st, 0, sizeof *st);
    const int64_t n = k->n_rows;
    st->n = n;
    if (n == 0) {
        st->ci_ppl_base = st->ci_ppl_new = st->ci_ratio = st->ci_ln_ratio = st->ci_kld = st->ci_abs_dp =
            st->ci_rms_dp = st->ci_same_top1 = tl_wilson(0, 0); /* NaN: nothing measured */
        return;
    }
    st->ppl_base = exp(k->nll_base / n);
    st->ppl_new = exp(k->nll_new / n);
    st->ppl_ratio = st->ppl_new / st->ppl_base;
    st->mean_ln_ratio = (k->nll_new - k->nll_base) / n;
    st->kld_mean = k->sum_kl / n;
    const double var = k->sum_kl2 / n - st->kld_mean * st->kld_mean;
    st->kld_err = n > 1 ? sqrt(var > 0 ? var : 0) / sqrt((double)n - 1) : 0;
    double *s = tl_xmalloc(sizeof(double) * (size_t)n);
    memcpy(s, k->kl, sizeof(double) * (size_t)n);
    qsort(s, (size_t)n, sizeof(double), cmp_double);
    st->kld_median = pct(s, n, 50);
    st->kld_p99 = pct(s, n, 99);
    st->kld_max = s[n - 1];
    free(s);
    st->mean_abs_dp = k->sum_absdp / n;
    st->rms_dp = sqrt(k->sum_dp2 / n);
    st->same_top1 = (double)k->same_top1 / n;
    st->tail_mass = k->tail_base / n;
    st->ci_ppl_base = tl_ppl_interval(k->nll_base_row, n);
    st->ci_ppl_new = tl_ppl_interval(k->nll_new_row, n);
    st->ci_ratio = tl_ppl_ratio_interval(k->nll_base_row, k->nll_new_row, n);
    st->ci_ln_ratio = (tl_interval){log(st->ci_ratio.value), log(st->ci_ratio.lo), log(st->ci_ratio.hi), n};
    st->ci_kld = tl_block_mean(k->kl, n, TL_STATS_BLOCK);
    double *v = tl_xmalloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) v[i] = fabs(k->dp_row[i]);
    st->ci_abs_dp = tl_block_mean(v, n, TL_STATS_BLOCK);
    for (int64_t i = 0; i < n; i++) v[i] = k->dp_row[i] * k->dp_row[i];
    const tl_interval ms = tl_block_mean(v, n, TL_STATS_BLOCK);
    st->ci_rms_dp = (tl_interval){sqrt(ms.value), sqrt(ms.lo), sqrt(ms.hi), n};
    free(v);
    st->ci_same_top1 = tl_wilson(k->same_top1, n);
}
