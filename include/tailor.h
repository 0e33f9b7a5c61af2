/* tailor.h: the public C API of the tailor inference engine.
 *
 * Lifecycle: a tl_model (weights mapped from a GGUF file, config, tokenizer; immutable and
 * shareable) and any number of tl_session (one sequence each: KV cache, activations, threads).
 *
 *   tl_error err;
 *   tl_model *m = tl_model_load("model.gguf", &err);
 *   tl_session_params sp = tl_session_default_params();
 *   tl_session *s = tl_session_new(m, &sp, &err);
 *   tl_session_eval(s, ids, n, logits, false, &err);   // logits of the last token
 *   ...
 *   tl_session_free(s); tl_model_free(m);
 */
#ifndef TAILOR_H
#define TAILOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_model tl_model;
typedef struct tl_session tl_session;

/* ---- KV plans: the KV cache policy of each layer, parsed once from text ---- */
typedef struct tl_kv_layer_policy tl_kv_layer_policy; /* one layer's store (src/kv/kv.h) */
typedef struct tl_kv_plan {
    int n_layers;
    tl_kv_layer_policy *layers;
} tl_kv_plan;

#ifndef TL_ERROR_DEFINED
#define TL_ERROR_DEFINED
typedef struct {
    char msg[512];
} tl_error;
#endif

/* spec: a policy text ("f16", "k4v2:kivi", "auto:4", "tailor:plan=P.json,..."; NULL = f16), or
 * a path to a JSON plan file (ends in ".json", or starts with '@'). overrides: NULL/"" or
 * "0=k8v8,1-3=k2v2". Errors name the option and the field: "--kv 'k4v3': ...",
 * "--kv-layer '40=k8v8': layer 40 out of range (model has 32 layers)". */
int tl_kv_plan_parse(tl_kv_plan *plan, const char *spec, const char *overrides, int n_layers, tl_error *err);
/* Compact text of a whole plan, for display: "k2v2:kivi" if uniform, else the base policy and
 * the layers that differ, "k2v2:kivi [0=k8v8,30-31=f16]". Returns a malloc'd string. */
char *tl_kv_plan_format(const tl_kv_plan *plan);
/* Frees the layers (not the struct). */
void tl_kv_plan_free(tl_kv_plan *plan);

/* ---- Sessions ---- */
typedef struct {
    int n_ctx;            /* tokens the session can hold; 0 = the model's training context */
    int n_threads;        /* 0 = all online CPUs */
    int chunk;            /* prefill chunk size in tokens (0 = 512) */
    const tl_kv_plan *kv; /* the KV policy of each layer (tl_kv_plan_parse); NULL = f16 */
    const char *device;   /* "cpu" (NULL) or "cuda" */
    uint64_t gpu_mem_budget; /* cuda: refuse a session whose planned GPU memory exceeds this
                                many bytes, naming the part that does not fit (0 = no limit) */
} tl_session_params;

tl_session_params tl_session_default_params(void);

tl_model *tl_model_load(const char *path, tl_error *err);
void tl_model_free(tl_model *m);
int tl_model_n_vocab(const tl_model *m);
int tl_model_n_ctx_train(const tl_model *m);
int tl_model_n_layer(const tl_model *m);
/* The context a session of n_ctx tokens gets (0 = the training context; src/engine/plan.h). */
int tl_model_resolve_n_ctx(const tl_model *m, int n_ctx);
const char *tl_model_arch(const tl_model *m);

tl_session *tl_session_new(tl_model *m, const tl_session_params *p, tl_error *err);
void tl_session_free(tl_session *s);
/* Run n tokens through the model, appending them to the cache. logits (may be NULL) receives
 * n_vocab floats for the last token, or n * n_vocab for every token when all_logits. */
int tl_session_eval(tl_session *s, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err);
/* Benchmarking deep caches: append n random K/V rows to every layer's cache through the
 * backend's own append/quantize path, as if n tokens had been evaluated, without running the
 * model. The CUDA backend only (a CPU session evaluates tokens instead; the error says so). */
int tl_session_fill_random(tl_session *s, int n, uint64_t seed, tl_error *err);
/* Forget the sequence (keeps allocations). */
void tl_session_reset(tl_session *s);
int tl_session_n_past(const tl_session *s);
/* The context and prefill chunk the session resolved (n_ctx 0 and chunk 0 given). */
int tl_session_n_ctx(const tl_session *s);
int tl_session_chunk(const tl_session *s);
/* Whether it runs on the GPU, and its CPU threads (0 on the GPU). */
bool tl_session_on_gpu(const tl_session *s);
int tl_session_n_threads(const tl_session *s);
/* GPU 0's name and its memory's peak bandwidth in GB/s (10^9 B/s); false, with the reason in
 * name, when there is none or the build has no CUDA. */
bool tl_gpu_bandwidth(char *name, size_t n, double *peak_gbs);

#ifdef __cplusplus
}
#endif

#endif
