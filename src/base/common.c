/* common.c: error formatting, checked allocation, clock, output files. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* madvise (tl_release_mapped_pages) */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

void tl_release_mapped_pages(const void *p, size_t n) {
    const long ps = sysconf(_SC_PAGESIZE);
    const uintptr_t page = ps > 0 ? (uintptr_t)ps : 4096, a = (uintptr_t)p, b = a + n;
    const uintptr_t lo = (a + page - 1) & ~(page - 1), hi = b & ~(page - 1);
    if (p && hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

int tl_parse_size(const char *s, uint64_t *out) {
    static const struct {
        const char *unit;
        double mul;
    } units[] = {{"", 1},      {"b", 1},         {"k", 0x1p10},  {"kib", 0x1p10}, {"m", 0x1p20}, {"mib", 0x1p20},
                 {"g", 0x1p30}, {"gib", 0x1p30}, {"t", 0x1p40},  {"tib", 0x1p40}, {"kb", 1e3},   {"mb", 1e6},
                 {"gb", 1e9},   {"tb", 1e12}};
    char *end;
    errno = 0;
    const double x = strtod(s, &end);
    if (errno || end == s || !(x >= 0)) return -1;
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (!strcasecmp(end, units[i].unit)) {
            const double v = x * units[i].mul;
            if (!(v < 0x1p64)) return -1;
            *out = (uint64_t)v;
            return 0;
        }
    return -1;
}

double tl_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The length of the UTF-8 sequence at s if it encodes a printable character (not a C1 control,
 * a surrogate, a bidi embedding, override or isolate), else 0. */
static size_t utf8_printable(const unsigned char *s, size_t n) {
    const size_t k = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
    if (!k || k > n || s[0] > 0xf4) return 0;
    uint32_t cp = s[0] & (0x7f >> k);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000}; /* shorter is overlong */
    if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || cp < 0xa0 ||
        (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069))
        return 0;
    return k;
}

size_t tl_escape(char *dst, size_t cap, const char *s, size_t len, const char *also) {
    size_t o = 0, i = 0;
    if (!cap) return 0;
    while (i < len) {
        const unsigned char c = (unsigned char)s[i];
        size_t take = 1, w = 1;
        char tmp[8] = {(char)c};
        if (c == '\\' || (c && also && strchr(also, c))) {
            w = (size_t)snprintf(tmp, sizeof tmp, "\\%c", c);
        } else if (c == '\n' || c == '\t') {
            w = (size_t)snprintf(tmp, sizeof tmp, "\\%c", c == '\n' ? 'n' : 't');
        } else if (c < 0x20 || c == 0x7f) {
            w = (size_t)snprintf(tmp, sizeof tmp, "\\x%02x", c);
        } else if (c >= 0x80) {
            take = w = utf8_printable((const unsigned char *)s + i, len - i);
            if (take) memcpy(tmp, s + i, take);
            else take = 1, w = (size_t)snprintf(tmp, sizeof tmp, "\\x%02x", c);
        }
        if (o + w >= cap) break;
        memcpy(dst + o, tmp, w);
        o += w;
        i += take;
    }
    dst[o] = 0;
    return i;
}

/* ---- output files ----
 * The temp files open now, for the signal handler: a slot is taken (1), filled, then armed (2);
 * the handler removes armed temps of its own process (a forked child inherits the table). */
#define OUT_SLOTS 16
static char out_tmp[OUT_SLOTS][PATH_MAX];
static pid_t out_pid[OUT_SLOTS];
static atomic_int out_state[OUT_SLOTS];
static pthread_once_t out_once = PTHREAD_ONCE_INIT;
/* the signals a process can catch whose default action ends it */
static const int out_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGALRM, SIGUSR1, SIGUSR2, SIGXCPU, SIGXFSZ};
#define N_OUT_SIGNALS (int)(sizeof out_signals / sizeof *out_signals)

static void out_on_signal(int sig) {
    const pid_t me = getpid();
    for (int i = 0; i < OUT_SLOTS; i++)
        if (atomic_load(&out_state[i]) == 2 && out_pid[i] == me) unlink(out_tmp[i]);
    raise(sig); /* SA_RESETHAND: the default action, which ends the process */
}

/* Only where the signal has its default action: a process's own handler is left alone. */
static void out_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = out_on_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < N_OUT_SIGNALS; i++) sigaddset(&sa.sa_mask, out_signals[i]);
    for (int i = 0; i < N_OUT_SIGNALS; i++) {
        struct sigaction old;
        if (sigaction(out_signals[i], NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_DFL)
            sigaction(out_signals[i], &sa, NULL);
    }
}

/* Register a temp path; returns slot + 1, or 0 when the table is full (no clean-up then). */
static int out_arm(const char *tmp) {
    const size_t n = strlen(tmp) + 1;
    if (n > PATH_MAX) return 0;
    pthread_once(&out_once, out_install);
    for (int i = 0; i < OUT_SLOTS; i++) {
        int expect = 0;
        if (!atomic_compare_exchange_strong(&out_state[i], &expect, 1)) continue;
        memcpy(out_tmp[i], tmp, n);
        out_pid[i] = getpid();
        atomic_store(&out_state[i], 2);
        return i + 1;
    }
    return 0;
}

static void out_disarm(int slot) {
    if (slot > 0) atomic_store(&out_state[slot - 1], 0);
}

/* the directory part of a path: "." when there is none */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return tl_xstrdup(".");
    const size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *d = tl_xmalloc(n + 1);
    memcpy(d, path, n);
    d[n] = 0;
    return d;
}

int tl_check_output(const char *path, const char *src, tl_error *err) {
    if (!path || !*path) return tl_fail(err, "an empty output path");
    struct stat st, ss;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return tl_fail(err, "%s: is a directory", path);
        /* the rename would replace a device or a pipe with a regular file */
        if (!S_ISREG(st.st_mode)) return tl_fail(err, "%s: is not a regular file", path);
        if (src && stat(src, &ss) == 0 && st.st_dev == ss.st_dev && st.st_ino == ss.st_ino)
            return tl_fail(err, "%s is the same file as the input %s; write the output to another path", path, src);
    }
    char *dir = dir_of(path);
    int rc = 0;
    if (access(dir, W_OK | X_OK)) rc = tl_fail(err, "%s: cannot write in %s: %s", path, dir, strerror(errno));
    free(dir);
    return rc;
}

int tl_outfile_open(tl_outfile *o, const char *path, const char *src, tl_error *err) {
    memset(o, 0, sizeof *o);
    if (tl_check_output(path, src, err)) return -1;
    struct stat ss;
    const bool keep_mode = src && stat(src, &ss) == 0;
    o->path = tl_xstrdup(path);
    const size_t n = strlen(path) + 32;
    o->tmp = tl_xmalloc(n);
    snprintf(o->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    o->slot = out_arm(o->tmp); /* before the file exists: a signal in between removes nothing */
    int fd = open(o->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        tl_fail(err, "%s: cannot create: %s", o->tmp, strerror(errno));
        free(o->tmp);
        o->tmp = NULL; /* nothing to remove */
        tl_outfile_abort(o);
        return -1;
    }
    if ((keep_mode && fchmod(fd, ss.st_mode & 0777)) || !(o->f = fdopen(fd, "wb"))) {
        tl_fail(err, "%s: %s", o->tmp, strerror(errno));
        close(fd);
        tl_outfile_abort(o);
        return -1;
    }
    return 0;
}

int tl_outfile_commit(tl_outfile *o, tl_error *err) {
    FILE *f = o->f;
    o->f = NULL;
    int e = f ? 0 : EBADF;
    if (!e && ferror(f)) e = EIO;
    if (!e && fflush(f)) e = errno ? errno : EIO;
    if (!e && fsync(fileno(f))) e = errno;
    if (f && fclose(f) && !e) e = errno ? errno : EIO;
    if (!e && rename(o->tmp, o->path)) e = errno;
    if (e) {
        tl_fail(err, "%s: writing %s failed: %s", o->path, o->tmp ? o->tmp : "(not open)", strerror(e));
        tl_outfile_abort(o);
        return -1;
    }
    /* make the rename durable (best effort: some filesystems refuse fsync on directories) */
    char *dir = dir_of(o->path);
    int dfd = open(dir, O_RDONLY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
    out_disarm(o->slot);
    free(o->tmp);
    free(o->path);
    memset(o, 0, sizeof *o);
    return 0;
}

void tl_outfile_abort(tl_outfile *o) {
    if (o->f) fclose(o->f);
    if (o->tmp) unlink(o->tmp);
    out_disarm(o->slot);
    free(o->tmp);
    free(o->path);
    memset(o, 0, sizeof *o);
}

int tl_write_file(const char *path, const void *data, size_t len, tl_error *err) {
    tl_outfile o;
    if (tl_outfile_open(&o, path, NULL, err)) return -1;
    if (fwrite(data, 1, len, o.f) != len) {
        tl_fail(err, "%s: write failed: %s", path, strerror(errno));
        tl_outfile_abort(&o);
        return -1;
    }
    return tl_outfile_commit(&o, err);
}

char *tl_read_text(const char *path, size_t max, size_t *len, bool *cut, tl_error *err) {
    if (max == 0 || max > TL_TEXT_MAX_BYTES) max = TL_TEXT_MAX_BYTES;
    FILE *f = fopen(path, "rb");
    if (!f) {
        tl_fail(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = max < (1 << 16) ? max + 1 : 1 << 16, n = 0;
    char *buf = tl_xmalloc(cap);
    for (size_t r = 1; r > 0 && n < max;) {
        if (n + 1 >= cap) buf = tl_xrealloc(buf, cap = TL_MIN(2 * cap, max + 1));
        r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
    }
    char extra;
    const bool more = !ferror(f) && n == max && fread(&extra, 1, 1, f) == 1;
    const int e = ferror(f) ? errno : 0;
    fclose(f);
    if (e) {
        free(buf);
        tl_fail(err, "%s: read error: %s", path, strerror(e));
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    if (cut) *cut = more;
    else if (more)
        fprintf(stderr, "tailor: note: %s: only its first %zu bytes are read (%s); the rest is ignored\n", path, n,
                max == TL_TEXT_MAX_BYTES ? "the limit for text files" : "all the text this run can use");
    return buf;
}

char *tl_read_whole(const char *path, size_t *len, tl_error *err) {
    bool cut = false;
    char *text = tl_read_text(path, 0, len, &cut, err);
    if (text && cut) {
        free(text);
        tl_fail(err, "%s: larger than the limit for text files (%zu MiB)", path, TL_TEXT_MAX_BYTES >> 20);
        return NULL;
    }
    return text;
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

void tl_strbuf_put(tl_strbuf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c *= 2;
        b->p = tl_xrealloc(b->p, c);
        b->cap = c;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
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
