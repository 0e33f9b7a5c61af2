/* threads.c: persistent worker threads; workers spin briefly before sleeping so that the
 * many short parallel regions of a decode step do not pay a futex wake-up each. */
#define _GNU_SOURCE
#include "threads.h"
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include <sched.h>

struct tl_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint_fast64_t generation; /* bumped for each job */
    atomic_int n_active;             /* workers still inside the current job */
    atomic_int_fast64_t next;        /* next task index */
    int64_t n_tasks;
    tl_task_fn fn;
    void *ctx;
    atomic_bool quit;
};

typedef struct {
    tl_pool *pool;
    int id;
} worker_arg;

static void run_tasks(tl_pool *p, int id) {
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n_tasks) break;
        p->fn(p->ctx, i, id);
    }
}

static void *worker_main(void *argp) {
    worker_arg *a = argp;
    tl_pool *p = a->pool;
    int id = a->id;
    free(a);
    uint64_t seen = 0;
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
               !atomic_load(&p->quit)) {
            if (++spins < 20000) {
#if defined(__x86_64__)
                __builtin_ia32_pause();
#endif
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->quit))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) break;
        seen = g;
        run_tasks(p, id);
        atomic_fetch_sub_explicit(&p->n_active, 1, memory_order_acq_rel);
    }
    return NULL;
}

tl_pool *tl_pool_new(int n_threads) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    tl_pool *p = tl_xcalloc(1, sizeof *p);
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->n_active, 0);
    atomic_init(&p->next, 0);
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
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->n_active, p->n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    while (atomic_load_explicit(&p->n_active, memory_order_acquire) > 0) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
    }
}
