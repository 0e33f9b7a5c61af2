/* test_eval_tasks.c: the long-context prompt generators: deterministic per seed, needles at
 * the requested token-exact depth, exact lengths, and sentence-by-sentence tokenization that
 * equals tokenizing the running text (per model: the shared test model always, SmolLM2 and
 * Gemma-3 when present). */
#include "../testutil.h"
#include "../../src/eval/tasks.h"
#include "../../src/model/gguf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static tl_tokenizer *load_tok(const char *path) {
    tl_error err = {{0}};
    tl_gguf *g = tl_gguf_open(path, &err);
    if (!g) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    tl_tokenizer *t = tl_tokenizer_load(g, &err);
    tl_gguf_close(g);
    return t;
}

static bool same_ids(const int32_t *a, const int32_t *b, int n) { return memcmp(a, b, sizeof(int32_t) * (size_t)n) == 0; }

/* Sentences tokenized one by one equal the whole text tokenized at once, also with a needle
 * spliced between two sentences. Returns the number of mismatching spans. */
static int check_seams(const tl_tokenizer *tok, const tl_haystack *h, const char *name) {
    int bad = 0;
    for (int start = 0; start + 12 <= h->n_sent && start < 120; start += 12) {
        /* text of sentences start..start+11 with a needle after the 6th */
        const char *needle = " One of the special magic numbers for lantern is: 4821337.";
        int nn = 0;
        tl_error err = {{0}};
        int32_t *nid = tl_tokenize_piece(tok, needle, &nn, &err);
        size_t cap = 1 << 16, tl = 0;
        char *text = malloc(cap);
        int32_t *ids = malloc(sizeof(int32_t) * 8192);
        int n = 0;
        text[0] = 0;
        for (int s = start; s < start + 12; s++) {
            const int a = h->off[s], b = h->off[s + 1];
            size_t l = 0;
            char *t = tl_detokenize_ex(tok, h->ids + a, (size_t)(b - a), TL_DETOK_NO_CLEANUP, &l);
            /* SentencePiece with a space prefix: the piece's own leading space is implied */
            if (tl_tok_add_space_prefix(tok) && (l == 0 || t[0] != ' ')) {
                text[tl++] = ' ';
            }
            memcpy(text + tl, t, l);
            tl += l;
            free(t);
            memcpy(ids + n, h->ids + a, sizeof(int32_t) * (size_t)(b - a));
            n += b - a;
            if (s == start + 5) {
                memcpy(text + tl, needle, strlen(needle));
                tl += strlen(needle);
                memcpy(ids + n, nid, sizeof(int32_t) * (size_t)nn);
                n += nn;
            }
        }
        text[tl] = 0;
        int nw = 0;
        int32_t *whole = tl_tokenize_piece(tok, text, &nw, &err);
        if (!whole || nw != n || !same_ids(whole, ids, n)) {
            bad++;
            fprintf(stderr, "%s: seams differ for sentences %d..%d (%d vs %d ids)\n", name, start, start + 11, nw, n);
        }
        free(whole);
        free(nid);
        free(text);
        free(ids);
    }
    return bad;
}

static void test_model(const char *path, const char *name, bool full) {
    if (!tl_test_have(path)) return;
    tl_tokenizer *tok = load_tok(path);
    CHECK(tok != NULL);
    if (!tok) return;
    tl_error err = {{0}};
    tl_haystack h;
    const int rc = tl_haystack_from_dir(&h, tok, tl_test_shared("data/pg_essays"), 12000, &err);
    CHECKF(rc == 0, "%s", err.msg);
    if (rc) {
        tl_tokenizer_free(tok);
        return;
    }
    CHECK(h.n_ids >= 12000 && h.n_sent > 100);
    /* the folder is read only as far as the tokens need (tl_tok_text_bytes): the haystack is
     * still the one the whole text gives, whole sentences only */
    {
        size_t len = 0;
        bool cut = true;
        char *all = tl_read_text_dir(tl_test_shared("data/pg_essays"), "\n", 0, &len, &cut, &err);
        CHECK(all && !cut);
        const int64_t maxes[] = {1, 100, 3000, 12000};
        for (size_t k = 0; all && k < sizeof maxes / sizeof *maxes; k++) {
            tl_haystack a, b;
            CHECK(tl_haystack_from_text(&a, tok, all, len, maxes[k], &err) == 0);
            CHECK(tl_haystack_from_dir(&b, tok, tl_test_shared("data/pg_essays"), maxes[k], &err) == 0);
            CHECKF(a.n_sent == b.n_sent && a.n_ids == b.n_ids && same_ids(a.ids, b.ids, (int)a.n_ids),
                   "%s: haystack of %lld tokens: %d/%lld sentences/ids from the folder, %d/%lld from the whole text",
                   name, (long long)maxes[k], b.n_sent, (long long)b.n_ids, a.n_sent, (long long)a.n_ids);
            tl_haystack_free(&a);
            tl_haystack_free(&b);
        }
        free(all);
    }
    CHECKF(check_seams(tok, &h, name) == 0, "%s: sentence tokenization has seams", name);

    /* passkey at several depths: exact length, token-exact position, needle and question ids */
    const double depths[] = {0, 0.1, 0.25, 0.5, 0.77, 1};
    for (size_t di = 0; di < sizeof depths / sizeof *depths; di++) {
        tl_task_sample s, s2;
        const int len = 1500 + 37 * (int)di;
        CHECK(tl_task_generate(&s, TL_TASK_PASSKEY, tok, &h, len, depths[di], 7, &err) == 0);
        CHECK(s.prompt.n == len);
        char nt[256];
        snprintf(nt, sizeof nt, " The pass key is %s. Remember it. %s is the pass key.", s.refs[0], s.refs[0]);
        int nn = 0, nq = 0;
        int32_t *nid = tl_tokenize_piece(tok, nt, &nn, &err);
        int32_t *qid = tl_tokenize_piece(tok, " What is the pass key? The pass key is", &nq, &err);
        const int H = len - s.prompt.prefix_len - nq - nn;
        const int want = s.prompt.prefix_len + (int)llround(depths[di] * H);
        CHECKF(s.prompt.needle_pos[0] == want, "%s depth %g: needle at %d, want %d", name, depths[di],
               s.prompt.needle_pos[0], want);
        CHECK(s.prompt.needle_len[0] == nn && same_ids(s.prompt.ids + want, nid, nn));
        CHECK(same_ids(s.prompt.ids + len - nq, qid, nq));
        /* the token before the needle ends a sentence (a splice at a sentence boundary) */
        if (want > s.prompt.prefix_len) {
            char piece[64];
            size_t np = tl_token_to_piece(tok, s.prompt.ids[want - 1], false, piece, sizeof piece);
            CHECKF(np > 0 && strchr(".!?\"')", piece[np - 1]), "%s depth %g: needle not after a sentence end",
                   name, depths[di]);
        }
        if (tl_tok_add_bos(tok) && tl_tok_bos(tok) >= 0) CHECK(s.prompt.ids[0] == tl_tok_bos(tok));
        /* determinism: same seed same ids, another seed another passkey */
        CHECK(tl_task_generate(&s2, TL_TASK_PASSKEY, tok, &h, len, depths[di], 7, &err) == 0);
        CHECK(s2.prompt.n == s.prompt.n && same_ids(s.prompt.ids, s2.prompt.ids, s.prompt.n));
        tl_task_sample_free(&s2);
        CHECK(tl_task_generate(&s2, TL_TASK_PASSKEY, tok, &h, len, depths[di], 8, &err) == 0);
        CHECK(strcmp(s.refs[0], s2.refs[0]) != 0 || !same_ids(s.prompt.ids, s2.prompt.ids, s.prompt.n));
        tl_task_sample_free(&s2);
        tl_task_sample_free(&s);
        free(nid);
        free(qid);
    }
    if (!full) goto out;
    /* several needles given out of order: placed in depth order at the formula's positions */
    {
        const tl_needle nd[3] = {{" VAR AAAAA = 1.", 0.8}, {" VAR BBBBB = 2.", 0.2}, {" VAR CCCCC = 3.", 0.5}};
        tl_prompt p;
        CHECK(tl_prompt_build(&p, tok, &h, 3, "Track the variables.", nd, 3, " Answer:", 2000, &err) == 0);
        CHECK(p.n == 2000);
        int lens[3], sum = 0, nq = 0;
        for (int i = 0; i < 3; i++) {
            int32_t *x = tl_tokenize_piece(tok, nd[i].text, &lens[i], &err);
            free(x);
            sum += lens[i];
        }
        int32_t *x = tl_tokenize_piece(tok, " Answer:", &nq, &err);
        free(x);
        const int H = 2000 - p.prefix_len - nq - sum;
        const int order[3] = {1, 2, 0};
        int before = 0;
        for (int k = 0; k < 3; k++) {
            const int i = order[k];
            const int want = p.prefix_len + (int)llround(nd[i].depth * H) + before;
            CHECKF(p.needle_pos[k] == want, "needle %d at %d, want %d", k, p.needle_pos[k], want);
            before += lens[i];
        }
        tl_prompt_free(&p);
        /* too short: a clear error */
        CHECK(tl_prompt_build(&p, tok, &h, 0, "Track the variables.", nd, 3, " Answer:", 10, &err) != 0 &&
              strstr(err.msg, "tokens asked"));
    }
    /* every RULER task: deterministic, right length, answers present in the prompt */
    for (int k = TL_TASK_NIAH_SINGLE; k < TL_TASK_COUNT; k++) {
        tl_task_sample a, b;
        CHECK(tl_task_generate(&a, (tl_task_kind)k, tok, &h, 3000, -1, 11, &err) == 0);
        CHECK(tl_task_generate(&b, (tl_task_kind)k, tok, &h, 3000, -1, 11, &err) == 0);
        CHECK(a.prompt.n == b.prompt.n && same_ids(a.prompt.ids, b.prompt.ids, a.prompt.n));
        if (k == TL_TASK_CWE) CHECK(a.prompt.n <= 3000 && a.prompt.n > 2900 && a.n_refs == 10);
        else CHECKF(a.prompt.n == 3000, "%s: %d tokens", a.task, a.prompt.n);
        char *text = tl_detokenize(tok, a.prompt.ids, (size_t)a.prompt.n, false);
        for (int r = 0; r < a.n_refs; r++) CHECKF(strstr(text, a.refs[r]) != NULL, "%s: answer %s not in the prompt", a.task, a.refs[r]);
        if (k == TL_TASK_VT) {
            /* the chain is in order: VAR <ref i> appears after VAR <ref i-1> = ... */
            const char *prev = text;
            for (int r = 1; r < a.n_refs; r++) {
                char pat[64];
                snprintf(pat, sizeof pat, "VAR %s = VAR %s", a.refs[r], a.refs[r - 1]);
                const char *at = strstr(text, pat);
                CHECKF(at && at > prev, "vt chain %s", pat);
                prev = at ? at : prev;
            }
        }
        if (k == TL_TASK_CWE) {
            /* each reference word occurs more often than any other list word */
            int min_ref = 1 << 30;
            for (int r = 0; r < a.n_refs; r++) {
                char pat[64];
                snprintf(pat, sizeof pat, ". %s ", a.refs[r]);
                int c = 0;
                for (const char *p = strstr(text, pat); p; p = strstr(p + 1, pat)) c++;
                min_ref = c < min_ref ? c : min_ref;
            }
            CHECK(min_ref >= 10);
        }
        free(text);
        tl_task_sample_free(&a);
        tl_task_sample_free(&b);
    }
    CHECK(tl_task_parse("niah_multikey_1") == TL_TASK_NIAH_MULTIKEY && tl_task_parse("nope") < 0);
out:
    tl_haystack_free(&h);
    tl_tokenizer_free(tok);
}

int main(void) {
    test_model(tl_test_shared("models/tailor-test-31m.gguf"), "tailor-test-31m", true);
    test_model(tl_test_shared("models/stories260K.gguf"), "stories260K", false);
    test_model(tl_test_models("SmolLM2-135M-Instruct.Q4_1.gguf"), "SmolLM2", true);
    test_model(tl_test_models("gemma-3-270m-q4_k_m.gguf"), "gemma3", true);
    return tl_test_done();
}
