/* test_plan: the planner (src/engine/plan.h) projects exactly what a CPU session allocates and
 * holds: context and chunk, every activation buffer (the predicted-query buffer of TailorKV
 * included) and the KV bytes of every store kind -- dense f32/f16/bf16, quantized per-token,
 * per-channel, smoothed, rotated, per-tensor, auto:B once resolved, offloaded, and mixed plans --
 * before and after a prompt, at several chunk sizes; on a model with sliding-window layers
 * too, where a quantized or offloaded request becomes a dense window. */
#include "testutil.h"
#include "../src/calibrate.h"
#include "../src/engine/plan.h"
#include "../src/kv/policy.h"
#include "../src/session.h"

#include <stdlib.h>
#include <string.h>

static tl_kv_layer_policy off_policy(int sinks, int recent, int topk, int channels, int summary, int page) {
    tl_kv_layer_policy p;
    memset(&p, 0, sizeof p);
    p.kind = TL_KV_OFFLOAD;
    p.off = (tl_kv_offload_params){sinks, recent, topk, channels, summary, page};
    return p;
}

static void check_parts(const tl_kv_bytes *a, const tl_kv_bytes *b, const char *what) {
    CHECKF(a->codes == b->codes && a->scales == b->scales && a->residual == b->residual && a->other == b->other &&
               a->host == b->host,
           "%s: KV parts differ (codes %llu/%llu, scales %llu/%llu, residual %llu/%llu, other %llu/%llu, host "
           "%llu/%llu)",
           what, (unsigned long long)a->codes, (unsigned long long)b->codes, (unsigned long long)a->scales,
           (unsigned long long)b->scales, (unsigned long long)a->residual, (unsigned long long)b->residual,
           (unsigned long long)a->other, (unsigned long long)b->other, (unsigned long long)a->host,
           (unsigned long long)b->host);
}

/* One plan at one chunk: projection == allocation with nothing held, and after n tokens. */
static void check_plan(tl_model *m, const char *what, const tl_kv_layer_policy *pol, int n_ctx, int chunk,
                       const int32_t *ids, int n) {
    tl_error err = {{0}};
    tl_session *s = tl_session_new_with_policies(m, n_ctx, 2, chunk, pol, &err);
    CHECKF(s != NULL, "%s chunk %d: %s", what, chunk, err.msg);
    if (!s) return;
    /* auto:B layers are resolved by the session's calibration: project the layouts it chose */
    tl_kv_layer_policy *held = malloc(sizeof *held * (size_t)m->cfg.n_layer);
    memcpy(held, pol, sizeof *held * (size_t)m->cfg.n_layer);
    CHECKF(tl_kv_auto_resolve(m, held, NULL, 0, false, 2, NULL, &err) == 0, "%s: %s", what, err.msg);
    const tl_plan_target t = tl_plan_target_model(m);
    tl_mem_plan *p = calloc(1, sizeof *p);
    for (int pass = 0; pass < 2; pass++) {
        const int n_held = pass ? n : 0;
        if (pass) CHECKF(tl_session_eval(s, ids, n, NULL, false, &err) == 0, "%s: %s", what, err.msg);
        CHECKF(tl_plan_memory(&t, n_ctx, chunk, held, n_held, p, &err) == 0, "%s: %s", what, err.msg);
        tl_session_mem sm;
        tl_session_memory(s, &sm);
        CHECKF(p->n_ctx == s->n_ctx && p->chunk == s->chunk, "%s chunk %d: ctx/chunk %d/%d, session %d/%d", what,
               chunk, p->n_ctx, p->chunk, s->n_ctx, s->chunk);
        CHECKF(p->activations == s->act_bytes && p->activations == sm.activations,
               "%s chunk %d: activations %llu, session allocated %llu", what, chunk,
               (unsigned long long)p->activations, (unsigned long long)s->act_bytes);
        CHECKF(p->kv == sm.kv, "%s chunk %d, %d tokens: KV %llu, session %llu", what, chunk, n_held,
               (unsigned long long)p->kv, (unsigned long long)sm.kv);
        check_parts(&p->kv_parts, &sm.kv_parts, what);
        CHECK(p->weights == sm.weights);
        CHECK((p->act.q_pred > 0) == (s->q_pred != NULL));
    }
    free(p);
    free(held);
    tl_session_free(s);
}

/* Every spec at chunks 7, 64 and 0 (512, clamped to the context), then TailorKV plans. */
static void check_model(const char *path, const char *const *specs, int n_specs) {
    if (!tl_test_have(path)) return;
    tl_error err = {{0}};
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    const int L = m->cfg.n_layer, n = 150, n_ctx = 160;
    int32_t *ids = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) ids[i] = (i * 37 + 11) % m->cfg.n_vocab;
    const int chunks[] = {7, 64, 0};
    tl_kv_layer_policy *pol = malloc(sizeof *pol * (size_t)L);
    for (int k = 0; k < n_specs; k++) {
        tl_kv_plan plan = {0};
        CHECKF(tl_kv_plan_parse(&plan, specs[k], NULL, L, &err) == 0, "%s: %s", specs[k], err.msg);
        for (size_t c = 0; c < sizeof chunks / sizeof *chunks && plan.layers; c++)
            check_plan(m, specs[k], plan.layers, n_ctx, chunks[c], ids, n);
        tl_kv_plan_free(&plan);
    }
    /* TailorKV: every layer offloaded; and dense quantized layers around offloaded ones */
    for (int i = 0; i < L; i++) pol[i] = off_policy(4, 8, 32, 8, 0, 0);
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) check_plan(m, "offload", pol, n_ctx, chunks[c], ids, n);
    tl_kv_plan kivi = {0};
    CHECK(tl_kv_plan_parse(&kivi, "k2v2:kivi", NULL, L, &err) == 0);
    for (int i = 0; i < L; i++) pol[i] = i % 2 ? off_policy(8, 16, 16, 16, 8, 16) : kivi.layers[i];
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) check_plan(m, "mixed", pol, n_ctx, chunks[c], ids, n);
    tl_kv_plan_free(&kivi);
    /* context 0 = the training context, chunk 0 = 512 */
    const tl_plan_target t = tl_plan_target_model(m);
    tl_mem_plan *p = calloc(1, sizeof *p);
    CHECK(tl_plan_memory(&t, 0, 0, NULL, 0, p, &err) == 0 && p->n_ctx == m->cfg.n_ctx_train &&
          p->chunk == TL_MIN(512, m->cfg.n_ctx_train) && p->act.q_pred == 0);
    free(p);
    free(pol);
    free(ids);
    tl_model_free(m);
}

int main(void) {
    const char *all[] = {"f32", "f16", "bf16", "k8v8", "k4v4:smooth", "k4v4:rot", "k2v2:kivi",
                         "k4v2:kchan:vtok:g64:r32", "k4v4:tensor", "k16v4:r64", "auto:4"};
    check_model(tl_test_shared("models/tailor-test-31m.gguf"), all, 11);
    /* sliding-window layers: a quantized or offloaded request keeps a dense window there */
    const char *some[] = {"f16", "k8v8", "k2v2:kivi"};
    check_model(tl_test_models("gemma-3-270m-q4_k_m.gguf"), some, 3);
    return tl_test_done();
}
