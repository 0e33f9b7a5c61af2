/* common.h: small helpers every tailor source uses: fp16/bf16 conversion, aligned allocation,
 * output files, growable strings. Errors (tl_error, tl_fail), checked allocation, text files
 * and the other helpers the tools share are declared in include/tailor.h. No global mutable
 * state lives here. */
#ifndef TL_COMMON_H
#define TL_COMMON_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>

#include "../../include/tailor.h"

/* 64-byte aligned allocation (free with tl_afree); returns NULL on failure. */
void *tl_amalloc(size_t n);
void tl_afree(void *p);

/* Drop the whole pages inside [p, p + n) of a read-only file mapping from the process's
 * resident set (MADV_DONTNEED): a later read faults them back in from the file, so the bytes
 * never change, only what they cost while unread. Pages shared with bytes outside the range
 * (its first and last, when unaligned) are kept. Never for anonymous or writable memory, whose
 * contents it would discard. */
void tl_release_mapped_pages(const void *p, size_t n);

/* IEEE half and bfloat16 <-> float, scalar and exact (round-to-nearest-even). */
static inline float tl_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalize */
            int e = -1;
            do { e++; mant <<= 1; } while (!(mant & 0x400));
            mant &= 0x3ff;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t tl_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* result is subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* value = m * 2^(e-150); a half subnormal is r * 2^-24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((absx - 0x38000000u) >> 13);
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static inline float tl_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t tl_fp32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000u) return (uint16_t)((x >> 16) | 64); /* quiet nan */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* ---- Output files ----
 * Every file tailor writes goes through tl_outfile: it is written under "<path>.tmp.<pid>" and
 * renamed onto path when complete (the data and then the directory fsync'd), so no reader ever
 * sees it half-written and a failed write leaves the old file as it was. While the temp file
 * exists, a signal that ends the process and can be caught (SIGINT, SIGTERM, SIGHUP, SIGQUIT,
 * SIGPIPE, SIGALRM, SIGUSR1/2, SIGXCPU, SIGXFSZ) removes it first (each of them that still has
 * its default action when the first output is opened). */
typedef struct {
    FILE *f;          /* write here */
    char *path, *tmp;
    int slot;         /* signal clean-up registration; -1 none */
} tl_outfile;

/* tl_check_output, then create the temp file. src: NULL, or the file the output is made from
 * (quantize's input), whose permission bits the output takes. */
int tl_outfile_open(tl_outfile *o, const char *path, const char *src, tl_error *err);
/* Flush, fsync, rename onto the path, fsync the directory; closes o (the temp file is removed
 * on failure). Returns 0 or -1 naming the path. */
int tl_outfile_commit(tl_outfile *o, tl_error *err);
/* Close o and remove its temp file; nothing for a zeroed or already closed o. */
void tl_outfile_abort(tl_outfile *o);

/* A growable string (reports, SVG, metrics, chat prompts, token pieces): printf and put
 * append; p is malloc'd and NUL-terminated after the first append; free(p) when done. */
typedef struct {
    char *p;
    size_t n, cap;
} tl_strbuf;
void tl_strbuf_printf(tl_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append n bytes (NULs included; p[n] stays a NUL after them). */
void tl_strbuf_put(tl_strbuf *b, const void *s, size_t n);
/* Append s with <, >, & and " escaped for XML / SVG text. */
void tl_strbuf_xml(tl_strbuf *b, const char *s);

#endif
