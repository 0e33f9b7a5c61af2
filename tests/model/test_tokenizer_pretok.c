/* test_tokenizer_pretok.c: every pre-tokenizer name llama.cpp knows against reference splits
 * (tests/fixtures/tokenizer_pretok_all.json, made by scripts/ref/pretok_ref.py: llama.cpp's
 * regexes run by Python's regex engine with llama.cpp's collapsing rules). Each type's texts
 * cover digits, contractions, case changes, CJK, emoji, whitespace runs and llama.cpp's
 * tokenizer test texts; every name of the type must split each text into the same pieces, and
 * every name tailor knows must be in the fixture. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../../src/base/common.h"
#include "../testutil.h"
#include "../../src/model/tokenizer_pretok.h"
#include "../../src/base/unicode.h"

/* print the pieces of text (given as codepoint lengths) */
static void show(const char *what, const char *text, const size_t *lens, size_t n) {
    fprintf(stderr, "  %s:", what);
    size_t byte = 0, len = strlen(text);
    for (size_t k = 0; k < n; k++) {
        size_t b0 = byte;
        for (size_t j = 0; j < lens[k] && byte < len; j++) tl_utf8_decode_lax(text, len, &byte);
        char shown[512];
        tl_escape(shown, sizeof shown, text + b0, byte - b0, "'");
        fprintf(stderr, " '%s'", shown);
    }
    fprintf(stderr, "\n");
}

int main(void) {
    const char *fp = tl_test_fixture("tokenizer_pretok_all.json");
    char *js = tl_test_read_file(fp, NULL);
    cJSON *root = js ? cJSON_Parse(js) : NULL;
    CHECKF(root != NULL, "%s: missing or not JSON", fp);
    if (!root) return tl_test_done();
    cJSON *texts = cJSON_GetObjectItem(root, "texts"), *types = cJSON_GetObjectItem(root, "types");
    const int nt = cJSON_GetArraySize(texts);
    CHECK(nt >= 100);

    /* codepoints and flags of every text */
    uint32_t **cps = calloc((size_t)nt, sizeof *cps);
    uint16_t **fl = calloc((size_t)nt, sizeof *fl);
    size_t *ncp = calloc((size_t)nt, sizeof *ncp);
    for (int i = 0; i < nt; i++) {
        const char *s = cJSON_GetArrayItem(texts, i)->valuestring;
        size_t len = strlen(s);
        cps[i] = malloc((len + 1) * sizeof(uint32_t));
        fl[i] = malloc((len + 1) * sizeof(uint16_t));
        for (size_t p = 0; p < len;) {
            cps[i][ncp[i]] = tl_utf8_decode_lax(s, len, &p);
            fl[i][ncp[i]] = tl_unicode_flags(cps[i][ncp[i]]);
            ncp[i]++;
        }
    }

    int n_names = 0;
    tl_szvec out = {0}, tmp = {0};
    cJSON *ty;
    cJSON_ArrayForEach(ty, types) {
        cJSON *names = cJSON_GetObjectItem(ty, "names"), *splits = cJSON_GetObjectItem(ty, "splits");
        CHECK(cJSON_GetArraySize(splits) == nt);
        cJSON *nm;
        cJSON_ArrayForEach(nm, names) {
            const char *name = nm->valuestring;
            const tl_pretok_info *pi = tl_pretok_find(name);
            n_names++;
            CHECKF(pi != NULL, "pre-tokenizer '%s' is unknown to tailor", name);
            if (!pi) continue;
            int ok = 0;
            for (int i = 0; i < nt; i++) {
                cJSON *want = cJSON_GetArrayItem(splits, i);
                tl_pretok_split(pi->pre, cps[i], fl[i], ncp[i], &out, &tmp);
                bool same = out.n == (size_t)cJSON_GetArraySize(want);
                for (size_t k = 0; same && k < out.n; k++) same = out.v[k] == (size_t)cJSON_GetArrayItem(want, (int)k)->valueint;
                ok += same;
                if (!same) {
                    const char *text = cJSON_GetArrayItem(texts, i)->valuestring;
                    size_t nw = (size_t)cJSON_GetArraySize(want), *wl = malloc((nw + 1) * sizeof(size_t));
                    for (size_t k = 0; k < nw; k++) wl[k] = (size_t)cJSON_GetArrayItem(want, (int)k)->valueint;
                    fprintf(stderr, "pre-tokenizer %s: text %d splits differently\n", name, i);
                    show("reference", text, wl, nw);
                    show("tailor   ", text, out.v, out.n);
                    free(wl);
                }
            }
            CHECKF(ok == nt, "%s: %d/%d texts split as the reference", name, ok, nt);
            printf("pre-tokenizer %-16s %d/%d texts split as the reference\n", name, ok, nt);
        }
    }
    /* every name tailor accepts has reference splits */
    int n_known = 0;
    for (size_t i = 0; tl_pretok_at(i); i++) {
        const char *name = tl_pretok_at(i)->name;
        bool found = false;
        cJSON_ArrayForEach(ty, types) {
            cJSON *nm;
            cJSON_ArrayForEach(nm, cJSON_GetObjectItem(ty, "names")) found |= !strcmp(nm->valuestring, name);
        }
        CHECKF(found, "pre-tokenizer '%s' has no reference splits in the fixture", name);
        n_known++;
    }
    CHECK(n_known == n_names);
    printf("%d pre-tokenizer names, %d texts each\n", n_names, nt);
    tl_szvec_free(&out);
    tl_szvec_free(&tmp);
    for (int i = 0; i < nt; i++) {
        free(cps[i]);
        free(fl[i]);
    }
    free(cps);
    free(fl);
    free(ncp);
    cJSON_Delete(root);
    free(js);
    return tl_test_done();
}
