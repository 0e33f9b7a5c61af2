/* tailor calibrate: TailorKV's per-layer dense/sparse identification; prints a table, writes
 * the plan (JSON, for --kv tailor:plan=FILE) and an SVG bar chart of the scores. With --auto B,
 * the key layout of each layer for auto:B instead (a plan for --kv FILE). */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: tailor calibrate -m MODEL -f TEXT [-c CTX] [--tau 0.2] [--top 0.05] [--nq 32] -o plan.json\n"
           "       [--svg scores.svg] [-t THREADS] [--chunk N]\n"
           "  Prefills the first CTX tokens of TEXT (default 4096, or all of it if shorter) with f32 KV,\n"
           "  scores each layer by the attention mass outside each of the last NQ query rows' top TOP\n"
           "  fraction of keys (mean over rows and heads), and marks a layer dense (quantize) if its\n"
           "  score > TAU, else sparse (offload + retrieve). Sliding-window layers are 'window'.\n"
           "  Use the plan with --kv tailor:plan=plan.json[,bits=1,...]. The SVG defaults to the plan\n"
           "  path with .svg.\n"
           "\n"
           "usage: tailor calibrate -m MODEL --auto B [-f TEXT] [--gpu] -o plan.json [-t THREADS]\n"
           "  The key layout --kv auto:B would choose (B = 4, k4v2, 4:g64, ...), measured per layer on\n"
           "  the first %d tokens of TEXT (default: a built-in text): per-token, per-channel, smoothing,\n"
           "  rotation; the attention error of each is printed. --gpu: only layouts the GPU runs.\n"
           "  Use the plan with --kv plan.json (no calibration at load).\n"
           "usage: tailor calibrate -m MODEL -f TEXT --diagnose KV [-c 4096] [--nq 32] [-t THREADS]\n"
           "  Where the quantized KV policy KV (k2v2:kivi, k4v4, plan.json, ...) loses precision: per layer,\n"
           "  the relative attention error of the last --nq queries over -c tokens with the keys quantized\n"
           "  (values exact), the values quantized (keys exact), and both, and the worst query head.\n",
           TL_KV_AUTO_CALIB_TOKENS);
}

/* --auto: measure and write the plan auto:SPEC resolves to. */
static int calibrate_auto(const tl_cli_common *c, const char *spec, bool gpu, const char *out) {
    tl_error err = {{0}};
    int rc = 1;
    size_t text_len = 0;
    char *text = NULL, *json = NULL, full[64];
    tl_kv_plan plan = {0};
    snprintf(full, sizeof full, "auto:%s", spec);
    tl_model *m = NULL;
    if (tl_kv_policy_check(full, &err)) {
        tl_fail_prefix(&err, "--auto");
        goto done;
    }
    if (!(m = tl_model_load(c->model, &err))) goto done;
    if (c->file && !(text = tl_cli_prompt_text(c, tl_model_tokenizer(m), TL_KV_AUTO_CALIB_TOKENS, &text_len, &err)))
        goto done;
    const int L = tl_model_n_layer(m);
    if (tl_kv_plan_parse(&plan, full, NULL, L, &err)) goto done; /* every layer auto:SPEC */
    tl_kv_auto_report rep;
    if (tl_kv_auto_resolve(m, plan.layers, text, text_len, gpu, c->n_threads, &rep, &err)) goto done;
    char line[512];
    tl_kv_auto_summary(&rep, line, sizeof line);
    printf("auto:%s on %s (%s): %s\n", spec, c->model, c->file ? c->file : "built-in text", line);
    printf("attention error (relative L2 of the output, keys quantized, values exact)\nlayer");
    for (int i = 0; i < rep.n_candidates; i++) printf(" %14s", tl_kv_auto_candidate_name(i));
    printf("  chosen\n");
    for (int il = 0; il < L; il++) {
        printf("%5d", il);
        for (int i = 0; i < rep.n_candidates; i++) {
            if (rep.chosen[il] < 0) printf(" %14s", "-");
            else printf(" %13.4f%s", rep.err[il][i], i == rep.chosen[il] ? "*" : " ");
        }
        char pname[128];
        tl_kv_plan_format_layer(&plan, il, pname, sizeof pname);
        printf("  %s\n", rep.chosen[il] < 0 ? "(sliding window: dense)" : pname);
    }
    json = tl_kv_auto_plan_json(&rep, plan.layers, full, c->file ? c->file : "built-in");
    size_t jl = strlen(json);
    json = tl_xrealloc(json, jl + 2);
    json[jl++] = '\n';
    json[jl] = 0;
    if (tl_write_file(out, json, jl, &err)) goto done;
    printf("plan: %s (use: --kv %s)\n", out, out);
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor calibrate: %s\n", err.msg);
    free(json);
    free(text);
    tl_kv_plan_free(&plan);
    tl_model_free(m);
    return rc;
}

/* --diagnose: the keys' and the values' share of a quantized policy's attention error. */
static int calibrate_diagnose(const tl_cli_common *c, const char *spec, int n_q) {
    tl_error err = {{0}};
    int rc = 1;
    size_t text_len = 0, n_tok = 0;
    char *text = NULL;
    int32_t *ids = NULL;
    tl_kv_plan plan = {0};
    tl_model *m = tl_model_load(c->model, &err);
    if (!m) goto done;
    const int L = tl_model_n_layer(m), ctx = c->n_ctx > 0 ? c->n_ctx : 4096;
    const tl_tokenizer *tok = tl_model_tokenizer(m);
    if (tl_kv_plan_parse(&plan, spec, NULL, L, &err)) goto done;
    if (!(text = tl_cli_prompt_text(c, tok, ctx, &text_len, &err))) goto done;
    if (!(ids = tl_tokenize_all(tok, text, text_len, true, &n_tok, &err))) goto done;
    const int n = (int)TL_MIN((size_t)ctx, n_tok);
    tl_kv_diag_report rep;
    if (tl_kv_diagnose(m, plan.layers, ids, n, n_q, c->n_threads, &rep, &err)) goto done;
    printf("KV error of %s on %s (%s): %d tokens, last %d query rows (%.1f s)\n", spec, c->model, c->file, rep.n_tokens,
           rep.n_rows, rep.seconds);
    printf("relative L2 error of the attention output: keys quantized (values exact), values quantized (keys exact), both\n");
    printf("layer  policy                    keys     values       both  worst head\n");
    double sk = 0, sv = 0, skv = 0;
    int nm = 0, worse_k = 0;
    for (int il = 0; il < L; il++) {
        const tl_kv_diag_layer *d = &rep.layer[il];
        char pname[128];
        tl_kv_plan_format_layer(&plan, il, pname, sizeof pname);
        if (!d->measured) {
            printf("%5d  %-22s  (not quantized or a sliding window: not measured)\n", il, pname);
            continue;
        }
        printf("%5d  %-22s %7.4f  %9.4f  %9.4f  %3d (%.4f)\n", il, pname, d->err_k, d->err_v, d->err_kv, d->worst_head,
               d->worst_head_err);
        sk += d->err_k, sv += d->err_v, skv += d->err_kv;
        nm++;
        worse_k += d->err_k > d->err_v;
    }
    if (nm)
        printf("mean over %d layers: keys %.4f, values %.4f, both %.4f; the keys' error is the larger in %d of %d layers\n",
               nm, sk / nm, sv / nm, skv / nm, worse_k, nm);
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor calibrate: %s\n", err.msg);
    tl_kv_plan_free(&plan);
    free(ids);
    free(text);
    tl_model_free(m);
    return rc;
}

/* A bar per layer, the tau line, dense bars dark, sparse light, window grey. */
static char *svg_chart(const char *title, int n, const double *scores, const int *kinds, double tau) {
    const int W = 60 + 22 * n + 20, Ht = 260, x0 = 50, y0 = 220, ph = 180;
    size_t cap = 8192 + (size_t)n * 400, len = 0;
    char *b = tl_xmalloc(cap);
#define P(...) len += (size_t)snprintf(b + len, cap - len, __VA_ARGS__)
    P("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"10\">\n", W, Ht);
    P("<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    P("<text x=\"%d\" y=\"16\" font-size=\"12\">%s</text>\n", x0, title);
    for (int t = 0; t <= 4; t++) {
        const double v = t * 0.25;
        const int y = y0 - (int)(v * ph);
        P("<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#ddd\"/>\n", x0, y, W - 10, y);
        P("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.2f</text>\n", x0 - 4, y + 3, v);
    }
    for (int i = 0; i < n; i++) {
        const double v = isnan(scores[i]) ? 0 : scores[i];
        const int h = (int)(v * ph), x = x0 + 6 + 22 * i;
        const char *col = kinds[i] == TL_TAILOR_DENSE ? "#c0392b" : kinds[i] == TL_TAILOR_SPARSE ? "#5dade2" : "#aaaaaa";
        P("<rect x=\"%d\" y=\"%d\" width=\"16\" height=\"%d\" fill=\"%s\"><title>layer %d: %.4f</title></rect>\n", x,
          y0 - h, h, col, i, v);
        P("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", x + 8, y0 + 12, i);
    }
    const int ty = y0 - (int)(tau * ph);
    P("<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\" stroke-dasharray=\"4 3\"/>\n", x0, ty, W - 10, ty);
    P("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">tau %.2f</text>\n", W - 10, ty - 3, tau);
    P("<text x=\"%d\" y=\"%d\">layer (red: dense/quantize, blue: sparse/offload, grey: sliding window)</text>\n", x0, y0 + 28);
    P("<text x=\"12\" y=\"%d\" transform=\"rotate(-90 12 %d)\">mass outside top 5%%</text>\n", y0 - 40, y0 - 40);
    P("</svg>\n");
#undef P
    return b;
}

int tl_cmd_calibrate(int argc, char **argv) {
    tl_cli_common c;
    tl_cli_common_init(&c);
    float tau = 0.2f, top = 0.05f;
    int n_q = 32;
    const char *out = NULL, *svg = NULL, *auto_spec = NULL, *diag_spec = NULL;
    bool gpu = false;
    for (int i = 1; i < argc; i++) {
        int r = tl_cli_common_arg(&c, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        const char *a = argv[i], *v;
        if (!strcmp(a, "--tau") || !strcmp(a, "--top") || !strcmp(a, "--nq") || !strcmp(a, "-o") || !strcmp(a, "--svg")) {
            if (!(v = tl_cli_value(argc, argv, &i))) return 2;
            if (!strcmp(a, "--tau") && (tl_cli_float(a, v, &tau) || tau < 0 || tau > 1)) return 2;
            if (!strcmp(a, "--top") && (tl_cli_float(a, v, &top) || !(top > 0 && top <= 1))) {
                fprintf(stderr, "tailor calibrate: --top must be in (0, 1]\n");
                return 2;
            }
            if (!strcmp(a, "--nq") && tl_cli_int(a, v, 1, 1 << 20, &n_q)) return 2;
            if (!strcmp(a, "-o")) out = v;
            if (!strcmp(a, "--svg")) svg = v;
        } else if (!strcmp(a, "--auto")) {
            if (!(auto_spec = tl_cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--diagnose")) {
            if (!(diag_spec = tl_cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--gpu")) {
            gpu = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help();
            return 0;
        } else {
            fprintf(stderr, "tailor calibrate: unknown flag '%s' (see -h)\n", a);
            return 2;
        }
    }
    if (diag_spec) {
        if (!c.model || !c.file) {
            fprintf(stderr, "tailor calibrate: --diagnose needs -m MODEL and -f TEXT (see -h)\n");
            return 2;
        }
        return calibrate_diagnose(&c, diag_spec, n_q);
    }
    if (auto_spec) {
        if (!c.model || !out) {
            fprintf(stderr, "tailor calibrate: --auto needs -m MODEL and -o PLAN (see -h)\n");
            return 2;
        }
        return calibrate_auto(&c, auto_spec, gpu, out);
    }
    if (!c.model || !c.file || !out) {
        fprintf(stderr, "tailor calibrate: -m MODEL, -f TEXT and -o PLAN are required (see -h)\n");
        return 2;
    }
    char *svg_path = NULL;
    if (!svg) { /* the plan path with .svg for .json */
        const size_t ol = strlen(out);
        svg_path = tl_xmalloc(ol + 5);
        memcpy(svg_path, out, ol + 1);
        if (ol > 5 && !strcmp(out + ol - 5, ".json")) svg_path[ol - 5] = 0;
        strcat(svg_path, ".svg");
        svg = svg_path;
    }
    if (tl_cli_output("-o", out) || tl_cli_output("--svg", svg)) {
        free(svg_path);
        return 1;
    }
    tl_error err = {{0}};
    int rc = 1;
    size_t text_len = 0, n_tok = 0;
    char *text = NULL, *json = NULL, *chart = NULL;
    int32_t *ids = NULL;
    double *scores = NULL;
    bool *window = NULL;
    int *kinds = NULL;
    tl_model *m = tl_model_load(c.model, &err);
    if (!m) goto done;
    const int ctx = c.n_ctx > 0 ? c.n_ctx : 4096;
    const tl_tokenizer *tok = tl_model_tokenizer(m);
    if (!(text = tl_cli_prompt_text(&c, tok, ctx, &text_len, &err))) goto done;
    if (!(ids = tl_tokenize_all(tok, text, text_len, true, &n_tok, &err))) goto done;
    const int n = (int)TL_MIN((size_t)ctx, n_tok);
    if (n < n_q + 1) {
        tl_fail(&err, "%s: %d tokens; need more than --nq %d", c.file, n, n_q);
        goto done;
    }
    const int L = tl_model_n_layer(m);
    scores = tl_xcalloc((size_t)L, sizeof(double));
    window = tl_xcalloc((size_t)L, sizeof(bool));
    kinds = tl_xcalloc((size_t)L, sizeof(int));
    tl_calib_params cp = {.n_q = n_q, .top = top, .n_threads = c.n_threads, .chunk = c.chunk};
    const double t0 = tl_time_s();
    if (tl_calibrate(m, ids, n, &cp, scores, window, &err)) goto done;
    const double dt = tl_time_s() - t0;
    int n_dense = 0, n_sparse = 0;
    printf("TailorKV calibration: %s, %s, %d tokens, last %d query rows, top %.0f%% of keys, tau %.2f (%.1f s)\n",
           c.model, c.file, n, n_q, top * 100, tau, dt);
    printf("layer  score   decision\n");
    for (int i = 0; i < L; i++) {
        kinds[i] = window[i] ? TL_TAILOR_WINDOW : scores[i] > tau ? TL_TAILOR_DENSE : TL_TAILOR_SPARSE;
        n_dense += kinds[i] == TL_TAILOR_DENSE;
        n_sparse += kinds[i] == TL_TAILOR_SPARSE;
        char bar[41];
        const int nb = (int)lround(TL_MIN(1.0, TL_MAX(0.0, scores[i])) * 40);
        memset(bar, '#', (size_t)nb);
        bar[nb] = 0;
        printf("%5d  %.4f  %-7s %s\n", i, scores[i],
               kinds[i] == TL_TAILOR_DENSE ? "dense" : kinds[i] == TL_TAILOR_SPARSE ? "sparse" : "window", bar);
    }
    printf("dense (quantize): %d   sparse (offload): %d   sliding window: %d\n", n_dense, n_sparse, L - n_dense - n_sparse);
    const char *base = strrchr(c.model, '/');
    json = tl_tailor_plan_json(base ? base + 1 : c.model, L, scores, kinds, tau, top, n_q, n);
    size_t jl = strlen(json);
    json = tl_xrealloc(json, jl + 2);
    json[jl++] = '\n';
    json[jl] = 0;
    if (tl_write_file(out, json, jl, &err)) goto done;
    {
        char title[512];
        snprintf(title, sizeof title, "TailorKV dense-preference score per layer: %s (%d tokens)", base ? base + 1 : c.model, n);
        chart = svg_chart(title, L, scores, kinds, tau);
        if (tl_write_file(svg, chart, strlen(chart), &err)) goto done;
    }
    printf("plan: %s   chart: %s\n", out, svg);
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor calibrate: %s\n", err.msg);
    free(svg_path);
    free(chart);
    free(json);
    free(scores);
    free(window);
    free(kinds);
    free(ids);
    free(text);
    tl_model_free(m);
    return rc;
}
