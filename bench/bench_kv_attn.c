/* bench_kv_attn.c: decode attention time per token of one layer at long context, dense f16
 * (dense.c) vs the quantized store (f16 through the quantized store's own kernels, k8v8,
 * k4v4, k2v2, k2v2:kivi), with the KV bytes the step reads and the resulting GB/s.
 *
 *   bench_kv_attn [--threads 2] [--fill-threads N] [--steps 32] [--depths 4096,16384]
 *                 [--no-dense-above DEPTH]
 *
 * Quantized stores are filled with tl_kv_quant_append (no attention); dense.c has no append,
 * so it is filled by chunked prefill forward calls (O(n^2): use --fill-threads on a big
 * machine, or --no-dense-above to skip it at depths where that takes too long). The decode
 * step is timed with --threads threads (1 new token per step, depth grows by `steps`). */
#include "../src/kv/policy.h"
#include "../src/base/threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    const char *name;
    tl_kv_shape s;
} shape_case;

static uint64_t rs = 88172645463325252ULL;
static float frand(void) { /* xorshift, uniform-ish sum -> roughly normal */
    float a = 0;
    for (int i = 0; i < 4; i++) {
        rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
        a += (float)(rs >> 40) / (float)(1 << 24) - 0.5f;
    }
    return a * 1.7f;
}

static void fill_rand(float *x, size_t n, int d, bool key) {
    for (size_t i = 0; i < n; i++) x[i] = frand() + (key && (i % d) % 29 == 3 ? 6.0f : 0.0f);
}

int main(int argc, char **argv) {
    int threads = 2, fill_threads = 0, steps = 32, no_dense_above = 1 << 30;
    int depths[8] = {4096, 16384}, n_depths = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--fill-threads") && i + 1 < argc) fill_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-dense-above") && i + 1 < argc) no_dense_above = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--depths") && i + 1 < argc) {
            n_depths = 0;
            for (char *t = strtok(argv[++i], ","); t && n_depths < 8; t = strtok(NULL, ",")) depths[n_depths++] = atoi(t);
        } else {
            fprintf(stderr, "usage: %s [--threads N] [--fill-threads N] [--steps N] [--depths a,b] [--no-dense-above D]\n", argv[0]);
            return 2;
        }
    }
    if (fill_threads <= 0) fill_threads = threads;
    tl_pool *pool = tl_pool_new(threads);
    tl_pool *fpool = fill_threads == threads ? pool : tl_pool_new(fill_threads);
    const shape_case shapes[] = {
        {"llama8b (32/8/128)", {32, 8, 128, 128, 0, 0, 0.08838835f, 0}},
        {"smollm2 (9/3/64)", {9, 3, 64, 64, 0, 0, 0.125f, 0}},
    };
    const char *pols[] = {"f16", "k16v16*", "k8v8", "k4v4", "k2v2", "k2v2:kivi"};
    printf("decode attention, one layer, %d threads, %d steps (dense fill: %d threads)\n", threads, steps, fill_threads);
    printf("%-20s %6s %-10s %10s %10s %9s %8s\n", "shape", "depth", "kv", "KV MiB", "us/token", "GB/s", "vs f16");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int di = 0; di < n_depths; di++) {
            tl_kv_shape s = shapes[si].s;
            const int depth = depths[di];
            s.n_ctx = depth + steps + 8;
            const size_t kn = (size_t)s.n_head_kv * s.head_dim_k, vn = (size_t)s.n_head_kv * s.head_dim_v;
            float *K = malloc(sizeof(float) * depth * kn), *V = malloc(sizeof(float) * depth * vn);
            fill_rand(K, (size_t)depth * kn, s.head_dim_k, true);
            fill_rand(V, (size_t)depth * vn, s.head_dim_v, false);
            const size_t qn = (size_t)s.n_head * s.head_dim_k, on = (size_t)s.n_head * s.head_dim_v;
            const int chunk = 512;
            float *q = malloc(sizeof(float) * chunk * qn), *out = malloc(sizeof(float) * chunk * on);
            fill_rand(q, (size_t)chunk * qn, s.head_dim_k, false);
            double t_f16 = 0;
            for (size_t pi = 0; pi < sizeof pols / sizeof pols[0]; pi++) {
                tl_kv_layer_policy p;
                tl_error err;
                tl_kv_layer *l;
                const bool own_f16 = pols[pi][strlen(pols[pi]) - 1] == '*';
                if (own_f16) { /* both sides 16 bit, through the quantized store's kernels */
                    tl_kv_policy_default(&p, TL_KV_QUANT);
                    p.k.bits = p.v.bits = 16;
                    l = tl_kv_quant_new(&p, &s, &err);
                } else {
                    tl_kv_policy_parse(pols[pi], &p, &err);
                    if (p.kind != TL_KV_QUANT && depth > no_dense_above) {
                        printf("%-20s %6d %-10s %10s (skipped: dense fill is O(n^2); see --no-dense-above)\n", shapes[si].name,
                               depth, pols[pi], "");
                        continue;
                    }
                    l = tl_kv_layer_new(&p, &s, &err);
                }
                if (!l) {
                    fprintf(stderr, "%s: %s\n", pols[pi], err.msg);
                    return 1;
                }
                const double tf0 = tl_time_s();
                for (int t = 0; t < depth; t += chunk) {
                    const int m = TL_MIN(chunk, depth - t);
                    const int rc = p.kind == TL_KV_QUANT ? tl_kv_quant_append(l, m, K + (size_t)t * kn, V + (size_t)t * vn, &err)
                                                         : tl_kv_forward(l, fpool, m, q, K + (size_t)t * kn, V + (size_t)t * vn, out, &err);
                    if (rc) {
                        fprintf(stderr, "%s fill: %s\n", pols[pi], err.msg);
                        return 1;
                    }
                }
                const double fill_s = tl_time_s() - tf0;
                tl_kv_bytes b;
                l->ops->bytes(l, &b);
                const double bytes = (double)tl_kv_bytes_total(&b);
                /* decode: the new token's K/V are taken from the start of the history arrays */
                for (int w = 0; w < 2; w++) tl_kv_forward(l, pool, 1, q, K + (size_t)w * kn, V + (size_t)w * vn, out, &err);
                const double t0 = tl_time_s();
                for (int st = 0; st < steps; st++)
                    tl_kv_forward(l, pool, 1, q + (size_t)(st % chunk) * 0, K + (size_t)(st + 2) * kn, V + (size_t)(st + 2) * vn, out, &err);
                const double per = (tl_time_s() - t0) / steps;
                if (pi == 0 || (own_f16 && t_f16 == 0)) t_f16 = per;
                char rel[32] = "";
                if (t_f16 > 0) snprintf(rel, sizeof rel, "%.2fx", t_f16 / per);
                printf("%-20s %6d %-10s %10.2f %10.1f %9.2f %8s   (fill %.1f s)\n", shapes[si].name, depth, pols[pi],
                       bytes / (1 << 20), per * 1e6, bytes / per / 1e9, rel, fill_s);
                fflush(stdout);
                tl_kv_destroy(l);
            }
            free(K), free(V), free(q), free(out);
        }
    if (fpool != pool) tl_pool_free(fpool);
    tl_pool_free(pool);
    return 0;
}
