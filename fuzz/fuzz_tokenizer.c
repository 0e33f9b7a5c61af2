/* fuzz_tokenizer.c: libFuzzer target for the tokenizers.
 *
 * Loads stories260K.gguf (SentencePiece) and the llama.cpp gpt-2 vocab (byte-level BPE) once,
 * from $TL_SHARED (default ../shared). For every input it tokenizes with both (all
 * add_special/parse_special combinations), detokenizes, and checks:
 *  - invalid UTF-8 is rejected exactly when the strict validator says so;
 *  - valid UTF-8 round-trips: detokenize(tokenize(x)) == x (no clean-up; for SPM, except text
 *    containing U+2581 "▁", which SentencePiece cannot distinguish from a space);
 *  - every id is inside the vocabulary, and the size query protocol is consistent;
 *  - every pre-tokenizer kind splits the text's codepoints into non-empty pieces that add up
 *    to all of them (its matchers never read outside a piece: ASan).
 * Run: ./fuzz_tokenizer -max_total_time=60 */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/model/gguf.h"
#include "../src/model/tokenizer.h"
#include "../src/model/tokenizer_pretok.h"
#include "../src/base/unicode.h"

static tl_tokenizer *load_one(const char *rel) {
    const char *base = getenv("TL_SHARED");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", base && *base ? base : "../shared", rel);
    tl_error err = {{0}};
    tl_gguf *g = tl_gguf_open(path, &err);
    tl_tokenizer *t = g ? tl_tokenizer_load(g, &err) : NULL;
    if (g) tl_gguf_close(g);
    if (!t) {
        fprintf(stderr, "fuzz_tokenizer: %s (set TL_SHARED)\n", err.msg);
        abort();
    }
    return t;
}

static void check(const tl_tokenizer *t, bool spm, const char *s, size_t n, bool valid) {
    tl_error err = {{0}};
    for (int mode = 0; mode < 4; mode++) {
        bool add_special = mode & 1, parse_special = mode & 2;
        size_t need = 0;
        int rc = tl_tokenize(t, s, n, add_special, parse_special, NULL, 0, &need, &err);
        if (!valid) {
            if (rc != -1 || !strstr(err.msg, "invalid UTF-8 at byte")) abort();
            return;
        }
        if (rc != 0) abort();
        int32_t *ids = malloc((need + 1) * sizeof(int32_t));
        size_t got = 0;
        if (tl_tokenize(t, s, n, add_special, parse_special, ids, need, &got, &err) != 0 || got != need) abort();
        for (size_t i = 0; i < got; i++)
            if (ids[i] < 0 || ids[i] >= tl_tok_n_vocab(t)) abort();
        size_t dl;
        char *d = tl_detokenize_ex(t, ids, got, TL_DETOK_NO_CLEANUP, &dl);
        if (mode == 0) {
            bool skip = spm && memmem(s, n, "\xe2\x96\x81", 3) != NULL;
            if (!skip && (dl != n || memcmp(d, s, n) != 0)) {
                fprintf(stderr, "round trip failed (%s): %zu bytes in, %zu out\n", spm ? "spm" : "bpe", n, dl);
                abort();
            }
        }
        free(d);
        d = tl_detokenize(t, ids, got, true); /* exercise clean-up and special rendering */
        free(d);
        free(ids);
    }
}

static void check_pretok(const char *s, size_t n) {
    uint32_t *cps = malloc((n + 1) * sizeof(uint32_t));
    uint16_t *fl = malloc((n + 1) * sizeof(uint16_t));
    size_t ncp = 0;
    for (size_t i = 0; i < n; ncp++) {
        cps[ncp] = tl_utf8_decode_lax(s, n, &i);
        fl[ncp] = tl_unicode_flags(cps[ncp]);
    }
    tl_szvec out = {0}, tmp = {0};
    uint64_t done = 0; /* kinds already split */
    for (size_t k = 0; tl_pretok_at(k); k++) {
        tl_pretok kind = tl_pretok_at(k)->pre;
        if (done >> kind & 1) continue;
        done |= 1ull << kind;
        tl_pretok_split(kind, cps, fl, ncp, &out, &tmp);
        size_t sum = 0;
        for (size_t i = 0; i < out.n; i++) {
            if (out.v[i] == 0) abort();
            sum += out.v[i];
        }
        if (sum != ncp) abort();
    }
    tl_szvec_free(&out);
    tl_szvec_free(&tmp);
    free(cps);
    free(fl);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* the fuzzer calls us repeatedly: load the vocabularies once and keep them */
    static tl_tokenizer *spm, *bpe;
    if (!spm) {
        spm = load_one("models/stories260K.gguf");
        bpe = load_one("data/tokenizer/ggml-vocab-gpt-2.gguf");
    }
    const char *s = (const char *)data;
    bool valid = tl_utf8_validate(s, size) == size;
    check(spm, true, s, size, valid);
    check(bpe, false, s, size, valid);
    if (valid) check_pretok(s, size);
    return 0;
}
