/* model.h: the Llama-family model as three plain parts (after llama2.c):
 *   tl_config  - the blueprint, read from GGUF metadata
 *   tl_weights - views into the mapped file, one per tensor, each with its shape
 *   tl_session (engine/session.h) - activations and the KV cache of one sequence
 * Architectures: llama (and mistral), qwen2 (and the DeepSeek-R1 Qwen distills), qwen3, phi3,
 * gemma2, gemma3: what each file holds and the rules llama.cpp applies to it are one row of
 * model.c's table. */
#ifndef TL_MODEL_H
#define TL_MODEL_H

#include "../base/common.h"
#include "gguf.h"
#include "../cpu/quants.h"
#include "tokenizer.h"

typedef enum { TL_ARCH_LLAMA, TL_ARCH_QWEN2, TL_ARCH_QWEN3, TL_ARCH_PHI3, TL_ARCH_GEMMA2, TL_ARCH_GEMMA3 } tl_arch;
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
    float rope_attn_factor; /* cos and sin multiplied by this (phi3 LongRoPE: sqrt(1 + ln s / ln n_orig)) */
    int n_ctx_orig;         /* phi3 LongRoPE: sessions longer than this use the long factors */
    /* attention */
    float attn_scale;       /* multiplier on q.k */
    float attn_softcap;     /* gemma2: scores become cap * tanh(score / cap); 0 = none */
    int sliding_window;     /* 0 = none */
    bool layer_swa[TL_MAX_LAYERS]; /* layer uses the sliding window */
    /* gemma-isms */
    bool embd_scale;        /* multiply embeddings by sqrt(n_embd) */
    bool gelu_ffn;          /* GELU-tanh gated FFN instead of SwiGLU */
    float final_softcap;    /* gemma2: logits become cap * tanh(logit / cap); 0 = none */
} tl_config;

/* A weight matrix: rows of n_in values, n_out rows. phi3's fused attn_qkv and ffn_up are bound
 * as views of their row ranges (wq/wk/wv, w_gate/w_up), so nothing downstream sees fusion. */
typedef struct {
    const void *data;
    tl_type type;
    int64_t n_in, n_out;
    const char *name;
    tl_wpack *pack; /* the CPU kernels' repacked copy, made on first use (cpu/quants.h); NULL: none */
} tl_mat;

typedef struct {
    const float *attn_norm, *ffn_norm;
    const float *attn_post_norm, *ffn_post_norm; /* gemma3 */
    const float *q_norm, *k_norm;                /* qwen3, gemma3: per-head RMSNorm, head_dim values */
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
    const float *rope_long, *rope_short; /* phi3 LongRoPE factors (divisors), n_rot/2 each, or NULL */
    tl_layer_weights layers[TL_MAX_LAYERS];
} tl_weights;

/* tl_model_load, tl_model_free and the accessors: include/tailor.h. */
struct tl_model {
    tl_gguf *gguf;
    tl_config cfg;
    tl_weights w;
    tl_tokenizer *tok;
    uint64_t weight_bytes; /* bytes of all tensors the forward pass reads */
    /* norm vectors stored as f16/bf16 in the file are widened here (owned) */
    float **owned;
    int n_owned;
    /* a device backend's copy of the weights, made by its first session and shared by the
     * model's sessions; tl_model_free releases it with the backend's dev_weights_free */
    void *dev_weights;
    void (*dev_weights_free)(void *dev_weights);
    tl_wpack **packs; /* every tl_mat's pack slot (freed with the model) */
    int n_packs;
};

/* The tensors an architecture's files hold besides llama's (the loader requires them; synth
 * writes them). */
typedef struct {
    bool qkv_bias;   /* attn_q/k/v.bias (otherwise optional) */
    bool qk_norm;    /* attn_q_norm / attn_k_norm: per-head RMSNorm before RoPE */
    bool post_norms; /* post_attention_norm / post_ffw_norm on the block outputs */
    bool fused;      /* attn_qkv = rows [q; k; v] and ffn_up = rows [gate; up], no ffn_gate */
} tl_arch_layout;

/* 0 and the layout of a supported architecture (general.architecture), else -1. */
int tl_arch_layout_of(const char *arch, tl_arch_layout *out);

/* The CPU kernels' packed copies of every weight matrix (tl_wpack), made now with the pool's
 * threads rather than by the first forward pass (a CPU session or batch calls it; a second
 * call finds them made). Every CPU session packs, whatever its threads and prefill mode: its
 * decode rows run the x16 kernels, and --prefill f32 widens its tiles from the same copy; a
 * device backend's session never does. Which matrices: tl_model_packed_mats, those whose type
 * this CPU's kernels run in x16 form (tlq_pack_applies). Each matrix's file pages are released
 * as soon as its copy is made, so a CPU session holds the copy in place of the file's bytes
 * (tl_model_cpu_weights; the planner projects the same, engine/plan.c). */
void tl_model_pack(const tl_model *m, struct tl_pool *pool);
/* The matrices tl_model_pack packs, each once: every layer's seven (phi3's fused tensors as
 * their views) and the output (a tied one is the embedding matrix). Returns how many. */
#define TL_MODEL_MAX_PACKED (7 * TL_MAX_LAYERS + 1)
int tl_model_packed_mats(const tl_model *m, const tl_mat **out);
/* What the weights hold now on the CPU: file = the file's bytes still mapped (weight_bytes less
 * the matrices whose pages were released), packed = the copies made (tl_wpack_bytes). */
void tl_model_cpu_weights(const tl_model *m, uint64_t *file, uint64_t *packed);
/* Row `row` of w as floats: from its packed copy once made (the file's pages are released
 * then; the embedding lookup of a tied output), else from the file. The same values. */
void tl_mat_get_row(const tl_mat *w, int64_t row, float *dst);

/* LongRoPE's factor on cos/sin for a model extended from n_ctx_orig to n_ctx tokens,
 * sqrt(1 + ln(n_ctx / n_ctx_orig) / ln(n_ctx_orig)) (Phi-3's converter; 1 when not extended). */
float tl_longrope_attn_factor(int n_ctx, int n_ctx_orig);

/* The architecture's fixed rules, from c->arch_name and the hyper-parameters already in c
 * (sliding_window included): rope style, which layers slide and their RoPE base, the query
 * scale, Gemma's embedding scale and GELU. -1 with err naming the supported ones for an
 * architecture tailor does not run. The loader and tl_synth_config both use it, so a projected
 * config is the one a file would load. */
int tl_config_arch_rules(tl_config *c, tl_error *err);

/* RoPE inverse frequencies of a session of n_ctx tokens, n_rot/2 values: for the global layers
 * (swa false) base^(-2i/n_rot) times the linear scale, divided by the llama3 factors or by
 * phi3's long (n_ctx > n_ctx_orig) or short ones; gemma3's sliding-window layers use base
 * rope_base_swa unscaled, every other sliding layer the global rope. (llama.cpp's rules; the
 * CPU session and the CUDA backend both take them from here.) */
void tl_model_rope_freqs(const tl_model *m, int n_ctx, bool swa, double *inv_freq);

#endif
