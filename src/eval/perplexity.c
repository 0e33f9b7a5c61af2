/* perplexity.c: see perplexity.h; and tl_perplexity_run, `tailor perplexity` without its
 * printing: a KL baseline opened, a session made, the windows run with a progress bar. */
#include "perplexity.h"
#include "kld.h"
#include "report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Rows of a piece: each row's logits become log-probabilities in place (tl_kld_log_softmax),
 * and lp[r] = log softmax(row)[target r] in double. A row per task: with a 152k vocabulary a
 * row costs ~2 ms on one core, more than a GPU's forward pass per token. */
typedef struct {
    float *rows;
    const int32_t *targets;
    double *lp;
    int V;
} lsm_ctx;

static void lsm_row(void *ctx, int64_t r, int thread_id) {
    (void)thread_id;
    const lsm_ctx *c = ctx;
    float *x = c->rows + (size_t)r * c->V;
    c->lp[r] = tl_kld_log_softmax(x, c->V, c->targets[r], x);
}

void tl_ppl_result_free(tl_ppl_result *res) {
    free(res->nll);
    res->nll = NULL;
}

int tl_perplexity(tl_session *s, const int32_t *ids, int64_t n_ids, int n_ctx, int max_windows, bool progress,
                  tl_ppl_window_fn fn, void *fn_ctx, tl_ppl_result *res, tl_error *err) {
    memset(res, 0, sizeof *res);
    const tl_model *m = s->model;
    const int V = m->cfg.n_vocab;
    if (n_ctx < 4) return tl_fail(err, "perplexity: context %d too small", n_ctx);
    if (n_ctx > s->n_ctx) return tl_fail(err, "perplexity: window %d exceeds the session context %d", n_ctx, s->n_ctx);
    int n_windows = (int)(n_ids / n_ctx);
    if (n_windows == 0)
        return tl_fail(err, "perplexity: the text has %lld tokens, fewer than one window of %d (lower -c)",
                       (long long)n_ids, n_ctx);
    if (max_windows > 0 && max_windows < n_windows) n_windows = max_windows;
    const int first = n_ctx / 2, n_rows = tl_ppl_rows_per_window(n_ctx);
    const int32_t bos = tl_tok_bos(m->tok);
    const bool add_bos = tl_tok_add_bos(m->tok) && bos >= 0;
    int32_t *win = tl_xmalloc(sizeof(int32_t) * (size_t)n_ctx);
    res->nll = tl_xmalloc(sizeof(double) * (size_t)n_windows * (size_t)n_rows);
    /* Logits of the scored half only, a piece at a time: evaluate the first half without
     * logits, then the rest in pieces of at most `piece` tokens (<= the session chunk, and at
     * most 32M floats = 128 MB of logits per piece). */
    int piece = s->chunk;
    if ((int64_t)piece * V > (32 << 20)) piece = (int)TL_MAX(1, (32 << 20) / V);
    float *logits = tl_xmalloc(sizeof(float) * (size_t)piece * V);
    double *lp = tl_xmalloc(sizeof(double) * (size_t)piece);
    tl_pool *pool = s->pool ? s->pool : tl_pool_new(1);
    double t0 = tl_time_s();
    if (progress) fprintf(stderr, "perplexity: %d windows of %d tokens, scoring %d per window\n", n_windows, n_ctx, n_rows);
    for (int w = 0; w < n_windows; w++) {
        memcpy(win, ids + (int64_t)w * n_ctx, sizeof(int32_t) * (size_t)n_ctx);
        if (add_bos) win[0] = bos;
        tl_session_reset(s);
        if (tl_session_eval(s, win, first, NULL, false, err)) goto fail;
        bool stop = false;
        /* rows r = p0 .. p0+np-1 of the piece predict win[first + r + 1]; the last token of the
         * window predicts nothing, so a piece that holds it scores one row fewer */
        for (int p0 = 0; p0 < n_ctx - first && !stop; p0 += piece) {
            const int np = TL_MIN(piece, n_ctx - first - p0);
            if (tl_session_eval(s, win + first + p0, np, logits, true, err)) goto fail;
            const int rows = TL_MIN(np, n_rows - p0);
            lsm_ctx lc = {logits, win + first + p0 + 1, lp, V};
            tl_pool_run(pool, rows, lsm_row, &lc);
            for (int r = 0; r < rows; r++) {
                res->nll_sum -= lp[r];
                res->nll2_sum += lp[r] * lp[r];
                res->nll[res->n_scored++] = -lp[r];
            }
            if (rows > 0 && fn && fn(fn_ctx, w, logits, win + first + p0 + 1, rows, V)) stop = true;
        }
        res->n_windows = w + 1;
        if (stop) break;
        if (progress) {
            const double el = tl_time_s() - t0;
            fprintf(stderr, "[%d]%.4f (%.1f s, ETA %.1f s)\n", w + 1, exp(res->nll_sum / res->n_scored), el,
                    el / (w + 1) * (n_windows - w - 1));
        }
    }
    res->seconds = tl_time_s() - t0;
    {
        const double mean = res->nll_sum / res->n_scored;
        const double var = res->nll2_sum / res->n_scored - mean * mean;
        res->ppl = exp(mean);
        res->ppl_err = res->n_scored > 1 ? res->ppl * sqrt(var > 0 ? var : 0) / sqrt((double)res->n_scored - 1) : 0.0;
    }
    free(win);
    free(logits);
    free(lp);
    if (pool != s->pool) tl_pool_free(pool);
    return 0;
fail:
    free(win);
    free(logits);
    free(lp);
    if (pool != s->pool) tl_pool_free(pool);
    tl_ppl_result_free(res);
    return -1;
}

/* ---- tl_perplexity_run ---- */

typedef struct {
    tl_kld *kld;
    tl_error *err;
    tl_progress *prog;
    int rows_per_window, rows_seen; /* of the current window */
} win_ctx;

/* A window's scored rows arrive in pieces: the bar advances by rows and counts a window when
 * its last piece is in. */
static int on_window(void *ctx, int window, const float *logprobs, const int32_t *targets, int n_rows, int n_vocab) {
    win_ctx *w = ctx;
    if (w->kld && tl_kld_window(w->kld, logprobs, targets, n_rows, w->err)) return 1;
    w->rows_seen += n_rows;
    const bool done = w->rows_seen == w->rows_per_window;
    if (done) w->rows_seen = 0;
    tl_progress_add(w->prog, n_rows, done);
    return 0;
}

void tl_ppl_report_free(tl_ppl_report *r) {
    tl_ppl_result_free(&r->res);
    tl_session_free(r->session);
    r->session = NULL;
}

int tl_perplexity_run(tl_model *m, const tl_session_params *sp, const int32_t *ids, int64_t n_ids,
                      const tl_ppl_params *p, tl_ppl_report *out, tl_error *err) {
    memset(out, 0, sizeof *out);
    tl_error e = {{0}}; /* also set by on_window, which stops the run */
    tl_kld kld = {0};
    const int n_ctx = p->n_ctx, V = m->cfg.n_vocab;
    int max_windows = p->max_windows;
    if (p->kl_write && tl_kld_open_write(&kld, p->kl_write, V, n_ctx, p->kl_top_k, ids, n_ids, &e)) goto fail;
    if (p->kl_read && tl_kld_open_read(&kld, p->kl_read, V, n_ctx, ids, n_ids, &e)) goto fail;
    out->kld = p->kl_write || p->kl_read;
    if (p->kl_read && (max_windows <= 0 || max_windows > kld.n_windows)) max_windows = kld.n_windows;
    tl_session_params ssp = *sp;
    ssp.n_ctx = n_ctx;
    if (!(out->session = tl_session_new(m, &ssp, &e))) goto fail;
    int nw = (int)(n_ids / n_ctx);
    if (max_windows > 0 && max_windows < nw) nw = max_windows;
    tl_progress prog;
    tl_progress_init(&prog, "perplexity", (int64_t)nw * tl_ppl_rows_per_window(n_ctx), nw, p->progress);
    win_ctx wc = {out->kld ? &kld : NULL, &e, &prog, tl_ppl_rows_per_window(n_ctx), 0};
    const int rc = tl_perplexity(out->session, ids, n_ids, n_ctx, max_windows, false, on_window, &wc, &out->res, &e);
    tl_progress_done(&prog);
    if (rc || e.msg[0]) goto fail;
    if (out->kld && tl_kld_finish(&kld, &e)) goto fail;
    out->kl_top_k = kld.top_k;
    if (p->kl_read) tl_kld_stats_get(&kld, &out->kl);
    if (out->kld) tl_kld_close(&kld);
    return 0;
fail:
    if (out->kld || kld.path) tl_kld_close(&kld);
    tl_ppl_report_free(out);
    if (err) *err = e;
    return -1;
}
