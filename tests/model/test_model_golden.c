/* End-to-end correctness against the golden outputs in shared/data/golden:
 *  - stories260K (f32): greedy 60 tokens from BOS equal llama2.c's ids exactly; the first
 *    logits after BOS within 1e-4 (the golden prints 5 decimals).
 *  - tailor-test-31m (f16 weights): for each golden prompt the top-5 ids at the recorded
 *    positions (incl. 4096, beyond 4k) match exactly and their logits within 2e-3. Why 2e-3:
 *    the golden is an fp32 numpy forward; we accumulate in a different order and keep K/V
 *    in f32 here, so differences come only from summation order (~1e-5 relative per dot)
 *    compounded over 8 layers; 2e-3 absolute on logits of magnitude ~10 is 2e-4 relative.
 *  - chunked prefill with f32 KV gives the same logits for chunk sizes 1, 7, 64 and whole. */
/* TL_TEST_LABEL_SLOW */
#include "../testutil.h"
#include "../../src/engine/session.h"
#include "../../src/engine/sampler.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static tl_session *new_session(tl_model *m, int n_ctx, int chunk, tl_kv_kind kind) {
    tl_error err;
    tl_kv_layer_policy *p = calloc((size_t)m->cfg.n_layer, sizeof *p);
    for (int i = 0; i < m->cfg.n_layer; i++) p[i].kind = kind;
    tl_session *s = tl_session_new_with_policies(m, n_ctx, 2, chunk, p, &err);
    free(p);
    if (!s) fprintf(stderr, "session: %s\n", err.msg);
    return s;
}

static void test_stories(void) {
    const char *path = tl_test_shared("models/stories260K.gguf");
    if (!tl_test_have(path)) return;
    tl_error err;
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    const int expect[60] = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
                            410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352,
                            266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415};
    const float first_logits[5] = {-6.22291f, 8.40434f, -6.22374f, -6.22254f, -6.22195f};
    tl_session *s = new_session(m, 512, 64, TL_KV_F32);
    float *logits = malloc(sizeof(float) * m->cfg.n_vocab);
    int32_t tok = 1; /* BOS */
    CHECK(tl_tok_bos(m->tok) == 1);
    int ok = 1;
    for (int i = 0; i < 60; i++) {
        CHECK(tl_session_eval(s, &tok, 1, logits, false, &err) == 0);
        if (i == 0)
            for (int j = 0; j < 5; j++) CHECKF(fabsf(logits[j] - first_logits[j]) < 1e-4f, "logit %d: %f vs %f", j, logits[j], first_logits[j]);
        tok = tl_argmax(logits, m->cfg.n_vocab);
        if (tok != expect[i]) ok = 0;
    }
    CHECKF(ok, "stories260K greedy continuation differs from the golden ids");
    /* the text: decode the ids */
    int32_t ids[60];
    for (int i = 0; i < 60; i++) ids[i] = expect[i];
    char *text = tl_detokenize(m->tok, ids, 60, false);
    const char *want = " Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
                       "One day, she saw a big, red ball. She wanted to play with it, but it was too high";
    /* detokenize strips the leading space of the first piece (llama.cpp); compare the rest */
    CHECKF(text && strstr(want, text[0] == ' ' ? text + 1 : text) != NULL, "text: '%s'", text ? text : "(null)");
    free(text);
    free(logits);
    tl_session_free(s);
    tl_model_free(m);
}

/* Values stored either as JSON arrays or as strings holding JSON. */
static cJSON *json_field(cJSON *obj, const char *key, cJSON **to_free) {
    cJSON *v = cJSON_GetObjectItem(obj, key);
    *to_free = NULL;
    if (cJSON_IsString(v)) {
        *to_free = cJSON_Parse(v->valuestring);
        return *to_free;
    }
    return v;
}

static void test_31m_golden(void) {
    const char *path = tl_test_shared("models/tailor-test-31m.gguf");
    const char *gpath = tl_test_shared("data/golden/tailor-test-31m.json");
    if (!tl_test_have(path) || !tl_test_have(gpath)) return;
    char *json = tl_test_read_file(gpath, NULL);
    cJSON *root = cJSON_Parse(json);
    CHECK(cJSON_IsArray(root));
    tl_error err;
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m || !root) return;
    const int V = m->cfg.n_vocab;
    int n_positions = 0;
    cJSON *cs;
    cJSON_ArrayForEach(cs, root) {
        cJSON *f1, *f2;
        cJSON *ids = json_field(cs, "ids", &f1);
        cJSON *lg = json_field(cs, "logits", &f2);
        const int n = cJSON_GetArraySize(ids);
        int32_t *tok = malloc(sizeof(int32_t) * n);
        for (int i = 0; i < n; i++) tok[i] = cJSON_GetArrayItem(ids, i)->valueint;
        /* the prompt text, when given, must tokenize to these ids */
        cJSON *prompt = cJSON_GetObjectItem(cs, "prompt");
        if (cJSON_IsString(prompt)) {
            int32_t got[256];
            size_t ng = 0;
            CHECK(tl_tokenize(m->tok, prompt->valuestring, strlen(prompt->valuestring), true, false, got, 256, &ng, &err) == 0);
            CHECKF((int)ng == n && !memcmp(got, tok, sizeof(int32_t) * n), "tokenization of '%s'", prompt->valuestring);
        }
        tl_session *s = new_session(m, n + 1, 512, TL_KV_F32);
        float *logits = malloc(sizeof(float) * (size_t)n * V);
        CHECK(tl_session_eval(s, tok, n, logits, true, &err) == 0);
        cJSON *pe;
        cJSON_ArrayForEach(pe, lg) {
            const int pos = cJSON_GetObjectItem(pe, "pos")->valueint;
            cJSON *top = cJSON_GetObjectItem(pe, "top5");
            const float *row = logits + (size_t)pos * V;
            float max_diff = 0;
            int ids_ok = 1;
            /* our top-5 by value */
            int best[5];
            for (int k = 0; k < 5; k++) {
                int b = -1;
                for (int i = 0; i < V; i++) {
                    int used = 0;
                    for (int q = 0; q < k; q++) used |= best[q] == i;
                    if (!used && (b < 0 || row[i] > row[b])) b = i;
                }
                best[k] = b;
            }
            for (int k = 0; k < 5; k++) {
                cJSON *pair = cJSON_GetArrayItem(top, k);
                const int id = cJSON_GetArrayItem(pair, 0)->valueint;
                const float want = (float)cJSON_GetArrayItem(pair, 1)->valuedouble;
                if (id != best[k]) ids_ok = 0;
                max_diff = fmaxf(max_diff, fabsf(row[id] - want));
            }
            CHECKF(ids_ok, "pos %d: top-5 ids differ", pos);
            CHECKF(max_diff < 2e-3f, "pos %d: max logit diff %g", pos, max_diff);
            n_positions++;
        }
        free(logits);
        tl_session_free(s);
        free(tok);
        cJSON_Delete(f1);
        cJSON_Delete(f2);
    }
    CHECK(n_positions >= 9);
    cJSON_Delete(root);
    free(json);
    tl_model_free(m);
}

static void test_chunk_invariance(void) {
    const char *path = tl_test_shared("models/tailor-test-31m.gguf");
    if (!tl_test_have(path)) return;
    tl_error err;
    tl_model *m = tl_model_load(path, &err);
    if (!m) return;
    const int n = 150, V = m->cfg.n_vocab;
    int32_t tok[150];
    for (int i = 0; i < n; i++) tok[i] = (i * 7919 + 13) % V;
    float *ref = malloc(sizeof(float) * (size_t)n * V), *got = malloc(sizeof(float) * (size_t)n * V);
    const int chunks[] = {150, 1, 7, 64};
    for (int c = 0; c < 4; c++) {
        tl_session *s = new_session(m, n, chunks[c], TL_KV_F32);
        CHECK(tl_session_eval(s, tok, n, c == 0 ? ref : got, true, &err) == 0);
        if (c > 0) {
            float md = 0;
            for (size_t i = 0; i < (size_t)n * V; i++) md = fmaxf(md, fabsf(ref[i] - got[i]));
            CHECKF(md < 1e-3f, "chunk %d vs whole: max logit diff %g", chunks[c], md);
        }
        tl_session_free(s);
    }
    free(ref);
    free(got);
    tl_model_free(m);
}

int main(void) {
    test_stories();
    test_31m_golden();
    test_chunk_invariance();
    return tl_test_done();
}
