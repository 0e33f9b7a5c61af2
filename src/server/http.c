/* http.c: the HTTP layer on libmicrohttpd.
 *
 * Thread per connection (MHD_USE_THREAD_PER_CONNECTION): a handler may block while its job
 * generates, and an SSE response's reader blocks until the next piece is ready.
 *
 * Connections are bounded so that no client, or few, can hold them all: at accept, one
 * address may hold at most --max-connections-per-ip and the server at most --max-connections
 * (below the process's file-descriptor and thread limits); over either, the connection is
 * closed at once. A watchdog closes connections whose request misses a deadline, however
 * steadily it trickles in: its line and headers within --header-timeout of the connection's
 * start (or the previous answer's end, for keep-alive), its body within twice --body-timeout
 * of the headers. Idle connections time out after --timeout (libmicrohttpd).
 *
 * Per request: the first call sees only the headers, where auth (constant-time compare of
 * the bearer token) and a declared Content-Length over --max-body are answered at once; then
 * the body arrives in pieces (kept up to --max-body; one that ends past --body-timeout is
 * answered 408); the last call routes it. A waiting handler polls the socket for a hang-up
 * (POLLRDHUP) so a client that goes away frees its slot at once. */
#define _GNU_SOURCE
#include "internal.h"

#include <limits.h>
#include <malloc.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>

/* After a request whose body took this many bytes, free memory goes back to the system
 * (malloc_trim): glibc keeps what the body, its JSON and its tokens took in per-thread arenas,
 * and a burst of large requests would otherwise leave the RSS at its peak. */
#define TRIM_AFTER_BODY_BYTES (256u << 10)

typedef struct {
    tl_endpoint ep;
    double t0;
    char *body;
    size_t len, cap;
    int status;     /* answered status, for the metrics */
    int closed_as;  /* the status counted when we close the connection without an answer */
    bool too_large; /* chunked body ran over --max-body: discard, answer 413 at the end */
    bool too_slow;  /* upload ran past --body-timeout: discard, answer 408 at the end */
} req_ctx;

/* ---------------- open connections, their limits and deadlines ---------------- */

enum { PH_HEADERS, PH_BODY, PH_WORK }; /* waiting for a request's headers, its body, or answering */

/* One open connection, from accept (MHD_CONNECTION_NOTIFY_STARTED) to close (..._CLOSED). */
typedef struct conn_rec {
    struct conn_rec *prev, *next;
    int fd;
    struct sockaddr_storage addr;
    int phase;
    double since; /* when the phase began */
    bool cut;     /* closed by the watchdog */
} conn_rec;

struct tl_conns {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    conn_rec *head;
    int n_open;
    bool stop;
    pthread_t watchdog;
    bool started;
};

/* The address of a client without its port, for the per-address limit. */
static bool same_host(const struct sockaddr *a, const struct sockaddr *b) {
    if (a->sa_family != b->sa_family) return false;
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->sa_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                       sizeof(struct in6_addr));
    return true;
}

/* Accept policy: closed at once when the address or the server holds its most connections.
 * Connections the watchdog has shut down are on their way out and count no more. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
    tl_server *srv = cls;
    struct tl_conns *cs = srv->conns;
    int same = 0, total = 0;
    pthread_mutex_lock(&cs->mu);
    for (conn_rec *c = cs->head; c; c = c->next)
        if (!c->cut) total++, same += same_host((const struct sockaddr *)&c->addr, addr);
    pthread_mutex_unlock(&cs->mu);
    (void)addrlen;
    if (total >= srv->p.max_connections) {
        tl_metrics_event(srv->metrics, "refused_total");
        return MHD_NO;
    }
    if (same >= srv->p.max_connections_per_ip) {
        tl_metrics_event(srv->metrics, "refused_per_ip");
        return MHD_NO;
    }
    return MHD_YES;
}

/* Called by libmicrohttpd on a connection's start and end; the record is removed before the
 * socket is closed, so the watchdog never shuts down a descriptor already reused. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    tl_server *srv = cls;
    struct tl_conns *cs = srv->conns;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_rec *r = tl_xcalloc(1, sizeof *r);
        const union MHD_ConnectionInfo *fd = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *ad = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        r->fd = fd ? fd->connect_fd : -1;
        if (ad && ad->client_addr)
            memcpy(&r->addr, ad->client_addr,
                   ad->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
        r->phase = PH_HEADERS;
        r->since = tl_time_s();
        pthread_mutex_lock(&cs->mu);
        r->next = cs->head;
        if (cs->head) cs->head->prev = r;
        cs->head = r;
        int n = ++cs->n_open;
        pthread_mutex_unlock(&cs->mu);
        tl_metrics_connections(srv->metrics, n);
        *socket_context = r;
    } else if (*socket_context) {
        conn_rec *r = *socket_context;
        pthread_mutex_lock(&cs->mu);
        if (r->prev) r->prev->next = r->next;
        else cs->head = r->next;
        if (r->next) r->next->prev = r->prev;
        int n = --cs->n_open;
        pthread_mutex_unlock(&cs->mu);
        tl_metrics_connections(srv->metrics, n);
        free(r);
        *socket_context = NULL;
    }
}

static void set_phase(tl_server *srv, struct MHD_Connection *c, int phase) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_rec *r = ci ? ci->socket_context : NULL;
    if (!r) return;
    pthread_mutex_lock(&srv->conns->mu);
    r->phase = phase;
    r->since = tl_time_s();
    pthread_mutex_unlock(&srv->conns->mu);
}

/* A connection that goes on sending a body long past its deadline: counted as the watchdog
 * counts it (once), then closed by returning MHD_NO. */
static enum MHD_Result cut_late_body(tl_server *srv, struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_rec *r = ci ? ci->socket_context : NULL;
    pthread_mutex_lock(&srv->conns->mu);
    bool first = r && !r->cut;
    if (r) r->cut = true;
    pthread_mutex_unlock(&srv->conns->mu);
    if (first) tl_metrics_event(srv->metrics, "timeout_body");
    return MHD_NO;
}

/* Closes (shutdown: the connection's thread sees the end and cleans up) every connection whose
 * headers or body are late, four times a second. */
static void *watchdog(void *arg) {
    tl_server *srv = arg;
    struct tl_conns *cs = srv->conns;
    pthread_mutex_lock(&cs->mu);
    while (!cs->stop) {
        double now = tl_time_s();
        for (conn_rec *r = cs->head; r; r = r->next) {
            if (r->cut || r->fd < 0) continue;
            bool late_headers = r->phase == PH_HEADERS && now - r->since > srv->p.header_timeout_s;
            bool late_body = r->phase == PH_BODY && now - r->since > 2.0 * srv->p.body_timeout_s;
            if (!late_headers && !late_body) continue;
            shutdown(r->fd, SHUT_RDWR);
            r->cut = true;
            tl_metrics_event(srv->metrics, late_headers ? "timeout_headers" : "timeout_body");
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 250000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&cs->cv, &cs->mu, &ts);
    }
    pthread_mutex_unlock(&cs->mu);
    return NULL;
}

/* Connections and threads this process may still open: the lower of RLIMIT_NOFILE and
 * RLIMIT_NPROC, less TL_CONN_RESERVE for the server itself. */
static long conn_budget(char *what, size_t n) {
    struct rlimit fd = {0}, th = {0};
    long b = LONG_MAX;
    snprintf(what, n, "no limit");
    if (!getrlimit(RLIMIT_NOFILE, &fd) && fd.rlim_cur != RLIM_INFINITY) {
        b = (long)fd.rlim_cur;
        snprintf(what, n, "RLIMIT_NOFILE %ld", b);
    }
    if (!getrlimit(RLIMIT_NPROC, &th) && th.rlim_cur != RLIM_INFINITY && (long)th.rlim_cur < b) {
        b = (long)th.rlim_cur;
        snprintf(what, n, "RLIMIT_NPROC %ld", b);
    }
    return b == LONG_MAX ? b : b - TL_CONN_RESERVE;
}

/* Fill in the connection limits' defaults and hold them to the budget. */
static int conn_limits(tl_server *srv, tl_error *err) {
    tl_server_params *p = &srv->p;
    char what[64];
    long budget = conn_budget(what, sizeof what);
    if (budget < 1)
        return tl_fail(err, "no connection can be opened: %s, less %d kept for the server; raise it (ulimit -n)",
                       what, TL_CONN_RESERVE);
    if (p->max_connections > budget)
        return tl_fail(err, "--max-connections %d: more than this process may open (%s, less %d kept for the server); "
                       "raise the limit (ulimit -n / -u) or lower --max-connections",
                       p->max_connections, what, TL_CONN_RESERVE);
    if (p->max_connections <= 0) p->max_connections = (int)TL_MIN(4L * (p->n_parallel + p->n_queue) + 16, budget);
    if (p->max_connections_per_ip <= 0) p->max_connections_per_ip = p->n_parallel + p->n_queue + 4;
    p->max_connections_per_ip = TL_MIN(p->max_connections_per_ip, p->max_connections);
    if (p->header_timeout_s <= 0 || p->body_timeout_s <= 0)
        return tl_fail(err, "--header-timeout and --body-timeout must be at least 1 second");
    return 0;
}

typedef struct {
    tl_stream *st;
    tl_conn conn;
} stream_ctx;

bool tl_conn_gone(const tl_conn *c) {
    if (c->fd < 0) return false;
    struct pollfd p = {.fd = c->fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

static enum MHD_Result send_reply(struct MHD_Connection *c, req_ctx *rq, tl_reply *r) {
    size_t n = r->body ? strlen(r->body) : 0;
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, r->body ? r->body : (char *)"", 
                                                                r->body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(r->body);
        return MHD_NO;
    }
    r->body = NULL; /* the response owns it now */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type ? r->content_type : "application/json");
    if (r->status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (r->allow) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (r->status == 429) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    rq->status = r->status;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, req_ctx *rq, int status, const char *msg, const char *type,
                                  const char *code) {
    tl_reply r = {0};
    tl_reply_error(&r, status, msg, type, NULL, code);
    return send_reply(c, rq, &r);
}

static ssize_t stream_cb(void *cls, uint64_t pos, char *buf, size_t max) {
    stream_ctx *sc = cls;
    long n = tl_stream_read(sc->st, &sc->conn, buf, max);
    if (n > 0) return (ssize_t)n;
    return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free_cb(void *cls) {
    stream_ctx *sc = cls;
    tl_stream_free(sc->st);
    free(sc);
}

static bool auth_ok(tl_server *srv, struct MHD_Connection *c) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return false;
    h += 7;
    while (*h == ' ') h++;
    return tl_ct_equal(h, strlen(h), srv->api_key, strlen(srv->api_key));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    tl_server *srv = cls;
    req_ctx *rq = *con_cls;
    if (!rq) { /* headers only */
        rq = tl_xcalloc(1, sizeof *rq);
        rq->ep = tl_route_endpoint(url);
        rq->t0 = tl_time_s();
        *con_cls = rq;
        set_phase(srv, c, PH_BODY);
        if (srv->api_key && tl_route_needs_auth(rq->ep) && !auth_ok(srv, c))
            return send_error(c, rq, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                              "invalid_request_error", "invalid_api_key");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            unsigned long long v = strtoull(cl, &end, 10);
            if (*end == 0 && v > srv->p.max_body) {
                char msg[160];
                snprintf(msg, sizeof msg, "the request body of %llu bytes is over the limit of %zu bytes (--max-body)",
                         v, srv->p.max_body);
                return send_error(c, rq, 413, msg, "invalid_request_error", "body_too_large");
            }
        }
        return MHD_YES;
    }
    if (*upload_size) { /* a piece of the body */
        size_t n = *upload_size;
        *upload_size = 0;
        double age = tl_time_s() - rq->t0;
        if (age > srv->p.body_timeout_s) {
            rq->too_slow = true;
            /* a client still sending long after the deadline gets the connection closed (the
             * watchdog does the same to one that stopped sending) */
            if (age > 2.0 * srv->p.body_timeout_s) {
                rq->closed_as = 408;
                return cut_late_body(srv, c);
            }
        }
        if (rq->too_large || rq->too_slow) {
            if (rq->len > 4 * srv->p.max_body) { /* endless chunked body */
                rq->closed_as = rq->too_large ? 413 : 408;
                return MHD_NO;
            }
            rq->len += n;                                     /* count, discard */
            return MHD_YES;
        }
        if (rq->len + n > srv->p.max_body) {
            rq->too_large = true;
            free(rq->body);
            rq->body = NULL;
            rq->len += n;
            return MHD_YES;
        }
        if (rq->len + n + 1 > rq->cap) {
            rq->cap = TL_MIN(TL_MAX(rq->cap * 2, rq->len + n + 1), srv->p.max_body + 1);
            rq->body = tl_xrealloc(rq->body, rq->cap);
        }
        memcpy(rq->body + rq->len, upload, n);
        rq->len += n;
        rq->body[rq->len] = 0;
        return MHD_YES;
    }
    /* the whole request is in */
    if (rq->too_large) {
        char msg[160];
        snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes (--max-body)", srv->p.max_body);
        return send_error(c, rq, 413, msg, "invalid_request_error", "body_too_large");
    }
    set_phase(srv, c, PH_WORK);
    if (rq->too_slow)
        return send_error(c, rq, 408, "the request body took longer than the upload deadline (--body-timeout)",
                          "invalid_request_error", "request_timeout");
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    tl_conn conn = {.fd = ci ? ci->connect_fd : -1};
    tl_reply r = {0};
    tl_route(srv, &conn, rq->ep, method, rq->body ? rq->body : "", rq->len, &r);
    free(rq->body);
    rq->body = NULL;
    if (srv->p.verbose)
        fprintf(stderr, "tailor serve: %s %s -> %d\n", method, url, r.status);
    if (!r.stream) return send_reply(c, rq, &r);

    stream_ctx *sc = tl_xcalloc(1, sizeof *sc);
    sc->st = r.stream;
    sc->conn = conn;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_cb, sc, stream_free_cb);
    if (!resp) {
        stream_free_cb(sc);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    rq->status = 200;
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    tl_server *srv = cls;
    req_ctx *rq = *con_cls;
    set_phase(srv, c, PH_HEADERS); /* the next request on this connection has its own deadline */
    if (!rq) return;
    int status = rq->status;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) /* closed by us, the client gone after its answer, or timed out */
        status = rq->closed_as ? rq->closed_as : status ? 499 : 408;
    tl_metrics_request(srv->metrics, rq->ep, status, tl_time_s() - rq->t0);
    bool big = rq->len >= TRIM_AFTER_BODY_BYTES;
    free(rq->body);
    free(rq);
    *con_cls = NULL;
#ifdef __GLIBC__
    if (big) malloc_trim(0);
#else
    (void)big;
#endif
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    tl_server *srv = cls;
    if (!srv->p.verbose) return;
    fprintf(stderr, "tailor serve: libmicrohttpd: ");
    vfprintf(stderr, fmt, ap);
}

int tl_http_start(tl_server *srv, tl_error *err) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", srv->p.port);
    int rc = getaddrinfo(srv->host, port, &hints, &ai);
    if (rc) return tl_fail(err, "--host '%s': %s", srv->host, gai_strerror(rc));
    if (conn_limits(srv, err)) {
        freeaddrinfo(ai);
        return -1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    struct tl_conns *cs = srv->conns = tl_xcalloc(1, sizeof *cs);
    pthread_mutex_init(&cs->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cs->cv, &ca);
    pthread_condattr_destroy(&ca);
    /* libmicrohttpd's own limit one above ours, so that on_accept refuses (and counts) first */
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)srv->p.port, on_accept, srv, on_request, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(srv->p.timeout_s > 0 ? srv->p.timeout_s : 0),
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)srv->p.max_connections + 1, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        srv, MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_THREAD_STACK_SIZE, (size_t)1 << 20,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) return tl_fail(err, "cannot listen on %s:%d (address in use, or not an address of this host?)", srv->host,
                           srv->p.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : srv->p.port;
    srv->daemon = d;
    int prc = pthread_create(&cs->watchdog, NULL, watchdog, srv);
    if (prc) return tl_fail(err, "cannot start the connection watchdog: %s", strerror(prc));
    cs->started = true;
    return 0;
}

void tl_http_stop(tl_server *srv) {
    struct tl_conns *cs = srv->conns;
    if (cs && cs->started) {
        pthread_mutex_lock(&cs->mu);
        cs->stop = true;
        pthread_cond_signal(&cs->cv);
        pthread_mutex_unlock(&cs->mu);
        pthread_join(cs->watchdog, NULL);
        cs->started = false;
    }
    if (srv->daemon) MHD_stop_daemon(srv->daemon); /* closes the connections: the records go */
    srv->daemon = NULL;
    if (cs) {
        pthread_mutex_destroy(&cs->mu);
        pthread_cond_destroy(&cs->cv);
        free(cs);
        srv->conns = NULL;
    }
}
