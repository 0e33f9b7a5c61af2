/* synth.h: synthetic models with real models' shapes, and memory projections.
 *
 * Two things that let tailor talk about models it does not have:
 *  - a table of public model configs (Llama 3.x, Qwen2.5, Qwen3, Mistral, Phi-3, Gemma 2,
 *    SmolLM2) and a writer that
 *    produces a GGUF with random weights of exactly those shapes and metadata (loads in
 *    tailor and in llama.cpp), streaming tensors to disk so a 16 GB file needs ~30 MB of RAM;
 *  - the memory a session would hold (weights + KV at any context + activations), computed
 *    without allocating, by the same rules as tl_session_new_with_policies; tests check the
 *    projection equals what a real session reports. */
#ifndef TL_SYNTH_H
#define TL_SYNTH_H

#include "model.h"
#include "kv/kv.h"

typedef struct {
    const char *name;   /* "llama-3.1-8b" */
    const char *arch;   /* general.architecture: llama, qwen2, qwen3, phi3, gemma2 (its tensors: model.c) */
    const char *source; /* the public config it follows (for general.name / info) */
    int n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, n_ctx;
    float rope_base, norm_eps;
    bool tied;     /* no output.weight: the embedding matrix is the output projection */
    /* llama3 RoPE scaling, stored as the rope_freqs.weight tensor (factor 0 = none) */
    float rope_factor, rope_low_freq, rope_high_freq;
    int rope_orig_ctx;
    int longrope_ctx;     /* phi3 LongRoPE: the original context (0 = none); rope_factors_long/short */
    int sliding_window;   /* attention.sliding_window (gemma2, phi3; 0 = none) */
    float attn_softcap, final_softcap; /* gemma2 */
} tl_synth_shape;

size_t tl_synth_n_shapes(void);
const tl_synth_shape *tl_synth_shape_at(size_t i);
const tl_synth_shape *tl_synth_find_shape(const char *name); /* NULL if unknown */

/* The config tailor would read from a file written for this shape (n_layer, n_vocab, n_ctx:
 * 0 = the shape's). */
void tl_synth_config(const tl_synth_shape *s, int n_layer, int n_vocab, int n_ctx, tl_config *c);

/* llama3 frequency factors, n_rot/2 values, as llama.cpp's converter computes them (f32 math). */
void tl_synth_llama3_rope_factors(const tl_synth_shape *s, float *out);

/* LongRoPE divisors for a phi3 shape, n_rot/2 values: short ones 1, long ones a smooth ramp from
 * 1 to the extension ratio n_ctx / longrope_ctx (the published arrays are not copied: like
 * the weights, they only need the right shape). */
void tl_synth_longrope_factors(const tl_synth_shape *s, bool long_factors, float *out);

/* Bytes of the tensors a synth file of this shape holds (matrices in `type`, vectors f32):
 * equals tl_model.weight_bytes of the loaded file. */
uint64_t tl_synth_weight_bytes(const tl_synth_shape *s, tl_type type, int n_layer, int n_vocab);

typedef struct {
    const tl_synth_shape *shape;
    tl_type type;           /* matrices: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K, w4g128 */
    bool q4_k_m;            /* with type q4_K: llama.cpp's Q4_K_M choices, q6_K for the output projection and
                             * for attn_v / ffn_down of half the layers (its use_more_bits rule) */
    const char *vocab_path; /* copy tokenizer.* from this GGUF (its vocab size wins); NULL = byte-level fallback */
    uint64_t seed;
    int n_layer;            /* 0 = the shape's */
    int n_ctx;              /* 0 = the shape's (context_length key) */
    bool progress;          /* progress lines on stderr */
} tl_synth_params;

/* "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K", "w4g128"
 * (case-insensitive). */
int tl_synth_parse_type(const char *name, tl_type *out, tl_error *err);
/* The same, or "q4_K_M" (type q4_K with q4_k_m set): p->type and p->q4_k_m. */
int tl_synth_parse_weights(const char *name, tl_synth_params *p, tl_error *err);

/* Write the GGUF (temp file + rename). Returns 0, or -1 with err. */
int tl_synth_write(const tl_synth_params *p, const char *path, tl_error *err);

/* ---- Memory projection ---- */
typedef struct {
    int n_ctx, chunk;
    uint64_t weights;
    uint64_t kv;          /* all layers */
    tl_kv_bytes kv_parts; /* split by purpose */
    uint64_t activations;
    uint64_t kv_layer[TL_MAX_LAYERS];
    tl_kv_layer_policy eff[TL_MAX_LAYERS]; /* the policy each layer really gets (sliding-window
                                              layers fall back to f16 when given a quantized one) */
    int window[TL_MAX_LAYERS];             /* 0 or the layer's sliding window */
} tl_mem_projection;

/* n_ctx/chunk as the session resolves them (0 = training context / 512). */
int tl_project_n_ctx(const tl_config *c, int n_ctx);
int tl_project_chunk(int n_ctx, int chunk);

/* KV held after n_tokens (<= n_ctx) tokens, one policy per layer (NULL = f16). Fills n_ctx,
 * kv, kv_parts, kv_layer, eff, window. */
int tl_project_kv(const tl_config *c, int n_ctx, const tl_kv_layer_policy *policies, int64_t n_tokens,
                  tl_mem_projection *out, tl_error *err);
/* Activation bytes (tl_session.act_bytes) for this config, chunk and matmul scratch. */
uint64_t tl_project_act_bytes(const tl_config *c, int chunk, size_t mm_scratch);
/* The matmul scratch the session sizes from a loaded model's matrices... */
size_t tl_project_mm_scratch_model(const tl_model *m, int chunk);
/* ... or from a model whose matrices all have one type. */
size_t tl_project_mm_scratch_uniform(const tl_config *c, tl_type type, int chunk);

#endif
