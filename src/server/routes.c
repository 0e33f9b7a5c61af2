/* routes.c: the endpoints. Requests are parsed with cJSON and checked field by field (wrong
 * types and out-of-range values name the field; unknown fields are ignored); answers follow
 * OpenAI's shapes for the /v1 endpoints, llama.cpp's for /tokenize and /detokenize. */
#define _GNU_SOURCE
#include "internal.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_STOP_BYTES 1024

void tl_reply_error(tl_reply *r, int status, const char *message, const char *type, const char *param,
                    const char *code) {
    free(r->body);
    r->status = status;
    r->body = tl_error_json(message, type, param, code);
    r->content_type = "application/json";
    r->allow = NULL;
    r->stream = NULL;
}

static void reply_json(tl_reply *r, int status, cJSON *root) {
    free(r->body);
    r->status = status;
    r->body = cJSON_PrintUnformatted(root);
    r->content_type = "application/json";
    cJSON_Delete(root);
}

static void bad(tl_reply *r, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void bad(tl_reply *r, const char *param, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tl_reply_error(r, 400, msg, "invalid_request_error", param, NULL);
}

tl_endpoint tl_route_endpoint(const char *url) {
    static const struct {
        const char *path;
        tl_endpoint ep;
    } T[] = {{"/v1/completions", TL_EP_COMPLETIONS}, {"/v1/chat/completions", TL_EP_CHAT},
             {"/v1/models", TL_EP_MODELS},           {"/health", TL_EP_HEALTH},
             {"/metrics", TL_EP_METRICS},            {"/tokenize", TL_EP_TOKENIZE},
             {"/detokenize", TL_EP_DETOKENIZE}};
    for (size_t i = 0; i < sizeof T / sizeof *T; i++)
        if (!strcmp(url, T[i].path)) return T[i].ep;
    return TL_EP_OTHER;
}

bool tl_route_needs_auth(tl_endpoint ep) { return ep != TL_EP_HEALTH; }

/* ---------------- request fields ----------------
 * Each getter: 0 = absent or null (out untouched), 1 = read, -1 = bad (reply set). */

static int get_bool(const cJSON *o, const char *k, bool *out, tl_reply *r) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return bad(r, k, "'%s' must be a boolean", k), -1;
    *out = cJSON_IsTrue(v);
    return 1;
}

static int get_num(const cJSON *o, const char *k, double lo, double hi, double *out, tl_reply *r) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return bad(r, k, "'%s' must be a number", k), -1;
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || d > hi) return bad(r, k, "'%s' is %g, outside [%g, %g]", k, d, lo, hi), -1;
    *out = d;
    return 1;
}

static int get_int(const cJSON *o, const char *k, double lo, double hi, long long *out, tl_reply *r) {
    double d;
    int rc = get_num(o, k, lo, hi, &d, r);
    if (rc <= 0) return rc;
    if (d != floor(d)) return bad(r, k, "'%s' must be an integer, got %g", k, d), -1;
    *out = (long long)d;
    return 1;
}

static const char *get_str(const cJSON *o, const char *k, bool required, tl_reply *r, int *rc) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v)) {
        if (required) bad(r, k, "'%s' is required", k), *rc = -1;
        else *rc = 0;
        return NULL;
    }
    if (!cJSON_IsString(v)) {
        bad(r, k, "'%s' must be a string", k);
        *rc = -1;
        return NULL;
    }
    *rc = 1;
    return v->valuestring;
}

/* One pass over a JSON text: how many values it holds (cJSON spends a node of some 64 bytes on
 * each, so a body of "1,1,1,..." would cost 32 times its size), and the offset of the first
 * \u0000 escape inside a string (-1 if none: cJSON's strings end at a NUL, so the rest of the
 * string would be dropped without a word). */
static size_t json_scan(const char *s, size_t n, long *nul_at) {
    size_t values = 1;
    bool in_str = false;
    *nul_at = -1;
    for (size_t i = 0; i < n; i++) {
        if (in_str) {
            if (s[i] == '"') {
                in_str = false;
            } else if (s[i] == '\\') {
                if (*nul_at < 0 && i + 5 < n && s[i + 1] == 'u' && !memcmp(s + i + 2, "0000", 4)) *nul_at = (long)i;
                i++; /* the escaped character: \" does not end the string, \\ is one backslash */
            }
        } else if (s[i] == '"') {
            in_str = true;
        } else if (s[i] == ',' || s[i] == '[' || s[i] == '{') {
            values++;
        }
    }
    return values;
}

/* The most JSON values a body may hold: a request that fits the context needs at most one per
 * token id, or a few per chat message (each message renders to several tokens). */
static size_t max_values(const tl_server *srv) { return 4 * (size_t)tl_sched_n_ctx(srv->sched) + 4096; }

/* Body -> JSON object, or NULL with a 400 in r. */
static cJSON *parse_body(const tl_server *srv, const char *body, size_t len, tl_reply *r) {
    if (len == 0) return bad(r, NULL, "the request body is empty: a JSON object is expected"), NULL;
    size_t ok = tl_utf8_validate(body, len);
    if (ok != len) return bad(r, NULL, "the request body is not valid UTF-8 (byte %zu)", ok), NULL;
    if (memchr(body, 0, len)) return bad(r, NULL, "the request body contains a NUL byte"), NULL;
    long nul;
    size_t values = json_scan(body, len, &nul), most = max_values(srv);
    if (values > most)
        return bad(r, NULL, "the request body holds %zu JSON values; at most %zu are accepted (4 per token of the "
                            "context, plus 4096)", values, most), NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!root) {
        size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        return bad(r, NULL, "malformed JSON near byte %zu", at), NULL;
    }
    while (end && end < body + len && strchr(" \t\r\n", *end)) end++;
    if (end && end < body + len) {
        cJSON_Delete(root);
        return bad(r, NULL, "unexpected data after the JSON value at byte %zu", (size_t)(end - body)), NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return bad(r, NULL, "the request body must be a JSON object"), NULL;
    }
    if (nul >= 0) {
        cJSON_Delete(root);
        return bad(r, NULL, "the request body has \\u0000 (a NUL character) in a string at byte %ld: NUL is not "
                            "accepted in any string", nul), NULL;
    }
    return root;
}

static int32_t *tokenize(const tl_model *m, const char *text, size_t len, const tl_tok_opts *o, size_t *n,
                         tl_error *err) {
    size_t cap = len + 16, need = 0;
    if (o->max_tokens) cap = TL_MIN(cap, o->max_tokens + 1);
    int32_t *ids = tl_xmalloc(sizeof(int32_t) * cap);
    if (tl_tokenize_opts(tl_model_tokenizer(m), text, len, o, ids, cap, &need, err)) {
        free(ids);
        return NULL;
    }
    if (need > cap) {
        ids = tl_xrealloc(ids, sizeof(int32_t) * need);
        if (tl_tokenize_opts(tl_model_tokenizer(m), text, len, o, ids, need, &need, err)) {
            free(ids);
            return NULL;
        }
    }
    *n = need;
    return ids;
}

/* ---------------- generation requests ---------------- */


/* Fields of OpenAI's API that tailor does not implement. A request that sets one to anything but
 * its neutral value (null, false, 0 or empty; best_of 1; response_format text) is refused with
 * 400 naming it, rather than answered as if the field were not there. */
static const struct {
    const char *field, *hint;
} UNSUPPORTED[] = {
    {"logprobs", "log probabilities are not returned"},
    {"top_logprobs", "log probabilities are not returned"},
    {"echo", "the prompt is not echoed"},
    {"best_of", "one candidate is generated per request"},
    {"suffix", "insertion (a suffix after the completion) is not supported"},
    {"logit_bias", "logit biases are not supported"},
    {"presence_penalty", "use repeat_penalty"},
    {"frequency_penalty", "use repeat_penalty"},
    {"tools", "tool calls are not supported"},
    {"functions", "function calls are not supported"},
    {"response_format", "only text responses are supported"},
};

static bool neutral(const char *field, const cJSON *v) {
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return true;
    if (!strcmp(field, "logprobs")) return false; /* completions' logprobs: 0 still asks for the sampled token's */
    if (cJSON_IsNumber(v)) return v->valuedouble == (!strcmp(field, "best_of") ? 1 : 0);
    if (cJSON_IsString(v)) return !*v->valuestring;
    if (!strcmp(field, "response_format")) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
        return cJSON_IsString(t) && !strcmp(t->valuestring, "text");
    }
    return (cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child;
}

/* The KV plan of the job's numbering (tl_job.kv_plan) as the server names it. */
static const char *kv_name(const tl_server *srv, int k) { return k > 0 ? srv->kv_allow_canon[k - 1] : srv->kv_text; }

/* "kv": text -> the plan's number (0: the slots' own), -1 if the server does not allow it. Only
 * the texts the server was given (or their canonical forms) match: a request's text is never
 * parsed, so it cannot name a plan file. */
static int kv_plan_of(const tl_server *srv, const char *text) {
    if (!strcmp(text, srv->kv_text)) return 0;
    for (int i = 0; i < srv->p.n_kv_allow; i++)
        if (!strcmp(text, srv->kv_allow_text[i]) || !strcmp(text, srv->kv_allow_canon[i])) return i + 1;
    return -1;
}

/* Sampling, max_tokens, stop, n, stream: shared by completions and chat. Returns 0 or -1. */
static int parse_gen_fields(tl_server *srv, const cJSON *root, bool chat, tl_job *j, tl_gen_opts *o, tl_reply *r) {
    tl_sampler_params sp = srv->p.sampling;
    double d;
    long long ll;
    int rc;
    for (size_t i = 0; i < sizeof UNSUPPORTED / sizeof *UNSUPPORTED; i++) {
        const char *f = UNSUPPORTED[i].field;
        if (!chat && (!strcmp(f, "logprobs") || !strcmp(f, "echo"))) continue; /* completions: below */
        if (!neutral(f, cJSON_GetObjectItemCaseSensitive(root, f)))
            return bad(r, f, "'%s' is not supported by this server (%s); leave it out", f, UNSUPPORTED[i].hint), -1;
    }
    /* sampling ranges: one rule for the CLI and the server, tl_sampler_check, below */
    if ((rc = get_num(root, "temperature", -HUGE_VAL, HUGE_VAL, &d, r)) < 0) return -1;
    if (rc) sp.temp = (float)d;
    if ((rc = get_num(root, "top_p", -HUGE_VAL, HUGE_VAL, &d, r)) < 0) return -1;
    if (rc) sp.top_p = (float)d;
    if ((rc = get_num(root, "min_p", -HUGE_VAL, HUGE_VAL, &d, r)) < 0) return -1;
    if (rc) sp.min_p = (float)d;
    if ((rc = get_int(root, "top_k", 0, INT_MAX, &ll, r)) < 0) return -1;
    if (rc) sp.top_k = (int)ll;
    if ((rc = get_num(root, "repeat_penalty", -HUGE_VAL, HUGE_VAL, &d, r)) < 0) return -1;
    if (rc) sp.repeat_penalty = (float)d;
    if ((rc = get_int(root, "seed", -9007199254740992.0, 9007199254740992.0, &ll, r)) < 0) return -1;
    if (rc) sp.seed = (uint64_t)ll; /* negative seeds wrap, as 64-bit values */
    tl_error e;
    if (tl_sampler_check(&sp, &e)) return bad(r, NULL, "%s", e.msg), -1; /* the CLI's rule too */
    j->sp = sp;

    j->max_tokens = srv->p.default_max_tokens;
    if ((rc = get_int(root, "max_tokens", -1, 1 << 30, &ll, r)) < 0) return -1;
    if (rc) j->max_tokens = (int)ll;
    if (chat) {
        if ((rc = get_int(root, "max_completion_tokens", -1, 1 << 30, &ll, r)) < 0) return -1;
        if (rc) j->max_tokens = (int)ll;
    }
    if ((rc = get_int(root, "n", 1, 1e9, &ll, r)) < 0) return -1;
    if (rc && ll != 1) return bad(r, "n", "'n' = %lld: only one choice per request is supported", ll), -1;

    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (stop && !cJSON_IsNull(stop)) {
        const cJSON *items[TL_MAX_STOP];
        int n = 0;
        if (cJSON_IsString(stop)) {
            items[n++] = stop;
        } else if (cJSON_IsArray(stop)) {
            int sz = cJSON_GetArraySize(stop);
            if (sz > TL_MAX_STOP) return bad(r, "stop", "'stop' has %d strings; at most %d", sz, TL_MAX_STOP), -1;
            const cJSON *it;
            cJSON_ArrayForEach(it, stop) {
                if (!cJSON_IsString(it)) return bad(r, "stop", "'stop' must hold strings only"), -1;
                items[n++] = it;
            }
        } else {
            return bad(r, "stop", "'stop' must be a string or an array of strings"), -1;
        }
        for (int i = 0; i < n; i++) {
            size_t sl = strlen(items[i]->valuestring);
            if (sl == 0) continue; /* an empty stop string would end every request at once */
            if (sl > MAX_STOP_BYTES)
                return bad(r, "stop", "a stop string has %zu bytes; at most %d", sl, MAX_STOP_BYTES), -1;
            j->stop[j->n_stop++] = tl_xstrdup(items[i]->valuestring);
        }
    }
    const cJSON *kv = cJSON_GetObjectItemCaseSensitive(root, "kv");
    if (kv && !cJSON_IsNull(kv)) { /* tailor's own: the request's KV policy, among those the server allows */
        const int k = cJSON_IsString(kv) ? kv_plan_of(srv, kv->valuestring) : -1;
        if (k < 0) {
            tl_strbuf allowed = {0};
            tl_strbuf_printf(&allowed, "%s (the default)", srv->kv_text);
            for (int i = 0; i < srv->p.n_kv_allow; i++) tl_strbuf_printf(&allowed, ", %s", srv->kv_allow_text[i]);
            if (!cJSON_IsString(kv)) bad(r, "kv", "'kv' must be a string, a KV policy this server allows: %s", allowed.p);
            else if (!srv->p.n_kv_allow)
                bad(r, "kv", "'kv' = '%.64s': this server runs every request with %s; per-request policies need it "
                             "started with --kv-allow SPEC", kv->valuestring, srv->kv_text);
            else bad(r, "kv", "'kv' = '%.64s': not a policy this server allows (%s)", kv->valuestring, allowed.p);
            free(allowed.p);
            return -1;
        }
        j->kv_plan = k;
    }
    if (get_bool(root, "ignore_eos", &j->ignore_eos, r) < 0) return -1;
    if (get_bool(root, "cache_prompt", &j->cache_prompt, r) < 0) return -1; /* llama.cpp's name */
    if (!chat) { /* the legacy completions fields lm-evaluation-harness uses for log-likelihoods */
        if ((rc = get_int(root, "logprobs", 0, TL_MAX_LOGPROBS, &ll, r)) < 0) return -1;
        if (rc) j->logprobs = (int)ll;
        if (get_bool(root, "echo", &j->echo, r) < 0) return -1;
    }
    o->stream = false;
    o->include_usage = false;
    if (get_bool(root, "stream", &o->stream, r) < 0) return -1;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) return bad(r, "stream_options", "'stream_options' must be an object"), -1;
        if (get_bool(so, "include_usage", &o->include_usage, r) < 0) return -1;
    }
    if (o->stream && (j->logprobs >= 0 || j->echo))
        return bad(r, j->echo ? "echo" : "logprobs", "'%s' is not supported with 'stream'", j->echo ? "echo" : "logprobs"), -1;
    return 0;
}

/* 400 context_length_exceeded: the prompt (n_desc tokens, or bytes) cannot fit. */
static int too_long(tl_server *srv, tl_reply *r, const char *n_desc) {
    char msg[320];
    snprintf(msg, sizeof msg,
             "the prompt has %s but the context holds %d tokens (the prompt and at least one generated token "
             "must fit; start the server with a larger --ctx-size)",
             n_desc, tl_sched_n_ctx(srv->sched));
    tl_reply_error(r, 400, msg, "invalid_request_error", "prompt", "context_length_exceeded");
    return -1;
}

/* Prompt text -> ids: BOS when the vocab adds one; control tokens recognised everywhere
 * (parse_all: tailor generate's rule for a raw prompt) or only inside the spans (a chat
 * template's markers). A long text costs no more than the context it could fill: one with more
 * bytes than n_ctx tokens can cover (tl_tok_max_piece each) is refused untokenized, and
 * tokenization stops after n_ctx + 1 ids. Returns 0 or -1 (reply set). */
static int set_prompt_text(tl_server *srv, tl_job *j, const char *text, size_t len, bool parse_all,
                           const tl_span *spans, size_t n_spans, const char *param, tl_reply *r) {
    const int n_ctx = tl_sched_n_ctx(srv->sched);
    const size_t at_least = len / TL_MAX(tl_tok_max_piece(tl_model_tokenizer(srv->model)), 1);
    char desc[96];
    if (at_least >= (size_t)n_ctx) {
        snprintf(desc, sizeof desc, "%zu bytes, so at least %zu tokens", len, at_least);
        return too_long(srv, r, desc);
    }
    tl_error err = {{0}};
    size_t n = 0;
    tl_tok_opts o = {.add_special = true, .parse_special = parse_all, .special_spans = spans,
                     .n_special_spans = n_spans, .max_tokens = (size_t)n_ctx};
    int32_t *ids = tokenize(srv->model, text, len, &o, &n, &err);
    if (!ids) return bad(r, param, "%s: %s", param, err.msg), -1;
    j->prompt = ids;
    j->n_prompt = (int)n;
    if (n > (size_t)n_ctx) {
        snprintf(desc, sizeof desc, "more than %d tokens", n_ctx);
        return too_long(srv, r, desc);
    }
    return 0;
}

static int check_prompt_fits(tl_server *srv, tl_job *j, tl_reply *r) {
    if (j->n_prompt == 0)
        return bad(r, "prompt", "the prompt is empty and the model adds no BOS token: nothing to start from"), -1;
    if (j->n_prompt >= tl_sched_n_ctx(srv->sched)) {
        char desc[64];
        snprintf(desc, sizeof desc, "%d tokens", j->n_prompt);
        return too_long(srv, r, desc);
    }
    return 0;
}

/* ---------------- answers ---------------- */

struct tl_stream {
    tl_server *srv;
    tl_job *job;
    bool chat, include_usage;
    char id[40];
    long created;
    size_t sent;
    int phase; /* 0 role chunk (chat), 1 tokens, 2 finished: only pending bytes left */
    char *pend;
    size_t pend_len, pend_off;
    double t_out; /* when bytes last went out (tl_time_s) */
};

/* A stream with nothing to say (its job queued, or a long prompt prefilling) sends an SSE
 * comment line this often, so that the idle-connection timeout (--timeout, counted from the
 * last byte either way) does not close it while it waits: a third of that timeout, 0.2 s at
 * least. Clients ignore comment lines (the SSE format). */
static double keepalive_s(const tl_server *srv) {
    return srv->p.timeout_s > 0 ? TL_MAX(0.2, srv->p.timeout_s / 3.0) : 1e30;
}

static const char *finish_name(tl_finish f) {
    return f == TL_FINISH_STOP ? "stop" : f == TL_FINISH_LENGTH ? "length" : NULL;
}

static void make_id(tl_server *srv, const char *prefix, char *out, size_t n) {
    uint64_t x = atomic_fetch_add(&srv->next_id, 1) + srv->id_salt;
    /* splitmix64 finaliser: ids look random but never repeat within a run */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    snprintf(out, n, "%s-%016llx", prefix, (unsigned long long)x);
}

static cJSON *chunk_base(const tl_stream *st) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", st->id);
    cJSON_AddStringToObject(o, "object", st->chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)st->created);
    cJSON_AddStringToObject(o, "model", st->srv->model_id);
    return o;
}

/* One choice of a chunk: text (may be NULL: no content), role (chat's first chunk), finish. */
static cJSON *chunk(const tl_stream *st, const char *text, size_t len, bool role, const char *finish) {
    cJSON *o = chunk_base(st);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    char *t = text ? tl_utf8_sanitize(text, len) : NULL;
    if (st->chat) {
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (t) cJSON_AddStringToObject(d, "content", t);
    } else {
        cJSON_AddStringToObject(c, "text", t ? t : "");
        cJSON_AddNumberToObject(c, "index", 0);
    }
    free(t);
    cJSON_AddNullToObject(c, "logprobs");
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
    else cJSON_AddNullToObject(c, "finish_reason");
    return o;
}

/* usage, with OpenAI's prompt_tokens_details.cached_tokens: prompt tokens a slot held already */
static void add_usage(cJSON *o, const tl_job *j) {
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", j->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", j->n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", j->n_prompt + j->n_gen);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", j->n_cached);
}

static void add_timings(cJSON *o, const tl_server *srv, const tl_job *j) {
    cJSON *t = cJSON_AddObjectToObject(o, "timings");
    cJSON_AddStringToObject(t, "kv", kv_name(srv, j->kv_plan));
    cJSON_AddNumberToObject(t, "queue_ms", j->t_start > 0 ? (j->t_start - j->t_queued) * 1e3 : 0);
    cJSON_AddNumberToObject(t, "prompt_cached", j->n_cached);                /* reused, not evaluated */
    cJSON_AddNumberToObject(t, "prompt_evaluated", j->n_prompt - j->n_cached); /* in prompt_ms */
    cJSON_AddNumberToObject(t, "prompt_ms", j->t_prompt * 1e3);
    cJSON_AddNumberToObject(t, "generation_ms", j->t_gen * 1e3);
    cJSON_AddNumberToObject(t, "generation_tokens_per_s", j->t_gen > 0 ? j->n_gen / j->t_gen : 0);
}

/* Append "data: <json>\n\n" to the pending bytes (takes the object). */
static void pend_event(tl_stream *st, cJSON *o) {
    char *js = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    size_t n = strlen(js);
    st->pend = tl_xrealloc(st->pend, st->pend_len + n + 9);
    memcpy(st->pend + st->pend_len, "data: ", 6);
    memcpy(st->pend + st->pend_len + 6, js, n);
    memcpy(st->pend + st->pend_len + 6 + n, "\n\n", 2);
    st->pend_len += n + 8;
    free(js);
}

static void pend_raw(tl_stream *st, const char *s) {
    size_t n = strlen(s);
    st->pend = tl_xrealloc(st->pend, st->pend_len + n + 1);
    memcpy(st->pend + st->pend_len, s, n);
    st->pend_len += n;
}

long tl_stream_read(tl_stream *st, const tl_conn *conn, char *buf, size_t max) {
    while (st->pend_off == st->pend_len) {
        free(st->pend);
        st->pend = NULL;
        st->pend_len = st->pend_off = 0;
        if (st->phase == 2) return 0;
        if (st->phase == 0) {
            if (st->chat) pend_event(st, chunk(st, "", 0, true, NULL));
            st->phase = 1;
            continue;
        }
        tl_job *j = st->job;
        pthread_mutex_lock(&j->mu);
        bool done = j->state == TL_JOB_DONE;
        size_t safe = j->safe_len;
        if (safe > st->sent) {
            pend_event(st, chunk(st, j->text + st->sent, safe - st->sent, false, NULL));
            st->sent = safe;
        } else if (done) {
            const char *fin = finish_name(j->finish);
            if (fin) {
                pend_event(st, chunk(st, st->chat ? NULL : "", 0, false, fin));
                if (st->include_usage) {
                    cJSON *o = chunk_base(st);
                    cJSON_AddArrayToObject(o, "choices");
                    add_usage(o, j);
                    add_timings(o, st->srv, j);
                    pend_event(st, o);
                }
            } else { /* headers went out as 200 already: the error travels as an event */
                char *e = tl_error_json(j->err[0] ? j->err : "generation was cancelled",
                                        j->finish == TL_FINISH_ERROR ? "server_error" : "cancelled", NULL, NULL);
                pend_raw(st, "data: ");
                pend_raw(st, e);
                pend_raw(st, "\n\n");
                free(e);
            }
            pend_raw(st, "data: [DONE]\n\n");
            st->phase = 2;
        }
        pthread_mutex_unlock(&j->mu);
        if (st->pend_len) continue;
        if (tl_time_s() - st->t_out >= keepalive_s(st->srv)) {
            pend_raw(st, ": keep-alive\n\n");
            continue;
        }
        tl_job_wait(j, st->sent, 100);
        if (tl_conn_gone(conn)) {
            tl_sched_cancel(st->srv->sched, j);
            tl_metrics_event(st->srv->metrics, "client_disconnect");
            return -1;
        }
    }
    size_t n = TL_MIN(max, st->pend_len - st->pend_off);
    memcpy(buf, st->pend + st->pend_off, n);
    st->pend_off += n;
    st->t_out = tl_time_s();
    return (long)n;
}

void tl_stream_free(tl_stream *st) {
    if (!st) return;
    tl_sched_cancel(st->srv->sched, st->job); /* no-op when it finished */
    tl_job_unref(st->job);
    free(st->pend);
    free(st);
}

/* A token's text as the answer shows it (control tokens: empty), malloc'd in *buf; its length. */
static size_t piece_of(const tl_server *srv, int32_t id, char **buf, size_t *cap) {
    size_t n = tl_token_to_piece(tl_model_tokenizer(srv->model), id, false, *buf, *cap);
    if (n > *cap) {
        *cap = n;
        *buf = tl_xrealloc(*buf, *cap);
        n = tl_token_to_piece(tl_model_tokenizer(srv->model), id, false, *buf, *cap);
    }
    return n;
}

/* Completions' "logprobs" object (the job is done): tokens, token_logprobs, top_logprobs and
 * text_offset. Entries from prompt tokens are at offsets from 0; generated ones from
 * gen_base (the echoed prompt's length), and only those that start inside the text that was
 * kept (a stop string cuts it) are reported. */
static cJSON *logprobs_json(const tl_server *srv, const tl_job *j, size_t gen_base) {
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens"), *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs"), *offs = cJSON_AddArrayToObject(o, "text_offset");
    size_t cap = 64, off = 0, gen_off = 0;
    char *buf = tl_xmalloc(cap);
    for (int i = 0; i < j->n_lp; i++) {
        const tl_tok_lp *e = &j->lp[i];
        const bool gen = i >= j->n_lp_prompt;
        if (gen && j->stop_cut && gen_off >= j->len) break; /* past the text a stop string kept */
        const size_t n = piece_of(srv, e->id, &buf, &cap);
        char *t = tl_utf8_sanitize(buf, n);
        cJSON_AddItemToArray(toks, cJSON_CreateString(t));
        free(t);
        cJSON_AddItemToArray(lps, isnan(e->logprob) ? cJSON_CreateNull() : cJSON_CreateNumber(e->logprob));
        if (isnan(e->logprob)) {
            cJSON_AddItemToArray(tops, cJSON_CreateNull());
        } else {
            cJSON *top = cJSON_CreateObject();
            for (int k = 0; k < e->n_top; k++) {
                const size_t tn = piece_of(srv, e->top_id[k], &buf, &cap);
                char *tt = tl_utf8_sanitize(buf, tn);
                if (!cJSON_GetObjectItemCaseSensitive(top, tt)) cJSON_AddNumberToObject(top, tt, e->top_lp[k]);
                free(tt);
            }
            cJSON_AddItemToArray(tops, top);
        }
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(gen ? gen_base + gen_off : off)));
        if (gen) gen_off += n;
        else off += n;
    }
    free(buf);
    return o;
}

/* echo: the prompt's text (its tokens' pieces) then the generated text; *lpo the logprobs. */
static char *echo_text(const tl_server *srv, const tl_job *j, cJSON **lpo) {
    size_t cap = 64, len = 0, bcap = 256;
    char *buf = tl_xmalloc(cap), *all = tl_xmalloc(bcap);
    for (int i = 0; i < j->n_prompt; i++) {
        const size_t n = piece_of(srv, j->prompt[i], &buf, &cap);
        if (len + n + 1 > bcap) all = tl_xrealloc(all, bcap = 2 * (len + n + 1));
        memcpy(all + len, buf, n);
        len += n;
    }
    const size_t plen = len;
    if (len + j->len + 1 > bcap) all = tl_xrealloc(all, bcap = len + j->len + 1);
    memcpy(all + len, j->text, j->len);
    len += j->len;
    if (j->logprobs >= 0) *lpo = logprobs_json(srv, j, plen);
    char *out = tl_utf8_sanitize(all, len);
    free(all);
    free(buf);
    return out;
}

static bool conn_gone(const void *c) { return tl_conn_gone(c); }

/* 429 for a request the KV budget has no room for: the bytes needed and free, in the message
 * and as numbers beside it. */
static void kv_refused(tl_server *srv, tl_reply *r, int rc, const tl_kv_refusal *w) {
    char msg[512];
    if (rc == TL_SUBMIT_KV_TOO_BIG)
        snprintf(msg, sizeof msg, "this request's KV cache needs %llu bytes at its %d tokens (prompt + max_tokens), "
                 "more than the server's whole KV budget of %llu bytes (--kv-budget): ask for fewer max_tokens or a "
                 "shorter prompt", (unsigned long long)w->need, w->n_tokens, (unsigned long long)w->budget);
    else
        snprintf(msg, sizeof msg, "this request's KV cache needs %llu bytes at its %d tokens (prompt + max_tokens); "
                 "%llu of the server's %llu-byte KV budget were free after waiting %.1f s: retry later",
                 (unsigned long long)w->need, w->n_tokens, (unsigned long long)w->available,
                 (unsigned long long)w->budget, w->waited_s);
    tl_metrics_event(srv->metrics, "rejected_kv");
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", "rate_limit_exceeded");
    cJSON_AddNullToObject(e, "param");
    cJSON_AddStringToObject(e, "code", rc == TL_SUBMIT_KV_TOO_BIG ? "kv_budget_exceeded" : "kv_budget_busy");
    cJSON_AddNumberToObject(e, "kv_bytes_needed", (double)w->need);
    cJSON_AddNumberToObject(e, "kv_bytes_available", (double)w->available);
    cJSON_AddNumberToObject(e, "kv_budget_bytes", (double)w->budget);
    cJSON_AddNumberToObject(e, "kv_tokens", w->n_tokens);
    reply_json(r, 429, root);
}

/* Queue the job and answer: an SSE stream, or wait (watching the client) for the whole text. */
static void run_generation(tl_server *srv, const tl_conn *conn, tl_job *j, bool chat, const tl_gen_opts *o,
                           tl_reply *r) {
    tl_kv_refusal why;
    const int rc = tl_sched_submit_reserved(srv->sched, j, conn ? conn_gone : NULL, conn, &why);
    if (rc == TL_SUBMIT_STOPPING) {
        tl_reply_error(r, 503, "the server is shutting down", "server_error", NULL, NULL);
        return;
    }
    if (rc == TL_SUBMIT_GONE) {
        tl_metrics_event(srv->metrics, "client_disconnect");
        tl_reply_error(r, 499, "the client closed the connection", "cancelled", NULL, NULL);
        return;
    }
    if (rc != TL_SUBMIT_OK) return kv_refused(srv, r, rc, &why);
    char id[40];
    make_id(srv, chat ? "chatcmpl" : "cmpl", id, sizeof id);
    long created = (long)time(NULL);
    if (o->stream) {
        tl_stream *st = tl_xcalloc(1, sizeof *st);
        st->srv = srv;
        tl_job_ref(j);
        st->job = j;
        st->chat = chat;
        st->include_usage = o->include_usage;
        snprintf(st->id, sizeof st->id, "%s", id);
        st->created = created;
        st->t_out = tl_time_s();
        r->status = 200;
        r->stream = st;
        r->content_type = "text/event-stream";
        return;
    }
    for (;;) {
        tl_job_wait(j, SIZE_MAX, 100);
        pthread_mutex_lock(&j->mu);
        bool done = j->state == TL_JOB_DONE;
        pthread_mutex_unlock(&j->mu);
        if (done) break;
        if (tl_conn_gone(conn)) {
            tl_sched_cancel(srv->sched, j);
            tl_metrics_event(srv->metrics, "client_disconnect");
            tl_reply_error(r, 499, "the client closed the connection", "cancelled", NULL, NULL);
            return;
        }
    }
    /* done: the step loop no longer writes the job */
    const char *fin = finish_name(j->finish);
    if (!fin) {
        if (j->finish == TL_FINISH_ERROR) tl_reply_error(r, 500, j->err, "server_error", NULL, NULL);
        else tl_reply_error(r, 503, j->err[0] ? j->err : "generation was cancelled", "server_error", NULL, NULL);
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", id);
    cJSON_AddStringToObject(root, "object", chat ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)created);
    cJSON_AddStringToObject(root, "model", srv->model_id);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *lpo = NULL;
    char *text = j->echo ? echo_text(srv, j, &lpo) : tl_utf8_sanitize(j->text, j->len);
    if (!j->echo && j->logprobs >= 0) lpo = logprobs_json(srv, j, 0);
    if (chat) {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", text);
    } else {
        cJSON_AddStringToObject(c, "text", text);
    }
    free(text);
    if (lpo) cJSON_AddItemToObject(c, "logprobs", lpo);
    else cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", fin);
    add_usage(root, j);
    add_timings(root, srv, j);
    reply_json(r, 200, root);
}

/* "prompt" of /v1/completions: text (or one text in a list), or token ids. 0 or -1. */
static int completion_prompt(tl_server *srv, const cJSON *root, tl_job *j, tl_reply *r) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p || cJSON_IsNull(p)) return bad(r, "prompt", "'prompt' is required"), -1;
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 &&
        (cJSON_IsString(cJSON_GetArrayItem(p, 0)) || cJSON_IsArray(cJSON_GetArrayItem(p, 0))))
        p = cJSON_GetArrayItem(p, 0); /* ["text"] or [[ids]]: one prompt in a list (a batch of one) */
    if (cJSON_IsString(p))
        return set_prompt_text(srv, j, p->valuestring, strlen(p->valuestring), true, NULL, 0, "prompt", r);
    if (!cJSON_IsArray(p))
        return bad(r, "prompt", "'prompt' must be a string, a list of token ids, or a list of one of those"), -1;
    int n = cJSON_GetArraySize(p), V = tl_model_n_vocab(srv->model), k = 0;
    if (n >= tl_sched_n_ctx(srv->sched)) {
        char desc[64];
        snprintf(desc, sizeof desc, "%d tokens", n);
        return too_long(srv, r, desc);
    }
    j->prompt = tl_xmalloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    const cJSON *it;
    cJSON_ArrayForEach(it, p) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
            it->valuedouble >= V)
            return bad(r, "prompt",
                       "'prompt' must be a string, a list of one string, or a list of token ids in [0, %d); "
                       "element %d is not",
                       V, k), -1;
        j->prompt[k++] = (int32_t)it->valuedouble;
    }
    j->n_prompt = k;
    return 0;
}

/* "messages" of /v1/chat/completions, rendered with the chat template and tokenized. 0 or -1. */
static int chat_prompt(tl_server *srv, const cJSON *root, tl_job *j, tl_reply *r) {
    int rc = -1, n = 0, n_owned = 0;
    tl_chat_msg *msgs = NULL;
    char **owned = NULL;
    char *text = NULL;
    tl_span *marks = NULL;
    size_t n_marks = 0;
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!ms || cJSON_IsNull(ms)) {
        bad(r, "messages", "'messages' is required");
        goto done;
    }
    if (!cJSON_IsArray(ms) || cJSON_GetArraySize(ms) == 0) {
        bad(r, "messages", "'messages' must be a non-empty array of {role, content} objects");
        goto done;
    }
    if (srv->chat == TL_CHAT_NONE || srv->chat == TL_CHAT_UNSUPPORTED) {
        tl_reply_error(r, 400, srv->chat_why, "invalid_request_error", NULL, "chat_template_unsupported");
        goto done;
    }
    int cnt = cJSON_GetArraySize(ms);
    msgs = tl_xcalloc((size_t)cnt, sizeof *msgs);
    owned = tl_xcalloc((size_t)cnt, sizeof *owned);
    const cJSON *m;
    cJSON_ArrayForEach(m, ms) {
        char param[48];
        snprintf(param, sizeof param, "messages[%d]", n);
        if (!cJSON_IsObject(m)) {
            bad(r, param, "'%s' must be an object with 'role' and 'content'", param);
            goto done;
        }
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(role)) {
            bad(r, param, "'%s.role' must be a string", param);
            goto done;
        }
        const char *rs = role->valuestring;
        if (!strcmp(rs, "developer")) rs = "system"; /* OpenAI's newer name for it */
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
            bad(r, param, "'%s.role' is '%.40s': supported roles are system, user, assistant", param, rs);
            goto done;
        }
        const char *cs;
        if (cJSON_IsString(content)) {
            cs = content->valuestring;
        } else if (cJSON_IsNull(content) || !content) {
            if (strcmp(rs, "assistant")) {
                bad(r, param, "'%s.content' is required", param);
                goto done;
            }
            cs = "";
        } else if (cJSON_IsArray(content)) { /* [{"type":"text","text":...}, ...] */
            size_t tot = 1;
            const cJSON *part;
            cJSON_ArrayForEach(part, content) {
                const cJSON *ty = cJSON_GetObjectItemCaseSensitive(part, "type");
                const cJSON *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text") || !cJSON_IsString(tx)) {
                    bad(r, param, "'%s.content' parts must be {\"type\": \"text\", \"text\": string}", param);
                    goto done;
                }
                tot += strlen(tx->valuestring) + 1;
            }
            char *joined = tl_xmalloc(tot);
            size_t at = 0;
            cJSON_ArrayForEach(part, content) {
                const char *tx = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
                if (at) joined[at++] = '\n';
                size_t l = strlen(tx);
                memcpy(joined + at, tx, l);
                at += l;
            }
            joined[at] = 0;
            owned[n_owned++] = joined;
            cs = joined;
        } else {
            bad(r, param, "'%s.content' must be a string or an array of text parts", param);
            goto done;
        }
        msgs[n].role = rs;
        msgs[n].content = cs;
        n++;
    }
    tl_error err = {{0}};
    if (!(text = tl_chat_render(srv->chat, msgs, n, &marks, &n_marks, &err))) {
        bad(r, "messages", "%s", err.msg);
        goto done;
    }
    /* the template's markers are control tokens; message content is text unless the server
     * trusts its clients to write control tokens (--chat-parse-special) */
    rc = set_prompt_text(srv, j, text, strlen(text), srv->p.chat_parse_special, marks, n_marks, "messages", r);
done:
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    free(owned);
    free(msgs);
    free(text);
    free(marks);
    return rc;
}

tl_job *tl_request_job(tl_server *srv, bool chat, const char *body, size_t len, tl_gen_opts *o, tl_reply *r) {
    cJSON *root = parse_body(srv, body, len, r);
    if (!root) return NULL;
    tl_job *j = tl_job_new();
    /* the cheap checks first: a request refused for a field costs no tokenization */
    int rc = parse_gen_fields(srv, root, chat, j, o, r);
    if (rc == 0) rc = chat ? chat_prompt(srv, root, j, r) : completion_prompt(srv, root, j, r);
    if (rc == 0) rc = check_prompt_fits(srv, j, r);
    cJSON_Delete(root);
    if (rc) {
        tl_job_unref(j);
        return NULL;
    }
    return j;
}

/* A generation request that holds a place (tl_sched_reserve): the place passes to its job, or
 * is given back if the request is refused. */
static void h_generate(tl_server *srv, const tl_conn *conn, bool chat, const char *body, size_t len, tl_reply *r) {
    tl_gen_opts o;
    tl_job *j = tl_request_job(srv, chat, body, len, &o, r);
    if (!j) {
        tl_sched_release(srv->sched);
        return;
    }
    run_generation(srv, conn, j, chat, &o, r);
    tl_job_unref(j);
}

static void h_tokenize(tl_server *srv, const char *body, size_t len, tl_reply *r) {
    cJSON *root = parse_body(srv, body, len, r);
    if (!root) return;
    int rc;
    bool add_special = false, parse_special = true, with_pieces = false;
    const char *content = get_str(root, "content", true, r, &rc);
    if (rc < 0 || get_bool(root, "add_special", &add_special, r) < 0 ||
        get_bool(root, "parse_special", &parse_special, r) < 0 || get_bool(root, "with_pieces", &with_pieces, r) < 0) {
        cJSON_Delete(root);
        return;
    }
    tl_error err = {{0}};
    size_t n = 0;
    tl_tok_opts o = {.add_special = add_special, .parse_special = parse_special};
    int32_t *ids = tokenize(srv->model, content, strlen(content), &o, &n, &err);
    if (!ids) {
        bad(r, "content", "content: %s", err.msg);
        cJSON_Delete(root);
        return;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(out, "tokens");
    char piece[256];
    for (size_t i = 0; i < n; i++) {
        if (!with_pieces) {
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
            continue;
        }
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", ids[i]);
        size_t np = tl_token_to_piece(tl_model_tokenizer(srv->model), ids[i], true, piece, sizeof piece);
        char *s = tl_utf8_sanitize(piece, TL_MIN(np, sizeof piece));
        cJSON_AddStringToObject(t, "piece", s);
        free(s);
        cJSON_AddItemToArray(arr, t);
    }
    free(ids);
    cJSON_Delete(root);
    reply_json(r, 200, out);
}

static void h_detokenize(tl_server *srv, const char *body, size_t len, tl_reply *r) {
    cJSON *root = parse_body(srv, body, len, r);
    if (!root) return;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    if (!cJSON_IsArray(t)) {
        bad(r, "tokens", "'tokens' must be an array of token ids");
        cJSON_Delete(root);
        return;
    }
    int n = cJSON_GetArraySize(t), V = tl_model_n_vocab(srv->model), k = 0;
    int32_t *ids = tl_xmalloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    const cJSON *it;
    cJSON_ArrayForEach(it, t) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
            it->valuedouble >= V) {
            bad(r, "tokens", "'tokens[%d]' is not a token id in [0, %d)", k, V);
            free(ids);
            cJSON_Delete(root);
            return;
        }
        ids[k++] = (int32_t)it->valuedouble;
    }
    size_t out_len = 0;
    char *s = tl_detokenize_ex(tl_model_tokenizer(srv->model), ids, (size_t)k, 0, &out_len);
    char *clean = tl_utf8_sanitize(s, out_len);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "content", clean);
    free(clean);
    free(s);
    free(ids);
    cJSON_Delete(root);
    reply_json(r, 200, out);
}

static void h_models(tl_server *srv, tl_reply *r) {
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(out, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", srv->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)(long)srv->t_start);
    cJSON_AddStringToObject(m, "owned_by", "tailor");
    cJSON *meta = cJSON_AddObjectToObject(m, "meta");
    cJSON_AddStringToObject(meta, "arch", tl_model_arch(srv->model));
    cJSON_AddNumberToObject(meta, "n_vocab", tl_model_n_vocab(srv->model));
    cJSON_AddNumberToObject(meta, "n_ctx_train", tl_model_n_ctx_train(srv->model));
    cJSON_AddNumberToObject(meta, "n_ctx", tl_sched_n_ctx(srv->sched));
    cJSON_AddNumberToObject(meta, "n_parallel", srv->p.n_parallel);
    cJSON_AddStringToObject(meta, "kv", srv->kv_text);
    cJSON_AddStringToObject(meta, "chat_template", tl_chat_name(srv->chat));
    reply_json(r, 200, out);
}

static void h_health(tl_server *srv, tl_reply *r) {
    tl_sched_stats st;
    tl_sched_stats_get(srv->sched, &st);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "status", "ok");
    cJSON_AddNumberToObject(out, "slots_idle", st.n_slots - st.n_busy);
    cJSON_AddNumberToObject(out, "slots_busy", st.n_busy);
    cJSON_AddNumberToObject(out, "queue", st.n_queued);
    reply_json(r, 200, out);
}

void tl_route(tl_server *srv, const tl_conn *conn, tl_endpoint ep, const char *method, const char *body, size_t len,
              tl_reply *r) {
    r->status = 500;
    r->body = NULL;
    r->content_type = "application/json";
    r->allow = NULL;
    r->stream = NULL;
    if (ep == TL_EP_OTHER) {
        tl_reply_error(r, 404, "no such endpoint (see docs/server.md)", "invalid_request_error", NULL, "not_found");
        return;
    }
    /* GET endpoints answer HEAD too (libmicrohttpd sends the headers without the body) */
    bool post = ep == TL_EP_COMPLETIONS || ep == TL_EP_CHAT || ep == TL_EP_TOKENIZE || ep == TL_EP_DETOKENIZE;
    if (post ? strcmp(method, "POST") : strcmp(method, "GET") && strcmp(method, "HEAD")) {
        char msg[96];
        snprintf(msg, sizeof msg, "this endpoint takes %s only", post ? "POST" : "GET (or HEAD)");
        tl_reply_error(r, 405, msg, "invalid_request_error", NULL, "method_not_allowed");
        r->allow = post ? "POST" : "GET, HEAD";
        return;
    }
    char why[512];
    if (ep != TL_EP_METRICS && tl_server_model_changed(srv, why, sizeof why)) {
        tl_reply_error(r, 503, why, "server_error", NULL, "model_changed");
        return;
    }
    /* A POST parses a JSON body and tokenizes or generates: it holds one of the P + Q places
     * for that work, so the memory and CPU it takes are bounded like the queue. */
    if (post) {
        int rc = tl_sched_reserve(srv->sched);
        if (rc == TL_SUBMIT_FULL) {
            tl_metrics_event(srv->metrics, "rejected_queue_full");
            tl_reply_error(r, 429, "the server is busy: every slot and queue place is taken; retry later",
                           "rate_limit_exceeded", NULL, "queue_full");
            return;
        }
        if (rc == TL_SUBMIT_STOPPING) {
            tl_reply_error(r, 503, "the server is shutting down", "server_error", NULL, NULL);
            return;
        }
    }
    switch (ep) {
    case TL_EP_COMPLETIONS: h_generate(srv, conn, false, body, len, r); break; /* the place goes to the job */
    case TL_EP_CHAT: h_generate(srv, conn, true, body, len, r); break;
    case TL_EP_TOKENIZE:
        h_tokenize(srv, body, len, r);
        tl_sched_release(srv->sched);
        break;
    case TL_EP_DETOKENIZE:
        h_detokenize(srv, body, len, r);
        tl_sched_release(srv->sched);
        break;
    case TL_EP_MODELS: h_models(srv, r); break;
    case TL_EP_HEALTH: h_health(srv, r); break;
    case TL_EP_METRICS:
        r->status = 200;
        r->body = tl_metrics_render(srv->metrics, srv->sched);
        r->content_type = "text/plain; version=0.0.4; charset=utf-8";
        break;
    default: break;
    }
}
