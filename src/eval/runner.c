/* runner.c: see runner.h. */
#include "runner.h"
#include "../../include/tailor.h"
#include "../engine/plan.h"
#include "../engine/sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The caller's, or the session's own; none with no_reuse. */
static tl_truncate_fn truncate_fn(const tl_runner *r) {
    if (r->no_reuse) return NULL;
    if (r->truncate) return r->truncate;
    return tl_session_truncate; /* stores that cannot cut make feed() recompute from scratch */
}

bool tl_runner_can_reuse(const tl_runner *r) { return truncate_fn(r) != NULL; }

void tl_eval_job_clear(tl_eval_job *j) {
    free(j->output);
    free(j->choice_ll);
    j->output = NULL;
    j->choice_ll = NULL;
}

/* One worker: a session and what it holds. */
typedef struct {
    const tl_runner *r;
    tl_eval_job *jobs;
    int first, last; /* jobs [first, last) */
    int n_ctx, n_threads;
    tl_error err;
    int rc;
    /* state */
    tl_session *s;
    int32_t *held; /* tokens in the session's cache, in order */
    int n_held;
    float *logits;
} worker;

static double log_softmax_at(const float *x, int n, int32_t id) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    return (double)x[id] - mx - log(sum);
}

/* Evaluate ids[from..n) on top of what the session holds, leaving last-token logits in
 * w->logits; reuses the longest common prefix with what is held when truncation works. */
static int feed(worker *w, const int32_t *ids, int n, int *reused) {
    tl_truncate_fn tr = truncate_fn(w->r);
    int lcp = 0;
    if (tr) {
        while (lcp < n - 1 && lcp < w->n_held && w->held[lcp] == ids[lcp]) lcp++;
        if (lcp > 0 && tr(w->s, lcp, &w->err)) lcp = 0; /* cannot cut here: recompute */
    }
    if (lcp == 0) tl_session_reset(w->s);
    *reused = lcp;
    if (tl_session_eval(w->s, ids + lcp, n - lcp, w->logits, false, &w->err)) return -1;
    memcpy(w->held, ids, sizeof(int32_t) * (size_t)n);
    w->n_held = n;
    return 0;
}

static int push(worker *w, int32_t id, float *logits, bool all) {
    if (tl_session_eval(w->s, &id, 1, logits, all, &w->err)) return -1;
    w->held[w->n_held++] = id;
    return 0;
}

static int run_generate(worker *w, tl_eval_job *j) {
    const tl_model *m = w->r->model;
    const int V = m->cfg.n_vocab;
    if (feed(w, j->ids, j->n_ids, &j->reused)) return -1;
    int32_t *gen = tl_xmalloc(sizeof(int32_t) * (size_t)(j->max_new + 1));
    int n = 0;
    char *text = NULL;
    for (;;) {
        const int32_t id = tl_argmax(w->logits, V);
        if (tl_tok_is_eog(m->tok, id)) break;
        gen[n++] = id;
        if (j->stop_newline) {
            /* a line break after some text ends a single answer */
            char piece[256];
            size_t np = tl_token_to_piece(m->tok, id, false, piece, sizeof piece);
            bool nl = memchr(piece, '\n', np < sizeof piece ? np : sizeof piece) != NULL;
            if (nl) {
                free(text);
                text = tl_detokenize_ex(m->tok, gen, (size_t)n, 0, NULL);
                const char *t = text;
                while (*t == ' ' || *t == '\n' || *t == '\t' || *t == '\r') t++;
                if (strchr(t, '\n')) break;
            }
        }
        if (n >= j->max_new || w->n_held + 1 > w->n_ctx) break;
        if (push(w, id, w->logits, false)) {
            free(gen);
            free(text);
            return -1;
        }
    }
    free(text);
    char *out = tl_detokenize_ex(m->tok, gen, (size_t)n, 0, NULL);
    if (j->stop_newline) {
        /* keep the first line that has text */
        char *t = out;
        while (*t == ' ' || *t == '\n' || *t == '\t' || *t == '\r') t++;
        char *nl = strchr(t, '\n');
        if (nl) *nl = 0;
    }
    j->output = out;
    j->n_gen = n;
    free(gen);
    return 0;
}

static int run_choice(worker *w, tl_eval_job *j) {
    const int V = w->r->model->cfg.n_vocab;
    j->choice_ll = tl_xcalloc((size_t)j->n_choices, sizeof(double));
    int maxlen = 1;
    for (int c = 0; c < j->n_choices; c++) maxlen = TL_MAX(maxlen, j->choice_len[c]);
    float *all = tl_xmalloc(sizeof(float) * (size_t)maxlen * V);
    int rc = 0;
    for (int c = 0; c < j->n_choices && rc == 0; c++) {
        int reused = 0;
        if (feed(w, j->ids, j->n_ids, &reused)) {
            rc = -1;
            break;
        }
        if (c == 0) j->reused = reused;
        const int32_t *ch = j->choice_ids[c];
        const int L = j->choice_len[c];
        double ll = L > 0 ? log_softmax_at(w->logits, V, ch[0]) : 0;
        if (L > 1) {
            /* the rest of the choice in one call, logits of every row */
            if (tl_session_eval(w->s, ch, L - 1, all, true, &w->err)) {
                rc = -1;
                break;
            }
            memcpy(w->held + w->n_held, ch, sizeof(int32_t) * (size_t)(L - 1));
            w->n_held += L - 1;
            for (int t = 1; t < L; t++) ll += log_softmax_at(all + (size_t)(t - 1) * V, V, ch[t]);
        }
        j->choice_ll[c] = ll;
    }
    free(all);
    if (rc) return -1;
    j->chosen = 0;
    for (int c = 1; c < j->n_choices; c++)
        if (j->choice_ll[c] > j->choice_ll[j->chosen]) j->chosen = c;
    return 0;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    const tl_runner *r = w->r;
    w->s = r->new_session(r->factory_ctx, w->n_ctx, w->n_threads, &w->err);
    if (!w->s) {
        w->rc = -1;
        return NULL;
    }
    w->held = tl_xmalloc(sizeof(int32_t) * (size_t)(w->n_ctx + 1));
    w->logits = tl_xmalloc(sizeof(float) * (size_t)r->model->cfg.n_vocab);
    for (int i = w->first; i < w->last; i++) {
        tl_eval_job *j = &w->jobs[i];
        const double t0 = tl_time_s();
        int rc = j->n_choices > 0 ? run_choice(w, j) : run_generate(w, j);
        j->seconds = tl_time_s() - t0;
        if (rc) {
            tl_fail_prefix(&w->err, "job %d", i);
            w->rc = -1;
            break;
        }
        tl_progress_add(r->progress, j->n_ids, 1);
    }
    free(w->held);
    free(w->logits);
    if (r->session_done && w->s) r->session_done(r->factory_ctx, w->s);
    tl_session_free(w->s);
    w->s = NULL;
    return NULL;
}

int tl_run_jobs(const tl_runner *r, tl_eval_job *jobs, int n_jobs, tl_error *err) {
    if (n_jobs <= 0) return 0;
    int P = r->n_parallel > 0 ? r->n_parallel : 1;
    if (P > n_jobs) P = n_jobs;
    const int T = r->n_threads > 0 ? r->n_threads : 1;
    /* the context every session needs: longest prompt + its continuation */
    int n_ctx = 1;
    for (int i = 0; i < n_jobs; i++) {
        int extra = jobs[i].max_new + 1;
        for (int c = 0; c < jobs[i].n_choices; c++) extra = TL_MAX(extra, jobs[i].choice_len[c] + 1);
        n_ctx = TL_MAX(n_ctx, jobs[i].n_ids + extra);
    }
    if (r->session_bytes && P > 1) {
        uint64_t budget = r->mem_budget;
        if (!budget) {
            const long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
            budget = pages > 0 && psz > 0 ? (uint64_t)((double)pages * (double)psz * 0.8) : 0;
        }
        const uint64_t one = r->session_bytes(r->factory_ctx, n_ctx);
        if (budget && one) {
            const int fit = (int)TL_MIN((uint64_t)P, TL_MAX(budget / one, 1));
            if (fit < P) {
                fprintf(stderr, "runner: %d parallel sessions of %.0f MiB do not fit in %.0f MiB: using %d\n", P,
                        one / 1048576.0, budget / 1048576.0, fit);
                P = fit;
            }
        }
    }
    worker *ws = tl_xcalloc((size_t)P, sizeof *ws);
    pthread_t *th = tl_xcalloc((size_t)P, sizeof *th);
    for (int k = 0; k < P; k++) {
        ws[k] = (worker){.r = r, .jobs = jobs, .first = (int)((int64_t)n_jobs * k / P),
                         .last = (int)((int64_t)n_jobs * (k + 1) / P), .n_ctx = n_ctx,
                         .n_threads = TL_MAX(1, T / P)};
    }
    if (P == 1) worker_main(&ws[0]);
    else {
        for (int k = 0; k < P; k++) pthread_create(&th[k], NULL, worker_main, &ws[k]);
        for (int k = 0; k < P; k++) pthread_join(th[k], NULL);
    }
    int rc = 0;
    for (int k = 0; k < P && rc == 0; k++)
        if (ws[k].rc) {
            *err = ws[k].err;
            rc = -1;
        }
    free(ws);
    free(th);
    return rc;
}

/* ---- tl_eval_run: the runner with sessions made from tl_eval_params ---- */

typedef struct {
    tl_model *m;
    const tl_eval_params *p;
} eval_ctx;

static tl_session *eval_session(void *ctx, int n_ctx, int n_threads, tl_error *err) {
    const eval_ctx *e = ctx;
    tl_session_params sp = e->p->session;
    sp.n_ctx = n_ctx;
    sp.n_threads = n_threads;
    return tl_session_new(e->m, &sp, err);
}

static void eval_session_done(void *ctx, tl_session *s) {
    const eval_ctx *e = ctx;
    if (e->p->print_mem) tl_session_print_memory(stderr, s);
}

/* KV + activation bytes of a full session of n_ctx tokens, by the planner (0 when the plan
 * does not fit: the session itself then reports why) */
static uint64_t eval_session_bytes(void *ctx, int n_ctx) {
    const eval_ctx *e = ctx;
    const tl_plan_target t = tl_plan_target_model(e->m);
    const tl_kv_plan *kv = e->p->session.kv;
    tl_mem_plan *mp = tl_xcalloc(1, sizeof *mp);
    tl_error err;
    const int fails = tl_plan_memory(&t, n_ctx, e->p->session.chunk, kv ? kv->layers : NULL, -1, mp, &err);
    const uint64_t total = fails ? 0 : mp->kv + mp->activations;
    free(mp);
    return total;
}

static tl_runner eval_runner(eval_ctx *c, tl_progress *progress) {
    return (tl_runner){.model = c->m,
                       .new_session = eval_session,
                       .session_done = eval_session_done,
                       .factory_ctx = c,
                       .n_threads = c->p->n_threads > 0 ? c->p->n_threads : tl_cpu_count(),
                       .n_parallel = c->p->n_parallel,
                       .no_reuse = c->p->no_reuse,
                       .progress = progress,
                       .session_bytes = eval_session_bytes};
}

bool tl_eval_can_reuse(const tl_eval_params *p) {
    eval_ctx c = {NULL, p};
    const tl_runner r = eval_runner(&c, NULL);
    return tl_runner_can_reuse(&r);
}

int tl_eval_run(tl_model *m, const tl_eval_params *p, const char *label, tl_eval_job *jobs, int n_jobs, double *seconds,
                tl_error *err) {
    int64_t total = 0; /* progress units: prompt tokens */
    for (int i = 0; i < n_jobs; i++) total += jobs[i].n_ids;
    tl_progress prog;
    tl_progress_init(&prog, label, total, n_jobs, p->progress);
    eval_ctx c = {m, p};
    const tl_runner r = eval_runner(&c, &prog);
    const double t0 = tl_time_s();
    const int rc = tl_run_jobs(&r, jobs, n_jobs, err);
    *seconds = tl_time_s() - t0;
    tl_progress_done(&prog);
    return rc;
}
