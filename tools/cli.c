/* cli.c: shared flag parsing, session parameters, prompt text and output helpers for the
 * subcommands. */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

void tl_cli_common_init(tl_cli_common *c) {
    memset(c, 0, sizeof *c);
    c->n_predict = 128;
    c->sp = tl_sampler_default_params();
    tl_cli_cuda_env(&c->cuda);
    c->prefill = -1;
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

int tl_cli_cuda_opt(const char *v, tl_cuda_opts *o) {
    tl_error err;
    if (!tl_cuda_opts_parse(o, v, &err)) return 0;
    fprintf(stderr, "tailor: %s\n", err.msg);
    return -1;
}

/* The environment's CUDA switches: the variable, the value that switches it (NULL: any but ""
 * and "0"; "=": the value is the option's), the --cuda-opt item. */
static const struct {
    const char *env, *when, *opt;
} cuda_env[] = {
    {"TL_CUDA_SAFE", NULL, "safe"},           {"TL_CUDA_DECODE", "0", "no-decode"},
    {"TL_CUDA_DEC_MMA", "0", "no-dec-mma"},   {"TL_CUDA_DEC_TC", "1", "dec-tc=always"},
    {"TL_CUDA_DEC_TC", "0", "dec-tc=never"},  {"TL_CUDA_DEC_MINB", "=", "dec-minb"},
    {"TL_CUDA_TC", "0", "no-tc"},             {"TL_CUDA_FUSE", "0", "no-fuse"},
    {"TL_CUDA_PDL", "0", "no-pdl"},           {"TL_CUDA_WIDEN", "1", "widen"},
    {"TL_CUDA_GEN_CAP", "=", "gen-cap"},      {"TL_CUDA_PROF", NULL, "prof"},
    {"TL_CUDA_VERBOSE", NULL, "verbose"},
};

void tl_cli_cuda_env(tl_cuda_opts *o) {
    for (size_t i = 0; i < sizeof cuda_env / sizeof *cuda_env; i++) {
        const char *v = getenv(cuda_env[i].env), *when = cuda_env[i].when;
        if (!v) continue;
        char item[64];
        if (!when) {
            if (!*v || !strcmp(v, "0")) continue;
            snprintf(item, sizeof item, "%s", cuda_env[i].opt);
        } else if (!strcmp(when, "=")) {
            snprintf(item, sizeof item, "%s=%s", cuda_env[i].opt, v);
        } else {
            if (strcmp(v, when)) continue;
            snprintf(item, sizeof item, "%s", cuda_env[i].opt);
        }
        tl_error err;
        if (tl_cuda_opts_parse(o, item, &err)) fprintf(stderr, "tailor: %s=%s ignored: %s\n", cuda_env[i].env, v, err.msg);
        else if (strcmp(cuda_env[i].env, "TL_CUDA_SAFE"))
            fprintf(stderr, "tailor: warning: %s=%s is deprecated: use --cuda-opt %s\n", cuda_env[i].env, v, item);
    }
}

void tl_cli_device_help(FILE *f) {
    fprintf(f, "  --device cpu|cuda (default cpu)  --gpu-mem-budget SIZE: cuda: refuse a plan above SIZE (e.g. 24GiB)\n%s",
            tl_cuda_opts_help());
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
    } else if (!strcmp(a, "--kv-budget")) {
        VAL();
        return tl_cli_size(a, v, 1, &c->kv_budget) ? -1 : 1;
    } else if (!strcmp(a, "--device")) {
        VAL();
        return tl_cli_device(a, v, &c->device) ? -1 : 1;
    } else if (!strcmp(a, "--cuda-opt")) {
        VAL();
        return tl_cli_cuda_opt(v, &c->cuda) ? -1 : 1;
    } else if (!strcmp(a, "--prefill")) {
        VAL();
        if (strcmp(v, "q8") && strcmp(v, "f32")) {
            fprintf(stderr, "tailor: %s: '%s' is not q8 or f32\n", a, v);
            return -1;
        }
        c->prefill = !strcmp(v, "q8");
    } else {
        return 0;
    }
#undef VAL
    return 1;
}

char *tl_cli_prompt_text(const tl_cli_common *c, const tl_tokenizer *t, int64_t n_tokens, size_t *len,
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

tl_session_params tl_cli_session_params(const tl_cli_common *c, const tl_kv_plan *plan) {
    tl_session_params sp = tl_session_default_params();
    sp.n_ctx = c->n_ctx;
    sp.n_threads = c->n_threads;
    sp.chunk = c->chunk;
    sp.kv = plan;
    sp.device = c->device;
    sp.gpu_mem_budget = c->gpu_mem_budget;
    sp.cuda = c->cuda;
    sp.warn_ctx = true;
    sp.prefill_q8 = c->prefill == 1;
    return sp;
}

tl_session *tl_cli_session(tl_model *m, const tl_cli_common *c, tl_error *err) {
    tl_kv_plan plan = {0};
    if (tl_kv_plan_parse(&plan, c->kv, c->kv_layer, tl_model_n_layer(m), err)) return NULL;
    const tl_session_params sp = tl_cli_session_params(c, &plan);
    tl_session *s = tl_session_new(m, &sp, err);
    tl_kv_plan_free(&plan);
    return s;
}

const char *tl_default_haystack(void) {
    static const char *const cands[] = {"../shared/data/pg_essays", "../../shared/data/pg_essays",
                                        "/work/shared/data/pg_essays"};
    const char *env = getenv("TL_SHARED");
    static char buf[4096];
    if (env && *env) {
        snprintf(buf, sizeof buf, "%s/data/pg_essays", env);
        return buf;
    }
    for (size_t i = 0; i < sizeof cands / sizeof *cands; i++) {
        FILE *f = fopen(cands[i], "r");
        if (f) {
            fclose(f);
            return cands[i];
        }
    }
    return cands[0];
}
