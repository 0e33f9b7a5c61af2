/* bench_matmul.c: tl_matmul throughput per weight type and shape, SIMD vs scalar reference.
 *
 *   bench_matmul [-t threads] [-s seconds_per_case] [-T types,comma,sep] [-n n_tok,...] [--no-ref]
 *
 * Shapes are n_in x n_out of the models we run (SmolLM2-135M: 576/1536/49152, the 31M test
 * model: 512/1408 and its 8192-row output). w4g128 (groups of 128) runs only where 128
 * divides n_in. GFLOP/s counts 2*n_in*n_out*n_tok; GB/s is weight bytes per call / time
 * (each call streams the weights once). Each case repeats for about -s seconds and reports
 * the best run. The scalar reference is slow, so for many tokens it is timed on at most 128
 * output rows (marked '*'); rates are per row and so comparable. On a CPU with AVX-512
 * VNNI the "simd" columns use those kernels and an "avx2" column times the same call with
 * them switched off (tl_quants_disable_avx512). */
#include "../src/cpu/quants.h"
#include "../src/base/common.h"
#include "../src/base/threads.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 88172645463325252ULL;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0) * 2 - 1);
}

/* best seconds per call over repeats filling ~budget seconds (at least 2 calls) */
static double time_matmul(tl_pool *pool, tl_type t, const void *W, int64_t n_in, int64_t n_out,
                          const float *X, int64_t n_tok, float *Y, void *scratch, double budget) {
    double best = 1e30, start = tl_time_s();
    int reps = 0;
    do {
        double t0 = tl_time_s();
        tl_matmul(pool, t, W, n_in, n_out, X, n_tok, Y, n_out, scratch);
        double dt = tl_time_s() - t0;
        if (dt < best) best = dt;
        reps++;
    } while (reps < 2 || (tl_time_s() - start < budget && reps < 1000));
    return best;
}

int main(int argc, char **argv) {
    int n_threads = 2;
    double budget = 0.3;
    bool with_ref = true;
    const char *type_list = "f32,f16,bf16,q4_0,q4_1,q5_0,q5_1,q8_0,q4_K,q5_K,q6_K,w4g128";
    const char *tok_list = "1,512";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc) budget = atof(argv[++i]);
        else if (!strcmp(argv[i], "-T") && i + 1 < argc) type_list = argv[++i];
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) tok_list = argv[++i];
        else if (!strcmp(argv[i], "--no-ref")) with_ref = false;
        else {
            fprintf(stderr, "usage: %s [-t threads] [-s seconds] [-T types] [-n toks] [--no-ref]\n", argv[0]);
            return 2;
        }
    }
    static const int64_t shapes[][2] = {{576, 576}, {576, 1536}, {1536, 576}, {512, 1408}, {1408, 512}, {576, 49152},
                                        {2048, 640}, /* gemma3-270m ffn_down, for the K-quants */
                                        {512, 8192}}; /* the test model's output projection */
    const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
    int64_t toks[8];
    int n_toks = 0;
    for (const char *p = tok_list; *p && n_toks < 8;) {
        toks[n_toks++] = atoll(p);
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    tl_pool *pool = tl_pool_new(n_threads);
    tl_cpu_features f = tl_cpu_detect();
    const bool vnni512 = f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
    printf("threads %d, avx2 %d fma %d f16c %d avx512-vnni %d\n", tl_pool_size(pool), f.avx2, f.fma, f.f16c, vnni512);
    printf("%-5s %12s %5s | %10s %8s | %10s %8s | %10s %8s | %7s\n", "type", "n_in x n_out", "n_tok", "simd GF/s",
           "GB/s", "avx2 GF/s", "GB/s", "ref GF/s", "GB/s", "speedup");

    char types_buf[256];
    snprintf(types_buf, sizeof types_buf, "%s", type_list);
    for (char *save = NULL, *name = strtok_r(types_buf, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        int t = -1;
        for (int id = 0; id < TL_TYPE_COUNT; id++)
            if (tl_type_info(id) && !strcmp(tl_type_name(id), name)) t = id;
        if (t < 0 || !tl_type_info(t)->supported) {
            fprintf(stderr, "skipping unknown or unsupported type %s\n", name);
            continue;
        }
        for (int s = 0; s < n_shapes; s++) {
            const int64_t n_in = shapes[s][0], n_out = shapes[s][1];
            const size_t rs = tl_row_size((tl_type)t, n_in);
            if (!rs) continue; /* n_in not a multiple of the block size (K-quants 256, w4g128 128) */
            /* quantize 16 random rows and tile them: quantizing 28M values would dominate */
            uint8_t *W = tl_amalloc(rs * n_out);
            float *row = tl_xmalloc(n_in * sizeof(float));
            for (int r = 0; r < 16 && r < n_out; r++) {
                for (int64_t i = 0; i < n_in; i++) row[i] = frand();
                tl_quantize_row((tl_type)t, row, W + r * rs, n_in);
            }
            for (int64_t r = 16; r < n_out; r++) memcpy(W + r * rs, W + (r % 16) * rs, rs);
            free(row);
            for (int k = 0; k < n_toks; k++) {
                const int64_t n_tok = toks[k];
                float *X = tl_xmalloc(n_tok * n_in * sizeof(float));
                for (int64_t i = 0; i < n_tok * n_in; i++) X[i] = frand();
                float *Y = tl_xmalloc(n_tok * n_out * sizeof(float));
                void *scratch = tl_xmalloc(tl_matmul_scratch_size((tl_type)t, n_in, n_tok) + 1);
                double flops = 2.0 * n_in * n_out * n_tok;
                double ts = time_matmul(pool, (tl_type)t, W, n_in, n_out, X, n_tok, Y, scratch, budget);
                char a2_gf[32] = "-", a2_gb[32] = "-";
                if (vnni512) {
                    tl_quants_disable_avx512(true);
                    double ta = time_matmul(pool, (tl_type)t, W, n_in, n_out, X, n_tok, Y, scratch, budget);
                    tl_quants_disable_avx512(false);
                    snprintf(a2_gf, sizeof a2_gf, "%.2f", flops / ta * 1e-9);
                    snprintf(a2_gb, sizeof a2_gb, "%.2f", rs * n_out / ta * 1e-9);
                }
                char ref_gf[32] = "-", ref_gb[32] = "-", speed[32] = "-";
                if (with_ref) {
                    int64_t rows = n_tok > 1 ? TL_MIN(n_out, 128) : n_out;
                    tl_quants_force_scalar(true);
                    double tr = time_matmul(pool, (tl_type)t, W, n_in, rows, X, n_tok, Y, scratch, budget);
                    tl_quants_force_scalar(false);
                    double scale = (double)rows / n_out;
                    snprintf(ref_gf, sizeof ref_gf, "%.2f%s", flops * scale / tr * 1e-9, rows < n_out ? "*" : "");
                    snprintf(ref_gb, sizeof ref_gb, "%.2f", rs * rows / tr * 1e-9);
                    snprintf(speed, sizeof speed, "%.1fx", tr / scale / ts);
                }
                char shape[32];
                snprintf(shape, sizeof shape, "%lldx%lld", (long long)n_in, (long long)n_out);
                printf("%-5s %12s %5lld | %10.2f %8.2f | %10s %8s | %10s %8s | %7s\n", tl_type_name(t), shape,
                       (long long)n_tok, flops / ts * 1e-9, rs * n_out / ts * 1e-9, a2_gf, a2_gb, ref_gf, ref_gb, speed);
                fflush(stdout);
                free(X);
                free(Y);
                free(scratch);
            }
            tl_afree(W);
        }
    }
    tl_pool_free(pool);
    return 0;
}
