/* tasks.c: see tasks.h. */
#define _GNU_SOURCE
#include "tasks.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keys, distractors and list words: common concrete English nouns (one to three tokens in the
 * usual vocabularies). */
static const char *const tl_words[] = {
    "apple", "river", "candle", "garden", "window", "mountain", "pencil", "rabbit", "violin", "blanket",
    "bottle", "bridge", "camera", "carpet", "castle", "cherry", "circle", "cloud", "coffee", "copper",
    "cotton", "crystal", "dolphin", "dragon", "engine", "feather", "forest", "fountain", "galaxy", "ginger",
    "glacier", "guitar", "hammer", "harbor", "helmet", "honey", "island", "jacket", "jungle", "kettle",
    "kitten", "ladder", "lantern", "lemon", "library", "lizard", "magnet", "marble", "meadow", "mirror",
    "monkey", "needle", "ocean", "orange", "orchid", "oyster", "palace", "panther", "parrot", "pepper",
    "piano", "pillow", "planet", "pocket", "potato", "puzzle", "pyramid", "quartz", "radio", "rainbow",
    "rocket", "saddle", "salmon", "sandal", "shadow", "shelter", "silver", "spider", "spoon", "statue",
    "subway", "sugar", "summer", "sunset", "tablet", "teacher", "temple", "thunder", "tiger", "tomato",
    "tower", "tractor", "trumpet", "tulip", "turtle", "umbrella", "valley", "velvet", "village", "volcano",
    "wagon", "walnut", "whistle", "wizard", "yogurt", "zebra", "anchor", "arrow", "bakery", "banana",
    "barrel", "basket", "beacon", "beetle", "biscuit", "blossom", "bracelet", "breeze", "bubble", "buffalo",
    "butter", "cabin", "cactus", "canyon", "captain", "carrot", "cathedral", "cello", "chimney", "cinnamon",
    "clover", "cobra", "compass", "coral", "cottage", "cradle", "crayon", "cricket", "cucumber", "daisy",
    "desert", "diamond", "donkey", "dragonfly", "eagle", "elephant", "emerald", "falcon", "ferry", "fiddle",
    "flamingo", "garlic", "giraffe", "goblet", "granite", "grape", "hamster", "hazel", "hedgehog", "hornet",
    "iceberg", "igloo", "ivory", "jaguar", "jasmine", "jellyfish", "kangaroo", "kayak", "keyboard", "kiwi",
    "koala", "lagoon", "lavender", "leopard", "lobster", "locket", "mango", "maple", "meteor", "mitten",
    "moose", "mosquito", "muffin", "mushroom", "napkin", "nectar", "nutmeg", "octopus", "olive", "onion",
    "otter", "owl", "paddle", "pancake", "papaya", "peacock", "pebble", "pelican", "penguin", "pepperoni",
    "pickle", "pigeon", "pineapple", "pirate", "plum", "pony", "poppy", "pumpkin", "quilt", "raccoon",
    "raven", "reindeer", "ribbon", "robin", "saffron", "sapphire", "scarf", "scooter", "seagull", "sparrow",
    "spinach", "squirrel", "stallion", "starfish", "strawberry", "swan", "sweater", "tambourine", "thistle",
    "thimble", "toffee", "tornado", "toucan", "trolley", "trout", "tunnel", "turnip", "unicorn", "vanilla",
    "vase", "vulture", "waffle", "walrus", "wasp", "whale", "willow", "wolf", "woodpecker", "yacht", "yarn",
    "acorn", "almond", "antelope", "apricot", "armadillo", "asteroid", "avocado", "badger", "bagpipe",
    "balloon", "bamboo", "beaver", "bicycle", "bison", "blender", "boulder", "broccoli", "bucket", "cabbage",
    "canoe", "caramel", "cardigan", "cashew", "cheetah", "chestnut", "chipmunk", "coconut", "comet",
    "cormorant", "cranberry", "crocodile", "cupcake", "dandelion", "dinosaur", "dumpling", "eggplant", "elk",
    "envelope", "fern", "fig", "firefly", "flute", "fossil", "gazelle", "gecko", "gondola", "gorilla", "harp",
    "heron", "hippo", "hyena", "iguana", "jigsaw", "juniper", "kiln", "lemur", "lettuce", "lynx", "macaw",
    "mandolin", "marigold", "marshmallow", "mole", "nightingale", "oatmeal", "ostrich", "panda", "parsley",
    "peach", "pear", "pistachio", "platypus", "porcupine", "pretzel", "puffin", "quail", "radish",
    "raspberry", "rhubarb", "sardine", "scorpion", "seahorse", "sloth", "snail", "sunflower", "tadpole",
    "tangerine", "teapot", "toaster", "tortoise", "trombone", "tuba", "walnutcake", "weasel", "zucchini",
};
#define N_WORDS ((int)(sizeof tl_words / sizeof *tl_words))

int32_t *tl_tokenize_piece(const tl_tokenizer *tok, const char *text, int *n, tl_error *err) {
    /* a SentencePiece vocab that prefixes the text with a space would double ours */
    if (tl_tok_add_space_prefix(tok) && text[0] == ' ') text++;
    const size_t len = strlen(text);
    size_t cap = len + 8, need = 0;
    int32_t *ids = tl_xmalloc(sizeof(int32_t) * cap);
    if (tl_tokenize(tok, text, len, false, false, ids, cap, &need, err)) goto fail;
    if (need > cap) {
        ids = tl_xrealloc(ids, sizeof(int32_t) * need);
        if (tl_tokenize(tok, text, len, false, false, ids, need, &need, err)) goto fail;
    }
    *n = (int)need;
    return ids;
fail:
    free(ids);
    tl_fail_prefix(err, "tokenizing '%.40s'", text);
    return NULL;
}

/* The start of the text: tokenized as a document start, with BOS when the vocab adds it. */
static int32_t *tokenize_start(const tl_tokenizer *tok, const char *text, int *n, tl_error *err) {
    const size_t len = strlen(text);
    size_t cap = len + 8, need = 0;
    int32_t *ids = tl_xmalloc(sizeof(int32_t) * (cap + 1));
    const int32_t bos = tl_tok_bos(tok);
    const int nb = tl_tok_add_bos(tok) && bos >= 0;
    if (tl_tokenize(tok, text, len, false, false, ids + nb, cap, &need, err)) goto fail;
    if (need > cap) {
        ids = tl_xrealloc(ids, sizeof(int32_t) * (need + 1));
        if (tl_tokenize(tok, text, len, false, false, ids + nb, need, &need, err)) goto fail;
    }
    if (nb) ids[0] = bos;
    *n = (int)need + nb;
    return ids;
fail:
    free(ids);
    return NULL;
}

static void hay_push(tl_haystack *h, const int32_t *ids, int n, int *cap_ids, int *cap_sent) {
    if (h->n_ids + n > *cap_ids) {
        *cap_ids = (int)(h->n_ids + n) * 2 + 1024;
        h->ids = tl_xrealloc(h->ids, sizeof(int32_t) * (size_t)*cap_ids);
    }
    if (h->n_sent + 2 > *cap_sent) {
        *cap_sent = h->n_sent * 2 + 64;
        h->off = tl_xrealloc(h->off, sizeof(int) * (size_t)*cap_sent);
    }
    memcpy(h->ids + h->n_ids, ids, sizeof(int32_t) * (size_t)n);
    h->off[h->n_sent] = (int)h->n_ids;
    h->n_ids += n;
    h->n_sent++;
    h->off[h->n_sent] = (int)h->n_ids;
}

int tl_haystack_from_text(tl_haystack *h, const tl_tokenizer *tok, const char *text, size_t len, int64_t max_tokens,
                          tl_error *err) {
    memset(h, 0, sizeof *h);
    int cap_ids = 0, cap_sent = 0;
    /* whitespace-normalized copy with a leading space: " S1. S2. ..." */
    char *norm = tl_xmalloc(len + 2);
    size_t n = 0;
    norm[n++] = ' ';
    for (size_t i = 0; i < len; i++) {
        const char c = text[i];
        const bool sp = c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
        if (sp) {
            if (norm[n - 1] != ' ') norm[n++] = ' ';
        } else {
            norm[n++] = c;
        }
    }
    while (n > 1 && norm[n - 1] == ' ') n--;
    norm[n] = 0;
    size_t a = 0; /* start of the current sentence (its leading space) */
    for (size_t i = 1; i <= n && (max_tokens <= 0 || h->n_ids < max_tokens); i++) {
        /* a sentence ends at . ! ? (plus closing quotes/brackets) followed by a space */
        const bool end_text = i == n;
        bool cut = end_text;
        if (!cut && norm[i] == ' ' && i > a + 1) {
            size_t j = i - 1;
            while (j > a && (norm[j] == '"' || norm[j] == '\'' || norm[j] == ')')) j--;
            cut = norm[j] == '.' || norm[j] == '!' || norm[j] == '?';
        }
        if (!cut || i <= a + 1) continue;
        const char saved = norm[i];
        norm[i] = 0;
        int k = 0;
        int32_t *ids = tl_tokenize_piece(tok, norm + a, &k, err);
        norm[i] = saved;
        if (!ids) {
            free(norm);
            tl_haystack_free(h);
            return -1;
        }
        if (k > 0) hay_push(h, ids, k, &cap_ids, &cap_sent);
        free(ids);
        a = i;
    }
    free(norm);
    if (h->n_sent == 0) return tl_fail(err, "haystack: no text");
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

char *tl_read_text_dir(const char *dir, const char *sep, size_t max, size_t *len, bool *cut, tl_error *err) {
    if (max == 0 || max > TL_TEXT_MAX_BYTES) max = TL_TEXT_MAX_BYTES;
    DIR *d = opendir(dir);
    if (!d) {
        tl_fail(err, "%s: %s", dir, strerror(errno));
        return NULL;
    }
    char **names = NULL;
    int nn = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".txt")) {
            names = tl_xrealloc(names, sizeof(char *) * (size_t)(nn + 1));
            names[nn++] = tl_xstrdup(e->d_name);
        }
    }
    closedir(d);
    if (nn) qsort(names, (size_t)nn, sizeof *names, cmp_str);
    const size_t nsep = strlen(sep);
    size_t n = 0;
    bool more = false;
    char *all = tl_xmalloc(1);
    for (int i = 0; i < nn && all; i++) {
        if (n >= max) {
            more = true;
            break;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        size_t got = 0;
        char *t = tl_read_text(path, max - n, &got, &more, err);
        if (t) {
            all = tl_xrealloc(all, n + got + nsep + 1);
            memcpy(all + n, t, got);
            n += got;
            if (!more) memcpy(all + n, sep, nsep), n += nsep;
        } else {
            free(all);
            all = NULL;
        }
        free(t);
        if (more) break;
    }
    for (int i = 0; i < nn; i++) free(names[i]);
    free(names);
    if (all && !nn) {
        free(all);
        all = NULL;
        tl_fail(err, "%s: no .txt files", dir);
    }
    if (!all) return NULL;
    all[n] = 0;
    if (len) *len = n;
    if (cut) *cut = more;
    return all;
}

/* The length of text up to the end of its last whole sentence (the sentence rule of
 * tl_haystack_from_text: . ! ? and closing quotes or brackets, then white space); 0 if none. */
static size_t whole_sentences(const char *text, size_t len) {
    for (size_t i = len; i-- > 1;) {
        if (!strchr(" \n\t\r\f\v", text[i]) || !text[i]) continue;
        size_t j = i - 1;
        while (j > 0 && (text[j] == '"' || text[j] == '\'' || text[j] == ')')) j--;
        if (text[j] == '.' || text[j] == '!' || text[j] == '?') return i;
    }
    return 0;
}

int tl_haystack_from_dir(tl_haystack *h, const tl_tokenizer *tok, const char *dir, int64_t max_tokens, tl_error *err) {
    memset(h, 0, sizeof *h);
    /* whole sentences only: a text cut by the byte budget drops its last, partial sentence, and
     * is read again with twice the budget when too few tokens are left */
    for (int64_t want = max_tokens;; want *= 2) {
        const size_t max = tl_tok_text_bytes(tok, want);
        size_t len = 0;
        bool cut = false;
        char *all = tl_read_text_dir(dir, "\n", max, &len, &cut, err);
        if (!all) return tl_fail_prefix(err, "haystack folder");
        if (cut) len = whole_sentences(all, len);
        const int rc = len ? tl_haystack_from_text(h, tok, all, len, max_tokens, err) : 0;
        free(all);
        if (rc) return tl_fail_prefix(err, "%s", dir);
        if (!cut || h->n_ids >= max_tokens || max >= TL_TEXT_MAX_BYTES) {
            if (h->n_sent == 0) return tl_fail(err, "haystack folder %s: no text", dir);
            return 0;
        }
        tl_haystack_free(h);
    }
}

void tl_haystack_free(tl_haystack *h) {
    free(h->ids);
    free(h->off);
    memset(h, 0, sizeof *h);
}

/* S tokens from the stream at *cursor: whole sentences, then the first (total - S) dropped. */
static int fill_segment(const tl_haystack *h, int *cursor, int S, int32_t *out, tl_error *err) {
    if (S == 0) return 0;
    if (!h || h->n_sent == 0) return tl_fail(err, "prompt: %d filler tokens needed but no haystack", S);
    int c = *cursor % h->n_sent, total = 0, m = 0;
    const int first = c;
    while (total < S) { /* sentences needed, wrapping around the stream */
        total += h->off[c + 1] - h->off[c];
        c = (c + 1) % h->n_sent;
        m++;
    }
    int drop = total - S, w = 0;
    for (int t = 0, k = first; t < m; t++, k = (k + 1) % h->n_sent)
        for (int j = h->off[k]; j < h->off[k + 1]; j++) {
            if (drop > 0) {
                drop--;
                continue;
            }
            out[w++] = h->ids[j];
        }
    *cursor = c;
    return 0;
}

static int cmp_needle_depth(const void *a, const void *b) {
    const struct {
        double d;
        int i;
    } *x = a, *y = b;
    if (x->d != y->d) return x->d < y->d ? -1 : 1;
    return x->i - y->i;
}

int tl_prompt_build(tl_prompt *p, const tl_tokenizer *tok, const tl_haystack *h, int start, const char *instruction,
                    const tl_needle *needles, int n_needles, const char *question, int len, tl_error *err) {
    memset(p, 0, sizeof *p);
    int np = 0, nq = 0, sumn = 0;
    int32_t *pre = tokenize_start(tok, instruction, &np, err), *q = NULL;
    int32_t **nd = tl_xcalloc((size_t)(n_needles + 1), sizeof *nd);
    int *nl = tl_xcalloc((size_t)(n_needles + 1), sizeof *nl);
    struct {
        double d;
        int i;
    } *order = tl_xcalloc((size_t)(n_needles + 1), sizeof *order);
    int rc = -1;
    if (!pre || !(q = tl_tokenize_piece(tok, question, &nq, err))) goto done;
    for (int i = 0; i < n_needles; i++) {
        if (!(nd[i] = tl_tokenize_piece(tok, needles[i].text, &nl[i], err))) goto done;
        if (!(needles[i].depth >= 0 && needles[i].depth <= 1)) {
            tl_fail(err, "needle depth %g outside 0..1", needles[i].depth);
            goto done;
        }
        sumn += nl[i];
        order[i].d = needles[i].depth;
        order[i].i = i;
    }
    qsort(order, (size_t)n_needles, sizeof *order, cmp_needle_depth);
    const int H = len - np - nq - sumn;
    if (H < 0) {
        tl_fail(err, "prompt: %d tokens asked, but instruction, needles and question alone take %d", len,
                len - H);
        goto done;
    }
    p->ids = tl_xmalloc(sizeof(int32_t) * (size_t)(len > 0 ? len : 1));
    p->needle_pos = tl_xcalloc((size_t)(n_needles + 1), sizeof(int));
    p->needle_len = tl_xcalloc((size_t)(n_needles + 1), sizeof(int));
    p->n_needles = n_needles;
    p->prefix_len = np;
    p->question_len = nq;
    memcpy(p->ids, pre, sizeof(int32_t) * (size_t)np);
    int w = np, cursor = h && h->n_sent ? start % h->n_sent : 0, prev = 0;
    if (cursor < 0) cursor += h->n_sent;
    for (int k = 0; k < n_needles; k++) {
        const int i = order[k].i;
        const int at = (int)llround(order[k].d * H); /* haystack tokens before this needle */
        if (fill_segment(h, &cursor, at - prev, p->ids + w, err)) goto done;
        w += at - prev;
        prev = at;
        p->needle_pos[k] = w;
        p->needle_len[k] = nl[i];
        memcpy(p->ids + w, nd[i], sizeof(int32_t) * (size_t)nl[i]);
        w += nl[i];
    }
    if (fill_segment(h, &cursor, H - prev, p->ids + w, err)) goto done;
    w += H - prev;
    memcpy(p->ids + w, q, sizeof(int32_t) * (size_t)nq);
    w += nq;
    p->n = w;
    rc = 0;
done:
    if (rc) tl_prompt_free(p);
    for (int i = 0; i < n_needles; i++) free(nd[i]);
    free(nd);
    free(nl);
    free(order);
    free(pre);
    free(q);
    return rc;
}

void tl_prompt_free(tl_prompt *p) {
    free(p->ids);
    free(p->needle_pos);
    free(p->needle_len);
    memset(p, 0, sizeof *p);
}

/* ---- tasks ---- */

static const char *const task_names[TL_TASK_COUNT] = {"passkey", "niah_single", "niah_multikey", "niah_multivalue",
                                                      "niah_multiquery", "vt", "cwe"};

const char *tl_task_name(tl_task_kind k) { return (unsigned)k < TL_TASK_COUNT ? task_names[k] : "?"; }

int tl_task_parse(const char *name) {
    for (int i = 0; i < TL_TASK_COUNT; i++)
        if (!strcmp(name, task_names[i])) return i;
    static const struct {
        const char *alias;
        int kind;
    } aliases[] = {{"single", TL_TASK_NIAH_SINGLE}, {"niah_single_1", TL_TASK_NIAH_SINGLE},
                   {"niah_single_2", TL_TASK_NIAH_SINGLE}, {"multikey", TL_TASK_NIAH_MULTIKEY},
                   {"niah_multikey_1", TL_TASK_NIAH_MULTIKEY}, {"multivalue", TL_TASK_NIAH_MULTIVALUE},
                   {"niah_multivalue", TL_TASK_NIAH_MULTIVALUE}, {"multiquery", TL_TASK_NIAH_MULTIQUERY},
                   {"niah_multiquery", TL_TASK_NIAH_MULTIQUERY}, {"variable_tracking", TL_TASK_VT},
                   {"common_words", TL_TASK_CWE}};
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        if (!strcmp(name, aliases[i].alias)) return aliases[i].kind;
    return -1;
}

static const char *INSTR_PASSKEY = "There is an important info hidden inside a lot of irrelevant text. Find it and "
                                   "memorize it. I will quiz you about the important information there.";
static const char *INSTR_MAGIC = "Some special magic numbers are hidden within the following text. Make sure to "
                                 "memorize it. I will quiz you about the numbers afterwards.";
static const char *INSTR_VT = "Memorize and track the chain(s) of variable assignment hidden in the following text.";
static const char *INSTR_CWE = "Below is a numbered list of words. In these words, some appear more often than "
                               "others. Memorize the ones that appear most often.";

static void add_ref(tl_task_sample *s, const char *r) {
    s->refs = tl_xrealloc(s->refs, sizeof(char *) * (size_t)(s->n_refs + 1));
    s->refs[s->n_refs++] = tl_xstrdup(r);
}

/* k distinct indices below n */
static void pick_distinct(tl_rng *r, int n, int k, int *out) {
    for (int i = 0; i < k; i++) {
        int v, dup;
        do {
            v = (int)tl_rng_below(r, (uint64_t)n);
            dup = 0;
            for (int j = 0; j < i; j++) dup |= out[j] == v;
        } while (dup);
        out[i] = v;
    }
}

static int distinct_number(tl_rng *r, int lo, int span, const int *used, int n_used) {
    for (;;) {
        int v = lo + (int)tl_rng_below(r, (uint64_t)span), dup = 0;
        for (int j = 0; j < n_used; j++) dup |= used[j] == v;
        if (!dup) return v;
    }
}

static int gen_cwe(tl_task_sample *s, const tl_tokenizer *tok, int len, tl_rng *r, tl_error *err);

int tl_task_generate(tl_task_sample *s, tl_task_kind kind, const tl_tokenizer *tok, const tl_haystack *h, int len,
                     double depth, uint64_t seed, tl_error *err) {
    memset(s, 0, sizeof *s);
    /* one stream per (kind, seed): tasks do not share random choices */
    tl_rng r = {seed * 0x100000001B3ull + (uint64_t)kind * 0x9E3779B97F4A7C15ull + 1};
    /* Offsetting the start by kind * the generator's increment would make each kind's stream
     * a shifted copy of another's (same numbers in different tasks): hash the start instead.
     * The passkey keeps the plain start, which the grids in docs/accuracy.md were made with. */
    if (kind != TL_TASK_PASSKEY) r.s = tl_rng_next(&r) ^ 0xD1B54A32D192ED03ull * (uint64_t)(kind + 1);
    snprintf(s->task, sizeof s->task, "%s", tl_task_name(kind));
    s->depth = depth;
    s->metric = TL_METRIC_ALL;
    s->max_new = 16;
    s->stop_newline = true;
    if (kind == TL_TASK_CWE) return gen_cwe(s, tok, len, &r, err);
    char texts[8][256], question[1024];
    tl_needle nd[8];
    int n_nd = 0, nums[8], keys[8];
    const char *instr = INSTR_MAGIC;
    const int start = h && h->n_sent ? (int)tl_rng_below(&r, (uint64_t)h->n_sent) : 0;
    switch (kind) {
    case TL_TASK_PASSKEY: {
        const int pk = 10000 + (int)tl_rng_below(&r, 90000);
        snprintf(texts[0], 256, " The pass key is %d. Remember it. %d is the pass key.", pk, pk);
        n_nd = 1;
        snprintf(question, sizeof question, " What is the pass key? The pass key is");
        instr = INSTR_PASSKEY;
        s->metric = TL_METRIC_NUMBER;
        s->max_new = 8;
        char ref[16];
        snprintf(ref, sizeof ref, "%d", pk);
        add_ref(s, ref);
        break;
    }
    case TL_TASK_NIAH_SINGLE:
    case TL_TASK_NIAH_MULTIKEY: {
        n_nd = kind == TL_TASK_NIAH_SINGLE ? 1 : 4;
        pick_distinct(&r, N_WORDS, n_nd, keys);
        for (int i = 0; i < n_nd; i++) {
            nums[i] = distinct_number(&r, 1000000, 9000000, nums, i);
            snprintf(texts[i], 256, " One of the special magic numbers for %s is: %d.", tl_words[keys[i]], nums[i]);
        }
        snprintf(question, sizeof question,
                 " What is the special magic number for %s mentioned in the provided text? The special magic "
                 "number for %s mentioned in the provided text is",
                 tl_words[keys[0]], tl_words[keys[0]]);
        char ref[16];
        snprintf(ref, sizeof ref, "%d", nums[0]);
        add_ref(s, ref);
        s->max_new = 12;
        break;
    }
    case TL_TASK_NIAH_MULTIVALUE:
    case TL_TASK_NIAH_MULTIQUERY: {
        n_nd = 4;
        pick_distinct(&r, N_WORDS, n_nd, keys);
        if (kind == TL_TASK_NIAH_MULTIVALUE)
            for (int i = 1; i < n_nd; i++) keys[i] = keys[0];
        for (int i = 0; i < n_nd; i++) {
            nums[i] = distinct_number(&r, 1000000, 9000000, nums, i);
            snprintf(texts[i], 256, " One of the special magic numbers for %s is: %d.", tl_words[keys[i]], nums[i]);
            char ref[16];
            snprintf(ref, sizeof ref, "%d", nums[i]);
            add_ref(s, ref);
        }
        if (kind == TL_TASK_NIAH_MULTIVALUE)
            snprintf(question, sizeof question,
                     " What are all the special magic numbers for %s mentioned in the provided text? The special "
                     "magic numbers for %s mentioned in the provided text are",
                     tl_words[keys[0]], tl_words[keys[0]]);
        else {
            char ks[200];
            snprintf(ks, sizeof ks, "%s, %s, %s and %s", tl_words[keys[0]], tl_words[keys[1]], tl_words[keys[2]],
                     tl_words[keys[3]]);
            snprintf(question, sizeof question,
                     " What are all the special magic numbers for %s mentioned in the provided text? The special "
                     "magic numbers for %s mentioned in the provided text are",
                     ks, ks);
        }
        s->max_new = 48;
        s->stop_newline = false;
        break;
    }
    case TL_TASK_VT: {
        n_nd = 5;
        char names[5][6];
        for (int i = 0; i < n_nd; i++) {
            for (int c = 0; c < 5; c++) names[i][c] = (char)('A' + tl_rng_below(&r, 26));
            names[i][5] = 0;
        }
        const int val = 10000 + (int)tl_rng_below(&r, 90000);
        snprintf(texts[0], 256, " VAR %s = %d.", names[0], val);
        for (int i = 1; i < n_nd; i++) snprintf(texts[i], 256, " VAR %s = VAR %s.", names[i], names[i - 1]);
        for (int i = 0; i < n_nd; i++) add_ref(s, names[i]);
        snprintf(question, sizeof question,
                 " Question: Find all variables that are assigned the value %d in the text above. Answer: According "
                 "to the chain(s) of variable assignment in the text above, %d variables are assigned the value %d, "
                 "they are:",
                 val, n_nd, val);
        instr = INSTR_VT;
        s->max_new = 40;
        s->stop_newline = false;
        break;
    }
    default:
        return tl_fail(err, "task kind %d unknown", (int)kind);
    }
    /* depths: the first needle at `depth` (grid), the others (and all, when depth < 0) random;
     * variable tracking keeps its chain in order */
    double dd[8];
    for (int i = 0; i < n_nd; i++) dd[i] = tl_rng_unit(&r);
    if (depth >= 0) dd[0] = depth;
    if (kind == TL_TASK_VT)
        for (int i = 1; i < n_nd; i++)
            for (int j = i; j > 0 && dd[j] < dd[j - 1]; j--) {
                double t = dd[j];
                dd[j] = dd[j - 1];
                dd[j - 1] = t;
            }
    for (int i = 0; i < n_nd; i++) nd[i] = (tl_needle){texts[i], dd[i]};
    if (tl_prompt_build(&s->prompt, tok, h, start, instr, nd, n_nd, question, len, err)) {
        tl_fail_prefix(err, "%s", s->task);
        tl_task_sample_free(s);
        return -1;
    }
    return 0;
}

/* Common-words extraction: a numbered list where 10 words occur often and the others rarely;
 * filled until the next item would pass len (so the prompt may be a few tokens short). */
static int gen_cwe(tl_task_sample *s, const tl_tokenizer *tok, int len, tl_rng *r, tl_error *err) {
    const char *question = " Question: What are the 10 most common words in the above list? Answer: The top 10 "
                           "words that appear most often in the list are:";
    int np = 0, nq = 0;
    int32_t *pre = tokenize_start(tok, INSTR_CWE, &np, err);
    int32_t *q = pre ? tl_tokenize_piece(tok, question, &nq, err) : NULL;
    if (!q) {
        free(pre);
        return -1;
    }
    const int H = len - np - nq;
    /* estimate tokens per item to size the list */
    double per = 0;
    for (int i = 0; i < 16; i++) {
        char item[64];
        snprintf(item, sizeof item, " %d. %s", 100 + i, tl_words[i * 7 % N_WORDS]);
        int k = 0;
        int32_t *ids = tl_tokenize_piece(tok, item, &k, err);
        free(ids);
        per += k / 16.0;
    }
    const int n_items = per > 0 ? (int)(H / per) + 8 : 0;
    int perm[N_WORDS];
    for (int i = 0; i < N_WORDS; i++) perm[i] = i;
    for (int i = N_WORDS - 1; i > 0; i--) {
        int j = (int)tl_rng_below(r, (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    const int n_common = 10;
    /* RULER's frequencies (common words 30 times, rare ones 3 times); past what the word list
     * can fill, rare words repeat more and common ones stay at least 3x as frequent; short
     * lists scale the common frequency down */
    int f_rare = 3, f_common = 30, n_rare = 0;
    if (n_items - n_common * f_common > (N_WORDS - n_common) * f_rare) {
        f_rare = (n_items - n_common * f_common + N_WORDS - n_common - 1) / (N_WORDS - n_common);
        if (f_common < 3 * f_rare) f_common = 3 * f_rare;
    } else if (n_items < 2 * n_common * f_common) {
        f_common = n_items / 20 > 6 ? n_items / 20 : 6;
    }
    n_rare = (n_items - n_common * f_common) / f_rare;
    if (n_rare < 0) n_rare = 0;
    if (n_rare > N_WORDS - n_common) n_rare = N_WORDS - n_common;
    int total = n_common * f_common + n_rare * f_rare;
    int *list = tl_xmalloc(sizeof(int) * (size_t)total);
    int w = 0;
    for (int i = 0; i < n_common; i++)
        for (int k = 0; k < f_common; k++) list[w++] = perm[i];
    for (int i = n_common; i < n_common + n_rare; i++)
        for (int k = 0; k < f_rare; k++) list[w++] = perm[i];
    for (int i = total - 1; i > 0; i--) {
        int j = (int)tl_rng_below(r, (uint64_t)(i + 1)), t = list[i];
        list[i] = list[j];
        list[j] = t;
    }
    s->prompt.ids = tl_xmalloc(sizeof(int32_t) * (size_t)(len > 0 ? len : 1));
    int n = 0, rc = 0;
    if (np + nq > len) {
        rc = tl_fail(err, "cwe: %d tokens too few for the instruction and question", len);
        goto done;
    }
    memcpy(s->prompt.ids, pre, sizeof(int32_t) * (size_t)np);
    n = np;
    for (int i = 0; i < total; i++) {
        char item[64];
        snprintf(item, sizeof item, " %d. %s", i + 1, tl_words[list[i]]);
        int k = 0;
        int32_t *ids = tl_tokenize_piece(tok, item, &k, err);
        if (!ids) {
            rc = -1;
            goto done;
        }
        const bool fits = n + k + nq <= len;
        if (fits) memcpy(s->prompt.ids + n, ids, sizeof(int32_t) * (size_t)k);
        free(ids);
        if (!fits) break;
        n += k;
    }
    memcpy(s->prompt.ids + n, q, sizeof(int32_t) * (size_t)nq);
    s->prompt.n = n + nq;
    s->prompt.prefix_len = np;
    s->prompt.question_len = nq;
    for (int i = 0; i < n_common; i++) add_ref(s, tl_words[perm[i]]);
    s->max_new = 64;
    s->stop_newline = false;
done:
    free(list);
    free(pre);
    free(q);
    if (rc) tl_task_sample_free(s);
    return rc;
}

void tl_task_sample_free(tl_task_sample *s) {
    tl_prompt_free(&s->prompt);
    for (int i = 0; i < s->n_refs; i++) free(s->refs[i]);
    free(s->refs);
    s->refs = NULL;
    s->n_refs = 0;
}
