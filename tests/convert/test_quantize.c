/* test_quantize.c: tailor's file-level quantizer and AWQ on the 31M test model (real f16
 * weights; SKIP when it is absent).
 *
 * Independent checks:
 *  - every tensor of the output has the type the rules state (2-D weights -> target, rows
 *    the block does not divide -> llama.cpp's fallback, vectors unchanged) and exactly
 *    rows * row_size bytes; the file size equals what the report says and stat says;
 *  - re-encoded rows equal tl_quantize_row of the source row (the row quantizers are
 *    checked against llama.cpp / gguf-py in test_quants) and their round-trip error is
 *    under the per-type thresholds of test_quants;
 *  - the file loads and its next-token NLL on PG-essay text stays within a per-type margin
 *    of the f16 model (a wrong AWQ fold would blow this up);
 *  - AWQ: per group, its output error on the calibration rows is <= RTN's (as reported), and
 *    recomputed here from the written file for the q/k/v group: X W^T vs (X * g'/g) Q^T with
 *    the rescaled attn_norm g' and the written w4g128 matrices, over all calibration rows.
 * NLL margins over f16 on 128 tokens (measured): q8_0 0.01 (-0.002), q4_0 0.3 (0.19),
 * q4_K 0.25 (0.13), w4g128 0.3 (0.22), AWQ 0.3 (0.16). */
#include "../../src/convert/quantize.h"
#include "../testutil.h"
#include "../../include/tailor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *tmp_path(const char *tag) {
    static char b[4][256];
    static int next;
    char *p = b[next++ % 4];
    snprintf(p, 256, "/tmp/tl_test_quantize_%d_%s.gguf", (int)getpid(), tag);
    return p;
}

static double rt_limit(tl_type t) {
    switch (t) {
    case TL_TYPE_Q8_0: return 0.01;
    case TL_TYPE_Q5_0: return 0.05;
    case TL_TYPE_W4G128: return 0.12;
    default: return 0.1;
    }
}

/* mean next-token NLL of ids under model path */
static double nll(const char *path, const int32_t *ids, int n) {
    tl_error err = {{0}};
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s does not load: %s", path, err.msg);
    if (!m) return INFINITY;
    tl_session *s = tl_session_new_with_policies(m, n, 2, n, NULL, &err);
    CHECKF(s != NULL, "session: %s", err.msg);
    double sum = 0;
    const int V = m->cfg.n_vocab;
    float *lg = malloc(sizeof(float) * (size_t)n * V);
    if (s && tl_session_eval(s, ids, n, lg, true, &err) == 0) {
        for (int t = 0; t + 1 < n; t++) {
            const float *l = lg + (size_t)t * V;
            double mx = l[0], z = 0;
            for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
            for (int v = 0; v < V; v++) z += exp(l[v] - mx);
            sum += log(z) + mx - l[ids[t + 1]];
        }
    } else {
        CHECKF(0, "eval: %s", err.msg);
        sum = INFINITY;
    }
    free(lg);
    tl_session_free(s);
    tl_model_free(m);
    return sum / (n - 1);
}

static int32_t *tokenize_file(const char *model, const char *path, size_t max_bytes, int *n) {
    tl_error err = {{0}};
    tl_model *m = tl_model_load(model, &err);
    size_t len = 0;
    char *text = tl_test_read_file(path, &len);
    if (!m || !text) {
        CHECKF(0, "cannot tokenize %s: %s", path, err.msg);
        free(text);
        tl_model_free(m);
        return NULL;
    }
    if (len > max_bytes) len = max_bytes;
    int32_t *ids = malloc(sizeof(int32_t) * (len + 16));
    size_t got = 0;
    CHECK(tl_tokenize(m->tok, text, len, true, false, ids, len + 16, &got, &err) == 0);
    *n = (int)got;
    free(text);
    tl_model_free(m);
    return ids;
}

/* the type the rules give a tensor of the source file */
static tl_type expected_type(const tl_gguf_tensor *t, tl_type target, const char *keep_exact) {
    if (t->n_dims != 2 || strstr(t->name, "norm")) return t->type;
    if (keep_exact && strstr(keep_exact, t->name)) return t->type;
    if (t->ne[0] % tl_type_info(target)->block_size == 0) return target;
    if (target == TL_TYPE_Q4_K) return TL_TYPE_Q5_0; /* llama.cpp's fallback */
    if (target == TL_TYPE_W4G128) return TL_TYPE_Q4_1;
    return t->type;
}

/* awq: matrices are rescaled before quantization and attn_norm/ffn_norm rewritten, so only
 * types and sizes are checked for them (test_awq checks the values) */
static void check_file(const char *src_path, const char *path, tl_type target, const char *keep_exact,
                       const tl_quantize_report *rep, bool awq) {
    tl_error err = {{0}};
    tl_gguf *src = tl_gguf_open(src_path, &err), *g = tl_gguf_open(path, &err);
    CHECKF(g != NULL, "%s: %s", path, err.msg);
    if (!g || !src) {
        tl_gguf_close(src);
        tl_gguf_close(g);
        return;
    }
    struct stat st;
    CHECK(stat(path, &st) == 0 && (uint64_t)st.st_size == rep->file_bytes && tl_gguf_file_size(g) == rep->file_bytes);
    CHECK(tl_gguf_n_tensors(g) == tl_gguf_n_tensors(src));
    /* metadata: everything copied, file type rewritten */
    uint32_t ft = 0;
    CHECK(tl_gguf_get_u32(g, "general.file_type", &ft, &err) == 0 && ft == tl_quantize_ftype(target));
    for (int64_t i = 0; i < tl_gguf_n_kv(src); i++) {
        size_t len;
        const char *k = tl_gguf_key_name(src, i, &len);
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)len, k);
        CHECKF(tl_gguf_find(g, key) != NULL, "key %s lost", key);
    }
    uint64_t total = 0;
    int bad_type = 0, bad_size = 0, bad_bytes = 0, bad_rt = 0;
    for (int64_t i = 0; i < tl_gguf_n_tensors(src); i++) {
        const tl_gguf_tensor *a = tl_gguf_tensor_at(src, i);
        const tl_gguf_tensor *b = tl_gguf_find_tensor(g, a->name);
        if (!b) {
            CHECKF(0, "tensor %s missing", a->name);
            continue;
        }
        const tl_type want = expected_type(a, target, keep_exact);
        if (b->type != want) {
            bad_type++;
            fprintf(stderr, "  %s: type %s, expected %s\n", a->name, tl_type_name(b->type), tl_type_name(want));
        }
        const int64_t rows = b->ne[1] * b->ne[2] * b->ne[3];
        if (b->nbytes != tl_row_size(b->type, b->ne[0]) * (uint64_t)rows || b->ne[0] != a->ne[0] || b->ne[1] != a->ne[1])
            bad_size++;
        total += b->nbytes;
        if (b->type == a->type) {
            const bool rescaled = awq && (strstr(a->name, "attn_norm") || strstr(a->name, "ffn_norm"));
            bad_bytes += !rescaled && (a->nbytes != b->nbytes || memcmp(a->data, b->data, a->nbytes) != 0);
            continue;
        }
        if (awq && strncmp(a->name, "blk.", 4) == 0) continue;
        /* re-encoded: first and last rows equal tl_quantize_row of the source; error bounds */
        const int64_t n = a->ne[0];
        float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
        uint8_t *q = malloc(tl_row_size(b->type, n));
        double e2 = 0, s2 = 0;
        for (int64_t r = 0; r < rows; r++) {
            tl_get_row(a->type, a->data, n, r, x);
            tl_get_row(b->type, b->data, n, r, y);
            if (r == 0 || r == rows - 1) {
                tl_quantize_row(b->type, x, q, n);
                bad_bytes += memcmp(q, (const uint8_t *)b->data + r * tl_row_size(b->type, n), tl_row_size(b->type, n)) != 0;
            }
            for (int64_t j = 0; j < n; j++) {
                e2 += (double)(y[j] - x[j]) * (y[j] - x[j]);
                s2 += (double)x[j] * x[j];
            }
        }
        const double rel = sqrt(e2 / s2);
        if (rel >= rt_limit(b->type)) {
            bad_rt++;
            fprintf(stderr, "  %s (%s): relative rmse %.4f over limit %.3f\n", a->name, tl_type_name(b->type), rel,
                    rt_limit(b->type));
        }
        free(x);
        free(y);
        free(q);
    }
    CHECKF(bad_type == 0, "%s: %d tensors of the wrong type", tl_type_name(target), bad_type);
    CHECKF(bad_size == 0, "%s: %d tensors of the wrong size", tl_type_name(target), bad_size);
    CHECKF(bad_bytes == 0, "%s: %d tensors with bytes other than tl_quantize_row's / the source's", tl_type_name(target),
           bad_bytes);
    CHECKF(bad_rt == 0, "%s: %d tensors over the round-trip limit", tl_type_name(target), bad_rt);
    CHECK(total == rep->bytes_out);
    tl_gguf_close(src);
    tl_gguf_close(g);
}

static void test_types(const char *model, const int32_t *ids, int n, double nll_f16) {
    static const struct { tl_type t; double dnll; } cases[] = {
        {TL_TYPE_Q8_0, 0.01}, {TL_TYPE_Q4_0, 0.3}, {TL_TYPE_Q4_K, 0.25}, {TL_TYPE_W4G128, 0.3}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        tl_quantize_params p;
        tl_quantize_default_params(&p);
        p.type = cases[c].t;
        p.n_threads = 2;
        tl_quantize_report rep;
        tl_error err = {{0}};
        const char *out = tmp_path(tl_type_name(p.type));
        const int rc = tl_quantize_file(model, out, &p, &rep, &err);
        CHECKF(rc == 0, "quantize %s: %s", tl_type_name(p.type), err.msg);
        if (rc) continue;
        CHECK(rep.n_quantized + rep.n_fallback == 58 && rep.n_tensors == 75);
        check_file(model, out, p.type, NULL, &rep, false);
        const double d = nll(out, ids, n) - nll_f16;
        printf("  %-6s: file %.2f MiB, %d quantized, %d fallback; NLL +%.4f over f16 (limit %.2f)\n",
               tl_type_name(p.type), rep.file_bytes / 1048576.0, rep.n_quantized, rep.n_fallback, d, cases[c].dnll);
        CHECKF(fabs(d) < cases[c].dnll, "%s: NLL change %g", tl_type_name(p.type), d);
        tl_quantize_report_free(&rep);
        unlink(out);
    }
    /* --keep: the named tensors are copied byte for byte */
    tl_quantize_params p;
    tl_quantize_default_params(&p);
    p.type = TL_TYPE_Q4_0;
    p.keep = "output,token_embd,ffn_down";
    tl_quantize_report rep;
    tl_error err = {{0}};
    const char *out = tmp_path("keep");
    CHECKF(tl_quantize_file(model, out, &p, &rep, &err) == 0, "keep: %s", err.msg);
    CHECK(rep.n_quantized == 58 - 2 - 8 && rep.n_kept == 17 + 2 + 8);
    char exact[1024] = "output.weight token_embd.weight";
    for (int l = 0; l < 8; l++) snprintf(exact + strlen(exact), sizeof exact - strlen(exact), " blk.%d.ffn_down.weight", l);
    check_file(model, out, TL_TYPE_Q4_0, exact, &rep, false);
    tl_quantize_report_free(&rep);
    unlink(out);
    /* errors name the problem */
    tl_type t;
    bool awq;
    CHECK(tl_quantize_parse_type("q4_k", &t, &awq, &err) == 0 && t == TL_TYPE_Q4_K && !awq);
    CHECK(tl_quantize_parse_type("AWQ", &t, &awq, &err) == 0 && t == TL_TYPE_W4G128 && awq);
    CHECK(tl_quantize_parse_type("q3_K", &t, &awq, &err) == -1 && strstr(err.msg, "q3_K"));
    tl_quantize_default_params(&p);
    p.type = TL_TYPE_W4G128;
    p.awq = true;
    CHECK(tl_quantize_file(model, out, &p, &rep, &err) == -1 && strstr(err.msg, "calibration"));
    p.calib_path = "/nonexistent/calib.txt";
    CHECK(tl_quantize_file(model, out, &p, &rep, &err) == -1 && strstr(err.msg, "/nonexistent/calib.txt"));
    tl_quantize_report_free(&rep);
    CHECK(tl_quantize_file("/nonexistent/in.gguf", out, &p, &rep, &err) == -1 && strstr(err.msg, "in.gguf"));
    CHECK(access(out, F_OK) != 0);
}

/* ------------------------------------------------------------------ AWQ */

typedef struct {
    float *rows; /* ATTN_IN rows of layer `layer` */
    int n, cap, dim, layer;
} grab;

static void grab_rows(void *ctx, int layer, tl_act_point pt, const float *x, int n_rows, int dim) {
    grab *g = ctx;
    if (layer != g->layer || pt != TL_ACT_ATTN_IN) return;
    g->dim = dim;
    for (int r = 0; r < n_rows && g->n < g->cap; r++, g->n++)
        memcpy(g->rows + (size_t)g->n * dim, x + (size_t)r * dim, sizeof(float) * dim);
}

/* sum over rows and the q/k/v matrices of ||X W^T - Xs Q^T||^2, W from src, Q from file */
static double qkv_error(const grab *gr, const tl_gguf *src, const tl_gguf *q, int layer, bool scaled) {
    char name[64];
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", layer);
    const float *g0 = tl_gguf_find_tensor(src, name)->data, *g1 = tl_gguf_find_tensor(q, name)->data;
    const int dim = gr->dim;
    float *xs = malloc(sizeof(float) * dim), *w = malloc(sizeof(float) * dim), *wq = malloc(sizeof(float) * dim);
    double err = 0;
    static const char *mats[] = {"attn_q", "attn_k", "attn_v"};
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "blk.%d.%s.weight", layer, mats[k]);
        const tl_gguf_tensor *a = tl_gguf_find_tensor(src, name), *b = tl_gguf_find_tensor(q, name);
        for (int64_t o = 0; o < a->ne[1]; o++) {
            tl_get_row(a->type, a->data, dim, o, w);
            tl_get_row(b->type, b->data, dim, o, wq);
            for (int r = 0; r < gr->n; r++) {
                const float *x = gr->rows + (size_t)r * dim;
                double y0 = 0, y1 = 0;
                for (int i = 0; i < dim; i++) {
                    const double xi = scaled ? (double)x[i] * g1[i] / g0[i] : x[i];
                    y0 += (double)x[i] * w[i];
                    y1 += xi * wq[i];
                }
                err += (y1 - y0) * (y1 - y0);
            }
        }
    }
    free(xs);
    free(w);
    free(wq);
    return err;
}

static void test_awq(const char *model, const int32_t *ids, int n, double nll_f16) {
    const char *calib = tl_test_shared("models/README.md"); /* prose about models, not the evaluation text */
    if (!tl_test_have(calib)) return;
    tl_quantize_params p;
    tl_quantize_default_params(&p);
    p.type = TL_TYPE_W4G128;
    p.awq = true;
    p.calib_path = calib;
    p.n_threads = 2;
    p.awq_params.max_tokens = 256;
    p.awq_params.n_ctx = 256;
    p.awq_params.max_samples = 256; /* all rows: the objective below is over every calibration row */
    p.awq_params.n_grid = 5;
    p.awq_params.clip_grid = 8;
    tl_quantize_report rep;
    tl_error err = {{0}};
    const char *out = tmp_path("awq"), *rtn = tmp_path("rtn");
    const int rc = tl_quantize_file(model, out, &p, &rep, &err);
    CHECKF(rc == 0, "awq: %s", err.msg);
    if (rc) return;
    CHECK(rep.awq_tokens == 256 && rep.awq_samples == 256 && rep.n_awq_groups == 8 * 4);
    int applied = 0, better = 0, worse = 0, skipped_o = 0;
    for (int i = 0; i < rep.n_awq_groups; i++) {
        const tl_awq_group *g = &rep.awq_groups[i];
        if (!g->applied) {
            skipped_o += g->point == TL_ACT_ATTN_OUT && g->why && strstr(g->why, "grouped-query");
            continue;
        }
        applied++;
        worse += !(g->err_awq <= g->err_rtn);
        better += g->err_awq < 0.98 * g->err_rtn;
    }
    printf("  awq: %d groups scaled, %d at least 2%% better than RTN, %d worse; o skipped in %d layers (GQA)\n",
           applied, better, worse, skipped_o);
    CHECK(applied == 24 && skipped_o == 8 && worse == 0 && better >= 12);
    check_file(model, out, TL_TYPE_W4G128, NULL, &rep, true); /* types and sizes (values: below) */
    tl_quantize_report_free(&rep);

    /* the same objective recomputed from the written files (q/k/v of layers 0 and 5) */
    tl_quantize_default_params(&p);
    p.type = TL_TYPE_W4G128;
    CHECKF(tl_quantize_file(model, rtn, &p, &rep, &err) == 0, "rtn: %s", err.msg);
    tl_quantize_report_free(&rep);
    int n_cal = 0;
    int32_t *cal = tokenize_file(model, calib, 1 << 20, &n_cal);
    tl_model *m = tl_model_load(model, &err);
    tl_gguf *gs = tl_gguf_open(model, &err), *ga = tl_gguf_open(out, &err), *gr = tl_gguf_open(rtn, &err);
    if (cal && m && gs && ga && gr && n_cal >= 256) {
        for (int layer = 0; layer < 8; layer += 5) {
            grab g = {malloc(sizeof(float) * 256 * 512), 0, 256, 0, layer};
            tl_session *s = tl_session_new_with_policies(m, 256, 2, 256, NULL, &err);
            s->observer = grab_rows;
            s->observer_ctx = &g;
            CHECK(tl_session_eval(s, cal, 256, NULL, false, &err) == 0);
            tl_session_free(s);
            const double e_rtn = qkv_error(&g, gs, gr, layer, false), e_awq = qkv_error(&g, gs, ga, layer, true);
            printf("  awq layer %d q/k/v output error from the files: RTN %.4g, AWQ %.4g\n", layer, e_rtn, e_awq);
            CHECKF(e_awq <= e_rtn * (1 + 1e-4), "layer %d: AWQ %g > RTN %g", layer, e_awq, e_rtn);
            free(g.rows);
        }
    } else {
        CHECKF(0, "cannot recompute the objective: %s", err.msg);
    }
    tl_gguf_close(gs);
    tl_gguf_close(ga);
    tl_gguf_close(gr);
    tl_model_free(m);
    free(cal);
    const double d_awq = nll(out, ids, n) - nll_f16, d_rtn = nll(rtn, ids, n) - nll_f16;
    printf("  NLL over f16 on PG-essay text: w4g128 RTN +%.4f, AWQ +%.4f\n", d_rtn, d_awq);
    CHECKF(fabs(d_awq) < 0.3, "AWQ NLL change %g", d_awq);
    unlink(out);
    unlink(rtn);
}

/* AWQ writes whole tensors; phi3's fused attn_qkv / ffn_up are refused by name, not written thrice. */
static void test_awq_fused(void) {
    tl_error err = {{0}};
    tl_model *m = tl_model_load(tl_test_fixture("synth_phi3.gguf"), &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    int32_t ids[64];
    for (int i = 0; i < 64; i++) ids[i] = i * 3;
    tl_awq_result r;
    CHECK(tl_awq_run(m, ids, 64, NULL, NULL, NULL, &r, &err) != 0);
    CHECKF(strstr(err.msg, "blk.0.attn_qkv.weight") && strstr(err.msg, "phi3"), "%s", err.msg);
    tl_awq_result_free(&r);
    tl_model_free(m);
}

int main(void) {
    test_awq_fused();
    const char *model = tl_test_shared("models/tailor-test-31m.gguf");
    const char *text = tl_test_shared("data/pg_essays/gap.txt");
    if (!tl_test_have(model) || !tl_test_have(text)) return tl_test_done();
    int n = 0;
    int32_t *ids = tokenize_file(model, text, 6000, &n);
    if (ids && n > 128) n = 128;
    if (ids && n == 128) {
        const double base = nll(model, ids, n);
        printf("f16 NLL on %d tokens: %.4f\n", n, base);
        test_types(model, ids, n, base);
        test_awq(model, ids, n, base);
    } else {
        CHECK(0);
    }
    free(ids);
    return tl_test_done();
}
