/* plan.h: the one definition of how a session is sized. Everything that allocates, checks or
 * reports a session's memory asks here: the CPU session (session.c) allocates exactly these
 * sizes, and `tailor info`, `tailor synth`, the Pareto runner and the evaluation commands
 * report them; test_plan checks projection == allocation for every store kind and chunk.
 *
 *   context    n_ctx 0 = the model's training context
 *   chunk      0 = 512; never more than the context
 *   layer KV   each layer's shape, and the policy it really gets: sliding-window layers keep
 *              a dense f16 window when given a quantized or offloaded policy
 *   KV bytes   the stores' exact formula (tl_kv_layer_bytes_formula) after n tokens
 *   activations every chunk-sized buffer of the forward pass, the matmul scratch (sized by
 *              the largest activation conversion any matrix needs) and, when a layer is a
 *              TailorKV offloaded store, the predicted-query buffer
 * The CUDA backend's own memory plan (tl_cuda_plan_memory) resolves context and chunk here
 * too. */
#ifndef TL_ENGINE_PLAN_H
#define TL_ENGINE_PLAN_H

#include "../model/model.h"
#include "../kv/policy.h"

/* n_ctx and chunk as a session resolves them (tl_plan_chunk: include/tailor.h). */
int tl_plan_n_ctx(const tl_config *c, int n_ctx);

/* The KV shape of layer il at context n_ctx, and the policy it gets given the requested one
 * (NULL = f16). */
void tl_plan_layer_kv(const tl_config *c, int n_ctx, int il, const tl_kv_layer_policy *requested, tl_kv_shape *shape,
                      tl_kv_layer_policy *effective);

/* The activation buffers of a session, in bytes (tl_activations in session.h). */
typedef struct {
    size_t x, xn, tmp;  /* [chunk][n_embd] */
    size_t q;           /* [chunk][n_head * head_dim_k] */
    size_t k, v;        /* [chunk][n_head_kv * head_dim_k / head_dim_v] */
    size_t attn;        /* [chunk][n_head * head_dim_v] */
    size_t gate, up;    /* [chunk][n_ff] */
    size_t rope;        /* [chunk][2 bases][n_rot] cos/sin */
    size_t mm_scratch;  /* activation conversions of the matmuls */
    size_t q_pred;      /* [chunk][n_head * head_dim_k] when a layer predicts queries, else 0 */
} tl_act_sizes;

/* What the matmul scratch is sized from: a loaded model's matrices, or (model NULL) a
 * config whose matrices all have one type. */
typedef struct {
    const tl_config *cfg;
    const tl_model *model;
    tl_type type;     /* with model NULL */
    uint64_t weights; /* weight bytes (tl_model.weight_bytes; tl_synth_weight_bytes for a shape) */
} tl_plan_target;

tl_plan_target tl_plan_target_model(const tl_model *m);

size_t tl_plan_mm_scratch(const tl_plan_target *t, int chunk);
/* Buffers for a chunk; effective: each layer's policy after tl_plan_layer_kv (a layer of kind
 * TL_KV_OFFLOAD adds the predicted-query buffer). */
void tl_plan_activations(const tl_plan_target *t, int chunk, const tl_kv_layer_policy *effective, tl_act_sizes *out);
uint64_t tl_act_sizes_total(const tl_act_sizes *a);

/* The KV bytes of a session of n_ctx tokens (0 = training context) under policies (one per
 * layer, NULL = f16) once it holds n_tokens tokens (< 0: n_ctx), by part, all layers: what
 * tl_plan_memory counts as kv_parts, without the activations. The server admits a request when
 * this, at the request's largest context, fits its KV budget. */
/* A KV plan (NULL: f16) for a model of c: one policy per layer, else err says so (the one check
 * of the sessions, the batch, tl_plan_kv_bytes and tl_kv_plan_resolve_auto). */
int tl_plan_check_kv(const tl_config *c, const tl_kv_plan *plan, tl_error *err);

int tl_plan_kv(const tl_config *c, int n_ctx, const tl_kv_layer_policy *policies, int64_t n_tokens, tl_kv_bytes *out,
               tl_error *err);

/* The weights a CPU session holds (tl_model_cpu_weights once its copies are made): the file's
 * bytes that stay mapped, and the integer GEMM's x16 copies (tl_model_pack) of the matrices
 * whose type this CPU's kernels run (tlq_pack_applies), each tlq_pack_bytes, which replace
 * those matrices' bytes of the file (their pages are released once packed). With no model,
 * the matrices of the config's shape, all of type t->type. */
void tl_plan_weights(const tl_plan_target *t, uint64_t *file, uint64_t *packed);

/* A session's memory, computed without allocating. */
typedef struct {
    int n_ctx, chunk;
    uint64_t weights;         /* weights_file + weights_packed */
    uint64_t weights_file;    /* the file's bytes that stay mapped (tl_plan_weights) */
    uint64_t weights_packed;  /* the x16 copies for the CPU's integer GEMM */
    uint64_t kv;          /* all layers, all tiers */
    tl_kv_bytes kv_parts; /* split by purpose (host: the host tier of offloaded layers) */
    tl_act_sizes act;
    uint64_t activations; /* tl_act_sizes_total(&act) */
    uint64_t kv_layer[TL_MAX_LAYERS];
    tl_kv_layer_policy eff[TL_MAX_LAYERS]; /* the policy each layer gets */
    int window[TL_MAX_LAYERS];             /* 0 or the layer's sliding window */
} tl_mem_plan;

/* Memory of a session of n_ctx tokens (0 = training context) and chunk (0 = 512) under
 * policies (one per layer, NULL = f16) holding n_tokens tokens (< 0: n_ctx). Errors name the
 * layer whose policy does not fit its shape. */
int tl_plan_memory(const tl_plan_target *t, int n_ctx, int chunk, const tl_kv_layer_policy *policies, int64_t n_tokens,
                   tl_mem_plan *out, tl_error *err);

#endif
