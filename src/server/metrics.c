/* metrics.c: request and token counters of the server, rendered as Prometheus text
 * (version 0.0.4 exposition format) for GET /metrics. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

static const char *EP_NAMES[TL_EP_COUNT] = {"completions", "chat_completions", "models", "health",
                                             "metrics", "tokenize", "detokenize", "other"};
static const double BUCKETS[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define N_BUCKETS (sizeof BUCKETS / sizeof *BUCKETS)

struct tl_metrics {
    pthread_mutex_t mu;
    uint64_t requests[TL_EP_COUNT][500]; /* by endpoint and status 100..599 */
    uint64_t dur_bucket[TL_EP_COUNT][N_BUCKETS];
    uint64_t dur_count[TL_EP_COUNT];
    double dur_sum[TL_EP_COUNT];
    uint64_t prompt_tokens, cached_tokens, gen_tokens;
    double prompt_s, gen_s;
    uint64_t rejected_full, rejected_kv, disconnects;
    uint64_t refused_per_ip, refused_total, timeout_headers, timeout_body;
    int conns_open;
};

tl_metrics *tl_metrics_new(void) {
    tl_metrics *m = tl_xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

void tl_metrics_free(tl_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void tl_metrics_request(tl_metrics *m, tl_endpoint ep, int status, double seconds) {
    if (ep < 0 || ep >= TL_EP_COUNT) ep = TL_EP_OTHER;
    pthread_mutex_lock(&m->mu);
    if (status >= 100 && status < 600) m->requests[ep][status - 100]++;
    for (size_t b = 0; b < N_BUCKETS; b++)
        if (seconds <= BUCKETS[b]) m->dur_bucket[ep][b]++;
    m->dur_count[ep]++;
    m->dur_sum[ep] += seconds;
    pthread_mutex_unlock(&m->mu);
}

void tl_metrics_tokens(tl_metrics *m, int n_prompt, int n_cached, double t_prompt, int n_gen, double t_gen) {
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += (uint64_t)(n_prompt > 0 ? n_prompt : 0);
    m->cached_tokens += (uint64_t)(n_cached > 0 ? n_cached : 0);
    m->gen_tokens += (uint64_t)(n_gen > 0 ? n_gen : 0);
    m->prompt_s += t_prompt;
    m->gen_s += t_gen;
    pthread_mutex_unlock(&m->mu);
}

void tl_metrics_event(tl_metrics *m, const char *what) {
    pthread_mutex_lock(&m->mu);
    if (!strcmp(what, "rejected_queue_full")) m->rejected_full++;
    else if (!strcmp(what, "rejected_kv")) m->rejected_kv++;
    else if (!strcmp(what, "client_disconnect")) m->disconnects++;
    else if (!strcmp(what, "refused_per_ip")) m->refused_per_ip++;
    else if (!strcmp(what, "refused_total")) m->refused_total++;
    else if (!strcmp(what, "timeout_headers")) m->timeout_headers++;
    else if (!strcmp(what, "timeout_body")) m->timeout_body++;
    pthread_mutex_unlock(&m->mu);
}

void tl_metrics_connections(tl_metrics *m, int open) {
    pthread_mutex_lock(&m->mu);
    m->conns_open = open;
    pthread_mutex_unlock(&m->mu);
}

char *tl_metrics_render(tl_metrics *m, tl_sched *s) {
    tl_sched_stats st;
    tl_sched_stats_get(s, &st);
    tl_strbuf o = {0};
    pthread_mutex_lock(&m->mu);
    tl_strbuf_printf(&o, "# HELP tailor_requests_total HTTP requests answered, by endpoint and status code.\n"
            "# TYPE tailor_requests_total counter\n");
    for (int e = 0; e < TL_EP_COUNT; e++)
        for (int c = 0; c < 500; c++)
            if (m->requests[e][c])
                tl_strbuf_printf(&o, "tailor_requests_total{endpoint=\"%s\",code=\"%d\"} %llu\n", EP_NAMES[e], c + 100,
                    (unsigned long long)m->requests[e][c]);
    tl_strbuf_printf(&o, "# HELP tailor_request_duration_seconds Time from the request's arrival to its last byte.\n"
            "# TYPE tailor_request_duration_seconds histogram\n");
    for (int e = 0; e < TL_EP_COUNT; e++) {
        if (!m->dur_count[e]) continue;
        for (size_t b = 0; b < N_BUCKETS; b++)
            tl_strbuf_printf(&o, "tailor_request_duration_seconds_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n", EP_NAMES[e],
                BUCKETS[b], (unsigned long long)m->dur_bucket[e][b]);
        tl_strbuf_printf(&o, "tailor_request_duration_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n", EP_NAMES[e],
            (unsigned long long)m->dur_count[e]);
        tl_strbuf_printf(&o, "tailor_request_duration_seconds_sum{endpoint=\"%s\"} %.6f\n", EP_NAMES[e], m->dur_sum[e]);
        tl_strbuf_printf(&o, "tailor_request_duration_seconds_count{endpoint=\"%s\"} %llu\n", EP_NAMES[e],
            (unsigned long long)m->dur_count[e]);
    }
    tl_strbuf_printf(&o, "# HELP tailor_prompt_tokens_total Prompt tokens evaluated.\n# TYPE tailor_prompt_tokens_total counter\n"
            "tailor_prompt_tokens_total %llu\n", (unsigned long long)m->prompt_tokens);
    tl_strbuf_printf(&o, "# HELP tailor_prompt_tokens_cached_total Prompt tokens whose KV a slot held already (prefix "
            "reuse), not evaluated.\n# TYPE tailor_prompt_tokens_cached_total counter\n"
            "tailor_prompt_tokens_cached_total %llu\n", (unsigned long long)m->cached_tokens);
    tl_strbuf_printf(&o, "# HELP tailor_prompt_seconds_total Time spent evaluating prompts.\n"
            "# TYPE tailor_prompt_seconds_total counter\ntailor_prompt_seconds_total %.6f\n", m->prompt_s);
    tl_strbuf_printf(&o, "# HELP tailor_generation_tokens_total Tokens generated.\n"
            "# TYPE tailor_generation_tokens_total counter\ntailor_generation_tokens_total %llu\n",
        (unsigned long long)m->gen_tokens);
    tl_strbuf_printf(&o, "# HELP tailor_generation_seconds_total Time spent generating.\n"
            "# TYPE tailor_generation_seconds_total counter\ntailor_generation_seconds_total %.6f\n", m->gen_s);
    tl_strbuf_printf(&o, "# HELP tailor_prompt_tokens_per_second Prompt tokens per second of prompt time, per slot, since start.\n"
            "# TYPE tailor_prompt_tokens_per_second gauge\ntailor_prompt_tokens_per_second %.3f\n",
        m->prompt_s > 0 ? (double)m->prompt_tokens / m->prompt_s : 0.0);
    tl_strbuf_printf(&o, "# HELP tailor_generation_tokens_per_second Generated tokens per second of generation time, per slot, since start.\n"
            "# TYPE tailor_generation_tokens_per_second gauge\ntailor_generation_tokens_per_second %.3f\n",
        m->gen_s > 0 ? (double)m->gen_tokens / m->gen_s : 0.0);
    tl_strbuf_printf(&o, "# HELP tailor_rejected_total Requests refused with 429 because the queue was full.\n"
            "# TYPE tailor_rejected_total counter\ntailor_rejected_total %llu\n",
        (unsigned long long)m->rejected_full);
    tl_strbuf_printf(&o, "# HELP tailor_kv_rejected_total Requests refused with 429 because the KV budget had no room "
            "(more than the whole budget, or none free within --kv-wait).\n"
            "# TYPE tailor_kv_rejected_total counter\ntailor_kv_rejected_total %llu\n",
        (unsigned long long)m->rejected_kv);
    tl_strbuf_printf(&o, "# HELP tailor_client_disconnects_total Generations stopped because the client went away.\n"
            "# TYPE tailor_client_disconnects_total counter\ntailor_client_disconnects_total %llu\n",
        (unsigned long long)m->disconnects);
    tl_strbuf_printf(&o, "# HELP tailor_connections_open Client connections open now (one thread each).\n"
            "# TYPE tailor_connections_open gauge\ntailor_connections_open %d\n", m->conns_open);
    tl_strbuf_printf(&o, "# HELP tailor_connections_refused_total Connections closed at accept: the address or the server "
            "was at its connection limit.\n# TYPE tailor_connections_refused_total counter\n"
            "tailor_connections_refused_total{cause=\"per_ip\"} %llu\n"
            "tailor_connections_refused_total{cause=\"total\"} %llu\n",
        (unsigned long long)m->refused_per_ip, (unsigned long long)m->refused_total);
    tl_strbuf_printf(&o, "# HELP tailor_connections_timed_out_total Connections closed because a request's headers or body "
            "missed its deadline.\n# TYPE tailor_connections_timed_out_total counter\n"
            "tailor_connections_timed_out_total{phase=\"headers\"} %llu\n"
            "tailor_connections_timed_out_total{phase=\"body\"} %llu\n",
        (unsigned long long)m->timeout_headers, (unsigned long long)m->timeout_body);
    pthread_mutex_unlock(&m->mu);
    tl_strbuf_printf(&o, "# HELP tailor_kv_bytes KV cache bytes over all slots: held now in the attended tier (device) "
            "and in the offloaded host tier (TailorKV), and resident: each slot's most so far, which its stores keep "
            "allocated.\n# TYPE tailor_kv_bytes gauge\n"
            "tailor_kv_bytes{tier=\"device\"} %llu\ntailor_kv_bytes{tier=\"host\"} %llu\n"
            "tailor_kv_bytes{tier=\"resident\"} %llu\n",
        (unsigned long long)(st.kv_total - st.kv.host), (unsigned long long)st.kv.host,
        (unsigned long long)st.kv_resident);
    tl_strbuf_printf(&o, "# HELP tailor_kv_budget_bytes The KV budget requests are admitted against (--kv-budget; 0: none).\n"
            "# TYPE tailor_kv_budget_bytes gauge\ntailor_kv_budget_bytes %llu\n", (unsigned long long)st.kv_budget);
    tl_strbuf_printf(&o, "# HELP tailor_kv_reserved_bytes KV bytes reserved: the planner's bytes of every queued and running "
            "request at its largest context (prompt + max_tokens).\n# TYPE tailor_kv_reserved_bytes gauge\n"
            "tailor_kv_reserved_bytes %llu\n", (unsigned long long)st.kv_reserved);
    tl_strbuf_printf(&o, "# HELP tailor_kv_used_bytes KV bytes held now, by the sequences holding them: running requests, "
            "and idle slots kept for prefix reuse (given up when a request needs the room).\n"
            "# TYPE tailor_kv_used_bytes gauge\ntailor_kv_used_bytes{state=\"running\"} %llu\n"
            "tailor_kv_used_bytes{state=\"cached\"} %llu\n",
        (unsigned long long)(st.kv_total - st.kv_cached), (unsigned long long)st.kv_cached);
    tl_strbuf_printf(&o, "# HELP tailor_kv_sequences Sequences whose KV is held: running requests (each with its "
            "reservation) and idle slots kept for prefix reuse.\n# TYPE tailor_kv_sequences gauge\n"
            "tailor_kv_sequences{state=\"running\"} %d\ntailor_kv_sequences{state=\"cached\"} %d\n",
        st.n_busy, st.n_cached);
    tl_strbuf_printf(&o, "# HELP tailor_kv_waiting Requests waiting for KV room.\n# TYPE tailor_kv_waiting gauge\n"
            "tailor_kv_waiting %d\n", st.n_kv_waiting);
    tl_strbuf_printf(&o, "# HELP tailor_kv_part_bytes KV cache bytes held now over all slots, by purpose.\n"
            "# TYPE tailor_kv_part_bytes gauge\n"
            "tailor_kv_part_bytes{part=\"codes\"} %llu\ntailor_kv_part_bytes{part=\"scales\"} %llu\n"
            "tailor_kv_part_bytes{part=\"residual\"} %llu\ntailor_kv_part_bytes{part=\"other\"} %llu\n",
        (unsigned long long)st.kv.codes, (unsigned long long)st.kv.scales, (unsigned long long)st.kv.residual,
        (unsigned long long)st.kv.other);
    tl_strbuf_printf(&o, "# HELP tailor_queue_length Requests waiting for a slot.\n# TYPE tailor_queue_length gauge\n"
            "tailor_queue_length %d\n", st.n_queued);
    tl_strbuf_printf(&o, "# HELP tailor_queue_capacity Requests that may wait before 429.\n# TYPE tailor_queue_capacity gauge\n"
            "tailor_queue_capacity %d\n", st.n_queue_cap);
    tl_strbuf_printf(&o, "# HELP tailor_slots_busy Slots generating now.\n# TYPE tailor_slots_busy gauge\ntailor_slots_busy %d\n",
        st.n_busy);
    tl_strbuf_printf(&o, "# HELP tailor_slots_total Slots (parallel sequences).\n# TYPE tailor_slots_total gauge\n"
            "tailor_slots_total %d\n", st.n_slots);
    return o.p;
}
