/* fuzz_http.c: libFuzzer target for the server's request path, from a JSON body to a job.
 *
 * Loads stories260K.gguf once (from $TL_SHARED, default ../shared) and builds a server without
 * its HTTP layer (tl_server_new: one slot of 256 tokens). The first byte of an input picks the
 * endpoint ('c' completions, 'h' chat, 't' tokenize, 'd' detokenize; other bytes by value) and,
 * for chat, the template and --chat-parse-special; the rest is the body. Generation bodies go
 * through tl_request_job (everything but the queue), the others through tl_route. Checks:
 *  - a job has a prompt of 1 .. n_ctx - 1 ids inside the vocabulary, max_tokens >= -1, at most
 *    TL_MAX_STOP non-empty stop strings, and no reply;
 *  - a refusal is a 4xx whose body is an OpenAI error object naming the problem;
 *  - tokenize/detokenize answer 200 with JSON, or a 4xx error object; never 5xx;
 *  - every place taken in the queue is given back (no reservation leaks).
 * Seeds: fuzz/http_seeds. Run: ./fuzz_http -max_total_time=60 fuzz/http_seeds */
#include "../src/server/internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

static tl_server *make_server(void) {
    const char *base = getenv("TL_SHARED");
    char path[4096];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", base && *base ? base : "../shared");
    tl_error err = {{0}};
    tl_model *m = tl_model_load(path, &err);
    tl_server_params p = tl_server_default_params();
    p.n_ctx = 256;
    p.n_threads = 1;
    p.n_queue = 2;
    p.chat_template = "chatml";
    /* a per-request KV policy besides the default f16 ("kv": "f32") */
    static tl_kv_plan allow[1];
    static const char *allow_text[1] = {"f32"};
    if (m && tl_kv_plan_parse(&allow[0], "f32", NULL, tl_model_n_layer(m), &err) == 0) {
        p.kv_allow = allow;
        p.kv_allow_text = allow_text;
        p.n_kv_allow = 1;
    }
    tl_server *s = m ? tl_server_new(m, path, &p, &err) : NULL;
    if (!s) {
        fprintf(stderr, "fuzz_http: %s (set TL_SHARED)\n", err.msg);
        abort();
    }
    return s; /* kept for the whole run, as the model */
}

/* A 4xx with {"error": {"message": non-empty, "type": string}}. */
static void check_error(const tl_reply *r) {
    if (r->status < 400 || r->status > 499 || !r->body || r->stream) abort();
    cJSON *j = cJSON_Parse(r->body);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
    if (!cJSON_IsString(msg) || !*msg->valuestring || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "type")))
        abort();
    cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static tl_server *srv;
    if (!srv) srv = make_server();
    if (size == 0) return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    uint8_t sel = data[0];
    int which = sel == 'c' ? 0 : sel == 'h' ? 1 : sel == 't' ? 2 : sel == 'd' ? 3 : sel % 4;
    tl_reply r = {0};
    if (which <= 1) {
        static const tl_chat_kind kinds[] = {TL_CHAT_CHATML, TL_CHAT_GEMMA, TL_CHAT_LLAMA3, TL_CHAT_CHATML};
        srv->chat = which == 1 && sel != 'h' ? kinds[(sel >> 2) % 4] : TL_CHAT_CHATML;
        srv->p.chat_parse_special = which == 1 && sel != 'h' && (sel & 0x40);
        tl_gen_opts o;
        tl_job *j = tl_request_job(srv, which == 1, body, len, &o, &r);
        if (j) {
            int n_ctx = tl_sched_n_ctx(srv->sched), V = tl_model_n_vocab(srv->model);
            if (r.body || j->n_prompt < 1 || j->n_prompt >= n_ctx || j->max_tokens < -1 || j->n_stop > TL_MAX_STOP ||
                j->kv_plan < 0 || j->kv_plan > srv->p.n_kv_allow)
                abort();
            for (int i = 0; i < j->n_prompt; i++)
                if (j->prompt[i] < 0 || j->prompt[i] >= V) abort();
            for (int i = 0; i < j->n_stop; i++)
                if (!j->stop[i][0]) abort();
            tl_job_unref(j);
        } else {
            check_error(&r);
        }
    } else {
        const tl_conn conn = {.fd = -1};
        tl_route(srv, &conn, which == 2 ? TL_EP_TOKENIZE : TL_EP_DETOKENIZE, "POST", body, len, &r);
        if (r.status == 200) {
            cJSON *j = r.body ? cJSON_Parse(r.body) : NULL;
            if (!cJSON_IsObject(j)) abort();
            cJSON_Delete(j);
        } else {
            check_error(&r);
        }
        tl_sched_stats st;
        tl_sched_stats_get(srv->sched, &st);
        if (st.n_reserved != 0) abort(); /* the place taken for the request was given back */
    }
    free(r.body);
    return 0;
}
