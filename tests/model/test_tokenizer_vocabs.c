/* test_tokenizer_vocabs.c: llama.cpp's tokenizer conformance files (tests/test-tokenizer-0):
 * every ggml-vocab-*.gguf with its .inp (texts, separated by a marker line) and .out (llama.cpp's
 * token ids, one line per text; add_special and parse_special off) must give exactly those ids.
 *
 * Vocabularies come from ../shared/data/tokenizer and from the cache scripts/fetch-vocabs.sh
 * fills from a llama.cpp tree ($TL_VOCABS, default ~/.cache/tailor/vocabs). A vocabulary without
 * test files is loaded and round-tripped over the test texts; a test file without its vocabulary
 * (a snapshot that lacks it) is named. The test reports itself skipped (exit 77) when the cache
 * adds nothing to ../shared. Each vocabulary is tokenized from its metadata alone: most of these
 * files are of architectures the model loader does not run (mpt, bert, starcoder2, ...). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/model/gguf.h"
#include "../testutil.h"
#include "../../src/model/tokenizer.h"

#define MAX_VOCABS 64

typedef struct {
    char name[128]; /* ggml-vocab-X.gguf */
    char dir[3072];
    bool has_vocab, has_test, from_cache;
} entry;

static entry ents[MAX_VOCABS];
static int n_ents;

static entry *find_or_add(const char *name) {
    for (int i = 0; i < n_ents; i++)
        if (!strcmp(ents[i].name, name)) return &ents[i];
    if (n_ents == MAX_VOCABS) return NULL;
    entry *e = &ents[n_ents++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    return e;
}

/* Test files whose vocabulary the snapshot lacks, and a model of the same vocabulary that setup
 * fetches (optional): Qwen2.5 keeps Qwen1.5's byte-level BPE tokens and merges (only its added
 * special tokens differ, and the test texts hold none). */
static const char *const STAND_INS[][2] = {
    {"ggml-vocab-qwen2.gguf", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"},
};

static int cmp_ent(const void *a, const void *b) { return strcmp(((const entry *)a)->name, ((const entry *)b)->name); }

/* Record the ggml-vocab-*.gguf files and test files of dir; the first directory to have a
 * vocabulary (or, lacking one, a test file) provides it. */
static void scan(const char *dir, bool cache) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        size_t l = strlen(n);
        if (strncmp(n, "ggml-vocab-", 11) != 0 || l >= 120) continue;
        char base[128];
        snprintf(base, sizeof base, "%s", n);
        bool vocab = l > 5 && !strcmp(n + l - 5, ".gguf");
        bool inp = l > 9 && !strcmp(n + l - 9, ".gguf.inp");
        if (!vocab && !inp) continue;
        if (inp) base[l - 4] = 0;
        entry *e = find_or_add(base);
        if (!e) continue;
        char other[4096];
        snprintf(other, sizeof other, "%s/%s%s", dir, base, vocab ? ".inp" : "");
        FILE *f = fopen(other, "rb");
        bool pair = f != NULL; /* the vocabulary's test file, or the test file's vocabulary */
        if (f) fclose(f);
        bool test_here = inp || pair;
        bool vocab_here = vocab || pair;
        if (!e->has_vocab && vocab_here) {
            snprintf(e->dir, sizeof e->dir, "%s", dir);
            e->has_vocab = true;
            e->has_test = test_here;
            e->from_cache = cache;
        } else if (!e->has_vocab && !e->has_test && test_here) {
            snprintf(e->dir, sizeof e->dir, "%s", dir);
            e->has_test = true;
            e->from_cache = cache;
        }
    }
    closedir(d);
}

/* Tokenize into a malloc'd array. */
static int32_t *tok(const tl_tokenizer *t, const char *s, size_t len, size_t *n) {
    tl_error err = {{0}};
    size_t need = 0;
    *n = 0;
    if (tl_tokenize(t, s, len, false, false, NULL, 0, &need, &err)) {
        fprintf(stderr, "tokenize: %s\n", err.msg);
        return NULL;
    }
    int32_t *ids = malloc((need + 1) * sizeof(int32_t));
    if (tl_tokenize(t, s, len, false, false, ids, need, n, &err)) {
        free(ids);
        return NULL;
    }
    return ids;
}

static void print_ids(const char *what, const int32_t *a, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", a[i]);
    fprintf(stderr, "\n");
}

/* The texts of an .inp file (pointers into inp, which is modified); returns the count. */
static size_t split_inp(char *inp, size_t n, char **texts, size_t *lens, size_t cap) {
    const char *sep = "\n__ggml_vocab_test__\n";
    size_t seplen = strlen(sep), k = 0, pos = 0;
    while (pos < n && k < cap) {
        char *next = strstr(inp + pos, sep);
        size_t end = next ? (size_t)(next - inp) : n;
        texts[k] = inp + pos;
        lens[k++] = end - pos;
        if (!next) break;
        pos = end + seplen;
    }
    return k;
}

static char *meta_str(const char *path, const char *key) {
    tl_error err = {{0}};
    tl_gguf *g = tl_gguf_open(path, &err);
    char *v = NULL;
    if (g && tl_gguf_opt_str(g, key, &v, &err)) v = NULL;
    tl_gguf_close(g);
    return v ? v : strdup("-");
}

enum { MAX_TEXTS = 256 };

typedef struct {
    int texts, match, round_trips;
    size_t tok_expected, tok_got;
} result;

/* Token ids of every text against the .out; round trips unless the tokenizer is lossy. */
static result check_vocab(const char *name, const tl_tokenizer *t, char **texts, size_t *lens, size_t nt,
                          const char *out, bool lossless) {
    result r = {0};
    const char *op = out;
    for (size_t i = 0; i < nt; i++) {
        size_t n = 0;
        int32_t *ids = tok(t, texts[i], lens[i], &n);
        r.texts++;
        r.tok_got += n;
        if (out) {
            const char *eol = strchr(op, '\n');
            if (!eol) eol = op + strlen(op);
            int32_t exp[4096];
            size_t nexp = 0;
            for (const char *q = op; q < eol && nexp < 4096;) {
                char *e;
                long v = strtol(q, &e, 10);
                if (e == q) break;
                exp[nexp++] = (int32_t)v;
                q = e;
            }
            op = *eol ? eol + 1 : eol;
            r.tok_expected += nexp;
            if (ids && n == nexp && (n == 0 || !memcmp(ids, exp, n * sizeof(int32_t)))) {
                r.match++;
            } else {
                fprintf(stderr, "%s: text %zu '%.*s' differs\n", name, i, (int)lens[i], texts[i]);
                print_ids("llama.cpp", exp, nexp);
                print_ids("tailor   ", ids, n);
            }
        }
        if (lossless && ids) { /* detokenize(tokenize(x)) == x without the space clean-up */
            size_t dl = 0;
            char *d = tl_detokenize_ex(t, ids, n, TL_DETOK_NO_CLEANUP, &dl);
            bool ok = dl == lens[i] && !memcmp(d, texts[i], dl);
            if (!ok) fprintf(stderr, "%s: round trip of text %zu gave '%s'\n", name, i, d);
            r.round_trips += ok;
            free(d);
        }
        free(ids);
    }
    return r;
}

int main(void) {
    const char *shared = tl_test_shared("data/tokenizer");
    char shared_dir[4096], cache_dir[4096];
    snprintf(shared_dir, sizeof shared_dir, "%s", shared);
    const char *env = getenv("TL_VOCABS"), *home = getenv("HOME");
    if (env && *env)
        snprintf(cache_dir, sizeof cache_dir, "%s", env);
    else
        snprintf(cache_dir, sizeof cache_dir, "%s/.cache/tailor/vocabs", home ? home : ".");
    scan(shared_dir, false);
    scan(cache_dir, true);
    qsort(ents, (size_t)n_ents, sizeof ents[0], cmp_ent);
    char stand_in[MAX_VOCABS][4096] = {{0}};
    for (int i = 0; i < n_ents; i++)
        for (size_t k = 0; k < sizeof STAND_INS / sizeof STAND_INS[0]; k++) {
            const char *m = tl_test_models(STAND_INS[k][1]);
            FILE *f = !ents[i].has_vocab && ents[i].has_test && !strcmp(ents[i].name, STAND_INS[k][0]) ? fopen(m, "rb") : NULL;
            if (f) {
                fclose(f);
                snprintf(stand_in[i], sizeof stand_in[i], "%s", m);
            }
        }

    /* the texts for vocabularies without their own test file: any .inp (they are all alike) */
    char *generic = NULL, *gtexts[MAX_TEXTS];
    size_t glen = 0, glens[MAX_TEXTS], ngt = 0;
    for (int i = 0; i < n_ents && !generic; i++)
        if (ents[i].has_test) {
            char p[4300];
            snprintf(p, sizeof p, "%s/%s.inp", ents[i].dir, ents[i].name);
            if ((generic = tl_test_read_file(p, &glen))) ngt = split_inp(generic, glen, gtexts, glens, MAX_TEXTS);
        }

    int beyond_shared = 0, tested = 0;
    printf("%-34s %-6s %-16s %5s %5s %7s %7s %5s  %s\n", "vocabulary", "model", "pre", "texts", "match", "llama.cpp",
           "tailor", "rt", "result");
    for (int i = 0; i < n_ents; i++) {
        const entry *e = &ents[i];
        char path[4300], test_path[4300];
        snprintf(path, sizeof path, "%s/%s", e->dir, e->name);
        snprintf(test_path, sizeof test_path, "%s", path);
        if (stand_in[i][0]) {
            printf("%s: the snapshot lacks it; its ids are checked with %s's vocabulary\n", e->name, stand_in[i]);
            snprintf(path, sizeof path, "%s", stand_in[i]);
        } else if (!e->has_vocab) {
            printf("%-34s %-6s %-16s %5s %5s %7s %7s %5s  no vocabulary (missing from the llama.cpp snapshot)\n",
                   e->name, "-", "-", "-", "-", "-", "-", "-");
            continue;
        }
        beyond_shared += e->from_cache && e->has_test;
        char *model = meta_str(path, "tokenizer.ggml.model"), *pre = meta_str(path, "tokenizer.ggml.pre");
        tl_error err = {{0}};
        tl_tokenizer *t = tl_tokenizer_open(path, &err);
        CHECKF(t != NULL, "%s: %s", e->name, err.msg);
        char *inp = NULL, *out = NULL, *texts[MAX_TEXTS];
        size_t ninp = 0, nout = 0, lens[MAX_TEXTS], nt = 0;
        if (e->has_test) {
            char p[4400];
            snprintf(p, sizeof p, "%s.inp", test_path);
            inp = tl_test_read_file(p, &ninp);
            snprintf(p, sizeof p, "%s.out", test_path);
            out = tl_test_read_file(p, &nout);
            CHECKF(inp && out, "%s: cannot read its .inp/.out", e->name);
            if (inp) nt = split_inp(inp, ninp, texts, lens, MAX_TEXTS);
            size_t lines = 0;
            for (size_t k = 0; out && k < nout; k++) lines += out[k] == '\n';
            CHECKF(!out || lines == nt, "%s: %zu texts but %zu lines of ids", e->name, nt, lines);
        } else if (generic) {
            memcpy(texts, gtexts, ngt * sizeof(char *));
            memcpy(lens, glens, ngt * sizeof(size_t));
            nt = ngt;
        }
        /* WordPiece lower-cases and drops accents: no round trip */
        bool lossless = strcmp(model, "bert") != 0;
        if (t && nt) {
            result r = check_vocab(e->name, t, texts, lens, nt, out, lossless);
            char rt[16];
            snprintf(rt, sizeof rt, lossless ? "%d" : "-", r.round_trips);
            if (out) {
                bool pass = r.match == r.texts && (!lossless || r.round_trips == r.texts);
                printf("%-34s %-6s %-16s %5d %5d %7zu %7zu %5s  %s\n", e->name, model, pre, r.texts, r.match,
                       r.tok_expected, r.tok_got, rt, pass ? "pass" : "FAIL");
                CHECKF(r.texts >= 30 && r.match == r.texts, "%s: %d/%d texts match llama.cpp", e->name, r.match,
                       r.texts);
                tested++;
            } else {
                printf("%-34s %-6s %-16s %5d %5s %7s %7zu %5s  no test file: loaded, round trips %s\n", e->name,
                       model, pre, r.texts, "-", "-", r.tok_got, rt,
                       !lossless || r.round_trips == r.texts ? "pass" : "FAIL");
            }
            if (lossless) CHECKF(r.round_trips == r.texts, "%s: %d/%d round trips", e->name, r.round_trips, r.texts);
        }
        free(inp);
        free(out);
        free(model);
        free(pre);
        tl_tokenizer_free(t);
    }
    free(generic);
    printf("%d vocabularies checked against llama.cpp's ids (%d of their test files from %s)\n", tested, beyond_shared,
           cache_dir);
    CHECK(tested >= 1);
    if (beyond_shared == 0)
        tl_test_skip("no vocabularies in %s beyond ../shared: run scripts/fetch-vocabs.sh LLAMA_CPP (a llama.cpp "
                     "tree or git directory) for the rest", cache_dir);
    return tl_test_done();
}
