/* tokenizer_pretok.c: hand-coded pre-tokenizer regexes (see tokenizer_pretok.h).
 *
 * Two kinds of steps:
 *  - whole-piece splitters: the GPT-2 and Llama-3 regexes as llama.cpp's own hand-written
 *    splitters run them (each match becomes a piece; they cover every codepoint), and two
 *    regexes whose matches are found faster from the piece's end (\s+$, SuperBPE's digit groups);
 *  - regex steps: a matcher returns the length of the regex match starting at a position
 *    (0: none), and the runner emulates std::regex_iterator over each piece: leftmost matches
 *    become pieces, and the unmatched text between them becomes one piece.
 *
 * Character classes follow llama.cpp's regex handling, which differs from the models' own:
 *  - a regex with \p{..} runs over a "collapsed" text: ASCII as it is, every other codepoint
 *    one stand-in per class. So \p{L}, \p{N}, \p{P}, \p{M}, \p{S} are the Unicode general
 *    categories, except that for ASCII they are A-Za-z, 0-9, !"#%&'()*,-./:;?@[\]_{}, nothing
 *    and $+<=>^`| ('~', a math symbol, is in no class); \s is Unicode White_Space;
 *  - a regex without \p{..} runs over the codepoints, non-ASCII whitespace replaced by U+000B:
 *    its literal ranges never contain a whitespace codepoint (wide_cp);
 *  - \s and \d are ASCII-only (C locale) after those replacements. */
#include "tokenizer_pretok.h"

#include <stdlib.h>
#include <string.h>

#include "../base/common.h"
#include "../base/unicode.h"

/* llama.cpp's names, grouped by kind; its settings per name (llama-vocab.cpp, load()) */
static const tl_pretok_info PRES[] = {
    /* name, kind, clean_spaces, ignore_merges, add_bos, no_bos */
    {"default", TL_PRE_DEFAULT, true, false, false, false},
    {"llama3", TL_PRE_LLAMA3, true, true, true, false},
    {"llama-v3", TL_PRE_LLAMA3, true, true, true, false},
    {"llama-bpe", TL_PRE_LLAMA3, true, true, true, false},
    {"falcon3", TL_PRE_LLAMA3, true, true, true, false},
    {"pixtral", TL_PRE_LLAMA3, true, true, true, false},
    {"dbrx", TL_PRE_LLAMA3, true, false, false, false},
    {"smaug-bpe", TL_PRE_LLAMA3, true, false, false, false},
    {"chatglm-bpe", TL_PRE_LLAMA3, true, false, false, true},
    {"glm4", TL_PRE_LLAMA3, true, false, false, true},
    {"deepseek-llm", TL_PRE_DEEPSEEK_LLM, false, false, false, false},
    {"deepseek-v3", TL_PRE_DEEPSEEK3, false, false, false, false},
    {"deepseek-coder", TL_PRE_DEEPSEEK_CODER, false, false, false, false},
    {"falcon", TL_PRE_FALCON, true, false, false, false},
    {"gpt-2", TL_PRE_GPT2, true, false, false, false},
    {"phi-2", TL_PRE_GPT2, true, false, false, false},
    {"jina-es", TL_PRE_GPT2, true, false, false, false},
    {"jina-de", TL_PRE_GPT2, true, false, false, false},
    {"gigachat", TL_PRE_GPT2, true, false, false, false},
    {"jina-v1-en", TL_PRE_GPT2, true, false, false, false},
    {"jina-v2-es", TL_PRE_GPT2, true, false, false, false},
    {"jina-v2-de", TL_PRE_GPT2, true, false, false, false},
    {"jina-v2-code", TL_PRE_GPT2, true, false, false, false},
    {"roberta-bpe", TL_PRE_GPT2, true, false, false, false},
    {"mpt", TL_PRE_GPT2, true, false, false, false},
    {"olmo", TL_PRE_GPT2, true, false, false, false},
    {"jais", TL_PRE_GPT2, true, false, false, false},
    {"trillion", TL_PRE_GPT2, false, false, false, false},
    {"starcoder", TL_PRE_SMOLLM, true, false, false, false},
    {"refact", TL_PRE_SMOLLM, true, false, false, false},
    {"codeshell", TL_PRE_SMOLLM, true, false, false, false},
    {"exaone", TL_PRE_SMOLLM, true, false, false, false},
    {"minerva-7b", TL_PRE_SMOLLM, true, false, false, false},
    {"command-r", TL_PRE_SMOLLM, false, false, false, false},
    {"smollm", TL_PRE_SMOLLM, false, false, false, false},
    {"qwen2", TL_PRE_QWEN2, false, false, false, false},
    {"deepseek-r1-qwen", TL_PRE_QWEN2, false, false, false, false},
    {"stablelm2", TL_PRE_QWEN2, true, false, false, false},
    {"megrez", TL_PRE_QWEN2, true, false, false, false},
    {"bailingmoe", TL_PRE_QWEN2, false, false, false, false}, /* \s*[\r\n] ends where \s*[\r\n]+ does */
    {"seed-coder", TL_PRE_SEED_CODER, false, false, false, false},
    {"bloom", TL_PRE_BLOOM, true, false, false, false},
    {"gpt3-finnish", TL_PRE_BLOOM, true, false, false, false},
    {"poro-chat", TL_PRE_BLOOM, false, false, false, false},
    {"viking", TL_PRE_VIKING, false, false, false, false},
    {"tekken", TL_PRE_TEKKEN, false, true, true, false},
    {"gpt-4o", TL_PRE_GPT4O, false, false, false, false},
    {"llama4", TL_PRE_GPT4O, false, false, false, false},
    {"chameleon", TL_PRE_CHAMELEON, false, false, true, false},
    {"superbpe", TL_PRE_SUPERBPE, false, false, false, false},
};

const tl_pretok_info *tl_pretok_find(const char *name) {
    for (size_t i = 0; i < sizeof PRES / sizeof PRES[0]; i++)
        if (strcmp(PRES[i].name, name) == 0) return &PRES[i];
    return NULL;
}

const tl_pretok_info *tl_pretok_at(size_t i) { return i < sizeof PRES / sizeof PRES[0] ? &PRES[i] : NULL; }

void tl_szvec_push(tl_szvec *s, size_t x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->v = tl_xrealloc(s->v, s->cap * sizeof(size_t));
    }
    s->v[s->n++] = x;
}

void tl_szvec_free(tl_szvec *s) {
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

/* One piece [a, b) of the text being split. Positions are absolute codepoint indices;
 * anything outside the piece reads as "no codepoint" (flags 0), like llama.cpp's splitters. */
typedef struct {
    const uint32_t *cps;
    const uint16_t *fl;
    size_t a, b;
} span;

#define OOR 0xffffffffu
static inline uint32_t cp_at(const span *s, size_t p) { return p >= s->a && p < s->b ? s->cps[p] : OOR; }
static inline uint16_t fl_at(const span *s, size_t p) { return p >= s->a && p < s->b ? s->fl[p] : 0; }

enum {
    F_L = TL_UF_LETTER,
    F_N = TL_UF_NUMBER,
    F_P = TL_UF_PUNCT,
    F_M = TL_UF_MARK,
    F_S = TL_UF_SYMBOL,
    F_WS = TL_UF_WHITESPACE,
};

static bool is_nl(uint32_t c) { return c == '\r' || c == '\n'; }
static bool is_upper_ascii(uint32_t c) { return c >= 'A' && c <= 'Z'; }
static bool is_lower_ascii(uint32_t c) { return c >= 'a' && c <= 'z'; }
static uint32_t ascii_lower(uint32_t c) { return is_upper_ascii(c) ? c + 32 : c; }

/* [^\s\p{L}\p{N}] inside the piece */
static bool is_other(uint16_t f) { return f && !(f & (F_WS | F_L | F_N)); }

/* collapsed [\p{P}\p{S}]: for ASCII llama.cpp's lists, which leave out '~' */
static bool is_punct_sym(uint32_t c, uint16_t f) {
    if (c < 128) return c != '~' && (f & (F_P | F_S));
    return (f & (F_P | F_S)) != 0;
}

/* the codepoint a regex without \p{..} sees */
static uint32_t wide_cp(uint32_t c, uint16_t f) { return c > 0x7f && (f & F_WS) ? 0x0b : c; }

/* (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]) at p: its length or 0. llama.cpp's
 * splitter lower-cases with Unicode rules; no non-ASCII codepoint lower-cases to these letters. */
static size_t contraction(const span *s, size_t p) {
    if (cp_at(s, p) != '\'' || p + 1 >= s->b) return 0;
    uint32_t c1 = ascii_lower(s->cps[p + 1]);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (p + 2 >= s->b) return 0;
    uint32_t c2 = ascii_lower(s->cps[p + 2]);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    return 0;
}

/* \s*[\r\n]+|\s+(?!\S)|\s+ at p: its length or 0 */
static size_t ws_tail(const span *s, size_t p) {
    size_t n = 0, last_nl = 0;
    while (fl_at(s, p + n) & F_WS) {
        if (is_nl(s->cps[p + n])) last_nl = p + n + 1;
        n++;
    }
    if (last_nl) return last_nl - p;
    if (n == 0 || p + n == s->b) return n;
    return n > 1 ? n - 1 : 1; /* leave the last one for the word after it */
}

/* ---- whole-piece splitters ---- */

/* Emits pieces [prev, end) as they are found. */
typedef struct {
    tl_szvec *out;
    size_t prev;
} emitter;

static size_t emit_to(emitter *e, size_t end) {
    size_t len = end - e->prev;
    if (len > 0) tl_szvec_push(e->out, len);
    e->prev = end;
    return len;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void split_gpt2(const span *s, tl_szvec *out) {
    emitter e = {out, s->a};
    size_t pos = s->a;
    while (pos < s->b) {
        uint32_t c = s->cps[pos];
        uint16_t f = s->fl[pos];
        if (c == '\'' && pos + 1 < s->b) {
            uint32_t c1 = s->cps[pos + 1];
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                pos += emit_to(&e, pos + 2);
                continue;
            }
            if (pos + 2 < s->b) {
                uint32_t c2 = s->cps[pos + 2];
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                    pos += emit_to(&e, pos + 3);
                    continue;
                }
            }
        }
        /* an optional leading space: classify by the codepoint after it */
        uint16_t f2 = c == ' ' ? fl_at(s, pos + 1) : f;
        if (f2 & F_L) {
            pos += c == ' ';
            while (f2 & F_L) f2 = fl_at(s, ++pos);
            emit_to(&e, pos);
            continue;
        }
        if (f2 & F_N) {
            pos += c == ' ';
            while (f2 & F_N) f2 = fl_at(s, ++pos);
            emit_to(&e, pos);
            continue;
        }
        if (is_other(f2)) {
            pos += c == ' ';
            while (is_other(f2)) f2 = fl_at(s, ++pos);
            emit_to(&e, pos);
            continue;
        }
        size_t nws = 0;
        while (fl_at(s, pos + nws) & F_WS) nws++;
        if (nws > 1 && pos + nws < s->b) { /* \s+(?!\S): leave the last space for the next word */
            pos += nws - 1;
            emit_to(&e, pos);
            continue;
        }
        if (nws > 0) {
            pos += nws;
            emit_to(&e, pos);
            continue;
        }
        emit_to(&e, ++pos);
    }
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,G}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * with G = 3 (Llama 3) or 1 (Qwen2's \p{N}). Seed-Coder's punctuation is ' ?[^\s\p{L}\p{N}\r\n]+',
 * without the newlines after it (absorb_nl false). The regexes cover every codepoint, so
 * llama.cpp's std::regex runs (Qwen2, Seed-Coder) and its Llama 3 splitter agree. */
static void split_llama3(const span *s, tl_szvec *out, size_t group, bool absorb_nl) {
    emitter e = {out, s->a};
    size_t pos = s->a;
    while (pos < s->b) {
        uint32_t c = s->cps[pos];
        uint16_t f = s->fl[pos];
        size_t k = contraction(s, pos);
        if (k) {
            pos += emit_to(&e, pos + k);
            continue;
        }
        if (!(is_nl(c) || (f & F_N))) {
            if ((f & F_L) || (fl_at(s, pos + 1) & F_L)) {
                pos++;
                while (fl_at(s, pos) & F_L) pos++;
                emit_to(&e, pos);
                continue;
            }
        }
        if (f & F_N) {
            size_t ini = pos;
            while (fl_at(s, pos) & F_N) {
                if (++pos - ini >= group) {
                    emit_to(&e, pos);
                    ini = pos;
                }
            }
            emit_to(&e, pos);
            continue;
        }
        uint16_t f2 = c == ' ' ? fl_at(s, pos + 1) : f;
        if (!(f2 & (F_WS | F_L | F_N)) && f) {
            pos += c == ' ';
            while (is_other(f2)) f2 = fl_at(s, ++pos);
            while (absorb_nl && is_nl(cp_at(s, pos))) pos++;
            emit_to(&e, pos);
            continue;
        }
        size_t n = ws_tail(s, pos);
        emit_to(&e, pos += n ? n : 1);
    }
}

/* \s+$: the whitespace that ends the piece */
static void split_ws_end(const span *s, tl_szvec *out) {
    size_t t = s->b;
    while (t > s->a && (s->fl[t - 1] & F_WS)) t--;
    if (t > s->a) tl_szvec_push(out, t - s->a);
    if (t < s->b) tl_szvec_push(out, s->b - t);
}

/* (?=(\d{3})+(?!\d)): an empty match before every run of ASCII digits whose length is a
 * multiple of three; the piece is cut there (empty pieces make no tokens and are dropped). */
static void split_digit_groups(const span *s, tl_szvec *out) {
    const size_t first = out->n;
    size_t end = s->b, run = 0;
    for (size_t p = s->b; p-- > s->a;) { /* from the right, pushing the pieces in reverse */
        run = s->cps[p] >= '0' && s->cps[p] <= '9' ? run + 1 : 0;
        if (run && run % 3 == 0 && p > s->a) {
            tl_szvec_push(out, end - p);
            end = p;
        }
    }
    if (end > s->a) tl_szvec_push(out, end - s->a);
    for (size_t i = first, j = out->n - 1; i < j; i++, j--) {
        size_t t = out->v[i];
        out->v[i] = out->v[j];
        out->v[j] = t;
    }
}

/* ---- regex steps: character classes ---- */

typedef enum {
    CLS_L,         /* \p{L} */
    CLS_N,         /* \p{N} */
    CLS_P,         /* \p{P} */
    CLS_NL,        /* [\r\n] */
    CLS_CJK,       /* [一-龥ࠀ-一가-퟿] */
    CLS_CJK_KANA,  /* [一-龥぀-ゟ゠-ヿ] */
    CLS_DEFAULT_P, /* [\p{P}\$\+<=>\^~\|] */
    CLS_FALCON_P,  /* [\p{P}\$\+<=>\^~\|`] */
    CLS_BLOOM,     /* [^(\s|.,!?…。，、।۔،)] */
    CLS_DS_LETTER, /* DeepSeek LLM's [A-Za-zµÀ-ÖØ-öø-ƺ...] (Latin, Greek, Cyrillic, ... letters) */
    CLS_DS_PUNCT,  /* DeepSeek LLM's [!-/:-~！-／：-～‘-‟　-。] */
    CLS_CHAM_P,    /* Chameleon's [\p{P}!-/:-@\[-`{-~] */
} cls_id;

/* DeepSeek LLM's letter class, as ranges of codepoints (from its tokenizer's regex) */
static const uint32_t DS_LETTER[][2] = {
    {0x00041, 0x0005a}, {0x00061, 0x0007a}, {0x000b5, 0x000b5}, {0x000c0, 0x000d6}, {0x000d8, 0x000f6},
    {0x000f8, 0x001ba}, {0x001bc, 0x001bf}, {0x001c4, 0x00293}, {0x00295, 0x002af}, {0x00370, 0x00373},
    {0x00376, 0x00377}, {0x0037b, 0x0037d}, {0x0037f, 0x0037f}, {0x00386, 0x00386}, {0x00388, 0x0038a},
    {0x0038c, 0x0038c}, {0x0038e, 0x003a1}, {0x003a3, 0x003f5}, {0x003f7, 0x00481}, {0x0048a, 0x0052f},
    {0x00531, 0x00556}, {0x010a0, 0x010c5}, {0x013a0, 0x013f5}, {0x013f8, 0x013fd}, {0x01c90, 0x01cba},
    {0x01cbd, 0x01cbf}, {0x01d00, 0x01d2b}, {0x01d6b, 0x01d77}, {0x01d79, 0x01d9a}, {0x01e00, 0x01f15},
    {0x01f18, 0x01f1d}, {0x01f20, 0x01f45}, {0x01f48, 0x01f4d}, {0x01f50, 0x01f57}, {0x01f59, 0x01f59},
    {0x01f5b, 0x01f5b}, {0x01f5d, 0x01f5d}, {0x01f5f, 0x01f7d}, {0x01f80, 0x01fb4}, {0x01fb6, 0x01fbc},
    {0x01fbe, 0x01fbe}, {0x01fc2, 0x01fc4}, {0x01fc6, 0x01fcc}, {0x01fd0, 0x01fd3}, {0x01fd6, 0x01fdb},
    {0x01fe0, 0x01fec}, {0x01ff2, 0x01ff4}, {0x01ff6, 0x01ffc}, {0x02102, 0x02102}, {0x02107, 0x02107},
    {0x0210a, 0x02113}, {0x02115, 0x02115}, {0x02119, 0x0211d}, {0x02124, 0x02124}, {0x02126, 0x02126},
    {0x02128, 0x02128}, {0x0212a, 0x0212d}, {0x0212f, 0x02134}, {0x02139, 0x02139}, {0x0213c, 0x0213f},
    {0x02145, 0x02149}, {0x0214e, 0x0214e}, {0x02183, 0x02184}, {0x02c00, 0x02c7b}, {0x02c7e, 0x02ce4},
    {0x02ceb, 0x02cee}, {0x02cf2, 0x02cf3}, {0x0a640, 0x0a66d}, {0x0a680, 0x0a69b}, {0x0a722, 0x0a76f},
    {0x0a771, 0x0a787}, {0x0a78b, 0x0a78e}, {0x0ab70, 0x0abbf}, {0x0fb00, 0x0fb06}, {0x0fb13, 0x0fb17},
    {0x0ff21, 0x0ff3a}, {0x0ff41, 0x0ff5a}, {0x10400, 0x1044f}, {0x104b0, 0x104d3}, {0x104d8, 0x104fb},
    {0x10c80, 0x10cb2}, {0x10cc0, 0x10cf2}, {0x118a0, 0x118df}, {0x1e900, 0x1e943},
};

static bool in_ranges(uint32_t c, const uint32_t (*r)[2], size_t n) {
    size_t lo = 0, hi = n; /* first range whose end is >= c */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r[mid][1] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && r[lo][0] <= c;
}

static bool in_cls(cls_id k, uint32_t c, uint16_t f) {
    switch (k) {
    case CLS_L: return f & F_L;
    case CLS_N: return f & F_N;
    case CLS_P: return f & F_P;
    case CLS_NL: return is_nl(c);
    case CLS_CJK:
        c = wide_cp(c, f); /* U+2000-U+200A, U+3000 ... are in these ranges */
        return (c >= 0x4e00 && c <= 0x9fa5) || (c >= 0x0800 && c <= 0x4e00) || (c >= 0xac00 && c <= 0xd7ff);
    case CLS_CJK_KANA:
        return (c >= 0x4e00 && c <= 0x9fa5) || (c >= 0x3040 && c <= 0x309f) || (c >= 0x30a0 && c <= 0x30ff);
    case CLS_FALCON_P:
        if (c == '`') return true;
        /* fallthrough */
    case CLS_DEFAULT_P:
        return (f & F_P) || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' || c == '^' || c == '~' ||
               c == '|';
    case CLS_BLOOM:
        if (f & F_WS) return false;
        switch (c) {
        case '(': case '|': case '.': case ',': case '!': case '?': case ')':
        case 0x2026: case 0x3002: case 0xff0c: case 0x3001: case 0x0964: case 0x06d4: case 0x060c:
            return false;
        default:
            return true;
        }
    case CLS_DS_LETTER: return in_ranges(c, DS_LETTER, sizeof DS_LETTER / sizeof DS_LETTER[0]);
    case CLS_DS_PUNCT:
        c = wide_cp(c, f); /* U+3000 */
        return (c >= '!' && c <= '/') || (c >= ':' && c <= '~') || (c >= 0xff01 && c <= 0xff0f) ||
               (c >= 0xff1a && c <= 0xff5e) || (c >= 0x2018 && c <= 0x201f) || (c >= 0x3000 && c <= 0x3002);
    case CLS_CHAM_P:
        if (c < 128)
            return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
        return f & F_P;
    }
    return false;
}

static size_t run_len(const span *s, cls_id k, size_t p) {
    size_t q = p;
    while (q < s->b && in_cls(k, s->cps[q], s->fl[q])) q++;
    return q - p;
}

/* ---- regex steps: matchers (length of the match at p, 0 if none; p < s->b) ---- */

typedef size_t (*matcher)(const span *s, size_t p, cls_id k);

/* [cls]+ */
static size_t m_run(const span *s, size_t p, cls_id k) { return run_len(s, k, p); }

/* [cls] */
static size_t m_one(const span *s, size_t p, cls_id k) { return in_cls(k, s->cps[p], s->fl[p]) ? 1 : 0; }

/* [cls]{1,3} */
static size_t m_upto3(const span *s, size_t p, cls_id k) {
    size_t n = 0;
    while (n < 3 && p + n < s->b && in_cls(k, s->cps[p + n], s->fl[p + n])) n++;
    return n;
}

/* \s?[cls]+ (greedy: with the optional prefix first, then without it) */
static size_t m_ws_run(const span *s, size_t p, cls_id k) {
    if ((s->fl[p] & F_WS) && p + 1 < s->b) {
        size_t r = run_len(s, k, p + 1);
        if (r) return r + 1;
    }
    return run_len(s, k, p);
}

/* ' '?[cls]+ */
static size_t m_sp_run(const span *s, size_t p, cls_id k) {
    if (s->cps[p] == ' ' && p + 1 < s->b) {
        size_t r = run_len(s, k, p + 1);
        if (r) return r + 1;
    }
    return run_len(s, k, p);
}

/* [0-9][0-9][0-9] */
static size_t m_digit3(const span *s, size_t p, cls_id k) {
    (void)k;
    if (s->b - p < 3) return 0;
    for (size_t i = 0; i < 3; i++)
        if (s->cps[p + i] < '0' || s->cps[p + i] > '9') return 0;
    return 3;
}

static bool lit_at(const span *s, size_t p, const char *lit) {
    for (size_t i = 0; lit[i]; i++)
        if (cp_at(s, p + i) != (uint8_t)lit[i]) return false;
    return true;
}

/* <sentinel:[0-9]+> */
static size_t m_sentinel(const span *s, size_t p, cls_id k) {
    (void)k;
    if (!lit_at(s, p, "<sentinel:")) return 0;
    size_t q = p + 10;
    while (cp_at(s, q) >= '0' && cp_at(s, q) <= '9') q++;
    return q > p + 10 && cp_at(s, q) == '>' ? q + 1 - p : 0;
}

/* (IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z: a fifth letter leaves no Z where one is needed */
static size_t m_image(const span *s, size_t p, cls_id k) {
    (void)k;
    if (!lit_at(s, p, "IMGIMG")) return 0;
    size_t q = p + 6;
    while (q - (p + 6) < 5 && cp_at(s, q) >= 'A' && cp_at(s, q) <= 'I') q++;
    size_t n = q - (p + 6);
    return n >= 1 && n <= 4 && cp_at(s, q) == 'Z' ? q + 1 - p : 0;
}

/* ([\t\n]|    |  ) */
static size_t m_cham_space(const span *s, size_t p, cls_id k) {
    (void)k;
    if (s->cps[p] == '\t' || s->cps[p] == '\n') return 1;
    if (lit_at(s, p, "    ")) return 4;
    return lit_at(s, p, "  ") ? 2 : 0;
}

/* DeepSeek V3 after its digits and CJK steps:
 * [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*
 *     |\s*[\r\n]+|\s+(?!\S)|\s+
 * (\p{P}\p{S} collapsed: '~' is in neither, so it can precede letters as the optional prefix) */
static size_t lm_run(const span *s, size_t p) {
    size_t q = p;
    while (fl_at(s, q) & (F_L | F_M)) q++;
    return q - p;
}

static size_t m_deepseek3(const span *s, size_t p, cls_id k) {
    (void)k;
    const uint32_t c = s->cps[p];
    const uint16_t f = s->fl[p];
    if (c > ' ' && c < 0x7f && !(f & (F_L | F_N))) { /* ASCII punctuation, then ASCII letters */
        size_t q = p + 1;
        while (q < s->b && (is_upper_ascii(s->cps[q]) || is_lower_ascii(s->cps[q]))) q++;
        if (q > p + 1) return q - p;
    }
    if (!is_nl(c) && !(f & F_L) && !is_punct_sym(c, f)) {
        size_t n = lm_run(s, p + 1);
        if (n) return n + 1;
    }
    size_t n = lm_run(s, p);
    if (n) return n;
    size_t q = p + (c == ' ' && p + 1 < s->b && is_punct_sym(s->cps[p + 1], s->fl[p + 1]));
    while (q < s->b && is_punct_sym(s->cps[q], s->fl[q])) q++;
    if (q > p + (c == ' ')) {
        while (is_nl(cp_at(s, q))) q++;
        return q - p;
    }
    return ws_tail(s, p);
}

/* Tekken's and GPT-4o's words, at q (a letter):
 *   A1 = ((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+ | A2 = ((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*
 * Over collapsed text a non-ASCII letter X is both "not a-z" and "not A-Z". A1's greedy first
 * run takes A-Z and X; if a-z follows, its second run takes a-z and X. Otherwise A1 backtracks to
 * the last X of the first run (which its second run needs), or fails on a run of A-Z alone,
 * which A2 then takes: "ÀB" -> "À" "B", "ÉCOLE" -> "É" "COLE", "XMLHttp" stays whole. */
static size_t case_word_end(const span *s, size_t q) {
    size_t last_x = 0;
    bool any_x = false;
    while ((fl_at(s, q) & F_L) && !is_lower_ascii(s->cps[q])) {
        if (!is_upper_ascii(s->cps[q])) {
            last_x = q;
            any_x = true;
        }
        q++;
    }
    if (is_lower_ascii(cp_at(s, q))) {
        while ((fl_at(s, q) & F_L) && !is_upper_ascii(s->cps[q])) q++;
        return q;
    }
    return any_x ? last_x + 1 : q;
}

/* [^\r\n\p{L}\p{N}]?(A1|A2)C?|\p{N}{1,G}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * Tekken: G = 1, no C; GPT-4o: G = 3, C = the contractions. */
static size_t case_words(const span *s, size_t p, size_t group, bool contractions) {
    const uint32_t c = s->cps[p];
    const uint16_t f = s->fl[p];
    size_t q = p;
    if (!is_nl(c) && !(f & (F_L | F_N)) && (fl_at(s, p + 1) & F_L)) q = p + 1;
    if (fl_at(s, q) & F_L) {
        size_t e = case_word_end(s, q);
        if (contractions) e += contraction(s, e);
        return e - p;
    }
    if (f & F_N) {
        size_t n = 1;
        while (n < group && (fl_at(s, p + n) & F_N)) n++;
        return n;
    }
    q = p + (c == ' ' && is_other(fl_at(s, p + 1)));
    if (is_other(fl_at(s, q))) {
        while (is_other(fl_at(s, q))) q++;
        while (is_nl(cp_at(s, q)) || cp_at(s, q) == '/') q++;
        return q - p;
    }
    return ws_tail(s, p);
}

static size_t m_tekken(const span *s, size_t p, cls_id k) {
    (void)k;
    return case_words(s, p, 1, false);
}

static size_t m_gpt4o(const span *s, size_t p, cls_id k) {
    (void)k;
    return case_words(s, p, 3, true);
}

/* std::regex_iterator over [a, b): matches and the gaps between them become pieces. */
static void regex_step(const span *s, matcher m, cls_id k, tl_szvec *out) {
    size_t gap = s->a, pos = s->a;
    while (pos < s->b) {
        size_t len = m(s, pos, k);
        if (len == 0) {
            pos++;
            continue;
        }
        if (pos > gap) tl_szvec_push(out, pos - gap);
        tl_szvec_push(out, len);
        pos += len;
        gap = pos;
    }
    if (s->b > gap) tl_szvec_push(out, s->b - gap);
}

/* ---- the steps of each kind ---- */

typedef enum { S_GPT2, S_LLAMA3, S_QWEN2, S_SEED_CODER, S_WS_END, S_DIGIT_GROUPS, S_REGEX } step_kind;
typedef struct {
    step_kind kind;
    matcher m;
    cls_id k;
} step;

#define MAX_STEPS 6

static int steps_for(tl_pretok kind, step *st) {
    int n = 0;
#define SPLIT(kind_) (st[n].kind = (kind_), st[n].m = NULL, st[n].k = 0, n++)
#define REGEX(m_, k_) (st[n].kind = S_REGEX, st[n].m = (m_), st[n].k = (k_), n++)
    switch (kind) {
    case TL_PRE_GPT2:
        SPLIT(S_GPT2);
        break;
    case TL_PRE_LLAMA3:
        SPLIT(S_LLAMA3);
        break;
    case TL_PRE_QWEN2:
        SPLIT(S_QWEN2);
        break;
    case TL_PRE_SEED_CODER:
        SPLIT(S_SEED_CODER);
        break;
    case TL_PRE_DEEPSEEK_LLM:
        REGEX(m_one, CLS_NL);
        REGEX(m_ws_run, CLS_DS_LETTER);
        REGEX(m_ws_run, CLS_DS_PUNCT);
        SPLIT(S_WS_END);
        REGEX(m_run, CLS_CJK);
        REGEX(m_run, CLS_N);
        break;
    case TL_PRE_DEEPSEEK3:
        REGEX(m_upto3, CLS_N);
        REGEX(m_run, CLS_CJK_KANA);
        REGEX(m_deepseek3, 0);
        break;
    case TL_PRE_DEEPSEEK_CODER:
        REGEX(m_one, CLS_NL);
        REGEX(m_ws_run, CLS_L);
        REGEX(m_ws_run, CLS_P);
        REGEX(m_run, CLS_CJK);
        REGEX(m_one, CLS_N);
        break;
    case TL_PRE_FALCON:
        REGEX(m_run, CLS_FALCON_P);
        SPLIT(S_GPT2);
        REGEX(m_digit3, 0);
        break;
    case TL_PRE_SMOLLM:
        REGEX(m_one, CLS_N);
        SPLIT(S_GPT2);
        break;
    case TL_PRE_BLOOM:
        REGEX(m_sp_run, CLS_BLOOM);
        break;
    case TL_PRE_VIKING:
        REGEX(m_sp_run, CLS_BLOOM);
        REGEX(m_one, CLS_N);
        break;
    case TL_PRE_TEKKEN:
        REGEX(m_tekken, 0);
        break;
    case TL_PRE_GPT4O:
        REGEX(m_gpt4o, 0);
        break;
    case TL_PRE_CHAMELEON:
        REGEX(m_sentinel, 0);
        REGEX(m_image, 0);
        REGEX(m_cham_space, 0);
        REGEX(m_one, CLS_N);
        REGEX(m_one, CLS_CHAM_P);
        SPLIT(S_GPT2);
        break;
    case TL_PRE_SUPERBPE:
        REGEX(m_run, CLS_N);
        SPLIT(S_DIGIT_GROUPS);
        break;
    case TL_PRE_DEFAULT:
    default:
        REGEX(m_run, CLS_DEFAULT_P);
        SPLIT(S_GPT2);
        REGEX(m_run, CLS_N);
        REGEX(m_digit3, 0);
        break;
    }
#undef SPLIT
#undef REGEX
    return n;
}

void tl_pretok_split(tl_pretok kind, const uint32_t *cps, const uint16_t *flags, size_t n, tl_szvec *out,
                     tl_szvec *tmp) {
    step st[MAX_STEPS];
    int ns = steps_for(kind, st);
    out->n = 0;
    tmp->n = 0;
    if (n == 0) return;
    tl_szvec_push(out, n);
    for (int i = 0; i < ns; i++) {
        /* pieces of the previous step are in out; split each into tmp, then swap */
        tl_szvec *src = out, *dst = tmp;
        dst->n = 0;
        size_t start = 0;
        for (size_t j = 0; j < src->n; j++) {
            span s = {cps, flags, start, start + src->v[j]};
            switch (st[i].kind) {
            case S_GPT2: split_gpt2(&s, dst); break;
            case S_LLAMA3: split_llama3(&s, dst, 3, true); break;
            case S_QWEN2: split_llama3(&s, dst, 1, true); break;
            case S_SEED_CODER: split_llama3(&s, dst, 1, false); break;
            case S_WS_END: split_ws_end(&s, dst); break;
            case S_DIGIT_GROUPS: split_digit_groups(&s, dst); break;
            case S_REGEX: regex_step(&s, st[i].m, st[i].k, dst); break;
            }
            start = s.b;
        }
        tl_szvec t = *out;
        *out = *tmp;
        *tmp = t;
    }
}
