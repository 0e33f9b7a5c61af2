/* refcheck.c: tailor against a reference fixture (tests/fixtures/ref_*.json): see refcheck.h. */
#include "refcheck.h"
#include "testutil.h"
#include "../src/engine/session.h"
#include "../src/engine/sampler.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static tl_session *f32_session(tl_model *m, int n_ctx, int chunk) {
    tl_error err;
    tl_kv_layer_policy *p = calloc((size_t)m->cfg.n_layer, sizeof *p);
    for (int i = 0; i < m->cfg.n_layer; i++) p[i].kind = TL_KV_F32;
    tl_session *s = tl_session_new_with_policies(m, n_ctx, 2, chunk, p, &err);
    free(p);
    if (!s) fprintf(stderr, "session: %s\n", err.msg);
    return s;
}

/* The case is evaluated in segments of the session's chunk (512 tokens), logits of every row
 * of the segment kept: the same computation as one whole call (the session splits it into the
 * same chunks), without holding n x n_vocab logits (Qwen2.5's 8704 x 151936 would be 5.3 GB).
 * optional: a model CI does not fetch. */
void tl_ref_check_model(const char *fixture, const char *model_path, float tol, float tol_q8, int greedy_min_ok,
                        bool optional, bool q8_skip_pos0) {
    enum { SEG = 512 };
    char *json = tl_test_read_file(tl_test_fixture(fixture), NULL);
    CHECKF(json != NULL, "missing fixture %s", fixture);
    if (!json) return;
    if (!(optional ? tl_test_have_optional(model_path) : tl_test_have(model_path))) {
        free(json);
        return;
    }
    cJSON *root = cJSON_Parse(json);
    tl_error err;
    tl_model *m = tl_model_load(model_path, &err);
    CHECKF(m != NULL, "%s: %s", model_path, err.msg);
    if (!m) {
        cJSON_Delete(root);
        free(json);
        return;
    }
    const int V = m->cfg.n_vocab;
    float *rows = malloc(sizeof(float) * (size_t)SEG * V), *logits = malloc(sizeof(float) * (size_t)V);
    cJSON *cs;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItem(root, "cases")) {
        cJSON *ids = cJSON_GetObjectItem(cs, "ids");
        const int n = cJSON_GetArraySize(ids);
        int32_t *tok = malloc(sizeof(int32_t) * n);
        for (int i = 0; i < n; i++) tok[i] = cJSON_GetArrayItem(ids, i)->valueint;
        /* a case may fix the session's context (phi3: within the original context, short rope factors) */
        cJSON *nc = cJSON_GetObjectItem(cs, "n_ctx");
        tl_session *s = f32_session(m, cJSON_IsNumber(nc) ? nc->valueint : n + 64, SEG);
        /* fewer than 32 tokens per matmul take the integer (q8 activation) path */
        const float tol_case = n < 32 ? tol_q8 : tol;
        /* "logits_full": {"pos": last, "logits": [every logit]} (synthetic fixtures) */
        cJSON *full = cJSON_GetObjectItem(cJSON_GetObjectItem(cs, "logits_full"), "logits");
        for (int start = 0; start < n; start += SEG) {
            const int len = n - start < SEG ? n - start : SEG;
            CHECK(tl_session_eval(s, tok + start, len, rows, true, &err) == 0);
            cJSON *pe;
            cJSON_ArrayForEach(pe, cJSON_GetObjectItem(cs, "positions")) {
                const int pos = cJSON_GetObjectItem(pe, "pos")->valueint;
                if (pos < start || pos >= start + len) continue;
                /* Qwen2.5's first token (no BOS: the attention sink) carries activations of
                 * ~1e3 in a few channels; 8-bit blocks of activations cannot hold them beside
                 * the rest (logits off by 10 at position 0; the f32 path of a longer prompt
                 * agrees to 2e-4): not compared on the q8 path (docs/real-models.md) */
                if (q8_skip_pos0 && pos == 0 && n < 32) continue;
                const float *row = rows + (size_t)(pos - start) * V;
                cJSON *top = cJSON_GetObjectItem(pe, "top");
                float md = 0;
                cJSON *pair;
                cJSON_ArrayForEach(pair, top) {
                    const int id = cJSON_GetArrayItem(pair, 0)->valueint;
                    md = fmaxf(md, fabsf(row[id] - (float)cJSON_GetArrayItem(pair, 1)->valuedouble));
                }
                const int want_top1 = cJSON_GetArrayItem(cJSON_GetArrayItem(top, 0), 0)->valueint;
                CHECKF(tl_argmax(row, V) == want_top1, "%s pos %d: top-1 %d, reference %d", fixture, pos,
                       tl_argmax(row, V), want_top1);
                if (getenv("TL_VERBOSE")) printf("%s pos %d: max diff %g\n", fixture, pos, md);
                CHECKF(md < tol_case, "%s pos %d: max |logit diff| over the reference top-20 = %g (tol %g)", fixture,
                       pos, md, tol_case);
            }
            if (cJSON_IsArray(full) && start + len == n) { /* at the last position */
                float md = 0;
                const float *row = rows + (size_t)(len - 1) * V;
                CHECKF(cJSON_GetArraySize(full) == V, "%s: %d full logits, the model has %d", fixture,
                       cJSON_GetArraySize(full), V);
                for (int i = 0; i < V && i < cJSON_GetArraySize(full); i++)
                    md = fmaxf(md, fabsf(row[i] - (float)cJSON_GetArrayItem(full, i)->valuedouble));
                if (getenv("TL_VERBOSE")) printf("%s: all %d logits at position %d: max diff %g\n", fixture, V, n - 1, md);
                CHECKF(md < tol_case, "%s: full logits max diff %g", fixture, md);
            }
        }
        /* greedy continuation from the first greedy_from ids */
        cJSON *greedy = cJSON_GetObjectItem(cs, "greedy");
        if (cJSON_IsArray(greedy)) {
            const int from = cJSON_GetObjectItem(cs, "greedy_from")->valueint;
            tl_session_reset(s);
            CHECK(tl_session_eval(s, tok, from, logits, false, &err) == 0);
            int match = 0, ng = cJSON_GetArraySize(greedy);
            for (int i = 0; i < ng; i++) {
                int32_t next = tl_argmax(logits, V);
                if (next != cJSON_GetArrayItem(greedy, i)->valueint) break;
                match++;
                if (tl_session_eval(s, &next, 1, logits, false, &err)) break;
            }
            int need = greedy_min_ok < 0 ? ng : (greedy_min_ok < ng ? greedy_min_ok : ng);
            /* a reference step whose top-2 are within 0.25 logits is a near tie: the 8-bit
             * activations of decode may flip it, so agreement is required only before it */
            cJSON *margins = cJSON_GetObjectItem(cs, "greedy_margins");
            for (int i = 0; cJSON_IsArray(margins) && i < need && i < cJSON_GetArraySize(margins); i++)
                if (cJSON_GetArrayItem(margins, i)->valuedouble < 0.25) need = i;
            CHECKF(match >= need, "%s: greedy continuation matches %d of %d tokens (need %d)", fixture, match, ng, need);
        }
        tl_session_free(s);
        free(tok);
    }
    free(rows);
    free(logits);
    tl_model_free(m);
    cJSON_Delete(root);
    free(json);
}

