/* server.c: putting the server together (slots, metrics, chat template, HTTP) and taking it
 * apart in an order that never leaves a thread waiting on something already gone. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

tl_server_params tl_server_default_params(void) {
    tl_server_params p = {0};
    p.host = "127.0.0.1";
    p.port = 8080;
    p.n_parallel = 1;
    p.n_queue = 16;
    p.timeout_s = 30;
    p.header_timeout_s = 10;
    p.body_timeout_s = 30;
    p.kv_wait_s = 30;
    p.sampling = tl_sampler_default_params();
    p.default_max_tokens = 128;
    p.prefill_q8 = true;
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
    free(s->model_path);
    pthread_mutex_destroy(&s->model_mu);
    free(s->host);
    free(s->api_key);
    free(s->kv_text);
    for (int i = 0; s->kv_allow_text && i < s->p.n_kv_allow; i++) {
        free(s->kv_allow_text[i]);
        free(s->kv_allow_canon[i]);
    }
    free(s->kv_allow_text);
    free(s->kv_allow_canon);
    free(s);
}

tl_server *tl_server_new(tl_model *m, const char *model_path, const tl_server_params *p, tl_error *err) {
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
    s->kv_text = p->kv ? tl_kv_plan_format(p->kv) : tl_xstrdup("f16");
    s->p.kv = NULL; /* not kept: the slots hold their stores */
    if (p->n_kv_allow < 0 || p->n_kv_allow > 16 || (p->n_kv_allow && (!p->kv_allow || !p->kv_allow_text))) {
        tl_fail(err, "--kv-allow: %d plans (at most 16)", p->n_kv_allow);
        free_server(s);
        return NULL;
    }
    s->kv_allow_text = tl_xcalloc((size_t)p->n_kv_allow + 1, sizeof(char *));
    s->kv_allow_canon = tl_xcalloc((size_t)p->n_kv_allow + 1, sizeof(char *));
    for (int i = 0; i < p->n_kv_allow; i++) {
        s->kv_allow_text[i] = tl_xstrdup(p->kv_allow_text[i]);
        s->kv_allow_canon[i] = tl_kv_plan_format(&p->kv_allow[i]);
    }
    s->p.kv_allow = NULL; /* not kept: the scheduler holds its copies */
    s->p.kv_allow_text = NULL;
    if (p->model_id) {
        s->model_id = tl_xstrdup(p->model_id);
    } else {
        const char *base = model_path ? strrchr(model_path, '/') : NULL;
        s->model_id = tl_xstrdup(base ? base + 1 : model_path ? model_path : "model");
    }
    s->p.model_id = s->model_id;
    pthread_mutex_init(&s->model_mu, NULL);
    if (model_path) {
        s->model_path = tl_xstrdup(model_path);
        if (stat(model_path, &s->model_st)) {
            tl_fail(err, "%s: %s", model_path, strerror(errno));
            free_server(s);
            return NULL;
        }
    }
    s->p.chat_template = NULL; /* not kept: only its kind */
    uint64_t salt = 0;
    if (getrandom(&salt, sizeof salt, 0) != (ssize_t)sizeof salt) salt = (uint64_t)(tl_time_s() * 1e9);
    s->id_salt = salt;
    atomic_init(&s->next_id, 1);

    /* chat template: forced by name, else recognised in the GGUF's Jinja text */
    if (p->chat_template) {
        s->chat = tl_chat_by_name(p->chat_template);
        if (s->chat == TL_CHAT_NONE) {
            tl_fail(err, "--chat-template '%s': unknown (use %s)", p->chat_template, tl_chat_names());
            free_server(s);
            return NULL;
        }
    } else {
        char *jinja = tl_model_meta_str(m, "tokenizer.chat_template");
        s->chat = tl_chat_detect(jinja);
        free(jinja);
        if (s->chat == TL_CHAT_NONE)
            snprintf(s->chat_why, sizeof s->chat_why,
                     "this model has no chat template (tokenizer.chat_template); use /v1/completions, or start "
                     "the server with --chat-template %s", tl_chat_names());
        else if (s->chat == TL_CHAT_UNSUPPORTED)
            snprintf(s->chat_why, sizeof s->chat_why,
                     "this model's chat template is not one tailor knows; start the server with --chat-template "
                     "%s, or use /v1/completions", tl_chat_names());
    }

    s->metrics = tl_metrics_new();
    tl_sched_params sp = {.n_parallel = p->n_parallel, .n_queue = p->n_queue, .n_ctx = p->n_ctx,
                          .n_threads = p->n_threads, .chunk = p->chunk, .batch_tokens = p->batch_tokens,
                          .kv = p->kv, .kv_allow = p->kv_allow, .n_kv_allow = p->n_kv_allow, .device = p->device, .gpu_mem_budget = p->gpu_mem_budget, .cuda = p->cuda,
                          .kv_budget = p->kv_budget, .kv_wait_ms = p->kv_wait_s * 1000, .prefill_q8 = p->prefill_q8};
    if (!(s->sched = tl_sched_new(m, &sp, s->metrics, err))) {
        free_server(s);
        return NULL;
    }
    /* the default body limit: what a prompt that fills the context can take as JSON text */
    if (!s->p.max_body)
        s->p.max_body = (size_t)tl_sched_n_ctx(s->sched) * TL_MAX(tl_tok_max_piece(tl_model_tokenizer(m)), 1) + TL_BODY_SLACK;
    return s;
}

tl_server *tl_server_start(tl_model *m, const char *model_path, const tl_server_params *p, tl_error *err) {
    tl_server *s = tl_server_new(m, model_path, p, err);
    if (s && tl_http_start(s, err)) {
        free_server(s);
        return NULL;
    }
    return s;
}

bool tl_server_model_changed(tl_server *s, char *why, size_t n) {
    if (!s->model_path) return false;
    pthread_mutex_lock(&s->model_mu);
    if (!s->model_why[0]) {
        struct stat st;
        const struct stat *a = &s->model_st;
        char what[128] = "";
        if (stat(s->model_path, &st))
            snprintf(what, sizeof what, "%s", strerror(errno));
        else if (st.st_dev != a->st_dev || st.st_ino != a->st_ino)
            snprintf(what, sizeof what, "replaced by another file");
        else if (st.st_size != a->st_size)
            snprintf(what, sizeof what, "size %lld -> %lld bytes", (long long)a->st_size, (long long)st.st_size);
        else if (st.st_mtim.tv_sec != a->st_mtim.tv_sec || st.st_mtim.tv_nsec != a->st_mtim.tv_nsec)
            snprintf(what, sizeof what, "modified");
        if (what[0])
            snprintf(s->model_why, sizeof s->model_why,
                     "the model file %s changed on disk after the server started (%s): its mapped weights may be "
                     "gone, so no more requests are taken; restart the server",
                     s->model_path, what);
    }
    bool changed = s->model_why[0] != 0;
    if (changed) snprintf(why, n, "%s", s->model_why);
    pthread_mutex_unlock(&s->model_mu);
    return changed;
}

int tl_server_port(const tl_server *s) { return s->port; }

const tl_server_params *tl_server_params_in_use(const tl_server *s) { return &s->p; }

void tl_server_stop(tl_server *s) { free_server(s); }

/* Slot memory for the start-up report (declared here to keep server.h small). */
void tl_server_slot_memory(tl_server *s, tl_session_mem *out, int *n_ctx, const char **chat) {
    tl_sched_slot_memory(s->sched, out);
    *n_ctx = tl_sched_n_ctx(s->sched);
    *chat = tl_chat_name(s->chat);
}
