/* test_tokenizer.c: golden ids, HF reference fixtures, round trips, UTF-8 errors, special tokens
 * and speed (llama.cpp's conformance files: test_tokenizer_vocabs.c; every pre-tokenizer:
 * test_tokenizer_pretok.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../../src/model/gguf.h"
#include "../testutil.h"
#include "../../src/model/tokenizer.h"
#include "../../src/model/tokenizer_pretok.h"
#include "../../src/base/unicode.h"

static tl_tokenizer *load(const char *path) {
    tl_error err = {{0}};
    tl_gguf *g = tl_gguf_open(path, &err);
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    tl_tokenizer *t = tl_tokenizer_load(g, &err);
    if (!t) fprintf(stderr, "%s\n", err.msg);
    tl_gguf_close(g); /* the tokenizer must not depend on the mapping */
    return t;
}

/* Tokenize into a malloc'd array (also exercising the too-small-buffer protocol). */
static int32_t *tok(const tl_tokenizer *t, const char *s, size_t len, bool add_special, bool parse_special,
                    size_t *n) {
    tl_error err = {{0}};
    int32_t small[2];
    size_t need = 0;
    if (tl_tokenize(t, s, len, add_special, parse_special, small, 2, &need, &err)) {
        fprintf(stderr, "tokenize: %s\n", err.msg);
        *n = 0;
        return NULL;
    }
    int32_t *ids = malloc((need + 1) * sizeof(int32_t));
    size_t got = 0;
    CHECK(tl_tokenize(t, s, len, add_special, parse_special, ids, need, &got, &err) == 0 && got == need);
    if (need >= 1) CHECK(small[0] == ids[0]);
    *n = need;
    return ids;
}

static bool ids_eq(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof(int32_t)) == 0);
}

static void print_ids(const char *what, const int32_t *a, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", a[i]);
    fprintf(stderr, "\n");
}

/* detokenize(tokenize(s)) == s without clean-up (see model/tokenizer.h). */
static bool round_trips(const tl_tokenizer *t, const char *s, size_t len) {
    size_t n, dl;
    int32_t *ids = tok(t, s, len, false, false, &n);
    char *d = tl_detokenize_ex(t, ids, n, TL_DETOK_NO_CLEANUP, &dl);
    bool ok = dl == len && memcmp(d, s, len) == 0;
    if (!ok) fprintf(stderr, "  round trip of '%.*s' gave '%s'\n", (int)len, s, d);
    free(ids);
    free(d);
    return ok;
}

/* ---- unicode helpers ---- */
static void test_unicode(void) {
    /* the ASCII fast path agrees with the table */
    for (uint32_t c = 0; c < 128; c++) {
        uint16_t f = tl_unicode_flags(c) & ~TL_UF_WHITESPACE;
        CHECKF(f == (1u << tl_unicode_category(c)), "U+%04X", c);
    }
    CHECK(tl_unicode_category('a') == TL_UCAT_LETTER && tl_unicode_category(0x4e2d) == TL_UCAT_LETTER);
    CHECK(tl_unicode_category(0x0663) == TL_UCAT_NUMBER && tl_unicode_category(0x00b2) == TL_UCAT_NUMBER);
    CHECK(tl_unicode_category(0x2014) == TL_UCAT_PUNCT && tl_unicode_category(0x1f600) == TL_UCAT_SYMBOL);
    CHECK(tl_unicode_category(0x0301) == TL_UCAT_MARK && tl_unicode_category(0x10ffff) == TL_UCAT_UNDEF);
    CHECK(tl_unicode_category(0x2ebf0) == TL_UCAT_LETTER); /* CJK ext. I: Unicode 15.1, as llama.cpp */
    CHECK(tl_unicode_is_whitespace(0x3000) && tl_unicode_is_whitespace(0x85) && !tl_unicode_is_whitespace(0x200b));
    /* strict validation reports the offending sequence's offset */
    struct {
        const char *s;
        size_t len, bad;
    } v[] = {
        {"abc", 3, 3},          {"a\xc3\xa9z", 4, 4},     {"ab\xff", 3, 2},         {"a\xc3", 2, 1},
        {"\xc0\xaf", 2, 0},     {"x\xe0\x80\xaf", 4, 1},  {"\xed\xa0\x80", 3, 0},   {"\xf4\x90\x80\x80", 4, 0},
        {"\xf0\x9f\x98\x80!", 5, 5}, {"ok\x80", 3, 2},    {"a\0b", 3, 3},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        CHECKF(tl_utf8_validate(v[i].s, v[i].len) == v[i].bad, "case %zu", i);
}

/* ---- stories260K (SPM, 512 tokens) ---- */
static void test_stories(void) {
    const char *path = tl_test_shared("models/stories260K.gguf");
    if (!tl_test_have(path)) return;
    tl_tokenizer *t = load(path);
    CHECK(t != NULL);
    if (!t) return;
    CHECK(tl_tok_n_vocab(t) == 512 && tl_tok_bos(t) == 1 && tl_tok_eos(t) == 2 && tl_tok_add_bos(t));
    CHECK(tl_tok_is_eog(t, 2) && !tl_tok_is_eog(t, 1) && tl_tok_add_space_prefix(t));
    /* golden greedy continuation: ids and text from llama2.c */
    const int32_t g[] = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
                         410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352,
                         266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415};
    const char *text = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
                       "One day, she saw a big, red ball. She wanted to play with it, but it was too high";
    size_t ng = sizeof g / sizeof g[0];
    char *d = tl_detokenize(t, g, ng, false);
    CHECKF(strcmp(d, text) == 0, "got '%s'", d);
    free(d);
    int32_t gb[61];
    gb[0] = 1;
    memcpy(gb + 1, g, sizeof g);
    d = tl_detokenize(t, gb, ng + 1, false); /* llama.cpp: after BOS the space stays */
    CHECK(d[0] == ' ' && strcmp(d + 1, text) == 0);
    free(d);
    d = tl_detokenize(t, gb, ng + 1, true);
    CHECK(strncmp(d, "<s> Once", 8) == 0);
    free(d);
    size_t n;
    int32_t *ids = tok(t, text, strlen(text), true, false, &n);
    CHECK(n == ng + 1 && ids[0] == 1 && memcmp(ids + 1, g, sizeof g) == 0);
    free(ids);
    /* byte fallback: characters outside the 512-token vocab become <0xXX> tokens */
    ids = tok(t, "\xe4\xb8\xad", 3, false, false, &n); /* 中 */
    CHECK(n >= 3 && ids[n - 3] == 3 + 0xe4 && ids[n - 2] == 3 + 0xb8 && ids[n - 1] == 3 + 0xad);
    free(ids);
    /* control tokens: text unless parse_special */
    ids = tok(t, "<s>hi</s>", 9, false, true, &n);
    CHECK(n >= 3 && ids[0] == 1 && ids[n - 1] == 2);
    free(ids);
    ids = tok(t, "<s>", 3, false, false, &n);
    CHECK(n > 1 && ids[0] != 1);
    free(ids);
    const char *rt[] = {"", " ", "  ", "Hello", " Hello", "a  b   c\n\n\td", "Once upon a time.\n", "\xf0\x9f\xa6\x99 emoji",
                        "caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87", "<s> </s> <unk>", "tab\tnew\nline\r\n"};
    for (size_t i = 0; i < sizeof rt / sizeof rt[0]; i++) CHECK(round_trips(t, rt[i], strlen(rt[i])));
    CHECK(round_trips(t, "nul\0byte", 8));
    tl_tokenizer_free(t);
}

/* ---- tailor-test-31m (gpt2 byte-level BPE, pre "gpt-2") ---- */
static void test_tailor(void) {
    const char *path = tl_test_shared("models/tailor-test-31m.gguf");
    const char *gold = tl_test_shared("data/golden/tailor-test-31m.json");
    if (!tl_test_have(path) || !tl_test_have(gold)) return;
    tl_tokenizer *t = load(path);
    char *js = tl_test_read_file(gold, NULL);
    cJSON *root = js ? cJSON_Parse(js) : NULL;
    CHECK(t && root);
    if (!t || !root) goto done;
    CHECK(tl_tok_bos(t) == 0 && tl_tok_eos(t) == 1 && tl_tok_add_bos(t) && tl_tok_is_eog(t, 1));
    int cases = 0;
    cJSON *c;
    cJSON_ArrayForEach(c, root) {
        cJSON *prompt = cJSON_GetObjectItem(c, "prompt"), *pf = cJSON_GetObjectItem(c, "prompt_file");
        cJSON *ids = cJSON_GetObjectItem(c, "ids");
        char *text = NULL;
        size_t len = 0, limit = (size_t)cJSON_GetArraySize(ids);
        if (cJSON_IsString(prompt)) {
            text = strdup(prompt->valuestring);
            len = strlen(text);
        } else if (cJSON_IsString(pf)) { /* "pg_essays/gh.txt (first 30000 bytes; first 4600 tokens...)" */
            char rel[256];
            snprintf(rel, sizeof rel, "data/%.*s", (int)strcspn(pf->valuestring, " "), pf->valuestring);
            text = tl_test_read_file(tl_test_shared(rel), &len);
            if (text && len > 30000) len = 30000;
        }
        if (!text) continue;
        size_t n;
        int32_t *got = tok(t, text, len, true, false, &n);
        bool ok = got && n >= limit;
        for (size_t i = 0; ok && i < limit; i++) ok = got[i] == cJSON_GetArrayItem(ids, (int)i)->valueint;
        CHECKF(ok, "tailor-test-31m prompt %d: ids differ (%zu tokens)", cases, n);
        cases++;
        free(got);
        free(text);
    }
    CHECK(cases == 3);
    printf("tailor-test-31m: %d golden prompts checked\n", cases);
    const char *rt[] = {"Hello world", "  leading and trailing  ", "x = a ? b : c; // it's 'quoted'",
                        "\xe4\xbd\xa0\xe5\xa5\xbd, \xd0\xbc\xd0\xb8\xd1\x80! \xf0\x9f\x98\x80\xf0\x9f\x98\x80",
                        "12345 3.14159 1,000,000", "<|bos|><|eos|>", "\t\t\n\n\r\n   \n"};
    for (size_t i = 0; i < sizeof rt / sizeof rt[0]; i++) CHECK(round_trips(t, rt[i], strlen(rt[i])));
    /* llama.cpp's clean-up of spaces is applied by tl_detokenize for gpt-2 */
    {
        size_t n;
        int32_t *ids = tok(t, "Hi , there ! Is it ok ?", 23, false, false, &n);
        char *d = tl_detokenize(t, ids, n, false);
        CHECKF(strcmp(d, "Hi, there! Is it ok?") == 0, "got '%s'", d);
        free(d);
        free(ids);
    }
done:
    cJSON_Delete(root);
    free(js);
    tl_tokenizer_free(t);
}

/* ---- reference fixtures made by tests/fixtures/gen_tokenizer_fixtures.py ---- */
static void test_fixture(const char *fixture) {
    const char *fp = tl_test_fixture(fixture);
    if (!tl_test_have(fp)) return;
    char *js = tl_test_read_file(fp, NULL);
    cJSON *root = js ? cJSON_Parse(js) : NULL;
    CHECK(root != NULL);
    if (!root) {
        free(js);
        return;
    }
    const char *model = cJSON_GetObjectItem(root, "model")->valuestring;
    const char *mp = tl_test_models(model);
    if (!tl_test_have(mp)) {
        cJSON_Delete(root);
        free(js);
        return;
    }
    tl_tokenizer *t = load(mp);
    CHECK(t != NULL);
    int n_ok = 0, n_cases = 0, n_rt = 0, n_rt_cases = 0;
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        if (!t) break;
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        bool add_special = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_special"));
        bool parse_special = cJSON_IsTrue(cJSON_GetObjectItem(c, "parse_special"));
        cJSON *ids = cJSON_GetObjectItem(c, "ids");
        size_t nexp = (size_t)cJSON_GetArraySize(ids);
        int32_t *exp = malloc((nexp + 1) * sizeof(int32_t));
        for (size_t i = 0; i < nexp; i++) exp[i] = cJSON_GetArrayItem(ids, (int)i)->valueint;
        size_t n;
        int32_t *got = tok(t, text, strlen(text), add_special, parse_special, &n);
        n_cases++;
        if (ids_eq(got, n, exp, nexp)) {
            n_ok++;
        } else {
            fprintf(stderr, "%s: mismatch for '%s'\n", model, text);
            print_ids("expected", exp, nexp);
            print_ids("got     ", got, n);
        }
        if (!parse_special) {
            n_rt_cases++;
            n_rt += round_trips(t, text, strlen(text));
        }
        free(got);
        free(exp);
    }
    printf("fixture %-24s %d/%d match, %d/%d round trips\n", fixture, n_ok, n_cases, n_rt, n_rt_cases);
    CHECKF(n_cases >= 30 && n_ok == n_cases, "%s: %d/%d", fixture, n_ok, n_cases);
    CHECK(n_rt == n_rt_cases);
    tl_tokenizer_free(t);
    cJSON_Delete(root);
    free(js);
}

/* ---- Llama 3 / Qwen2 pre-tokenizer splits vs the `tokenizers` regex engine ---- */
static void test_pretok_fixture(void) {
    const char *fp = tl_test_fixture("tokenizer_pretok.json");
    if (!tl_test_have(fp)) return;
    char *js = tl_test_read_file(fp, NULL);
    cJSON *root = js ? cJSON_Parse(js) : NULL;
    CHECK(root != NULL);
    int n_ok = 0, n_cases = 0;
    cJSON *c, *cases = cJSON_GetObjectItem(root, "cases");
    cJSON_ArrayForEach(c, cases) {
        const char *pre = cJSON_GetObjectItem(c, "pre")->valuestring;
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        cJSON *pieces = cJSON_GetObjectItem(c, "pieces");
        size_t len = strlen(text), ncp = 0;
        uint32_t *cps = malloc((len + 1) * sizeof(uint32_t));
        uint16_t *fl = malloc((len + 1) * sizeof(uint16_t));
        for (size_t i = 0; i < len;) {
            cps[ncp] = tl_utf8_decode_lax(text, len, &i);
            fl[ncp] = tl_unicode_flags(cps[ncp]);
            ncp++;
        }
        tl_szvec out = {0}, tmp = {0};
        tl_pretok_split(strcmp(pre, "qwen2") == 0 ? TL_PRE_QWEN2 : TL_PRE_LLAMA3, cps, fl, ncp, &out, &tmp);
        bool ok = out.n == (size_t)cJSON_GetArraySize(pieces);
        size_t cp = 0, byte = 0;
        for (size_t k = 0; ok && k < out.n; k++) {
            size_t b0 = byte;
            for (size_t j = 0; j < out.v[k]; j++, cp++) { /* advance byte over one codepoint */
                size_t p = byte;
                tl_utf8_decode_lax(text, len, &p);
                byte = p;
            }
            const char *want = cJSON_GetArrayItem(pieces, (int)k)->valuestring;
            ok = strlen(want) == byte - b0 && memcmp(want, text + b0, byte - b0) == 0;
        }
        n_cases++;
        n_ok += ok;
        if (!ok) fprintf(stderr, "pretok %s: split of '%s' differs\n", pre, text);
        tl_szvec_free(&out);
        tl_szvec_free(&tmp);
        free(cps);
        free(fl);
    }
    printf("pretok fixture: %d/%d llama3/qwen2 splits match\n", n_ok, n_cases);
    CHECKF(n_cases >= 100 && n_ok == n_cases, "%d/%d", n_ok, n_cases);
    cJSON_Delete(root);
    free(js);
}

/* ---- errors, buffers, speed ---- */
static void test_misc(void) {
    const char *path = tl_test_shared("data/tokenizer/ggml-vocab-gpt-2.gguf");
    if (!tl_test_have(path)) return;
    tl_tokenizer *t = load(path);
    CHECK(t != NULL);
    if (!t) return;
    tl_error err = {{0}};
    size_t n = 99;
    int32_t buf[8];
    CHECK(tl_tokenize(t, "hello \xe2\x82 world", 14, false, false, buf, 8, &n, &err) == -1);
    CHECKF(strstr(err.msg, "invalid UTF-8 at byte 6") != NULL, "msg '%s'", err.msg);
    CHECK(tl_tokenize(t, "", 0, true, false, buf, 8, &n, &err) == 0 && n == 0); /* gpt-2: no BOS added */
    CHECK(tl_token_find(t, "<|endoftext|>") == 50256 && tl_tok_is_eog(t, 50256));
    CHECK(strcmp(tl_token_text(t, 50256), "<|endoftext|>") == 0);
    char pc[32];
    CHECK(tl_token_to_piece(t, 50256, false, pc, sizeof pc) == 0);
    CHECK(tl_token_to_piece(t, 50256, true, pc, sizeof pc) == 13 && memcmp(pc, "<|endoftext|>", 13) == 0);
    CHECK(tl_token_to_piece(t, tl_token_find(t, "\xc4\xa0the"), false, pc, 2) == 4 && memcmp(pc, " t", 2) == 0);
    CHECK(tl_token_to_piece(t, -1, true, pc, sizeof pc) == 0 && tl_token_to_piece(t, 1 << 30, true, pc, 8) == 0);
    /* parse_special recognises <|endoftext|> only when asked */
    CHECK(tl_tokenize(t, "a<|endoftext|>b", 15, false, true, buf, 8, &n, &err) == 0 && n == 3 && buf[1] == 50256);
    CHECK(tl_tokenize(t, "a<|endoftext|>b", 15, false, false, buf, 8, &n, &err) == 0 && n > 3);

    /* a large input (~500 KB) tokenizes completely; its time is printed, not asserted
     * (speed is measured by benchmarks, never by timed assertions in tests) */
    const char *para = "The quick brown fox jumps over the lazy dog; it's 12345 times faster! "
                       "\xc3\x89t\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80\n\tcode(x) { return x*2; }  \n";
    size_t pl = strlen(para), reps = 500000 / pl + 1, big_len = pl * reps;
    char *big = malloc(big_len + 1);
    for (size_t i = 0; i < reps; i++) memcpy(big + i * pl, para, pl);
    const char *speed_models[] = {"data/tokenizer/ggml-vocab-gpt-2.gguf", "data/tokenizer/ggml-vocab-llama-spm.gguf",
                                  "gemma-3-270m-q4_k_m.gguf"};
    for (int m = 0; m < 3; m++) {
        const char *mp = m < 2 ? tl_test_shared(speed_models[m]) : tl_test_models(speed_models[m]);
        if (m == 2 && !tl_test_have(mp)) continue;
        tl_tokenizer *s = m == 0 ? t : load(mp);
        if (!s) continue;
        size_t need = 0;
        double t0 = tl_time_s();
        /* parse_special: the 262k-token Gemma vocab has 6400 special tokens to look for */
        int rc = tl_tokenize(s, big, big_len, false, true, NULL, 0, &need, &err);
        double dt = tl_time_s() - t0;
        printf("speed %s: %zu bytes -> %zu tokens in %.3f s\n", speed_models[m], big_len, need, dt);
        CHECKF(rc == 0 && need > 100000, "rc %d, %zu tokens", rc, need);
        if (s != t) tl_tokenizer_free(s);
    }
    free(big);
    tl_tokenizer_free(t);
}

/* ---- tl_tokenize_opts: control tokens only inside given spans; stopping at max_tokens ---- */
static void test_opts(void) {
    const char *names[] = {"data/tokenizer/ggml-vocab-gpt-2.gguf", "data/tokenizer/ggml-vocab-llama-spm.gguf",
                           "data/tokenizer/ggml-vocab-phi-3.gguf"};
    for (int v = 0; v < 3; v++) {
        const char *path = tl_test_shared(names[v]);
        if (!tl_test_have(path)) continue;
        tl_tokenizer *t = load(path);
        CHECK(t != NULL);
        if (!t) continue;
        tl_error err = {{0}};
        /* a control token of the vocab: gpt-2 <|endoftext|>, llama-spm </s>, phi-3 <|end|> */
        const char *ctl = v == 0 ? "<|endoftext|>" : v == 1 ? "</s>" : "<|end|>";
        int32_t cid = tl_token_find(t, ctl);
        CHECK(cid >= 0);
        char text[128];
        size_t cl = strlen(ctl);
        int tl = snprintf(text, sizeof text, "Hi %s there%sbye", ctl, ctl); /* two occurrences */
        size_t second = 3 + cl + 6;
        tl_span spans[] = {{second, cl}};
        int32_t ids[64];
        size_t n = 0;
        tl_tok_opts o = {.special_spans = spans, .n_special_spans = 1};
        CHECK(tl_tokenize_opts(t, text, (size_t)tl, &o, ids, 64, &n, &err) == 0);
        int hits = 0;
        for (size_t i = 0; i < n; i++) hits += ids[i] == cid;
        /* only the occurrence inside the span is the control token: the text before it (the
         * first occurrence included) tokenizes as plain text, then comes the token */
        size_t n_plain = 0, n_all = 0;
        int32_t plain[64], all[64];
        tl_tokenize(t, text, second, false, false, plain, 64, &n_plain, &err);
        CHECKF(hits == 1 && n_plain < n && ids[n_plain] == cid && !memcmp(plain, ids, n_plain * sizeof(int32_t)),
               "%s: %d hits, %zu plain ids of %zu", names[v], hits, n_plain, n);
        /* a span that covers only part of the token does not make it one */
        tl_span part[] = {{second, cl - 1}};
        o.special_spans = part;
        CHECK(tl_tokenize_opts(t, text, (size_t)tl, &o, all, 64, &n_all, &err) == 0);
        hits = 0;
        for (size_t i = 0; i < n_all; i++) hits += all[i] == cid;
        CHECK(hits == 0);
        /* parse_special still means everywhere */
        o = (tl_tok_opts){.parse_special = true};
        CHECK(tl_tokenize_opts(t, text, (size_t)tl, &o, all, 64, &n_all, &err) == 0);
        hits = 0;
        for (size_t i = 0; i < n_all; i++) hits += all[i] == cid;
        CHECK(hits == 2);

        /* max_tokens: a prefix of max_tokens + 1 ids of the whole result, never more */
        const char *para = "The quick brown fox jumps over the lazy dog, 12345 times. ";
        size_t pl = strlen(para), reps = 200;
        char *big = malloc(pl * reps + 1);
        for (size_t i = 0; i < reps; i++) memcpy(big + i * pl, para, pl);
        size_t whole = 0;
        int32_t *full = tok(t, big, pl * reps, true, false, &whole);
        CHECK(full && whole > 1000);
        for (size_t max = 1; full && max < whole; max = max * 3 + 1) {
            int32_t *cut = malloc((whole + 1) * sizeof(int32_t));
            size_t nc = 0;
            o = (tl_tok_opts){.add_special = true, .max_tokens = max};
            CHECK(tl_tokenize_opts(t, big, pl * reps, &o, cut, whole + 1, &nc, &err) == 0);
            CHECKF(nc == max + 1 && !memcmp(cut, full, nc * sizeof(int32_t)), "max %zu: %zu ids", max, nc);
            free(cut);
        }
        o = (tl_tok_opts){.add_special = true, .max_tokens = whole};
        size_t nw = 0;
        CHECK(tl_tokenize_opts(t, big, pl * reps, &o, NULL, 0, &nw, &err) == 0 && nw == whole);
        /* the byte bound: no text takes fewer than len / max_piece tokens */
        size_t mp = tl_tok_max_piece(t);
        CHECK(mp >= cl && mp < 4096);
        CHECKF(whole * mp >= pl * reps, "%zu tokens x %zu bytes < %zu bytes", whole, mp, pl * reps);
        for (int32_t id = 0; id < tl_tok_n_vocab(t); id++) CHECK(tl_token_to_piece(t, id, true, NULL, 0) <= mp);
        free(full);
        free(big);
        tl_tokenizer_free(t);
    }
}

/* ---- tokenizers read from metadata alone: refusals, and WordPiece on a small vocabulary ---- */
static tl_tokenizer *open_written(tl_gguf_writer *w, const char *path, tl_error *err) {
    CHECK(tl_gguf_write(w, path, err) == 0);
    tl_gguf_writer_free(w);
    tl_tokenizer *t = tl_tokenizer_open(path, err);
    unlink(path);
    return t;
}

static tl_gguf_writer *vocab_writer(const char *model, const char *pre, const char *const *toks, const int32_t *types,
                                    uint64_t n) {
    tl_gguf_writer *w = tl_gguf_writer_new();
    tl_gguf_w_str(w, "general.architecture", "no-such-arch"); /* the tokenizer does not look */
    tl_gguf_w_str(w, "tokenizer.ggml.model", model);
    if (pre) tl_gguf_w_str(w, "tokenizer.ggml.pre", pre);
    tl_gguf_w_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, n);
    if (types) tl_gguf_w_arr(w, "tokenizer.ggml.token_type", TL_GGUF_INT32, types, n);
    return w;
}

static void test_metadata_only(void) {
    char path[128];
    snprintf(path, sizeof path, "/tmp/tl_test_tokenizer_%d.gguf", (int)getpid());
    tl_error err = {{0}};
    const char *toks[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "\xe2\x96\x81hello", "\xe2\x96\x81,", "\xe2\x96\x81wor",
                          "ld", "\xe2\x96\x81" "cafe", "\xe2\x96\x81!", "\xe2\x96\x81\xe4\xbd\xa0", "a", "b"};
    const int32_t types[] = {3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const uint64_t n = sizeof toks / sizeof toks[0];

    /* tokenizer models llama.cpp has and tailor does not: refused by name */
    tl_tokenizer *t = open_written(vocab_writer("t5", NULL, toks, types, n), path, &err);
    CHECKF(!t && strstr(err.msg, path) && strstr(err.msg, "unsupported tokenizer 't5' (Unigram"), "'%s'", err.msg);
    t = open_written(vocab_writer("rwkv", NULL, toks, types, n), path, &err);
    CHECKF(!t && strstr(err.msg, "unsupported tokenizer 'rwkv' (RWKV"), "'%s'", err.msg);
    t = open_written(vocab_writer("gpt2", "no-such-pre", toks, types, n), path, &err);
    CHECKF(!t && strstr(err.msg, "tokenizer.ggml.pre: unsupported pre-tokenizer 'no-such-pre'"), "'%s'", err.msg);
    /* WordPiece needs its unknown token (default id 100) */
    t = open_written(vocab_writer("bert", NULL, toks, types, n), path, &err);
    CHECKF(!t && strstr(err.msg, "without an unknown token"), "'%s'", err.msg);

    tl_gguf_writer *w = vocab_writer("bert", "bert-bge", toks, types, n);
    tl_gguf_w_u32(w, "tokenizer.ggml.unknown_token_id", 1);
    tl_gguf_w_u32(w, "tokenizer.ggml.bos_token_id", 2);
    tl_gguf_w_u32(w, "tokenizer.ggml.seperator_token_id", 3);
    t = open_written(w, path, &err);
    CHECKF(t != NULL, "%s", err.msg);
    if (!t) return;
    CHECK(tl_tok_bos(t) == 2 && tl_tok_sep(t) == 3 && tl_tok_eos(t) == -1);
    struct {
        const char *text;
        bool add_special;
        int32_t ids[8];
        size_t n;
    } cases[] = {
        /* lower-cased; punctuation is a word of its own; [CLS] ... [SEP] with add_special */
        {"Hello, WORLD!", true, {2, 4, 5, 6, 7, 9, 3}, 7},
        {"Hello, WORLD!", false, {4, 5, 6, 7, 9}, 5},
        /* accents dropped (NFD base), control characters dropped, whitespace of any kind separates */
        {"Caf\xc3\xa9\x01\xe3\x80\x80hello", false, {8, 4}, 2},
        /* greedy longest tokens; a word with a part no token matches is one [UNK]; each CJK
         * ideograph is a word */
        {"world xyz \xe4\xbd\xa0\xe5\xa5\xbd", false, {6, 7, 1, 10, 1}, 5},
        {"ab", false, {1}, 1}, /* "a" and "b" are tokens, but every word starts with "▁" */
        {"", true, {2, 3}, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t got = 0;
        int32_t *ids = tok(t, cases[i].text, strlen(cases[i].text), cases[i].add_special, false, &got);
        CHECKF(ids && ids_eq(ids, got, cases[i].ids, cases[i].n), "WordPiece case %zu: %zu ids", i, got);
        if (ids && !ids_eq(ids, got, cases[i].ids, cases[i].n)) print_ids("got", ids, got);
        free(ids);
    }
    int32_t hw[] = {4, 6, 7, 9};
    char *d = tl_detokenize(t, hw, 4, false);
    CHECKF(!strcmp(d, " hello world!"), "'%s'", d); /* clean-up of " !" as llama.cpp */
    free(d);
    tl_tokenizer_free(t);
}

int main(void) {
    test_unicode();
    test_metadata_only();
    test_opts();
    test_stories();
    test_tailor();
    test_fixture("tokenizer_smollm2.json");
    test_fixture("tokenizer_gemma3.json");
    test_pretok_fixture();
    test_misc();
    return tl_test_done();
}
