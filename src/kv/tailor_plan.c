/* tailor_plan.c: TailorKV spec parsing ("tailor:plan=...,bits=..."), the calibration plan JSON
 * (writer and reader), and the per-session traffic summary. Grammar in tailor_plan.h. */
#include "tailor_plan.h"
#include "../base/common.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>

bool tl_tailor_spec(const char *spec) {
    return spec && !strncmp(spec, "tailor", 6) && (spec[6] == 0 || spec[6] == ':');
}

static bool parse_long(const char *s, long *out) {
    if (!*s) return false;
    errno = 0;
    char *end;
    const long v = strtol(s, &end, 10);
    if (*end || errno) return false;
    *out = v;
    return true;
}

/* "0+3-4" -> mark[] (layers given dense). */
static int parse_layer_list(const char *spec, const char *val, int n_layers, bool *mark, tl_error *err) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", val);
    for (char *save = NULL, *tok = strtok_r(buf, "+", &save); tok; tok = strtok_r(NULL, "+", &save)) {
        char *dash = strchr(tok, '-');
        long a, b;
        if (dash) {
            *dash = 0;
            if (!parse_long(tok, &a) || !parse_long(dash + 1, &b))
                return tl_fail(err, "--kv '%s': dense: '%s' is not a layer or range (e.g. 0+3-4)", spec, val);
        } else if (!parse_long(tok, &a)) {
            return tl_fail(err, "--kv '%s': dense: '%s' is not a layer or range (e.g. 0+3-4)", spec, val);
        } else {
            b = a;
        }
        if (a < 0 || b < a || b >= n_layers)
            return tl_fail(err, "--kv '%s': dense: layers %ld-%ld out of range (model has %d layers)", spec, a, b, n_layers);
        for (long i = a; i <= b; i++) mark[i] = true;
    }
    return 0;
}

int tl_tailor_plan_parse(tl_kv_plan *plan, const char *spec, int n_layers, tl_error *err) {
    memset(plan, 0, sizeof *plan);
    if (!tl_tailor_spec(spec)) return tl_fail(err, "--kv '%s': not a tailor spec (tailor:plan=FILE,...)", spec ? spec : "");
    if (n_layers <= 0 || n_layers > 100000) return tl_fail(err, "--kv '%s': bad layer count %d", spec, n_layers);
    long bits = 1, g = 64, r = 128, budget = 0, summary = 0, page = 0;
    long sinks = -1, recent = -1, topk = -1, channels = -1;
    double tau = NAN;
    const char *plan_path = NULL, *dense_list = NULL;
    char *buf = tl_xstrdup(spec[6] == ':' ? spec + 7 : "");
    int rc = -1;
    int *kinds = tl_xcalloc((size_t)n_layers, sizeof(int));
    double *scores = tl_xcalloc((size_t)n_layers, sizeof(double));
    bool *dense_mark = tl_xcalloc((size_t)n_layers, sizeof(bool));
    char *json = NULL;

    for (char *save = NULL, *f = strtok_r(buf, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(f, '=');
        if (!eq) {
            tl_fail(err, "--kv '%s': field '%s' needs a value (NAME=VALUE)", spec, f);
            goto done;
        }
        *eq = 0;
        const char *key = f, *val = eq + 1;
        struct {
            const char *name;
            long *dst;
            long lo, hi;
        } ints[] = {{"bits", &bits, 1, 8},        {"g", &g, 1, 4096},           {"r", &r, 0, 1 << 20},
                    {"budget", &budget, 0, 1 << 24}, {"summary", &summary, 0, 8}, {"page", &page, 0, 1 << 20},
                    {"sinks", &sinks, 0, 1 << 24}, {"recent", &recent, 0, 1 << 24}, {"topk", &topk, 0, 1 << 24},
                    {"channels", &channels, 1, 4096}};
        bool done_field = false;
        for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
            if (!strcmp(key, ints[i].name)) {
                long v;
                if (!parse_long(val, &v) || v < ints[i].lo || v > ints[i].hi) {
                    tl_fail(err, "--kv '%s': %s: '%s' is not an integer in [%ld, %ld]", spec, key, val, ints[i].lo,
                            ints[i].hi);
                    goto done;
                }
                *ints[i].dst = v;
                done_field = true;
            }
        if (done_field) continue;
        if (!strcmp(key, "plan")) {
            plan_path = val;
        } else if (!strcmp(key, "dense")) {
            dense_list = val;
        } else if (!strcmp(key, "tau")) {
            char *end;
            errno = 0;
            tau = strtod(val, &end);
            if (errno || end == val || *end || !(tau >= 0 && tau <= 1)) {
                tl_fail(err, "--kv '%s': tau: '%s' is not a number in [0, 1]", spec, val);
                goto done;
            }
        } else {
            tl_fail(err, "--kv '%s': unknown field '%s' (plan, tau, dense, bits, g, r, budget, sinks, recent, topk, "
                         "channels, summary, page)", spec, key);
            goto done;
        }
    }
    if (bits != 1 && bits != 2 && bits != 4 && bits != 8) {
        tl_fail(err, "--kv '%s': bits %ld not supported (use 1, 2, 4, 8)", spec, bits);
        goto done;
    }
    if (budget != 0 && budget != 192 && budget != 1024) {
        tl_fail(err, "--kv '%s': budget %ld is not a preset (192 or 1024; or give sinks/recent/topk)", spec, budget);
        goto done;
    }
    if (summary != 0 && summary != 2 && summary != 4 && summary != 8) {
        tl_fail(err, "--kv '%s': summary %ld not supported (0, 2, 4, 8)", spec, summary);
        goto done;
    }

    /* which layers are dense */
    for (int i = 0; i < n_layers; i++) kinds[i] = i == 0 ? TL_TAILOR_DENSE : TL_TAILOR_SPARSE;
    if (plan_path) {
        tl_error e2 = {{0}};
        if (!(json = tl_read_whole(plan_path, NULL, &e2))) {
            tl_fail(err, "--kv '%s': plan %s", spec, e2.msg);
            goto done;
        }
        double ptau = NAN;
        if (tl_tailor_plan_read(json, plan_path, n_layers, kinds, scores, &ptau, &e2)) {
            tl_fail(err, "--kv '%s': %s", spec, e2.msg);
            goto done;
        }
        if (!isnan(tau))
            for (int i = 0; i < n_layers; i++) {
                if (kinds[i] == TL_TAILOR_WINDOW) continue;
                if (isnan(scores[i])) {
                    tl_fail(err, "--kv '%s': tau given but plan %s has no score for layer %d", spec, plan_path, i);
                    goto done;
                }
                kinds[i] = scores[i] > tau ? TL_TAILOR_DENSE : TL_TAILOR_SPARSE;
            }
    }
    if (dense_list) {
        if (parse_layer_list(spec, dense_list, n_layers, dense_mark, err)) goto done;
        for (int i = 0; i < n_layers; i++)
            if (kinds[i] != TL_TAILOR_WINDOW) kinds[i] = dense_mark[i] ? TL_TAILOR_DENSE : TL_TAILOR_SPARSE;
    }

    /* policies */
    tl_kv_layer_policy dense;
    {
        char txt[128];
        snprintf(txt, sizeof txt, "k%ldv%ld:kchan:vtok:g%ld:r%ld:asym", bits, bits, g, r);
        tl_error e2 = {{0}};
        if (tl_kv_policy_parse(txt, &dense, &e2)) {
            tl_fail(err, "--kv '%s': dense layers: %s", spec, e2.msg);
            goto done;
        }
    }
    tl_kv_layer_policy sparse;
    memset(&sparse, 0, sizeof sparse);
    sparse.kind = TL_KV_OFFLOAD;
    tl_kv_offload_params *op = &sparse.off;
    if (budget == 1024) *op = (tl_kv_offload_params){.sinks = 64, .recent = 64, .topk = 896, .channels = 12};
    else *op = (tl_kv_offload_params){.sinks = 8, .recent = 56, .topk = 128, .channels = 8};
    if (sinks >= 0) op->sinks = (int)sinks;
    if (recent >= 0) op->recent = (int)recent;
    if (topk >= 0) op->topk = (int)topk;
    if (channels >= 0) op->channels = (int)channels;
    op->summary_bits = (int)summary;
    op->page = (int)page;
    tl_kv_layer_policy f16;
    memset(&f16, 0, sizeof f16);
    f16.kind = TL_KV_F16;

    plan->n_layers = n_layers;
    plan->layers = tl_xcalloc((size_t)n_layers, sizeof *plan->layers);
    for (int i = 0; i < n_layers; i++)
        plan->layers[i] = kinds[i] == TL_TAILOR_DENSE ? dense : kinds[i] == TL_TAILOR_SPARSE ? sparse : f16;
    rc = 0;
done:
    free(json);
    free(buf);
    free(kinds);
    free(scores);
    free(dense_mark);
    return rc;
}

char *tl_tailor_plan_json(const char *model, int n_layers, const double *scores, const int *kinds, double tau,
                          double top, int n_q, int n_tokens) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", model ? model : "");
    cJSON_AddNumberToObject(root, "n_layers", n_layers);
    cJSON_AddNumberToObject(root, "tau", tau);
    cJSON_AddNumberToObject(root, "top", top);
    cJSON_AddNumberToObject(root, "n_q", n_q);
    cJSON_AddNumberToObject(root, "n_tokens", n_tokens);
    cJSON *sc = cJSON_AddArrayToObject(root, "scores");
    for (int i = 0; i < n_layers; i++) {
        /* 4 decimals are plenty and keep the file readable */
        const double v = round(scores[i] * 1e4) / 1e4;
        cJSON_AddItemToArray(sc, isnan(scores[i]) ? cJSON_CreateNull() : cJSON_CreateNumber(v));
    }
    cJSON *ly = cJSON_AddObjectToObject(root, "layers");
    for (int i = 0; i < n_layers; i++) {
        char key[16];
        snprintf(key, sizeof key, "%d", i);
        cJSON_AddStringToObject(ly, key, kinds[i] == TL_TAILOR_DENSE ? "dense" : kinds[i] == TL_TAILOR_SPARSE ? "sparse" : "window");
    }
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    return txt;
}

int tl_tailor_plan_read(const char *json, const char *where, int n_layers, int *kinds, double *scores, double *tau,
                        tl_error *err) {
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return tl_fail(err, "%s: not a JSON object", where);
    }
    int rc = -1;
    for (int i = 0; i < n_layers; i++) {
        kinds[i] = -1;
        if (scores) scores[i] = NAN;
    }
    const cJSON *nl = cJSON_GetObjectItemCaseSensitive(root, "n_layers");
    if (cJSON_IsNumber(nl) && nl->valueint != n_layers) {
        tl_fail(err, "%s: plan is for %d layers, the model has %d", where, nl->valueint, n_layers);
        goto done;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tau");
    if (tau) *tau = cJSON_IsNumber(t) ? t->valuedouble : NAN;
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(root, "scores");
    if (sc && scores) {
        if (!cJSON_IsArray(sc) || cJSON_GetArraySize(sc) != n_layers) {
            tl_fail(err, "%s: \"scores\" must be an array of %d numbers", where, n_layers);
            goto done;
        }
        for (int i = 0; i < n_layers; i++) {
            const cJSON *v = cJSON_GetArrayItem(sc, i);
            if (cJSON_IsNumber(v)) scores[i] = v->valuedouble;
            else if (!cJSON_IsNull(v)) {
                tl_fail(err, "%s: scores[%d] is not a number", where, i);
                goto done;
            }
        }
    }
    const cJSON *ly = cJSON_GetObjectItemCaseSensitive(root, "layers");
    if (!cJSON_IsObject(ly)) {
        tl_fail(err, "%s: missing \"layers\" object ({\"0\": \"dense\", \"1\": \"sparse\", ...})", where);
        goto done;
    }
    for (const cJSON *it = ly->child; it; it = it->next) {
        long li;
        if (!parse_long(it->string, &li) || li < 0 || li >= n_layers) {
            tl_fail(err, "%s: layers: key '%s' is not a layer of this model (0..%d)", where, it->string, n_layers - 1);
            goto done;
        }
        const char *v = cJSON_IsString(it) ? it->valuestring : "";
        if (!strcmp(v, "dense")) kinds[li] = TL_TAILOR_DENSE;
        else if (!strcmp(v, "sparse")) kinds[li] = TL_TAILOR_SPARSE;
        else if (!strcmp(v, "window")) kinds[li] = TL_TAILOR_WINDOW;
        else {
            tl_fail(err, "%s: layers.%s: '%s' is not dense, sparse or window", where, it->string, v);
            goto done;
        }
    }
    for (int i = 0; i < n_layers; i++)
        if (kinds[i] < 0) {
            tl_fail(err, "%s: layers: layer %d missing", where, i);
            goto done;
        }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int tl_tailor_traffic(tl_kv_layer *const *kv, int n_layers, tl_kv_offload_stats *sum) {
    memset(sum, 0, sizeof *sum);
    int n = 0;
    for (int i = 0; i < n_layers; i++) {
        tl_kv_offload_stats st;
        if (tl_kv_offload_traffic(kv[i], &st)) continue;
        n++;
        sum->h2d_decode += st.h2d_decode;
        sum->h2d_channels += st.h2d_channels;
        sum->h2d_prefill += st.h2d_prefill;
        sum->d2h += st.d2h;
        sum->tokens_attended += st.tokens_attended;
        sum->decode_steps = TL_MAX(sum->decode_steps, st.decode_steps);
        sum->unpredicted = TL_MAX(sum->unpredicted, st.unpredicted);
    }
    return n;
}

int tl_tailor_print_mem(FILE *f, tl_kv_layer *const *kv, int n_layers) {
    tl_kv_offload_stats st;
    const int n = tl_tailor_traffic(kv, n_layers, &st);
    if (!n) return 0;
    uint64_t dev = 0, host = 0;
    for (int i = 0; i < n_layers; i++) {
        tl_kv_bytes b;
        kv[i]->ops->bytes(kv[i], &b);
        host += b.host;
        dev += tl_kv_bytes_total(&b) - b.host;
    }
    const double steps = st.decode_steps > 0 ? (double)st.decode_steps : 1.0;
    fprintf(f, "tailorKV: KV device tier %.2f MiB, host tier %.2f MiB; %d sparse layers; decode h2d %.1f KiB/token "
               "(channel rows %.1f KiB) over %lld steps; prefill d2h %.2f MiB, h2d %.2f MiB\n",
            dev / 1048576.0, host / 1048576.0, n, st.h2d_decode / steps / 1024.0, st.h2d_channels / steps / 1024.0,
            (long long)st.decode_steps, st.d2h / 1048576.0, st.h2d_prefill / 1048576.0);
    return n;
}
