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

typedef struct {
    tl_type type;           /* target for the matrices */
    bool awq;               /* activation-aware scaling (type must be w4g128) */
    const char *calib_path; /* AWQ calibration text (required with awq) */
    const char *keep;       /* comma list of tensors kept as they are: "output,token_embd"; a name
                               without "blk.N." ("ffn_down") keeps it in every layer; NULL: none */
    int n_threads;          /* 0: all CPUs */
    tl_awq_params awq_params;
    bool progress;          /* progress lines on stderr */
} tl_quantize_params;

void tl_quantize_default_params(tl_quantize_params *p);

typedef struct {
    int n_tensors;          /* in the file */
    int n_quantized;        /* re-encoded to the target type */
    int n_fallback;         /* re-encoded to a fallback type */
    int n_kept;             /* written as they were (keep list, 1-D, norms, same type) */
    uint64_t bytes_in, bytes_out; /* tensor data */
    uint64_t file_bytes;    /* the output file */
    uint64_t type_count[TL_TYPE_COUNT], type_bytes[TL_TYPE_COUNT]; /* output tensors per type */
    tl_awq_group *awq_groups; /* AWQ: one per layer and group */
    int n_awq_groups;
    int64_t awq_tokens;
    int awq_samples;
    double seconds, awq_seconds;
} tl_quantize_report;

/* "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K", "f16", "bf16", "f32", "w4g128";
 * "awq" gives w4g128 with *awq = true. */
int tl_quantize_parse_type(const char *name, tl_type *type, bool *awq, tl_error *err);

/* llama.cpp's general.file_type for a file whose matrices are mostly `t` (1024 "guessed"
 * for types llama.cpp does not have). */
uint32_t tl_quantize_ftype(tl_type t);

int tl_quantize_file(const char *in_path, const char *out_path, const tl_quantize_params *p, tl_quantize_report *rep,
                     tl_error *err);
void tl_quantize_report_free(tl_quantize_report *rep);

#endif
