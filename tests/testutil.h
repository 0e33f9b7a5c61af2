/* testutil.h: tiny test harness. Each test file is one executable: CHECK records failures,
 * tl_test_done prints "N passed, N failed" and returns the exit code. Paths to shared
 * models/data come from the environment ctest sets (TL_SHARED, TL_MODELS, TL_FIXTURES). */
#ifndef TL_TESTUTIL_H
#define TL_TESTUTIL_H

#include <stdio.h>
#include <stdbool.h>
#include <stddef.h>

extern int tl_test_passed, tl_test_failed, tl_test_skipped;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (cond) {                                                                   \
            tl_test_passed++;                                                         \
        } else {                                                                      \
            tl_test_failed++;                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                             \
    } while (0)

#define CHECKF(cond, ...)                                                  \
    do {                                                                   \
        if (cond) {                                                        \
            tl_test_passed++;                                              \
        } else {                                                           \
            tl_test_failed++;                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

/* "<TL_SHARED>/rel" etc. into a static buffer rotation (valid for a few calls). */
const char *tl_test_shared(const char *rel);
const char *tl_test_models(const char *rel);
const char *tl_test_fixture(const char *rel);
/* true if the file exists. If not: a failure under TL_REQUIRE_FILES=1, else a skip ("SKIP:
 * <path> not found"). For files scripts/setup-models.sh fetches by default or ../shared holds. */
bool tl_test_have(const char *path);
/* The same for a file CI does not provide (the 1.1 GB Qwen2.5 model): a skip either way. */
bool tl_test_have_optional(const char *path);
/* Record a skipped part ("SKIP: <why>"): the test exits 77 unless something failed. */
void tl_test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Read a whole file (malloc'd, NUL-terminated); NULL if missing. */
char *tl_test_read_file(const char *path, size_t *len);
/* Run a shell command, capture its stdout and stderr (malloc'd), return its exit status. */
int tl_test_run(const char *cmd, char **out);
/* The same with only stdout captured (stderr dropped) when with_stderr is false. */
int tl_test_capture(const char *cmd, bool with_stderr, char **out);
/* write all n bytes to a socket (no SIGPIPE); false when the peer is gone */
bool tl_test_send_all(int fd, const void *p, size_t n);
/* A line of /proc/PID/status ("VmRSS", "VmHWM") in KiB, -1 if missing. */
long tl_test_proc_kib(int pid, const char *field);
/* Largest |a - b| over V logits, relative to the row's largest |b| (at least 1). */
double tl_test_row_diff(const float *a, const float *b, int V);
/* KL(softmax(b) || softmax(a)) over V logits. */
double tl_test_row_kl(const float *a, const float *b, int V);
/* Prints the summary line and returns 0 if no failures. */
int tl_test_done(void);

#endif
