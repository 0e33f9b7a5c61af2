#include "testutil.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

int tl_test_passed, tl_test_failed, tl_test_skipped;

static const char *join(const char *env, const char *fallback, const char *rel) {
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ % 8];
    const char *base = getenv(env);
    snprintf(b, 4096, "%s/%s", base && *base ? base : fallback, rel);
    return b;
}

const char *tl_test_shared(const char *rel) { return join("TL_SHARED", "../shared", rel); }
const char *tl_test_models(const char *rel) { return join("TL_MODELS", ".", rel); }
const char *tl_test_fixture(const char *rel) { return join("TL_FIXTURES", "tests/fixtures", rel); }

void tl_test_skip(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("SKIP: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    tl_test_skipped++;
}

bool tl_test_have_optional(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0) return true;
    tl_test_skip("%s not found", path);
    return false;
}

bool tl_test_have(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0) return true;
    const char *req = getenv("TL_REQUIRE_FILES");
    if (req && !strcmp(req, "1")) {
        tl_test_failed++;
        fprintf(stderr, "FAIL: %s not found (TL_REQUIRE_FILES=1: run scripts/setup-models.sh; ../shared must be beside the repo)\n",
                path);
        return false;
    }
    tl_test_skip("%s not found", path);
    return false;
}

char *tl_test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    buf[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

int tl_test_run(const char *cmd, char **out) { return tl_test_capture(cmd, true, out); }

bool tl_test_send_all(int fd, const void *p, size_t n) {
    const char *b = p;
    while (n) {
        const ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w <= 0) return false;
        b += w;
        n -= (size_t)w;
    }
    return true;
}

long tl_test_proc_kib(int pid, const char *field) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    const size_t fl = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, fl) && line[fl] == ':') v = atol(line + fl + 1);
    if (f) fclose(f);
    return v;
}

int tl_test_capture(const char *cmd, bool with_stderr, char **out) {
    char full[8192];
    snprintf(full, sizeof full, "%s %s", cmd, with_stderr ? "2>&1" : "2>/dev/null");
    FILE *p = popen(full, "r");
    if (!p) {
        *out = calloc(1, 1);
        return -1;
    }
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);
    while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += r;
        if (n + 1 >= cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    const int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int tl_test_done(void) {
    if (tl_test_skipped) printf("%d passed, %d failed, %d skipped\n", tl_test_passed, tl_test_failed, tl_test_skipped);
    else printf("%d passed, %d failed\n", tl_test_passed, tl_test_failed);
    return tl_test_failed ? 1 : tl_test_skipped ? 77 : 0;
}

double tl_test_row_diff(const float *a, const float *b, int V) {
    double d = 0, mx = 1;
    for (int i = 0; i < V; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    return d / mx;
}

double tl_test_row_kl(const float *a, const float *b, int V) {
    double ma = a[0], mb = b[0], sa = 0, sb = 0, kl = 0;
    for (int i = 1; i < V; i++) ma = fmax(ma, a[i]), mb = fmax(mb, b[i]);
    for (int i = 0; i < V; i++) sa += exp(a[i] - ma), sb += exp(b[i] - mb);
    for (int i = 0; i < V; i++) {
        const double lb = b[i] - mb - log(sb), la = a[i] - ma - log(sa);
        kl += exp(lb) * (lb - la);
    }
    return kl;
}
