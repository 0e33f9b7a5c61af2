/* bench_batch.c: decode speed of the batched step (src/engine/batch.c) by the number of sequences.
 *
 *   bench_batch MODEL [THREADS] [SEQS,...] [DEPTH] [STEPS]
 *
 * For each count N: N sessions each prefilled with DEPTH tokens (default 256), then STEPS
 * (default 32) steps of one token per sequence; prints ms per step and tokens/s over all
 * sequences. N = 1 is also timed through tl_session_eval (the unbatched path). The batch prefills
 * with q8 activations, as tailor serve (BENCH_PREFILL_F32=1: the f32 tiles). */
#include "../src/engine/batch.h"
#include "../src/base/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_batch MODEL [THREADS] [SEQS,...] [DEPTH] [STEPS]\n");
        return 2;
    }
    const int threads = argc > 2 ? atoi(argv[2]) : 2;
    const char *list = argc > 3 ? argv[3] : "1,2,4,8";
    const int depth = argc > 4 ? atoi(argv[4]) : 256, steps = argc > 5 ? atoi(argv[5]) : 32;
    tl_error err = {{0}};
    tl_model *m = tl_model_load(argv[1], &err);
    if (!m) {
        fprintf(stderr, "bench_batch: %s\n", err.msg);
        return 1;
    }
    const int V = m->cfg.n_vocab, ctx = depth + steps + 1;
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)depth);
    for (int i = 0; i < depth; i++) prompt[i] = 1000 + (i * 7919) % 10000;
    float *logits = malloc(sizeof(float) * (size_t)V * 64);

    /* the unbatched path */
    tl_session *one = tl_session_new_with_policies(m, ctx, threads, 512, NULL, &err);
    if (!one || tl_session_eval(one, prompt, depth, logits, false, &err)) {
        fprintf(stderr, "bench_batch: %s\n", err.msg);
        return 1;
    }
    int32_t tok = 1000;
    double t0 = tl_time_s();
    for (int s = 0; s < steps; s++) tl_session_eval(one, &tok, 1, logits, false, &err);
    double dt = tl_time_s() - t0;
    printf("| alone (tl_session_eval) | 1 | %.2f | %.1f |\n", 1e3 * dt / steps, steps / dt);
    tl_session_free(one);

    for (const char *p = list; *p;) {
        const int n = atoi(p);
        p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p);
        if (n < 1 || n > 64) continue;
        tl_session_params sp = tl_session_default_params();
        sp.prefill_q8 = getenv("BENCH_PREFILL_F32") == NULL; /* as tailor serve */
        tl_batch *b = tl_batch_new_for(m, TL_MAX(n, 512), n, threads, &sp, &err);
        tl_session *ss[64];
        tl_batch_seq q[64];
        int32_t toks[64];
        for (int i = 0; i < n; i++) {
            ss[i] = tl_session_new_with_policies(m, ctx, 1, 1, NULL, &err);
            tl_batch_seq pre = {.s = ss[i], .tokens = prompt, .n = depth};
            if (!ss[i] || tl_batch_eval(b, &pre, 1, &err)) {
                fprintf(stderr, "bench_batch: %s\n", err.msg);
                return 1;
            }
            toks[i] = 1000 + i;
            q[i] = (tl_batch_seq){.s = ss[i], .tokens = &toks[i], .n = 1, .logits = logits + (size_t)i * V};
        }
        t0 = tl_time_s();
        for (int s = 0; s < steps; s++)
            if (tl_batch_eval(b, q, n, &err)) {
                fprintf(stderr, "bench_batch: %s\n", err.msg);
                return 1;
            }
        dt = tl_time_s() - t0;
        printf("| batched | %d | %.2f | %.1f |\n", n, 1e3 * dt / steps, n * steps / dt);
        fflush(stdout);
        for (int i = 0; i < n; i++) tl_session_free(ss[i]);
        tl_batch_free(b);
    }
    free(prompt);
    free(logits);
    tl_model_free(m);
    return 0;
}
