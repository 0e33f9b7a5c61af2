/* server.c: putting the server together (slots, metrics, chat template, HTTP) and taking it
 * apart in an order that never leaves a thread waiting on something already gone. */
#define _GNU_SOURCE
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

tl_server_params tl_server_default_params(void) {
    tl_server_params p = {0};
    p.host = "127.0.0.1";
    p.port = 8080;
    p.n_parallel = 1;
    p.n_queue = 16;
    p.max_body = 2u << 20;
    p.timeout_s = 30;
    p.sampling = tl_sampler_default_params();
    p.default_max_tokens = 128;
    return p;
}

int tl_server_check_api_key(const char *key, tl_error *err) {
    if (!key) return 0;
    if (!*key) return tl_fail(err, "the key is empty; a server that is given a key must not run without one");
    for (const unsigned char *c = (const unsigned char *)key; *c; c++)
        if (*c <= ' ' || *c == 0x7f)
            return tl_fail(err, "the key has a space or control character at byte %zu (it must be one HTTP token)",
                           (size_t)((const char *)c - key));
    return 0;
}

static void free_server(tl_server *s) {
    if (!s) return;
    if (s->sched) tl_sched_shutdown(s->sched); /* waiting connections see their jobs end */
    tl_http_stop(s);                           /* then their threads can be joined */
    tl_sched_free(s->sched);
    tl_metrics_free(s->metrics);
    free(s->model_id);
    free(s->host);
    free(s->api_key);
    free(s);
}

tl_server *tl_server_start(tl_model *m, const char *model_path, const tl_server_params *p, tl_error *err) {
    if (p->n_parallel < 1 || p->n_parallel > 256) {
        tl_fail(err, "--parallel %d: must be in [1, 256]", p->n_parallel);
        return NULL;
    }
    if (p->n_queue < 0) {
        tl_fail(err, "--queue %d: must be >= 0", p->n_queue);
        return NULL;
    }
    if (p->port < 0 || p->port > 65535) {
        tl_fail(err, "--port %d: must be in [0, 65535]", p->port);
        return NULL;
    }
    if (tl_server_check_api_key(p->api_key, err)) {
        tl_fail_prefix(err, "API key");
        return NULL;
    }
    tl_server *s = tl_xcalloc(1, sizeof *s);
    s->model = m;
    s->p = *p;
    s->t_start = (double)time(NULL);
    s->host = tl_xstrdup(p->host ? p->host : "127.0.0.1");
    s->p.host = s->host;
    s->api_key = p->api_key ? tl_xstrdup(p->api_key) : NULL;
    s->p.api_key = s->api_key;
    if (!s->p.max_body) s->p.max_body = 2u << 20;
    if (p->model_id) {
        s->model_id = tl_xstrdup(p->model_id);
    } else {
        const char *base = model_path ? strrchr(model_path, '/') : NULL;
        s->model_id = tl_xstrdup(base ? base + 1 : model_path ? model_path : "model");
    }
    s->p.model_id = s->model_id;
    s->p.chat_template = NULL; /* not kept: only its kind */
    uint64_t salt = 0;
    if (getrandom(&salt, sizeof salt, 0) != (ssize_t)sizeof salt) salt = (uint64_t)(tl_time_s() * 1e9);
    s->id_salt = salt;
    atomic_init(&s->next_id, 1);

    /* chat template: forced by name, else recognised in the GGUF's Jinja text */
    if (p->chat_template) {
        s->chat = tl_chat_by_name(p->chat_template);
        if (s->chat == TL_CHAT_NONE) {
            tl_fail(err, "--chat-template '%s': unknown (use chatml, gemma or llama3)", p->chat_template);
            free_server(s);
            return NULL;
        }
    } else {
        char *jinja = NULL;
        tl_error e2 = {{0}};
        if (tl_gguf_opt_str(m->gguf, "tokenizer.chat_template", &jinja, &e2)) jinja = NULL;
        s->chat = tl_chat_detect(jinja);
        free(jinja);
        if (s->chat == TL_CHAT_NONE)
            snprintf(s->chat_why, sizeof s->chat_why,
                     "this model has no chat template (tokenizer.chat_template); use /v1/completions, or start "
                     "the server with --chat-template chatml|gemma|llama3");
        else if (s->chat == TL_CHAT_UNSUPPORTED)
            snprintf(s->chat_why, sizeof s->chat_why,
                     "this model's chat template is not one tailor knows (ChatML, Gemma, Llama-3); start the "
                     "server with --chat-template chatml|gemma|llama3, or use /v1/completions");
    }

    s->metrics = tl_metrics_new();
    tl_sched_params sp = {.n_parallel = p->n_parallel, .n_queue = p->n_queue, .n_ctx = p->n_ctx,
                          .n_threads = p->n_threads, .chunk = p->chunk, .kv = p->kv, .kv_layer = p->kv_layer};
    if (!(s->sched = tl_sched_new(m, &sp, s->metrics, err))) {
        free_server(s);
        return NULL;
    }
    if (tl_http_start(s, err)) {
        free_server(s);
        return NULL;
    }
    return s;
}

int tl_server_port(const tl_server *s) { return s->port; }

void tl_server_stop(tl_server *s) { free_server(s); }

/* Slot memory for the start-up report (declared here to keep server.h small). */
void tl_server_slot_memory(tl_server *s, tl_session_mem *out, int *n_ctx, const char **chat) {
    tl_sched_slot_memory(s->sched, out);
    *n_ctx = tl_sched_n_ctx(s->sched);
    *chat = tl_chat_name(s->chat);
}
