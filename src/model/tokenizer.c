/* tokenizer.c: GGUF tokenizers with llama.cpp's semantics (see tokenizer.h).
 *
 * Pipeline of tl_tokenize, as llama.cpp's llama_vocab::tokenize:
 *  1. validate UTF-8 (we reject invalid input; llama.cpp would substitute U+FFFD);
 *  2. partition the text at special tokens: control/unknown tokens only when parse_special,
 *     user-defined tokens always; longer tokens take precedence (see partition());
 *  3. each remaining text fragment goes through the vocab's tokenizer:
 *     - "llama" (SPM): " " -> "▁" (plus a leading "▁" when add_space_prefix and the fragment
 *       starts the text or follows a special token), then greedy merging of adjacent symbols
 *       into the highest-scoring vocab token, with <0xXX> byte fallback;
 *     - "gpt2" (byte-level BPE): pre-tokenizer split (tokenizer_pretok.c), bytes mapped to
 *       GPT-2's printable codepoints, then merging by merge rank within each word;
 *     - "bert" (WordPiece): normalised words cut into the longest tokens (wpm_fragment);
 *  4. BOS/EOS around it when add_special and the vocab asks for them. */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_pretok.h"
#include "../base/unicode.h"

/* token attributes (llama.cpp's llama_token_attr bits) */
enum {
    A_UNKNOWN = 1 << 0,
    A_UNUSED = 1 << 1,
    A_NORMAL = 1 << 2,
    A_CONTROL = 1 << 3,
    A_USER = 1 << 4,
    A_BYTE = 1 << 5,
    A_LSTRIP = 1 << 7,
    A_RSTRIP = 1 << 8,
};

enum { VOCAB_SPM, VOCAB_BPE, VOCAB_WPM };

typedef struct {
    uint32_t off, len; /* text in t->text (NUL-terminated there) */
    uint32_t poff, plen; /* piece (render_special = true) in t->pieces */
    float score;
    uint16_t attr;
} tok_t;

typedef struct {
    uint32_t off, llen, rlen; /* left then right text in t->mtext */
    int32_t rank;
} merge_t;

struct tl_tokenizer {
    int type;
    tl_pretok pre;
    int32_t n_vocab;
    tok_t *toks;
    char *text;   /* all token texts, each NUL-terminated */
    char *pieces; /* all pieces */

    int32_t *tmap; /* text -> id, open addressing, -1 = empty */
    uint64_t tmap_mask;

    merge_t *merges;
    int32_t n_merges;
    char *mtext;
    int32_t *mmap; /* (left, right) -> index into merges */
    uint64_t mmap_mask;

    int32_t bos, eos, eot, eom, unk, sep;
    size_t max_piece; /* longest piece in bytes */
    size_t max_text;  /* longest token text in bytes (WordPiece's longest match) */
    bool add_bos, add_eos, add_space_prefix, ignore_merges, clean_spaces;
    int32_t *eog;
    size_t n_eog;

    /* special tokens matched in text: ordered by decreasing length (then id), and a trie of
     * their texts whose nodes carry the rank in that order */
    int32_t *spec;
    size_t n_spec, n_spec_user;
    int32_t *trie_rank;   /* per node: rank of the token ending here, -1 */
    size_t trie_nodes;
    uint64_t *edge_key;   /* (node << 8 | byte) + 1, 0 = empty */
    int32_t *edge_child;
    uint64_t edge_mask;

    uint16_t byte_cp[256]; /* GPT-2 byte -> printable codepoint */
    char byte_utf8[256][2];
    uint8_t byte_utf8_len[256];
    int16_t cp_byte[324];  /* inverse, -1 where the codepoint is not a byte image */
};

/* ---------------------------------------------------------------- small helpers */

#define FNV0 0xcbf29ce484222325ull
static uint64_t fnv(uint64_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t table_size(size_t n) {
    uint64_t sz = 16;
    while (sz < 2 * (uint64_t)n) sz <<= 1;
    return sz;
}

typedef struct {
    int32_t *v;
    size_t n, cap;
} ivec;

static void ivec_push(ivec *a, int32_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 256;
        a->v = tl_xrealloc(a->v, a->cap * sizeof(int32_t));
    }
    a->v[a->n++] = x;
}

static bool is_space_c(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static bool valid_id(const tl_tokenizer *t, int32_t id) { return id >= 0 && id < t->n_vocab; }

/* ---------------------------------------------------------------- token lookup */

static int32_t tok_find_n(const tl_tokenizer *t, const char *s, size_t n) {
    uint64_t i = fnv(FNV0, s, n) & t->tmap_mask;
    for (;;) {
        int32_t id = t->tmap[i];
        if (id < 0) return -1;
        if (t->toks[id].len == n && memcmp(t->text + t->toks[id].off, s, n) == 0) return id;
        i = (i + 1) & t->tmap_mask;
    }
}

static int32_t merge_rank(const tl_tokenizer *t, const char *l, size_t ln, const char *r, size_t rn) {
    uint64_t h = fnv(fnv(fnv(FNV0, l, ln), "\xff", 1), r, rn);
    for (uint64_t i = h & t->mmap_mask;; i = (i + 1) & t->mmap_mask) {
        int32_t k = t->mmap[i];
        if (k < 0) return -1;
        const merge_t *m = &t->merges[k];
        if (m->llen == ln && m->rlen == rn && memcmp(t->mtext + m->off, l, ln) == 0 &&
            memcmp(t->mtext + m->off + ln, r, rn) == 0)
            return m->rank;
    }
}

/* ---------------------------------------------------------------- accessors */

int32_t tl_tok_n_vocab(const tl_tokenizer *t) { return t->n_vocab; }
int32_t tl_tok_bos(const tl_tokenizer *t) { return t->bos; }
int32_t tl_tok_eos(const tl_tokenizer *t) { return t->eos; }
int32_t tl_tok_sep(const tl_tokenizer *t) { return t->sep; }
bool tl_tok_add_bos(const tl_tokenizer *t) { return t->add_bos; }
bool tl_tok_add_eos(const tl_tokenizer *t) { return t->add_eos; }
bool tl_tok_add_space_prefix(const tl_tokenizer *t) { return t->add_space_prefix; }
size_t tl_tok_max_piece(const tl_tokenizer *t) { return t->max_piece; }

bool tl_tok_is_eog(const tl_tokenizer *t, int32_t id) {
    if (id < 0) return false;
    for (size_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return true;
    return false;
}

const char *tl_token_text(const tl_tokenizer *t, int32_t id) {
    return valid_id(t, id) ? t->text + t->toks[id].off : "";
}

int32_t tl_token_find(const tl_tokenizer *t, const char *text) { return tok_find_n(t, text, strlen(text)); }

size_t tl_tok_text_bytes(const tl_tokenizer *t, int64_t n_tokens) {
    uint32_t longest = 1; /* a token's piece holds all the bytes of text it stands for */
    for (int32_t i = 0; i < t->n_vocab; i++) longest = TL_MAX(longest, t->toks[i].plen);
    const double bytes = ((double)n_tokens + 16) * longest;
    return n_tokens <= 0 || bytes >= (double)TL_TEXT_MAX_BYTES ? TL_TEXT_MAX_BYTES : (size_t)bytes;
}

size_t tl_token_to_piece(const tl_tokenizer *t, int32_t id, bool render_special, char *buf, size_t cap) {
    if (!valid_id(t, id)) return 0;
    const tok_t *k = &t->toks[id];
    if (!render_special && (k->attr & (A_UNKNOWN | A_CONTROL))) return 0;
    if (buf && cap) memcpy(buf, t->pieces + k->poff, TL_MIN(cap, (size_t)k->plen));
    return k->plen;
}

/* ---------------------------------------------------------------- loading */

void tl_tokenizer_free(tl_tokenizer *t) {
    if (!t) return;
    free(t->toks);
    free(t->text);
    free(t->pieces);
    free(t->tmap);
    free(t->merges);
    free(t->mtext);
    free(t->mmap);
    free(t->eog);
    free(t->spec);
    free(t->trie_rank);
    free(t->edge_key);
    free(t->edge_child);
    free(t);
}

static int build_token_map(tl_tokenizer *t, const char *path, tl_error *err) {
    uint64_t sz = table_size((size_t)t->n_vocab);
    t->tmap = malloc(sz * sizeof(int32_t));
    if (!t->tmap) return tl_fail(err, "%s: out of memory for the token table", path);
    memset(t->tmap, 0xff, sz * sizeof(int32_t));
    t->tmap_mask = sz - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text + t->toks[id].off;
        uint32_t n = t->toks[id].len;
        uint64_t i = fnv(FNV0, s, n) & t->tmap_mask;
        while (t->tmap[i] >= 0) {
            int32_t o = t->tmap[i];
            if (t->toks[o].len == n && memcmp(t->text + t->toks[o].off, s, n) == 0)
                /* llama.cpp asserts on this too (its text->id map would lose a token) */
                return tl_fail(err, "%s: tokenizer.ggml.tokens: tokens %d and %d have the same text", path, o, id);
            i = (i + 1) & t->tmap_mask;
        }
        t->tmap[i] = id;
    }
    return 0;
}

static int load_merges(tl_tokenizer *t, const tl_gguf *g, const char *path, tl_error *err) {
    const tl_gguf_value *v = tl_gguf_find(g, "tokenizer.ggml.merges");
    if (!v) return tl_fail(err, "%s: gpt2 tokenizer without tokenizer.ggml.merges", path);
    if (v->type != TL_GGUF_ARRAY || v->v.arr.elem_type != TL_GGUF_STRING)
        return tl_fail(err, "%s: tokenizer.ggml.merges: expected an array of strings", path);
    if (v->v.arr.n > INT32_MAX) return tl_fail(err, "%s: tokenizer.ggml.merges: too many merges", path);
    int32_t n = (int32_t)v->v.arr.n;
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) total += tl_gguf_arr_str(v, (uint64_t)i).len;
    if (total > UINT32_MAX) return tl_fail(err, "%s: tokenizer.ggml.merges: too large", path);
    t->merges = malloc(((size_t)n + 1) * sizeof(merge_t));
    t->mtext = malloc(total + 1);
    uint64_t sz = table_size((size_t)n);
    t->mmap = malloc(sz * sizeof(int32_t));
    if (!t->merges || !t->mtext || !t->mmap) return tl_fail(err, "%s: out of memory for %d merges", path, n);
    memset(t->mmap, 0xff, sz * sizeof(int32_t));
    t->mmap_mask = sz - 1;
    size_t off = 0;
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++) {
        tl_gguf_str s = tl_gguf_arr_str(v, (uint64_t)i);
        /* "left right", split at the first space after the first byte; no space: ("", "") */
        size_t sp = 0;
        for (size_t j = 1; j < s.len; j++)
            if (s.ptr[j] == ' ') {
                sp = j;
                break;
            }
        const char *l = s.ptr, *r = sp ? s.ptr + sp + 1 : "";
        size_t ln = sp ? sp : 0, rn = sp ? s.len - sp - 1 : 0;
        if (merge_rank(t, l, ln, r, rn) >= 0) continue; /* duplicate: the first rank stays */
        merge_t *m = &t->merges[k];
        m->off = (uint32_t)off;
        m->llen = (uint32_t)ln;
        m->rlen = (uint32_t)rn;
        m->rank = i;
        memcpy(t->mtext + off, l, ln);
        memcpy(t->mtext + off + ln, r, rn);
        off += ln + rn;
        uint64_t h = fnv(fnv(fnv(FNV0, l, ln), "\xff", 1), r, rn);
        uint64_t j = h & t->mmap_mask;
        while (t->mmap[j] >= 0) j = (j + 1) & t->mmap_mask;
        t->mmap[j] = k++;
    }
    t->n_merges = k;
    return 0;
}

/* Piece of a token as llama.cpp's token_to_piece(special = true). */
static void make_piece(const tl_tokenizer *t, int32_t id, tl_strbuf *out) {
    const tok_t *k = &t->toks[id];
    const char *s = t->text + k->off;
    size_t n = k->len;
    if (k->attr & (A_UNKNOWN | A_CONTROL | A_USER)) {
        tl_strbuf_put(out, s, n);
    } else if (k->attr & A_NORMAL) {
        if (t->type != VOCAB_BPE) { /* SentencePiece and WordPiece: "▁" is a space */
            for (size_t i = 0; i < n;) {
                if (n - i >= 3 && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                    tl_strbuf_put(out, " ", 1);
                    i += 3;
                } else {
                    tl_strbuf_put(out, s + i, 1);
                    i++;
                }
            }
        } else {
            /* byte-level BPE: each codepoint is the image of one byte */
            for (size_t i = 0; i < n;) {
                uint32_t cp = tl_utf8_decode_lax(s, n, &i);
                if (cp < 324 && t->cp_byte[cp] >= 0) {
                    char b = (char)t->cp_byte[cp];
                    tl_strbuf_put(out, &b, 1);
                } else { /* not a byte image: llama.cpp writes this marker */
                    char u[4], hex[16];
                    int ul = tl_utf8_encode(cp, u);
                    tl_strbuf_put(out, "[UNK_BYTE_0x", 12);
                    for (int j = 0; j < ul; j++) {
                        snprintf(hex, sizeof hex, "%02x", (uint8_t)u[j]);
                        tl_strbuf_put(out, hex, 2);
                    }
                    tl_strbuf_put(out, s, n);
                    tl_strbuf_put(out, "]", 1);
                }
            }
        }
    } else if ((k->attr & A_BYTE) && t->type == VOCAB_SPM && n >= 3) {
        char hex[3] = {s[3], n > 4 ? s[4] : 0, 0}; /* "<0xAB>" */
        char b = (char)strtol(hex, NULL, 16);
        tl_strbuf_put(out, &b, 1);
    }
}

static int build_pieces(tl_tokenizer *t, const char *path, tl_error *err) {
    tl_strbuf b = {0};
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t start = b.n;
        make_piece(t, id, &b);
        if (b.n > UINT32_MAX) {
            free(b.p);
            return tl_fail(err, "%s: token pieces exceed 4 GiB", path);
        }
        t->toks[id].poff = (uint32_t)start;
        t->toks[id].plen = (uint32_t)(b.n - start);
        t->max_piece = TL_MAX(t->max_piece, b.n - start);
    }
    tl_strbuf_put(&b, "", 0);
    t->pieces = b.p;
    return 0;
}

static int32_t trie_child(const tl_tokenizer *t, int32_t node, uint8_t c) {
    uint64_t key = ((uint64_t)node << 8 | c) + 1;
    for (uint64_t i = (key * 0x9e3779b97f4a7c15ull >> 20) & t->edge_mask;; i = (i + 1) & t->edge_mask) {
        if (t->edge_key[i] == key) return t->edge_child[i];
        if (t->edge_key[i] == 0) return -1;
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int build_specials(tl_tokenizer *t, const char *path, tl_error *err) {
    size_t n = 0, chars = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->toks[id].attr & (A_CONTROL | A_USER | A_UNKNOWN)) {
            n++;
            chars += t->toks[id].len;
        }
    t->spec = malloc((n + 1) * sizeof(int32_t));
    t->trie_rank = malloc((chars + 1) * sizeof(int32_t));
    uint64_t esz = table_size(chars + 1);
    t->edge_key = calloc(esz, sizeof(uint64_t));
    t->edge_child = malloc(esz * sizeof(int32_t));
    if (!t->spec || !t->trie_rank || !t->edge_key || !t->edge_child)
        return tl_fail(err, "%s: out of memory for %zu special tokens", path, n);
    t->edge_mask = esz - 1;
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->toks[id].attr & (A_CONTROL | A_USER | A_UNKNOWN)) t->spec[n++] = id;
    t->n_spec = n;
    /* llama.cpp sorts by length only (unstable); we break ties by id */
    uint64_t *keys = malloc((n + 1) * sizeof(uint64_t));
    if (!keys) return tl_fail(err, "%s: out of memory for %zu special tokens", path, n);
    for (size_t i = 0; i < n; i++) keys[i] = (uint64_t)(UINT32_MAX - t->toks[t->spec[i]].len) << 32 | (uint32_t)t->spec[i];
    qsort(keys, n, sizeof(uint64_t), cmp_u64);
    for (size_t i = 0; i < n; i++) t->spec[i] = (int32_t)(uint32_t)keys[i];
    free(keys);
    t->trie_nodes = 1;
    t->trie_rank[0] = -1;
    for (size_t r = 0; r < n; r++) {
        const tok_t *k = &t->toks[t->spec[r]];
        if (k->attr & A_USER) t->n_spec_user++;
        const char *s = t->text + k->off;
        int32_t node = 0;
        for (uint32_t j = 0; j < k->len; j++) {
            int32_t c = trie_child(t, node, (uint8_t)s[j]);
            if (c < 0) {
                c = (int32_t)t->trie_nodes++;
                t->trie_rank[c] = -1;
                uint64_t key = ((uint64_t)node << 8 | (uint8_t)s[j]) + 1;
                uint64_t i = (key * 0x9e3779b97f4a7c15ull >> 20) & t->edge_mask;
                while (t->edge_key[i]) i = (i + 1) & t->edge_mask;
                t->edge_key[i] = key;
                t->edge_child[i] = c;
            }
            node = c;
        }
        if (t->trie_rank[node] < 0) t->trie_rank[node] = (int32_t)r;
    }
    return 0;
}


static void eog_add(tl_tokenizer *t, int32_t id) {
    if (!valid_id(t, id) || tl_tok_is_eog(t, id)) return;
    if ((t->n_eog & 15) == 0) t->eog = tl_xrealloc(t->eog, (t->n_eog + 16) * sizeof(int32_t));
    t->eog[t->n_eog++] = id;
}

static bool text_in(const char *s, size_t n, const char *const *list) {
    for (; *list; list++)
        if (strlen(*list) == n && memcmp(*list, s, n) == 0) return true;
    return false;
}

/* llama.cpp's auto-detection of EOT/EOM/FIM tokens by text, the "control-looking" type
 * override, and the end-of-generation set. llama.cpp scans its hash map in unspecified order;
 * where several texts could fill one slot we take the lowest id. */
static void detect_special(tl_tokenizer *t, int32_t fim[6]) {
    static const char *const eot_txt[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                          "<EOT>", "_<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", NULL};
    static const char *const eom_txt[] = {"<|eom_id|>", NULL};
    static const char *const fim_txt[6][7] = {
        {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>", "<PRE>", "\xe2\x96\x81<PRE>", NULL},
        {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>", "<SUF>", "\xe2\x96\x81<SUF>", NULL},
        {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>", "<MID>", "\xe2\x96\x81<MID>", NULL},
        {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", NULL},
        {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL},
        {"<|file_sep|>", NULL},
    };
    static const char *const eog_txt[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                          "<|eom_id|>", "<EOT>", "_<EOT>", NULL};
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text + t->toks[id].off;
        size_t n = t->toks[id].len;
        if (t->eot < 0 && text_in(s, n, eot_txt)) {
            t->eot = id;
            t->toks[id].attr = A_CONTROL;
        }
        if (t->eom < 0 && text_in(s, n, eom_txt)) {
            t->eom = id;
            t->toks[id].attr = A_CONTROL;
        }
        for (int f = 0; f < 6; f++)
            if (fim[f] < 0 && text_in(s, n, fim_txt[f])) {
                fim[f] = id;
                t->toks[id].attr = A_CONTROL;
            }
    }
    t->n_eog = 0;
    eog_add(t, fim[3]); /* pad, repo, file separator end generation in llama.cpp */
    eog_add(t, fim[4]);
    eog_add(t, fim[5]);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text + t->toks[id].off;
        if (text_in(s, t->toks[id].len, eog_txt)) {
            eog_add(t, id);
            t->toks[id].attr = A_CONTROL;
        }
    }
    eog_add(t, t->eos);
    eog_add(t, t->eot);
    eog_add(t, t->eom);
}

tl_tokenizer *tl_tokenizer_load(const tl_gguf *g, tl_error *err) {
    const char *path = tl_gguf_path(g);
    tl_tokenizer *t = calloc(1, sizeof *t);
    char *model = NULL, *pre = NULL, *name = NULL;
    if (!t) {
        tl_fail(err, "%s: out of memory", path);
        return NULL;
    }
    if (tl_gguf_get_str(g, "tokenizer.ggml.model", &model, err)) goto fail;
    if (tl_gguf_opt_str(g, "tokenizer.ggml.pre", &pre, err)) goto fail;
    if (tl_gguf_opt_str(g, "general.name", &name, err)) goto fail;

    int32_t def_bos, def_eos, def_unk;
    if (strcmp(model, "llama") == 0) {
        t->type = VOCAB_SPM;
        def_bos = 1, def_eos = 2, def_unk = 0;
        t->add_space_prefix = true;
        t->add_bos = true;
    } else if (strcmp(model, "gpt2") == 0) {
        t->type = VOCAB_BPE;
        def_bos = 11, def_eos = 11, def_unk = -1;
        const char *pname = pre && *pre ? pre : "default";
        const tl_pretok_info *pi = tl_pretok_find(pname);
        if (!pi) {
            char shown[128];
            tl_escape(shown, sizeof shown, pname, strlen(pname), NULL);
            tl_fail(err, "%s: tokenizer.ggml.pre: unsupported pre-tokenizer '%s' (llama.cpp of June 2025 does not know it)",
                    path, shown);
            goto fail;
        }
        t->pre = pi->pre;
        t->clean_spaces = pi->clean_spaces;
        t->ignore_merges = pi->ignore_merges;
        t->add_bos = pi->add_bos;
        if (pi->no_bos) def_bos = -1;
    } else if (strcmp(model, "bert") == 0) {
        t->type = VOCAB_WPM;
        def_bos = 101, def_eos = -1, def_unk = 100, t->sep = 102; /* [CLS], none, [UNK], [SEP] */
        t->add_bos = true;
        t->clean_spaces = true;
    } else {
        /* the tokenizer models llama.cpp has that tailor does not, by name */
        static const char *const other[][2] = {
            {"t5", "Unigram (SentencePiece unigram, T5-style)"},
            {"rwkv", "RWKV (greedy trie over escaped byte strings)"},
            {"none", "no vocabulary"},
            {"no_vocab", "no vocabulary"},
        };
        const char *what = "unknown to llama.cpp too";
        for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
            if (strcmp(model, other[i][0]) == 0) what = other[i][1];
        char shown[128];
        tl_escape(shown, sizeof shown, model, strlen(model), NULL);
        tl_fail(err,
                "%s: tokenizer.ggml.model: unsupported tokenizer '%s' (%s); supported: llama (SentencePiece BPE), "
                "gpt2 (byte-level BPE), bert (WordPiece)",
                path, shown, what);
        goto fail;
    }
    if (tl_gguf_opt_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err)) goto fail;

    /* vocabulary */
    const tl_gguf_value *tv = tl_gguf_find(g, "tokenizer.ggml.tokens");
    if (!tv) {
        tl_fail(err, "%s: tokenizer.ggml.tokens not found", path);
        goto fail;
    }
    if (tv->type != TL_GGUF_ARRAY || tv->v.arr.elem_type != TL_GGUF_STRING) {
        tl_fail(err, "%s: tokenizer.ggml.tokens: expected an array of strings", path);
        goto fail;
    }
    if (tv->v.arr.n == 0 || tv->v.arr.n > (1u << 30)) {
        tl_fail(err, "%s: tokenizer.ggml.tokens: bad vocabulary size %llu", path, (unsigned long long)tv->v.arr.n);
        goto fail;
    }
    t->n_vocab = (int32_t)tv->v.arr.n;
    const tl_gguf_value *sv = tl_gguf_find(g, "tokenizer.ggml.scores");
    const tl_gguf_value *yv = tl_gguf_find(g, "tokenizer.ggml.token_type");
    if (sv && (sv->type != TL_GGUF_ARRAY || sv->v.arr.n != tv->v.arr.n || !sv->v.arr.raw)) {
        tl_fail(err, "%s: tokenizer.ggml.scores: expected %d numbers", path, t->n_vocab);
        goto fail;
    }
    if (yv && (yv->type != TL_GGUF_ARRAY || yv->v.arr.n != tv->v.arr.n || !yv->v.arr.raw)) {
        tl_fail(err, "%s: tokenizer.ggml.token_type: expected %d integers", path, t->n_vocab);
        goto fail;
    }
    t->toks = calloc((size_t)t->n_vocab, sizeof(tok_t));
    tl_strbuf txt = {0};
    if (!t->toks) {
        tl_fail(err, "%s: out of memory for %d tokens", path, t->n_vocab);
        goto fail;
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        tl_gguf_str s = tl_gguf_arr_str(tv, (uint64_t)id);
        tok_t *k = &t->toks[id];
        k->off = (uint32_t)txt.n;
        if (s.len == 0) { /* llama.cpp renames empty tokens */
            char buf[32];
            int l = snprintf(buf, sizeof buf, "[EMPTY_%d]", id);
            tl_strbuf_put(&txt, buf, (size_t)l);
        } else {
            tl_strbuf_put(&txt, s.ptr, s.len);
        }
        k->len = (uint32_t)(txt.n - k->off);
        t->max_text = TL_MAX(t->max_text, (size_t)k->len);
        tl_strbuf_put(&txt, "", 0);
        txt.p[txt.n++] = 0;
        if (txt.n > UINT32_MAX) {
            free(txt.p);
            tl_fail(err, "%s: tokenizer.ggml.tokens: texts exceed 4 GiB", path);
            goto fail;
        }
        k->score = sv ? (float)tl_gguf_arr_f64(sv, (uint64_t)id) : 0.0f;
        k->attr = A_NORMAL;
        if (yv) {
            switch (tl_gguf_arr_i64(yv, (uint64_t)id)) {
            case 1: k->attr = A_NORMAL; break;
            case 2: k->attr = A_UNKNOWN; break;
            case 3: k->attr = A_CONTROL; break;
            case 4: k->attr = A_USER; break;
            case 5: k->attr = A_UNUSED; break;
            case 6: k->attr = A_BYTE; break;
            default: k->attr = 0; break; /* undefined */
            }
        }
    }
    t->text = txt.p;
    if (build_token_map(t, path, err)) goto fail;
    if (t->type == VOCAB_BPE && load_merges(t, g, path, err)) goto fail;

    /* GPT-2's byte <-> printable codepoint map */
    for (int i = 0; i < 324; i++) t->cp_byte[i] = -1;
    for (int b = 0, extra = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        uint16_t cp = (uint16_t)(self ? b : 256 + extra++);
        char u[4];
        t->byte_cp[b] = cp;
        t->cp_byte[cp] = (int16_t)b;
        t->byte_utf8_len[b] = (uint8_t)tl_utf8_encode(cp, u);
        memcpy(t->byte_utf8[b], u, 2);
    }

    /* special token ids: metadata overrides the per-type defaults when in range */
    int32_t fim[6] = {-1, -1, -1, -1, -1, -1}, unused_id;
    t->bos = def_bos, t->eos = def_eos, t->unk = def_unk, t->eot = -1, t->eom = -1;
    if (t->type != VOCAB_WPM) t->sep = -1;
    struct {
        const char *key;
        int32_t *slot;
    } ids[] = {
        {"tokenizer.ggml.bos_token_id", &t->bos},        {"tokenizer.ggml.eos_token_id", &t->eos},
        {"tokenizer.ggml.eot_token_id", &t->eot},        {"tokenizer.ggml.eom_token_id", &t->eom},
        {"tokenizer.ggml.unknown_token_id", &t->unk},    {"tokenizer.ggml.seperator_token_id", &t->sep},
        {"tokenizer.ggml.padding_token_id", &unused_id}, {"tokenizer.ggml.mask_token_id", &unused_id},
        {"tokenizer.ggml.fim_pre_token_id", &fim[0]},    {"tokenizer.ggml.fim_suf_token_id", &fim[1]},
        {"tokenizer.ggml.fim_mid_token_id", &fim[2]},    {"tokenizer.ggml.fim_pad_token_id", &fim[3]},
        {"tokenizer.ggml.fim_rep_token_id", &fim[4]},    {"tokenizer.ggml.fim_sep_token_id", &fim[5]},
        {"tokenizer.ggml.prefix_token_id", &fim[0]},     {"tokenizer.ggml.suffix_token_id", &fim[1]},
        {"tokenizer.ggml.middle_token_id", &fim[2]},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        uint32_t v = UINT32_MAX;
        if (tl_gguf_opt_u32(g, ids[i].key, &v, err)) goto fail;
        if (v < (uint32_t)t->n_vocab) *ids[i].slot = (int32_t)v;
    }
    if (!valid_id(t, t->bos)) t->bos = -1;
    if (!valid_id(t, t->eos)) t->eos = -1;
    if (!valid_id(t, t->sep)) t->sep = -1;
    if (t->type == VOCAB_WPM && !valid_id(t, t->unk)) {
        tl_fail(err, "%s: bert (WordPiece) tokenizer without an unknown token (tokenizer.ggml.unknown_token_id %d is "
                "not below the vocabulary size %d)", path, t->unk, t->n_vocab);
        goto fail;
    }
    if (tl_gguf_opt_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) goto fail;
    if (tl_gguf_opt_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos, err)) goto fail;

    detect_special(t, fim);
    if (build_pieces(t, path, err)) goto fail;

    /* per-model strip attributes llama.cpp sets by name */
    if (pre && (strstr(pre, "jina-v2-de") || strstr(pre, "jina-v2-es") || strstr(pre, "jina-v2-code"))) {
        int32_t m = tl_token_find(t, "<mask>");
        if (m >= 0) t->toks[m].attr |= A_LSTRIP;
    } else if (name) {
        for (char *p = name; *p; p++)
            if (*p >= 'A' && *p <= 'Z') *p = (char)(*p + 32);
        if (strstr(name, "phi-3") || strstr(name, "phi3")) {
            for (int32_t id = 0; id < t->n_vocab; id++)
                if (t->toks[id].attr & (A_CONTROL | A_USER | A_UNKNOWN)) t->toks[id].attr |= A_RSTRIP;
            int32_t m = tl_token_find(t, "</s>");
            if (m >= 0) t->toks[m].attr |= A_RSTRIP;
            const char *keep[] = {"<unk>", "<s>", "<|endoftext|>"};
            for (int i = 0; i < 3; i++) {
                m = tl_token_find(t, keep[i]);
                if (m >= 0) t->toks[m].attr &= (uint16_t)~A_RSTRIP;
            }
        }
    }
    if (build_specials(t, path, err)) goto fail;

    free(model);
    free(pre);
    free(name);
    return t;
fail:
    free(model);
    free(pre);
    free(name);
    tl_tokenizer_free(t);
    return NULL;
}

tl_tokenizer *tl_tokenizer_open(const char *path, tl_error *err) {
    tl_gguf *g = tl_gguf_open(path, err);
    if (!g) return NULL;
    tl_tokenizer *t = tl_tokenizer_load(g, err);
    tl_gguf_close(g); /* the tokenizer keeps copies of everything it reads */
    return t;
}

/* ---------------------------------------------------------------- special-token partition */

typedef struct {
    int32_t tok; /* -1: raw text */
    size_t off, len;
} frag;

typedef struct {
    frag *v;
    size_t n, cap;
} fragvec;

static void frag_push(fragvec *f, int32_t tok, size_t off, size_t len) {
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 16;
        f->v = tl_xrealloc(f->v, f->cap * sizeof(frag));
    }
    f->v[f->n++] = (frag){tok, off, len};
}

typedef struct {
    size_t rank, pos;
} occ;

static int cmp_occ(const void *a, const void *b) {
    const occ *x = a, *y = b;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int cmp_size(const void *a, const void *b) {
    size_t x = ((const size_t *)a)[0], y = ((const size_t *)b)[0];
    return x < y ? -1 : x > y;
}

/* llama.cpp's tokenizer_st_partition: for each special token in order (longest first), every
 * raw fragment is split at the token's leftmost non-overlapping occurrences. We get the same
 * result from all occurrences in the original text (found with the trie), taken token by
 * token in that order, left to right, accepting one when all its bytes are still raw text.
 * LSTRIP/RSTRIP tokens also consume the adjacent whitespace of their fragment. */
/* Does [pos, pos + len) lie inside one of the sorted spans? */
static bool in_spans(const tl_span *sp, size_t n, size_t pos, size_t len) {
    size_t lo = 0, hi = n; /* the last span starting at or before pos */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sp[mid].off <= pos) lo = mid + 1;
        else hi = mid;
    }
    return lo > 0 && pos + len <= sp[lo - 1].off + sp[lo - 1].len;
}

static void partition(const tl_tokenizer *t, const char *s, size_t n, const tl_tok_opts *o, fragvec *out) {
    out->n = 0;
    if (n == 0) return;
    bool parse_special = o->parse_special;
    if (t->n_spec == 0 || (!parse_special && t->n_spec_user == 0 && o->n_special_spans == 0)) {
        frag_push(out, -1, 0, n);
        return;
    }
    occ *oc = NULL;
    size_t noc = 0, coc = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t node = 0;
        for (size_t j = i; j < n; j++) {
            node = trie_child(t, node, (uint8_t)s[j]);
            if (node < 0) break;
            int32_t r = t->trie_rank[node];
            if (r < 0) continue;
            if (!parse_special && (t->toks[t->spec[r]].attr & (A_CONTROL | A_UNKNOWN)) &&
                !in_spans(o->special_spans, o->n_special_spans, i, j + 1 - i))
                continue;
            if (noc == coc) {
                coc = coc ? coc * 2 : 64;
                oc = tl_xrealloc(oc, coc * sizeof(occ));
            }
            oc[noc++] = (occ){(size_t)r, i};
        }
    }
    if (noc == 0) {
        frag_push(out, -1, 0, n);
        return;
    }
    qsort(oc, noc, sizeof(occ), cmp_occ);
    uint8_t *used = tl_xcalloc(n, 1);
    size_t *acc = tl_xmalloc(2 * noc * sizeof(size_t)); /* (pos, id) pairs accepted */
    size_t nacc = 0;
    for (size_t k = 0; k < noc; k++) {
        int32_t id = t->spec[oc[k].rank];
        const tok_t *tk = &t->toks[id];
        size_t p = oc[k].pos, len = tk->len;
        bool free_ = true;
        for (size_t j = p; j < p + len; j++)
            if (used[j]) {
                free_ = false;
                break;
            }
        if (!free_) continue;
        if (tk->attr & A_LSTRIP)
            for (size_t q = p; q > 0 && !used[q - 1] && is_space_c(s[q - 1]); q--) used[q - 1] = 1;
        memset(used + p, 1, len);
        if (tk->attr & A_RSTRIP)
            for (size_t q = p + len; q < n && !used[q] && is_space_c(s[q]); q++) used[q] = 1;
        acc[2 * nacc] = p;
        acc[2 * nacc + 1] = (size_t)id;
        nacc++;
    }
    qsort(acc, nacc, 2 * sizeof(size_t), cmp_size);
    size_t i = 0, a = 0;
    while (i < n) {
        if (a < nacc && acc[2 * a] == i) {
            int32_t id = (int32_t)acc[2 * a + 1];
            frag_push(out, id, i, t->toks[id].len);
            i += t->toks[id].len;
            a++;
        } else if (!used[i]) {
            size_t j = i;
            while (j < n && !used[j]) j++;
            frag_push(out, -1, i, j - i);
            i = j;
        } else {
            i++; /* stripped whitespace */
        }
    }
    free(used);
    free(acc);
    free(oc);
}

/* ---------------------------------------------------------------- merging */

/* Symbols of the text being merged: a doubly linked list over byte ranges of buf. */
typedef struct {
    int32_t prev, next;
    uint32_t start, n;
} sym;

/* Candidate merge: smaller key first, then leftmost (SPM: key = -score; BPE: key = rank). */
typedef struct {
    double key;
    int32_t left, right;
    uint32_t size;
} cand;

typedef struct {
    sym *syms;
    size_t nsym, csym;
    cand *heap;
    size_t nheap, cheap;
    tl_strbuf buf;      /* text being merged */
    uint32_t *cps; /* BPE: codepoints and flags of a fragment */
    uint16_t *fl;
    size_t ccp;
    tl_szvec words, tmp;
} scratch;

static bool cand_before(const cand *a, const cand *b) {
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

static void heap_push(scratch *sc, cand c) {
    if (sc->nheap == sc->cheap) {
        sc->cheap = sc->cheap ? sc->cheap * 2 : 256;
        sc->heap = tl_xrealloc(sc->heap, sc->cheap * sizeof(cand));
    }
    size_t i = sc->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &sc->heap[p])) break;
        sc->heap[i] = sc->heap[p];
        i = p;
    }
    sc->heap[i] = c;
}

static cand heap_pop(scratch *sc) {
    cand top = sc->heap[0], last = sc->heap[--sc->nheap];
    size_t i = 0, n = sc->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_before(&sc->heap[c + 1], &sc->heap[c])) c++;
        if (!cand_before(&sc->heap[c], &last)) break;
        sc->heap[i] = sc->heap[c];
        i = c;
    }
    if (n) sc->heap[i] = last;
    return top;
}

/* Split buf[0..len) into UTF-8 character symbols (lead-byte lengths, as llama.cpp). */
static void make_syms(scratch *sc, const char *b, size_t len) {
    sc->nsym = 0;
    for (size_t off = 0; off < len;) {
        size_t l = TL_MIN(tl_utf8_len((uint8_t)b[off]), len - off);
        if (sc->nsym == sc->csym) {
            sc->csym = sc->csym ? sc->csym * 2 : 256;
            sc->syms = tl_xrealloc(sc->syms, sc->csym * sizeof(sym));
        }
        int32_t i = (int32_t)sc->nsym++;
        off += l;
        sc->syms[i] = (sym){i - 1, off == len ? -1 : i + 1, (uint32_t)(off - l), (uint32_t)l};
    }
}

/* Merge loop shared by SPM and BPE; try_add pushes the candidate for two adjacent symbols. */
static void merge_loop(scratch *sc, void (*try_add)(const tl_tokenizer *, scratch *, int32_t, int32_t),
                       const tl_tokenizer *t) {
    sc->nheap = 0;
    for (size_t i = 1; i < sc->nsym; i++) try_add(t, sc, (int32_t)i - 1, (int32_t)i);
    while (sc->nheap) {
        cand c = heap_pop(sc);
        sym *l = &sc->syms[c.left], *r = &sc->syms[c.right];
        /* stale: one side already merged elsewhere (their texts changed) */
        if (l->n == 0 || r->n == 0 || l->n + r->n != c.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sc->syms[r->next].prev = c.left;
        try_add(t, sc, l->prev, c.left);
        try_add(t, sc, c.left, l->next);
    }
}

static void spm_try_add(const tl_tokenizer *t, scratch *sc, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const sym *l = &sc->syms[left], *r = &sc->syms[right];
    int32_t id = tok_find_n(t, sc->buf.p + l->start, l->n + r->n);
    if (id < 0) return;
    heap_push(sc, (cand){-(double)t->toks[id].score, left, right, l->n + r->n});
}

static void bpe_try_add(const tl_tokenizer *t, scratch *sc, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const sym *l = &sc->syms[left], *r = &sc->syms[right];
    int32_t rank = merge_rank(t, sc->buf.p + l->start, l->n, sc->buf.p + r->start, r->n);
    if (rank < 0) return;
    heap_push(sc, (cand){(double)rank, left, right, l->n + r->n});
}

/* stop > 0: return once out holds more than stop ids. */
static int spm_fragment(const tl_tokenizer *t, scratch *sc, const char *s, size_t n, bool space_prefix, size_t stop,
                        ivec *out, tl_error *err) {
    sc->buf.n = 0;
    if (space_prefix) tl_strbuf_put(&sc->buf, "\xe2\x96\x81", 3);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ')
            tl_strbuf_put(&sc->buf, "\xe2\x96\x81", 3);
        else
            tl_strbuf_put(&sc->buf, s + i, 1);
    }
    make_syms(sc, sc->buf.p, sc->buf.n);
    if (sc->nsym == 0) return 0;
    merge_loop(sc, spm_try_add, t);
    for (int32_t i = 0; i != -1 && !(stop && out->n > stop); i = sc->syms[i].next) {
        const sym *y = &sc->syms[i];
        const char *txt = sc->buf.p + y->start;
        int32_t id = tok_find_n(t, txt, y->n);
        if (id >= 0) {
            ivec_push(out, id);
            continue;
        }
        /* not a token: byte fallback (a merged symbol is always a token, so this is one char) */
        for (uint32_t j = 0; j < y->n; j++) {
            uint8_t b = (uint8_t)txt[j];
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            int32_t bid = tok_find_n(t, hex, 6);
            if (bid < 0) bid = tok_find_n(t, (const char *)&txt[j], 1);
            if (bid < 0) return tl_fail(err, "no token for byte 0x%02X (the vocabulary has no <0x%02X>)", b, b);
            ivec_push(out, bid);
        }
    }
    return 0;
}

static void bpe_word(const tl_tokenizer *t, scratch *sc, ivec *out) {
    const char *w = sc->buf.p;
    size_t n = sc->buf.n;
    if (t->ignore_merges) {
        int32_t id = tok_find_n(t, w, n);
        if (id >= 0) {
            ivec_push(out, id);
            return;
        }
    }
    make_syms(sc, w, n);
    merge_loop(sc, bpe_try_add, t);
    for (size_t i = 0; i < sc->nsym; i++) {
        const sym *y = &sc->syms[i];
        if (y->n == 0) continue;
        int32_t id = tok_find_n(t, w + y->start, y->n);
        if (id >= 0) {
            ivec_push(out, id);
            continue;
        }
        for (uint32_t j = 0; j < y->n; j++) { /* llama.cpp: single bytes that happen to be tokens */
            int32_t bid = tok_find_n(t, w + y->start + j, 1);
            if (bid >= 0) ivec_push(out, bid);
        }
    }
}

/* stop > 0: return once out holds more than stop ids (at a word's end). */
static void bpe_fragment(const tl_tokenizer *t, scratch *sc, const char *s, size_t n, size_t stop, ivec *out) {
    if (sc->ccp < n) {
        sc->ccp = n;
        sc->cps = tl_xrealloc(sc->cps, n * sizeof(uint32_t));
        sc->fl = tl_xrealloc(sc->fl, n * sizeof(uint16_t));
    }
    size_t ncp = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp = tl_utf8_decode_lax(s, n, &i);
        sc->cps[ncp] = cp;
        sc->fl[ncp] = tl_unicode_flags(cp);
        ncp++;
    }
    tl_pretok_split(t->pre, sc->cps, sc->fl, ncp, &sc->words, &sc->tmp);
    size_t c = 0;
    for (size_t w = 0; w < sc->words.n; w++) {
        sc->buf.n = 0;
        for (size_t k = c; k < c + sc->words.v[w]; k++) {
            char u[4];
            int ul = tl_utf8_encode(sc->cps[k], u);
            for (int j = 0; j < ul; j++) {
                uint8_t b = (uint8_t)u[j];
                tl_strbuf_put(&sc->buf, t->byte_utf8[b], t->byte_utf8_len[b]);
            }
        }
        c += sc->words.v[w];
        bpe_word(t, sc, out);
        if (stop && out->n > stop) return;
    }
}

/* WordPiece ("bert"), llama.cpp's way: each codepoint is replaced by the first codepoint of its
 * NFD (accents dropped) and lower-cased; whitespace separates words; NUL, U+FFFD and control
 * characters are dropped; punctuation, ASCII symbols and CJK ideographs are words of their own.
 * Each word, with "▁" in front, is cut greedily into the longest tokens from the left; a word
 * with a part no token matches becomes the unknown token. */
static bool wpm_is_cjk(uint32_t c) {
    return (c >= 0x4e00 && c <= 0x9fff) || (c >= 0x3400 && c <= 0x4dbf) || (c >= 0x20000 && c <= 0x2a6df) ||
           (c >= 0x2a700 && c <= 0x2b73f) || (c >= 0x2b740 && c <= 0x2b81f) ||
           (c >= 0x2b920 && c <= 0x2ceaf) || /* sic: 0x2b820 in Unicode, 0x2b920 in HF's and llama.cpp's code */
           (c >= 0xf900 && c <= 0xfaff) || (c >= 0x2f800 && c <= 0x2fa1f);
}

static void wpm_word(const tl_tokenizer *t, const char *w, size_t n, ivec *out) {
    const size_t start = out->n;
    for (size_t i = 0; i < n;) {
        size_t j = TL_MIN(n, i + t->max_text);
        int32_t id = -1;
        for (; j > i && (id = tok_find_n(t, w + i, j - i)) < 0; j--) {}
        if (id < 0) {
            out->n = start; /* no token for this part: the whole word is unknown */
            break;
        }
        ivec_push(out, id);
        i = j;
    }
    if (out->n == start) ivec_push(out, t->unk);
}

static void wpm_fragment(const tl_tokenizer *t, scratch *sc, const char *s, size_t n, size_t stop, ivec *out) {
    tl_strbuf *w = &sc->buf; /* the current word, after its "▁" */
    w->n = 0;
    tl_strbuf_put(w, "\xe2\x96\x81", 3);
    for (size_t i = 0; i <= n && !(stop && out->n > stop);) {
        uint32_t cp = 0;
        uint16_t f = TL_UF_WHITESPACE; /* the end of the text ends the last word */
        if (i < n) {
            cp = tl_unicode_nfd_base(tl_utf8_decode_lax(s, n, &i));
            f = tl_unicode_flags(cp);
        } else {
            i++;
        }
        if (!(f & TL_UF_WHITESPACE) && (cp == 0 || cp == 0xfffd || (f & TL_UF_CONTROL))) continue;
        const bool alone = (f & TL_UF_PUNCT) || (cp < 0x7f && (f & TL_UF_SYMBOL)) || wpm_is_cjk(cp);
        if ((f & TL_UF_WHITESPACE) || alone) { /* the word so far ends */
            if (w->n > 3) wpm_word(t, w->p, w->n, out);
            w->n = 3;
        }
        if (f & TL_UF_WHITESPACE) continue;
        char u[4];
        tl_strbuf_put(w, u, (size_t)tl_utf8_encode(tl_unicode_tolower(cp), u));
        if (alone) {
            wpm_word(t, w->p, w->n, out);
            w->n = 3;
        }
    }
}

static void scratch_free(scratch *sc) {
    free(sc->syms);
    free(sc->heap);
    free(sc->buf.p);
    free(sc->cps);
    free(sc->fl);
    tl_szvec_free(&sc->words);
    tl_szvec_free(&sc->tmp);
}

int tl_tokenize(const tl_tokenizer *t, const char *text, size_t len, bool add_special, bool parse_special,
                int32_t *out, size_t cap, size_t *n_out, tl_error *err) {
    tl_tok_opts o = {.add_special = add_special, .parse_special = parse_special};
    return tl_tokenize_opts(t, text, len, &o, out, cap, n_out, err);
}

int tl_tokenize_opts(const tl_tokenizer *t, const char *text, size_t len, const tl_tok_opts *o, int32_t *out,
                     size_t cap, size_t *n_out, tl_error *err) {
    if (n_out) *n_out = 0;
    size_t bad = tl_utf8_validate(text, len);
    if (bad != len) return tl_fail(err, "invalid UTF-8 at byte %zu", bad);
    const size_t stop = o->max_tokens;
    fragvec fr = {0};
    partition(t, text, len, o, &fr);
    ivec res = {0};
    scratch sc = {0};
    int rc = 0;
    /* WordPiece: [CLS] ... [SEP] whenever special tokens are added (llama.cpp ignores add_bos there) */
    if (o->add_special && (t->add_bos || t->type == VOCAB_WPM) && t->bos >= 0) ivec_push(&res, t->bos);
    bool prev_special = true; /* SPM: a fragment at the start or after a special token gets "▁" */
    for (size_t i = 0; i < fr.n && rc == 0 && !(stop && res.n > stop); i++) {
        const frag *f = &fr.v[i];
        if (f->tok >= 0) {
            ivec_push(&res, f->tok);
            prev_special = true;
        } else if (t->type == VOCAB_SPM) {
            rc = spm_fragment(t, &sc, text + f->off, f->len, t->add_space_prefix && prev_special, stop, &res, err);
            prev_special = false;
        } else if (t->type == VOCAB_WPM) {
            wpm_fragment(t, &sc, text + f->off, f->len, stop, &res);
        } else {
            bpe_fragment(t, &sc, text + f->off, f->len, stop, &res);
        }
    }
    if (stop && res.n > stop) res.n = stop + 1; /* cut: a prefix, no EOS */
    else if (o->add_special && t->type == VOCAB_WPM && t->sep >= 0) ivec_push(&res, t->sep);
    else if (o->add_special && t->add_eos && t->eos >= 0) ivec_push(&res, t->eos);
    if (rc == 0) {
        if (out && cap && res.n) memcpy(out, res.v, TL_MIN(cap, res.n) * sizeof(int32_t));
        if (n_out) *n_out = res.n;
    }
    free(res.v);
    free(fr.v);
    scratch_free(&sc);
    return rc;
}

/* ---------------------------------------------------------------- detokenize */

/* llama.cpp's clean_up_tokenization_spaces passes (in place; returns the new length). */
static size_t clean_spaces(char *text, size_t total) {
    /* " ?", " !", " .", " ," lose the space */
    size_t n1 = total;
    total = total ? 1 : 0;
    for (size_t i = 1; i < n1; i++) {
        char x = text[i];
        if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) total--;
        text[total++] = x;
    }
    /* " ' " -> "'" */
    size_t n2 = total;
    total = total ? 1 : 0;
    for (size_t i = 1; i < n2; i++) {
        char x = text[i];
        if (x == '\'' && i + 1 < n2 && text[i - 1] == ' ' && text[i + 1] == ' ') {
            total--;
            text[++i] = '\0';
        }
        text[total++] = x;
    }
    /* " 's", " 'm", " 're", " 've" lose the space */
    size_t n3 = total;
    total = total ? 1 : 0;
    for (size_t i = 1; i < n3; i++) {
        char x = text[i];
        if (text[i - 1] == ' ' && x == '\'' && i + 1 < n3) {
            char x1 = text[i + 1];
            if (x1 == 's' || x1 == 'm')
                total--;
            else if (x1 != 't' && x1 != 'd' && i + 2 < n3) {
                char x2 = text[i + 2];
                if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) total--;
            }
        }
        text[total++] = x;
    }
    return total;
}

char *tl_detokenize_ex(const tl_tokenizer *t, const int32_t *ids, size_t n, unsigned flags, size_t *len_out) {
    bool remove_special = flags & TL_DETOK_REMOVE_SPECIAL;
    bool render = flags & TL_DETOK_RENDER_SPECIAL;
    bool remove_space = t->add_space_prefix;
    if (remove_special && t->add_bos && n > 0 && ids[0] == t->bos) {
        remove_space = false;
        ids++;
        n--;
    }
    if (remove_special && t->add_eos && n > 0 && ids[n - 1] == t->eos) n--;
    tl_strbuf b = {0};
    tl_strbuf_put(&b, "", 0);
    for (size_t i = 0; i < n; i++) {
        size_t pl = tl_token_to_piece(t, ids[i], render, NULL, 0);
        const char *p = valid_id(t, ids[i]) ? t->pieces + t->toks[ids[i]].poff : "";
        if (remove_space && pl > 0 && p[0] == ' ') {
            p++;
            pl--;
        }
        remove_space = false;
        tl_strbuf_put(&b, p, pl);
    }
    if (t->clean_spaces && !(flags & TL_DETOK_NO_CLEANUP)) b.n = clean_spaces(b.p, b.n);
    b.p[b.n] = 0;
    if (len_out) *len_out = b.n;
    return b.p;
}

int32_t *tl_tokenize_all(const tl_tokenizer *t, const char *text, size_t len, bool add_special, size_t *n,
                         tl_error *err) {
    size_t cap = len + 16, need = 0;
    int32_t *ids = tl_xmalloc(sizeof(int32_t) * cap);
    if (tl_tokenize(t, text, len, add_special, true, ids, cap, &need, err)) {
        free(ids);
        return NULL;
    }
    if (need > cap) {
        ids = tl_xrealloc(ids, sizeof(int32_t) * need);
        if (tl_tokenize(t, text, len, add_special, true, ids, need, &need, err)) {
            free(ids);
            return NULL;
        }
    }
    *n = need;
    return ids;
}

char *tl_detokenize(const tl_tokenizer *t, const int32_t *ids, size_t n, bool render_special) {
    return tl_detokenize_ex(t, ids, n, render_special ? TL_DETOK_RENDER_SPECIAL : 0, NULL);
}
