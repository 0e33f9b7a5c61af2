/* bench_cuda_attn.c: GPU prefill attention alone, one layer (random dense f16 cache): the
 * tensor-core kernel (prefill_tc.cu) vs the general kernel (attn.cu), per chunk size; m = 1
 * (decode) compares the tensor-core kernel with the decode kernel (decode.cu).
 *
 *   bench_cuda_attn [--history 32768] [--m 512,4096] [--reps 10] [--shape llama8b|smollm2]
 *
 * Prints ms per call and TFLOP/s two ways: "hist" counts the history part only,
 * 4*m*n_past*d*Hq (QK^T and PV), "all" adds the causal block, 4*m*(n_past + (m+1)/2)*d*Hq;
 * and the relative L2 difference of the two kernels' outputs (expect ~5e-4: f16 q and p).
 * SKIPs (exit 0) without a GPU. */
#include "../src/cuda/cuda_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    const double r = sqrt(num / (den > 0 ? den : 1));
    return r == r ? r : INFINITY;
}

int main(int argc, char **argv) {
    int history = 32768, reps = 10, ms_list[8] = {512, 4096}, n_m = 2;
    tl_kv_shape sh = {32, 8, 128, 128, 0, 0, 0.08838835f, 0};
    const char *shape = "llama8b";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--history") && i + 1 < argc) history = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) shape = argv[++i];
        else if (!strcmp(argv[i], "--m") && i + 1 < argc) {
            n_m = 0;
            for (char *t = strtok(argv[++i], ","); t && n_m < 8; t = strtok(NULL, ",")) ms_list[n_m++] = atoi(t);
        } else {
            fprintf(stderr, "usage: %s [--history N] [--m a,b] [--reps N] [--shape llama8b|smollm2]\n", argv[0]);
            return 2;
        }
    }
    if (!strcmp(shape, "smollm2")) sh = (tl_kv_shape){9, 3, 64, 64, 0, 0, 0.125f, 0};
    else if (strcmp(shape, "llama8b")) {
        fprintf(stderr, "unknown shape %s\n", shape);
        return 2;
    }
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) {
        printf("SKIP: %s\n", why);
        return 0;
    }
    if (reps < 1) reps = 1;
    printf("prefill attention, shape %s (%d q heads, %d kv heads, head_dim %d), history %d, f16 KV\n", shape, sh.n_head,
           sh.n_head_kv, sh.head_dim_k, history);
    int bad = 0;
    for (int k = 0; k < n_m; k++) {
        const int m = ms_list[k];
        const size_t n_out = (size_t)m * sh.n_head * sh.head_dim_v;
        float *o_tc = malloc(sizeof(float) * n_out), *o_gen = malloc(sizeof(float) * n_out);
        double t_tc = 0, t_gen = 0;
        tl_error err;
        /* the general kernel is ~10x slower: fewer repetitions (decode.cu is not) */
        if (tl_cuda_attn_bench(&sh, history, m, 1, reps, &t_tc, o_tc, &err) ||
            tl_cuda_attn_bench(&sh, history, m, 0, reps > 3 && m > 1 ? 3 : reps, &t_gen, o_gen, &err)) {
            fprintf(stderr, "m %d: %s\n", m, err.msg);
            free(o_tc);
            free(o_gen);
            bad = 1;
            continue;
        }
        const double fh = 4.0 * m * (double)history * sh.head_dim_k * sh.n_head;
        const double fa = 4.0 * m * ((double)history + (m + 1) / 2.0) * sh.head_dim_k * sh.n_head;
        const double r = rel_l2(o_tc, o_gen, n_out);
        /* the history's K and V (f16) are read once per call: the bound that matters at m = 1 */
        const double kv_bytes = 2.0 * sh.n_head_kv * (double)history * (sh.head_dim_k + sh.head_dim_v);
        printf("m %5d: tc %9.3f ms (%6.1f TFLOP/s hist, %6.1f all, KV %.2f TB/s)  %s %9.3f ms (%6.1f hist, %6.1f all, "
               "KV %.2f TB/s)  speedup %.2fx  rel L2 tc vs other %.2e\n",
               m, t_tc, fh / t_tc * 1e-9, fa / t_tc * 1e-9, kv_bytes / t_tc * 1e-9, m == 1 ? "decode.cu" : "general", t_gen,
               fh / t_gen * 1e-9, fa / t_gen * 1e-9, kv_bytes / t_gen * 1e-9, t_gen / t_tc, r);
        if (!(r < 3e-3)) {
            printf("  tc output differs from the general kernel's (rel %g > 3e-3)\n", r);
            bad = 1;
        }
        free(o_tc);
        free(o_gen);
    }
    return bad;
}
