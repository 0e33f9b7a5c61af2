/* server.h: tailor's OpenAI-compatible HTTP server (tailor serve).
 *
 * Layers (one file each):
 *   http.c    libmicrohttpd glue: binding, body limits, auth, dispatch, SSE streaming,
 *             client-disconnect detection
 *   routes.c  the endpoints: request validation (cJSON), response shapes, SSE events
 *   sched.c   slots (one tl_session each), the bounded queue, and the step loop: one thread
 *             running every slot's tokens through one batched forward step (batch.c; on the
 *             GPU with --device cuda, src/cuda/batch.cu)
 *   chat.c    chat templates (ChatML, Phi-3, Phi-4, Gemma, Llama-3, DeepSeek-R1) chosen from
 *             tokenizer.chat_template
 *   metrics.c counters and the Prometheus text of /metrics
 *   util.c    UTF-8 checks, constant-time compare, OpenAI error objects
 *
 * Usage: fill tl_server_params, tl_server_start, then wait (signals) and tl_server_stop. */
#ifndef TL_SERVER_H
#define TL_SERVER_H

#include "../common.h"
#include "../sampler.h"
#include "../session.h"

#include <stdint.h>

typedef struct tl_server tl_server;

/* The default body limit's room for the JSON around a prompt (other fields, message objects). */
#define TL_BODY_SLACK (64u << 10)
/* File descriptors and threads kept out of the connection budget for the server itself (model
 * file, listening socket, slot and pool threads, logs). */
#define TL_CONN_RESERVE 64

typedef struct {
    const char *host;          /* numeric address or name to bind; default "127.0.0.1" */
    int port;                  /* 0 = any free port (see tl_server_port) */
    int n_parallel;            /* P: slots decoding at once */
    int n_queue;               /* requests that may wait for a slot before 429 */
    int n_ctx;                 /* tokens per slot; 0 = the model's training context */
    int n_threads;             /* threads of the batched step; 0 = CPUs */
    int chunk;                 /* prefill chunk (0 = default) */
    int batch_tokens;          /* rows per step, decode and prefill (0 = chunk + P); more than P */
    const tl_kv_plan *kv;      /* KV policy of each layer in every slot (NULL = f16); read at start */
    const char *device;        /* "cpu" (NULL) or "cuda": where the step runs and the slots' KV caches live */
    uint64_t gpu_mem_budget;   /* cuda: the slots' KV, the step's buffers and the weights must fit this many
                                  bytes (0: the GPU's free memory at start), else the start fails */
    const char *api_key;       /* NULL = no auth; a key that is set must pass tl_server_check_api_key */
    size_t max_body;           /* request bytes (413 above); 0 = n_ctx x the longest token's bytes
                                  + TL_BODY_SLACK: room for any prompt that fits the context */
    int timeout_s;             /* idle connection timeout (no byte either way) */
    int header_timeout_s;      /* a request's line and headers must be in this long after the connection
                                  opens or the previous answer ends, else the connection is closed */
    int body_timeout_s;        /* a body must be in this long after its headers (408; closed at twice) */
    int max_connections;       /* open connections (each one a thread); 0 = 4 * (P + queue) + 16; must
                                  stay below the file-descriptor and thread limits (TL_CONN_RESERVE) */
    int max_connections_per_ip; /* from one client address; 0 = P + queue + 4 */
    const char *chat_template; /* NULL = detect from GGUF; a name of tl_chat_names() forces one */
    bool chat_parse_special;   /* control tokens in message content count as such (off: plain text,
                                  so a user cannot forge template markers such as <|im_start|>) */
    const char *model_id;      /* id shown by /v1/models; NULL = file name */
    tl_sampler_params sampling; /* defaults for fields a request leaves out */
    int default_max_tokens;    /* when a request has no max_tokens; -1 = until EOG / context */
    bool verbose;              /* log each request to stderr */
} tl_server_params;

tl_server_params tl_server_default_params(void);
/* The chat template names --chat-template takes, "phi4|chatml|..." (chat.c). */
const char *tl_chat_names(void);

/* A key that is set must be usable: not empty (an empty key must never mean "no auth") and
 * without spaces or control characters (it travels in an HTTP header and is compared
 * exactly). NULL is fine: no auth. Returns 0, or -1 with err saying what is wrong. */
int tl_server_check_api_key(const char *key, tl_error *err);

/* Loads nothing: the model stays the caller's and must outlive the server. Creates the slots
 * (sessions, threads) and starts listening. Returns NULL with err on failure. */
tl_server *tl_server_start(tl_model *m, const char *model_path, const tl_server_params *p, tl_error *err);
int tl_server_port(const tl_server *s);
/* Stops accepting, cancels running work, joins every thread and frees everything. */
void tl_server_stop(tl_server *s);
/* The parameters in use, with every default filled in (limits for the start-up report). */
const tl_server_params *tl_server_params_in_use(const tl_server *s);
/* For the start-up report: memory of one slot (all are alike), its context and the chat
 * template in use ("chatml", "gemma", "llama3", "none", "unsupported"). */
void tl_server_slot_memory(tl_server *s, tl_session_mem *out, int *n_ctx, const char **chat);

#endif
