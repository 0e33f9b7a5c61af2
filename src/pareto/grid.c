/* grid.c: configurations of a Pareto sweep, from axes, JSON grid files or the default grid,
 * and their identity (canonical ids). */
#include "pareto.h"

#include <stdio.h>

#include <stdlib.h>
#include <string.h>

void tl_pareto_config_finish(tl_pareto_config *c) {
    char ch[16];
    if (c->chunk > 0) snprintf(ch, sizeof ch, "%d", c->chunk);
    else snprintf(ch, sizeof ch, "full");
    snprintf(c->id, sizeof c->id, "w=%s kv=%s%s%s chunk=%s", c->weights, c->kv, c->kv_layer[0] ? " kvl=" : "",
             c->kv_layer, ch);
    snprintf(c->label, sizeof c->label, "%s %s%s%s c%s", c->weights, c->kv, c->kv_layer[0] ? "+" : "", c->kv_layer, ch);
}

void tl_pareto_config_set(tl_pareto_config *c, const char *weights, const char *kv, const char *kv_layer, int chunk) {
    memset(c, 0, sizeof *c);
    snprintf(c->weights, sizeof c->weights, "%s", weights && *weights ? weights : "base");
    snprintf(c->kv, sizeof c->kv, "%s", kv && *kv ? kv : "f16");
    snprintf(c->kv_layer, sizeof c->kv_layer, "%s", kv_layer ? kv_layer : "");
    c->chunk = chunk < 0 ? 0 : chunk;
    tl_pareto_config_finish(c);
}

int tl_pareto_grid_add(tl_pareto_grid *g, const tl_pareto_config *c) {
    for (int i = 0; i < g->n; i++)
        if (!strcmp(g->v[i].id, c->id)) return i;
    if (g->n == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 32;
        g->v = tl_xrealloc(g->v, sizeof *g->v * (size_t)g->cap);
    }
    g->v[g->n] = *c;
    return g->n++;
}

void tl_pareto_grid_free(tl_pareto_grid *g) {
    free(g->v);
    memset(g, 0, sizeof *g);
}

/* split "a,b,c" into at most cap trimmed items (pointers into buf) */
static int split_list(char *buf, char **items, int cap) {
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && n < cap; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ') t++;
        size_t l = strlen(t);
        while (l && t[l - 1] == ' ') t[--l] = 0;
        if (*t) items[n++] = t;
    }
    return n;
}

static int parse_chunk(const char *s, int *out, tl_error *err) {
    if (!strcmp(s, "full") || !strcmp(s, "0")) return *out = 0, 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 1 || v > (1 << 24)) return tl_fail(err, "chunk '%s' is not a positive integer or 'full'", s);
    *out = (int)v;
    return 0;
}

/* A spec is quantized when it starts with k<bits> and is not k16v16. Modifiers go only there. */
static bool is_quant_spec(const char *kv) {
    return kv[0] == 'k' && kv[1] >= '1' && kv[1] <= '9' && strncmp(kv, "k16v16", 6) != 0;
}

#define MAXV 32

int tl_pareto_grid_from_axes(tl_pareto_grid *g, const tl_pareto_axes *a, tl_error *err) {
    char bw[1024], bk[4096], bg[256], bgr[256], br[256], bs[64], bro[64], bc[256];
    char *W[MAXV], *K[MAXV], *GR[MAXV], *GS[MAXV], *R[MAXV], *S[MAXV], *RO[MAXV], *C[MAXV];
    snprintf(bw, sizeof bw, "%s", a->weights ? a->weights : "base");
    snprintf(bk, sizeof bk, "%s", a->kv ? a->kv : "f16,k8v8,k8v4,k8v2,k4v4,k4v2,k2v2");
    snprintf(bg, sizeof bg, "%s", a->gran ? a->gran : "");
    snprintf(bgr, sizeof bgr, "%s", a->group ? a->group : "");
    snprintf(br, sizeof br, "%s", a->residual ? a->residual : "");
    snprintf(bs, sizeof bs, "%s", a->smooth ? a->smooth : "");
    snprintf(bro, sizeof bro, "%s", a->rot ? a->rot : "");
    snprintf(bc, sizeof bc, "%s", a->chunk ? a->chunk : "256");
    int nw = split_list(bw, W, MAXV), nk = split_list(bk, K, MAXV), ngr = split_list(bg, GR, MAXV),
        ngs = split_list(bgr, GS, MAXV), nr = split_list(br, R, MAXV), ns = split_list(bs, S, MAXV),
        nro = split_list(bro, RO, MAXV), nc = split_list(bc, C, MAXV);
    if (!nw || !nk || !nc) return tl_fail(err, "grid axes: weights, kv and chunk need at least one value each");
    /* empty modifier axes contribute one "no change" value */
    static char empty[] = "";
    if (!ngr) GR[ngr++] = empty;
    if (!ngs) GS[ngs++] = empty;
    if (!nr) R[nr++] = empty;
    if (!ns) S[ns++] = empty;
    if (!nro) RO[nro++] = empty;
    for (int i = 0; i < ngr; i++)
        if (*GR[i] && strcmp(GR[i], "tok") && strcmp(GR[i], "chan") && strcmp(GR[i], "block") && strcmp(GR[i], "tensor"))
            return tl_fail(err, "--gran '%s': use tok, chan, block or tensor", GR[i]);
    for (int wi = 0; wi < nw; wi++)
        for (int ci = 0; ci < nc; ci++) {
            int chunk;
            if (parse_chunk(C[ci], &chunk, err)) return tl_fail_prefix(err, "--chunks");
            for (int ki = 0; ki < nk; ki++)
                for (int a1 = 0; a1 < ngr; a1++)
                    for (int a2 = 0; a2 < ngs; a2++)
                        for (int a3 = 0; a3 < nr; a3++)
                            for (int a4 = 0; a4 < ns; a4++)
                                for (int a5 = 0; a5 < nro; a5++) {
                                    char spec[256];
                                    size_t o = (size_t)snprintf(spec, sizeof spec, "%s", K[ki]);
                                    if (is_quant_spec(K[ki])) {
                                        /* chan: KIVI's layout, per-channel keys and per-token values */
                                        if (*GR[a1])
                                            o += (size_t)snprintf(spec + o, sizeof spec - o, ":%s",
                                                                  !strcmp(GR[a1], "chan") ? "kchan:vtok" : GR[a1]);
                                        if (*GS[a2]) o += (size_t)snprintf(spec + o, sizeof spec - o, ":g%s", GS[a2]);
                                        if (*R[a3]) o += (size_t)snprintf(spec + o, sizeof spec - o, ":r%s", R[a3]);
                                        if (*S[a4] && strcmp(S[a4], "0"))
                                            o += (size_t)snprintf(spec + o, sizeof spec - o, ":smooth");
                                        if (*RO[a5] && strcmp(RO[a5], "0"))
                                            o += (size_t)snprintf(spec + o, sizeof spec - o, ":rot");
                                    }
                                    (void)o;
                                    tl_pareto_config c;
                                    tl_pareto_config_set(&c, W[wi], spec, "", chunk);
                                    tl_pareto_grid_add(g, &c);
                                }
        }
    return 0;
}

/* a JSON value that is a string, a number, or an array of those, as a comma list */
static int json_list(const cJSON *v, char *out, size_t n, const char *where, const char *key, tl_error *err) {
    out[0] = 0;
    if (!v) return 0;
    size_t o = 0;
    const cJSON *it = cJSON_IsArray(v) ? v->child : v;
    for (; it; it = cJSON_IsArray(v) ? it->next : NULL) {
        char one[256];
        if (cJSON_IsString(it)) snprintf(one, sizeof one, "%s", it->valuestring);
        else if (cJSON_IsNumber(it)) snprintf(one, sizeof one, "%d", (int)it->valuedouble);
        else if (cJSON_IsBool(it)) snprintf(one, sizeof one, "%d", cJSON_IsTrue(it) ? 1 : 0);
        else return tl_fail(err, "%s: \"%s\": values must be strings or numbers", where, key);
        o += (size_t)snprintf(out + o, o < n ? n - o : 0, "%s%s", o ? "," : "", one);
        if (!cJSON_IsArray(v)) break;
    }
    if (o >= n) return tl_fail(err, "%s: \"%s\": list too long", where, key);
    return 0;
}

int tl_pareto_grid_from_json(tl_pareto_grid *g, const char *json, const char *where, tl_error *err) {
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return tl_fail(err, "%s: not a JSON object", where);
    }
    int rc = -1;
    const cJSON *axes = cJSON_GetObjectItemCaseSensitive(root, "axes");
    const cJSON *cfgs = cJSON_GetObjectItemCaseSensitive(root, "configs");
    if (axes) {
        static const char *const keys[] = {"weights", "kv", "gran", "group", "residual", "smooth", "rot", "chunk"};
        char vals[8][4096];
        for (int i = 0; i < 8; i++)
            if (json_list(cJSON_GetObjectItemCaseSensitive(axes, keys[i]), vals[i], sizeof vals[i], where, keys[i], err))
                goto done;
        for (const cJSON *it = axes->child; it; it = it->next) {
            bool known = false;
            for (int i = 0; i < 8; i++) known |= !strcmp(it->string, keys[i]);
            if (!known) {
                tl_fail(err, "%s: axes: unknown key \"%s\"", where, it->string);
                goto done;
            }
        }
        tl_pareto_axes a = {vals[0][0] ? vals[0] : NULL, vals[1][0] ? vals[1] : NULL, vals[2], vals[3],
                            vals[4], vals[5], vals[6], vals[7][0] ? vals[7] : NULL};
        if (tl_pareto_grid_from_axes(g, &a, err)) {
            tl_fail_prefix(err, "%s", where);
            goto done;
        }
    }
    if (cfgs && !cJSON_IsArray(cfgs)) {
        tl_fail(err, "%s: \"configs\" must be an array", where);
        goto done;
    }
    int idx = 0;
    for (const cJSON *it = cfgs ? cfgs->child : NULL; it; it = it->next, idx++) {
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(it, "weights"), *kv = cJSON_GetObjectItemCaseSensitive(it, "kv"),
                    *kl = cJSON_GetObjectItemCaseSensitive(it, "kv_layer"), *ch = cJSON_GetObjectItemCaseSensitive(it, "chunk");
        if ((w && !cJSON_IsString(w)) || (kv && !cJSON_IsString(kv)) || (kl && !cJSON_IsString(kl))) {
            tl_fail(err, "%s: configs[%d]: weights, kv and kv_layer must be strings", where, idx);
            goto done;
        }
        int chunk = 256;
        if (ch && cJSON_IsNumber(ch)) chunk = (int)ch->valuedouble;
        else if (ch && cJSON_IsString(ch)) {
            if (parse_chunk(ch->valuestring, &chunk, err)) {
                tl_fail_prefix(err, "%s: configs[%d]", where, idx);
                goto done;
            }
        } else if (ch) {
            tl_fail(err, "%s: configs[%d]: chunk must be a number or \"full\"", where, idx);
            goto done;
        }
        tl_pareto_config c;
        tl_pareto_config_set(&c, w ? w->valuestring : "base", kv ? kv->valuestring : "f16", kl ? kl->valuestring : "",
                             chunk);
        tl_pareto_grid_add(g, &c);
    }
    if (g->n == 0) {
        tl_fail(err, "%s: no configurations (give \"axes\" or \"configs\")", where);
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

static void add(tl_pareto_grid *g, const char *w, const char *kv, int chunk) {
    tl_pareto_config c;
    tl_pareto_config_set(&c, w, kv, "", chunk);
    tl_pareto_grid_add(g, &c);
}

int tl_pareto_grid_default(tl_pareto_grid *g, const char *size, bool with_awq, tl_error *err) {
    if (!size) size = "paper";
    /* The paper's pairs; per-token groups of 32 (its winner for small models); K-smoothing
     * for 4-bit and lower keys, where the paper found it essential. */
    static const char *const pairs[] = {"f16", "k8v8", "k8v4", "k8v2", "k4v4:smooth", "k4v2:smooth", "k2v2:smooth"};
    const int np = sizeof pairs / sizeof *pairs;
    if (!strcmp(size, "tiny")) {
        add(g, "base", "f16", 256);
        add(g, "base", "k8v8", 256);
        add(g, "base", "k4v4:smooth", 256);
        add(g, "base", "k2v2:kivi", 256);
        add(g, "base", "auto:4", 256);
        return 0;
    }
    if (strcmp(size, "small") && strcmp(size, "paper"))
        return tl_fail(err, "--grid-size '%s': use paper, small or tiny", size);
    const char *ws[3] = {"base", "w4g128", "awq"};
    const int nw = with_awq ? 3 : 2;
    for (int w = 0; w < nw; w++)
        for (int i = 0; i < np; i++) add(g, ws[w], pairs[i], 256);
    /* the measured per-layer key layout (auto:B): what a user who does not know the model types */
    add(g, "base", "auto:4", 256);
    add(g, "base", "auto:k4v2", 256);
    add(g, "base", "auto:2", 256);
    if (!strcmp(size, "small")) return 0;
    /* granularity, group size, smoothing, rotation, residual (KIVI) on the base weights */
    add(g, "base", "k4v4:kchan:vtok:smooth", 256);
    add(g, "base", "k4v4:block:smooth", 256);
    add(g, "base", "k4v4:tensor:smooth", 256);
    add(g, "base", "k4v4:g64:smooth", 256);
    add(g, "base", "k4v4:g128:smooth", 256);
    add(g, "base", "k4v4", 256);
    add(g, "base", "k4v4:rot", 256);
    add(g, "base", "k2v2:kivi", 256);
    add(g, "base", "k1v1:kivi", 256);
    /* chunked prefill: only the activation term moves */
    add(g, "w4g128", "k4v4:smooth", 64);
    add(g, "w4g128", "k4v4:smooth", 1024);
    add(g, "w4g128", "k4v4:smooth", 0);
    return 0;
}

/* canonical KV text (equal behaviour, equal id): "k4v4:smooth" or policy + overrides */
void tl_pareto_config_canon(tl_pareto_config *c, int n_layer) {
    tl_kv_plan plan = {0};
    tl_error err;
    if (tl_kv_plan_parse(&plan, c->kv, c->kv_layer[0] ? c->kv_layer : NULL, n_layer, &err)) return; /* fails at run */
    char *base, *over;
    tl_kv_plan_format_parts(&plan, &base, &over);
    tl_kv_plan_free(&plan);
    snprintf(c->kv, sizeof c->kv, "%s", base);
    snprintf(c->kv_layer, sizeof c->kv_layer, "%s", over);
    free(base);
    free(over);
    tl_pareto_config_finish(c);
}

/* parse "w=<w> kv=<kv>[ kvl=<l>] chunk=<c>" */
int tl_pareto_config_from_id(const char *id, tl_pareto_config *c) {
    char w[32] = "", kv[256] = "", kvl[256] = "", ch[16] = "";
    const char *p = id;
    while (*p) {
        while (*p == ' ') p++;
        const char *eq = strchr(p, '='), *end = strchr(p, ' ');
        if (!eq) return -1;
        if (!end) end = p + strlen(p);
        char *dst = NULL;
        size_t cap = 0;
        if (!strncmp(p, "w=", 2)) dst = w, cap = sizeof w;
        else if (!strncmp(p, "kv=", 3)) dst = kv, cap = sizeof kv;
        else if (!strncmp(p, "kvl=", 4)) dst = kvl, cap = sizeof kvl;
        else if (!strncmp(p, "chunk=", 6)) dst = ch, cap = sizeof ch;
        else return -1;
        snprintf(dst, cap, "%.*s", (int)(end - eq - 1), eq + 1);
        p = end;
    }
    if (!w[0] || !kv[0] || !ch[0]) return -1;
    tl_pareto_config_set(c, w, kv, kvl, strcmp(ch, "full") ? atoi(ch) : 0);
    return 0;
}
