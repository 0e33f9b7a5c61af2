/* threads.h: a small persistent thread pool for parallel-for loops.
 *
 * tl_pool_run(pool, n, fn, ctx) calls fn(ctx, i, thread_id) for every i in [0, n) across the
 * pool's threads (the caller's thread participates as thread 0) and returns when all are done.
 * Tasks are handed out dynamically (atomic counter), so uneven tasks balance themselves. */
#ifndef TL_THREADS_H
#define TL_THREADS_H

#include <stdint.h>

typedef struct tl_pool tl_pool;
typedef void (*tl_task_fn)(void *ctx, int64_t i, int thread_id);

/* n_threads <= 0 means the number of online CPUs (tl_cpu_count, tailor.h). */
tl_pool *tl_pool_new(int n_threads);
void tl_pool_free(tl_pool *p);
int tl_pool_size(const tl_pool *p);
void tl_pool_run(tl_pool *p, int64_t n_tasks, tl_task_fn fn, void *ctx);

#endif
