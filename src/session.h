/* session.h: one sequence being run through a model: activation buffers, the per-layer KV
 * caches and the thread pool. The forward pass lives in session.c. */
#ifndef TL_SESSION_H
#define TL_SESSION_H

#include "model.h"
#include "threads.h"
#include "vec.h"
#include "kv/kv.h"

/* Activation buffers for a chunk of up to `chunk` tokens. */
typedef struct {
    float *x;      /* [chunk][n_embd] residual stream */
    float *xn;     /* [chunk][n_embd] normed input of the current block */
    float *q;      /* [chunk][n_head * head_dim_k] */
    float *k;      /* [chunk][n_head_kv * head_dim_k] */
    float *v;      /* [chunk][n_head_kv * head_dim_v] */
    float *attn;   /* [chunk][n_head * head_dim_v] */
    float *gate;   /* [chunk][n_ff] */
    float *up;     /* [chunk][n_ff] */
    float *tmp;    /* [chunk][n_embd] block output before the residual add */
    float *rope;   /* [chunk][2 bases][n_rot/2][cos, sin] */
    float *logits; /* [n_vocab] last-token logits when the caller wants all rows elsewhere */
    void *mm_scratch;
    size_t mm_scratch_bytes;
} tl_activations;

struct tl_session {
    tl_model *model;
    int n_ctx;
    int chunk;
    int n_past;
    tl_pool *pool;
    const tl_vec_ops *vo;
    tl_kv_layer *kv[TL_MAX_LAYERS];
    tl_activations act;
    uint64_t act_bytes; /* bytes of activation buffers (excluding KV) */
    double inv_freq[2][512]; /* RoPE inverse frequencies: [global, sliding-window][n_rot/2] */
};

typedef struct tl_session tl_session;

/* Memory of a session, in bytes. */
typedef struct {
    uint64_t weights;     /* tensors the model reads */
    uint64_t kv;          /* all KV stores, all tiers */
    uint64_t activations; /* buffers sized by the chunk */
    tl_kv_bytes kv_parts; /* KV split by purpose */
} tl_session_mem;

void tl_session_memory(const tl_session *s, tl_session_mem *out);

/* Internal constructor: one layer policy per layer (NULL = f16 everywhere). */
tl_session *tl_session_new_with_policies(tl_model *m, int n_ctx, int n_threads, int chunk,
                                         const tl_kv_layer_policy *policies, tl_error *err);

#endif
