/* server.h: tailor's OpenAI-compatible HTTP server (tailor serve).
 *
 * Layers (one file each):
 *   http.c    libmicrohttpd glue: binding, body limits, auth, dispatch, SSE streaming,
 *             client-disconnect detection
 *   routes.c  the endpoints: request validation (cJSON), response shapes, SSE events
 *   sched.c   slots (one tl_session each), the bounded queue, and the step loop: one thread
 *             running every slot's tokens through one batched forward step (engine/batch.c; on the
 *             GPU with --device cuda, src/cuda/batch.cu)
 *   chat.c    chat templates (ChatML, Phi-3, Phi-4, Gemma, Llama-3, DeepSeek-R1) chosen from
 *             tokenizer.chat_template
 *   metrics.c counters and the Prometheus text of /metrics
 *   util.c    UTF-8 checks, constant-time compare, OpenAI error objects
 *
 * Usage: fill tl_server_params, tl_server_start, then wait (signals) and tl_server_stop.
 *
 * The server is a client of the engine: it reaches models, sessions, batches and plans through
 * include/tailor.h only, as the tools do (of src/ it includes base/; test_api checks). */
#ifndef TL_SERVER_H
#define TL_SERVER_H

#include "../base/common.h"
#include "tailor.h"

#include <stdint.h>

/* The server's public face is in include/tailor.h: tl_server_params (with TL_BODY_SLACK and
 * TL_CONN_RESERVE), tl_server_default_params, tl_chat_names, tl_server_check_api_key,
 * tl_server_start, tl_server_port, tl_server_stop, tl_server_params_in_use and
 * tl_server_slot_memory. */

#endif
