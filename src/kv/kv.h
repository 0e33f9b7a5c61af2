/* kv.h: the KV cache of one attention layer, behind one interface with several stores.
 *
 * A layer cache holds the keys and values of the tokens seen so far (post-RoPE keys) and
 * answers attention for a block of new queries. The one operation is tl_kv_forward:
 *
 *   out = causal_attention(q_new, keys = history ++ k_new, values = history ++ v_new)
 *
 * then (k_new, v_new) join the history. History may be compressed (quantized codes,
 * offloaded tiers); the new block is attended in full precision, exactly as given, and is
 * compressed only after it has been attended. This is the chunked-prefill semantics: a
 * chunk sees earlier chunks through the store's representation and itself exactly. For a
 * single decode token the same rule applies (its own key/value enter at full precision).
 *
 * Layout of the arrays passed in (row-major, one row per token):
 *   q   [n_tok][n_head    * head_dim_k]
 *   k   [n_tok][n_head_kv * head_dim_k]
 *   v   [n_tok][n_head_kv * head_dim_v]
 *   out [n_tok][n_head    * head_dim_v]
 * Query head h uses KV head h / (n_head / n_head_kv) (GQA).
 * Token i of the block has absolute position n_past + i, where n_past = tokens already held
 * (tl_kv_layer.n_tokens). With window W > 0 (sliding-window layers) a query at position p
 * attends keys at positions p-W+1 .. p only, and the store may keep just the last W tokens.
 * With softcap > 0 the scores are soft-capped before softmax (Gemma 2), exactly as given: a
 * store that shifts scores (smoothed keys drop q.mu) adds the shift back before the cap. */
#ifndef TL_KV_H
#define TL_KV_H

#include "../base/common.h"
#include "../base/threads.h"

typedef struct {
    int n_head;     /* query heads */
    int n_head_kv;  /* key/value heads (divides n_head) */
    int head_dim_k; /* key (and query) head size */
    int head_dim_v; /* value head size */
    int n_ctx;      /* most tokens the layer will ever hold (capacity to reserve) */
    int window;     /* 0: full causal attention; > 0: sliding window of this many tokens */
    float scale;    /* multiplier on q.k before softmax (1/sqrt(head_dim_k) usually) */
    float softcap;  /* > 0 (Gemma 2): each score s = scale * q.k becomes softcap * tanh(s / softcap)
                       before softmax (tl_softcap), in every store; 0 = none */
} tl_kv_shape;

/* tl_kv_bytes, the bytes a layer cache holds split by purpose, and tl_kv_bytes_total:
 * include/tailor.h. */

typedef struct tl_kv_layer tl_kv_layer;

typedef struct {
    const char *name;
    /* Attend then append, as described above. Returns 0, or -1 with err (e.g. capacity). */
    int (*forward)(tl_kv_layer *l, tl_pool *pool, int n_tok, const float *q, const float *k,
                   const float *v, float *out, tl_error *err);
    /* Bytes held now (reserved capacity that is not yet used is not counted). */
    void (*bytes)(const tl_kv_layer *l, tl_kv_bytes *b);
    /* Forget all tokens (keep allocations). */
    void (*clear)(tl_kv_layer *l);
    void (*destroy)(tl_kv_layer *l);
    /* Optional (NULL when unused): a prediction of this layer's queries for the next forward
     * call, made from the previous layer's normed input with this layer's Wq (+bias, q-norm,
     * RoPE), layout like q. The session calls it before running the previous layer's
     * attention, so a store can pick what to fetch early (TailorKV's sparse layers). Only
     * called when `wants_query_prediction` is true. */
    void (*predicted_query)(tl_kv_layer *l, tl_pool *pool, int n_tok, const float *q_pred);
    bool wants_query_prediction;
    /* Optional (NULL: the store cannot): keep only the first n_tokens tokens, so that a new
     * continuation can reuse a shared prefix. With dry_run it only says whether it could
     * (0) or why not (-1 with err), changing nothing. */
    int (*truncate)(tl_kv_layer *l, int n_tokens, bool dry_run, tl_error *err);
    /* With truncate: the largest m <= n_tokens (clamped to the tokens held) that truncate
     * accepts; 0 when none is (clearing is always possible). */
    int (*truncate_max)(const tl_kv_layer *l, int n_tokens);
} tl_kv_ops;

struct tl_kv_layer {
    const tl_kv_ops *ops;
    tl_kv_shape shape;
    int n_tokens; /* tokens seen since the last clear (absolute position of the next token) */
};

static inline int tl_kv_forward(tl_kv_layer *l, tl_pool *pool, int n_tok, const float *q, const float *k,
                                const float *v, float *out, tl_error *err) {
    return l->ops->forward(l, pool, n_tok, q, k, v, out, err);
}
static inline void tl_kv_clear(tl_kv_layer *l) { l->ops->clear(l); }
static inline void tl_kv_destroy(tl_kv_layer *l) {
    if (l) l->ops->destroy(l);
}

/* ---- Policies ----
 * What store each layer gets. The text form and JSON plans are parsed in policy.c; the
 * dense (f32/f16/bf16) store lives in dense.c. */
/* TL_KV_AUTO ("auto:4") is never a store: the session replaces it, layer by layer, with the
 * quantized policy that a short calibration pass measures best (engine/calibrate_keys.c). */
typedef enum { TL_KV_F32, TL_KV_F16, TL_KV_BF16, TL_KV_QUANT, TL_KV_OFFLOAD, TL_KV_AUTO } tl_kv_kind;

typedef enum {
    TL_KV_GRAN_TOKEN,   /* groups of g channels within one token */
    TL_KV_GRAN_CHANNEL, /* groups of g tokens within one channel (KIVI keys) */
    TL_KV_GRAN_BLOCK,   /* a tile of g tokens x g channels */
    TL_KV_GRAN_TENSOR,  /* one scale per head over the whole layer (fixed after first chunk) */
} tl_kv_gran;

typedef enum { TL_KV_ASYM, TL_KV_SYM } tl_kv_quantizer;

/* One side (K or V) of a quantized layer. */
typedef struct {
    int bits;      /* 16 (dense), 8, 4, 2, 1 */
    tl_kv_quantizer quantizer;
    tl_kv_gran gran;
    int group;     /* 32, 64, 128, or 0 = whole head */
} tl_kv_side;

/* TailorKV sparse layers (kind TL_KV_OFFLOAD, kv/offload.c): the prompt's K/V live in a host
 * tier; the device tier keeps sinks, a recent window, generated tokens and per-channel max|K|;
 * each decode step retrieves the top-k prompt tokens scored on a few critical channels. */
typedef struct {
    int sinks;        /* first tokens always attended (8) */
    int recent;       /* latest prompt tokens always attended (56) */
    int topk;         /* prompt tokens retrieved per step (128) */
    int channels;     /* critical channels per KV head used for scoring (8) */
    int summary_bits; /* 0: fetch channel rows from the host tier each step (the paper);
                         4 (or 8): a quantized channel-major key summary resident on the device */
    int page;         /* 0: token-level retrieval; > 0: retrieve whole pages of this many tokens */
} tl_kv_offload_params;

typedef struct tl_kv_layer_policy {
    tl_kv_kind kind; /* dense kinds ignore the rest */
    tl_kv_side k, v;
    int residual;    /* R: most recent tokens kept in full precision (KIVI) */
    bool smooth_k;   /* subtract per-channel mean of K (fixed after first chunk) */
    bool rotate;     /* Hadamard rotation of K and V per head before quantizing */
    tl_kv_offload_params off; /* kind TL_KV_OFFLOAD only */
} tl_kv_layer_policy;

/* Create a store for one layer. Returns NULL with err if the policy does not fit the shape
 * (e.g. group size does not divide head_dim). */
tl_kv_layer *tl_kv_layer_new(const tl_kv_layer_policy *p, const tl_kv_shape *s, tl_error *err);

/* How many history ranges the attention of `base` (KV head, query block) pairs is split into
 * for nthreads threads (stores' decode and prefill tasks): about 4 tasks per thread, a task
 * count that is a multiple of the thread count when splitting (9 equal tasks on 2 threads keep
 * one idle for the last: SmolLM2's 3 KV heads at decode), at most max_split (one per tile). */
int tl_kv_history_splits(int base, int nthreads, int max_split);

/* Dense stores (dense.c). type is TL_KV_F32/F16/BF16. */
tl_kv_layer *tl_kv_dense_new(tl_kv_kind type, const tl_kv_shape *s, tl_error *err);

#endif
