/* test_truncate.c: cutting a session back to a shared prefix (tl_session_truncate, what the
 * server's prefix reuse does) under each KV policy, against a fresh session.
 *
 * Session A holds a 40-token prompt (pieces of 16, 16 and 8 rows) and 8 decoded tokens. For each
 * cut n, tl_session_truncate_max(A, n) must give the count the policy's rules allow (kv/quant.c:
 * per-token codes anywhere; KIVI-style per-channel keys at whole 32-token blocks below the
 * last one; an f16 residual window that has spilled into codes nowhere but the end; the first
 * chunk's smoothing means or per-tensor ranges nowhere inside it; TailorKV and f16 anywhere).
 * A is cut there and evaluates the rest of a new prompt (the first n tokens, then 8 new ones,
 * every row's logits). Session B evaluates the same new prompt fresh, split at the same count:
 * B holds the kept tokens computed in A's pieces (the prompt's 16 + 16 + 8 rows, one by one after)
 * where it can. Where the cut falls on a boundary of A's pieces (0, 16, 32, 40, 48) the two hold
 * the same rows computed alike, so the logits must be equal bit for bit (every policy, both
 * models: checked). Elsewhere B computed the last kept rows in a shorter piece; a row depends
 * only on the rows at or before it (the piece attends itself causally), so where the matmul
 * gives a row the same bits whatever the row count (quantized weights on AVX-512 VNNI, float
 * weights in the same regime) they still agree exactly (measured: 0 for every policy here); on
 * other CPUs the bound is 1e-2 of the row's largest logit for float weights and a KL divergence
 * of 0.05 per row for quantized ones (test_batch's bound for the q8 path). 17 s on the quiet
 * 2-core machine. */
#include "../../src/kv/policy.h"
#include "../../src/kv/tailor_plan.h"
#include "../../src/model/model.h"
#include "../../src/cpu/quants.h"
#include "../../src/engine/session.h"
#include "../testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { CTX = 128, CHUNK = 16, NP = 40, NDEC = 8, NNEW = 8 };

static tl_session *make(tl_model *m, const char *spec) {
    tl_error err = {{0}};
    tl_kv_plan plan = {0};
    CHECKF(tl_kv_plan_parse(&plan, spec, NULL, m->cfg.n_layer, &err) == 0, "%s: %s", spec, err.msg);
    tl_session *s = tl_session_new_with_policies(m, CTX, 2, CHUNK, plan.layers, &err);
    tl_kv_plan_free(&plan);
    CHECKF(s != NULL, "%s: %s", spec, err.msg);
    return s;
}

typedef struct {
    const char *spec;
    int want[5]; /* truncate_max at the cuts below */
} pol_case;

static const int CUTS[5] = {48, 40, 32, 20, 10};

static void check_policy(tl_model *m, const pol_case *pc, const int32_t *toks) {
    const int V = m->cfg.n_vocab;
    const bool q8 = tl_matmul_rounded_rows(m->w.layers[0].w_down.type) > 0; /* the q8 path below 32 rows */
    tl_error err = {{0}};
    float *la = malloc(sizeof(float) * (size_t)(NP + NNEW) * V), *lb = malloc(sizeof(float) * (size_t)(NP + NNEW) * V);
    double worst = 0, worst_kl = 0;
    for (int c = 0; c < 5; c++) {
        tl_session *a = make(m, pc->spec), *b = make(m, pc->spec);
        if (!a || !b) break;
        /* A: the prompt, then decoded tokens one at a time */
        CHECK(tl_session_eval(a, toks, NP, la, false, &err) == 0);
        for (int i = 0; i < NDEC; i++) CHECK(tl_session_eval(a, toks + NP + i, 1, la, false, &err) == 0);
        const int n = CUTS[c], keep = tl_session_truncate_max(a, n);
        CHECKF(keep == pc->want[c], "%s: truncate_max(%d) = %d, want %d", pc->spec, n, keep, pc->want[c]);
        if (keep < n) /* a count the stores cannot hold exactly is refused, and A is unchanged */
            CHECKF(tl_session_truncate(a, n, &err) != 0 && a->n_past == NP + NDEC, "%s: truncate(%d) accepted", pc->spec, n);
        CHECKF(tl_session_truncate(a, keep, &err) == 0 && a->n_past == keep, "%s: truncate(%d): %s", pc->spec, keep,
               err.msg);
        /* the new prompt: the first n tokens, then NNEW others */
        int32_t prompt[NP + NDEC + NNEW];
        memcpy(prompt, toks, sizeof(int32_t) * (size_t)n);
        for (int i = 0; i < NNEW; i++) prompt[n + i] = toks[CTX + i];
        const int total = n + NNEW, rest = total - keep;
        CHECK(tl_session_eval(a, prompt + keep, rest, la, true, &err) == 0);
        /* B holds the kept tokens computed in A's pieces: the prompt's (16 + 16 + 8 rows), then one by one */
        if (keep) CHECK(tl_session_eval(b, prompt, TL_MIN(keep, NP), lb, false, &err) == 0);
        for (int i = NP; i < keep; i++) CHECK(tl_session_eval(b, prompt + i, 1, lb, false, &err) == 0);
        CHECK(tl_session_eval(b, prompt + keep, rest, lb, true, &err) == 0);
        const bool exact = keep % CHUNK == 0 || keep == NP || keep == NP + NDEC;
        for (int r = 0; r < rest; r++) {
            const double d = tl_test_row_diff(la + (size_t)r * V, lb + (size_t)r * V, V);
            const double kl = tl_test_row_kl(la + (size_t)r * V, lb + (size_t)r * V, V);
            worst = fmax(worst, exact ? 0 : d);
            worst_kl = fmax(worst_kl, exact ? 0 : kl);
            if (exact) CHECKF(d == 0, "%s cut %d kept %d row %d: logits differ by %.3g", pc->spec, n, keep, r, d);
            else if (q8) CHECKF(kl <= 0.05, "%s cut %d kept %d row %d: KL %.3g", pc->spec, n, keep, r, kl);
            else CHECKF(d <= 1e-2, "%s cut %d kept %d row %d: logits differ by %.3g", pc->spec, n, keep, r, d);
        }
        tl_session_free(a);
        tl_session_free(b);
    }
    printf("  %-20.20s kept %3d %3d %3d %3d %3d of %d %d %d %d %d; off piece boundaries: largest difference %.2g, KL %.2g\n",
           pc->spec, pc->want[0], pc->want[1], pc->want[2], pc->want[3], pc->want[4], CUTS[0], CUTS[1], CUTS[2], CUTS[3],
           CUTS[4], worst, worst_kl);
    free(la);
    free(lb);
}

/* A TailorKV plan with every other layer sparse (offloaded). */
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

static void check_model(const char *path) {
    if (!tl_test_have(path)) return;
    tl_error err = {{0}};
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s: %s", path, err.msg);
    if (!m) return;
    printf("%s:\n", path);
    int32_t toks[CTX + NNEW];
    for (int i = 0; i < CTX + NNEW; i++) toks[i] = (int32_t)((i * 7919u + 13u) % (unsigned)TL_MIN(m->cfg.n_vocab, 4000));
    char plan_path[128], tailor[256];
    snprintf(plan_path, sizeof plan_path, "/tmp/tl_test_truncate_%ld.json", (long)getpid());
    write_plan(m, plan_path);
    snprintf(tailor, sizeof tailor, "tailor:plan=%s,bits=2,g=32,sinks=4,recent=8,topk=16", plan_path);
    /* 48 tokens held: KIVI-style keys (blocks of 32) have quantized 32; a 16-token f16 window
     * has spilled 32 into codes; the first chunk was 16 tokens */
    const pol_case cases[] = {
        {"f16", {48, 40, 32, 20, 10}},
        {"k8v8", {48, 40, 32, 20, 10}},
        {"k4v4", {48, 40, 32, 20, 10}},
        {"k4v4:kchan:g32", {48, 40, 32, 0, 0}}, /* keys: at or past the quantized 32, or whole blocks */
        {"k4v2:kivi:g32:r16", {48, 0, 0, 0, 0}}, /* values' f16 window has spilled: only the end */
        {"k4v4:r100", {48, 40, 32, 20, 10}},     /* a window that has not spilled yet: anywhere */
        {"k4v4:smooth", {48, 40, 32, 20, 0}},    /* the means of the first 16 tokens */
        {"k4v4:tensor", {48, 40, 32, 20, 0}},    /* the ranges of the first 16 tokens */
        {tailor, {48, 40, 32, 20, 10}},
    };
    const bool quant = m->cfg.head_dim_k % 32 == 0 && m->cfg.head_dim_v % 32 == 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (quant || i == 0) check_policy(m, &cases[i], toks);
    unlink(plan_path);
    tl_model_free(m);
}

int main(void) {
    check_model(tl_test_models("SmolLM2-135M-Instruct.Q4_1.gguf"));
    check_model(tl_test_shared("models/tailor-test-31m.gguf"));
    return tl_test_done();
}
