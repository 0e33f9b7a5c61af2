/* http.c: the HTTP layer on libmicrohttpd.
 *
 * Thread per connection (MHD_USE_THREAD_PER_CONNECTION): a handler may block while its job
 * generates, and an SSE response's reader blocks until the next piece is ready. The number
 * of connections (so of threads) is capped; idle connections time out after --timeout.
 *
 * Per request: the first call sees only the headers, where auth (constant-time compare of
 * the bearer token) and a declared Content-Length over --max-body are answered at once; then
 * the body arrives in pieces (kept up to --max-body, with a deadline of --timeout seconds for
 * the whole upload); the last call routes it. A waiting handler polls the socket for a hang-up
 * (POLLRDHUP) so a client that goes away frees its slot at once. */
#define _GNU_SOURCE
#include "internal.h"

#include <malloc.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

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
    bool too_large; /* chunked body ran over --max-body: discard, answer 413 at the end */
    bool too_slow;  /* upload ran past --timeout: discard, answer 408 at the end */
} req_ctx;

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
        if (srv->p.timeout_s > 0 && age > srv->p.timeout_s) {
            rq->too_slow = true;
            /* a client still sending long after the deadline gets the connection closed */
            if (age > 2.0 * srv->p.timeout_s) return MHD_NO;
        }
        if (rq->too_large || rq->too_slow) {
            if (rq->len > 4 * srv->p.max_body) return MHD_NO; /* endless chunked body */
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
    if (rq->too_slow)
        return send_error(c, rq, 408, "the request body took longer than the upload deadline (--timeout)",
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
    if (!rq) return;
    int status = rq->status;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) status = status ? 499 : 408; /* client gone / timed out */
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
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    int max_conn = srv->p.max_connections > 0 ? srv->p.max_connections
                                              : 4 * (srv->p.n_parallel + srv->p.n_queue) + 16;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)srv->p.port, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(srv->p.timeout_s > 0 ? srv->p.timeout_s : 0),
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)max_conn, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)1 << 20, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) return tl_fail(err, "cannot listen on %s:%d (address in use, or not an address of this host?)", srv->host,
                           srv->p.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : srv->p.port;
    srv->daemon = d;
    return 0;
}

void tl_http_stop(tl_server *srv) {
    if (srv->daemon) MHD_stop_daemon(srv->daemon);
    srv->daemon = NULL;
}
