/* tailor bench: llama-bench-like prefill (pp) and decode (tg) speed at cache depths.
 *
 * For each combination of threads x KV policy x depth x test: a fresh cache is filled with
 * `depth` tokens (untimed), then either `p` prompt tokens are processed in chunks (pp) or `n`
 * tokens are decoded one at a time (tg), timed; repeated -r times (the fill is redone each
 * repetition so every repetition measures the same state). Tokens are pseudo-random ids.
 * Besides tokens/s, decode rows report ms/token, the bytes one decode step must read
 * (weights as the backend holds them: the CPU's packed copies, the GPU's blocks or widened f16;
 * one row of an untied embedding; + KV held) and that as a share of the measured memory bandwidth.
 * With --device cuda the depth is filled, by default, with random K/V rows appended through the GPU cache's
 * own append/quantize path (tl_session_fill_random: a 128k-token prefill would take minutes and
 * decode cost does not depend on the values), and the share is of --bw, default the card's
 * peak from its memory clock and bus width (H100 SXM 3352 GB/s, H200 4800), named in the
 * output: bytes read per token / peak is the floor. */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LIST 32

typedef struct {
    int n;
    int v[MAX_LIST];
} int_list;

typedef struct {
    int n;
    char *v[MAX_LIST];
} str_list;

static int parse_int_list(const char *flag, const char *s, int_list *l) {
    return (l->n = tl_parse_int_list(flag, s, 0, l->v, MAX_LIST)) < 0 ? -1 : 0;
}

static int parse_str_list(const char *s, str_list *l) {
    l->n = 0;
    char *dup = tl_xstrdup(s), *save = NULL;
    for (char *tok = strtok_r(dup, ",", &save); tok && l->n < MAX_LIST; tok = strtok_r(NULL, ",", &save))
        l->v[l->n++] = tl_xstrdup(tok);
    free(dup);
    return 0;
}

typedef struct {
    const char *test; /* "pp512" style */
    int n_prompt, n_gen, n_depth, n_threads;
    const char *kv;
    double avg_ts, std_ts, avg_ns, std_ns;
    uint64_t bytes_per_token; /* decode: weights + KV read per step */
    double bw_pct;
    uint64_t kv_bytes;
} bench_row;

/* random_fill: the GPU cache takes `depth` random K/V rows (marked "d<N>*" in the table) instead
 * of a prefill of `depth` tokens (llama-bench's way, --fill prefill) */
static int run_one(tl_model *m, tl_cli_common *c, bench_row *row, int reps, double bw_gbs, bool random_fill,
                   tl_error *err) {
    c->n_ctx = row->n_depth + row->n_prompt + row->n_gen + 1;
    tl_session *s = tl_cli_session(m, c, err);
    if (!s) return -1;
    row->n_threads = tl_session_n_threads(s);
    const int V = tl_model_n_vocab(m);
    const int total = row->n_depth + row->n_prompt + row->n_gen;
    int32_t *toks = tl_xmalloc(sizeof(int32_t) * (size_t)(total + 1));
    uint64_t x = 0x1234567;
    for (int i = 0; i < total + 1; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((x >> 33) % (uint64_t)V);
    }
    float *logits = tl_xmalloc(sizeof(float) * (size_t)V);
    double sum = 0, sum2 = 0, sum_ns = 0, sum2_ns = 0;
    int rc = 0;
    /* GPU: one untimed step first (module load, cuBLAS heuristics, attention set-up) */
    if (tl_session_on_gpu(s) && (rc = tl_session_eval(s, toks, TL_MIN(total, row->n_prompt > 0 ? TL_MIN(row->n_prompt, tl_session_chunk(s)) : 1), logits, false, err)))
        reps = 0;
    for (int r = 0; r < reps && !rc; r++) {
        tl_session_reset(s);
        if (row->n_depth > 0 && tl_session_on_gpu(s) && random_fill) {
            if (tl_session_fill_random(s, row->n_depth, 0x5eed + (uint64_t)r, err)) {
                rc = -1;
                break;
            }
        } else if (row->n_depth > 0 && tl_session_eval(s, toks, row->n_depth, NULL, false, err)) {
            rc = -1;
            break;
        }
        double t0 = tl_time_s();
        int n_done = 0;
        if (row->n_prompt > 0) {
            rc = tl_session_eval(s, toks + row->n_depth, row->n_prompt, logits, false, err);
            n_done = row->n_prompt;
        } else {
            for (int i = 0; i < row->n_gen && !rc; i++) rc = tl_session_eval(s, toks + row->n_depth + i, 1, logits, false, err);
            n_done = row->n_gen;
        }
        const double dt = tl_time_s() - t0;
        const double ts = n_done / dt;
        sum += ts;
        sum2 += ts * ts;
        sum_ns += dt * 1e9;
        sum2_ns += dt * 1e9 * dt * 1e9;
        fprintf(stderr, ".");
    }
    if (!rc) {
        row->avg_ts = sum / reps;
        row->std_ts = reps > 1 ? sqrt(fmax(0, (sum2 - sum * sum / reps) / (reps - 1))) : 0;
        row->avg_ns = sum_ns / reps;
        row->std_ns = reps > 1 ? sqrt(fmax(0, (sum2_ns - sum_ns * sum_ns / reps) / (reps - 1))) : 0;
        tl_session_mem mem;
        tl_session_memory(s, &mem);
        row->kv_bytes = mem.kv;
        /* a decode step reads every weight once as the backend holds it (the CPU's packed copies,
         * the GPU's blocks or widened f16; the embedding only one row) and the KV held */
        row->bytes_per_token = mem.weights_read + mem.kv;
        if (row->n_gen > 0 && bw_gbs > 0)
            row->bw_pct = 100.0 * (row->bytes_per_token / (row->avg_ns / 1e9 / row->n_gen)) / (bw_gbs * 1e9);
        if (tl_session_on_gpu(s)) {
            fprintf(stderr, "\n");
            tl_session_print_memory(stderr, s);
        }
    }
    free(logits);
    free(toks);
    tl_session_free(s);
    return rc;
}

static void help(void) {
    printf("usage: tailor bench -m MODEL [-p 512] [-n 128] [-d 0,4096] [-r 5] [-t THREADS,...] [--kv f16,k8v8,...]\n"
           "       [--chunk N] [-o md|csv|json|jsonl] [--bw GB/s] [--device cpu|cuda] [--cuda-opt LIST] [--prefill q8|f32]\n"
           "  --prefill q8 (default, as generate and serve): prompt chunks round their activations to q8 for the\n"
           "  integer kernels; f32: chunks of 32+ tokens widen the weights to f32 (perplexity's default).\n"
           "  pp<N>: prefill N tokens after a cache of -d tokens; tg<N>: decode N tokens one at a time.\n"
           "  Lists are comma-separated. Decode rows add ms/token, bytes read per token (weights + KV)\n"
           "  and that as %% of the memory bandwidth (measured at start, or --bw; on a GPU the card's peak).\n"
           "  --fill random|prefill: how a GPU cache reaches depth -d: random K/V rows through the cache's own\n"
           "  append (default, seconds at 128k; marked d<N>* in the table) or a real prefill of -d tokens\n"
           "  (llama-bench's way). The CPU always prefills.\n");
    tl_cli_device_help(stdout);
}

int tl_cmd_bench(int argc, char **argv) {
    tl_cli_common c;
    tl_cli_common_init(&c);
    int_list pp = {1, {512}}, tg = {1, {128}}, depth = {1, {0}}, threads = {1, {0}};
    str_list kvs = {0};
    int reps = 5;
    const char *fmt = "md";
    float bw_arg = 0;
    bool random_fill = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help();
            return 0;
        }
        if (!strcmp(a, "-p") || !strcmp(a, "-n") || !strcmp(a, "-d") || !strcmp(a, "-t") || !strcmp(a, "--kv") ||
            !strcmp(a, "-r") || !strcmp(a, "-o") || !strcmp(a, "--bw") || !strcmp(a, "--n-depth") || !strcmp(a, "--fill")) {
            if (!(v = tl_cli_value(argc, argv, &i))) return 2;
            int bad = 0;
            if (!strcmp(a, "-p")) bad = parse_int_list(a, v, &pp);
            else if (!strcmp(a, "-n")) bad = parse_int_list(a, v, &tg);
            else if (!strcmp(a, "-d") || !strcmp(a, "--n-depth")) bad = parse_int_list(a, v, &depth);
            else if (!strcmp(a, "-t")) bad = parse_int_list(a, v, &threads);
            else if (!strcmp(a, "--kv")) bad = parse_str_list(v, &kvs);
            else if (!strcmp(a, "-r")) bad = tl_cli_int(a, v, 1, 1000, &reps);
            else if (!strcmp(a, "--bw")) bad = tl_cli_float(a, v, &bw_arg);
            else if (!strcmp(a, "--fill")) {
                random_fill = !strcmp(v, "random");
                if (!random_fill && strcmp(v, "prefill")) {
                    fprintf(stderr, "tailor bench: --fill: '%s' is not one of random, prefill\n", v);
                    bad = 1;
                }
            } else {
                fmt = v;
                if (strcmp(fmt, "md") && strcmp(fmt, "csv") && strcmp(fmt, "json") && strcmp(fmt, "jsonl")) {
                    fprintf(stderr, "tailor bench: -o: '%s' is not one of md, csv, json, jsonl\n", fmt);
                    bad = 1;
                }
            }
            if (bad) return 2;
            continue;
        }
        int r = tl_cli_common_arg(&c, argc, argv, &i);
        if (r < 0) return 2;
        if (!r) {
            fprintf(stderr, "tailor bench: unknown flag '%s' (see -h)\n", a);
            return 2;
        }
    }
    if (!c.model) {
        fprintf(stderr, "tailor bench: -m MODEL is required\n");
        return 2;
    }
    if (c.prefill < 0) c.prefill = 1; /* as generate and serve */
    if (kvs.n == 0) kvs.v[kvs.n++] = tl_xstrdup("f16");
    tl_error err = {{0}};
    tl_model *m = tl_model_load(c.model, &err);
    if (!m) {
        fprintf(stderr, "tailor bench: %s\n", err.msg);
        return 1;
    }
    double bw = bw_arg;
    const bool gpu = c.device && !strcmp(c.device, "cuda");
    char card[128] = "";
    if (bw <= 0 && gpu && !tl_gpu_bandwidth(card, sizeof card, &bw)) {
        fprintf(stderr, "tailor bench: --device cuda: %s\n", card);
        tl_model_free(m);
        return 1;
    }
    if (bw <= 0) bw = tl_memory_read_bandwidth(threads.v[0]);
    const char *arch = tl_model_arch(m);
    const uint64_t weight_bytes = tl_model_weight_bytes(m);
    fprintf(stderr, "model %s: %s, %.2f MiB of weights; memory read bandwidth %.1f GB/s%s%s%s\n", c.model, arch,
            weight_bytes / 1048576.0, bw, card[0] ? " (peak of the " : "", card,
            !gpu ? "" : !random_fill ? (card[0] ? ")" : "") : card[0] ? "; d<N>*: depth filled with random K/V)" : " (d<N>*: depth filled with random K/V)");

    const int max_rows = threads.n * kvs.n * depth.n * (pp.n + tg.n);
    bench_row *rows = tl_xcalloc((size_t)max_rows, sizeof *rows);
    int n_rows = 0, rc = 0;
    char names[MAX_LIST * 2][32];
    for (int ti = 0; ti < threads.n && !rc; ti++)
        for (int ki = 0; ki < kvs.n && !rc; ki++)
            for (int di = 0; di < depth.n && !rc; di++)
                for (int k = 0; k < pp.n + tg.n && !rc; k++) {
                    bench_row *row = &rows[n_rows];
                    const bool is_pp = k < pp.n;
                    row->n_prompt = is_pp ? pp.v[k] : 0;
                    row->n_gen = is_pp ? 0 : tg.v[k - pp.n];
                    if (row->n_prompt + row->n_gen == 0) continue;
                    row->n_depth = depth.v[di];
                    row->kv = kvs.v[ki];
                    snprintf(names[k], sizeof names[k], "%s%d", is_pp ? "pp" : "tg", is_pp ? row->n_prompt : row->n_gen);
                    row->test = names[k];
                    c.n_threads = threads.v[ti];
                    c.kv = kvs.v[ki];
                    fprintf(stderr, "%s @ d%d, kv %s, %d threads ", row->test, row->n_depth, row->kv, c.n_threads);
                    if (run_one(m, &c, row, reps, bw, random_fill, &err)) {
                        fprintf(stderr, "\ntailor bench: %s\n", err.msg);
                        rc = 1;
                        break;
                    }
                    fprintf(stderr, " %.2f t/s\n", row->avg_ts);
                    n_rows++;
                }

    const double wmib = weight_bytes / 1048576.0;
    if (!strcmp(fmt, "md")) {
        printf("| model | size | threads | type_kv | test | t/s | ms/token | bytes/token | %% of %.0f GB/s |\n", bw);
        printf("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |\n");
        for (int i = 0; i < n_rows; i++) {
            bench_row *r = &rows[i];
            char test[64];
            if (r->n_depth) snprintf(test, sizeof test, "%s @ d%d%s", r->test, r->n_depth, gpu && random_fill ? "*" : "");
            else snprintf(test, sizeof test, "%s", r->test);
            const int n = r->n_prompt + r->n_gen;
            printf("| %s | %.2f MiB | %d | %s | %s | %.2f ± %.2f | %.3f |", arch, wmib, r->n_threads, r->kv,
                   test, r->avg_ts, r->std_ts, r->avg_ns / 1e6 / n);
            if (r->n_gen) printf(" %.2f MB | %.1f |\n", r->bytes_per_token / 1e6, r->bw_pct);
            else printf(" | |\n");
        }
    } else if (!strcmp(fmt, "csv")) {
        const char *fill = gpu && random_fill ? "random" : "prefill";
        printf("model_filename,model_type,model_size,n_threads,type_k,type_v,n_prompt,n_gen,n_depth,avg_ns,stddev_ns,avg_ts,stddev_ts,bytes_per_token,bw_pct,depth_fill\n");
        for (int i = 0; i < n_rows; i++) {
            bench_row *r = &rows[i];
            printf("\"%s\",%s,%llu,%d,%s,%s,%d,%d,%d,%.0f,%.0f,%.6f,%.6f,%llu,%.2f,%s\n", c.model, arch,
                   (unsigned long long)weight_bytes, r->n_threads, r->kv, r->kv, r->n_prompt, r->n_gen, r->n_depth,
                   r->avg_ns, r->std_ns, r->avg_ts, r->std_ts, (unsigned long long)r->bytes_per_token, r->bw_pct, fill);
        }
    } else {
        const bool jsonl = !strcmp(fmt, "jsonl");
        if (!jsonl) printf("[\n");
        for (int i = 0; i < n_rows; i++) {
            bench_row *r = &rows[i];
            printf("%s{\"model_filename\": \"%s\", \"model_type\": \"%s\", \"model_size\": %llu, \"n_threads\": %d, "
                   "\"type_k\": \"%s\", \"type_v\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, \"n_depth\": %d, "
                   "\"avg_ns\": %.0f, \"stddev_ns\": %.0f, \"avg_ts\": %.6f, \"stddev_ts\": %.6f, "
                   "\"bytes_per_token\": %llu, \"bw_pct\": %.2f, \"depth_fill\": \"%s\"}%s\n",
                   jsonl ? "" : "  ", c.model, arch, (unsigned long long)weight_bytes, r->n_threads,
                   r->kv, r->kv, r->n_prompt, r->n_gen, r->n_depth, r->avg_ns, r->std_ns, r->avg_ts, r->std_ts,
                   (unsigned long long)r->bytes_per_token, r->bw_pct, gpu && random_fill ? "random" : "prefill",
                   jsonl || i == n_rows - 1 ? "" : ",");
        }
        if (!jsonl) printf("]\n");
    }
    free(rows);
    for (int i = 0; i < kvs.n; i++) free(kvs.v[i]);
    tl_model_free(m);
    return rc;
}
