/* common.c: error formatting, checked allocation, clock. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

int tl_fail(tl_error *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int tl_fail_prefix(tl_error *err, const char *fmt, ...) {
    if (err) {
        char ctx[256], old[sizeof err->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx, sizeof ctx, fmt, ap);
        va_end(ap);
        memcpy(old, err->msg, sizeof old);
        snprintf(err->msg, sizeof err->msg, "%s: %s", ctx, old);
    }
    return -1;
}

static void oom(size_t n) {
    fprintf(stderr, "tailor: out of memory allocating %zu bytes\n", n);
    abort();
}

void *tl_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *tl_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}

void *tl_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *tl_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = tl_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

void *tl_amalloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? (n + 63) & ~(size_t)63 : 64) != 0) return NULL;
    return p;
}

void tl_afree(void *p) { free(p); }

double tl_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int tl_write_file(const char *path, const void *data, size_t len, tl_error *err) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return tl_fail(err, "%s: %s", tmp, strerror(errno));
    if (fwrite(data, 1, len, f) != len || fflush(f) || fsync(fileno(f))) {
        fclose(f);
        unlink(tmp);
        return tl_fail(err, "%s: write failed: %s", path, strerror(errno));
    }
    fclose(f);
    if (rename(tmp, path)) {
        unlink(tmp);
        return tl_fail(err, "%s: rename failed: %s", path, strerror(errno));
    }
    return 0;
}

void tl_strbuf_printf(tl_strbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        const int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        b->cap = (b->cap + (size_t)k + 1) * 2;
        b->p = tl_xrealloc(b->p, b->cap);
    }
}

void tl_strbuf_xml(tl_strbuf *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': tl_strbuf_printf(b, "&lt;"); break;
        case '>': tl_strbuf_printf(b, "&gt;"); break;
        case '&': tl_strbuf_printf(b, "&amp;"); break;
        case '"': tl_strbuf_printf(b, "&quot;"); break;
        default: tl_strbuf_printf(b, "%c", *s);
        }
    }
}
