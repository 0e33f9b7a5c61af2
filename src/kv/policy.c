/* policy.c: KV policy text form, per-layer plans (overrides string, JSON plan file), store
 * creation by policy, and the exact memory formula. The grammar is in policy.h. */
#include "policy.h"
#include "offload.h"
#include "tailor_plan.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_POLICY_TEXT 256

void tl_kv_policy_default(tl_kv_layer_policy *p, tl_kv_kind kind) {
    memset(p, 0, sizeof *p);
    p->kind = kind;
    const tl_kv_side side = {kind == TL_KV_QUANT ? 8 : 16, TL_KV_ASYM, TL_KV_GRAN_TOKEN, 32};
    p->k = p->v = side;
}

static bool side_quantized(const tl_kv_side *s) { return s->bits < 16; }
/* Does the side's group size change anything? */
static bool side_grouped(const tl_kv_side *s) { return s->bits < 16 && s->gran != TL_KV_GRAN_TENSOR; }

void tl_kv_policy_normalize(tl_kv_layer_policy *p) {
    if (p->kind == TL_KV_QUANT && p->k.bits == 16 && p->v.bits == 16) p->kind = TL_KV_F16;
    if (p->kind == TL_KV_OFFLOAD) return; /* its parameters are the offload store's (offload.c) */
    if (p->kind == TL_KV_AUTO) { /* bits, groups and the residual window; the rest is chosen */
        const tl_kv_layer_policy a = *p;
        memset(p, 0, sizeof *p);
        p->kind = TL_KV_AUTO;
        p->k = (tl_kv_side){a.k.bits, TL_KV_ASYM, TL_KV_GRAN_TOKEN, a.k.group};
        p->v = (tl_kv_side){a.v.bits, TL_KV_ASYM, TL_KV_GRAN_TOKEN, a.v.group};
        p->residual = a.residual;
        return;
    }
    if (p->kind != TL_KV_QUANT) {
        tl_kv_policy_default(p, p->kind);
        return;
    }
    tl_kv_side *sides[2] = {&p->k, &p->v};
    for (int i = 0; i < 2; i++) {
        tl_kv_side *s = sides[i];
        if (!side_quantized(s)) {
            s->quantizer = TL_KV_ASYM;
            s->gran = TL_KV_GRAN_TOKEN;
        }
        if (!side_grouped(s)) s->group = 32;
    }
    if (!side_quantized(&p->k)) p->smooth_k = false;
}

bool tl_kv_policy_equal(const tl_kv_layer_policy *a, const tl_kv_layer_policy *b) {
    tl_kv_layer_policy x = *a, y = *b;
    tl_kv_policy_normalize(&x);
    tl_kv_policy_normalize(&y);
    if (x.kind != y.kind) return false;
    if (x.kind == TL_KV_OFFLOAD) return !memcmp(&x.off, &y.off, sizeof x.off);
    if (x.kind != TL_KV_QUANT && x.kind != TL_KV_AUTO) return true;
    const tl_kv_side *s[4] = {&x.k, &y.k, &x.v, &y.v};
    for (int i = 0; i < 4; i += 2)
        if (s[i]->bits != s[i + 1]->bits || s[i]->quantizer != s[i + 1]->quantizer || s[i]->gran != s[i + 1]->gran ||
            s[i]->group != s[i + 1]->group)
            return false;
    return x.residual == y.residual && x.smooth_k == y.smooth_k && x.rotate == y.rotate;
}

/* ---- parsing ---- */

static bool bits_ok(int b) { return b == 16 || b == 8 || b == 4 || b == 2 || b == 1; }

/* Parse a decimal integer that is the whole of s; false if not. */
static bool parse_int(const char *s, long *out) {
    if (!*s || !isdigit((unsigned char)*s)) return false;
    errno = 0;
    char *end;
    const long v = strtol(s, &end, 10);
    if (*end || errno) return false;
    *out = v;
    return true;
}

static int parse_group(const char *text, const char *field, const char *val, int *g, tl_error *err) {
    long n;
    if (!strcmp(val, "head")) {
        *g = 0;
        return 0;
    }
    if (!parse_int(val, &n) || (n != 32 && n != 64 && n != 128))
        return tl_fail(err, "'%s': field '%s': group must be 32, 64, 128 or 'head'", text, field);
    *g = (int)n;
    return 0;
}

static const char *gran_name(tl_kv_gran g) {
    switch (g) {
    case TL_KV_GRAN_TOKEN: return "tok";
    case TL_KV_GRAN_CHANNEL: return "chan";
    case TL_KV_GRAN_BLOCK: return "block";
    default: return "tensor";
    }
}

static bool parse_gran(const char *s, tl_kv_gran *g) {
    for (int i = 0; i <= TL_KV_GRAN_TENSOR; i++)
        if (!strcmp(s, gran_name((tl_kv_gran)i))) {
            *g = (tl_kv_gran)i;
            return true;
        }
    return false;
}

/* "auto:<B>" or "auto:k<B>v<B>", then g<N> / r<N> (policy.h). */
static int parse_auto(const char *text, char **fields, int nf, tl_kv_layer_policy *p, tl_error *err) {
    if (nf < 1) return tl_fail(err, "'%s': auto needs the bits: auto:4 or auto:k4v2", text);
    int kb, vb, used = 0;
    if (sscanf(fields[0], "k%dv%d%n", &kb, &vb, &used) == 2 && fields[0][used] == '\0') {
    } else if (sscanf(fields[0], "%d%n", &kb, &used) == 1 && fields[0][used] == '\0') {
        vb = kb;
    } else {
        return tl_fail(err, "'%s': field '%s': auto takes the bits as <B> or k<B>v<B> (auto:4, auto:k4v2)", text, fields[0]);
    }
    if (kb != 8 && kb != 4 && kb != 2) return tl_fail(err, "'%s': auto: K bits %d not supported (8, 4, 2)", text, kb);
    if (!bits_ok(vb) || vb == 1) return tl_fail(err, "'%s': auto: V bits %d not supported (16, 8, 4, 2)", text, vb);
    tl_kv_layer_policy r;
    tl_kv_policy_default(&r, TL_KV_QUANT);
    r.kind = TL_KV_AUTO;
    r.k.bits = kb;
    r.v.bits = vb;
    for (int fi = 1; fi < nf; fi++) {
        const char *f = fields[fi];
        long n;
        if (f[0] == 'g' && f[1]) {
            int g;
            if (parse_group(text, f, f + 1, &g, err)) return -1;
            if (g == 0) return tl_fail(err, "'%s': auto: group 'head' has no per-channel candidate; use g32..g128", text);
            r.k.group = r.v.group = g;
        } else if (f[0] == 'r' && f[1] && isdigit((unsigned char)f[1])) {
            if (!parse_int(f + 1, &n) || n > (1 << 20))
                return tl_fail(err, "'%s': field '%s': residual must be an integer from 0 to %d", text, f, 1 << 20);
            r.residual = (int)n;
        } else {
            return tl_fail(err, "'%s': auto: unknown field '%s' (auto takes g<N> and r<N>; the key layout is chosen)",
                           text, f);
        }
    }
    tl_kv_policy_normalize(&r);
    *p = r;
    return 0;
}

static const char *const auto_names[TL_KV_AUTO_MAX_CANDIDATES] = {"tok", "chan", "tok+smooth", "tok+rot",
                                                                   "tok+smooth+rot"};

const char *tl_kv_auto_candidate_name(int i) {
    return i >= 0 && i < TL_KV_AUTO_MAX_CANDIDATES ? auto_names[i] : "?";
}

int tl_kv_auto_candidates(const tl_kv_layer_policy *autop, bool gpu_only, tl_kv_layer_policy *out) {
    tl_kv_layer_policy a = *autop;
    tl_kv_policy_normalize(&a);
    const int n = gpu_only ? 2 : TL_KV_AUTO_MAX_CANDIDATES;
    for (int i = 0; i < n; i++) {
        tl_kv_layer_policy *c = &out[i];
        *c = a;
        c->kind = TL_KV_QUANT;
        c->k.gran = i == 1 ? TL_KV_GRAN_CHANNEL : TL_KV_GRAN_TOKEN;
        c->smooth_k = i == 2 || i == 4;
        c->rotate = i == 3 || i == 4;
        tl_kv_policy_normalize(c);
    }
    return n;
}

int tl_kv_policy_parse(const char *text, tl_kv_layer_policy *p, tl_error *err) {
    if (!text || !*text) return tl_fail(err, "'': empty KV policy (e.g. f16, k8v8, k2v2:kivi)");
    if (!strncmp(text, "tailor:", 7) || !strcmp(text, "tailor"))
        return tl_fail(err, "'%s': a TailorKV plan names a policy per layer, not one layer's policy (use it as --kv)", text);
    if (strlen(text) >= MAX_POLICY_TEXT) return tl_fail(err, "'%.40s...': policy text too long", text);
    char buf[MAX_POLICY_TEXT];
    strcpy(buf, text);
    /* split on ':' by hand: an empty field is an error, not skipped */
    char *fields[64];
    int nf = 0;
    for (char *f = buf;;) {
        char *colon = strchr(f, ':');
        if (colon) *colon = '\0';
        if (!*f) return tl_fail(err, "'%s': empty field (fields are separated by one ':')", text);
        if (nf == 64) return tl_fail(err, "'%s': too many fields", text);
        fields[nf++] = f;
        if (!colon) break;
        f = colon + 1;
    }
    char *first = fields[0];
    tl_kv_layer_policy r;
    if (!strcmp(first, "f32") || !strcmp(first, "f16") || !strcmp(first, "bf16")) {
        tl_kv_policy_default(&r, !strcmp(first, "f32") ? TL_KV_F32 : !strcmp(first, "f16") ? TL_KV_F16 : TL_KV_BF16);
        if (nf > 1) return tl_fail(err, "'%s': field '%s' does not apply to the dense store %s", text, fields[1], first);
        *p = r;
        return 0;
    }
    int kb, vb, used = 0;
    if (!strcmp(first, "auto")) return parse_auto(text, fields + 1, nf - 1, p, err);
    if (sscanf(first, "k%dv%d%n", &kb, &vb, &used) != 2 || first[used] != '\0')
        return tl_fail(err, "'%s': field '%s': expected f32, f16, bf16, auto or k<bits>v<bits> (e.g. k4v2)", text, first);
    if (!bits_ok(kb)) return tl_fail(err, "'%s': K bits %d not supported (use 16, 8, 4, 2, 1)", text, kb);
    if (!bits_ok(vb)) return tl_fail(err, "'%s': V bits %d not supported (use 16, 8, 4, 2, 1)", text, vb);
    tl_kv_policy_default(&r, TL_KV_QUANT);
    r.k.bits = kb;
    r.v.bits = vb;
    for (int fi = 1; fi < nf; fi++) {
        char *f = fields[fi];
        tl_kv_gran gr;
        long n;
        if (!strcmp(f, "kivi")) {
            r.k.gran = TL_KV_GRAN_CHANNEL;
            r.v.gran = TL_KV_GRAN_TOKEN;
            r.k.group = r.v.group = 32;
            r.k.quantizer = r.v.quantizer = TL_KV_ASYM;
            r.residual = 128;
        } else if (!strcmp(f, "smooth")) {
            r.smooth_k = true;
        } else if (!strcmp(f, "rot")) {
            r.rotate = true;
        } else if (!strcmp(f, "sym") || !strcmp(f, "asym")) {
            r.k.quantizer = r.v.quantizer = f[0] == 's' ? TL_KV_SYM : TL_KV_ASYM;
        } else if ((f[0] == 'k' || f[0] == 'v') && (!strcmp(f + 1, "sym") || !strcmp(f + 1, "asym"))) {
            (f[0] == 'k' ? &r.k : &r.v)->quantizer = f[1] == 's' ? TL_KV_SYM : TL_KV_ASYM;
        } else if (parse_gran(f, &gr)) {
            r.k.gran = r.v.gran = gr;
        } else if ((f[0] == 'k' || f[0] == 'v') && parse_gran(f + 1, &gr)) {
            (f[0] == 'k' ? &r.k : &r.v)->gran = gr;
        } else if (f[0] == 'g' && f[1]) {
            int g;
            if (parse_group(text, f, f + 1, &g, err)) return -1;
            r.k.group = r.v.group = g;
        } else if ((f[0] == 'k' || f[0] == 'v') && f[1] == 'g' && f[2]) {
            int g;
            if (parse_group(text, f, f + 2, &g, err)) return -1;
            (f[0] == 'k' ? &r.k : &r.v)->group = g;
        } else if (f[0] == 'r' && f[1] && isdigit((unsigned char)f[1])) {
            if (!parse_int(f + 1, &n) || n > (1 << 20))
                return tl_fail(err, "'%s': field '%s': residual must be an integer from 0 to %d", text, f, 1 << 20);
            r.residual = (int)n;
        } else {
            return tl_fail(err,
                           "'%s': unknown field '%s' (expected g<N>, kg<N>, vg<N>, tok, chan, block, tensor (or with a "
                           "k/v prefix), sym, asym, ksym, vsym, r<N>, smooth, rot, kivi)",
                           text, f);
        }
    }
    const tl_kv_side *sides[2] = {&r.k, &r.v};
    for (int i = 0; i < 2; i++) {
        const tl_kv_side *s = sides[i];
        const char side = i ? 'V' : 'K';
        if (!side_quantized(s)) continue;
        if (s->quantizer == TL_KV_SYM && s->bits < 2)
            return tl_fail(err, "'%s': symmetric quantizer needs at least 2 bits (%c has %d)", text, side, s->bits);
        if (s->group == 0 && (s->gran == TL_KV_GRAN_CHANNEL || s->gran == TL_KV_GRAN_BLOCK))
            return tl_fail(err, "'%s': %c: group 'head' needs tok granularity (%s groups run over tokens)", text, side,
                           gran_name(s->gran));
    }
    tl_kv_policy_normalize(&r);
    *p = r;
    return 0;
}

/* ---- formatting ---- */

typedef struct {
    char *buf;
    size_t n, len;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const size_t room = b->len < b->n ? b->n - b->len : 0;
    const int w = vsnprintf(room ? b->buf + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (w > 0) b->len += (size_t)w;
}

static void put_group(sbuf *b, const char *pre, int g) {
    if (g == 0) put(b, ":%sghead", pre);
    else put(b, ":%sg%d", pre, g);
}

int tl_kv_policy_format(const tl_kv_layer_policy *pin, char *out, size_t n) {
    tl_kv_layer_policy p = *pin;
    tl_kv_policy_normalize(&p);
    sbuf b = {out, n, 0};
    if (n) out[0] = '\0';
    if (p.kind == TL_KV_OFFLOAD) { /* a TailorKV sparse layer (its spec is the plan's, tailor_plan.h) */
        put(&b, "offload:sinks=%d,recent=%d,topk=%d,channels=%d", p.off.sinks, p.off.recent, p.off.topk, p.off.channels);
        if (p.off.summary_bits) put(&b, ",summary=%d", p.off.summary_bits);
        if (p.off.page) put(&b, ",page=%d", p.off.page);
        return (int)b.len;
    }
    if (p.kind == TL_KV_AUTO) {
        if (p.k.bits == p.v.bits) put(&b, "auto:%d", p.k.bits);
        else put(&b, "auto:k%dv%d", p.k.bits, p.v.bits);
        if (p.k.group != 32) put_group(&b, "", p.k.group);
        if (p.residual) put(&b, ":r%d", p.residual);
        return (int)b.len;
    }
    if (p.kind != TL_KV_QUANT) {
        put(&b, "%s", p.kind == TL_KV_F32 ? "f32" : p.kind == TL_KV_F16 ? "f16" : "bf16");
        return (int)b.len;
    }
    put(&b, "k%dv%d", p.k.bits, p.v.bits);
    const bool kq = side_quantized(&p.k), vq = side_quantized(&p.v);
    const bool kivi = kq && vq && p.k.gran == TL_KV_GRAN_CHANNEL && p.v.gran == TL_KV_GRAN_TOKEN && p.k.group == 32 &&
                      p.v.group == 32 && p.k.quantizer == TL_KV_ASYM && p.v.quantizer == TL_KV_ASYM && p.residual == 128;
    if (kivi) {
        put(&b, ":kivi");
    } else {
        /* granularity */
        if (kq && vq && p.k.gran == p.v.gran) {
            if (p.k.gran != TL_KV_GRAN_TOKEN) put(&b, ":%s", gran_name(p.k.gran));
        } else {
            if (kq && p.k.gran != TL_KV_GRAN_TOKEN) put(&b, ":k%s", gran_name(p.k.gran));
            if (vq && p.v.gran != TL_KV_GRAN_TOKEN) put(&b, ":v%s", gran_name(p.v.gran));
        }
        /* group */
        const bool kg = side_grouped(&p.k), vg = side_grouped(&p.v);
        if (kg && vg && p.k.group == p.v.group) {
            if (p.k.group != 32) put_group(&b, "", p.k.group);
        } else {
            if (kg && p.k.group != 32) put_group(&b, "k", p.k.group);
            if (vg && p.v.group != 32) put_group(&b, "v", p.v.group);
        }
        /* quantizer */
        const bool ks = kq && p.k.quantizer == TL_KV_SYM, vs = vq && p.v.quantizer == TL_KV_SYM;
        if (ks && vs) put(&b, ":sym");
        else if (ks) put(&b, ":ksym");
        else if (vs) put(&b, ":vsym");
        if (p.residual) put(&b, ":r%d", p.residual);
    }
    if (p.smooth_k) put(&b, ":smooth");
    if (p.rotate) put(&b, ":rot");
    return (int)b.len;
}

/* ---- plans ---- */

void tl_kv_plan_free(tl_kv_plan *plan) {
    if (!plan) return;
    free(plan->layers);
    plan->layers = NULL;
    plan->n_layers = 0;
}

static int plan_init(tl_kv_plan *plan, int n_layers, const tl_kv_layer_policy *p, tl_error *err) {
    if (n_layers <= 0) return tl_fail(err, "KV plan: n_layers %d must be positive", n_layers);
    plan->n_layers = n_layers;
    plan->layers = tl_xmalloc(sizeof(tl_kv_layer_policy) * (size_t)n_layers);
    for (int i = 0; i < n_layers; i++) plan->layers[i] = *p;
    return 0;
}

/* "N" or "A-B" (inclusive) within [0, n_layers). */
static int parse_range(const char *s, int n_layers, int *lo, int *hi, const char *what, tl_error *err) {
    char tmp[64];
    if (strlen(s) >= sizeof tmp) return tl_fail(err, "%s: layer '%s' is not a number or range A-B", what, s);
    strcpy(tmp, s);
    char *dash = strchr(tmp, '-');
    long a, b;
    if (dash) {
        *dash = '\0';
        if (!parse_int(tmp, &a) || !parse_int(dash + 1, &b))
            return tl_fail(err, "%s: layer '%s' is not a number or range A-B", what, s);
    } else {
        if (!parse_int(tmp, &a)) return tl_fail(err, "%s: layer '%s' is not a number or range A-B", what, s);
        b = a;
    }
    if (a > b) return tl_fail(err, "%s: layer range '%s' is empty (%ld > %ld)", what, s, a, b);
    if (b >= n_layers)
        return tl_fail(err, "%s: layer %ld out of range (model has %d layers)", what, b, n_layers);
    *lo = (int)a;
    *hi = (int)b;
    return 0;
}

int tl_kv_plan_apply_overrides(tl_kv_plan *plan, const char *ov, tl_error *err) {
    if (!ov || !*ov) return 0;
    char *copy = tl_xstrdup(ov), *save = NULL;
    int rc = 0;
    for (char *e = strtok_r(copy, ",", &save); e && !rc; e = strtok_r(NULL, ",", &save)) {
        char what[160];
        snprintf(what, sizeof what, "--kv-layer '%.120s'", e);
        char *eq = strchr(e, '=');
        if (!eq) {
            rc = tl_fail(err, "%s: expected <layer>=<policy> or <first>-<last>=<policy>", what);
            break;
        }
        *eq = '\0';
        int lo, hi;
        tl_kv_layer_policy p;
        if (parse_range(e, plan->n_layers, &lo, &hi, what, err)) {
            rc = -1;
        } else if (tl_kv_policy_parse(eq + 1, &p, err)) {
            rc = tl_fail_prefix(err, "%s", what);
        } else {
            for (int i = lo; i <= hi; i++) plan->layers[i] = p;
        }
    }
    free(copy);
    return rc;
}

int tl_kv_plan_parse_json(tl_kv_plan *plan, const char *json, const char *where, int n_layers, tl_error *err) {
    memset(plan, 0, sizeof *plan);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 0);
    if (!root) {
        const long off = end ? (long)(end - json) : -1;
        return tl_fail(err, "%s: not valid JSON (at byte %ld)", where, off);
    }
    int rc = -1;
    tl_kv_layer_policy def;
    tl_kv_policy_default(&def, TL_KV_F16);
    if (!cJSON_IsObject(root)) {
        tl_fail(err, "%s: a KV plan must be a JSON object {\"default\": ..., \"layers\": {...}}", where);
        goto done;
    }
    for (cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "default") && strcmp(it->string, "layers") && strcmp(it->string, "n_layers") &&
            strcmp(it->string, "measured")) { /* "measured": how a calibration chose the plan, not read */
            tl_fail(err, "%s: unknown key \"%s\" (expected \"default\", \"layers\", \"n_layers\", \"measured\")", where,
                    it->string);
            goto done;
        }
    }
    const cJSON *nl = cJSON_GetObjectItemCaseSensitive(root, "n_layers");
    if (nl && (!cJSON_IsNumber(nl) || nl->valuedouble != n_layers)) {
        tl_fail(err, "%s: \"n_layers\" is %g but the model has %d layers", where, cJSON_IsNumber(nl) ? nl->valuedouble : -1.0,
                n_layers);
        goto done;
    }
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "default");
    if (d) {
        if (!cJSON_IsString(d)) {
            tl_fail(err, "%s: \"default\" must be a policy string", where);
            goto done;
        }
        if (tl_kv_policy_parse(d->valuestring, &def, err)) {
            tl_fail_prefix(err, "%s: \"default\"", where);
            goto done;
        }
    }
    if (plan_init(plan, n_layers, &def, err)) goto done;
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    if (layers) {
        if (!cJSON_IsObject(layers)) {
            tl_fail(err, "%s: \"layers\" must be an object {\"<layer or A-B>\": \"<policy>\"}", where);
            goto done;
        }
        for (const cJSON *it = layers->child; it; it = it->next) {
            char what[200];
            snprintf(what, sizeof what, "%s: layers.\"%.60s\"", where, it->string);
            int lo, hi;
            tl_kv_layer_policy p;
            if (parse_range(it->string, n_layers, &lo, &hi, what, err)) goto done;
            if (!cJSON_IsString(it)) {
                tl_fail(err, "%s: value must be a policy string", what);
                goto done;
            }
            if (tl_kv_policy_parse(it->valuestring, &p, err)) {
                tl_fail_prefix(err, "%s", what);
                goto done;
            }
            for (int i = lo; i <= hi; i++) plan->layers[i] = p;
        }
    }
    rc = 0;
done:
    if (rc) tl_kv_plan_free(plan);
    cJSON_Delete(root);
    return rc;
}

/* "--kv" + " " + message (the message starts with the quoted spec). */
static int prefix_kv(tl_error *err) {
    if (err) {
        char old[sizeof err->msg];
        memcpy(old, err->msg, sizeof old);
        snprintf(err->msg, sizeof err->msg, "--kv %.*s", (int)sizeof err->msg - 8, old);
    }
    return -1;
}

static bool is_json_path(const char *s) {
    const size_t n = strlen(s);
    return s[0] == '@' || (n > 5 && !strcmp(s + n - 5, ".json"));
}

int tl_kv_plan_parse(tl_kv_plan *plan, const char *spec, const char *overrides, int n_layers, tl_error *err) {
    memset(plan, 0, sizeof *plan);
    if (!spec || !*spec) spec = "f16";
    if (tl_tailor_spec(spec)) { /* TailorKV: dense layers KIVI, sparse layers offloaded */
        if (tl_tailor_plan_parse(plan, spec, n_layers, err)) return -1;
    } else if (is_json_path(spec)) {
        const char *path = spec[0] == '@' ? spec + 1 : spec;
        char *text = tl_read_whole(path, NULL, err);
        if (!text) return tl_fail_prefix(err, "--kv: cannot open plan file");
        const int rc = tl_kv_plan_parse_json(plan, text, path, n_layers, err);
        free(text);
        if (rc) return prefix_kv(err);
    } else {
        tl_kv_layer_policy p;
        if (tl_kv_policy_parse(spec, &p, err)) return prefix_kv(err);
        if (plan_init(plan, n_layers, &p, err)) return -1;
    }
    if (tl_kv_plan_apply_overrides(plan, overrides, err)) {
        tl_kv_plan_free(plan);
        return -1;
    }
    return 0;
}

/* The layer whose policy most layers use (the first such). */
static int plan_base(const tl_kv_plan *plan) {
    int best = 0, best_n = 0;
    for (int i = 0; i < plan->n_layers; i++) {
        int c = 0;
        for (int j = 0; j < plan->n_layers; j++) c += tl_kv_policy_equal(&plan->layers[i], &plan->layers[j]);
        if (c > best_n) best = i, best_n = c;
    }
    return best;
}

void tl_kv_plan_format_parts(const tl_kv_plan *plan, char **base, char **overrides) {
    char txt[MAX_POLICY_TEXT];
    if (plan->n_layers == 0) {
        *base = tl_xstrdup("(empty)");
        *overrides = tl_xstrdup("");
        return;
    }
    const int best = plan_base(plan);
    tl_kv_policy_format(&plan->layers[best], txt, sizeof txt);
    *base = tl_xstrdup(txt);
    tl_strbuf b = {0};
    tl_strbuf_put(&b, "", 0);
    const char *sep = "";
    for (int i = 0; i < plan->n_layers;) {
        if (tl_kv_policy_equal(&plan->layers[i], &plan->layers[best])) {
            i++;
            continue;
        }
        int j = i;
        while (j + 1 < plan->n_layers && tl_kv_policy_equal(&plan->layers[j + 1], &plan->layers[i])) j++;
        tl_kv_policy_format(&plan->layers[i], txt, sizeof txt);
        if (j > i) tl_strbuf_printf(&b, "%s%d-%d=%s", sep, i, j, txt);
        else tl_strbuf_printf(&b, "%s%d=%s", sep, i, txt);
        sep = ",";
        i = j + 1;
    }
    *overrides = b.p;
}

char *tl_kv_plan_format(const tl_kv_plan *plan) {
    char *base, *over, *out;
    tl_kv_plan_format_parts(plan, &base, &over);
    if (!*over) {
        free(over);
        return base;
    }
    const size_t n = strlen(base) + strlen(over) + 4;
    out = tl_xmalloc(n);
    snprintf(out, n, "%s [%s]", base, over);
    free(base);
    free(over);
    return out;
}

int tl_kv_plan_format_layer(const tl_kv_plan *plan, int il, char *buf, size_t n) {
    return tl_kv_policy_format(&plan->layers[il], buf, n);
}

int tl_kv_policy_check(const char *text, tl_error *err) {
    tl_kv_layer_policy p;
    return tl_kv_policy_parse(text, &p, err);
}

int tl_kv_plan_retarget(const tl_kv_plan *src, int n_layers, tl_kv_plan *dst, tl_error *err) {
    memset(dst, 0, sizeof *dst);
    if (src->n_layers == 0) return tl_fail(err, "retarget: the plan is empty");
    const tl_kv_layer_policy *base = &src->layers[plan_base(src)];
    for (int i = n_layers; i < src->n_layers; i++)
        if (!tl_kv_policy_equal(&src->layers[i], base))
            return tl_fail(err, "--kv-layer: layer %d out of range (model has %d layers)", i, n_layers);
    if (plan_init(dst, n_layers, base, err)) return -1;
    for (int i = 0; i < n_layers && i < src->n_layers; i++) dst->layers[i] = src->layers[i];
    return 0;
}

void tl_kv_plan_copy(const tl_kv_plan *src, tl_kv_plan *dst) {
    dst->n_layers = src->n_layers;
    dst->layers = tl_xmalloc(sizeof *dst->layers * (size_t)TL_MAX(1, src->n_layers));
    memcpy(dst->layers, src->layers, sizeof *dst->layers * (size_t)src->n_layers);
}

/* ---- stores ---- */

int tl_kv_history_splits(int base, int nthreads, int max_split) {
    int n = (4 * nthreads + base - 1) / base;
    for (int k = n; n > 1 && k < n + nthreads; k++)
        if (base * k % nthreads == 0) {
            n = k;
            break;
        }
    return TL_MAX(1, TL_MIN(n, max_split));
}

tl_kv_layer *tl_kv_layer_new(const tl_kv_layer_policy *p, const tl_kv_shape *s, tl_error *err) {
    if (!p || !s) {
        tl_fail(err, "tl_kv_layer_new: missing policy or shape");
        return NULL;
    }
    if (!(s->softcap >= 0.0f && s->softcap < INFINITY)) {
        tl_fail(err, "KV store: score soft-cap %g is not a finite number >= 0", s->softcap);
        return NULL;
    }
    tl_kv_layer_policy n = *p;
    tl_kv_policy_normalize(&n);
    if (n.kind == TL_KV_QUANT) return tl_kv_quant_new(&n, s, err);
    if (n.kind == TL_KV_OFFLOAD) return tl_kv_offload_new(&n, s, err);
    if (n.kind == TL_KV_AUTO) {
        tl_fail(err, "an auto KV policy is chosen by calibration when a session is made, not a store of its own");
        return NULL;
    }
    return tl_kv_dense_new(n.kind, s, err);
}

int tl_kv_layer_bytes_formula(const tl_kv_layer_policy *p, const tl_kv_shape *s, int64_t n, tl_kv_bytes *b, tl_error *err) {
    tl_kv_layer_policy np = *p;
    tl_kv_policy_normalize(&np);
    memset(b, 0, sizeof *b);
    if (n < 0) return tl_fail(err, "KV bytes formula: negative token count %lld", (long long)n);
    if (np.kind == TL_KV_QUANT) return tl_kv_quant_bytes_formula(&np, s, n, b, err);
    if (np.kind == TL_KV_OFFLOAD) return tl_kv_offload_bytes_formula(&np, s, n, b, err);
    if (np.kind == TL_KV_AUTO) { /* not resolved yet: the largest candidate that fits the shape */
        tl_kv_layer_policy cand[TL_KV_AUTO_MAX_CANDIDATES];
        const int nc = tl_kv_auto_candidates(&np, false, cand);
        int fits = 0;
        for (int i = 0; i < nc; i++) {
            tl_kv_bytes cb;
            if (tl_kv_quant_bytes_formula(&cand[i], s, n, &cb, NULL)) continue; /* e.g. rotation, head dim 96 */
            if (!fits++ || tl_kv_bytes_total(&cb) > tl_kv_bytes_total(b)) *b = cb;
        }
        return fits ? 0 : tl_kv_quant_bytes_formula(&cand[0], s, n, b, err);
    }
    /* dense.c: a ring of n_ctx rows, or of `window` rows for sliding-window layers */
    const int64_t cap = s->window > 0 ? TL_MIN(s->window, s->n_ctx) : s->n_ctx;
    const uint64_t elt = np.kind == TL_KV_F32 ? 4 : 2;
    b->codes = (uint64_t)TL_MIN(n, cap) * s->n_head_kv * (uint64_t)(s->head_dim_k + s->head_dim_v) * elt;
    return 0;
}

int tl_kv_plan_bytes_formula(const tl_kv_plan *plan, const tl_kv_shape *shapes, int64_t n, tl_kv_bytes *per_layer,
                             tl_kv_bytes *total, tl_error *err) {
    memset(total, 0, sizeof *total);
    for (int i = 0; i < plan->n_layers; i++) {
        tl_kv_bytes b;
        if (tl_kv_layer_bytes_formula(&plan->layers[i], &shapes[i], n, &b, err)) return tl_fail_prefix(err, "layer %d", i);
        if (per_layer) per_layer[i] = b;
        total->codes += b.codes;
        total->scales += b.scales;
        total->residual += b.residual;
        total->other += b.other;
        total->host += b.host;
    }
    return 0;
}
