/* test_kv_policy.c: KV policy text form (parse/format round trip, canonical forms, error
 * messages), per-layer plans (overrides, JSON plan files), store dispatch, dense formula. */
#include "../../src/kv/policy.h"
#include "../testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static bool parse_ok(const char *text, tl_kv_layer_policy *p) {
    tl_error err;
    if (tl_kv_policy_parse(text, p, &err)) {
        fprintf(stderr, "parse '%s': %s\n", text, err.msg);
        return false;
    }
    return true;
}

/* text parses, formats to `canon`, and the canonical form parses back to the same policy */
static void check_canon(const char *text, const char *canon) {
    tl_kv_layer_policy p, q;
    char buf[256];
    if (!parse_ok(text, &p)) {
        CHECKF(0, "'%s' should parse", text);
        return;
    }
    tl_kv_policy_format(&p, buf, sizeof buf);
    CHECKF(!strcmp(buf, canon), "'%s' formats as '%s', expected '%s'", text, buf, canon);
    CHECKF(parse_ok(buf, &q) && tl_kv_policy_equal(&p, &q) && !memcmp(&p, &q, sizeof p), "'%s' round trip", buf);
}

static void check_error(const char *text, const char *needle) {
    tl_kv_layer_policy p;
    tl_error err = {{0}};
    const int rc = tl_kv_policy_parse(text, &p, &err);
    CHECKF(rc != 0 && strstr(err.msg, needle), "'%s': expected error containing \"%s\", got rc %d \"%s\"", text, needle, rc,
           err.msg);
}

static void test_text(void) {
    check_canon("f16", "f16");
    check_canon("f32", "f32");
    check_canon("bf16", "bf16");
    check_canon("k16v16", "f16");
    check_canon("k8v8", "k8v8");
    check_canon("k8v8:tok:g32:asym:r0", "k8v8");
    check_canon("k4v2:g64:kchan:vtok:r128:smooth", "k4v2:kchan:g64:r128:smooth");
    check_canon("k2v2:kivi", "k2v2:kivi");
    check_canon("k2v2:kchan:vtok:r128", "k2v2:kivi");
    check_canon("k2v2:kivi:g64", "k2v2:kchan:g64:r128");
    check_canon("k4v4:sym", "k4v4:sym");
    check_canon("k4v4:ksym", "k4v4:ksym");
    check_canon("k4v2:rot:smooth:kivi", "k4v2:kivi:smooth:rot");
    check_canon("k16v4:r64:smooth:kchan", "k16v4:r64"); /* K side is f16: its fields vanish */
    check_canon("k4v16:kchan:vsym:vg64", "k4v16:kchan");
    check_canon("k4v4:ghead", "k4v4:ghead");
    check_canon("k4v4:kg64:vg128", "k4v4:kg64:vg128");
    check_canon("k8v4:kblock:vtensor:g64", "k8v4:kblock:vtensor:kg64");
    check_canon("k4v4:tensor:g128", "k4v4:tensor");
    check_canon("k1v1:chan:r32", "k1v1:chan:r32");
    /* fields: last one wins */
    check_canon("k4v4:sym:asym", "k4v4");
    tl_kv_layer_policy p;
    CHECK(parse_ok("k4v2:g64:kchan:vtok:r128:smooth:rot", &p));
    CHECK(p.kind == TL_KV_QUANT && p.k.bits == 4 && p.v.bits == 2 && p.k.group == 64 && p.v.group == 64);
    CHECK(p.k.gran == TL_KV_GRAN_CHANNEL && p.v.gran == TL_KV_GRAN_TOKEN && p.residual == 128 && p.smooth_k && p.rotate);
    CHECK(parse_ok("k8v8", &p) && p.k.group == 32 && p.k.gran == TL_KV_GRAN_TOKEN && p.k.quantizer == TL_KV_ASYM &&
          p.residual == 0 && !p.smooth_k && !p.rotate);
    CHECK(parse_ok("k2v2:kivi", &p) && p.k.gran == TL_KV_GRAN_CHANNEL && p.v.gran == TL_KV_GRAN_TOKEN &&
          p.k.group == 32 && p.residual == 128);

    /* every combination round-trips */
    const int bits[5] = {16, 8, 4, 2, 1}, groups[4] = {32, 64, 128, 0};
    int bad = 0, n = 0;
    for (int kb = 0; kb < 5; kb++)
        for (int vb = 0; vb < 5; vb++)
            for (int kg = 0; kg < 4; kg++)
                for (int gr = 0; gr < 4; gr++)
                    for (int flags = 0; flags < 16; flags++) {
                        tl_kv_layer_policy a, b;
                        tl_kv_policy_default(&a, TL_KV_QUANT);
                        a.k.bits = bits[kb];
                        a.v.bits = bits[vb];
                        a.k.gran = (tl_kv_gran)gr;
                        a.v.gran = (tl_kv_gran)((gr + flags) % 2 ? TL_KV_GRAN_TOKEN : TL_KV_GRAN_TENSOR);
                        a.k.group = (gr == TL_KV_GRAN_CHANNEL || gr == TL_KV_GRAN_BLOCK) && groups[kg] == 0 ? 64 : groups[kg];
                        a.v.group = groups[(kg + 1) % 4];
                        a.k.quantizer = (flags & 1) && bits[kb] >= 2 ? TL_KV_SYM : TL_KV_ASYM;
                        a.v.quantizer = (flags & 8) && bits[vb] >= 2 ? TL_KV_SYM : TL_KV_ASYM;
                        a.residual = (flags & 2) ? 128 : (flags & 4) ? 37 : 0;
                        a.smooth_k = flags & 4;
                        a.rotate = flags & 2;
                        tl_kv_policy_normalize(&a);
                        char buf[256];
                        tl_kv_policy_format(&a, buf, sizeof buf);
                        tl_error err;
                        n++;
                        if (tl_kv_policy_parse(buf, &b, &err) || !tl_kv_policy_equal(&a, &b) || memcmp(&a, &b, sizeof a)) {
                            if (bad++ < 5) fprintf(stderr, "round trip failed for '%s'\n", buf);
                        }
                    }
    CHECKF(bad == 0, "%d of %d combinations do not round-trip", bad, n);
    /* format reports the needed length, truncates safely */
    char small[6];
    CHECK(parse_ok("k4v2:kivi:smooth", &p));
    const int need = tl_kv_policy_format(&p, small, sizeof small);
    CHECK(need == (int)strlen("k4v2:kivi:smooth") && strlen(small) == 5);
}

static void test_errors(void) {
    check_error("k4v3", "'k4v3': V bits 3 not supported (use 16, 8, 4, 2, 1)");
    check_error("k5v4", "K bits 5 not supported");
    check_error("", "empty");
    check_error("q8_0", "field 'q8_0': expected f32, f16, bf16, auto or k<bits>v<bits>");
    check_error("auto", "auto needs the bits");
    check_error("auto:3", "auto: K bits 3 not supported");
    check_error("auto:1", "auto: K bits 1 not supported");
    check_error("auto:k4v3", "auto: V bits 3 not supported");
    check_error("auto:x4", "auto takes the bits");
    check_error("auto:4:kchan", "auto: unknown field 'kchan'");
    check_error("auto:4:ghead", "group 'head'");
    check_error("auto:4:r-2", "unknown field 'r-2'");
    check_error("k4", "field 'k4'");
    check_error("k4v4x", "field 'k4v4x'");
    check_error("k4v4:g48", "field 'g48': group must be 32, 64, 128 or 'head'");
    check_error("k4v4:kg", "unknown field 'kg'");
    check_error("k4v4:vg0", "field 'vg0'");
    check_error("k4v4:r-1", "unknown field 'r-1'");
    check_error("k4v4:r12x", "field 'r12x': residual");
    check_error("k4v4:foo", "unknown field 'foo'");
    check_error("k4v4::sym", "'k4v4::sym': empty field");
    check_error("k4v4:", "empty field");
    check_error("f16:g64", "field 'g64' does not apply to the dense store f16");
    check_error("k1v4:sym", "symmetric quantizer needs at least 2 bits (K has 1)");
    check_error("k4v4:kchan:kghead", "group 'head' needs tok granularity");
    check_error("tailor:plan.json", "a TailorKV plan names a policy per layer");
}

static char *write_tmp(const char *text) {
    static char path[64];
    snprintf(path, sizeof path, "/tmp/tl_kv_plan_%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_plans(void) {
    tl_kv_plan plan;
    tl_error err;
    CHECK(tl_kv_plan_parse(&plan, "k2v2:kivi", "0=k8v8,30-31=f16", 32, &err) == 0);
    tl_kv_layer_policy a, b, c;
    parse_ok("k2v2:kivi", &a);
    parse_ok("k8v8", &b);
    parse_ok("f16", &c);
    CHECK(plan.n_layers == 32 && tl_kv_policy_equal(&plan.layers[0], &b) && tl_kv_policy_equal(&plan.layers[1], &a) &&
          tl_kv_policy_equal(&plan.layers[29], &a) && tl_kv_policy_equal(&plan.layers[30], &c) &&
          tl_kv_policy_equal(&plan.layers[31], &c));
    char *s = tl_kv_plan_format(&plan);
    CHECKF(!strcmp(s, "k2v2:kivi [0=k8v8,30-31=f16]"), "plan format '%s'", s);
    free(s);
    tl_kv_plan_free(&plan);

    CHECK(tl_kv_plan_parse(&plan, NULL, NULL, 4, &err) == 0 && plan.layers[3].kind == TL_KV_F16);
    s = tl_kv_plan_format(&plan);
    CHECK(!strcmp(s, "f16"));
    free(s);
    tl_kv_plan_free(&plan);

    CHECK(tl_kv_plan_parse(&plan, "k4v3", NULL, 32, &err) != 0 && strstr(err.msg, "--kv 'k4v3': V bits 3 not supported"));
    CHECK(tl_kv_plan_parse(&plan, "k4v4", "40=k8v8", 32, &err) != 0 &&
          strstr(err.msg, "--kv-layer '40=k8v8': layer 40 out of range (model has 32 layers)"));
    CHECK(tl_kv_plan_parse(&plan, "k4v4", "3=k8v9", 32, &err) != 0 && strstr(err.msg, "--kv-layer '3=k8v9'") &&
          strstr(err.msg, "V bits 9"));
    CHECK(tl_kv_plan_parse(&plan, "k4v4", "k8v8", 32, &err) != 0 && strstr(err.msg, "expected <layer>=<policy>"));
    CHECK(tl_kv_plan_parse(&plan, "k4v4", "5-2=k8v8", 32, &err) != 0 && strstr(err.msg, "empty"));
    CHECK(tl_kv_plan_parse(&plan, "k4v4", "x=k8v8", 32, &err) != 0 && strstr(err.msg, "not a number"));
    CHECK(plan.layers == NULL);

    /* JSON plans */
    const char *path = write_tmp("{\"default\": \"k2v2:kivi\", \"layers\": {\"0\": \"k8v8\", \"2-3\": \"k4v4:rot\"}}");
    CHECK(tl_kv_plan_parse(&plan, path, "3=f16", 6, &err) == 0);
    tl_kv_layer_policy r;
    parse_ok("k4v4:rot", &r);
    CHECK(tl_kv_policy_equal(&plan.layers[0], &b) && tl_kv_policy_equal(&plan.layers[1], &a) &&
          tl_kv_policy_equal(&plan.layers[2], &r) && tl_kv_policy_equal(&plan.layers[3], &c) &&
          tl_kv_policy_equal(&plan.layers[5], &a));
    tl_kv_plan_free(&plan);
    char at[80];
    snprintf(at, sizeof at, "@%s", path);
    CHECK(tl_kv_plan_parse(&plan, at, NULL, 6, &err) == 0 && tl_kv_policy_equal(&plan.layers[2], &r));
    tl_kv_plan_free(&plan);
    const struct {
        const char *json, *needle;
    } bad[] = {
        {"{\"default\": \"k2v3\"}", "\"default\": 'k2v3': V bits 3"},
        {"{\"layers\": {\"7\": \"k8v8\"}}", "layers.\"7\": layer 7 out of range (model has 6 layers)"},
        {"{\"layers\": {\"1\": \"k8v8:zz\"}}", "layers.\"1\": 'k8v8:zz': unknown field 'zz'"},
        {"{\"layers\": {\"1\": 8}}", "value must be a policy string"},
        {"{\"layer\": {}}", "unknown key \"layer\""},
        {"{\"n_layers\": 32}", "\"n_layers\" is 32 but the model has 6 layers"},
        {"[1, 2]", "must be a JSON object"},
        {"{\"default\": \"k2v2\",", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        path = write_tmp(bad[i].json);
        const int rc = tl_kv_plan_parse(&plan, path, NULL, 6, &err);
        CHECKF(rc != 0 && strstr(err.msg, bad[i].needle) && strstr(err.msg, path), "json %s: got \"%s\"", bad[i].json,
               rc ? err.msg : "(ok)");
        if (!rc) tl_kv_plan_free(&plan);
    }
    unlink(path);
    CHECK(tl_kv_plan_parse(&plan, "/nonexistent/plan.json", NULL, 6, &err) != 0 && strstr(err.msg, "cannot open plan file"));
}

/* tl_kv_layer_new picks the store; the dense formula matches dense.c's report. */
static void test_dispatch(void) {
    const tl_kv_shape s = {4, 2, 64, 64, 256, 0, 0.125f, 0};
    const char *pols[] = {"f32", "f16", "bf16", "k16v16", "k8v8", "k2v2:kivi"};
    for (size_t i = 0; i < sizeof pols / sizeof pols[0]; i++) {
        tl_kv_layer_policy p;
        tl_error err;
        parse_ok(pols[i], &p);
        tl_kv_layer *l = tl_kv_layer_new(&p, &s, &err);
        CHECKF(l != NULL, "%s: %s", pols[i], err.msg);
        if (!l) continue;
        CHECK(!strcmp(l->ops->name, p.kind == TL_KV_QUANT ? "quant" : "dense"));
        float q[3 * 4 * 64], k[3 * 2 * 64], o[3 * 4 * 64];
        for (int j = 0; j < 3 * 4 * 64; j++) q[j] = (float)((j * 37) % 11) / 11.0f;
        for (int j = 0; j < 3 * 2 * 64; j++) k[j] = (float)((j * 13) % 7) / 7.0f;
        for (int rep = 0; rep < 5; rep++) tl_kv_forward(l, NULL, 3, q, k, k, o, &err);
        tl_kv_bytes m, f;
        l->ops->bytes(l, &m);
        CHECK(tl_kv_layer_bytes_formula(&p, &s, 15, &f, &err) == 0 && !memcmp(&m, &f, sizeof m));
        tl_kv_destroy(l);
    }
    /* dense sliding-window layer holds at most `window` tokens */
    tl_kv_layer_policy p;
    parse_ok("f16", &p);
    const tl_kv_shape w = {4, 2, 64, 64, 4096, 512, 0.125f, 0};
    tl_kv_bytes f;
    CHECK(tl_kv_layer_bytes_formula(&p, &w, 10000, &f, NULL) == 0 && f.codes == 512ull * 2 * 128 * 2);
    /* fp16 Llama-3.1-8B: 128 KiB per token over 32 layers = 4 KiB per layer */
    const tl_kv_shape ll = {32, 8, 128, 128, 131072, 0, 0.088f, 0};
    CHECK(tl_kv_layer_bytes_formula(&p, &ll, 1, &f, NULL) == 0 && f.codes * 32 == 128 * 1024);
    /* whole plan: Llama-3.1-8B at 128k, f16 everywhere = 16 GiB; layer 0 k8v8 and the rest
     * k2v2:kivi sums the per-layer formulas */
    tl_kv_shape shapes[32];
    for (int i = 0; i < 32; i++) shapes[i] = (tl_kv_shape){32, 8, 128, 128, 131072, 0, 0.088f, 0};
    tl_kv_plan plan;
    tl_error err;
    CHECK(tl_kv_plan_parse(&plan, "f16", NULL, 32, &err) == 0);
    tl_kv_bytes tot, per[32];
    CHECK(tl_kv_plan_bytes_formula(&plan, shapes, 131072, per, &tot, &err) == 0 && tot.codes == 16ull << 30);
    tl_kv_plan_free(&plan);
    CHECK(tl_kv_plan_parse(&plan, "k2v2:kivi", "0=k8v8", 32, &err) == 0);
    CHECK(tl_kv_plan_bytes_formula(&plan, shapes, 131072, per, &tot, &err) == 0);
    tl_kv_bytes l0, l1;
    tl_kv_layer_bytes_formula(&plan.layers[0], &shapes[0], 131072, &l0, NULL);
    tl_kv_layer_bytes_formula(&plan.layers[1], &shapes[1], 131072, &l1, NULL);
    CHECK(tl_kv_bytes_total(&tot) == tl_kv_bytes_total(&l0) + 31 * tl_kv_bytes_total(&l1) && !memcmp(&per[5], &l1, sizeof l1));
    printf("Llama-3.1-8B KV at 128k: f16 16.00 GiB, k2v2:kivi with layer 0 k8v8 %.2f GiB\n",
           tl_kv_bytes_total(&tot) / (double)(1 << 30));
    shapes[7].head_dim_k = 48;
    CHECK(tl_kv_plan_bytes_formula(&plan, shapes, 10, NULL, &tot, &err) != 0 && strstr(err.msg, "layer 7"));
    tl_kv_plan_free(&plan);
    parse_ok("k4v4:g128", &p);
    CHECK(tl_kv_layer_bytes_formula(&p, &s, 10, &f, &err) != 0 && strstr(err.msg, "does not divide"));
}

/* auto:B: canonical text, candidates, the formula takes the largest candidate, no store */
static void test_auto(void) {
    check_canon("auto:4", "auto:4");
    check_canon("auto:k4v4", "auto:4");
    check_canon("auto:k4v2:g64:r128", "auto:k4v2:g64:r128");
    check_canon("auto:8:g32:r0", "auto:8");
    check_canon("auto:k2v16", "auto:k2v16");
    tl_kv_layer_policy a, c[TL_KV_AUTO_MAX_CANDIDATES], g[TL_KV_AUTO_MAX_CANDIDATES];
    CHECK(parse_ok("auto:k4v2:g64", &a));
    CHECK(tl_kv_auto_candidates(&a, false, c) == TL_KV_AUTO_MAX_CANDIDATES);
    CHECK(tl_kv_auto_candidates(&a, true, g) == 2);
    const char *want[] = {"k4v2:g64", "k4v2:kchan:g64", "k4v2:g64:smooth", "k4v2:g64:rot", "k4v2:g64:smooth:rot"};
    for (int i = 0; i < TL_KV_AUTO_MAX_CANDIDATES; i++) {
        char buf[128];
        tl_kv_policy_format(&c[i], buf, sizeof buf);
        CHECKF(c[i].kind == TL_KV_QUANT && !strcmp(buf, want[i]), "candidate %d (%s) is '%s', expected '%s'", i,
               tl_kv_auto_candidate_name(i), buf, want[i]);
        if (i < 2) CHECK(tl_kv_policy_equal(&c[i], &g[i]));
    }
    const tl_kv_shape s = {.n_head = 32, .n_head_kv = 8, .head_dim_k = 128, .head_dim_v = 128, .n_ctx = 4096,
                           .window = 0, .scale = 0.088f};
    tl_error err;
    for (int n = 0; n <= 200; n += 37) {
        tl_kv_bytes ab, cb;
        CHECK(tl_kv_layer_bytes_formula(&a, &s, n, &ab, &err) == 0);
        bool equal_one = false;
        for (int i = 0; i < TL_KV_AUTO_MAX_CANDIDATES; i++) {
            CHECK(tl_kv_layer_bytes_formula(&c[i], &s, n, &cb, &err) == 0);
            CHECK(tl_kv_bytes_total(&cb) <= tl_kv_bytes_total(&ab));
            equal_one |= !memcmp(&cb, &ab, sizeof cb);
        }
        CHECKF(equal_one, "auto bytes at %d tokens are no candidate's", n);
    }
    CHECK(tl_kv_layer_new(&a, &s, &err) == NULL && strstr(err.msg, "calibration"));
    tl_kv_plan plan;
    CHECK(tl_kv_plan_parse(&plan, "auto:4", "0=k8v8", 4, &err) == 0 && plan.layers[1].kind == TL_KV_AUTO &&
          plan.layers[0].kind == TL_KV_QUANT);
    tl_kv_plan_free(&plan);
}

int main(void) {
    test_auto();
    test_text();
    test_errors();
    test_plans();
    test_dispatch();
    return tl_test_done();
}
