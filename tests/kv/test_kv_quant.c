/* test_kv_quant.c: the quantized KV store and its kernels.
 *
 * Thresholds (relative RMSE = rms(x^ - x) / rms(x); dot error = rms(q.x^ - q.x) / (|q| rms|x|)):
 * base, asymmetric RTN, per-token groups of 32, Gaussian data (measured 0.0046, 0.087, 0.40, 1.40):
 *   bits    8      4      2      1
 *   rmse    0.006  0.11   0.50   1.75      dot error: 1.1x the same
 * times a layout factor (bigger groups, per-block, per-tensor: see bits_threshold), x1.8 for
 * symmetric absmax, and an outlier factor on outlier-heavy data (1.5 per-token/per-channel g32
 * .. 16 per-tensor, which outliers ruin by design).
 * Store attention vs f32 attention over the ORIGINAL K/V, relative RMSE of the outputs over a
 * 300-token sequence (chunked prefill then decode), ~1.3x measured: k8v8 0.006, k4v4 0.085,
 * k2v2 0.45, k2v2:kivi 0.24 (see test_attention for all); vs f32 attention over the store's
 * own dequantized history: 2e-4 max abs (fp rounding only; measured < 1e-6).
 * Scalar vs AVX2 kernels: scores 2e-5 relative to |q||x|; accumulation 1e-4 relative RMSE. */
#include "../../src/kv/policy.h"
#include "../../src/kv/quant_kernels.h"
#include "../../src/cpu/quants.h"
#include "../../src/base/threads.h"
#include "../testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    uint64_t s;
} rng;
static double urand(rng *r) {
    r->s = r->s * 6364136223846793005ULL + 1442695040888963407ULL;
    return ((r->s >> 11) + 0.5) / 9007199254740992.0;
}
static float nrand(rng *r) { return (float)(sqrt(-2 * log(urand(r))) * cos(6.283185307179586 * urand(r))); }

/* Gaussian data, or outlier-heavy: a few channels with large offset and scale (keys' channel
 * outliers) plus rare big spikes. */
static void fill(rng *r, float *x, int n, int d, bool outliers) {
    for (int t = 0; t < n; t++)
        for (int c = 0; c < d; c++) {
            float v = nrand(r);
            if (outliers) {
                if (c % 37 == 5) v = 8.0f + 6.0f * v;
                if (urand(r) < 0.005) v *= 20.0f;
            }
            x[(size_t)t * d + c] = v;
        }
}

/* ---- independent layout implementation (from the quant_kernels.h description) ---- */
static int t_code(const uint8_t *u, int bits, int i) {
    if (bits == 8) return u[i];
    if (bits == 4) return i < 16 ? u[i] & 15 : u[i - 16] >> 4;
    if (bits == 2) return (u[i % 8] >> (2 * (i / 8))) & 3;
    return (u[i / 8] >> (i % 8)) & 1;
}

static float t_deq(const uint16_t *par, int code, int bits, bool sym) {
    const float s = tl_fp16_to_fp32(par[0]);
    if (sym) return (float)(code - (1 << (bits - 1))) * s;
    return (float)code * s + tl_fp16_to_fp32(par[1]);
}

typedef struct {
    kvq_run r;
    uint8_t *codes;
    uint16_t *params;
    float *deq; /* [n][d] */
} packed;

/* Quantize x[n][d] into a TOK run (g channels per group; tensor: one range for all). */
static void pack_tok(packed *p, const float *x, int n, int d, int g, int bits, bool sym, bool tensor) {
    const int ub = 4 * bits, ppg = sym ? 1 : 2;
    p->codes = malloc((size_t)n * d * bits / 8);
    p->params = malloc(sizeof(uint16_t) * ((size_t)n * d / g * ppg + 2));
    p->deq = malloc(sizeof(float) * n * d);
    if (tensor) {
        g = d;
        float mn = x[0], mx = x[0];
        for (int i = 0; i < n * d; i++) mn = fminf(mn, x[i]), mx = fmaxf(mx, x[i]);
        kvq_params_range(mn, mx, bits, sym, p->params);
    }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < d / g; j++) {
            uint16_t *par = tensor ? p->params : p->params + ((size_t)t * (d / g) + j) * ppg;
            if (!tensor) kvq_params(x + (size_t)t * d + j * g, g, 1, bits, sym, par);
            float s, z;
            kvq_decode_params(par, bits, sym, &s, &z);
            for (int u = 0; u < g / 32; u++) {
                uint8_t c[32];
                for (int i = 0; i < 32; i++) c[i] = (uint8_t)kvq_encode(x[(size_t)t * d + j * g + u * 32 + i], s, z, bits);
                uint8_t *dst = p->codes + (size_t)t * d * bits / 8 + (size_t)(j * g / 32 + u) * ub;
                kvq_pack32(c, bits, dst);
                for (int i = 0; i < 32; i++) p->deq[(size_t)t * d + j * g + u * 32 + i] = t_deq(par, t_code(dst, bits, i), bits, sym);
            }
        }
    kvq_run r = {p->codes, p->params, n, d, g, 0, tensor ? 0 : d / g * ppg, bits, sym};
    p->r = r;
}

/* Quantize x[n][d] (n a multiple of g) into a CH run: groups of g tokens, ce channels per set. */
static void pack_ch(packed *p, const float *x, int n, int d, int g, int ce, int bits, bool sym) {
    const int ub = 4 * bits, ppg = sym ? 1 : 2;
    p->codes = malloc((size_t)n * d * bits / 8);
    p->params = malloc(sizeof(uint16_t) * ((size_t)n / g * d / ce * ppg));
    p->deq = malloc(sizeof(float) * n * d);
    for (int tg = 0; tg < n / g; tg++) {
        for (int j = 0; j < d / ce; j++) {
            float mn = INFINITY, mx = -INFINITY;
            for (int t = 0; t < g; t++)
                for (int c = j * ce; c < (j + 1) * ce; c++) {
                    const float v = x[(size_t)(tg * g + t) * d + c];
                    mn = fminf(mn, v), mx = fmaxf(mx, v);
                }
            kvq_params_range(mn, mx, bits, sym, p->params + ((size_t)tg * (d / ce) + j) * ppg);
        }
        for (int c = 0; c < d; c++) {
            const uint16_t *par = p->params + ((size_t)tg * (d / ce) + c / ce) * ppg;
            float s, z;
            kvq_decode_params(par, bits, sym, &s, &z);
            for (int u = 0; u < g / 32; u++) {
                uint8_t cc[32];
                for (int i = 0; i < 32; i++) cc[i] = (uint8_t)kvq_encode(x[(size_t)(tg * g + u * 32 + i) * d + c], s, z, bits);
                uint8_t *dst = p->codes + ((size_t)tg * d * (g / 32) + (size_t)c * (g / 32) + u) * ub;
                kvq_pack32(cc, bits, dst);
                for (int i = 0; i < 32; i++) p->deq[(size_t)(tg * g + u * 32 + i) * d + c] = t_deq(par, t_code(dst, bits, i), bits, sym);
            }
        }
    }
    kvq_run r = {p->codes, p->params, n, d, g, ce, 0, bits, sym};
    p->r = r;
}

static void packed_free(packed *p) {
    free(p->codes);
    free(p->params);
    free(p->deq);
}

static double rel_rmse(const float *a, const float *b, size_t n) {
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) e += (a[i] - b[i]) * (double)(a[i] - b[i]), s += (double)b[i] * b[i];
    return sqrt(e / (s + 1e-30));
}

/* Layouts of test_kernels: 0 tok g32, 1 tok g64, 2 tok g128, 3 tok whole head, 4 per-tensor,
 * 5 chan g32, 6 chan g64, 7 block g32, 8 chan g128. Threshold = base[bits] x layout factor
 * (x 1.8 symmetric) (x outlier factor on outlier-heavy data). Bases are ~1.25x the measured
 * Gaussian per-token g32 values (0.0046, 0.087, 0.40, 1.40). */
static double bits_threshold(int bits, bool sym, bool outliers, int lay) {
    static const double lay_f[9] = {1.0, 1.15, 1.35, 1.35, 2.3, 1.0, 1.15, 1.75, 1.35};
    static const double out_f[9] = {1.5, 2.0, 2.2, 2.3, 16.0, 1.5, 2.1, 5.2, 2.4};
    double t = bits == 8 ? 0.006 : bits == 4 ? 0.11 : bits == 2 ? 0.50 : 1.75;
    t *= lay_f[lay];
    if (sym) t *= 1.8;
    if (outliers) t *= out_f[lay];
    return t;
}

/* Round trip, fused kernels vs dequantize-then-dot, scalar vs AVX2, dot error vs original. */
static void test_kernels(void) {
    /* the exact SIMD kernels (float queries); the AVX-512 integer-query ones: test_int_scores */
    const kvq_kernels *ref = kvq_kernels_ref(), *best = kvq_kernels_avx2();
    printf("kernels: %s vs %s\n", ref->name, best->name);
    const int d = 128, n = 128, nq_max = 5;
    rng r = {42};
    float *x = malloc(sizeof(float) * n * d), *q = malloc(sizeof(float) * nq_max * d);
    float *s_ref = malloc(sizeof(float) * nq_max * n), *s_best = malloc(sizeof(float) * nq_max * n), *s_deq = malloc(sizeof(float) * nq_max * n);
    float *p = malloc(sizeof(float) * nq_max * n), *a_ref = calloc((size_t)nq_max * d, sizeof(float)),
          *a_best = calloc((size_t)nq_max * d, sizeof(float)), *a_deq = calloc((size_t)nq_max * d, sizeof(float));
    const int bitsv[4] = {8, 4, 2, 1};
    /* layouts: 0 tok g32, 1 tok g64, 2 tok g128, 3 tok head, 4 tensor, 5 chan g32, 6 chan g64, 7 block g32, 8 chan g128 */
    for (int outl = 0; outl < 2; outl++)
        for (int bi = 0; bi < 4; bi++)
            for (int sym = 0; sym < 2; sym++)
                for (int lay = 0; lay < 9; lay++) {
                    const int bits = bitsv[bi];
                    /* 1..4 queries take the AVX2 decode (register-fused) kernels, 5 the tiled ones */
                    const int nq = 1 + (lay + bi + sym + outl) % nq_max;
                    if (sym && bits == 1) continue;
                    fill(&r, x, n, d, outl);
                    for (int i = 0; i < nq * d; i++) q[i] = nrand(&r);
                    for (int i = 0; i < nq * n; i++) p[i] = (float)urand(&r);
                    packed pk;
                    const bool ch = lay >= 5;
                    if (!ch) pack_tok(&pk, x, n, d, lay == 0 ? 32 : lay == 1 ? 64 : lay == 2 ? 128 : d, bits, sym, lay == 4);
                    else pack_ch(&pk, x, n, d, lay == 6 ? 64 : lay == 8 ? 128 : 32, lay == 7 ? 32 : 1, bits, sym);
                    char what[96];
                    snprintf(what, sizeof what, "%s b%d %s layout %d", outl ? "outliers" : "gauss", bits, sym ? "sym" : "asym", lay);
                    /* round trip: per-token layouts on outlier data suffer (outlier channels share
                     * groups); per-tensor even more: only check what the format is meant for */
                    const double rm = rel_rmse(pk.deq, x, (size_t)n * d);
                    const double thr = bits_threshold(bits, sym, outl, lay);
                    CHECKF(rm < thr, "%s: round-trip rel rmse %.4f > %.4f", what, rm, thr);
                    /* fused scores and accumulation */
                    if (ch) {
                        ref->ch_scores(&pk.r, q, nq, d, s_ref, n);
                        best->ch_scores(&pk.r, q, nq, d, s_best, n);
                    } else {
                        ref->tok_scores(&pk.r, q, nq, d, s_ref, n);
                        best->tok_scores(&pk.r, q, nq, d, s_best, n);
                    }
                    ref->f32_scores(pk.deq, d, n, d, q, nq, d, s_deq, n);
                    double e_fused = 0, e_simd = 0, e_dot = 0, e_dot_n = 0;
                    for (int i = 0; i < nq; i++)
                        for (int t = 0; t < n; t++) {
                            double qn = 0, xn = 0, exact = 0;
                            for (int c = 0; c < d; c++)
                                qn += q[i * d + c] * (double)q[i * d + c], xn += x[t * d + c] * (double)x[t * d + c],
                                    exact += q[i * d + c] * (double)x[t * d + c];
                            const double norm = sqrt(qn * xn) + 1e-9;
                            e_fused = fmax(e_fused, fabs(s_ref[i * n + t] - s_deq[i * n + t]) / norm);
                            e_simd = fmax(e_simd, fabs(s_ref[i * n + t] - s_best[i * n + t]) / norm);
                            e_dot += (s_ref[i * n + t] - exact) * (s_ref[i * n + t] - exact);
                            e_dot_n += norm * norm / d;
                        }
                    const double dot_err = sqrt(e_dot / e_dot_n);
                    CHECKF(e_fused < 1e-5, "%s: fused scores vs dequantize-then-dot %.2e", what, e_fused);
                    CHECKF(e_simd < 2e-5, "%s: scalar vs %s scores %.2e", what, best->name, e_simd);
                    CHECKF(dot_err < 1.1 * thr, "%s: dot error %.4f > %.4f", what, dot_err, 1.1 * thr);
                    memset(a_ref, 0, sizeof(float) * nq * d);
                    memset(a_best, 0, sizeof(float) * nq * d);
                    memset(a_deq, 0, sizeof(float) * nq * d);
                    if (ch) {
                        ref->ch_accum(&pk.r, p, nq, n, a_ref, d);
                        best->ch_accum(&pk.r, p, nq, n, a_best, d);
                    } else {
                        ref->tok_accum(&pk.r, p, nq, n, a_ref, d);
                        best->tok_accum(&pk.r, p, nq, n, a_best, d);
                    }
                    ref->f32_accum(pk.deq, d, n, d, p, nq, n, a_deq, d);
                    CHECKF(rel_rmse(a_ref, a_deq, (size_t)nq * d) < 1e-5, "%s: fused accum vs dequantized %.2e", what,
                           rel_rmse(a_ref, a_deq, (size_t)nq * d));
                    /* 1e-4: the fused decode kernel sums p*s*code and p*z separately, and for
                     * symmetric codes (z = -2^(b-1) s) these partly cancel */
                    CHECKF(rel_rmse(a_best, a_ref, (size_t)nq * d) < 1e-4, "%s: scalar vs simd accum %.2e", what,
                           rel_rmse(a_best, a_ref, (size_t)nq * d));
                    if (getenv("TL_VERBOSE")) printf("%-40s rmse %.4f dot %.4f\n", what, rm, dot_err);
                    packed_free(&pk);
                }
    /* f16 / f32 dense kernels: odd lengths (tails) */
    {
        const int nn = 13, nq = 3;
        uint16_t *h = malloc(sizeof(uint16_t) * nn * d);
        float *hf = malloc(sizeof(float) * nn * d);
        for (int i = 0; i < nn * d; i++) h[i] = tl_fp32_to_fp16(nrand(&r)), hf[i] = tl_fp16_to_fp32(h[i]);
        ref->f16_scores(h, nn, d, q, nq, d, s_ref, n);
        best->f16_scores(h, nn, d, q, nq, d, s_best, n);
        best->f32_scores(hf, d, nn, d, q, nq, d, s_deq, n);
        double e1 = 0, e2 = 0;
        for (int i = 0; i < nq; i++)
            for (int t = 0; t < nn; t++)
                e1 = fmax(e1, fabs(s_ref[i * n + t] - s_best[i * n + t])), e2 = fmax(e2, fabs(s_ref[i * n + t] - s_deq[i * n + t]));
        CHECKF(e1 < 1e-4 && e2 < 1e-4, "f16 scores scalar vs simd %.2e, vs f32 %.2e", e1, e2);
        memset(a_ref, 0, sizeof(float) * nq * d);
        memset(a_best, 0, sizeof(float) * nq * d);
        ref->f16_accum(h, nn, d, p, nq, n, a_ref, d);
        best->f16_accum(h, nn, d, p, nq, n, a_best, d);
        CHECK(rel_rmse(a_best, a_ref, (size_t)nq * d) < 1e-5);
        ref->f16_scores(h, nn, d, q, nq_max, d, s_ref, n);
        best->f16_scores(h, nn, d, q, nq_max, d, s_best, n);
        e1 = 0;
        for (int i = 0; i < nq_max; i++)
            for (int t = 0; t < nn; t++) e1 = fmax(e1, fabs(s_ref[i * n + t] - s_best[i * n + t]));
        CHECKF(e1 < 1e-4, "f16 scores (tiled) scalar vs simd %.2e", e1);
        free(h);
        free(hf);
    }
    free(x), free(q), free(s_ref), free(s_best), free(s_deq), free(p), free(a_ref), free(a_best), free(a_deq);
}

/* ---- store-level tests ---- */

/* Causal attention over full K/V [n][Hkv*d] (f64), for query rows of absolute positions p0..p0+m-1
 * (scores soft-capped when the shape says). */
static void ref_attention(const tl_kv_shape *s, int m, int p0, const float *q, const float *k, const float *v, float *out) {
    const int G = s->n_head / s->n_head_kv, dk = s->head_dim_k, dv = s->head_dim_v, Hkv = s->n_head_kv;
    double *sc = malloc(sizeof(double) * (p0 + m));
    for (int i = 0; i < m; i++)
        for (int hq = 0; hq < s->n_head; hq++) {
            const int h = hq / G, n = p0 + i + 1;
            double mx = -1e300, sum = 0;
            for (int t = 0; t < n; t++) {
                double a = 0;
                for (int c = 0; c < dk; c++) a += (double)q[((size_t)i * s->n_head + hq) * dk + c] * k[((size_t)t * Hkv + h) * dk + c];
                sc[t] = a * s->scale;
                if (s->softcap > 0) sc[t] = s->softcap * tanh(sc[t] / s->softcap);
                mx = fmax(mx, sc[t]);
            }
            for (int t = 0; t < n; t++) sum += (sc[t] = exp(sc[t] - mx));
            for (int c = 0; c < dv; c++) {
                double a = 0;
                for (int t = 0; t < n; t++) a += sc[t] * v[((size_t)t * Hkv + h) * dv + c];
                out[((size_t)i * s->n_head + hq) * dv + c] = (float)(a / sum);
            }
        }
    free(sc);
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double e = 0;
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}

typedef struct {
    tl_kv_shape s;
    int n;
    float *q, *k, *v, *out, *ref;
} seq;

static void seq_init(seq *z, const tl_kv_shape *s, int n, uint64_t seed, bool outliers) {
    z->s = *s;
    z->n = n;
    rng r = {seed};
    z->q = malloc(sizeof(float) * n * s->n_head * s->head_dim_k);
    z->k = malloc(sizeof(float) * n * s->n_head_kv * s->head_dim_k);
    z->v = malloc(sizeof(float) * n * s->n_head_kv * s->head_dim_v);
    z->out = malloc(sizeof(float) * n * s->n_head * s->head_dim_v);
    z->ref = malloc(sizeof(float) * n * s->n_head * s->head_dim_v);
    fill(&r, z->q, n * s->n_head, s->head_dim_k, false);
    fill(&r, z->k, n * s->n_head_kv, s->head_dim_k, outliers);
    fill(&r, z->v, n * s->n_head_kv, s->head_dim_v, false);
    /* keys: a per-channel offset (what smoothing removes) */
    for (int t = 0; t < n; t++)
        for (int i = 0; i < s->n_head_kv * s->head_dim_k; i++) z->k[(size_t)t * s->n_head_kv * s->head_dim_k + i] += 0.5f * (float)((i * 7) % 5 - 2);
}

static void seq_free(seq *z) { free(z->q), free(z->k), free(z->v), free(z->out), free(z->ref); }

/* Feed tokens [a, b) in chunks of `chunk`; outputs into z->out. */
static int feed(tl_kv_layer *l, tl_pool *pool, seq *z, int a, int b, int chunk) {
    const tl_kv_shape *s = &z->s;
    for (int t = a; t < b; t += chunk) {
        const int m = TL_MIN(chunk, b - t);
        tl_error err;
        if (tl_kv_forward(l, pool, m, z->q + (size_t)t * s->n_head * s->head_dim_k, z->k + (size_t)t * s->n_head_kv * s->head_dim_k,
                          z->v + (size_t)t * s->n_head_kv * s->head_dim_v, z->out + (size_t)t * s->n_head * s->head_dim_v, &err)) {
            fprintf(stderr, "forward: %s\n", err.msg);
            return -1;
        }
    }
    return 0;
}

static tl_kv_layer *make(const char *text, const tl_kv_shape *s) {
    tl_kv_layer_policy p;
    tl_error err;
    if (tl_kv_policy_parse(text, &p, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    tl_kv_layer *l = tl_kv_layer_new(&p, s, &err);
    if (!l) fprintf(stderr, "%s: %s\n", text, err.msg);
    return l;
}

/* Attention of the store vs f32 attention over (a) the original K/V, (b) the store's own
 * dequantized history (reconstructed token by token after each chunk). */
/* int8q: the store runs int8-query key kernels; outputs then differ from attention over the
 * dequantized history by the query rounding (softmax of scores off by <= sum qd/2 |x|), so
 * that check gets 2e-2 instead of 2e-4; the check against the original K/V stays. */
static void test_attention(tl_pool *pool, bool int8q) {
    const tl_kv_shape s = {8, 2, 64, 64, 1024, 0, 0.125f, 0};
    const struct {
        const char *pol;
        double tol_orig;
    } cases[] = {
        {"k8v8", 0.006},  {"k4v4", 0.085},           {"k2v2", 0.45},
        {"k4v4:sym", 0.11}, {"k2v2:kivi", 0.24},       {"k4v2:g64:kchan:vtok:r64:smooth", 0.21},
        {"k8v4:kblock:vtensor", 0.1},                  {"k1v2:kivi:rot", 1.15},
        {"k4v4:rot:smooth:r32", 0.07},                 {"k16v4:r16", 0.05},
        {"k4v16:kchan:kg64", 0.06},                    {"k2v2:ghead:tensor", 0.87},
    };
    const int n = 300, chunks[3] = {64, 17, 1};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        seq z;
        seq_init(&z, &s, n, 100 + ci, false);
        tl_kv_layer *l = make(cases[ci].pol, &s);
        CHECKF(l != NULL, "%s", cases[ci].pol);
        if (!l) continue;
        tl_kv_layer_policy pol;
        tl_kv_policy_parse(cases[ci].pol, &pol, NULL);
        const bool transformed = pol.rotate || pol.smooth_k;
        /* prefill in chunks, then decode one token at a time; after each call compare the
         * output against attention over the store's dequantized history (untransformed policies) */
        const int G = s.n_head / s.n_head_kv;
        float *kd = malloc(sizeof(float) * n * s.n_head_kv * s.head_dim_k), *vd = malloc(sizeof(float) * n * s.n_head_kv * s.head_dim_v);
        double err_deq = 0;
        int pos = 0;
        for (int step = 0; pos < n; step++) {
            const int m = TL_MIN(n - pos, pos < 200 ? chunks[step % 3] : 1);
            /* history as held before this call */
            for (int t = 0; t < pos; t++)
                for (int h = 0; h < s.n_head_kv; h++) {
                    kvq_debug_row(l, h, t, false, kd + ((size_t)t * s.n_head_kv + h) * s.head_dim_k);
                    kvq_debug_row(l, h, t, true, vd + ((size_t)t * s.n_head_kv + h) * s.head_dim_v);
                }
            memcpy(kd + (size_t)pos * s.n_head_kv * s.head_dim_k, z.k + (size_t)pos * s.n_head_kv * s.head_dim_k,
                   sizeof(float) * m * s.n_head_kv * s.head_dim_k);
            memcpy(vd + (size_t)pos * s.n_head_kv * s.head_dim_v, z.v + (size_t)pos * s.n_head_kv * s.head_dim_v,
                   sizeof(float) * m * s.n_head_kv * s.head_dim_v);
            if (feed(l, pool, &z, pos, pos + m, m)) break;
            if (!transformed) {
                ref_attention(&s, m, pos, z.q + (size_t)pos * s.n_head * s.head_dim_k, kd, vd, z.ref);
                err_deq = fmax(err_deq, max_abs_diff(z.out + (size_t)pos * s.n_head * s.head_dim_v, z.ref, (size_t)m * s.n_head * s.head_dim_v));
            }
            pos += m;
        }
        (void)G;
        CHECKF(err_deq < (int8q ? 2e-2 : 2e-4), "%s%s: attention vs reference over dequantized history: %.2e", cases[ci].pol,
               int8q ? " (int8 queries)" : "", err_deq);
        ref_attention(&s, n, 0, z.q, z.k, z.v, z.ref);
        const double e = rel_rmse(z.out, z.ref, (size_t)n * s.n_head * s.head_dim_v);
        CHECKF(e < cases[ci].tol_orig, "%s: attention vs f32 reference over original K/V: rel rmse %.3f > %.3f", cases[ci].pol, e,
               cases[ci].tol_orig);
        if (getenv("TL_VERBOSE")) printf("%-34s vs original %.4f, vs dequantized %.2e\n", cases[ci].pol, e, err_deq);
        free(kd), free(vd);
        tl_kv_destroy(l);
        seq_free(&z);
    }
}

/* Soft-capped scores (Gemma 2): the store against the capped f64 reference over the original
 * K/V, prefill in chunks then decode. The cap is not shift-invariant, so smoothed keys (which
 * drop each query's q.mu from its scores) need it added back first: without that, on these
 * keys' channel offsets, k8v8:smooth is off by rel rmse 0.16, k4v4:rot:smooth:r32 by 0.15 and
 * the smoothed KIVI layout by 0.20 (measured); with it 0.0035, 0.037 and 0.13. */
static void test_softcap(tl_pool *pool) {
    const tl_kv_shape s = {4, 2, 64, 64, 512, 0, 0.125f, 1.5f};
    const struct {
        const char *pol;
        double tol;
    } cases[] = {{"k8v8", 0.01},      {"k8v8:smooth", 0.01}, {"k4v4:rot:smooth:r32", 0.06},
                 {"k2v2:kivi", 0.15}, {"k4v2:g64:kchan:vtok:r64:smooth", 0.16}};
    const int n = 300;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        seq z;
        seq_init(&z, &s, n, 500 + ci, false);
        tl_kv_layer *l = make(cases[ci].pol, &s);
        CHECKF(l != NULL, "%s", cases[ci].pol);
        if (!l) continue;
        CHECK(feed(l, pool, &z, 0, 200, 64) == 0 && feed(l, pool, &z, 200, n, 1) == 0);
        ref_attention(&s, n, 0, z.q, z.k, z.v, z.ref);
        const double e = rel_rmse(z.out, z.ref, (size_t)n * s.n_head * s.head_dim_v);
        if (getenv("TL_VERBOSE")) printf("softcap %-32s vs original %.4f\n", cases[ci].pol, e);
        CHECKF(e < cases[ci].tol, "%s, softcap %g: attention vs the capped f32 reference: rel rmse %.3f > %.3f", cases[ci].pol,
               s.softcap, e, cases[ci].tol);
        tl_kv_destroy(l);
        seq_free(&z);
    }
}

/* Same tokens, different chunkings: identical stored history and identical decode outputs;
 * scalar vs AVX2 at store level; with and without a pool (history splits). */
static void test_chunking(tl_pool *pool) {
    const tl_kv_shape s = {4, 2, 64, 32, 2048, 0, 0.125f, 0};
    const char *pols[] = {"k4v4", "k2v2:kivi", "k8v2:kblock:kg64:r40", "k4v4:tensor:smooth:rot", "k1v1:kchan:r0", "k16v2:r7"};
    const int n = 600;
    for (size_t pi = 0; pi < sizeof pols / sizeof pols[0]; pi++) {
        seq a, b;
        seq_init(&a, &s, n, 7, true);
        seq_init(&b, &s, n, 7, true);
        tl_kv_layer *la = make(pols[pi], &s), *lb = make(pols[pi], &s);
        if (!la || !lb) {
            CHECK(0);
            continue;
        }
        /* both: first chunk 64 tokens (same smoothing mean / per-tensor range), then 7s vs one 500 */
        feed(la, pool, &a, 0, 64, 64);
        feed(lb, pool, &b, 0, 64, 64);
        feed(la, pool, &a, 64, 564, 7);
        feed(lb, NULL, &b, 64, 564, 500);
        int same = 1;
        float ra[64], rb[64];
        for (int t = 0; t < 564 && same; t++)
            for (int h = 0; h < s.n_head_kv; h++)
                for (int isv = 0; isv < 2; isv++) {
                    kvq_debug_row(la, h, t, isv, ra);
                    kvq_debug_row(lb, h, t, isv, rb);
                    if (memcmp(ra, rb, sizeof(float) * (isv ? s.head_dim_v : s.head_dim_k))) same = 0;
                }
        CHECKF(same, "%s: stored history depends on chunking", pols[pi]);
        /* decode the rest: store a with pool and best kernels, b without pool and scalar kernels */
        tl_kv_quant_force_scalar(lb, true);
        feed(la, pool, &a, 564, n, 1);
        feed(lb, NULL, &b, 564, n, 1);
        const size_t off = (size_t)564 * s.n_head * s.head_dim_v, cnt = (size_t)(n - 564) * s.n_head * s.head_dim_v;
        const double e = max_abs_diff(a.out + off, b.out + off, cnt);
        double mag = 0;
        for (size_t i = 0; i < cnt; i++) mag = fmax(mag, fabs(b.out[off + i]));
        /* rounding only: other history splits (merge order) and scalar vs SIMD sums; outputs
         * reach ~3.5, measured up to 3e-6 of that */
        CHECKF(e < 1e-5 * fmax(1.0, mag), "%s: decode outputs differ (pool+simd vs serial scalar): %.2e (outputs up to %.2f)",
               pols[pi], e, mag);
        tl_kv_destroy(la);
        tl_kv_destroy(lb);
        seq_free(&a);
        seq_free(&b);
    }
}

/* The last R tokens are kept exactly (f16); per-channel keys flush in blocks. */
static void test_residual(void) {
    const tl_kv_shape s = {2, 1, 32, 32, 512, 0, 0.2f, 0};
    seq z;
    seq_init(&z, &s, 300, 9, false);
    tl_kv_layer *l = make("k2v2:kivi", &s); /* K: flush every 128, V: sliding 128 */
    feed(l, NULL, &z, 0, 300, 13);
    float r[32];
    int exact_v = 1, exact_k = 1, quant_k = 0, quant_v = 0;
    for (int t = 0; t < 300; t++) {
        kvq_debug_row(l, 0, t, true, r);
        bool ex = true;
        for (int c = 0; c < 32; c++) ex &= r[c] == tl_fp16_to_fp32(tl_fp32_to_fp16(z.v[t * 32 + c]));
        if (t >= 300 - 128) exact_v &= ex;
        else quant_v += !ex;
        kvq_debug_row(l, 0, t, false, r);
        ex = true;
        for (int c = 0; c < 32; c++) ex &= r[c] == tl_fp16_to_fp32(tl_fp32_to_fp16(z.k[t * 32 + c]));
        if (t >= 256) exact_k &= ex; /* 300 = 2*128 flushed + 44 in the block */
        else quant_k += !ex;
    }
    CHECK(exact_v && exact_k);
    CHECKF(quant_v == 300 - 128 && quant_k == 256, "quantized tokens: v %d k %d", quant_v, quant_k);
    tl_kv_bytes b;
    l->ops->bytes(l, &b);
    CHECKF(b.residual == (uint64_t)(128 + 44) * 32 * 2, "residual bytes %llu", (unsigned long long)b.residual);
    tl_kv_destroy(l);
    seq_free(&z);
}

/* K-smoothing: with exact (f16 residual) keys it must not change the output beyond rounding;
 * with quantized keys carrying a channel offset, it must help. */
static void test_smoothing(void) {
    const tl_kv_shape s = {4, 2, 64, 64, 512, 0, 0.125f, 0};
    seq z;
    seq_init(&z, &s, 200, 11, false);
    for (int i = 0; i < 200 * 2 * 64; i++) z.k[i] += (i % 64 == 3) ? 12.0f : 0.0f; /* a big channel offset */
    float *o1 = malloc(sizeof(float) * 200 * 4 * 64);
    tl_kv_layer *a = make("k4v4:r512", &s), *b = make("k4v4:r512:smooth", &s);
    feed(a, NULL, &z, 0, 200, 50);
    memcpy(o1, z.out, sizeof(float) * 200 * 4 * 64);
    feed(b, NULL, &z, 0, 200, 50);
    const double e = max_abs_diff(o1, z.out, 200 * 4 * 64);
    CHECKF(e < 2e-3, "smoothing changed attention over exact keys by %.2e", e);
    tl_kv_destroy(a);
    tl_kv_destroy(b);
    /* quantized keys (r0): smoothing reduces the error vs the f32 reference */
    ref_attention(&s, 200, 0, z.q, z.k, z.v, z.ref);
    double errs[2];
    const char *pols[2] = {"k2v8", "k2v8:smooth"};
    for (int i = 0; i < 2; i++) {
        tl_kv_layer *l = make(pols[i], &s);
        feed(l, NULL, &z, 0, 200, 100);
        errs[i] = max_abs_diff(z.out + 100 * 4 * 64, z.ref + 100 * 4 * 64, 100 * 4 * 64);
        tl_kv_destroy(l);
    }
    CHECKF(errs[1] < errs[0], "smoothing did not help 2-bit keys with a channel offset: %.3f vs %.3f", errs[1], errs[0]);
    /* rotation with exact values is a no-op too */
    tl_kv_layer *c = make("k4v4:r512:rot", &s);
    feed(c, NULL, &z, 0, 200, 64);
    const double er = max_abs_diff(o1, z.out, 200 * 4 * 64);
    CHECKF(er < 2e-3, "rotation changed attention over exact K/V by %.2e", er);
    tl_kv_destroy(c);
    free(o1);
    seq_free(&z);
}

/* Measured bytes == formula, for many policies and token counts, whatever the chunking. */
static void test_bytes(void) {
    const tl_kv_shape s = {6, 3, 64, 32, 700, 0, 0.125f, 0};
    const char *pols[] = {"k8v8", "k4v4:kg64", "k2v2:kivi", "k1v2:kchan:vtok:kg64:r100", "k4v2:block:r33", "k2v4:tensor:sym",
                          "k8v4:ghead:r5:smooth", "k16v4:r16", "k4v16:kchan", "k4v4:rot:smooth:kblock", "f16", "f32", "bf16"};
    const int counts[] = {0, 1, 5, 31, 32, 33, 64, 100, 127, 128, 129, 256, 300, 511, 700};
    int ok = 1;
    for (size_t pi = 0; pi < sizeof pols / sizeof pols[0]; pi++) {
        seq z;
        seq_init(&z, &s, 700, 3, false);
        tl_kv_layer *l = make(pols[pi], &s);
        if (!l) {
            CHECK(0);
            continue;
        }
        tl_kv_layer_policy p;
        tl_kv_policy_parse(pols[pi], &p, NULL);
        int pos = 0;
        for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
            if (counts[ci] > pos) feed(l, NULL, &z, pos, counts[ci], 1 + (int)(ci * 7) % 40);
            pos = TL_MAX(pos, counts[ci]);
            tl_kv_bytes m, f;
            tl_error err;
            l->ops->bytes(l, &m);
            const int rc = tl_kv_layer_bytes_formula(&p, &s, pos, &f, &err);
            if (rc || memcmp(&m, &f, sizeof m)) {
                ok = 0;
                fprintf(stderr, "%s at %d: measured %llu/%llu/%llu/%llu formula %llu/%llu/%llu/%llu\n", pols[pi], pos,
                        (unsigned long long)m.codes, (unsigned long long)m.scales, (unsigned long long)m.residual,
                        (unsigned long long)m.other, (unsigned long long)f.codes, (unsigned long long)f.scales,
                        (unsigned long long)f.residual, (unsigned long long)f.other);
            }
        }
        tl_kv_destroy(l);
        seq_free(&z);
    }
    CHECK(ok);
    /* hand-computed: Llama-8B layer, k2v2:kivi at 16384 tokens:
     * K: nq = 16384 (128 | 16384), codes 8*16384*128/4, scales 8*(16384/32)*128*4, residual 0
     * V: nq = 16256, codes 8*16256*128/4, scales 8*16256*4*4, residual 8*128*128*2 */
    tl_kv_layer_policy p;
    tl_kv_policy_parse("k2v2:kivi", &p, NULL);
    const tl_kv_shape ls = {32, 8, 128, 128, 131072, 0, 0.088f, 0};
    tl_kv_bytes f;
    tl_kv_layer_bytes_formula(&p, &ls, 16384, &f, NULL);
    CHECK(f.codes == 8ull * 16384 * 32 + 8ull * 16256 * 32);
    CHECK(f.scales == 8ull * 512 * 128 * 4 + 8ull * 16256 * 4 * 4);
    CHECK(f.residual == 8ull * 128 * 128 * 2 && f.other == 0);
}

static void test_errors(void) {
    tl_kv_layer_policy p;
    tl_error err;
    tl_kv_policy_parse("k4v4", &p, NULL);
    const tl_kv_shape win = {4, 2, 64, 64, 512, 128, 0.1f, 0};
    CHECK(tl_kv_layer_new(&p, &win, &err) == NULL && strstr(err.msg, "sliding-window"));
    const tl_kv_shape odd = {4, 2, 48, 48, 512, 0, 0.1f, 0};
    CHECK(tl_kv_layer_new(&p, &odd, &err) == NULL && strstr(err.msg, "head_dim"));
    tl_kv_policy_parse("k4v4:g128", &p, NULL);
    const tl_kv_shape small = {4, 2, 64, 64, 512, 0, 0.1f, 0};
    CHECK(tl_kv_layer_new(&p, &small, &err) == NULL && strstr(err.msg, "group 128 does not divide head_dim 64"));
    tl_kv_policy_parse("k4v4:rot", &p, NULL);
    const tl_kv_shape np2 = {4, 2, 96, 96, 512, 0, 0.1f, 0};
    CHECK(tl_kv_layer_new(&p, &np2, &err) == NULL && strstr(err.msg, "power-of-two"));
    tl_kv_policy_parse("k4v4", &p, NULL);
    tl_kv_layer *l = tl_kv_layer_new(&p, &(tl_kv_shape){2, 1, 32, 32, 8, 0, 0.1f, 0}, &err);
    float q[10 * 64] = {0}, k[10 * 32] = {0}, o[10 * 64];
    CHECK(l && tl_kv_forward(l, NULL, 10, q, k, k, o, &err) != 0 && strstr(err.msg, "capacity"));
    tl_kv_destroy(l);
}

/* AVX-512 int8-query key scores vs the scalar reference. The query of block b (32 channels) is
 * rounded to q8*qd_b, qd_b = max|q_b|/127, so each |q_c - q8_c*qd_b| <= qd_b/2; the kernel sums
 * q8 * (code - 2^(b-1)) in integers, so the rounding multiplies x - m (m = z + 2^(b-1) s):
 *   |score - ref| <= sum_b qd_b/2 * sum_{c in b} |x(t,c) - m(t,c)|   (+ float rounding).
 * Every bits (1 falls back to AVX2), sym/asym, g32/64/128/head/tensor, d 32..256, nq 1..8, n
 * not a multiple of the batch, Gaussian and outlier data, through both entry points. */
static void test_int_scores(void) {
    const kvq_kernels *ref = kvq_kernels_ref(), *k5 = kvq_kernels_avx512();
    if (!k5) {
        printf("SKIP: int8-query kernels (no AVX-512 VNNI)\n");
        return;
    }
    const int ds[4] = {32, 64, 128, 256}, bitsv[4] = {8, 4, 2, 1}, nmax = 131;
    rng r = {7};
    float *x = malloc(sizeof(float) * nmax * 256), *q = malloc(sizeof(float) * 8 * 256);
    float *s1 = malloc(sizeof(float) * 8 * nmax), *s2 = malloc(sizeof(float) * 8 * nmax), *s3 = malloc(sizeof(float) * 8 * nmax);
    void *qp = tl_amalloc(KVQ_QPREP_BYTES(8));
    int cases = 0;
    double worst = 0;
    for (int outl = 0; outl < 2; outl++)
        for (int di = 0; di < 4; di++)
            for (int bi = 0; bi < 4; bi++)
                for (int sym = 0; sym < 2; sym++)
                    for (int lay = 0; lay < 5; lay++) {
                        const int d = ds[di], bits = bitsv[bi], g = lay == 0 ? 32 : lay == 1 ? 64 : lay == 2 ? 128 : d;
                        if ((sym && bits == 1) || g > d) continue;
                        const int n = (cases % 3 == 0) ? 131 : (cases % 3 == 1) ? 128 : 37, nq = 1 + cases % 8;
                        cases++;
                        fill(&r, x, n, d, outl);
                        for (int i = 0; i < nq * d; i++) q[i] = nrand(&r) * (outl && i % 17 == 0 ? 8.0f : 1.0f);
                        packed pk;
                        pack_tok(&pk, x, n, d, g, bits, sym, lay == 4);
                        ref->tok_scores(&pk.r, q, nq, d, s1, n);
                        k5->tok_scores(&pk.r, q, nq, d, s2, n);
                        const bool prepped = k5->tok_qprep(bits, d, q, nq, d, qp);
                        if (prepped) k5->tok_scores_q(&pk.r, qp, q, nq, d, s3, n);
                        else memcpy(s3, s2, sizeof(float) * nq * n);
                        CHECKF(prepped == (bits != 1 && !(bits == 2 && d == 32)), "d%d b%d: qprep %d", d, bits, prepped);
                        int bad = 0;
                        for (int i = 0; i < nq; i++)
                            for (int t = 0; t < n; t++) {
                                double bound = 0, mag = 0;
                                for (int b = 0; b < d / 32; b++) {
                                    float amax = 0;
                                    double sx = 0;
                                    for (int c = b * 32; c < b * 32 + 32; c++) {
                                        const uint16_t *par = pk.r.params + (size_t)t * pk.r.pstride + c / g * (sym ? 1 : 2);
                                        float sc, zc;
                                        kvq_decode_params(par, bits, sym, &sc, &zc);
                                        const double centre = zc + (1 << (bits - 1)) * sc;
                                        amax = fmaxf(amax, fabsf(q[i * d + c]));
                                        sx += fabs(pk.deq[(size_t)t * d + c] - centre);
                                        mag += fabs(q[i * d + c]) * (fabs(pk.deq[(size_t)t * d + c]) + fabs(centre));
                                    }
                                    bound += amax / 127.0 / 2 * sx;
                                }
                                const double tol = bound + 2e-5 * mag + 1e-6;
                                const double e2 = fabs(s2[i * n + t] - s1[i * n + t]), e3 = fabs(s3[i * n + t] - s1[i * n + t]);
                                worst = fmax(worst, e2 / tol);
                                if (e2 > tol || e3 > tol || s2[i * n + t] != s3[i * n + t]) {
                                    if (!bad && getenv("TL_VERBOSE"))
                                        printf("  q%d t%d: ref %g simd %g prepped %g bound %g\n", i, t, s1[i * n + t], s2[i * n + t],
                                               s3[i * n + t], tol);
                                    bad++;
                                }
                            }
                        CHECKF(bad == 0, "int8-query scores: %s d%d b%d %s g%d%s nq%d n%d: %d scores out of bound",
                               outl ? "outliers" : "gauss", d, bits, sym ? "sym" : "asym", g, lay == 4 ? " tensor" : "", nq, n, bad);
                        packed_free(&pk);
                    }
    printf("int8-query scores: %d cases, worst error / bound %.3f\n", cases, worst);
    free(x), free(q), free(s1), free(s2), free(s3);
    tl_afree(qp);
}

/* AVX-512 int8-weight key scores of the channel layout vs the scalar reference. Per token group
 * and query the weights w_c = q_c s_c are rounded to w8_c * D, D = max_c |w_c| / 127, so each
 * |w_c - w8_c D| <= D/2; the kernel sums w8 * (code - 2^(b-1)) in integers, so
 *   |score - ref| <= D/2 * sum_c |code(t,c) - 2^(b-1)|   (+ float rounding).
 * Per-channel (ce 1) and per-block (ce g) parameters, every bits (1, and 8 bits at g64/g128,
 * 4 bits at g128, fall back to AVX2), sym/asym, g 32/64/128, d 32..256, nq 1..8 (more than one
 * pass of 4 queries), Gaussian and outlier data with outlier queries. */
static void test_int_ch_scores(void) {
    const kvq_kernels *ref = kvq_kernels_ref(), *k5 = kvq_kernels_avx512();
    if (!k5) {
        printf("SKIP: int8-weight channel-layout key kernels (no AVX-512 VNNI)\n");
        return;
    }
    const int ds[4] = {32, 64, 128, 256}, bitsv[4] = {8, 4, 2, 1}, gs[3] = {32, 64, 128}, nmax = 256;
    rng r = {13};
    float *x = malloc(sizeof(float) * nmax * 256), *q = malloc(sizeof(float) * 8 * 256);
    float *s1 = malloc(sizeof(float) * 8 * nmax), *s2 = malloc(sizeof(float) * 8 * nmax);
    int cases = 0;
    double worst = 0;
    for (int outl = 0; outl < 2; outl++)
        for (int di = 0; di < 4; di++)
            for (int bi = 0; bi < 4; bi++)
                for (int sym = 0; sym < 2; sym++)
                    for (int gi = 0; gi < 3; gi++)
                        for (int blk = 0; blk < 2; blk++) {
                            const int d = ds[di], bits = bitsv[bi], g = gs[gi], ce = blk ? g : 1, ppg = sym ? 1 : 2;
                            if ((sym && bits == 1) || (blk && g > d)) continue;
                            const int n = cases % 2 ? 256 : 128, nq = 1 + cases % 8;
                            cases++;
                            fill(&r, x, n, d, outl);
                            for (int i = 0; i < nq * d; i++) q[i] = nrand(&r) * (outl && i % 17 == 0 ? 8.0f : 1.0f);
                            packed pk;
                            pack_ch(&pk, x, n, d, g, ce, bits, sym);
                            ref->ch_scores(&pk.r, q, nq, d, s1, n);
                            k5->ch_scores(&pk.r, q, nq, d, s2, n);
                            int bad = 0;
                            for (int i = 0; i < nq; i++)
                                for (int t = 0; t < n; t++) {
                                    const int tg = t / g;
                                    double wmax = 0, sc = 0, mag = 0;
                                    for (int c = 0; c < d; c++) {
                                        float sv, zv;
                                        kvq_decode_params(pk.r.params + ((size_t)tg * (d / ce) + c / ce) * ppg, bits, sym, &sv, &zv);
                                        const double centre = zv + (1 << (bits - 1)) * (double)sv, xv = pk.deq[(size_t)t * d + c];
                                        wmax = fmax(wmax, fabs(q[i * d + c] * (double)sv));
                                        if (sv > 0) sc += fabs(xv - centre) / sv;
                                        mag += fabs(q[i * d + c]) * (fabs(xv) + fabs(centre));
                                    }
                                    const double tol = wmax / 127 / 2 * sc * 1.001 + 2e-5 * mag + 1e-6;
                                    const double e = fabs(s2[i * n + t] - s1[i * n + t]);
                                    worst = fmax(worst, e / tol);
                                    if (e > tol) {
                                        if (!bad && getenv("TL_VERBOSE"))
                                            printf("  q%d t%d: ref %g simd %g bound %g\n", i, t, s1[i * n + t], s2[i * n + t], tol);
                                        bad++;
                                    }
                                }
                            CHECKF(bad == 0, "int8-weight channel-layout scores: %s d%d b%d %s g%d ce%d nq%d n%d: %d scores out of bound",
                                   outl ? "outliers" : "gauss", d, bits, sym ? "sym" : "asym", g, ce, nq, n, bad);
                            packed_free(&pk);
                        }
    printf("int8-weight channel-layout scores: %d cases, worst error / bound %.3f\n", cases, worst);
    free(x), free(q), free(s1), free(s2);
}

/* AVX-512 int8-weight value accumulation vs the scalar reference. Per block of <= 128 tokens and
 * query k the weights p*s are rounded to w8*D_k, D_k = max_{t,j} p_k(t) s(t,j) / 255, so each
 * |p*s - w8*D_k| <= D_k/2; the kernel sums w8 * (code - 2^(b-1)), so
 *   |acc - ref| <= sum_blocks D_k/2 * sum_{t in block} |code(t,c) - 2^(b-1)|   (+ float rounding).
 * Every bits (1 falls back to AVX2), sym/asym, g32/64/128/head/tensor, d 32..256, nq 1..8, n
 * not a multiple of the 4..16-token iteration nor of the block, Gaussian and outlier data,
 * probabilities with a few large ones (softmax-like). */
static void test_int_accum(void) {
    const kvq_kernels *ref = kvq_kernels_ref(), *k5 = kvq_kernels_avx512();
    if (!k5) {
        printf("SKIP: int8-weight value kernels (no AVX-512 VNNI)\n");
        return;
    }
    const int ds[4] = {32, 64, 128, 256}, bitsv[4] = {8, 4, 2, 1}, nmax = 301;
    rng r = {11};
    float *x = malloc(sizeof(float) * nmax * 256), *p = malloc(sizeof(float) * 8 * nmax);
    float *a1 = malloc(sizeof(float) * 8 * 256), *a2 = malloc(sizeof(float) * 8 * 256);
    int cases = 0;
    double worst = 0;
    for (int outl = 0; outl < 2; outl++)
        for (int di = 0; di < 4; di++)
            for (int bi = 0; bi < 4; bi++)
                for (int sym = 0; sym < 2; sym++)
                    for (int lay = 0; lay < 5; lay++) {
                        const int d = ds[di], bits = bitsv[bi], g = lay == 0 ? 32 : lay == 1 ? 64 : lay == 2 ? 128 : d;
                        if ((sym && bits == 1) || g > d) continue;
                        const int n = (cases % 4 == 0) ? 301 : (cases % 4 == 1) ? 128 : (cases % 4 == 2) ? 37 : 5, nq = 1 + cases % 8;
                        cases++;
                        fill(&r, x, n, d, outl);
                        for (int i = 0; i < nq * n; i++) {
                            const double u = urand(&r);
                            p[i] = (float)(outl && i % 23 == 0 ? 20 * u : u * u * u);
                        }
                        packed pk;
                        pack_tok(&pk, x, n, d, g, bits, sym, lay == 4);
                        for (int i = 0; i < nq * d; i++) a1[i] = a2[i] = (float)nrand(&r);
                        ref->tok_accum(&pk.r, p, nq, n, a1, d);
                        k5->tok_accum(&pk.r, p, nq, n, a2, d);
                        int bad = 0;
                        for (int i = 0; i < nq; i++)
                            for (int c = 0; c < d; c++) {
                                double bound = 0, mag = fabs(a1[i * d + c]);
                                for (int t0 = 0; t0 < n; t0 += 32) {
                                    double mx = 0, sc = 0;
                                    for (int t = t0; t < TL_MIN(n, t0 + 32); t++) {
                                        for (int cc = 0; cc < d; cc += g) {
                                            const uint16_t *par = pk.r.params + (size_t)t * pk.r.pstride + cc / g * (sym ? 1 : 2);
                                            float s, z;
                                            kvq_decode_params(par, bits, sym, &s, &z);
                                            mx = fmax(mx, p[i * n + t] * (double)s);
                                        }
                                        const uint16_t *par = pk.r.params + (size_t)t * pk.r.pstride + c / g * (sym ? 1 : 2);
                                        float s, z;
                                        kvq_decode_params(par, bits, sym, &s, &z);
                                        const double centre = z + (1 << (bits - 1)) * (double)s;
                                        if (s > 0) sc += fabs(pk.deq[(size_t)t * d + c] - centre) / s;
                                        /* float rounding (AVX2 tails and fallbacks sum p*s*code and p*z) */
                                        mag += p[i * n + t] * (fabs(pk.deq[(size_t)t * d + c]) + fabs(centre) + 2 * fabs(z));
                                    }
                                    bound += mx / 255 / 2 * sc;
                                }
                                const double tol = bound * 1.001 + 2e-5 * mag + 1e-6, e = fabs(a2[i * d + c] - a1[i * d + c]);
                                worst = fmax(worst, e / tol);
                                if (e > tol) {
                                    if (!bad && getenv("TL_VERBOSE"))
                                        printf("  d%d b%d sym%d g%d n%d q%d c%d: ref %g simd %g bound %g\n", d, bits, sym, g, n, i, c,
                                               a1[i * d + c], a2[i * d + c], tol);
                                    bad++;
                                }
                            }
                        CHECKF(bad == 0, "int8-weight accum: %s d%d b%d %s g%d%s nq%d n%d: %d sums out of bound",
                               outl ? "outliers" : "gauss", d, bits, sym ? "sym" : "asym", g, lay == 4 ? " tensor" : "", nq, n, bad);
                        packed_free(&pk);
                    }
    printf("int8-weight accum: %d cases, worst error / bound %.3f\n", cases, worst);
    free(x), free(p), free(a1), free(a2);
}

/* The per-token key check (quant.c key_check, the session's outlier warning): Gaussian keys
 * measure a small error for every layout; one channel with a big offset makes per-token keys
 * lose nearly everything while smoothed and per-channel keys stay small; stores that do not
 * qualify (per-channel keys, smoothing, 8 bits, a first chunk under 32 tokens) measure nothing. */
static void test_key_check(void) {
    const tl_kv_shape s = {4, 2, 128, 128, 512, 0, 0.09f, 0};
    tl_kv_key_check kc;
    for (int outlier = 0; outlier < 2; outlier++) {
        seq z;
        seq_init(&z, &s, 96, 5 + outlier, false);
        if (outlier)
            for (int i = 0; i < 96 * 2 * 128; i++) z.k[i] += (i % 128 == 9) ? 80.0f : 0.0f;
        tl_kv_layer *l = make("k4v4", &s);
        CHECK(!tl_kv_quant_key_check(l, &kc)); /* nothing measured before the first chunk */
        feed(l, NULL, &z, 0, 96, 96);
        CHECK(tl_kv_quant_key_check(l, &kc) && kc.bits == 4 && kc.tokens == 96);
        printf("key check %s: tok %.3f smooth %.3f chan %.3f\n", outlier ? "outlier" : "gauss", kc.err_tok,
               kc.err_smooth, kc.err_chan);
        CHECK(kc.err_smooth < 0.15 && kc.err_chan < 0.15);
        if (outlier) CHECK(kc.err_tok > 0.5);
        else CHECK(kc.err_tok < 0.15);
        tl_kv_clear(l);
        CHECK(!tl_kv_quant_key_check(l, &kc));
        tl_kv_destroy(l);
        const char *quiet[] = {"k4v4:kchan", "k4v4:smooth", "k8v8", "k4v4:rot"};
        for (int i = 0; i < 4; i++) {
            l = make(quiet[i], &s);
            feed(l, NULL, &z, 0, 96, 96);
            CHECKF(!tl_kv_quant_key_check(l, &kc), "%s measured", quiet[i]);
            tl_kv_destroy(l);
        }
        l = make("k4v4", &s);
        feed(l, NULL, &z, 0, 96, 16); /* first chunk of 16 tokens: too few */
        CHECK(!tl_kv_quant_key_check(l, &kc));
        tl_kv_destroy(l);
        seq_free(&z);
    }
}

int main(void) {
    tl_pool *pool = tl_pool_new(2);
    test_key_check();
    test_kernels();
    test_int_scores();
    test_int_ch_scores();
    test_int_accum();
    /* store-level tests: exact comparisons with the float-query kernels (AVX2), then the
     * attention accuracy checks again with the best table (int8-query keys on AVX-512) */
    tl_quants_disable_avx512(true);
    test_attention(pool, false);
    test_chunking(pool);
    tl_quants_disable_avx512(false);
    if (kvq_kernels_avx512()) test_attention(pool, true);
    test_residual();
    test_smoothing();
    test_softcap(pool);
    test_bytes();
    test_errors();
    tl_pool_free(pool);
    return tl_test_done();
}
