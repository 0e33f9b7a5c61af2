/* synth.h: synthetic models with real models' shapes.
 *
 * What lets tailor talk about models it does not have:
 *  - a table of public model configs (Llama 3.x, Qwen2.5, Qwen3, Mistral, Phi-3, Gemma 2,
 *    SmolLM2) and a writer that
 *    produces a GGUF with random weights of exactly those shapes and metadata (loads in
 *    tailor and in llama.cpp), streaming tensors to disk so a 16 GB file needs ~30 MB of RAM;
 *  - the weight bytes of such a file without writing it (tl_synth_weight_bytes), which the
 *    planner (engine/plan.h) adds to a shape's KV and activations. */
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

#endif
