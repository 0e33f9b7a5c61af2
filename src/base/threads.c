/* threads.c: persistent worker threads for parallel-for.
 *
 * A job is (fn, ctx, n_tasks) plus a 64-bit atomic `cursor` = job id << 32 | next task index.
 * Threads claim tasks by compare-and-swap on the cursor. Before tl_pool_run returns it closes
 * the job: the cursor becomes id << 32 | CLOSED, an index no job reaches. A worker that read
 * the cursor of job `id` and was then preempted can therefore never claim a task of it once
 * the caller has moved on, however stale what it read of n_tasks: its compare-and-swap fails,
 * and it never reads the (fn, ctx) of a job it did not claim a task of. (Without the close, a
 * stale worker that read the next job's larger n_tasks claimed a task of the finished job and
 * ran it with the next job's fn and a dead or half-written ctx: issue 19, item 0;
 * tests/base/test_threads.c.) The caller returns when `done` reaches n_tasks, without waiting for
 * sleeping workers to check in. Waiting spins briefly (decode issues many short jobs) and then
 * yields or sleeps, so an oversubscribed machine degrades gracefully instead of burning its
 * cores on spinning.
 * Also here: tl_cpu_count (what a thread count of 0 means) and tl_memory_read_bandwidth, a
 * parallel-for that reads a large buffer (tailor bench's bandwidth figure). */
#define _GNU_SOURCE
#include "threads.h"
#include "common.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct tl_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic uint64_t cursor; /* job id << 32 | next task */
    _Atomic int64_t done;    /* tasks finished in the current job */
    /* written by the caller only while no task of any job can be claimed (between closing
     * one job and publishing the next); atomics so a stale worker's read is defined */
    _Atomic int64_t n_tasks;
    _Atomic(tl_task_fn) fn;
    _Atomic(void *) ctx;
    uint32_t job_id;
    atomic_bool quit;
};

typedef struct {
    tl_pool *pool;
    int id;
} worker_arg;

#define CLOSED 0xffffffffu /* task index of a job whose caller has returned */

static inline void cpu_relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

/* Claim and run tasks of job `id` until none are left. */
static void run_tasks(tl_pool *p, uint32_t id, int thread_id) {
    for (;;) {
        uint64_t cur = atomic_load_explicit(&p->cursor, memory_order_acquire);
        if ((uint32_t)(cur >> 32) != id) return;
        const int64_t i = (int64_t)(cur & 0xffffffffu);
        if (i >= atomic_load_explicit(&p->n_tasks, memory_order_relaxed)) return;
        if (!atomic_compare_exchange_weak_explicit(&p->cursor, &cur, cur + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        /* task i of job `id` is ours: its caller waits for it, so fn and ctx are job id's */
        tl_task_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
        fn(atomic_load_explicit(&p->ctx, memory_order_relaxed), i, thread_id);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *worker_main(void *argp) {
    worker_arg *a = argp;
    tl_pool *p = a->pool;
    const int tid = a->id;
    free(a);
    uint32_t seen = 0;
    for (;;) {
        uint32_t id;
        int spins = 0;
        while ((id = (uint32_t)(atomic_load_explicit(&p->cursor, memory_order_acquire) >> 32)) == seen &&
               !atomic_load(&p->quit)) {
            if (++spins < 4000) {
                cpu_relax();
            } else if (spins < 4100) {
                sched_yield();
            } else {
                pthread_mutex_lock(&p->mu);
                while ((uint32_t)(atomic_load(&p->cursor) >> 32) == seen && !atomic_load(&p->quit))
                    pthread_cond_wait(&p->cv, &p->mu);
                pthread_mutex_unlock(&p->mu);
            }
        }
        if (atomic_load(&p->quit)) break;
        seen = id;
        run_tasks(p, id, tid);
    }
    return NULL;
}

int tl_cpu_count(void) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

tl_pool *tl_pool_new(int n_threads) {
    if (n_threads <= 0) n_threads = tl_cpu_count();
    tl_pool *p = tl_xcalloc(1, sizeof *p);
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->cursor, CLOSED); /* job 0, closed */
    atomic_init(&p->done, 0);
    atomic_init(&p->quit, false);
    p->threads = tl_xcalloc((size_t)n_threads, sizeof(pthread_t));
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = tl_xmalloc(sizeof *a);
        a->pool = p;
        a->id = i;
        pthread_create(&p->threads[i], NULL, worker_main, a);
    }
    return p;
}

void tl_pool_free(tl_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int tl_pool_size(const tl_pool *p) { return p ? p->n_threads : 1; }

void tl_pool_run(tl_pool *p, int64_t n_tasks, tl_task_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int64_t i = 0; i < n_tasks; i++) fn(ctx, i, 0);
        return;
    }
    if (n_tasks >= (int64_t)CLOSED) { /* a caller bug: no job splits this finely */
        fprintf(stderr, "tailor: thread pool: %lld tasks in one job\n", (long long)n_tasks);
        abort();
    }
    /* the previous job is closed, so no worker can claim a task until the new id is out */
    atomic_store_explicit(&p->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&p->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&p->n_tasks, n_tasks, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    const uint32_t id = ++p->job_id;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->cursor, (uint64_t)id << 32, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, id, 0);
    int spins = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks) {
        if (++spins < 4000) cpu_relax();
        else sched_yield();
    }
    /* close the job before the fields change: every task is claimed, so the cursor holds
     * id | n_tasks, and a stale compare-and-swap against any value of job id now fails */
    atomic_store_explicit(&p->cursor, (uint64_t)id << 32 | CLOSED, memory_order_seq_cst);
}

/* tl_memory_read_bandwidth: each task sums its slice in 4 independent chains (the adds of one
 * chain would wait for each other, not for memory). */
typedef struct {
    const float *buf;
    size_t n_per;
    double *partial;
} bw_ctx;

static void bw_task(void *ctx, int64_t i, int tid) {
    (void)tid;
    bw_ctx *c = ctx;
    const float *p = c->buf + (size_t)i * c->n_per;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t j = 0; j + 4 <= c->n_per; j += 4) {
        s0 += p[j];
        s1 += p[j + 1];
        s2 += p[j + 2];
        s3 += p[j + 3];
    }
    c->partial[i] = s0 + s1 + s2 + s3;
}

double tl_memory_read_bandwidth(int n_threads) {
    const size_t bytes = (size_t)512 << 20;
    float *buf = tl_amalloc(bytes);
    if (!buf) return 0;
    memset(buf, 0, bytes);
    enum { n_tasks = 64 };
    double partial[n_tasks];
    bw_ctx c = {buf, bytes / sizeof(float) / n_tasks, partial};
    tl_pool *pool = tl_pool_new(n_threads);
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        double t = tl_time_s();
        tl_pool_run(pool, n_tasks, bw_task, &c);
        t = tl_time_s() - t;
        if (t < best) best = t;
    }
    tl_pool_free(pool);
    tl_afree(buf);
    return (double)bytes / best / 1e9;
}
