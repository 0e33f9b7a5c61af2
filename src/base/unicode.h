/* unicode.h: the small amount of Unicode the tokenizers need: UTF-8 decoding (strict
 * validation for user input, and llama.cpp's lenient decoder for internal fragments),
 * UTF-8 encoding, and per-codepoint category classes (\p{L}, \p{N}, ... and \s). */
#ifndef TL_UNICODE_H
#define TL_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Category classes, as stored in the generated table (unicode_data.c). */
enum {
    TL_UCAT_UNDEF = 0, /* unassigned (Cn) */
    TL_UCAT_NUMBER = 1,
    TL_UCAT_LETTER = 2,
    TL_UCAT_SEPARATOR = 3,
    TL_UCAT_MARK = 4,
    TL_UCAT_PUNCT = 5,
    TL_UCAT_SYMBOL = 6,
    TL_UCAT_CONTROL = 7,
};

/* Flag bits returned by tl_unicode_flags (same meaning as llama.cpp's codepoint flags).
 * A codepoint beyond U+10FFFF gets TL_UF_UNDEF; 0 is reserved for "no codepoint". */
enum {
    TL_UF_UNDEF = 1 << 0,
    TL_UF_NUMBER = 1 << 1,
    TL_UF_LETTER = 1 << 2,
    TL_UF_SEPARATOR = 1 << 3,
    TL_UF_MARK = 1 << 4,
    TL_UF_PUNCT = 1 << 5,
    TL_UF_SYMBOL = 1 << 6,
    TL_UF_CONTROL = 1 << 7,
    TL_UF_WHITESPACE = 1 << 8,
};

extern const uint32_t tl_unicode_ranges[];
extern const size_t tl_unicode_n_ranges;
extern const uint32_t tl_unicode_lower[][2];
extern const size_t tl_unicode_n_lower;
extern const uint32_t tl_unicode_nfd[][3];
extern const size_t tl_unicode_n_nfd;

/* Category class (TL_UCAT_*) of a codepoint. */
int tl_unicode_category(uint32_t cp);
/* Unicode White_Space property. */
bool tl_unicode_is_whitespace(uint32_t cp);
/* TL_UF_* flags: one category bit plus TL_UF_WHITESPACE. */
uint16_t tl_unicode_flags(uint32_t cp);
/* Simple lower-case mapping (UnicodeData.txt); cp itself where there is none. */
uint32_t tl_unicode_tolower(uint32_t cp);
/* The first codepoint of cp's canonical decomposition (NFD): "é" -> "e", "ǖ" -> "u"; cp itself
 * where it does not decompose. llama.cpp's WordPiece normalisation (marks are dropped). */
uint32_t tl_unicode_nfd_base(uint32_t cp);

/* Length of the UTF-8 sequence a lead byte announces (1 for continuation/invalid bytes),
 * from the top 4 bits, as llama.cpp's unicode_len_utf8. */
static inline size_t tl_utf8_len(uint8_t lead) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[lead >> 4];
}

/* Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 if invalid or cut short
 * (RFC 3629: no overlongs, surrogates or code points past U+10FFFF). i < n. */
size_t tl_utf8_seq_len(const char *s, size_t n, size_t i);
/* Strict validation by the same rule. Returns n if s[0..n) is valid, else the byte offset
 * where the bad sequence starts. */
size_t tl_utf8_validate(const char *s, size_t n);
static inline bool tl_utf8_valid(const char *s, size_t n) { return tl_utf8_validate(s, n) == n; }

/* Decode the codepoint at s[*pos] (pos < n) the way llama.cpp does: well-formed lead and
 * continuation bits are accepted without overlong/range checks; anything else yields
 * U+FFFD and advances one byte. Never reads past s[n-1]. */
uint32_t tl_utf8_decode_lax(const char *s, size_t n, size_t *pos);

/* Encode cp (any value below 2^21) as 1-4 bytes; returns the byte count. */
int tl_utf8_encode(uint32_t cp, char out[4]);

#endif
