/* model.h: the Llama-family model as three plain parts (after llama2.c):
 *   tl_config  - the blueprint, read from GGUF metadata
 *   tl_weights - views into the mapped file, one per tensor, each with its shape
 *   tl_session (session.h) - activations and the KV cache of one sequence
 * Architectures: llama (and mistral), qwen2, gemma3. */
#ifndef TL_MODEL_H
#define TL_MODEL_H

#include "common.h"
#include "gguf.h"
#include "quants.h"
#include "tokenizer.h"

#define TL_MAX_LAYERS 256

typedef enum { TL_ARCH_LLAMA, TL_ARCH_QWEN2, TL_ARCH_GEMMA3 } tl_arch;
typedef enum { TL_ROPE_NORM, TL_ROPE_NEOX } tl_rope_style; /* adjacent pairs vs halves */

typedef struct {
    tl_arch arch;
    char arch_name[32];   /* general.architecture as written in the file */
    int n_vocab;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim_k, head_dim_v;
    int n_ff;
    int n_ctx_train;
    float norm_eps;
    /* RoPE */
    tl_rope_style rope_style;
    int n_rot;              /* dims rotated per head */
    float rope_base;        /* global layers */
    float rope_base_swa;    /* sliding-window layers (gemma3: 10000) */
    float rope_freq_scale;  /* linear scaling: 1/factor */
    /* attention */
    float attn_scale;       /* multiplier on q.k */
    int sliding_window;     /* 0 = none */
    bool layer_swa[TL_MAX_LAYERS]; /* layer uses the sliding window */
    /* gemma-isms */
    bool embd_scale;        /* multiply embeddings by sqrt(n_embd) */
    bool gelu_ffn;          /* GELU-tanh gated FFN instead of SwiGLU */
} tl_config;

/* A weight matrix: rows of n_in values, n_out rows. */
typedef struct {
    const void *data;
    tl_type type;
    int64_t n_in, n_out;
    const char *name;
} tl_mat;

typedef struct {
    const float *attn_norm, *ffn_norm;
    const float *attn_post_norm, *ffn_post_norm; /* gemma3 */
    const float *q_norm, *k_norm;                /* gemma3: per-head RMSNorm, head_dim values */
    tl_mat wq, wk, wv, wo;
    const float *bq, *bk, *bv;                    /* qwen2 */
    tl_mat w_gate, w_up, w_down;
} tl_layer_weights;

typedef struct {
    tl_mat tok_embd;          /* n_vocab rows of n_embd */
    const float *output_norm;
    tl_mat output;            /* == tok_embd when tied */
    bool tied_output;
    const float *rope_freqs;  /* llama3 frequency factors, n_rot/2 values, or NULL */
    tl_layer_weights layers[TL_MAX_LAYERS];
} tl_weights;

struct tl_model {
    tl_gguf *gguf;
    tl_config cfg;
    tl_weights w;
    tl_tokenizer *tok;
    uint64_t weight_bytes; /* bytes of all tensors the forward pass reads */
    /* norm vectors stored as f16/bf16 in the file are widened here (owned) */
    float **owned;
    int n_owned;
    void *gpu; /* device copy of the weights (src/cuda), made by the first CUDA session */
};

typedef struct tl_model tl_model;

tl_model *tl_model_load(const char *path, tl_error *err);
void tl_model_free(tl_model *m);

#endif
