/* cli.c: shared flag parsing, model/session set-up and output helpers for the subcommands. */
#define _GNU_SOURCE
#include "cli.h"
#include "../src/kv/tailor_plan.h"
#include "../src/cuda/cuda.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void tl_cli_common_init(tl_cli_common *c) {
    memset(c, 0, sizeof *c);
    c->n_predict = 128;
    c->sp = tl_sampler_default_params();
}

const char *tl_cli_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "tailor: flag %s needs a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int tl_cli_int(const char *flag, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "tailor: %s: '%s' is not an integer in [%ld, %ld]\n", flag, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

const tl_cli_flag tl_flag_ctx = {{"-c", "--ctx-size", "--ctx", NULL}, 0, 1 << 24};
const tl_cli_flag tl_flag_chunk = {{"--chunk", "-b", "-ub", "--batch-size", NULL}, 1, 1 << 20};
const tl_cli_flag tl_flag_threads = {{"-t", "--threads", NULL}, 1, 1024};
const tl_cli_flag tl_flag_parallel = {{"--parallel", "-np", NULL}, 1, 256};
const tl_cli_flag tl_flag_layers = {{"--layers", NULL}, 1, TL_MAX_LAYERS};
const tl_cli_flag tl_flag_samples = {{"--samples", NULL}, 1, 1 << 20};

bool tl_cli_is(const tl_cli_flag *f, const char *arg) {
    for (int i = 0; f->names[i]; i++)
        if (!strcmp(arg, f->names[i])) return true;
    return false;
}

int tl_cli_flag_int(const tl_cli_flag *f, const char *arg, const char *v, int *out) {
    return tl_cli_int(arg, v, f->lo, f->hi, out);
}

int tl_cli_float(const char *flag, const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || v != v) {
        fprintf(stderr, "tailor: %s: '%s' is not a number\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

int tl_cli_device(const char *flag, const char *v, const char **out) {
    if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
        fprintf(stderr, "tailor: %s: '%s' is not one of cpu, cuda\n", flag, v);
        return -1;
    }
    *out = v;
    return 0;
}

int tl_cli_size(const char *flag, const char *s, uint64_t lo, uint64_t *out) {
    if (!tl_parse_size(s, out) && *out >= lo) return 0;
    fprintf(stderr, "tailor: %s: '%s' is not a size of at least %llu bytes (e.g. 24GiB = 24 x 2^30, 24GB = 24 x 10^9, "
                    "25769803776)\n", flag, s, (unsigned long long)lo);
    return -1;
}

int tl_parse_int_list(const char *flag, const char *s, int lo, int *out, int cap) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) goto bad;
        if (*end == 'k' || *end == 'K') {
            v *= 1024;
            end++;
        }
        if (v < lo || v > (1 << 24) || n == cap || (*end && *end != ',')) goto bad;
        out[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (n == 0) goto bad;
    return n;
bad:
    fprintf(stderr, "tailor: %s: '%s' is not a list of integers in [%d, %d] like 1k,2k,4096 (k = 1024; at most %d)\n",
            flag, s, lo, 1 << 24, cap);
    return -1;
}

int tl_parse_depth_list(const char *flag, const char *s, double *out, int cap) {
    int n = 0;
    bool pct = false;
    const char *p = s;
    while (*p) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || n == cap || (*end && *end != ',' && *end != '%') || !(v >= 0)) goto bad;
        if (*end == '%') {
            pct = true;
            end++;
        }
        out[n++] = v;
        p = *end ? end + 1 : end;
    }
    for (int i = 0; i < n; i++) pct |= out[i] > 1;
    for (int i = 0; i < n; i++) {
        if (pct) out[i] /= 100;
        if (out[i] > 1) goto bad;
    }
    if (n == 0) goto bad;
    return n;
bad:
    fprintf(stderr, "tailor: %s: '%s' is not a list of depths in 0..1 or 0..100%% (at most %d)\n", flag, s, cap);
    return -1;
}

int tl_cli_output(const char *flag, const char *path) {
    tl_error err;
    if (!path || !tl_check_output(path, NULL, &err)) return 0;
    fprintf(stderr, "tailor: %s: %s\n", flag, err.msg);
    return -1;
}

/* A sampling flag's value against the sampler's rule (the server applies the same one). */
static int sampling_check(const char *flag, const tl_sampler_params *sp) {
    tl_error err;
    if (!tl_sampler_check(sp, &err)) return 0;
    fprintf(stderr, "tailor: %s: %s\n", flag, err.msg);
    return -1;
}

int tl_cli_common_arg(tl_cli_common *c, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    const char *v;
#define VAL() \
    if (!(v = tl_cli_value(argc, argv, i))) return -1
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
        VAL();
        c->model = v;
    } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
        VAL();
        c->prompt = v;
    } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
        VAL();
        c->file = v;
    } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
        VAL();
        return tl_cli_int(a, v, -1, INT_MAX, &c->n_predict) ? -1 : 1;
    } else if (tl_cli_is(&tl_flag_ctx, a)) {
        VAL();
        return tl_cli_flag_int(&tl_flag_ctx, a, v, &c->n_ctx) ? -1 : 1;
    } else if (tl_cli_is(&tl_flag_threads, a)) {
        VAL();
        return tl_cli_flag_int(&tl_flag_threads, a, v, &c->n_threads) ? -1 : 1;
    } else if (tl_cli_is(&tl_flag_chunk, a)) {
        VAL();
        return tl_cli_flag_int(&tl_flag_chunk, a, v, &c->chunk) ? -1 : 1;
    } else if (!strcmp(a, "--kv")) {
        VAL();
        c->kv = v;
    } else if (!strcmp(a, "--kv-layer")) {
        VAL();
        c->kv_layer = v;
    } else if (!strcmp(a, "--temp")) {
        VAL();
        return tl_cli_float(a, v, &c->sp.temp) || sampling_check(a, &c->sp) ? -1 : 1;
    } else if (!strcmp(a, "--top-k")) {
        VAL();
        return tl_cli_int(a, v, INT_MIN, INT_MAX, &c->sp.top_k) || sampling_check(a, &c->sp) ? -1 : 1;
    } else if (!strcmp(a, "--top-p")) {
        VAL();
        return tl_cli_float(a, v, &c->sp.top_p) || sampling_check(a, &c->sp) ? -1 : 1;
    } else if (!strcmp(a, "--min-p")) {
        VAL();
        return tl_cli_float(a, v, &c->sp.min_p) || sampling_check(a, &c->sp) ? -1 : 1;
    } else if (!strcmp(a, "--repeat-penalty")) {
        VAL();
        return tl_cli_float(a, v, &c->sp.repeat_penalty) || sampling_check(a, &c->sp) ? -1 : 1;
    } else if (!strcmp(a, "--repeat-last-n")) {
        VAL();
        return tl_cli_int(a, v, INT_MIN, INT_MAX, &c->sp.repeat_last_n) || sampling_check(a, &c->sp) ? -1 : 1;
    } else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) {
        VAL();
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        if (errno || *end || end == v) {
            fprintf(stderr, "tailor: %s: '%s' is not a non-negative integer\n", a, v);
            return -1;
        }
        c->sp.seed = s;
    } else if (!strcmp(a, "--mem")) {
        c->mem = true;
    } else if (!strcmp(a, "--gpu-mem-budget")) {
        VAL();
        return tl_cli_size(a, v, 1, &c->gpu_mem_budget) ? -1 : 1;
    } else if (!strcmp(a, "--device")) {
        VAL();
        return tl_cli_device(a, v, &c->device) ? -1 : 1;
    } else {
        return 0;
    }
#undef VAL
    return 1;
}

char *tl_cli_read_file(const char *path, size_t *len, tl_error *err) { return tl_read_whole(path, len, err); }

char *tl_cli_prompt_text(const tl_cli_common *c, const tl_model *m, int64_t n_tokens, size_t *len, tl_error *err) {
    return tl_cli_prompt_text_tok(c, m->tok, n_tokens, len, err);
}

char *tl_cli_prompt_text_tok(const tl_cli_common *c, const tl_tokenizer *t, int64_t n_tokens, size_t *len,
                             tl_error *err) {
    if (c->prompt && c->file) {
        tl_fail(err, "give either -p or -f, not both");
        return NULL;
    }
    if (c->file) return tl_read_text(c->file, tl_tok_text_bytes(t, n_tokens), len, NULL, err);
    const char *p = c->prompt ? c->prompt : "";
    *len = strlen(p);
    return tl_xstrdup(p);
}

int32_t *tl_cli_tokenize(const tl_model *m, const char *text, size_t len, bool add_special, size_t *n, tl_error *err) {
    return tl_cli_tokenize_tok(m->tok, text, len, add_special, n, err);
}

int32_t *tl_cli_tokenize_tok(const tl_tokenizer *t, const char *text, size_t len, bool add_special, size_t *n,
                             tl_error *err) {
    size_t cap = len + 16, need = 0;
    int32_t *ids = tl_xmalloc(sizeof(int32_t) * cap);
    if (tl_tokenize(t, text, len, add_special, true, ids, cap, &need, err)) {
        free(ids);
        return NULL;
    }
    if (need > cap) {
        ids = tl_xrealloc(ids, sizeof(int32_t) * need);
        if (tl_tokenize(t, text, len, add_special, true, ids, need, &need, err)) {
            free(ids);
            return NULL;
        }
    }
    *n = need;
    return ids;
}

tl_session *tl_cli_session_plan(tl_model *m, const tl_cli_common *c, const tl_kv_plan *plan, tl_error *err) {
    if (c->n_ctx > m->cfg.n_ctx_train)
        fprintf(stderr, "tailor: warning: context %d exceeds the model's training context %d; quality may degrade\n",
                c->n_ctx, m->cfg.n_ctx_train);
    tl_session_params sp = tl_session_default_params();
    sp.n_ctx = c->n_ctx;
    sp.n_threads = c->n_threads;
    sp.chunk = c->chunk;
    sp.kv = plan;
    sp.device = c->device;
    sp.gpu_mem_budget = c->gpu_mem_budget;
    return tl_session_new(m, &sp, err);
}

tl_session *tl_cli_session(tl_model *m, const tl_cli_common *c, tl_error *err) {
    tl_kv_plan plan = {0};
    if (tl_kv_plan_parse(&plan, c->kv, c->kv_layer, m->cfg.n_layer, err)) return NULL;
    tl_session *s = tl_cli_session_plan(m, c, &plan, err);
    tl_kv_plan_free(&plan);
    return s;
}


static double mib(uint64_t b) { return (double)b / (1024.0 * 1024.0); }

void tl_cli_print_mem(FILE *f, const tl_session *s) {
    tl_session_mem m;
    tl_session_memory(s, &m);
    fprintf(f, "memory: weights %.2f MiB + KV %.2f MiB (codes %.2f, scales %.2f, residual %.2f, other %.2f, host %.2f) "
               "+ activations %.2f MiB = %.2f MiB  [%d tokens held]\n",
            mib(m.weights), mib(m.kv), mib(m.kv_parts.codes), mib(m.kv_parts.scales), mib(m.kv_parts.residual),
            mib(m.kv_parts.other), mib(m.kv_parts.host), mib(m.activations), mib(m.weights + m.kv + m.activations),
            s->n_past);
    if (!s->gpu) tl_tailor_print_mem(f, s->kv, s->model->cfg.n_layer); /* GPU sessions hold no CPU stores */
    if (s->gpu) {
        tl_cuda_mem g;
        tl_cuda_memory(s->gpu, &g);
        if (g.n_offload) {
            const double steps = g.decode_steps > 0 ? (double)g.decode_steps : 1.0;
            fprintf(f, "tailorKV (gpu): %d sparse layers; host tier allocated %.2f MiB (pinned, mapped); decode h2d "
                       "%.1f KiB/token (PCIe: top-k rows %.1f + channel rows %.1f) over %lld steps; prefill d2h %.2f MiB, "
                       "h2d %.2f MiB (the host tier copied back for prefill attention)\n",
                    g.n_offload, mib(g.host_alloc), (g.h2d_decode + g.h2d_chan) / steps / 1024.0,
                    g.h2d_decode / steps / 1024.0, g.h2d_chan / steps / 1024.0, (long long)g.decode_steps, mib(g.d2h),
                    mib(g.h2d_prefill));
        }
        fprintf(f, "gpu memory (%s): weights %.2f MiB + workspace %.2f MiB + KV allocated %.2f MiB + activations %.2f MiB; "
                   "device %.2f of %.2f MiB free\n",
                g.device, mib(g.weights), mib(g.workspace), mib(g.kv_alloc), mib(g.activations), mib(g.dev_free), mib(g.dev_total));
    }
}
