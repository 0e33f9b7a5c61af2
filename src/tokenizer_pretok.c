/* tokenizer_pretok.c: hand-coded pre-tokenizer regexes (see tokenizer_pretok.h).
 *
 * Two kinds of splitters:
 *  - "custom" ones for the GPT-2 and Llama-3 regexes, which reproduce llama.cpp's
 *    hand-written splitters (each match becomes a piece; they cover every codepoint);
 *  - generic regex steps: a matcher returns the length of the regex match starting at a
 *    position (0: none), and the runner emulates std::regex_iterator over each piece:
 *    leftmost matches become pieces, and the unmatched text between them becomes one piece.
 *
 * Character classes follow llama.cpp's regex handling: \p{L}, \p{N}, \p{P} are Unicode general
 * categories (for ASCII: A-Za-z, 0-9 and !"#%&'()*,-./:;?@[\]_{}); \s is Unicode White_Space. */
#include "tokenizer_pretok.h"

#include <stdlib.h>

#include "common.h"
#include "unicode.h"

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

enum { F_L = TL_UF_LETTER, F_N = TL_UF_NUMBER, F_P = TL_UF_PUNCT, F_WS = TL_UF_WHITESPACE };

/* ---- custom splitters ---- */

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
        if (!(f2 & (F_WS | F_L | F_N)) && f2) {
            pos += c == ' ';
            while (!(f2 & (F_WS | F_L | F_N)) && f2) f2 = fl_at(s, ++pos);
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

static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,G}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * with G = 3 (Llama 3) or 1 (Qwen2's \p{N}). Only ASCII letters lower-case to s,t,r,e,v,m,l,d,
 * so ASCII lower-casing equals Unicode lower-casing here. */
static void split_llama3(const span *s, tl_szvec *out, size_t group) {
    emitter e = {out, s->a};
    size_t pos = s->a;
    while (pos < s->b) {
        uint32_t c = s->cps[pos];
        uint16_t f = s->fl[pos];
        if (c == '\'' && pos + 1 < s->b) {
            uint32_t c1 = ascii_lower(s->cps[pos + 1]);
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                pos += emit_to(&e, pos + 2);
                continue;
            }
            if (pos + 2 < s->b) {
                uint32_t c2 = ascii_lower(s->cps[pos + 2]);
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                    pos += emit_to(&e, pos + 3);
                    continue;
                }
            }
        }
        if (!(c == '\r' || c == '\n' || (f & F_N))) {
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
            while (!(f2 & (F_WS | F_L | F_N)) && f2) f2 = fl_at(s, ++pos);
            uint32_t c2 = cp_at(s, pos);
            while (c2 == '\r' || c2 == '\n') c2 = cp_at(s, ++pos);
            emit_to(&e, pos);
            continue;
        }
        size_t nws = 0, last_nl_end = 0;
        while (fl_at(s, pos + nws) & F_WS) {
            uint32_t c2 = s->cps[pos + nws];
            if (c2 == '\r' || c2 == '\n') last_nl_end = pos + nws + 1;
            nws++;
        }
        if (last_nl_end > 0) { /* \s*[\r\n]+ */
            pos = last_nl_end;
            emit_to(&e, pos);
            continue;
        }
        if (nws > 1 && pos + nws < s->b) {
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

/* ---- generic regex steps ---- */

typedef enum {
    CLS_L,          /* \p{L} */
    CLS_N,          /* \p{N} */
    CLS_P,          /* \p{P} */
    CLS_NL,         /* [\r\n] */
    CLS_CJK,        /* [一-龥ࠀ-一가-퟿] */
    CLS_DEFAULT_P,  /* [\p{P}\$\+<=>\^~\|] */
    CLS_FALCON_P,   /* [\p{P}\$\+<=>\^~\|`] */
    CLS_BLOOM,      /* [^(\s|.,!?…。，、।۔،)] */
} cls_id;

static bool in_cls(cls_id k, uint32_t c, uint16_t f) {
    switch (k) {
    case CLS_L: return f & F_L;
    case CLS_N: return f & F_N;
    case CLS_P: return f & F_P;
    case CLS_NL: return c == '\r' || c == '\n';
    case CLS_CJK: return (c >= 0x4e00 && c <= 0x9fa5) || (c >= 0x0800 && c <= 0x4e00) || (c >= 0xac00 && c <= 0xd7ff);
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
    }
    return false;
}

typedef enum {
    M_RUN,      /* [cls]+ */
    M_ONE,      /* [cls] */
    M_WS_RUN,   /* \s?[cls]+ */
    M_SP_RUN,   /* ' '?[cls]+ */
    M_DIGIT3,   /* [0-9][0-9][0-9] */
} matcher_id;

static size_t run_len(const span *s, cls_id k, size_t p) {
    size_t q = p;
    while (q < s->b && in_cls(k, s->cps[q], s->fl[q])) q++;
    return q - p;
}

/* Length of the match of the step at p (within the piece), 0 if none. */
static size_t match_at(const span *s, matcher_id m, cls_id k, size_t p) {
    switch (m) {
    case M_RUN: return run_len(s, k, p);
    case M_ONE: return in_cls(k, s->cps[p], s->fl[p]) ? 1 : 0;
    case M_WS_RUN:
    case M_SP_RUN: {
        /* greedy optional prefix first, then without it */
        bool pre = m == M_WS_RUN ? (s->fl[p] & F_WS) != 0 : s->cps[p] == ' ';
        if (pre && p + 1 < s->b) {
            size_t r = run_len(s, k, p + 1);
            if (r) return r + 1;
        }
        return run_len(s, k, p);
    }
    case M_DIGIT3:
        if (s->b - p < 3) return 0;
        for (size_t i = 0; i < 3; i++)
            if (s->cps[p + i] < '0' || s->cps[p + i] > '9') return 0;
        return 3;
    }
    return 0;
}

/* std::regex_iterator over [a, b): matches and the gaps between them become pieces. */
static void regex_step(const span *s, matcher_id m, cls_id k, tl_szvec *out) {
    size_t gap = s->a, pos = s->a;
    while (pos < s->b) {
        size_t len = match_at(s, m, k, pos);
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

typedef enum { S_GPT2, S_LLAMA3, S_QWEN2, S_REGEX } step_kind;
typedef struct {
    step_kind kind;
    matcher_id m;
    cls_id k;
} step;

#define MAX_STEPS 5

static int steps_for(tl_pretok kind, step *st) {
    int n = 0;
#define ADD(kind_, m_, k_) (st[n].kind = (kind_), st[n].m = (m_), st[n].k = (k_), n++)
    switch (kind) {
    case TL_PRE_GPT2:
        ADD(S_GPT2, 0, 0);
        break;
    case TL_PRE_LLAMA3:
        ADD(S_LLAMA3, 0, 0);
        break;
    case TL_PRE_QWEN2:
        ADD(S_QWEN2, 0, 0);
        break;
    case TL_PRE_DEEPSEEK_CODER:
        ADD(S_REGEX, M_ONE, CLS_NL);
        ADD(S_REGEX, M_WS_RUN, CLS_L);
        ADD(S_REGEX, M_WS_RUN, CLS_P);
        ADD(S_REGEX, M_RUN, CLS_CJK);
        ADD(S_REGEX, M_ONE, CLS_N);
        break;
    case TL_PRE_FALCON:
        ADD(S_REGEX, M_RUN, CLS_FALCON_P);
        ADD(S_GPT2, 0, 0);
        ADD(S_REGEX, M_DIGIT3, 0);
        break;
    case TL_PRE_SMOLLM:
        ADD(S_REGEX, M_ONE, CLS_N);
        ADD(S_GPT2, 0, 0);
        break;
    case TL_PRE_BLOOM:
        ADD(S_REGEX, M_SP_RUN, CLS_BLOOM);
        break;
    case TL_PRE_VIKING:
        ADD(S_REGEX, M_SP_RUN, CLS_BLOOM);
        ADD(S_REGEX, M_ONE, CLS_N);
        break;
    case TL_PRE_DEFAULT:
    default:
        ADD(S_REGEX, M_RUN, CLS_DEFAULT_P);
        ADD(S_GPT2, 0, 0);
        ADD(S_REGEX, M_RUN, CLS_N);
        ADD(S_REGEX, M_DIGIT3, 0);
        break;
    }
#undef ADD
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
            case S_LLAMA3: split_llama3(&s, dst, 3); break;
            case S_QWEN2: split_llama3(&s, dst, 1); break;
            case S_REGEX: regex_step(&s, st[i].m, st[i].k, dst); break;
            }
            start = s.b;
        }
        tl_szvec t = *out;
        *out = *tmp;
        *tmp = t;
    }
}
