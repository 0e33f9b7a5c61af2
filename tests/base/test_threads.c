/* test_threads.c: the thread pool under stress (issue 19, item 0).
 *
 * A worker that is preempted between reading the job cursor and claiming a task must never
 * run a task of the next job with a half-published (fn, ctx), and a task must never run after
 * tl_pool_run returns. Every job here lives on the caller's stack and is wiped on return, so
 * a late or stray task sees a dead magic number (and under ASan, touches dead stack). Jobs
 * alternate between task functions and odd task counts (1, 2, 7, 13, 64 ...), pools are
 * oversubscribed (up to 8 threads on 2 cores) and, unless TL_THREADS_QUICK is set, two extra
 * processes burn the cores meanwhile, the conditions of the crash seen in the field. The
 * threaded attention of the dense and quantized stores then runs thousands of decode steps
 * with G = 7 (14 query / 2 KV heads, head dim 64, as the Qwen2.5 model of the crash) on
 * oversubscribed pools, against the same store run on one thread. */
#include "../../src/kv/kv.h"
#include "../../src/kv/policy.h"
#include "../testutil.h"
#include "../../src/base/threads.h"

#include <math.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { MAX_TASKS = 97, LIVE = 0x5eed1234, DEAD = 0x0dead000 };

typedef struct {
    uint32_t magic;
    uint64_t job;
    int64_t n;
    _Atomic int runs[MAX_TASKS];
    _Atomic int bad;
} job_t;

static void task_a(void *ctx, int64_t i, int tid) {
    job_t *j = ctx;
    if (j->magic != LIVE || i < 0 || i >= j->n) {
        atomic_fetch_add(&j->bad, 1);
        return;
    }
    atomic_fetch_add(&j->runs[i], 1);
}

/* a second function, so a stray worker pairing a new fn with an old ctx is visible too */
static void task_b(void *ctx, int64_t i, int tid) {
    job_t *j = ctx;
    if (j->magic != LIVE || i < 0 || i >= j->n) {
        atomic_fetch_add(&j->bad, 1);
        return;
    }
    atomic_fetch_add(&j->runs[i], 1);
    if ((i & 3) == 0) { /* uneven tasks: some spin a little */
        volatile int s = 0;
        for (int k = 0; k < 200; k++) s += k;
    }
}

static int run_one(tl_pool *p, uint64_t seq, int64_t n) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.magic = LIVE;
    j.job = seq;
    j.n = n;
    tl_pool_run(p, n, (seq & 1) ? task_b : task_a, &j);
    int errors = atomic_load(&j.bad);
    for (int64_t i = 0; i < n; i++)
        if (atomic_load(&j.runs[i]) != 1) errors++;
    /* a task still running now would write into a dead job: make it visible */
    j.magic = DEAD;
    memset((void *)j.runs, 0xff, sizeof j.runs);
    return errors;
}

static int stress(int n_threads, long n_jobs) {
    static const int64_t shapes[] = {1, 2, 7, 3, 13, 64, 2, 97, 5, 7, 1, 31};
    const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
    tl_pool *p = tl_pool_new(n_threads);
    int errors = 0;
    for (long s = 0; s < n_jobs; s++) errors += run_one(p, (uint64_t)s, shapes[s % n_shapes]);
    tl_pool_free(p);
    return errors;
}

static pid_t burner(void) {
    pid_t pid = fork();
    if (pid == 0) {
        volatile uint64_t x = 0;
        for (;;) x++;
    }
    return pid;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* Prefill 37 tokens then decode `steps` tokens on a pool of n_threads and on no pool. The split
 * of the history into tasks differs, so the outputs agree to float rounding for dense stores
 * (1e-5) and, for quantized ones, to the int8 rounding of each split's softmax weights in the
 * integer value kernels (|v| <= 1, weights rounded to 1/254 of a split's largest: 2e-3; 1.5e-4
 * seen). A stray task of another job gives garbage or NaN, far past either. */
static void attention_stress(const char *spec, int n_threads, int steps) {
    const tl_kv_shape sh = {.n_head = 14, .n_head_kv = 2, .head_dim_k = 64, .head_dim_v = 64,
                            .n_ctx = 37 + steps, .window = 0, .scale = 0.125f};
    tl_kv_layer_policy pol;
    tl_error err = {0};
    if (tl_kv_policy_parse(spec, &pol, &err) != 0) {
        CHECKF(0, "%s: %s", spec, err.msg);
        return;
    }
    tl_kv_layer *a = tl_kv_layer_new(&pol, &sh, &err), *b = tl_kv_layer_new(&pol, &sh, &err);
    CHECKF(a && b, "%s: %s", spec, err.msg);
    if (!a || !b) return;
    tl_pool *pool = tl_pool_new(n_threads);
    const int qw = sh.n_head * sh.head_dim_k, kw = sh.n_head_kv * sh.head_dim_k, n0 = 37;
    float *q = malloc(sizeof(float) * n0 * qw), *k = malloc(sizeof(float) * n0 * kw);
    float *v = malloc(sizeof(float) * n0 * kw), *o1 = malloc(sizeof(float) * n0 * qw);
    float *o2 = malloc(sizeof(float) * n0 * qw);
    double worst = 0;
    int failed = 0;
    for (int step = 0; step <= steps && !failed; step++) {
        const int n = step == 0 ? n0 : 1;
        for (int i = 0; i < n * qw; i++) q[i] = 2 * frand();
        for (int i = 0; i < n * kw; i++) k[i] = 2 * frand(), v[i] = frand();
        failed |= tl_kv_forward(a, pool, n, q, k, v, o1, &err) != 0;
        failed |= tl_kv_forward(b, NULL, n, q, k, v, o2, &err) != 0;
        for (int i = 0; i < n * qw; i++) {
            double d = fabs((double)o1[i] - o2[i]);
            if (!(d <= worst)) worst = d; /* NaN-safe: a NaN becomes the worst */
        }
    }
    CHECKF(!failed, "%s: %s", spec, err.msg);
    const double tol = pol.kind == TL_KV_QUANT ? 2e-3 : 1e-5;
    CHECKF(worst < tol, "%s, %d threads, %d decode steps: max |threaded - serial| %.3g", spec, n_threads,
           steps, worst);
    free(q), free(k), free(v), free(o1), free(o2);
    tl_pool_free(pool);
    tl_kv_destroy(a);
    tl_kv_destroy(b);
}

int main(void) {
    const bool quick = getenv("TL_THREADS_QUICK") != NULL;
    pid_t burners[2] = {-1, -1};
    if (!quick)
        for (int i = 0; i < 2; i++) burners[i] = burner();

    const long jobs = quick ? 20000 : 200000;
    static const int threads[] = {2, 3, 7, 8};
    for (int t = 0; t < 4; t++) {
        int e = stress(threads[t], jobs);
        CHECKF(e == 0, "%d threads, %ld jobs: %d tasks ran twice, never, late or with the wrong job", threads[t],
               jobs, e);
    }

    const int steps = quick ? 300 : 1500;
    static const char *specs[] = {"f16", "f32", "k4v4", "k2v2:kivi", "k8v8:r32"};
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 5; i++) attention_stress(specs[i], threads[t + 1], steps);

    /* a pool of one, n_threads <= 0 (the CPU count), and 0 / negative task counts */
    tl_pool *p = tl_pool_new(1);
    CHECK(tl_pool_size(p) == 1);
    CHECK(run_one(p, 0, 7) == 0);
    tl_pool_free(p);
    p = tl_pool_new(0);
    CHECK(tl_pool_size(p) >= 1);
    job_t j;
    memset(&j, 0, sizeof j);
    tl_pool_run(p, 0, task_a, &j);
    tl_pool_run(p, -3, task_a, &j);
    CHECK(atomic_load(&j.bad) == 0);
    tl_pool_free(p);
    tl_pool_free(NULL);

    for (int i = 0; i < 2; i++)
        if (burners[i] > 0) {
            kill(burners[i], SIGKILL);
            waitpid(burners[i], NULL, 0);
        }
    return tl_test_done();
}
