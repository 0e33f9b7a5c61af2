/* session.h: one sequence being run through a model on a backend (engine/backend.h): on the
 * CPU, activation buffers, the per-layer KV caches and the thread pool. The CPU's forward pass
 * and the calls that dispatch to a session's backend live in session.c. */
#ifndef TL_SESSION_H
#define TL_SESSION_H

#include "../../include/tailor.h"
#include "../model/model.h"
#include "../base/threads.h"
#include "../cpu/vec.h"
#include "../kv/kv.h"
#include "backend.h"

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

/* Where an activation observer is called: the input of a group of linear layers. */
typedef enum {
    TL_ACT_ATTN_IN,  /* normed input of wq/wk/wv, n_embd wide */
    TL_ACT_ATTN_OUT, /* attention output, input of wo, n_head*head_dim_v wide */
    TL_ACT_FFN_IN,   /* normed input of w_gate/w_up, n_embd wide */
    TL_ACT_FFN_MID,  /* act(gate)*up, input of w_down, n_ff wide */
} tl_act_point;

/* Sees each chunk's activations at the points above (calibration, AWQ statistics). */
typedef void (*tl_act_observer)(void *ctx, int layer, tl_act_point point, const float *x, int n_rows, int dim);

struct tl_session {
    tl_model *model;
    const tl_backend_ops *be;  /* what runs it: eval, reset, memory and free go there */
    void *impl;                /* a device backend's own state (the CUDA backend's tl_cuda_session);
                                  NULL on the CPU, whose state is the fields below */
    int n_ctx;
    int chunk;
    int n_past;
    tl_pool *pool;             /* host work (NULL for a sequence of a device's batched step) */
    /* the CPU's: */
    const tl_vec_ops *vo;
    tl_kv_layer *kv[TL_MAX_LAYERS];
    tl_activations act;
    uint64_t act_bytes; /* bytes of activation buffers (excluding KV) */
    double inv_freq[2][512]; /* RoPE inverse frequencies: [global, sliding-window][n_rot/2] */
    tl_act_observer observer;  /* optional */
    void *observer_ctx;
    float *q_pred;             /* [chunk][n_head*head_dim_k] when a store predicts queries */
    bool keys_checked;         /* the per-token key warning (tl_session_check_keys) has had its look */
    unsigned mm_flags;         /* tl_matmul_w's flags (TL_MM_Q8 with prefill_q8) */
};

/* tl_session_new and the public calls on a session (tl_session_eval, tl_session_truncate,
 * tl_session_memory, ...): include/tailor.h. */


/* The query projection of layer il for n rows of normed input xn: Wq (+bias), gemma3's
 * q-norm, and RoPE at positions pos0.. . Writes [n][n_head*head_dim_k]. Used by the forward
 * pass and by query prediction for the next layer. */
void tl_session_query(tl_session *s, int il, const float *xn, int n, int pos0, float *q);

/* Pieces of the forward pass, shared with the batched step (batch.c). */
void tl_rmsnorm_rows(const tl_vec_ops *vo, const float *x, float *out, const float *w, int n_rows, int dim, float eps);
/* Rotate one head's vector by the cos/sin table of its position. */
void tl_rope_head(float *h, const float *cs, int n_rot, tl_rope_style style);
/* cos/sin of position pos for each rotated pair, base b (0 global, 1 sliding-window layers),
 * times the rope's attention factor (phi3 LongRoPE; 1 elsewhere). */
void tl_session_rope_cs(const tl_session *s, int pos, int b, float *cs);
/* y[t] += b for n_tok rows of dim (b NULL: nothing). */
void tl_add_bias(float *y, const float *b, int n_tok, int dim);
/* Per-token keys meeting outlier channels (Qwen2.5's k_proj bias) lose nearly all precision:
 * say so once, with what the first chunk measured and the layouts that would not. */
void tl_session_check_keys(tl_session *s);

/* Internal constructor: one layer policy per layer (NULL = f16 everywhere). */
tl_session *tl_session_new_with_policies(tl_model *m, int n_ctx, int n_threads, int chunk,
                                         const tl_kv_layer_policy *policies, tl_error *err);
/* The table of a --device name: NULL/"cpu" the CPU's (tl_backend_cpu), "cuda" the CUDA
 * backend (tl_backend_load). NULL with err naming the device and why ("--device 'x': unknown
 * device (cpu, cuda)", "--device cuda: ..."). */
const tl_backend_ops *tl_backend_find(const char *device, tl_error *err);

/* The same on a device: NULL/"cpu", or "cuda" (GPU 0; fails with a message when there is none
 * or the build has no CUDA). The backend's default options. */
tl_session *tl_session_new_on(tl_model *m, int n_ctx, int n_threads, int chunk, const tl_kv_layer_policy *policies,
                              const char *device, tl_error *err);

/* A sequence of a batched step (batch.h): its KV caches under p's plan, context and device. On
 * the CPU a session of chunk 1 and one thread (the batch holds the step's activations and
 * threads); on a device the KV caches alone (the backend's init with kv_only), which only a
 * batch evaluates. p's GPU budget is not checked here (the batch checks it for all its
 * sequences). */
tl_session *tl_session_new_for_batch(tl_model *m, const tl_session_params *p, tl_error *err);

/* A device session's own accounting of its memory (false on the CPU, which has none but
 * tl_session_memory). */
bool tl_session_device_memory(const tl_session *s, tl_device_mem *out);
/* The device's plan for a session like s (its context, chunk and options) under policies; -1
 * with err on the CPU. */
int tl_session_device_plan(const tl_session *s, const tl_kv_layer_policy *policies, tl_device_plan *out, tl_error *err);

#endif
