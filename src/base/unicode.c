/* unicode.c: UTF-8 helpers and category lookups over the generated range table. */
#include "unicode.h"

int tl_unicode_category(uint32_t cp) {
    if (cp >= 0x110000) return TL_UCAT_UNDEF;
    /* binary search for the last range start <= cp */
    size_t lo = 0, hi = tl_unicode_n_ranges;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if ((tl_unicode_ranges[mid] >> 3) <= cp)
            lo = mid;
        else
            hi = mid;
    }
    return (int)(tl_unicode_ranges[lo] & 7);
}

uint32_t tl_unicode_tolower(uint32_t cp) {
    if (cp < 128) return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    size_t lo = 0, hi = tl_unicode_n_lower; /* first pair with codepoint >= cp */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (tl_unicode_lower[mid][0] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < tl_unicode_n_lower && tl_unicode_lower[lo][0] == cp ? tl_unicode_lower[lo][1] : cp;
}

uint32_t tl_unicode_nfd_base(uint32_t cp) {
    if (cp < 0xc0) return cp;
    size_t lo = 0, hi = tl_unicode_n_nfd; /* first range whose last codepoint is >= cp */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (tl_unicode_nfd[mid][1] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < tl_unicode_n_nfd && tl_unicode_nfd[lo][0] <= cp ? tl_unicode_nfd[lo][2] : cp;
}

bool tl_unicode_is_whitespace(uint32_t cp) {
    /* Unicode White_Space (PropList.txt) */
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0d);
    if (cp < 0x85) return false;
    switch (cp) {
    case 0x85: case 0xa0: case 0x1680: case 0x2028: case 0x2029: case 0x202f: case 0x205f: case 0x3000:
        return true;
    default:
        return cp >= 0x2000 && cp <= 0x200a;
    }
}

uint16_t tl_unicode_flags(uint32_t cp) {
    uint16_t f;
    if (cp < 128) {
        /* fast path for ASCII (same answers as the table) */
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z')
            f = TL_UF_LETTER;
        else if (cp >= '0' && cp <= '9')
            f = TL_UF_NUMBER;
        else if (cp < 0x20 || cp == 0x7f)
            f = TL_UF_CONTROL;
        else if (cp == ' ')
            f = TL_UF_SEPARATOR;
        else
            f = (uint16_t)(1u << tl_unicode_category(cp));
    } else {
        f = (uint16_t)(1u << tl_unicode_category(cp));
    }
    if (tl_unicode_is_whitespace(cp)) f |= TL_UF_WHITESPACE;
    return f;
}

size_t tl_utf8_seq_len(const char *str, size_t n, size_t i) {
    const uint8_t *s = (const uint8_t *)str;
    const unsigned c = s[i];
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;     /* no overlongs */
    else if (c == 0xED) len = 3, hi = 0x9F;     /* no surrogates */
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;     /* no overlongs */
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;     /* nothing past U+10FFFF */
    else return 0; /* continuation byte as lead, C0/C1 overlong leads, F5..FF */
    if (n - i < len) return 0;
    if (s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
        if ((s[i + k] & 0xC0) != 0x80) return 0;
    return len;
}

size_t tl_utf8_validate(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        const size_t l = tl_utf8_seq_len(s, n, i);
        if (!l) return i;
        i += l;
    }
    return n;
}

uint32_t tl_utf8_decode_lax(const char *str, size_t n, size_t *pos) {
    const uint8_t *s = (const uint8_t *)str;
    size_t i = *pos;
    uint8_t c = s[i];
    if (!(c & 0x80)) {
        *pos = i + 1;
        return c;
    }
    size_t len;
    uint32_t cp;
    if (!(c & 0x40)) {
        len = 0;
        cp = 0;
    } else if (!(c & 0x20)) {
        len = 2; cp = c & 0x1f;
    } else if (!(c & 0x10)) {
        len = 3; cp = c & 0x0f;
    } else if (!(c & 0x08)) {
        len = 4; cp = c & 0x07;
    } else {
        len = 0;
        cp = 0;
    }
    if (len == 0 || n - i < len) {
        *pos = i + 1;
        return 0xfffd;
    }
    for (size_t k = 1; k < len; k++) {
        if ((s[i + k] & 0xc0) != 0x80) {
            *pos = i + 1;
            return 0xfffd;
        }
        cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    *pos = i + len;
    return cp;
}

int tl_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | ((cp >> 18) & 0x07));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}
