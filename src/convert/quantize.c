/* quantize.c: file-level weight quantization (quantize.h). */
#include "quantize.h"
#include "../base/threads.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define QROWS_PER_TASK 32

void tl_quantize_default_params(tl_quantize_params *p) {
    memset(p, 0, sizeof *p);
    p->type = TL_TYPE_Q8_0;
    tl_awq_default_params(&p->awq_params);
}

int tl_quantize_parse_type(const char *name, tl_type *type, bool *awq, tl_error *err) {
    static const tl_type allowed[] = {TL_TYPE_F32,  TL_TYPE_F16,  TL_TYPE_BF16, TL_TYPE_Q8_0,
                                      TL_TYPE_Q4_0, TL_TYPE_Q4_1, TL_TYPE_Q5_0, TL_TYPE_Q5_1,
                                      TL_TYPE_Q4_K, TL_TYPE_Q5_K, TL_TYPE_Q6_K, TL_TYPE_W4G128};
    *awq = false;
    if (!strcasecmp(name, "awq")) {
        *type = TL_TYPE_W4G128;
        *awq = true;
        return 0;
    }
    for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++)
        if (!strcasecmp(name, tl_type_name(allowed[i]))) {
            *type = allowed[i];
            return 0;
        }
    return tl_fail(err, "unknown weight type '%s' (q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K, w4g128, awq, "
                        "f16, bf16, f32)", name);
}

uint32_t tl_quantize_ftype(tl_type t) {
    switch (t) {
    case TL_TYPE_F32: return 0;
    case TL_TYPE_F16: return 1;
    case TL_TYPE_Q4_0: return 2;
    case TL_TYPE_Q4_1: return 3;
    case TL_TYPE_Q8_0: return 7;
    case TL_TYPE_Q5_0: return 8;
    case TL_TYPE_Q5_1: return 9;
    case TL_TYPE_Q4_K: return 14; /* Q4_K_S: all q4_K but what cannot be */
    case TL_TYPE_Q5_K: return 16; /* Q5_K_S */
    case TL_TYPE_Q6_K: return 18;
    case TL_TYPE_BF16: return 32;
    default: return 1024; /* LLAMA_FTYPE_GUESSED */
    }
}

/* ------------------------------------------------------------------ which tensors */

/* name matches a keep-list entry: exactly, with ".weight" added, or with "blk.N." removed */
static bool keep_match(const char *keep, const char *name) {
    if (!keep) return false;
    const char *base = name;
    if (!strncmp(name, "blk.", 4)) {
        const char *q = name + 4;
        while (*q >= '0' && *q <= '9') q++;
        if (*q == '.' && q > name + 4) base = q + 1;
    }
    for (const char *p = keep; *p;) {
        const char *e = strchr(p, ',');
        const size_t len = e ? (size_t)(e - p) : strlen(p);
        const char *cands[2] = {name, base};
        for (int c = 0; c < 2 && len; c++) {
            const char *n = cands[c];
            if (!strncmp(n, p, len) && (n[len] == 0 || !strcmp(n + len, ".weight"))) return true;
        }
        if (!e) break;
        p = e + 1;
    }
    return false;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The llama.cpp-style fallback when ne0 is not a multiple of the target's block. */
static tl_type fallback_type(tl_type t, int64_t ne0, tl_type src) {
    tl_type f;
    switch (t) {
    case TL_TYPE_Q4_K: f = TL_TYPE_Q5_0; break;
    case TL_TYPE_Q5_K: f = TL_TYPE_Q5_1; break;
    case TL_TYPE_Q6_K: f = TL_TYPE_Q8_0; break;
    case TL_TYPE_W4G128: f = TL_TYPE_Q4_1; break;
    default: return src;
    }
    return tl_row_size(f, ne0) ? f : src;
}

/* The type tensor t is written in; *re says whether it is re-encoded (0 no, 1 target, 2 fallback). */
static tl_type decide(const tl_quantize_params *p, const tl_gguf_tensor *t, int *re) {
    *re = 0;
    if (t->n_dims != 2 || !ends_with(t->name, ".weight") || strstr(t->name, "norm") || keep_match(p->keep, t->name))
        return t->type;
    tl_type to = p->type;
    if (!tl_row_size(to, t->ne[0])) to = fallback_type(to, t->ne[0], t->type);
    if (to == t->type) return t->type; /* already there: copied byte for byte */
    *re = to == p->type ? 1 : 2;
    return to;
}

typedef struct {
    const tl_quantize_params *p;
    const tl_gguf *g;
} filter_ctx;

static bool awq_filter(void *vctx, const char *name) {
    filter_ctx *f = vctx;
    const tl_gguf_tensor *t = tl_gguf_find_tensor(f->g, name);
    int re;
    return t && decide(f->p, t, &re) == TL_TYPE_W4G128 && re == 1;
}

/* ------------------------------------------------------------------ re-encoding */

typedef struct {
    const tl_gguf_tensor *t;
    tl_type to;
    uint8_t *out;
    size_t in_row, out_row;
} conv_job;

static void conv_task(void *vc, int64_t task, int thread_id) {
    (void)thread_id;
    const conv_job *j = vc;
    const int64_t ne0 = j->t->ne[0], rows = (int64_t)(j->t->nbytes / j->in_row);
    float *f = tl_xmalloc(sizeof(float) * (size_t)ne0);
    for (int64_t r = task * QROWS_PER_TASK; r < TL_MIN(rows, (task + 1) * QROWS_PER_TASK); r++) {
        tl_dequantize_row(j->t->type, (const uint8_t *)j->t->data + (size_t)r * j->in_row, f, ne0);
        tl_quantize_row(j->to, f, j->out + (size_t)r * j->out_row, ne0);
    }
    free(f);
}

/* ------------------------------------------------------------------ driver */

static int tokenize_calib(const tl_model *m, const char *path, int64_t max_tokens, int32_t **ids, int64_t *n,
                          tl_error *err) {
    size_t len = 0;
    char *text = tl_read_text(path, tl_tok_text_bytes(m->tok, max_tokens), &len, NULL, err);
    if (!text) return tl_fail_prefix(err, "calibration text");
    size_t need = 0, icap = len + 16;
    int32_t *out = tl_xmalloc(sizeof(int32_t) * icap);
    int rc = tl_tokenize(m->tok, text, len, true, false, out, icap, &need, err);
    free(text);
    if (rc || need > icap) {
        free(out);
        if (!rc) return tl_fail(err, "%s: tokenizer needs %zu ids for %zu bytes", path, need, len);
        return tl_fail_prefix(err, "%s", path);
    }
    if (max_tokens > 0 && (int64_t)need > max_tokens) need = (size_t)max_tokens;
    if (need < 16) {
        free(out);
        return tl_fail(err, "%s: only %zu tokens of calibration text", path, need);
    }
    *ids = out;
    *n = (int64_t)need;
    return 0;
}

/* The mean relative output error (error / output energy) of the groups AWQ scaled, with plain
 * RTN and with AWQ; o projections it skipped (their V channels feed several heads under GQA). */
static void awq_summary(const tl_awq_group *g, int n, tl_awq_summary *s) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < n; i++) {
        if (!g[i].applied) {
            s->skipped_o += g[i].point == TL_ACT_ATTN_OUT;
            continue;
        }
        s->applied++;
        s->clipped += g[i].clipped;
        s->err_rtn += g[i].err_rtn / g[i].out_sq;
        s->err_awq += g[i].err_awq / g[i].out_sq;
    }
    if (s->applied) {
        s->err_rtn /= s->applied;
        s->err_awq /= s->applied;
    }
}

int tl_quantize_file(const char *in_path, const char *out_path, const tl_quantize_params *p, tl_quantize_report *rep,
                     tl_error *err) {
    memset(rep, 0, sizeof *rep);
    const tl_type_traits *tt = tl_type_info(p->type);
    if (!tt || !tt->supported) return tl_fail(err, "cannot quantize to type %s", tl_type_name(p->type));
    if (p->awq && p->type != TL_TYPE_W4G128) return tl_fail(err, "AWQ writes w4g128, not %s", tl_type_name(p->type));
    if (p->awq && !p->calib_path) return tl_fail(err, "AWQ needs a calibration text (-f)");
    const double t0 = tl_time_s();
    /* the output first: refused when it is the input (the rename would replace it), and held
     * (as a temp file, removed on failure or on a signal) while the work runs */
    tl_outfile out;
    if (tl_outfile_open(&out, out_path, in_path, err)) return -1;
    tl_gguf *g = tl_gguf_open(in_path, err);
    if (!g) {
        tl_outfile_abort(&out);
        return -1;
    }
    int rc = -1;
    tl_model *m = NULL;
    int32_t *calib = NULL;
    tl_awq_result awq;
    memset(&awq, 0, sizeof awq);
    tl_pool *pool = NULL;
    tl_gguf_writer *w = NULL;
    const int64_t nt = tl_gguf_n_tensors(g);
    uint8_t **bufs = tl_xcalloc((size_t)(nt > 0 ? nt : 1), sizeof(uint8_t *));

    if (p->awq) {
        if (!(m = tl_model_load(in_path, err))) goto done;
        int64_t n_calib = 0;
        if (tokenize_calib(m, p->calib_path, p->awq_params.max_tokens, &calib, &n_calib, err)) goto done;
        tl_awq_params ap = p->awq_params;
        if (!ap.n_threads) ap.n_threads = p->n_threads;
        ap.progress = ap.progress || p->progress;
        filter_ctx fc = {p, g};
        const double ta = tl_time_s();
        if (tl_awq_run(m, calib, n_calib, &ap, awq_filter, &fc, &awq, err)) goto done;
        rep->awq_seconds = tl_time_s() - ta;
        rep->awq_groups = awq.groups; /* the report takes the group list */
        rep->n_awq_groups = awq.n_groups;
        awq.groups = NULL;
        awq_summary(rep->awq_groups, rep->n_awq_groups, &rep->awq);
        rep->awq_tokens = awq.n_tokens;
        rep->awq_samples = awq.n_samples;
        tl_model_free(m); /* the AWQ tensors are copies: the second mapping can go */
        m = NULL;
    }

    w = tl_gguf_writer_new();
    for (int64_t i = 0; i < tl_gguf_n_kv(g); i++) {
        size_t len;
        const char *k = tl_gguf_key_name(g, i, &len);
        if ((len == 17 && !memcmp(k, "general.file_type", 17)) ||
            (len == 28 && !memcmp(k, "general.quantization_version", 28)) || (len > 7 && !memcmp(k, "tailor.", 7)))
            continue;
        tl_gguf_w_copy_kv(w, g, i);
    }
    tl_gguf_w_u32(w, "general.quantization_version", 2);
    tl_gguf_w_u32(w, "general.file_type", tl_quantize_ftype(p->type));
    tl_gguf_w_str(w, "tailor.quantize.type", p->awq ? "awq-w4g128" : tl_type_name(p->type));
    if (p->awq) {
        const char *base = strrchr(p->calib_path, '/');
        tl_gguf_w_str(w, "tailor.awq.calibration", base ? base + 1 : p->calib_path);
        tl_gguf_w_u64(w, "tailor.awq.tokens", (uint64_t)rep->awq_tokens);
    }

    pool = tl_pool_new(p->n_threads);
    rep->n_tensors = (int)nt;
    for (int64_t i = 0; i < nt; i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
        const tl_awq_tensor *a = p->awq ? tl_awq_find(&awq, t->name) : NULL;
        int re;
        tl_type to = decide(p, t, &re);
        const void *data = t->data;
        uint64_t nbytes = t->nbytes;
        if (a) {
            if (a->ne[0] != t->ne[0] || a->ne[1] != (t->n_dims > 1 ? t->ne[1] : 1)) {
                tl_fail(err, "%s: tensor '%s': AWQ output has another shape", in_path, t->name);
                goto done;
            }
            to = a->type;
            data = a->data;
            nbytes = a->nbytes;
            if (to == TL_TYPE_W4G128) rep->n_quantized++;
            else rep->n_kept++; /* a rescaled norm or bias, still f32 */
        } else if (re) {
            const size_t in_row = tl_row_size(t->type, t->ne[0]), out_row = tl_row_size(to, t->ne[0]);
            const int64_t rows = (int64_t)(t->nbytes / in_row);
            nbytes = (uint64_t)out_row * (uint64_t)rows;
            bufs[i] = tl_xmalloc((size_t)nbytes);
            conv_job j = {t, to, bufs[i], in_row, out_row};
            tl_pool_run(pool, (rows + QROWS_PER_TASK - 1) / QROWS_PER_TASK, conv_task, &j);
            data = bufs[i];
            if (re == 1) rep->n_quantized++;
            else rep->n_fallback++;
            if (p->progress)
                fprintf(stderr, "quantize: %-28s %-6s -> %-6s%s\n", t->name, tl_type_name(t->type), tl_type_name(to),
                        re == 2 ? " (fallback: row length)" : "");
        } else {
            rep->n_kept++;
        }
        rep->bytes_in += t->nbytes;
        rep->bytes_out += nbytes;
        rep->type_count[to]++;
        rep->type_bytes[to] += nbytes;
        tl_gguf_w_tensor(w, t->name, to, t->n_dims, t->ne, data);
    }
    if (tl_gguf_write_to(w, &out, err) || tl_outfile_commit(&out, err)) goto done;
    struct stat st;
    if (stat(out_path, &st) == 0) rep->file_bytes = (uint64_t)st.st_size;
    rep->seconds = tl_time_s() - t0;
    rc = 0;
done:
    tl_outfile_abort(&out); /* nothing once committed */
    tl_gguf_writer_free(w);
    tl_pool_free(pool);
    for (int64_t i = 0; i < nt; i++) free(bufs[i]);
    free(bufs);
    tl_awq_result_free(&awq);
    free(calib);
    tl_model_free(m);
    tl_gguf_close(g);
    return rc;
}

void tl_quantize_report_free(tl_quantize_report *rep) {
    free(rep->awq_groups);
    rep->awq_groups = NULL;
    rep->n_awq_groups = 0;
}
