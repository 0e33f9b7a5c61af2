/* bench_tailorkv.c: TailorKV accuracy, device memory and host->device traffic, in decode mode.
 *
 *   bench_tailorkv -m MODEL -f TEXT [--ctx 4096,8192] [--windows 2] [--decode 32] [-t N]
 *                  [--chunk N] --config NAME=SPEC ... [--project]
 *
 * KLD must be measured while decoding: TailorKV's sparse layers attend to everything during
 * prefill chunks and retrieve only for single-token steps. So each window of ctx tokens (BOS
 * first) is prefilled up to ctx - decode tokens, and the last `decode` tokens are fed one at a
 * time (teacher forcing); the logits of those steps are compared with the first config's
 * (the reference, normally f16): mean KL(ref || config), top-1 agreement, and the perplexity of
 * the true next tokens. Memory after the window: KV device tier (everything but the host tier),
 * host tier, and decode host->device bytes per token (the sparse layers' counters).
 * --project prints the exact-formula projection to Llama-3.1-8B (L 32, 32/8 heads, d 128) at
 * 128k for the configs (layer 0 dense, as the paper finds for that model). */
#define _GNU_SOURCE /* strndup */
#include "../src/engine/session.h"
#include "../src/kv/policy.h"
#include "../src/kv/tailor_plan.h"
#include "../include/tailor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CFG 16


static int make_plan(tl_kv_plan *plan, const char *spec, int n_layers, tl_error *err) {
    if (tl_tailor_spec(spec)) return tl_tailor_plan_parse(plan, spec, n_layers, err);
    return tl_kv_plan_parse(plan, spec, NULL, n_layers, err);
}

static void log_softmax(float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
    const float ls = (float)(mx + log(s));
    for (int i = 0; i < n; i++) x[i] -= ls;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static void project(const char **names, const char **specs, int n_cfg) {
    const int L = 32, n = 131072;
    const tl_kv_shape sh = {.n_head = 32, .n_head_kv = 8, .head_dim_k = 128, .head_dim_v = 128, .n_ctx = n, .window = 0, .scale = 0.0884f};
    printf("\nProjection: Llama-3.1-8B (32 layers, 8 KV heads, d 128) at %d tokens, layer 0 dense\n", n);
    printf("%-22s %12s %12s %14s %14s\n", "config", "device GiB", "host GiB", "h2d MiB/token", "of it channels");
    for (int c = 0; c < n_cfg; c++) {
        char spec[512];
        const char *sp = specs[c];
        if (tl_tailor_spec(sp)) { /* replace any plan with layer 0 dense */
            snprintf(spec, sizeof spec, "%s%sdense=0", sp, strchr(sp, ':') ? "," : ":");
            char *pl = strstr(spec, "plan=");
            if (pl) { /* drop plan=...  */
                char *end = strchr(pl, ',');
                memmove(pl, end + 1, strlen(end + 1) + 1);
            }
            sp = spec;
        }
        tl_kv_plan plan = {0};
        tl_error err;
        if (make_plan(&plan, sp, L, &err)) {
            printf("%-22s %s\n", names[c], err.msg);
            continue;
        }
        uint64_t dev = 0, host = 0, h2d = 0, ch = 0;
        for (int i = 0; i < L; i++) {
            tl_kv_bytes b;
            if (plan.layers[i].kind == TL_KV_OFFLOAD) {
                tl_kv_offload_bytes_formula(&plan.layers[i], &sh, n, &b, &err);
                uint64_t c1;
                h2d += tl_kv_offload_step_traffic(&plan.layers[i].off, &sh, n, &c1);
                ch += c1;
            } else if (tl_kv_layer_bytes_formula(&plan.layers[i], &sh, n, &b, &err)) {
                printf("%-22s layer %d: %s\n", names[c], i, err.msg);
                memset(&b, 0, sizeof b);
            }
            host += b.host;
            dev += tl_kv_bytes_total(&b) - b.host;
        }
        printf("%-22s %12.3f %12.3f %14.2f %14.2f\n", names[c], dev / 1073741824.0, host / 1073741824.0, h2d / 1048576.0,
               ch / 1048576.0);
        tl_kv_plan_free(&plan);
    }
}

int main(int argc, char **argv) {
    const char *model = NULL, *file = NULL;
    int ctxs[8] = {4096}, n_ctx = 1, windows = 2, decode = 32, threads = 0, chunk = 512;
    const char *names[MAX_CFG], *specs[MAX_CFG];
    int n_cfg = 0;
    bool proj = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--project")) {
            proj = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bench_tailorkv: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "-f")) file = v;
        else if (!strcmp(a, "--windows")) windows = atoi(v);
        else if (!strcmp(a, "--decode")) decode = atoi(v);
        else if (!strcmp(a, "-t")) threads = atoi(v);
        else if (!strcmp(a, "--chunk")) chunk = atoi(v);
        else if (!strcmp(a, "--ctx")) {
            n_ctx = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *sv = NULL, *t = strtok_r(buf, ",", &sv); t && n_ctx < 8; t = strtok_r(NULL, ",", &sv))
                ctxs[n_ctx++] = atoi(t);
        } else if (!strcmp(a, "--config")) {
            const char *eq = strchr(v, '=');
            if (!eq || n_cfg == MAX_CFG) {
                fprintf(stderr, "bench_tailorkv: --config NAME=SPEC (at most %d)\n", MAX_CFG);
                return 2;
            }
            names[n_cfg] = strndup(v, (size_t)(eq - v));
            specs[n_cfg++] = eq + 1;
        } else {
            fprintf(stderr, "bench_tailorkv: unknown flag %s\n", a);
            return 2;
        }
    }
    if (proj && (!model || !file)) {
        project(names, specs, n_cfg);
        return 0;
    }
    if (!model || !file || n_cfg < 1 || decode < 1) {
        fprintf(stderr, "usage: bench_tailorkv -m MODEL -f TEXT [--ctx 4096,8192] [--windows 2] [--decode 32] "
                        "--config NAME=SPEC ... [--project]\n");
        return 2;
    }
    tl_error err = {{0}};
    tl_model *m = tl_model_load(model, &err);
    if (!m) {
        fprintf(stderr, "bench_tailorkv: %s\n", err.msg);
        return 1;
    }
    FILE *f = fopen(file, "rb");
    if (!f) {
        fprintf(stderr, "bench_tailorkv: cannot open %s\n", file);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    const size_t got = fread(text, 1, (size_t)len, f);
    fclose(f);
    if (got != (size_t)len) {
        fprintf(stderr, "bench_tailorkv: short read of %s\n", file);
        return 1;
    }
    text[len] = 0;
    size_t cap = (size_t)len + 16, n_ids = 0;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    if (tl_tokenize(m->tok, text, (size_t)len, false, false, ids, cap, &n_ids, &err)) {
        fprintf(stderr, "bench_tailorkv: %s\n", err.msg);
        return 1;
    }
    const int V = m->cfg.n_vocab, L = m->cfg.n_layer;
    int32_t bos = -1;
    {   /* the model's BOS, if it adds one: tokenize "" with specials */
        int32_t tmp[4];
        size_t nt = 0;
        if (!tl_tokenize(m->tok, "", 0, true, false, tmp, 4, &nt, &err) && nt == 1) bos = tmp[0];
    }
    float *ref = malloc(sizeof(float) * (size_t)windows * decode * V), *lg = malloc(sizeof(float) * V);
    printf("model %s, text %s (%zu tokens), decode %d tokens per window\n", model, file, n_ids, decode);
    printf("%-22s %6s %4s %10s %8s %10s %10s %10s %12s %10s\n", "config", "ctx", "win", "KLD", "top1%", "ppl",
           "devKV MiB", "host MiB", "h2d KiB/tok", "ms/token");
    for (int ci = 0; ci < n_ctx; ci++) {
        const int N = ctxs[ci];
        for (int c = 0; c < n_cfg; c++) {
            double kld = 0, nll = 0, secs = 0;
            int agree = 0, cnt = 0, nw = 0;
            uint64_t dev = 0, host = 0;
            double h2d_tok = 0;
            for (int w = 0; w < windows; w++) {
                const size_t off = (size_t)w * N;
                if (off + N > n_ids) break;
                int32_t *win = malloc(sizeof(int32_t) * N);
                memcpy(win, ids + off, sizeof(int32_t) * N);
                if (bos >= 0) win[0] = bos;
                tl_kv_plan plan = {0};
                if (make_plan(&plan, specs[c], L, &err)) {
                    fprintf(stderr, "%s: %s\n", names[c], err.msg);
                    return 1;
                }
                tl_session *s = tl_session_new_with_policies(m, N, threads, chunk, plan.layers, &err);
                tl_kv_plan_free(&plan);
                if (!s || tl_session_eval(s, win, N - decode, lg, false, &err)) {
                    fprintf(stderr, "%s: %s\n", names[c], err.msg);
                    return 1;
                }
                const double t0 = tl_time_s();
                for (int j = 0; j < decode; j++) {
                    const int p = N - decode + j; /* feed token p, logits predict p + 1 */
                    if (tl_session_eval(s, &win[p], 1, lg, false, &err)) {
                        fprintf(stderr, "%s: %s\n", names[c], err.msg);
                        return 1;
                    }
                    log_softmax(lg, V);
                    float *r = ref + ((size_t)w * decode + j) * V;
                    if (c == 0) memcpy(r, lg, sizeof(float) * V);
                    double kl = 0;
                    for (int t = 0; t < V; t++) kl += exp(r[t]) * ((double)r[t] - lg[t]);
                    kld += kl;
                    agree += argmax(r, V) == argmax(lg, V);
                    if (p + 1 < N) {
                        nll -= lg[win[p + 1]];
                        cnt++;
                    }
                }
                secs += tl_time_s() - t0;
                tl_session_mem mem;
                tl_session_memory(s, &mem);
                dev = mem.kv - mem.kv_parts.host;
                host = mem.kv_parts.host;
                tl_kv_offload_stats st;
                if (tl_tailor_traffic(s->kv, L, &st) && st.decode_steps) h2d_tok = (double)st.h2d_decode / st.decode_steps;
                tl_session_free(s);
                free(win);
                nw++;
            }
            if (nw == 0) {
                printf("%-22s %6d   text too short\n", names[c], N);
                continue;
            }
            printf("%-22s %6d %4d %10.5f %8.1f %10.3f %10.2f %10.2f %12.1f %10.2f\n", names[c], N, nw, kld / (nw * decode),
                   100.0 * agree / (nw * decode), exp(nll / TL_MAX(cnt, 1)),
                   dev / 1048576.0, host / 1048576.0, h2d_tok / 1024.0, 1e3 * secs / (nw * decode));
            fflush(stdout);
        }
    }
    if (proj) project(names, specs, n_cfg);
    free(ref);
    free(lg);
    free(ids);
    free(text);
    tl_model_free(m);
    return 0;
}
