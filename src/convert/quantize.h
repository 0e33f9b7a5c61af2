/* quantize.h: re-encode the weight matrices of a GGUF file (tailor quantize).
 *
 * Reads IN, copies every metadata key verbatim (except general.file_type and
 * general.quantization_version, which it rewrites as llama.cpp does), and writes each
 * tensor either unchanged or re-encoded:
 *  - re-encoded: 2-D tensors named "*.weight" that are not norms and not in the keep list
 *    (token_embd and output included by default, as llama.cpp's --pure does);
 *  - a row length that the target's block does not divide falls back as llama.cpp does
 *    (q4_K/q5_K -> q5_0/q5_1, q6_K -> q8_0, w4g128 -> q4_1; 32-wide types -> source type);
 *  - a tensor already of the target type is copied byte for byte.
 * RTN types use tl_quantize_row, bit-exact with llama.cpp's quantize_row_*_ref (what
 * llama-quantize runs without an importance matrix). AWQ (awq.h) rescales and quantizes the
 * block matrices to w4g128 and rewrites the norms it folds scales into (as f32).
 * The output (a tl_outfile: a temp file renamed when complete) is opened before any work and
 * may not be the input file (through links too); it takes the input's permission bits. Limit: the quantized tensors are held in
 * memory until the write (about the output file's size; unchanged tensors are read from
 * the input mapping). */
#ifndef TL_QUANTIZE_H
#define TL_QUANTIZE_H

#include "awq.h"

/* tl_quantize_params, tl_quantize_report (with its AWQ summary) and the calls that take them
 * (tl_quantize_default_params, tl_quantize_parse_type, tl_quantize_file,
 * tl_quantize_report_free): include/tailor.h. */

/* llama.cpp's general.file_type for a file whose matrices are mostly `t` (1024 "guessed"
 * for types llama.cpp does not have). */
uint32_t tl_quantize_ftype(tl_type t);

#endif
