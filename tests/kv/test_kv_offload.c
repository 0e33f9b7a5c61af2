/* TailorKV sparse-layer store (kv/offload.c) and the tailor spec / plan (kv/tailor_plan.c):
 *  - with topk >= context the outputs equal an f16 dense cache (prefill chunks + decode), for
 *    token, page and summary variants, and with soft-capped scores (tolerance 2e-5: the same f16
 *    rows, another summation order);
 *  - with channels = head dim, retrieval picks the true top-k of the group-mean exact scores
 *    (token and page level), and the output equals a double-precision reference over exactly
 *    sinks + recent + selected + generated + the new token (soft-capped scores too: the cap does
 *    not change which tokens rank highest);
 *  - device/host bytes and host->device traffic equal their formulas (and hand-computed numbers);
 *  - query prediction is used when given; spec parsing, plan JSON round trip, errors;
 *  - a whole model with every layer offloaded and topk >= context gives the f16 logits. */
#include "../testutil.h"
#include "../../src/kv/offload.h"
#include "../../src/kv/policy.h"
#include "../../src/kv/tailor_plan.h"
#include "../../src/engine/session.h"
#include "../../include/tailor.h"

#include <math.h>
#include <stdlib.h>
#include <unistd.h>

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return ((float)((*s >> 40) & 0xffffff) / 16777216.0f) * 2.0f - 1.0f;
}

static float r16(float x) { return tl_fp16_to_fp32(tl_fp32_to_fp16(x)); }

static tl_kv_layer_policy off_policy(int sinks, int recent, int topk, int channels, int summary, int page) {
    tl_kv_layer_policy p;
    memset(&p, 0, sizeof p);
    p.kind = TL_KV_OFFLOAD;
    p.off = (tl_kv_offload_params){sinks, recent, topk, channels, summary, page};
    return p;
}

typedef struct {
    tl_kv_shape sh;
    int n; /* total tokens */
    float *q, *k, *v;
} data;

static data make_data(tl_kv_shape sh, int n, uint64_t seed) {
    data d = {sh, n, NULL, NULL, NULL};
    const size_t qn = (size_t)n * sh.n_head * sh.head_dim_k, kn = (size_t)n * sh.n_head_kv * sh.head_dim_k;
    const size_t vn = (size_t)n * sh.n_head_kv * sh.head_dim_v;
    d.q = malloc(qn * 4);
    d.k = malloc(kn * 4);
    d.v = malloc(vn * 4);
    for (size_t i = 0; i < qn; i++) d.q[i] = 1.5f * frand(&seed);
    /* a few heavy channels, as real keys have, so channel selection matters */
    for (size_t i = 0; i < kn; i++) d.k[i] = (i % sh.head_dim_k < 3 ? 4.0f : 1.0f) * frand(&seed);
    for (size_t i = 0; i < vn; i++) d.v[i] = frand(&seed);
    return d;
}

static void free_data(data *d) {
    free(d->q);
    free(d->k);
    free(d->v);
}

/* Feed d through both stores: prefill chunks, then single tokens; compare outputs. */
static void test_exact(tl_kv_layer_policy pol, const int *chunks, int n_chunks, int n_prompt, float softcap, tl_pool *pool) {
    tl_kv_shape sh = {.n_head = 6, .n_head_kv = 2, .head_dim_k = 32, .head_dim_v = 32, .n_ctx = 300, .window = 0, .scale = 0.18f,
                      .softcap = softcap};
    data d = make_data(sh, 260, 77);
    tl_error err;
    tl_kv_layer *a = tl_kv_offload_new(&pol, &sh, &err);
    CHECKF(a != NULL, "%s", err.msg);
    tl_kv_layer *b = tl_kv_dense_new(TL_KV_F16, &sh, &err);
    if (!a || !b) return;
    const int qd = sh.n_head * 32, kd = sh.n_head_kv * 32;
    float *oa = malloc(sizeof(float) * 128 * qd), *ob = malloc(sizeof(float) * 128 * qd);
    int pos = 0, ci = 0;
    double maxd = 0;
    while (pos < d.n) {
        int c = pos < n_prompt ? TL_MIN(chunks[ci++ % n_chunks], n_prompt - pos) : 1;
        if (c == 1 && pos < n_prompt) c = 2; /* a 1-token chunk would count as generated */
        if (pos >= n_prompt && pos % 3 == 0) a->ops->predicted_query(a, pool, 1, d.q + (size_t)pos * qd);
        CHECK(tl_kv_forward(a, pool, c, d.q + (size_t)pos * qd, d.k + (size_t)pos * kd, d.v + (size_t)pos * kd, oa, &err) == 0);
        CHECK(tl_kv_forward(b, pool, c, d.q + (size_t)pos * qd, d.k + (size_t)pos * kd, d.v + (size_t)pos * kd, ob, &err) == 0);
        for (int i = 0; i < c * qd; i++) maxd = fmax(maxd, fabs(oa[i] - ob[i]));
        pos += c;
    }
    CHECKF(maxd < 2e-5, "topk >= context (summary %d, page %d): max |offload - f16 dense| = %g", pol.off.summary_bits,
           pol.off.page, maxd);
    free(oa);
    free(ob);
    tl_kv_destroy(a);
    tl_kv_destroy(b);
    free_data(&d);
}

/* Reference selection: candidates [S, n-R), group-mean query, exact scores on f16 keys. */
static int ref_select(const data *d, int n_prompt, int pos, int h, int S, int R, int topk, int page, int *out) {
    const tl_kv_shape *sh = &d->sh;
    const int G = sh->n_head / sh->n_head_kv, dk = sh->head_dim_k, H = sh->n_head_kv;
    const int lo = TL_MIN(S, n_prompt), hi = n_prompt - TL_MIN(R, n_prompt - lo), cand = hi - lo;
    double *s = calloc((size_t)TL_MAX(cand, 0) + 1, sizeof(double));
    for (int t = lo; t < hi; t++)
        for (int c = 0; c < dk; c++) {
            double qm = 0;
            for (int g = 0; g < G; g++) qm += d->q[((size_t)pos * sh->n_head + h * G + g) * dk + c];
            s[t - lo] += qm / G * r16(d->k[((size_t)t * H + h) * dk + c]);
        }
    int n = 0;
    if (page == 0) {
        bool *taken = calloc((size_t)TL_MAX(cand, 0) + 1, 1);
        for (int i = 0; i < TL_MIN(topk, cand); i++) {
            int best = -1;
            for (int t = 0; t < cand; t++)
                if (!taken[t] && (best < 0 || s[t] > s[best])) best = t;
            taken[best] = true;
        }
        for (int t = 0; t < cand; t++)
            if (taken[t]) out[n++] = lo + t;
        free(taken);
    } else {
        const int np = (cand + page - 1) / page, pick = TL_MAX(1, topk / page);
        double *ps = malloc(sizeof(double) * (size_t)TL_MAX(np, 1));
        bool *taken = calloc((size_t)TL_MAX(np, 1), 1);
        for (int p = 0; p < np; p++) {
            ps[p] = -1e300;
            for (int t = p * page; t < TL_MIN(cand, (p + 1) * page); t++) ps[p] = fmax(ps[p], s[t]);
        }
        for (int i = 0; i < TL_MIN(pick, np); i++) {
            int best = -1;
            for (int p = 0; p < np; p++)
                if (!taken[p] && (best < 0 || ps[p] > ps[best])) best = p;
            taken[best] = true;
        }
        for (int p = 0; p < np; p++)
            if (taken[p])
                for (int t = p * page; t < TL_MIN(cand, (p + 1) * page); t++) out[n++] = lo + t;
        free(ps);
        free(taken);
    }
    free(s);
    return n;
}

/* Double-precision attention of query (pos, head qh) over the given token positions. */
static void ref_attend(const data *d, int pos, int qh, const int *toks, int n, float *out) {
    const tl_kv_shape *sh = &d->sh;
    const int G = sh->n_head / sh->n_head_kv, dk = sh->head_dim_k, dv = sh->head_dim_v, H = sh->n_head_kv, h = qh / G;
    double *w = malloc(sizeof(double) * n), mx = -1e300, sum = 0;
    for (int i = 0; i < n; i++) {
        const int t = toks[i];
        double dot = 0;
        for (int c = 0; c < dk; c++) {
            const float kk = d->k[((size_t)t * H + h) * dk + c];
            dot += (double)d->q[((size_t)pos * sh->n_head + qh) * dk + c] * (t == pos ? kk : r16(kk));
        }
        w[i] = dot * sh->scale;
        if (sh->softcap > 0) w[i] = sh->softcap * tanh(w[i] / sh->softcap);
        mx = fmax(mx, w[i]);
    }
    for (int i = 0; i < n; i++) sum += w[i] = exp(w[i] - mx);
    for (int c = 0; c < dv; c++) {
        double a = 0;
        for (int i = 0; i < n; i++) {
            const float vv = d->v[((size_t)toks[i] * H + h) * dv + c];
            a += w[i] * (toks[i] == pos ? vv : r16(vv));
        }
        out[c] = (float)(a / sum);
    }
    free(w);
}

static void test_selection(int page, int summary, float softcap, tl_pool *pool) {
    tl_kv_shape sh = {.n_head = 6, .n_head_kv = 2, .head_dim_k = 32, .head_dim_v = 16, .n_ctx = 260, .window = 0, .scale = 0.2f,
                      .softcap = softcap};
    const int n_prompt = 203, S = 4, R = 8, topk = 24;
    data d = make_data(sh, 212, 99 + page);
    tl_kv_layer_policy pol = off_policy(S, R, topk, 32, summary, page);
    tl_error err;
    tl_kv_layer *l = tl_kv_offload_new(&pol, &sh, &err);
    CHECKF(l != NULL, "%s", err.msg);
    if (!l) return;
    const int qd = sh.n_head * 32, kd = sh.n_head_kv * 32, vd = sh.n_head_kv * 16;
    float *out = malloc(sizeof(float) * 128 * sh.n_head * 16), ref[16];
    for (int pos = 0; pos < n_prompt;) {
        const int c = TL_MIN(64, n_prompt - pos);
        tl_kv_forward(l, pool, c, d.q + (size_t)pos * qd, d.k + (size_t)pos * kd, d.v + (size_t)pos * vd, out, &err);
        pos += c;
    }
    int good = 0, total = 0;
    double maxd = 0;
    for (int pos = n_prompt; pos < d.n; pos++) {
        CHECK(tl_kv_forward(l, pool, 1, d.q + (size_t)pos * qd, d.k + (size_t)pos * kd, d.v + (size_t)pos * vd, out, &err) == 0);
        for (int h = 0; h < 2; h++) {
            int sel[64], want[64], toks[400];
            const int ns = tl_kv_offload_last_selection(l, h, sel, 64);
            const int nw = ref_select(&d, n_prompt, pos, h, S, R, topk, page, want);
            if (summary == 0) {
                bool same = ns == nw;
                for (int i = 0; same && i < ns; i++) same = sel[i] == want[i];
                CHECKF(same, "page %d: step %d head %d: selection differs from the true top-k (%d vs %d tokens)", page,
                       pos, h, ns, nw);
            } else {
                for (int i = 0; i < nw; i++)
                    for (int j = 0; j < ns; j++) good += want[i] == sel[j];
                total += nw;
            }
            /* exact attention over sinks + recent + selected + generated + the new token */
            int nt = 0;
            for (int t = 0; t < S; t++) toks[nt++] = t;
            for (int t = n_prompt - R; t < n_prompt; t++) toks[nt++] = t;
            for (int i = 0; i < ns; i++) toks[nt++] = sel[i];
            for (int t = n_prompt; t <= pos; t++) toks[nt++] = t;
            for (int g = 0; g < 3; g++) {
                ref_attend(&d, pos, h * 3 + g, toks, nt, ref);
                for (int c = 0; c < 16; c++) maxd = fmax(maxd, fabs(ref[c] - out[(h * 3 + g) * 16 + c]));
            }
        }
    }
    CHECKF(maxd < 1e-5, "page %d summary %d softcap %g: attention over the selection differs from the reference by %g", page,
           summary, softcap, maxd);
    if (summary) CHECKF(good >= 0.75 * total, "summary %d bits: recall of the true top-k %d/%d", summary, good, total);
    tl_kv_offload_stats st;
    CHECK(tl_kv_offload_traffic(l, &st) == 0);
    CHECK(st.decode_steps == d.n - n_prompt && st.unpredicted == st.decode_steps);
    tl_kv_destroy(l);
    free(out);
    free_data(&d);
}

static void check_bytes(const char *what, tl_kv_layer *l, const tl_kv_layer_policy *pol, int n_prompt, int n_gen) {
    tl_kv_bytes got, want;
    tl_error err;
    l->ops->bytes(l, &got);
    CHECK(tl_kv_offload_bytes_formula2(pol, &l->shape, n_prompt, n_gen, &want, &err) == 0);
    CHECKF(!memcmp(&got, &want, sizeof got), "%s: bytes (prompt %d, gen %d): codes %llu/%llu other %llu/%llu host %llu/%llu",
           what, n_prompt, n_gen, (unsigned long long)got.codes, (unsigned long long)want.codes,
           (unsigned long long)got.other, (unsigned long long)want.other, (unsigned long long)got.host,
           (unsigned long long)want.host);
}

static void test_accounting(tl_pool *pool) {
    tl_kv_shape sh = {.n_head = 4, .n_head_kv = 2, .head_dim_k = 64, .head_dim_v = 32, .n_ctx = 400, .window = 0, .scale = 0.125f};
    const struct {
        int S, R, topk, C, summary, page, n_prompt;
    } cases[] = {
        {8, 56, 16, 4, 0, 0, 300}, {8, 56, 16, 4, 4, 0, 301}, {8, 56, 16, 4, 2, 0, 37}, {8, 56, 32, 4, 8, 16, 328},
        {8, 56, 32, 4, 0, 16, 320}, {3, 0, 500, 4, 0, 0, 300}, {8, 56, 16, 4, 0, 0, 5}, {0, 5, 7, 64, 4, 0, 100},
    };
    const int chunks[] = {64, 13, 100, 2};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        tl_kv_layer_policy pol = off_policy(cases[ci].S, cases[ci].R, cases[ci].topk, cases[ci].C, cases[ci].summary, cases[ci].page);
        char what[64];
        snprintf(what, sizeof what, "case %zu", ci);
        data d = make_data(sh, cases[ci].n_prompt + 6, 5 + ci);
        tl_error err;
        tl_kv_layer *l = tl_kv_offload_new(&pol, &sh, &err);
        CHECKF(l != NULL, "%s", err.msg);
        if (!l) continue;
        float *out = malloc(sizeof(float) * 128 * 4 * 32);
        const int qd = 4 * 64, kd = 2 * 64, vd = 2 * 32;
        int pos = 0, k = 0;
        check_bytes(what, l, &pol, 0, 0);
        while (pos < cases[ci].n_prompt) {
            const int c = TL_MIN(chunks[k++ % 4], cases[ci].n_prompt - pos);
            if (c < 2) break;
            tl_kv_forward(l, pool, c, d.q + (size_t)pos * qd, d.k + (size_t)pos * kd, d.v + (size_t)pos * vd, out, &err);
            pos += c;
            check_bytes(what, l, &pol, pos, 0);
        }
        const int np = pos;
        for (int g = 0; g < 5; g++, pos++) {
            tl_kv_offload_stats a, b;
            tl_kv_offload_traffic(l, &a);
            tl_kv_forward(l, pool, 1, d.q + (size_t)pos * qd, d.k + (size_t)pos * kd, d.v + (size_t)pos * vd, out, &err);
            tl_kv_offload_traffic(l, &b);
            uint64_t ch;
            const uint64_t want = tl_kv_offload_step_traffic(&pol.off, &sh, np, &ch);
            const uint64_t got = b.h2d_decode - a.h2d_decode;
            if (cases[ci].page == 0 || (np - TL_MIN(cases[ci].S, np) - TL_MIN(cases[ci].R, np)) % cases[ci].page == 0)
                CHECKF(got == want && b.h2d_channels - a.h2d_channels == ch, "%s: step traffic %llu, formula %llu", what,
                       (unsigned long long)got, (unsigned long long)want);
            else
                CHECKF(got <= want, "%s: step traffic %llu above the bound %llu", what, (unsigned long long)got,
                       (unsigned long long)want);
            check_bytes(what, l, &pol, np, g + 1);
        }
        tl_kv_offload_stats st;
        tl_kv_offload_traffic(l, &st);
        CHECK(st.d2h == (uint64_t)np * 2 * (64 + 32) * 2);
        tl_kv_clear(l);
        check_bytes(what, l, &pol, 0, 0);
        tl_kv_destroy(l);
        free(out);
        free_data(&d);
    }
    /* hand-computed: H 2, dk 64, dv 32, S 8, R 56, 300 prompt tokens, topk 16, 4 channels */
    tl_kv_layer_policy pol = off_policy(8, 56, 16, 4, 0, 0);
    tl_kv_bytes b;
    tl_kv_offload_bytes_formula2(&pol, &sh, 300, 3, &b, NULL);
    CHECK(b.codes == 2ull * (8 + 56 + 3) * 96 * 2 && b.other == 2ull * 64 * 4 && b.host == 2ull * 300 * (128 + 32) * 2);
    uint64_t ch;
    CHECK(tl_kv_offload_step_traffic(&pol.off, &sh, 300, &ch) == 2ull * 4 * 236 * 2 + 2ull * 16 * 96 * 2);
    CHECK(ch == 2ull * 4 * 236 * 2);
    pol.off.summary_bits = 4; /* summary: 64 ch x ceil(300*4/8) codes + 2 groups x 300 x 4 bytes, per head */
    tl_kv_offload_bytes_formula2(&pol, &sh, 300, 0, &b, NULL);
    CHECK(b.other == 2ull * 64 * 4 + 2ull * (64 * 150 + 2 * 300 * 4) && b.host == 2ull * 300 * 96 * 2);
    CHECK(tl_kv_offload_step_traffic(&pol.off, &sh, 300, &ch) == 2ull * 16 * 96 * 2 && ch == 0);
}

/* The predicted query picks the channels; without it the real query does. */
static void test_prediction(tl_pool *pool) {
    tl_kv_shape sh = {.n_head = 2, .n_head_kv = 1, .head_dim_k = 8, .head_dim_v = 8, .n_ctx = 100, .window = 0, .scale = 0.3f};
    tl_kv_layer_policy pol = off_policy(1, 1, 1, 1, 0, 0);
    tl_error err;
    tl_kv_layer *l = tl_kv_offload_new(&pol, &sh, &err);
    if (!l) return;
    CHECK(l->ops->wants_query_prediction && l->ops->predicted_query);
    /* 20 prompt tokens: token 5 is large on channel 0, token 9 on channel 1 */
    float k[20 * 8] = {0}, v[20 * 8] = {0}, q[20 * 16], out[20 * 16];
    for (int t = 0; t < 20; t++) k[t * 8 + 0] = k[t * 8 + 1] = 0.01f;
    k[5 * 8 + 0] = 3.0f;
    k[9 * 8 + 1] = 2.0f;
    memset(q, 0, sizeof q);
    tl_kv_forward(l, pool, 20, q, k, v, out, &err);
    float qreal[16] = {0}, qpred[16] = {0}, kn[8] = {0}, vn[8] = {0};
    qreal[0] = qreal[8] = 1.0f; /* real query: channel 0 */
    qreal[1] = qreal[9] = 1.0f;
    qpred[1] = qpred[9] = 5.0f; /* prediction points at channel 1 */
    l->ops->predicted_query(l, pool, 1, qpred);
    tl_kv_forward(l, pool, 1, qreal, kn, vn, out, &err);
    int sel[4];
    CHECK(tl_kv_offload_last_selection(l, 0, sel, 4) == 1 && sel[0] == 9);
    tl_kv_forward(l, pool, 1, qreal, kn, vn, out, &err); /* no prediction: channel 0 wins (|1|*3 > |1|*2) */
    CHECK(tl_kv_offload_last_selection(l, 0, sel, 4) == 1 && sel[0] == 5);
    tl_kv_offload_stats st;
    tl_kv_offload_traffic(l, &st);
    CHECK(st.decode_steps == 2 && st.unpredicted == 1);
    CHECK(!tl_kv_is_offload(NULL));
    tl_kv_destroy(l);
    /* bad parameters and shapes are refused with a message */
    pol.off.summary_bits = 3;
    CHECK(tl_kv_offload_new(&pol, &sh, &err) == NULL && strstr(err.msg, "summary"));
    pol.off.summary_bits = 0;
    sh.window = 16;
    CHECK(tl_kv_offload_new(&pol, &sh, &err) == NULL && strstr(err.msg, "window"));
}

/* Cut back to a prefix, then continue: same outputs, bytes and selection as a store that only
 * ever saw the prefix (token and summary variants). */
static void test_truncate(int summary, tl_pool *pool) {
    tl_kv_shape sh = {.n_head = 4, .n_head_kv = 2, .head_dim_k = 32, .head_dim_v = 32, .n_ctx = 300, .window = 0, .scale = 0.2f};
    data d = make_data(sh, 300, 31), e = make_data(sh, 300, 32);
    tl_kv_layer_policy pol = off_policy(4, 8, 16, 4, summary, 0);
    tl_error err;
    tl_kv_layer *a = tl_kv_offload_new(&pol, &sh, &err), *b = tl_kv_offload_new(&pol, &sh, &err);
    if (!a || !b) return;
    const int qd = 4 * 32, kd = 2 * 32;
    float *oa = malloc(sizeof(float) * 100 * qd), *ob = malloc(sizeof(float) * 100 * qd);
#define FWD(l, src, pos, n, o) tl_kv_forward(l, pool, n, src.q + (size_t)(pos) * qd, src.k + (size_t)(pos) * kd, src.v + (size_t)(pos) * kd, o, &err)
    /* a: 150 prompt (e's tokens beyond 100) + 3 decode, cut to 100; b: the same first 100 only */
    FWD(a, d, 0, 100, oa);
    FWD(a, e, 100, 50, oa);
    for (int i = 0; i < 3; i++) FWD(a, e, 150 + i, 1, oa);
    CHECK(a->ops->truncate(a, 100, true, &err) == 0 && a->n_tokens == 153);
    CHECK(a->ops->truncate(a, 100, false, &err) == 0 && a->n_tokens == 100);
    CHECK(a->ops->truncate(a, 101, false, &err) != 0);
    FWD(b, d, 0, 60, ob);
    FWD(b, d, 60, 40, ob);
    double maxd = 0;
    int same = 1;
    for (int pos = 100; pos < 160; pos++) {
        const int n = pos < 140 ? 20 : 1;
        if (pos < 140 && pos % 20) continue;
        FWD(a, d, pos, n, oa);
        FWD(b, d, pos, n, ob);
        for (int i = 0; i < n * qd; i++) maxd = fmax(maxd, fabs(oa[i] - ob[i]));
        int sa[16], sb[16];
        for (int h = 0; h < 2 && n == 1; h++) {
            const int na = tl_kv_offload_last_selection(a, h, sa, 16), nb = tl_kv_offload_last_selection(b, h, sb, 16);
            same &= na == nb && !memcmp(sa, sb, sizeof(int) * (size_t)TL_MIN(na, 16));
        }
    }
#undef FWD
    CHECKF(maxd == 0.0 && same, "summary %d: after truncation outputs differ by %g (selection same %d)", summary, maxd, same);
    tl_kv_bytes ba, bb;
    a->ops->bytes(a, &ba);
    b->ops->bytes(b, &bb);
    CHECK(!memcmp(&ba, &bb, sizeof ba));
    free(oa);
    free(ob);
    free_data(&d);
    free_data(&e);
    tl_kv_destroy(a);
    tl_kv_destroy(b);
}

static void test_spec(void) {
    tl_kv_plan plan;
    tl_error err;
    CHECK(tl_tailor_spec("tailor") && tl_tailor_spec("tailor:bits=2") && !tl_tailor_spec("tailorx") && !tl_tailor_spec("k2v2"));
    CHECK(tl_tailor_plan_parse(&plan, "tailor", 4, &err) == 0);
    CHECK(plan.layers[0].kind == TL_KV_QUANT && plan.layers[0].k.bits == 1 && plan.layers[0].v.bits == 1 &&
          plan.layers[0].k.gran == TL_KV_GRAN_CHANNEL && plan.layers[0].v.gran == TL_KV_GRAN_TOKEN &&
          plan.layers[0].k.group == 64 && plan.layers[0].residual == 128);
    CHECK(plan.layers[1].kind == TL_KV_OFFLOAD && plan.layers[1].off.sinks == 8 && plan.layers[1].off.recent == 56 &&
          plan.layers[1].off.topk == 128 && plan.layers[1].off.channels == 8 && plan.layers[1].off.summary_bits == 0);
    tl_kv_plan_free(&plan);
    CHECK(tl_tailor_plan_parse(&plan, "tailor:bits=2,budget=1024,channels=16,dense=0+2-3,summary=4,page=16", 5, &err) == 0);
    CHECK(plan.layers[0].kind == TL_KV_QUANT && plan.layers[0].k.bits == 2 && plan.layers[1].kind == TL_KV_OFFLOAD &&
          plan.layers[2].kind == TL_KV_QUANT && plan.layers[3].kind == TL_KV_QUANT && plan.layers[4].kind == TL_KV_OFFLOAD);
    CHECK(plan.layers[4].off.sinks == 64 && plan.layers[4].off.recent == 64 && plan.layers[4].off.topk == 896 &&
          plan.layers[4].off.channels == 16 && plan.layers[4].off.summary_bits == 4 && plan.layers[4].off.page == 16);
    tl_kv_plan_free(&plan);
    CHECK(tl_tailor_plan_parse(&plan, "tailor:bits=3", 4, &err) && strstr(err.msg, "bits 3"));
    CHECK(tl_tailor_plan_parse(&plan, "tailor:topk", 4, &err) && strstr(err.msg, "topk"));
    CHECK(tl_tailor_plan_parse(&plan, "tailor:foo=1", 4, &err) && strstr(err.msg, "foo"));
    CHECK(tl_tailor_plan_parse(&plan, "tailor:dense=7", 4, &err) && strstr(err.msg, "out of range"));
    CHECK(tl_tailor_plan_parse(&plan, "tailor:plan=/nonexistent/p.json", 4, &err) && strstr(err.msg, "/nonexistent/p.json"));

    /* plan JSON round trip, tau re-decision, window layers */
    const double scores[5] = {0.61, 0.05, 0.3, 0.12, NAN};
    const int kinds[5] = {TL_TAILOR_DENSE, TL_TAILOR_SPARSE, TL_TAILOR_DENSE, TL_TAILOR_SPARSE, TL_TAILOR_WINDOW};
    char *js = tl_tailor_plan_json("m.gguf", 5, scores, kinds, 0.2, 0.05, 32, 4096);
    char path[64];
    snprintf(path, sizeof path, "/tmp/tl_test_plan_%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    fputs(js, f);
    fclose(f);
    int k2[8];
    double s2[8], tau; /* room for the 6-layer mismatch check */
    CHECK(tl_tailor_plan_read(js, "x", 5, k2, s2, &tau, &err) == 0);
    CHECK(!memcmp(k2, kinds, sizeof kinds) && fabs(s2[0] - 0.61) < 1e-9 && isnan(s2[4]) && fabs(tau - 0.2) < 1e-12);
    CHECK(tl_tailor_plan_read(js, "x.json", 6, k2, s2, &tau, &err) && strstr(err.msg, "x.json") && strstr(err.msg, "6"));
    char spec[160];
    snprintf(spec, sizeof spec, "tailor:plan=%s", path);
    CHECK(tl_tailor_plan_parse(&plan, spec, 5, &err) == 0);
    CHECK(plan.layers[0].kind == TL_KV_QUANT && plan.layers[1].kind == TL_KV_OFFLOAD && plan.layers[2].kind == TL_KV_QUANT &&
          plan.layers[3].kind == TL_KV_OFFLOAD && plan.layers[4].kind == TL_KV_F16);
    tl_kv_plan_free(&plan);
    snprintf(spec, sizeof spec, "tailor:plan=%s,tau=0.5", path);
    CHECK(tl_tailor_plan_parse(&plan, spec, 5, &err) == 0);
    CHECK(plan.layers[0].kind == TL_KV_QUANT && plan.layers[2].kind == TL_KV_OFFLOAD && plan.layers[4].kind == TL_KV_F16);
    tl_kv_plan_free(&plan);
    /* a tailor plan given to the generic JSON plan parser fails loudly (its values are not policies) */
    tl_kv_plan p2 = {0};
    CHECK(tl_kv_plan_parse_json(&p2, js, path, 5, &err) != 0);
    tl_kv_plan_free(&p2);
    CHECK(tl_tailor_plan_read("{\"layers\": {\"0\": \"fast\"}}", "y", 1, k2, NULL, NULL, &err) && strstr(err.msg, "fast"));
    CHECK(tl_tailor_plan_read("{\"layers\": {\"0\": \"dense\"}}", "y", 2, k2, NULL, NULL, &err) && strstr(err.msg, "layer 1"));
    unlink(path);
    free(js);
}

/* Whole model, every layer offloaded with topk >= context: same logits as f16, and every layer
 * but the first got its query predicted. */
static void test_model(void) {
    const char *path = tl_test_shared("models/tailor-test-31m.gguf");
    if (!tl_test_have(path)) return;
    tl_error err;
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    const int L = m->cfg.n_layer, V = m->cfg.n_vocab, n = 150;
    tl_kv_layer_policy *pol = calloc((size_t)L, sizeof *pol);
    for (int i = 0; i < L; i++) pol[i] = off_policy(4, 8, 100000, 8, 0, 0);
    tl_session *a = tl_session_new_with_policies(m, 200, 2, 64, pol, &err);
    CHECKF(a != NULL, "%s", err.msg);
    tl_session *b = tl_session_new_with_policies(m, 200, 2, 64, NULL, &err);
    int32_t ids[160];
    uint64_t seed = 3;
    for (int i = 0; i < 160; i++) ids[i] = (int32_t)((frand(&seed) + 1.0f) * 0.5f * (V - 10)) + 2;
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    double maxd = 0;
    if (a && b) {
        CHECKF(tl_session_eval(a, ids, n, la, false, &err) == 0, "%s", err.msg);
        CHECKF(tl_session_eval(b, ids, n, lb, false, &err) == 0, "%s", err.msg);
        for (int t = n; t < 160; t++) {
            for (int i = 0; i < V; i++) maxd = fmax(maxd, fabs(la[i] - lb[i]));
            CHECK(tl_session_eval(a, ids + t, 1, la, false, &err) == 0);
            CHECK(tl_session_eval(b, ids + t, 1, lb, false, &err) == 0);
        }
        printf("whole model, every layer offloaded, topk >= context: max logit difference to f16 %.3g\n", maxd);
        CHECKF(maxd < 2e-3, "whole model, topk >= context: max logit difference %g", maxd);
        for (int i = 0; i < L; i++) {
            tl_kv_offload_stats st;
            CHECK(tl_kv_offload_traffic(a->kv[i], &st) == 0);
            CHECKF(st.decode_steps == 10 && st.unpredicted == (i == 0 ? 10 : 0), "layer %d: %lld steps, %lld unpredicted", i,
                   (long long)st.decode_steps, (long long)st.unpredicted);
        }
        tl_session_mem mem;
        tl_session_memory(a, &mem);
        tl_kv_bytes want;
        tl_kv_offload_bytes_formula2(&pol[0], &a->kv[0]->shape, n, 10, &want, NULL);
        CHECK(mem.kv_parts.host == want.host * (uint64_t)L && mem.kv_parts.codes == want.codes * (uint64_t)L);
    }
    free(la);
    free(lb);
    free(pol);
    tl_session_free(a);
    tl_session_free(b);
    tl_model_free(m);
}

int main(void) {
    tl_pool *pool = tl_pool_new(2);
    const int ch1[] = {100, 37, 63}, ch2[] = {7, 64, 2};
    test_exact(off_policy(4, 8, 1000, 4, 0, 0), ch1, 3, 200, 0, pool);
    test_exact(off_policy(0, 0, 1000, 4, 4, 0), ch2, 3, 180, 0, pool);
    test_exact(off_policy(8, 16, 1000, 32, 8, 16), ch1, 3, 230, 0, pool);
    test_exact(off_policy(4, 8, 1000, 4, 0, 0), ch2, 3, 200, 1.0f, pool); /* gemma2's soft-capped scores */
    test_selection(0, 0, 0, pool);
    test_selection(8, 0, 0, pool);
    test_selection(0, 8, 0, pool);
    test_selection(0, 0, 1.0f, pool);
    test_accounting(pool);
    test_prediction(pool);
    test_truncate(0, pool);
    test_truncate(4, pool);
    test_spec();
    test_model();
    tl_pool_free(pool);
    return tl_test_done();
}
