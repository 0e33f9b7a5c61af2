/* calibrate_keys.c: the key layout of auto:B, chosen per layer by measurement (calibrate.h).
 *
 * Why: a model whose keys carry a few huge channels (Qwen2.5: k_proj has a bias) loses all
 * precision in every per-token group holding one of them, while another model's keys are
 * quantized per token at no loss. Which layout a layer tolerates is a property of the layer,
 * visible in a short prefill, so it is measured rather than guessed. */
#include "calibrate.h"
#include "../model/tokenizer.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* A store that records what passes through it (keys, values, the last rows' queries) and
 * otherwise is the f32 store it wraps. */
typedef struct {
    tl_kv_layer base;
    tl_kv_layer *inner;
    int first_q; /* queries of rows at positions >= first_q are kept */
    float *k, *v, *q; /* [n_ctx][Hkv*dk], [n_ctx][Hkv*dv], [n_ctx - first_q][H*dk] */
} recorder;

static int rec_forward(tl_kv_layer *l, tl_pool *pool, int n_tok, const float *q, const float *k, const float *v,
                       float *out, tl_error *err) {
    recorder *r = (recorder *)l;
    const tl_kv_shape *s = &l->shape;
    const int n0 = l->n_tokens, kw = s->n_head_kv * s->head_dim_k, vw = s->n_head_kv * s->head_dim_v,
              qw = s->n_head * s->head_dim_k;
    if (n0 + n_tok > s->n_ctx) return tl_fail(err, "key calibration: %d + %d tokens exceed %d", n0, n_tok, s->n_ctx);
    memcpy(r->k + (size_t)n0 * kw, k, sizeof(float) * (size_t)n_tok * kw);
    memcpy(r->v + (size_t)n0 * vw, v, sizeof(float) * (size_t)n_tok * vw);
    for (int i = 0; i < n_tok; i++)
        if (n0 + i >= r->first_q)
            memcpy(r->q + (size_t)(n0 + i - r->first_q) * qw, q + (size_t)i * qw, sizeof(float) * qw);
    if (tl_kv_forward(r->inner, pool, n_tok, q, k, v, out, err)) return -1;
    l->n_tokens += n_tok;
    return 0;
}

static void rec_bytes(const tl_kv_layer *l, tl_kv_bytes *b) {
    const recorder *r = (const recorder *)l;
    r->inner->ops->bytes(r->inner, b);
}

static void rec_clear(tl_kv_layer *l) {
    tl_kv_clear(((recorder *)l)->inner);
    l->n_tokens = 0;
}

static void rec_destroy(tl_kv_layer *l) {
    recorder *r = (recorder *)l;
    tl_kv_destroy(r->inner);
    free(r->k), free(r->v), free(r->q);
    free(r);
}

static const tl_kv_ops rec_ops = {
    .name = "key-calib-recorder", .forward = rec_forward, .bytes = rec_bytes, .clear = rec_clear, .destroy = rec_destroy};

static recorder *rec_new(tl_kv_layer *inner, int first_q) {
    const tl_kv_shape *s = &inner->shape;
    recorder *r = tl_xcalloc(1, sizeof *r);
    r->base.ops = &rec_ops;
    r->base.shape = *s;
    r->inner = inner;
    r->first_q = first_q;
    r->k = tl_xmalloc(sizeof(float) * (size_t)s->n_ctx * s->n_head_kv * s->head_dim_k);
    r->v = tl_xmalloc(sizeof(float) * (size_t)s->n_ctx * s->n_head_kv * s->head_dim_v);
    r->q = tl_xmalloc(sizeof(float) * (size_t)(s->n_ctx - first_q) * s->n_head * s->head_dim_k);
    return r;
}

/* Exact causal attention of the recorded last rows over all recorded tokens, f64 sums. */
static void exact_rows(const recorder *r, int n, float *out) {
    const tl_kv_shape *s = &r->base.shape;
    const int H = s->n_head, G = H / s->n_head_kv, dk = s->head_dim_k, dv = s->head_dim_v;
    const int kw = s->n_head_kv * dk, vw = s->n_head_kv * dv, nr = n - r->first_q;
    double *p = tl_xmalloc(sizeof(double) * (size_t)n), *acc = tl_xmalloc(sizeof(double) * (size_t)dv);
    for (int i = 0; i < nr; i++) {
        const int pos = r->first_q + i;
        for (int h = 0; h < H; h++) {
            const float *qr = r->q + ((size_t)i * H + h) * dk;
            double mx = -INFINITY, sum = 0;
            for (int t = 0; t <= pos; t++) {
                const float *kr = r->k + (size_t)t * kw + (size_t)(h / G) * dk;
                double d = 0;
                for (int c = 0; c < dk; c++) d += (double)qr[c] * kr[c];
                p[t] = d * s->scale;
                if (s->softcap > 0) p[t] = s->softcap * tanh(p[t] / s->softcap); /* tl_softcap, in f64 */
                mx = p[t] > mx ? p[t] : mx;
            }
            for (int c = 0; c < dv; c++) acc[c] = 0;
            for (int t = 0; t <= pos; t++) {
                const double w = exp(p[t] - mx);
                sum += w;
                const float *vr = r->v + (size_t)t * vw + (size_t)(h / G) * dv;
                for (int c = 0; c < dv; c++) acc[c] += w * vr[c];
            }
            for (int c = 0; c < dv; c++) out[((size_t)i * H + h) * dv + c] = (float)(acc[c] / sum);
        }
    }
    free(p);
    free(acc);
}

/* Which parts of a layer policy a measurement quantizes; the others stay exact (16 bits). */
enum { PART_KEYS = 1, PART_VALUES = 2, PART_BOTH = 3 };

/* The relative attention error of layer policy cand (only `parts` of it quantized) on one
 * layer's recording; NAN if it does not fit the shape. head_err (NULL, or n_head values)
 * receives the same error per query head. */
static double measure(const recorder *r, int n, const tl_kv_layer_policy *cand, int parts, const float *exact,
                      tl_pool *pool, double *head_err) {
    const tl_kv_shape *s = &r->base.shape;
    tl_kv_layer_policy p = *cand;
    if (!(parts & PART_VALUES)) p.v.bits = 16;
    if (!(parts & PART_KEYS)) p.k.bits = 16;
    tl_kv_policy_normalize(&p);
    tl_kv_shape sh = *s;
    sh.n_ctx = n;
    tl_kv_layer *st = tl_kv_layer_new(&p, &sh, NULL);
    if (!st) return NAN;
    const int nr = n - r->first_q, H = s->n_head, dv = s->head_dim_v;
    const size_t kw = (size_t)s->n_head_kv * s->head_dim_k, vw = (size_t)s->n_head_kv * dv;
    float *out = tl_xmalloc(sizeof(float) * (size_t)nr * H * dv);
    double num = 0, den = 0;
    double *hn = tl_xcalloc((size_t)H * 2, sizeof(double));
    if (p.kind == TL_KV_QUANT && tl_kv_quant_append(st, r->first_q, r->k, r->v, NULL) == 0 &&
        tl_kv_forward(st, pool, nr, r->q, r->k + (size_t)r->first_q * kw, r->v + (size_t)r->first_q * vw, out, NULL) == 0) {
        for (size_t i = 0; i < (size_t)nr * H * dv; i++) {
            const double d = (double)out[i] - exact[i], e2 = (double)exact[i] * exact[i];
            const size_t h = (i / (size_t)dv) % (size_t)H;
            num += d * d;
            den += e2;
            hn[2 * h] += d * d;
            hn[2 * h + 1] += e2;
        }
    } else {
        num = NAN;
    }
    if (head_err)
        for (int h = 0; h < H; h++) head_err[h] = hn[2 * h + 1] > 0 ? sqrt(hn[2 * h] / hn[2 * h + 1]) : isnan(num) ? NAN : 0;
    free(hn);
    free(out);
    tl_kv_destroy(st);
    return den > 0 ? sqrt(num / den) : num == 0 ? 0 : NAN;
}

/* The recording prefill: n tokens through f32 stores wrapped by recorders that keep the queries
 * of rows >= first_q. Returns the session (its kv[] are recorders) or NULL. */
static tl_session *record(tl_model *m, const int32_t *ids, int n, int first_q, int n_threads, tl_error *err) {
    const tl_config *c = &m->cfg;
    tl_kv_layer_policy *f32 = tl_xcalloc((size_t)c->n_layer, sizeof *f32);
    for (int il = 0; il < c->n_layer; il++) f32[il].kind = TL_KV_F32;
    tl_session *s = tl_session_new_with_policies(m, n, n_threads, 0, f32, err);
    free(f32);
    if (!s) return NULL;
    for (int il = 0; il < c->n_layer; il++) s->kv[il] = &rec_new(s->kv[il], first_q)->base;
    if (tl_session_eval(s, ids, n, NULL, false, err)) {
        tl_session_free(s);
        return NULL;
    }
    return s;
}

int tl_kv_auto_resolve(tl_model *m, tl_kv_layer_policy *policies, const char *text, size_t text_len, bool gpu_only,
                       int n_threads, tl_kv_auto_report *rep, tl_error *err) {
    const tl_config *c = &m->cfg;
    int n_auto = 0;
    for (int il = 0; il < c->n_layer; il++) n_auto += policies[il].kind == TL_KV_AUTO;
    if (rep) {
        memset(rep, 0, sizeof *rep);
        rep->n_layer = c->n_layer;
    }
    if (!n_auto) return 0;
    const double t0 = tl_time_s();
    if (!text) {
        text = tl_calib_builtin_text;
        text_len = strlen(text);
    }
    size_t n_ids = 0;
    int32_t *ids = tl_xmalloc(sizeof(int32_t) * 4096);
    if (tl_tokenize(m->tok, text, text_len, true, false, ids, 4096, &n_ids, err)) {
        free(ids);
        return tl_fail_prefix(err, "auto KV policy: calibration text");
    }
    const int n = (int)TL_MIN(TL_MIN(n_ids, (size_t)4096), (size_t)TL_MIN(TL_KV_AUTO_CALIB_TOKENS, c->n_ctx_train));
    if (n < 2 * TL_KV_AUTO_CALIB_ROWS) {
        free(ids);
        return tl_fail(err, "auto KV policy: calibration text of %d tokens; need at least %d", n, 2 * TL_KV_AUTO_CALIB_ROWS);
    }
    const int first_q = n - TL_KV_AUTO_CALIB_ROWS;

    tl_session *s = record(m, ids, n, first_q, n_threads, err);
    free(ids);
    if (!s) return tl_fail_prefix(err, "auto KV policy: calibration prefill");
    int rc = 0;

    tl_kv_layer_policy cand[TL_KV_AUTO_MAX_CANDIDATES];
    float *exact = NULL;
    for (int il = 0; il < c->n_layer && !rc; il++) {
        if (rep) rep->chosen[il] = -1;
        if (policies[il].kind != TL_KV_AUTO) continue;
        const int nc = tl_kv_auto_candidates(&policies[il], gpu_only, cand);
        if (rep) rep->n_candidates = nc;
        if (c->layer_swa[il]) { /* a sliding-window layer keeps its dense window (tl_plan_layer_kv) */
            policies[il] = cand[0];
            for (int i = 0; i < nc && rep; i++) rep->err[il][i] = NAN;
            continue;
        }
        const recorder *r = (const recorder *)s->kv[il];
        exact = tl_xrealloc(exact, sizeof(float) * (size_t)TL_KV_AUTO_CALIB_ROWS * c->n_head * c->head_dim_v);
        exact_rows(r, n, exact);
        double e[TL_KV_AUTO_MAX_CANDIDATES], best = INFINITY;
        for (int i = 0; i < nc; i++) {
            e[i] = measure(r, n, &cand[i], PART_KEYS, exact, s->pool, NULL); /* values exact: the keys' error alone */
            if (e[i] < best) best = e[i];
            if (rep) rep->err[il][i] = e[i];
        }
        if (!isfinite(best)) {
            rc = tl_fail(err, "auto KV policy: layer %d: no key layout fits this layer's shape", il);
            break;
        }
        int pick = 0;
        while (!(e[pick] <= best * 1.10)) pick++; /* NAN never qualifies */
        policies[il] = cand[pick];
        if (rep) rep->chosen[il] = pick;
    }
    free(exact);
    tl_session_free(s);
    if (rep) {
        rep->n_tokens = n;
        rep->seconds = tl_time_s() - t0;
    }
    return rc ? tl_fail_prefix(err, "auto KV policy") : 0;
}

int tl_kv_diagnose(tl_model *m, const tl_kv_layer_policy *policies, const int32_t *ids, int n, int n_rows, int n_threads,
                   tl_kv_diag_report *rep, tl_error *err) {
    const tl_config *c = &m->cfg;
    memset(rep, 0, sizeof *rep);
    rep->n_layer = c->n_layer;
    if (n_rows < 1 || n_rows >= n) return tl_fail(err, "KV diagnosis: %d query rows of %d tokens", n_rows, n);
    if (c->n_head > TL_KV_DIAG_MAX_HEADS) return tl_fail(err, "KV diagnosis: %d heads (at most %d)", c->n_head, TL_KV_DIAG_MAX_HEADS);
    const double t0 = tl_time_s();
    const int first_q = n - n_rows;
    tl_session *s = record(m, ids, n, first_q, n_threads, err);
    if (!s) return tl_fail_prefix(err, "KV diagnosis: recording prefill");
    float *exact = tl_xmalloc(sizeof(float) * (size_t)n_rows * c->n_head * c->head_dim_v);
    double head[TL_KV_DIAG_MAX_HEADS];
    for (int il = 0; il < c->n_layer; il++) {
        tl_kv_diag_layer *d = &rep->layer[il];
        d->err_k = d->err_v = d->err_kv = d->worst_head_err = NAN;
        d->worst_head = -1;
        d->measured = policies[il].kind == TL_KV_QUANT && !c->layer_swa[il];
        if (!d->measured) continue;
        const recorder *r = (const recorder *)s->kv[il];
        exact_rows(r, n, exact);
        d->err_k = measure(r, n, &policies[il], PART_KEYS, exact, s->pool, NULL);
        d->err_v = measure(r, n, &policies[il], PART_VALUES, exact, s->pool, NULL);
        d->err_kv = measure(r, n, &policies[il], PART_BOTH, exact, s->pool, head);
        for (int h = 0; h < c->n_head; h++)
            if (d->worst_head < 0 || head[h] > d->worst_head_err) d->worst_head = h, d->worst_head_err = head[h];
    }
    free(exact);
    tl_session_free(s);
    rep->n_tokens = n;
    rep->n_rows = n_rows;
    rep->seconds = tl_time_s() - t0;
    return 0;
}

void tl_kv_auto_summary(const tl_kv_auto_report *rep, char *buf, size_t n) {
    int count[TL_KV_AUTO_MAX_CANDIDATES] = {0}, worst_layer = -1;
    double worst = 0;
    for (int il = 0; il < rep->n_layer; il++) {
        const int k = rep->chosen[il];
        if (k < 0) continue;
        count[k]++;
        if (rep->err[il][k] > worst) worst = rep->err[il][k], worst_layer = il;
    }
    size_t len = (size_t)snprintf(buf, n, "key layouts measured on %d tokens in %.1f s:", rep->n_tokens, rep->seconds);
    for (int i = 0; i < rep->n_candidates; i++)
        if (count[i] && len < n) len += (size_t)snprintf(buf + len, n - len, " %s x%d", tl_kv_auto_candidate_name(i), count[i]);
    if (worst_layer >= 0 && len < n)
        snprintf(buf + len, n - len, "; largest attention error %.3g (layer %d)", worst, worst_layer);
}

char *tl_kv_auto_plan_json(const tl_kv_auto_report *rep, const tl_kv_layer_policy *resolved, const char *spec,
                           const char *text_name) {
    const int L = rep->n_layer;
    int def = 0, best = 0;
    for (int i = 0; i < L; i++) { /* the most common policy becomes the default */
        int cnt = 0;
        for (int j = 0; j < L; j++) cnt += tl_kv_policy_equal(&resolved[i], &resolved[j]);
        if (cnt > best) best = cnt, def = i;
    }
    char buf[256];
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "n_layers", L);
    tl_kv_policy_format(&resolved[def], buf, sizeof buf);
    cJSON_AddStringToObject(root, "default", buf);
    cJSON *layers = cJSON_AddObjectToObject(root, "layers");
    for (int i = 0; i < L; i++) {
        if (tl_kv_policy_equal(&resolved[i], &resolved[def])) continue;
        char key[16];
        snprintf(key, sizeof key, "%d", i);
        tl_kv_policy_format(&resolved[i], buf, sizeof buf);
        cJSON_AddStringToObject(layers, key, buf);
    }
    cJSON *m = cJSON_AddObjectToObject(root, "measured");
    cJSON_AddStringToObject(m, "auto", spec);
    cJSON_AddStringToObject(m, "text", text_name);
    cJSON_AddNumberToObject(m, "tokens", rep->n_tokens);
    cJSON_AddNumberToObject(m, "query_rows", TL_KV_AUTO_CALIB_ROWS);
    cJSON_AddStringToObject(m, "metric", "relative L2 error of the attention output with these keys (values exact)");
    cJSON *names = cJSON_AddArrayToObject(m, "candidates");
    for (int i = 0; i < rep->n_candidates; i++) cJSON_AddItemToArray(names, cJSON_CreateString(tl_kv_auto_candidate_name(i)));
    cJSON *errs = cJSON_AddArrayToObject(m, "attention_error");
    for (int il = 0; il < L; il++) {
        cJSON *row = cJSON_CreateArray();
        for (int i = 0; i < rep->n_candidates; i++)
            cJSON_AddItemToArray(row, rep->chosen[il] < 0 || isnan(rep->err[il][i]) ? cJSON_CreateNull()
                                                                                   : cJSON_CreateNumber(rep->err[il][i]));
        cJSON_AddItemToArray(errs, row);
    }
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    return out;
}
