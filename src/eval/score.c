/* score.c: see score.h. */
#include "score.h"
#include "../base/common.h"
#include "../base/unicode.h"

#include <stdlib.h>
#include <string.h>

static const char *const metric_names[] = {"exact", "contains", "f1", "choice", "all", "number"};
_Static_assert(sizeof metric_names / sizeof *metric_names == TL_METRIC_COUNT, "a name for every metric");

const char *tl_metric_name(tl_metric m) { return (unsigned)m < TL_METRIC_COUNT ? metric_names[m] : "?"; }

int tl_metric_parse(const char *s) {
    for (int i = 0; i < TL_METRIC_COUNT; i++)
        if (!strcmp(s, metric_names[i])) return i;
    if (!strcmp(s, "em") || !strcmp(s, "exact_match")) return TL_METRIC_EXACT;
    if (!strcmp(s, "string_match_all")) return TL_METRIC_ALL;
    if (!strcmp(s, "mc") || !strcmp(s, "multiple_choice")) return TL_METRIC_CHOICE;
    return -1;
}

/* Simple one-to-one lower-casing for the scripts named in score.h. */
static uint32_t lower_cp(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c < 0xC0) return c;
    if (c <= 0xDE && c != 0xD7) return c + 32;                       /* Latin-1 */
    if (c >= 0x100 && c <= 0x137 && !(c & 1)) return c + 1;          /* Latin Ext-A, pairs */
    if (c >= 0x139 && c <= 0x148 && (c & 1)) return c + 1;
    if (c >= 0x14A && c <= 0x177 && !(c & 1)) return c + 1;
    if (c == 0x178) return 0xFF;
    if (c >= 0x179 && c <= 0x17E && (c & 1)) return c + 1;
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;       /* Greek */
    if (c >= 0x410 && c <= 0x42F) return c + 32;                     /* Cyrillic */
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    return c;
}

static bool is_space_cp(uint32_t c) {
    return tl_unicode_is_whitespace(c) || (c >= 0x200B && c <= 0x200D) || c == 0xFEFF;
}

static bool is_cjk(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x3040 && c <= 0x30FF) ||
           (c >= 0xAC00 && c <= 0xD7AF) || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x20000 && c <= 0x2FFFF);
}

static void sb_cp(tl_strbuf *b, uint32_t c) {
    char u[4];
    tl_strbuf_put(b, u, (size_t)tl_utf8_encode(c, u));
}

/* Collapse whitespace, lower-case, optionally drop punctuation; CJK characters are set apart
 * by spaces when split_cjk so that F1 counts them one by one. */
static char *normalize(const char *s, bool strip_punct, bool split_cjk) {
    tl_strbuf b = {0};
    tl_strbuf_put(&b, "", 0);
    const size_t n = strlen(s);
    size_t pos = 0;
    bool pending_space = false;
    while (pos < n) {
        uint32_t c = tl_utf8_decode_lax(s, n, &pos);
        if (is_space_cp(c)) {
            pending_space = b.n > 0;
            continue;
        }
        if (strip_punct && tl_unicode_category(c) == TL_UCAT_PUNCT) {
            /* punctuation separates words ("a,b" -> "a b") but never creates leading space */
            pending_space = b.n > 0;
            continue;
        }
        const bool cjk = split_cjk && is_cjk(c);
        if ((pending_space || cjk) && b.n > 0 && b.p[b.n - 1] != ' ') tl_strbuf_put(&b, " ", 1);
        pending_space = cjk;
        sb_cp(&b, lower_cp(c));
    }
    while (b.n > 0 && b.p[b.n - 1] == ' ') b.p[--b.n] = 0;
    if (!strip_punct) return b.p;
    /* drop articles, SQuAD style */
    tl_strbuf o = {0};
    tl_strbuf_put(&o, "", 0);
    char *save = NULL;
    for (char *w = strtok_r(b.p, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
        if (!strcmp(w, "a") || !strcmp(w, "an") || !strcmp(w, "the")) continue;
        if (o.n) tl_strbuf_put(&o, " ", 1);
        tl_strbuf_put(&o, w, strlen(w));
    }
    free(b.p);
    return o.p;
}


double tl_score_exact(const char *pred, const char *ref) {
    char *a = normalize(pred, false, false), *b = normalize(ref, false, false);
    /* a trailing sentence mark is not part of an answer */
    for (char *x = a; x; x = x == a ? b : NULL) {
        size_t l = strlen(x);
        while (l > 0 && strchr(".,;:!?", x[l - 1])) x[--l] = 0;
        while (l > 0 && x[l - 1] == ' ') x[--l] = 0;
    }
    double r = strcmp(a, b) == 0;
    free(a);
    free(b);
    return r;
}

/* needle occurs in hay at word boundaries (both normalized, words split by ' ') */
static bool contains_words(const char *hay, const char *needle) {
    const size_t nl = strlen(needle);
    if (nl == 0) return true;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) {
        const bool left = p == hay || p[-1] == ' ';
        const bool right = p[nl] == 0 || p[nl] == ' ';
        if (left && right) return true;
    }
    return false;
}

double tl_score_contains(const char *pred, const char *ref) {
    char *a = normalize(pred, true, true), *b = normalize(ref, true, true);
    double r = contains_words(a, b);
    free(a);
    free(b);
    return r;
}

static int split_words(char *s, char ***out) {
    int n = 0, cap = 16;
    char **w = tl_xmalloc(sizeof(char *) * (size_t)cap);
    char *save = NULL;
    for (char *t = strtok_r(s, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        if (n == cap) w = tl_xrealloc(w, sizeof(char *) * (size_t)(cap *= 2));
        w[n++] = t;
    }
    *out = w;
    return n;
}

double tl_score_f1(const char *pred, const char *ref) {
    char *a = normalize(pred, true, true), *b = normalize(ref, true, true);
    char **wa, **wb;
    const int na = split_words(a, &wa), nb = split_words(b, &wb);
    double f1 = 0;
    if (na == 0 || nb == 0) {
        f1 = na == nb; /* both empty: match */
    } else {
        /* bag-of-words overlap: each reference word can be matched once */
        bool *used = tl_xcalloc((size_t)nb, 1);
        int common = 0;
        for (int i = 0; i < na; i++)
            for (int j = 0; j < nb; j++)
                if (!used[j] && !strcmp(wa[i], wb[j])) {
                    used[j] = true;
                    common++;
                    break;
                }
        free(used);
        if (common > 0) {
            const double p = (double)common / na, r = (double)common / nb;
            f1 = 2 * p * r / (p + r);
        }
    }
    free(wa);
    free(wb);
    free(a);
    free(b);
    return f1;
}

double tl_score_number(const char *pred, const char *ref) {
    const char *p = pred;
    while (*p && !(*p >= '0' && *p <= '9')) p++;
    const char *pe = p;
    while (*pe >= '0' && *pe <= '9') pe++;
    const char *r = ref;
    while (*r == ' ' || *r == '\t' || *r == '\n') r++;
    const char *re = r;
    while (*re >= '0' && *re <= '9') re++;
    if (re == r || pe == p) return 0;
    return (pe - p == re - r) && !memcmp(p, r, (size_t)(re - r));
}

double tl_score_all(const char *pred, const char *const *refs, int n_refs) {
    if (n_refs <= 0) return 0;
    char *a = normalize(pred, true, true);
    int hit = 0;
    for (int i = 0; i < n_refs; i++) {
        char *b = normalize(refs[i], true, true);
        hit += contains_words(a, b);
        free(b);
    }
    free(a);
    return (double)hit / n_refs;
}

double tl_score(tl_metric m, const char *pred, const char *const *refs, int n_refs) {
    if (m == TL_METRIC_ALL) return tl_score_all(pred, refs, n_refs);
    double best = 0;
    for (int i = 0; i < n_refs; i++) {
        double v = 0;
        switch (m) {
        case TL_METRIC_EXACT: v = tl_score_exact(pred, refs[i]); break;
        case TL_METRIC_CONTAINS: v = tl_score_contains(pred, refs[i]); break;
        case TL_METRIC_F1: v = tl_score_f1(pred, refs[i]); break;
        case TL_METRIC_NUMBER: v = tl_score_number(pred, refs[i]); break;
        default: v = 0;
        }
        if (v > best) best = v;
    }
    return best;
}
