/* bench_server: a bounded load test of `tailor serve` over loopback.
 *
 *   bench_server --bin build/tailor --model M [--clients 8] [--seconds 10] [--parallel 2]
 *                [--queue 8] [--threads 2] [--max-tokens 32] [--bad 0.25]
 *
 * Starts the server (127.0.0.1, free port, API key), then runs `clients` threads, each sending
 * requests back to back on fresh connections for `seconds`: a mix of good requests
 * (completions, streaming completions, tokenize, health) and bad ones (malformed JSON, wrong
 * types, invalid UTF-8, a wrong key, an over-long prompt, an unknown path). A good generation
 * or tokenization must answer 200 (or 429 when the queue is full), a bad request its 4xx; anything else counts
 * as an error. Prints requests served, status counts, error rate, p50/p99 latency, and the
 * server's RSS at start, after a warm-up round and after each of two measured rounds (equal
 * RSS over the rounds = no growth). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KEY "bench-key"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long rss_kib(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) v = atol(line + 6);
    fclose(f);
    return v;
}

static int do_request(int port, const char *method, const char *path, const char *auth, const char *body,
                      size_t body_len, bool *got_done) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 60};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    char head[512];
    int hl = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s", method,
                      path, auth ? "Authorization: Bearer " : "", auth ? auth : "", auth ? "\r\n" : "");
    if (body) hl += snprintf(head + hl, sizeof head - (size_t)hl, "Content-Length: %zu\r\n", body_len);
    hl += snprintf(head + hl, sizeof head - (size_t)hl, "\r\n");
    if (send(fd, head, (size_t)hl, MSG_NOSIGNAL) != hl ||
        (body && send(fd, body, body_len, MSG_NOSIGNAL) != (ssize_t)body_len)) {
        close(fd);
        return -1;
    }
    char buf[16384];
    size_t n = 0;
    int status = -1;
    bool done = false;
    for (;;) {
        ssize_t r = recv(fd, buf + n, sizeof buf - 1 - n, 0);
        if (r <= 0) break;
        n += (size_t)r;
        buf[n] = 0;
        if (status < 0 && n >= 12) status = atoi(buf + 9);
        if (strstr(buf, "data: [DONE]")) done = true;
        if (n > sizeof buf / 2) { /* keep the tail only */
            memmove(buf, buf + n - 64, 64);
            n = 64;
        }
    }
    close(fd);
    if (got_done) *got_done = done;
    return status;
}

typedef struct {
    int port;
    double until;
    int max_tokens;
    double bad_frac;
    unsigned seed;
    /* results */
    long n, errors, by_status[6], rejected;
    double *lat;
    long n_lat, cap_lat; /* latencies of good generations that answered 200 */
} client;

static const char *BAD[][3] = {
    {"POST", "/v1/completions", "{\"prompt\": \"x\", "},
    {"POST", "/v1/completions", "{\"prompt\": 5}"},
    {"POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": \"9\"}"},
    {"POST", "/v1/completions", "{\"prompt\": \"caf\xc3\x28\"}"},
    {"POST", "/v1/completions", "{\"prompt\": \"x\", \"stop\": 3}"},
    {"GET", "/v1/nowhere", NULL},
    {"POST", "/v1/chat/completions", "{\"messages\": 1}"},
    {"POST", "/detokenize", "{\"tokens\": [-4]}"},
};

static void *client_main(void *arg) {
    client *c = arg;
    char body[512];
    static const char *prompts[] = {"Once upon a time", "The little dog", "Lily and Tom", "One day"};
    while (now_s() < c->until) {
        double r = (double)rand_r(&c->seed) / RAND_MAX;
        int expect_lo, expect_hi, st;
        bool gen = false, stream = false, done = false, tok = false;
        double t0 = now_s();
        if (r < c->bad_frac) {
            int k = rand_r(&c->seed) % (int)(sizeof BAD / sizeof *BAD + 2);
            expect_lo = 400, expect_hi = 499;
            if (k == (int)(sizeof BAD / sizeof *BAD)) { /* wrong key */
                st = do_request(c->port, "GET", "/v1/models", "nope", NULL, 0, NULL);
            } else if (k == (int)(sizeof BAD / sizeof *BAD) + 1) { /* prompt longer than the context */
                char big[8192];
                int o = sprintf(big, "{\"prompt\":[1");
                for (int i = 0; i < 700; i++) o += sprintf(big + o, ",%d", 300 + i % 90);
                o += sprintf(big + o, "]}");
                st = do_request(c->port, "POST", "/v1/completions", KEY, big, (size_t)o, NULL);
            } else {
                const char *b = BAD[k][2];
                st = do_request(c->port, BAD[k][0], BAD[k][1], KEY, b, b ? strlen(b) : 0, NULL);
            }
        } else {
            double g = (double)rand_r(&c->seed) / RAND_MAX;
            const char *p = prompts[rand_r(&c->seed) % 4];
            expect_lo = 200, expect_hi = 200;
            if (g < 0.15) {
                tok = true; /* tokenizing takes a queue place too: 429 when none is left */
                snprintf(body, sizeof body, "{\"content\":\"%s\"}", p);
                st = do_request(c->port, "POST", "/tokenize", KEY, body, strlen(body), NULL);
            } else if (g < 0.2) {
                st = do_request(c->port, "GET", "/health", NULL, NULL, 0, NULL);
            } else {
                gen = true;
                stream = g < 0.45;
                snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":%d,\"seed\":%u,\"stream\":%s}", p,
                         c->max_tokens, rand_r(&c->seed), stream ? "true" : "false");
                st = do_request(c->port, "POST", "/v1/completions", KEY, body, strlen(body), &done);
            }
        }
        double dt = now_s() - t0;
        c->n++;
        if (st >= 100 && st < 600) c->by_status[st / 100]++;
        else c->by_status[0]++;
        if ((gen || tok) && st == 429) {
            c->rejected++;
        } else if (st < expect_lo || st > expect_hi || (stream && st == 200 && !done)) {
            c->errors++;
        } else if (gen) {
            if (c->n_lat == c->cap_lat) c->lat = realloc(c->lat, sizeof(double) * (size_t)(c->cap_lat = c->cap_lat * 2 + 64));
            c->lat[c->n_lat++] = dt;
        }
    }
    return NULL;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void round_run(const char *name, int port, int n_clients, double seconds, int max_tokens, double bad, bool print) {
    client *cs = calloc((size_t)n_clients, sizeof *cs);
    pthread_t *th = calloc((size_t)n_clients, sizeof *th);
    double until = now_s() + seconds, t0 = now_s();
    for (int i = 0; i < n_clients; i++) {
        cs[i] = (client){.port = port, .until = until, .max_tokens = max_tokens, .bad_frac = bad, .seed = 1234u + (unsigned)i * 7919u};
        pthread_create(&th[i], NULL, client_main, &cs[i]);
    }
    long n = 0, err = 0, rej = 0, by[6] = {0}, nl = 0;
    for (int i = 0; i < n_clients; i++) {
        pthread_join(th[i], NULL);
        n += cs[i].n, err += cs[i].errors, rej += cs[i].rejected, nl += cs[i].n_lat;
        for (int k = 0; k < 6; k++) by[k] += cs[i].by_status[k];
    }
    double wall = now_s() - t0;
    double *lat = malloc(sizeof(double) * (size_t)(nl > 0 ? nl : 1));
    long o = 0;
    for (int i = 0; i < n_clients; i++) {
        memcpy(lat + o, cs[i].lat, sizeof(double) * (size_t)cs[i].n_lat);
        o += cs[i].n_lat;
        free(cs[i].lat);
    }
    qsort(lat, (size_t)nl, sizeof *lat, cmp_d);
    if (print)
        printf("%s: %ld requests in %.1f s (%.1f req/s), 2xx %ld, 4xx %ld, 5xx %ld, no answer %ld; "
               "429 %ld; unexpected %ld (%.2f%%); generation latency (200s, n=%ld) p50 %.1f ms, p99 %.1f ms\n",
               name, n, wall, n / wall, by[2], by[4], by[5], by[0], rej, err, n ? 100.0 * err / n : 0.0, nl,
               nl ? lat[nl / 2] * 1e3 : 0.0, nl ? lat[(long)(nl * 0.99) < nl ? (long)(nl * 0.99) : nl - 1] * 1e3 : 0.0);
    free(lat);
    free(cs);
    free(th);
}

int main(int argc, char **argv) {
    const char *bin = "./tailor", *model = NULL, *parallel = "2", *queue = "8", *threads = "2";
    int clients = 8, max_tokens = 32;
    double seconds = 10, bad = 0.25;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--bin")) bin = v;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--clients")) clients = atoi(v);
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--parallel")) parallel = v;
        else if (!strcmp(a, "--queue")) queue = v;
        else if (!strcmp(a, "--threads")) threads = v;
        else if (!strcmp(a, "--max-tokens")) max_tokens = atoi(v);
        else if (!strcmp(a, "--bad")) bad = atof(v);
        else {
            fprintf(stderr, "bench_server: unknown flag %s\n", a);
            return 2;
        }
    }
    if (!model || clients < 1 || clients > 256 || seconds <= 0 || seconds > 120) {
        fprintf(stderr, "usage: bench_server --bin TAILOR --model M [--clients 1..256] [--seconds S<=120] "
                        "[--parallel P] [--queue Q] [--threads T] [--max-tokens N] [--bad FRACTION]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    char log[64];
    snprintf(log, sizeof log, "/tmp/bench_server_%d.log", (int)getpid());
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "w", stderr)) _exit(127);
        execl(bin, bin, "serve", "-m", model, "--port", "0", "--parallel", parallel, "--queue", queue, "-t", threads,
              "-c", "512", "--api-key", KEY, "--timeout", "10", (char *)NULL);
        _exit(127);
    }
    int port = 0;
    for (double t0 = now_s(); !port && now_s() - t0 < 30; usleep(50000)) {
        FILE *f = fopen(log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            char *p = strstr(line, "listening on http://127.0.0.1:");
            if (p) port = atoi(p + strlen("listening on http://127.0.0.1:"));
        }
        if (f) fclose(f);
    }
    if (!port) {
        fprintf(stderr, "bench_server: the server did not start (see %s)\n", log);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 1;
    }
    printf("server: %s serve -m %s --parallel %s --queue %s -t %s -c 512; %d clients, %.0f s rounds, max_tokens %d, "
           "%.0f%% bad requests\n", bin, model, parallel, queue, threads, clients, seconds, max_tokens, bad * 100);
    long rss0 = rss_kib(pid);
    round_run("warm-up", port, clients, seconds / 4 > 1 ? seconds / 4 : 1, max_tokens, bad, true);
    long rss1 = rss_kib(pid);
    round_run("round 1", port, clients, seconds, max_tokens, bad, true);
    long rss2 = rss_kib(pid);
    round_run("round 2", port, clients, seconds, max_tokens, bad, true);
    long rss3 = rss_kib(pid);
    printf("server RSS: start %ld KiB, after warm-up %ld KiB, after round 1 %ld KiB, after round 2 %ld KiB "
           "(round 2 - round 1: %+ld KiB)\n", rss0, rss1, rss2, rss3, rss3 - rss2);
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
    printf("server exit status: %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    unlink(log);
    return 0;
}
