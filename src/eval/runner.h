/* runner.h: run many prompts through a model -- greedy answers or multiple-choice
 * log-likelihoods -- with shared-prefix reuse and parallel sessions.
 *
 * Prefix reuse. Consecutive jobs of one worker that share a prefix (the same task-file context,
 * the same instruction) need not recompute it: the session is cut back to the common prefix
 * and only the rest is evaluated. That needs a session operation that forgets the tokens
 * after position n:
 *     int tl_session_truncate(tl_session *s, int n_tokens, tl_error *err);
 * The runner uses it (or the caller's own in tl_runner.truncate); a non-zero return
 * (e.g. a quantized store that cannot cut inside a group) falls back to a full recompute, so
 * results never depend on whether reuse happened.
 *
 * Parallelism. n_parallel workers each own one session with n_threads / n_parallel threads and
 * take a contiguous block of jobs (contiguous so that neighbours with shared prefixes land in
 * the same session). Each session holds its own KV cache: memory grows with n_parallel. */
#ifndef TL_EVAL_RUNNER_H
#define TL_EVAL_RUNNER_H

#include "../engine/session.h"
#include "report.h"

typedef int (*tl_truncate_fn)(tl_session *s, int n_tokens, tl_error *err);
typedef tl_session *(*tl_session_factory)(void *ctx, int n_ctx, int n_threads, tl_error *err);

/* tl_eval_job, one prompt and its answer: include/tailor.h (with tl_eval_run, which runs a list of
 * them on sessions made from tl_eval_params through this runner). */

typedef struct {
    tl_model *model;
    tl_session_factory new_session; /* makes a session with the user's --kv/--chunk flags */
    void *factory_ctx;
    int n_threads;       /* total; 0 = 1 */
    int n_parallel;      /* sessions; 0 = 1 */
    bool no_reuse;
    tl_truncate_fn truncate; /* NULL: tl_session_truncate */
    /* Optional: sees each worker's session after its last job, before it is freed (the CLI
     * prints --mem here, when the cache holds the longest prompt and tiers have traffic). */
    void (*session_done)(void *ctx, tl_session *s);
    tl_progress *progress;   /* may be NULL; advanced by prompt tokens */
    /* Optional: bytes one session of n_ctx tokens needs. With it, n_parallel is lowered so
     * that all sessions fit in mem_budget bytes (0: the available physical memory * 0.8). */
    uint64_t (*session_bytes)(void *ctx, int n_ctx);
    uint64_t mem_budget;
} tl_runner;

/* Run all jobs; fills their outputs. Free outputs with tl_eval_job_clear. */
int tl_run_jobs(const tl_runner *r, tl_eval_job *jobs, int n_jobs, tl_error *err);
/* Whether prefix reuse is available (a truncate function is linked in or given). */
bool tl_runner_can_reuse(const tl_runner *r);

#endif
