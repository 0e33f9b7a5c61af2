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

/* tl_synth_shape (a public model config) and the shape table (tl_synth_n_shapes,
 * tl_synth_shape_at, tl_synth_find_shape): include/tailor.h. */

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

/* tl_synth_params, their parsers (tl_synth_parse_type, tl_synth_parse_weights) and
 * tl_synth_write, the GGUF writer: include/tailor.h. */

#endif
