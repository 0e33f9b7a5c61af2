/* test_batch.c: the batched step (src/engine/batch.c) against each sequence run alone.
 *
 * Four sequences under four KV policies (TailorKV with query prediction among them) go through
 * a schedule of steps where prefill chunks of different lengths (below and above the row count
 * where the quantized matmul switches from q8 activations to f32) share steps with decode rows,
 * sequences join late and sit steps out, and one wants every row's logits. A twin session per
 * sequence runs the same tokens through tl_session_eval, and every row's logits are compared.
 *
 * With the scalar kernels (one dot product kernel whatever the row count) the batch must give
 * every logit bit for bit. With the SIMD kernels the row count can pick another kernel, which
 * sums in another order: float weights (one-row dot vs the f32 tile) agree within 1e-4 of the
 * row's largest logit (1e-2 under quantized KV, whose codes can flip at a rounding boundary).
 * Quantized weights below the f32 threshold: q4_0, q4_1, q8_0, q4_K and q6_K run the x16
 * kernels (src/cpu/qpack.h), which give every row the same bits whatever else is in the call, on
 * AVX2 and AVX-512 alike; q5_0/q5_1 the one-row xa kernels on AVX-512 VNNI. So a model whose
 * matrices all have x16 kernels (SmolLM2, Gemma-3) is checked bit for bit on any SIMD CPU, and
 * the others on AVX-512 VNNI; elsewhere (q5 weights on AVX2: their 4-row kernels sum in another
 * order, and every layer's input being rounded to 8 bits turns that into flipped codes) the
 * bound is a KL divergence of 0.05 per row (measured before the kernels were aligned: 0.005
 * to 0.027; without the per-regime matmul calls up to 0.12). Then the refusals. */
#include "../../src/engine/batch.h"
#include "../../src/kv/policy.h"
#include "../../src/kv/tailor_plan.h"
#include "../../src/model/model.h"
#include "../../src/cpu/quants_internal.h"
#include "../../src/engine/sampler.h"
#include "../testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { NSEQ = 4, CTX = 256, CHUNK = 64, STEPS = 9 };

/* rows of each sequence per step (0: not in the step) */
static const int schedule[STEPS][NSEQ] = {
    {40, 5, 0, 0},  /* seq 0 above the f32 threshold, seq 1 below it */
    {1, 33, 1, 0},  /* a decode row beside a 33-row chunk; seq 2 joins with one token */
    {1, 1, 17, 64}, /* seq 3 joins with a full chunk, all rows' logits */
    {1, 1, 1, 1},
    {1, 0, 1, 1},   /* seq 1 sits out */
    {1, 1, 2, 31},
    {32, 1, 1, 1},  /* a second chunk after decoding */
    {1, 1, 1, 1},
    {1, 1, 0, 1},
};

static tl_session *make(tl_model *m, const char *spec) {
    tl_error err = {{0}};
    tl_kv_plan plan = {0};
    CHECKF(tl_kv_plan_parse(&plan, spec, NULL, m->cfg.n_layer, &err) == 0, "%s: %s", spec, err.msg);
    tl_session *s = tl_session_new_with_policies(m, CTX, 2, CHUNK, plan.layers, &err);
    tl_kv_plan_free(&plan);
    CHECKF(s != NULL, "%s: %s", spec, err.msg);
    return s;
}

/* A TailorKV plan with every other layer sparse (offloaded, queries predicted). */
static void write_plan(const tl_model *m, const char *path) {
    const int L = m->cfg.n_layer;
    double scores[TL_MAX_LAYERS];
    int kinds[TL_MAX_LAYERS];
    for (int il = 0; il < L; il++) {
        kinds[il] = m->cfg.layer_swa[il] ? TL_TAILOR_WINDOW : il % 2 ? TL_TAILOR_SPARSE : TL_TAILOR_DENSE;
        scores[il] = il % 2 ? 0.0 : 1.0;
    }
    char *json = tl_tailor_plan_json(m->cfg.arch_name, L, scores, kinds, 0.5, 0.05, 32, CTX);
    FILE *f = fopen(path, "w");
    CHECK(f && fputs(json, f) >= 0);
    if (f) fclose(f);
    free(json);
}

static void check_model(const char *path, bool exact) {
    if (!tl_test_have(path)) return;
    tl_error err = {{0}};
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s: %s", path, err.msg);
    if (!m) return;
    const int V = m->cfg.n_vocab;
    char plan_path[128], tailor[256];
    snprintf(plan_path, sizeof plan_path, "/tmp/tl_test_batch_%ld.json", (long)getpid());
    write_plan(m, plan_path);
    snprintf(tailor, sizeof tailor, "tailor:plan=%s,bits=2,g=32,sinks=4,recent=8,topk=16", plan_path);
    /* the quantized stores need head dimensions in multiples of 32 */
    /* do the weights take the q8 activation path (a quantized type with its integer kernels)? */
    const bool q8 = !exact && tl_matmul_rounded_rows(m->w.layers[0].w_down.type) > 0;
    bool vnni = tlq_get_kernels(TL_TYPE_Q4_1).avx512; /* the AVX-512 VNNI kernels are in use */
    bool all_x16 = m->w.output.pack != NULL; /* every matrix runs the x16 kernels below 32 rows */
    for (int il = 0; il < m->cfg.n_layer; il++) {
        const tl_layer_weights *L = &m->w.layers[il];
        const tl_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int k = 0; k < 7; k++) all_x16 &= mats[k]->pack != NULL;
    }
    vnni |= all_x16;
    const bool quant = m->cfg.head_dim_k % 32 == 0 && m->cfg.head_dim_v % 32 == 0;
    const char *specs[NSEQ] = {"f16", quant ? "k8v8" : "f32", quant ? tailor : "bf16", quant ? "k4v2:kivi:g32:r16" : "f16"};

    tl_session *bs[NSEQ], *alone[NSEQ];
    for (int i = 0; i < NSEQ; i++) bs[i] = make(m, specs[i]), alone[i] = make(m, specs[i]);
    tl_batch *b = tl_batch_new(m, 160, NSEQ, 2, &err);
    CHECKF(b != NULL, "%s", err.msg);
    int32_t *toks = malloc(sizeof(int32_t) * CTX * NSEQ);
    for (int i = 0; i < CTX * NSEQ; i++) toks[i] = (int32_t)((i * 7919u + 13u) % (unsigned)TL_MIN(V, 4000));
    float *got = malloc(sizeof(float) * (size_t)(NSEQ - 1 + CHUNK) * V), *want = malloc(sizeof(float) * (size_t)CHUNK * V);
    double worst[NSEQ] = {0}, worst_kl[NSEQ] = {0};
    int argmax_diff = 0, rows = 0;
    for (int st = 0; st < STEPS && b && bs[0] && bs[1] && bs[2] && bs[3]; st++) {
        tl_batch_seq q[NSEQ];
        int n = 0;
        for (int i = 0; i < NSEQ; i++) {
            if (!schedule[st][i]) continue;
            const bool all = i == 3 && st == 2;
            q[n++] = (tl_batch_seq){.s = bs[i], .tokens = toks + i * CTX + bs[i]->n_past, .n = schedule[st][i],
                                    .logits = got + (size_t)i * V, .all_logits = all};
        }
        const int rc = tl_batch_eval(b, q, n, &err);
        CHECKF(rc == 0, "%s step %d: %s", path, st, err.msg);
        if (rc) break;
        for (int k = 0; k < n; k++) {
            const int i = (int)(q[k].s == bs[0] ? 0 : q[k].s == bs[1] ? 1 : q[k].s == bs[2] ? 2 : 3);
            CHECKF(tl_session_eval(alone[i], q[k].tokens, q[k].n, want, q[k].all_logits, &err) == 0, "%s", err.msg);
            CHECK(bs[i]->n_past == alone[i]->n_past);
            for (int r = 0; r < (q[k].all_logits ? q[k].n : 1); r++) {
                const float *g = q[k].logits + (size_t)r * V, *w = want + (size_t)r * V;
                const double d = tl_test_row_diff(g, w, V);
                worst[i] = fmax(worst[i], d);
                argmax_diff += tl_argmax(g, V) != tl_argmax(w, V);
                rows++;
                const double kl = tl_test_row_kl(g, w, V);
                worst_kl[i] = fmax(worst_kl[i], kl);
                if (exact || (q8 && vnni)) CHECKF(d == 0, "%s step %d seq %d (%s) row %d: logits differ by %.3g of the largest", path, st, i,
                                  specs[i], r, d);
                else if (q8) CHECKF(kl <= 0.05, "%s step %d seq %d (%s) row %d: KL %.3g", path, st, i, specs[i], r, kl);
                else CHECKF(d <= (i == 0 || !quant ? 1e-4 : 1e-2), "%s step %d seq %d (%s) row %d: logits differ by %.3g of the largest",
                            path, st, i, specs[i], r, d);
            }
        }
    }
    if (!q8) CHECKF(argmax_diff == 0, "%s: %d of %d rows with another argmax", path, argmax_diff, rows);
    printf("%s%s (%s): %d rows; largest logit difference (of the row's largest logit):", exact ? "scalar kernels, " : "", path, m->cfg.arch_name, rows);
    for (int i = 0; i < NSEQ; i++) printf(" %s %.2g (KL %.2g)", i == 2 && quant ? "tailor" : specs[i], worst[i], worst_kl[i]);
    printf("\n");

    /* refusals: the same session twice, past the context, past the workspace, bad token */
    int32_t bad = V, one = 1;
    tl_batch_seq twice[2] = {{.s = bs[0], .tokens = &one, .n = 1}, {.s = bs[0], .tokens = &one, .n = 1}};
    CHECK(b && tl_batch_eval(b, twice, 2, &err) != 0 && strstr(err.msg, "same session"));
    tl_batch_seq badtok = {.s = bs[1], .tokens = &bad, .n = 1};
    CHECK(b && tl_batch_eval(b, &badtok, 1, &err) != 0 && strstr(err.msg, "outside the vocabulary"));
    tl_batch_seq big = {.s = bs[1], .tokens = toks, .n = 161};
    CHECK(b && tl_batch_eval(b, &big, 1, &err) != 0 && strstr(err.msg, "workspace holds 160"));
    tl_batch_seq over = {.s = bs[1], .tokens = toks, .n = CTX - bs[1]->n_past + 1};
    CHECK(b && tl_batch_eval(b, &over, 1, &err) != 0 && strstr(err.msg, "context overflow"));

    for (int i = 0; i < NSEQ; i++) tl_session_free(bs[i]), tl_session_free(alone[i]);
    tl_batch_free(b);
    free(toks), free(got), free(want);
    unlink(plan_path);
    tl_model_free(m);
}

int main(void) {
    const char *models[] = {tl_test_models("SmolLM2-135M-Instruct.Q4_1.gguf"), tl_test_models("gemma-3-270m-q4_k_m.gguf"),
                            tl_test_shared("models/tailor-test-31m.gguf"), tl_test_fixture("synth_qwen2.gguf"),
                            tl_test_fixture("synth_qwen3.gguf"), tl_test_fixture("synth_phi3.gguf"),
                            tl_test_fixture("synth_gemma2.gguf")};
    enum { N_MODELS = sizeof models / sizeof *models };
    char *paths[N_MODELS];
    for (int i = 0; i < N_MODELS; i++) paths[i] = strdup(models[i]); /* tl_test_* reuse their buffers */
    for (int i = 0; i < N_MODELS; i++) check_model(paths[i], false);
    /* bit for bit with one kernel for every row count: SmolLM2 (q4_1) and the float models */
    tl_quants_force_scalar(true);
    for (int i = 0; i < N_MODELS; i++)
        if (i != 1) check_model(paths[i], true);
    for (int i = 0; i < N_MODELS; i++) free(paths[i]);
    return tl_test_done();
}
