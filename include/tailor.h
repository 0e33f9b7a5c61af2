/* tailor.h: the public C API of the tailor inference engine, and the only header the tools
 * (tools/) include.
 *
 * Lifecycle: a tl_model (weights mapped from a GGUF file, config, tokenizer; immutable and
 * shareable) and any number of tl_session (one sequence each: KV cache, activations, threads).
 *
 *   tl_error err;
 *   tl_model *m = tl_model_load("model.gguf", &err);
 *   tl_kv_plan plan;
 *   tl_kv_plan_parse(&plan, "k4v2:kivi", NULL, tl_model_n_layer(m), &err);
 *   tl_session_params sp = tl_session_default_params();
 *   sp.kv = &plan;
 *   tl_session *s = tl_session_new(m, &sp, &err);
 *   tl_session_eval(s, ids, n, logits, false, &err);   // logits of the last token
 *   ...
 *   tl_session_free(s); tl_kv_plan_free(&plan); tl_model_free(m);
 *
 * Sections, bottom up: errors and shared helpers; weight formats; models and tokenizers; KV
 * plans; sessions and their memory; sampling; evaluation (jobs, tasks, scores, intervals,
 * result lines, perplexity); calibration; weights (quantize, synth); the model report of
 * `tailor info`; the server; the Pareto sweep. Every call that can fail takes a tl_error*
 * (may be NULL) and returns non-zero (or NULL) with a message that says what and where.
 * Parameters hold values parsed once, at the edge, with the parsers declared here (numbers,
 * sizes in bytes, a tl_kv_plan, a tl_type, a synth shape); what stays text (a Pareto grid's
 * axis lists, a chat template's name) is read by the call that takes it. */
#ifndef TAILOR_H
#define TAILOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_model tl_model;
typedef struct tl_session tl_session;
typedef struct tl_tokenizer tl_tokenizer;
struct cJSON; /* result lines and reports take cJSON objects (<cjson/cJSON.h>) */

/* ---- Errors and helpers (src/base/common.c) ---- */

/* An error message that says what failed and where, e.g.
 * "model.gguf: tensor blk.3.attn_k.weight: expected 512x128, found 512x64". */
typedef struct {
    char msg[512];
} tl_error;

/* printf-style; always returns -1 so callers can write `return tl_fail(err, ...)`. */
int tl_fail(tl_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepend context: "ctx: <old message>". Returns -1. */
int tl_fail_prefix(tl_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Allocation that aborts with a message on out-of-memory (activation buffers etc.).
 * Callers that must survive OOM use malloc directly and report via tl_error. */
void *tl_xmalloc(size_t n);
void *tl_xcalloc(size_t n, size_t size);
void *tl_xrealloc(void *p, size_t n);
char *tl_xstrdup(const char *s);

/* Whether path can be written as an output, checked before any work: it is not a directory,
 * a device or a pipe; its directory exists and is writable; and when src is given it is not
 * src itself (same device and inode: not a hard or symbolic link to it either). Returns 0 or
 * -1 naming the path. */
int tl_check_output(const char *path, const char *src, tl_error *err);
/* A whole file at once, written under a temp name and renamed when complete (common.h's
 * tl_outfile: no reader ever sees it half-written). Returns 0 or -1 with err naming the path. */
int tl_write_file(const char *path, const void *data, size_t len, tl_error *err);

/* ---- Text files the user names (-f, haystacks, calibration text, task, grid and plan files) ----
 * One reader with one cap, so that neither -f /dev/zero nor a huge file can exhaust memory: at
 * most `max` bytes are read, and never more than TL_TEXT_MAX_BYTES (max 0 = that). A caller that
 * knows how many tokens it uses passes tl_tok_text_bytes(tok, n): all the text n tokens can span.
 * When the file holds more it is cut there, and *cut says so; with cut NULL a note on stderr
 * does. Returns the text malloc'd and NUL-terminated, or NULL with err. */
#define TL_TEXT_MAX_BYTES ((size_t)64 << 20)
char *tl_read_text(const char *path, size_t max, size_t *len, bool *cut, tl_error *err);
/* A file that is only any use whole (JSON, task and plan files): tl_read_text under the general
 * cap, and an error naming the file, not a cut, when it is larger. */
char *tl_read_whole(const char *path, size_t *len, tl_error *err);

/* Text from a file (tensor names, metadata keys and strings, token pieces) made safe to print:
 * printable ASCII and UTF-8 of printable characters as they are; a backslash, and each byte of
 * `also` (may be NULL), after a backslash; newline and tab as \n and \t; every other byte
 * (ESC and the other control characters, DEL, C1 controls, bidi overrides, invalid UTF-8) as
 * \xHH. Writes at most cap bytes with the NUL, never half an escape or character; returns how
 * many bytes of s that took (len when all). */
size_t tl_escape(char *dst, size_t cap, const char *s, size_t len, const char *also);

/* A byte size: a number and an optional unit, case-insensitive: K, M, G, T or KiB, MiB, GiB,
 * TiB are powers of 2^10; KB, MB, GB, TB powers of 10^3; B or none bytes. "24GiB" =
 * 25769803776, "24GB" = 24000000000. Returns 0, or -1 when s is not a size >= 0 below 2^64. */
int tl_parse_size(const char *s, uint64_t *out);

/* Monotonic wall clock in seconds. */
double tl_time_s(void);
/* The online CPUs (at least 1): what a thread count of 0 means everywhere (src/base/threads.c). */
int tl_cpu_count(void);
/* Read bandwidth of main memory in GB/s (10^9 B/s): a 512 MiB buffer summed by n_threads
 * threads (0 = all CPUs), best of 3; 0 when the buffer cannot be allocated. */
double tl_memory_read_bandwidth(int n_threads);
/* GPU 0's name and its memory's peak bandwidth in GB/s (10^9 B/s); false, with the reason in
 * name, when there is none or the build has no CUDA. */
bool tl_gpu_bandwidth(char *name, size_t n, double *peak_gbs);

#define TL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TL_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- Weight formats (src/cpu/quants.c) ---- */

/* Numbering matches ggml_type so GGUF tensor type ids map directly. */
typedef enum {
    TL_TYPE_F32 = 0,
    TL_TYPE_F16 = 1,
    TL_TYPE_Q4_0 = 2,
    TL_TYPE_Q4_1 = 3,
    TL_TYPE_Q5_0 = 6,
    TL_TYPE_Q5_1 = 7,
    TL_TYPE_Q8_0 = 8,
    TL_TYPE_Q8_1 = 9,
    TL_TYPE_Q2_K = 10,
    TL_TYPE_Q3_K = 11,
    TL_TYPE_Q4_K = 12,
    TL_TYPE_Q5_K = 13,
    TL_TYPE_Q6_K = 14,
    TL_TYPE_Q8_K = 15,
    TL_TYPE_BF16 = 30,
    /* tailor's own formats: ids ggml does not use (ggml's end below 64), so llama.cpp
     * rejects such a file by name instead of misreading it. */
    TL_TYPE_W4G128 = 100, /* 4-bit asymmetric, groups of 128: fp16 scale + fp16 min + 64 B */
    TL_TYPE_COUNT = 128 /* upper bound on ids; not a type */
} tl_type;

/* "q4_K" etc. as llama.cpp prints them, "unknown" for an id that is no type (static strings). */
const char *tl_type_name(int type_id);
/* Storage cost of a weight type in bits per value (block overhead included), 0 if unknown:
 * f16 16, q8_0 8.5, q4_0 4.5, q4_K 4.5, w4g128 4.25. */
double tl_type_bits_per_weight(tl_type t);

/* ---- Models and tokenizers (src/model/model.c, src/model/tokenizer.c) ---- */

#define TL_MAX_LAYERS 256 /* the most layers a model may have */

tl_model *tl_model_load(const char *path, tl_error *err);
void tl_model_free(tl_model *m);
int tl_model_n_vocab(const tl_model *m);
int tl_model_n_ctx_train(const tl_model *m);
int tl_model_n_layer(const tl_model *m);
/* The context a session of n_ctx tokens gets (0 = the training context; src/engine/plan.h). */
int tl_model_resolve_n_ctx(const tl_model *m, int n_ctx);
const char *tl_model_arch(const tl_model *m);
const tl_tokenizer *tl_model_tokenizer(const tl_model *m);
/* Bytes of all tensors the forward pass reads. */
uint64_t tl_model_weight_bytes(const tl_model *m);
/* Weight bytes one decode step reads: every tensor once, less the token embedding matrix (a
 * step looks up one row of it) unless it is the output projection too. */
uint64_t tl_model_decode_weight_bytes(const tl_model *m);
/* A string of the file's metadata (e.g. "tokenizer.chat_template"), malloc'd; NULL when the key
 * is absent or holds no string. */
char *tl_model_meta_str(const tl_model *m, const char *key);

/* The tokenizer of a GGUF file from its metadata alone: any architecture, tensors or not (a
 * vocabulary-only file). NULL with err naming the file and the key at fault. */
tl_tokenizer *tl_tokenizer_open(const char *path, tl_error *err);
void tl_tokenizer_free(tl_tokenizer *t);
bool tl_tok_is_eog(const tl_tokenizer *t, int32_t id); /* EOS, EOT (<|im_end|>, <end_of_turn>...) */
/* Tokenize text (len bytes, need not be NUL-terminated). add_special: prepend BOS (and
 * append EOS) when the vocab says so. Writes at most cap ids; *n_out is the total needed
 * (call again with a bigger buffer if *n_out > cap). Returns 0, or -1 with err on invalid
 * UTF-8 ("prompt: invalid UTF-8 at byte 17") or other failure. */
int tl_tokenize(const tl_tokenizer *t, const char *text, size_t len, bool add_special, bool parse_special,
                int32_t *out, size_t cap, size_t *n_out, tl_error *err);
/* The same into a buffer of the right size (control tokens in the text recognised): the ids
 * malloc'd, *n their count; NULL with err. */
int32_t *tl_tokenize_all(const tl_tokenizer *t, const char *text, size_t len, bool add_special, size_t *n,
                         tl_error *err);
/* The bytes a token decodes to (SentencePiece "▁" -> " ", <0xXX> -> byte, byte-level BPE
 * unicode -> bytes; control tokens -> their text only if render_special). Returns the
 * number of bytes; writes at most cap. Pieces may be partial UTF-8. */
size_t tl_token_to_piece(const tl_tokenizer *t, int32_t id, bool render_special, char *buf, size_t cap);
/* The most bytes of text that n_tokens tokens can span (plus 16 for the edges: n times the
 * longest token's bytes), capped at TL_TEXT_MAX_BYTES; n_tokens <= 0: that cap. What a reader
 * of a text file needs to read to have n_tokens tokens (tl_read_text). */
size_t tl_tok_text_bytes(const tl_tokenizer *t, int64_t n_tokens);

/* A byte range [off, off + len) of a text. */
typedef struct {
    size_t off, len;
} tl_span;

/* tl_tokenize's options, and two more for text that is not all trusted:
 *  - special_spans: with parse_special off, control tokens are still recognised where they lie
 *    wholly inside one of these ranges (sorted, not overlapping): a chat template's own markers
 *    are control tokens, the same characters inside message content are plain text;
 *  - max_tokens > 0: stop once more than max_tokens ids are found; *n_out is then
 *    max_tokens + 1 and the ids are a prefix of the whole result (no EOS). A server that needs
 *    to know only whether a prompt fits its context stops there instead of tokenizing all. */
typedef struct {
    bool add_special, parse_special;
    const tl_span *special_spans;
    size_t n_special_spans;
    size_t max_tokens;
} tl_tok_opts;
int tl_tokenize_opts(const tl_tokenizer *t, const char *text, size_t len, const tl_tok_opts *o, int32_t *out,
                     size_t cap, size_t *n_out, tl_error *err);

/* The most bytes of text one token stands for (its longest piece, control tokens included):
 * a text of L bytes takes at least L / tl_tok_max_piece tokens. (Byte-level BPE vocabularies
 * that lack a token for some byte drop that byte, llama.cpp's rule; every real one has all.
 * WordPiece drops control characters and accents, so no such bound holds for "bert".) */
size_t tl_tok_max_piece(const tl_tokenizer *t);

/* Decode ids to text: a malloc'd NUL-terminated string; *len (if non-NULL) gets its length,
 * which counts embedded NUL bytes. The rules are llama.cpp's llama_detokenize: when
 * add_space_prefix (SPM) the first token's piece loses one leading space (so after a leading
 * BOS nothing is stripped: " Hello"); for BPE vocabs whose pre-tokenizer sets clean_spaces
 * (gpt-2, llama3, falcon, default, ...) " ." " ," " !" " ?" " 's" etc. are collapsed. That
 * clean-up is lossy, so exact round trips need TL_DETOK_NO_CLEANUP:
 * detokenize_ex(tokenize(x, add_special = false, parse_special = false), NO_CLEANUP) == x. */
enum {
    TL_DETOK_REMOVE_SPECIAL = 1, /* drop a leading BOS / trailing EOS the vocab adds (llama.cpp's remove_special) */
    TL_DETOK_RENDER_SPECIAL = 2, /* control tokens render as their text */
    TL_DETOK_NO_CLEANUP = 4,     /* skip clean_up_tokenization_spaces */
};
char *tl_detokenize_ex(const tl_tokenizer *t, const int32_t *ids, size_t n, unsigned flags, size_t *len);

/* ---- KV plans: the KV cache policy of each layer, parsed once from text (src/kv/policy.c) ---- */

typedef struct tl_kv_layer_policy tl_kv_layer_policy; /* one layer's store (src/kv/kv.h) */
typedef struct tl_kv_plan {
    int n_layers;
    tl_kv_layer_policy *layers;
} tl_kv_plan;

/* spec: a policy text ("f16", "k4v2:kivi", "auto:4", "tailor:plan=P.json,..."; NULL = f16), or
 * a path to a JSON plan file (ends in ".json", or starts with '@'). overrides: NULL/"" or
 * "0=k8v8,1-3=k2v2". Errors name the option and the field: "--kv 'k4v3': ...",
 * "--kv-layer '40=k8v8': layer 40 out of range (model has 32 layers)". */
int tl_kv_plan_parse(tl_kv_plan *plan, const char *spec, const char *overrides, int n_layers, tl_error *err);
/* Compact text of a whole plan, for display: "k2v2:kivi" if uniform, else the base policy and
 * the layers that differ, "k2v2:kivi [0=k8v8,30-31=f16]". Returns a malloc'd string. */
char *tl_kv_plan_format(const tl_kv_plan *plan);
/* The canonical text of layer il's policy; returns the length it needs (snprintf-like). */
int tl_kv_plan_format_layer(const tl_kv_plan *plan, int il, char *buf, size_t n);
/* Frees the layers (not the struct). */
void tl_kv_plan_free(tl_kv_plan *plan);
/* Whether text is one layer's policy ("k4v2:kivi", "auto:4"; no plan files, no TailorKV
 * specs): 0, or -1 with err like "'k4v3': V bits 3 not supported (use 16, 8, 4, 2, 1)". */
int tl_kv_policy_check(const char *text, tl_error *err);
/* *out = a copy of plan with each auto:B layer replaced by the key layout measured on m (a short
 * pass over built-in text on the CPU, n_threads threads; src/engine/calibrate_keys.c; one line
 * on stderr says what was chosen), so that several sessions of one plan (the server's slots) are
 * measured once and sized alike (tl_plan_kv_bytes). A plan without auto layers is copied as it
 * is. Free with tl_kv_plan_free. */
int tl_kv_plan_resolve_auto(tl_kv_plan *out, tl_model *m, const tl_kv_plan *plan, int n_threads, tl_error *err);

/* ---- Sessions (src/engine/session.c; sized by src/engine/plan.c) ---- */

/* Options of the CUDA backend (--cuda-opt, docs/cuda.md "Options"): kernel variants to compare
 * or rule out, and diagnostics. All zero is the default everywhere. */
typedef struct {
    bool safe;         /* safe: the reference path, for debugging: every attention (prefill and
                          decode) in the general kernel with its plain loops (no decode.cu,
                          decode_mma.cu or tensor-core attention, no register blocking or
                          prefetch), the decode GLU unfused, no programmatic dependent launch */
    bool no_decode;    /* no-decode: one-token steps attend in the general kernel, not decode.cu
                          / decode_mma.cu */
    bool no_dec_mma;   /* no-dec-mma: per-token codes decode on decode.cu's CUDA cores instead of
                          decode_mma.cu's tensor cores */
    int dec_tc;        /* dec-tc=N: f16 decode attention on tensor cores (prefill_tc.cu) from N
                          keys of history on; 0 = 65536 (the measured crossover), -1 = never
                          (dec-tc=never); dec-tc=always: 1 and per-token codes too (dec_tc_quant) */
    bool dec_tc_quant;
    int dec_minb;      /* dec-minb=2|3: decode.cu's head_dim-128 kernels built for 2 or 3 resident
                          blocks per SM; 0 = 3 for per-channel keys, else 2 */
    bool no_tc;        /* no-tc: prefill chunks attend in the general kernel, not prefill_tc.cu */
    bool no_fuse;      /* no-fuse: the decode GLU activation, and quantizing a norm's output, as kernels of their own */
    bool no_pdl;       /* no-pdl: kernels launched without programmatic dependent launch */
    bool no_batch_attn; /* no-batch-attn: a batched step (the server) attends and appends each
                           sequence's one-token row with launches of its own, instead of one
                           launch per layer for up to 12 sequences (the same bits either way) */
    bool widen;        /* widen: GGUF block-format weights widened to f16 at upload (the 16-bit
                          deployment) instead of kept in their format; one format per model */
    int gen_cap;       /* gen-cap=N: generated tokens a TailorKV sparse layer holds on the device
                          (0 = 4096) */
    bool prof;         /* prof: GPU time per part of the one-token steps, on stderr at the end */
    bool verbose;      /* verbose: the weights' upload (bytes, seconds) on stderr */
} tl_cuda_opts;

/* Apply a comma list of options ("widen,no-decode,dec-tc=never,gen-cap=8192") onto *o (so
 * several lists add up). The names are those above; err names the item and what is accepted:
 * "--cuda-opt 'dec-minb=4': 2 or 3". list NULL or "" changes nothing. */
int tl_cuda_opts_parse(tl_cuda_opts *o, const char *list, tl_error *err);
/* The list of *o's non-default options, as tl_cuda_opts_parse reads them ("" for the defaults);
 * returns the length it needs (snprintf-like). */
int tl_cuda_opts_format(const tl_cuda_opts *o, char *buf, size_t n);
/* The options, one per line, with what each does and its default (for --help). */
const char *tl_cuda_opts_help(void);

typedef struct {
    int n_ctx;            /* tokens the session can hold; 0 = the model's training context */
    int n_threads;        /* 0 = all online CPUs */
    int chunk;            /* prefill chunk size in tokens (0 = 512) */
    const tl_kv_plan *kv; /* the KV policy of each layer (tl_kv_plan_parse); NULL = f16 */
    const char *device;   /* "cpu" (NULL) or "cuda" */
    uint64_t gpu_mem_budget; /* cuda: refuse a session whose planned GPU memory exceeds this
                                many bytes, naming the part that does not fit (0 = no limit) */
    tl_cuda_opts cuda;    /* cuda: the backend's options (zero: the defaults) */
    bool warn_ctx;        /* say on stderr when n_ctx exceeds the model's training context
                             (quality may degrade); the CLI's sessions do */
    bool prefill_q8;      /* CPU, quantized weights: prompt chunks of 32 rows or more also round
                             their activations to q8 and run the integer kernels, as decode rows
                             do (llama.cpp's arithmetic; 2-3x faster prefill), instead of widening
                             the weights to f32 (closer to an f32 reference). Every chunking then
                             gives a row the same bits. `--prefill q8|f32` */
} tl_session_params;

tl_session_params tl_session_default_params(void);

tl_session *tl_session_new(tl_model *m, const tl_session_params *p, tl_error *err);
void tl_session_free(tl_session *s);
/* Run n tokens through the model, appending them to the cache. logits (may be NULL) receives
 * n_vocab floats for the last token, or n * n_vocab for every token when all_logits. */
int tl_session_eval(tl_session *s, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err);
/* Benchmarking deep caches: append n random K/V rows to every layer's cache through the
 * backend's own append/quantize path, as if n tokens had been evaluated, without running the
 * model. The CUDA backend only (a CPU session evaluates tokens instead; the error says so). */
int tl_session_fill_random(tl_session *s, int n, uint64_t seed, tl_error *err);
/* Forget the sequence (keeps allocations). */
void tl_session_reset(tl_session *s);
int tl_session_n_past(const tl_session *s);
/* Keep the first n_tokens of the sequence (to reuse a shared prefix); 0 clears it. All or
 * nothing: when a layer's store cannot (a quantized store's window or block moved past the
 * cut, a moved sliding window, the GPU backend) the session is unchanged and err says which
 * layer and why. */
int tl_session_truncate(tl_session *s, int n_tokens, tl_error *err);
/* The largest count m <= n_tokens (at most the tokens held) that tl_session_truncate accepts:
 * where every layer's store still holds exactly what it would hold after m tokens. Stores that
 * quantize out of an f16 window or block, or fix statistics on the first chunk, cannot cut
 * everywhere (kv/quant.c); 0 (start again) is always possible. */
int tl_session_truncate_max(const tl_session *s, int n_tokens);
/* The context and prefill chunk the session resolved (n_ctx 0 and chunk 0 given). */
int tl_session_n_ctx(const tl_session *s);
int tl_session_chunk(const tl_session *s);
/* Whether it runs on the GPU, and its CPU threads (0 on the GPU). */
bool tl_session_on_gpu(const tl_session *s);
int tl_session_n_threads(const tl_session *s);
/* The prefill chunk a session of n_ctx tokens gets for chunk (0 = 512, at most n_ctx). */
int tl_plan_chunk(int n_ctx, int chunk);

/* Bytes held by a layer cache, split by purpose (the memory report adds these up). */
typedef struct {
    uint64_t codes;    /* packed quantized codes, or full-precision K/V of dense stores */
    uint64_t scales;   /* scales, zero points, per-group metadata */
    uint64_t residual; /* full-precision residual window of quantized stores */
    uint64_t other;    /* smoothing means, rotation state, index structures */
    uint64_t host;     /* bytes held in the host tier (offloading stores); 0 otherwise */
} tl_kv_bytes;
static inline uint64_t tl_kv_bytes_total(const tl_kv_bytes *b) {
    return b->codes + b->scales + b->residual + b->other + b->host;
}

/* Memory of a session, in bytes. */
typedef struct {
    uint64_t weights;        /* weights_file + weights_packed */
    uint64_t weights_file;   /* the file's bytes mapped for the tensors the model reads, less
                                those replaced by a packed copy (their pages released) */
    uint64_t weights_packed; /* CPU: the integer GEMM's copies of the quantized matrices, 16
                                rows at a time (src/cpu/qpack.h); 0 on a device */
    uint64_t weights_read;   /* what a one-token step reads of them: every matrix as held (the
                                packed copy, or the widened one on a device), one row of an
                                untied embedding */
    uint64_t kv;          /* all KV stores, all tiers */
    uint64_t activations; /* buffers sized by the chunk */
    tl_kv_bytes kv_parts; /* KV split by purpose */
} tl_session_mem;

void tl_session_memory(const tl_session *s, tl_session_mem *out);
/* The memory report of --mem: weights, KV by part, activations, tokens held; TailorKV's tiers
 * and traffic; on the GPU the device's own accounting. */
void tl_session_print_memory(FILE *f, const tl_session *s);
/* The KV bytes, by part, of a session of n_ctx tokens (0 = the training context) under plan
 * (NULL = f16) once it holds n_tokens tokens (< 0: n_ctx), all layers: what tl_session_memory
 * counts as kv_parts, without the activations (src/engine/plan.c). The server admits a request
 * when this, at the request's largest context, fits its KV budget. */
int tl_plan_kv_bytes(const tl_model *m, int n_ctx, const tl_kv_plan *plan, int64_t n_tokens, tl_kv_bytes *out,
                     tl_error *err);

/* ---- Batches (src/engine/batch.c; on the GPU src/cuda/batch.cu): one forward step over several
 * sessions of one model (continuous batching, the server's step loop). The rows of all sequences
 * (a decode token, a prefill chunk, ...) are concatenated so every weight matrix is read once per
 * step for all of them; RoPE, q/k norms and attention run per sequence at its own positions
 * against its own KV store, whatever its policy. Each sequence gets the logits tl_session_eval
 * would give it for the same tokens, up to the order of float additions (tests/engine/test_batch.c,
 * tests/cuda/test_cuda.c). ---- */

/* One sequence's part of a step. */
typedef struct tl_batch_seq {
    tl_session *s;         /* a session of the batch's model on the batch's device, at most once per step */
    const int32_t *tokens; /* n tokens appended at positions tl_session_n_past(s).. */
    int n;                 /* >= 1 */
    float *logits;         /* NULL, or n_vocab floats for the last row (n * n_vocab with all_logits) */
    bool all_logits;
} tl_batch_seq;

/* The shared workspace: activations for max_rows rows in all, logits for max_seqs sequences,
 * the thread pool that runs the step. */
typedef struct tl_batch tl_batch;

/* A batch for sequences made with sp (tl_batch_session_new): on sp->device. On the GPU the
 * step runs in src/cuda/batch.cu (activations, logits and TailorKV staging on the device, the
 * sequences' sessions holding their KV caches only), and the memory of the batch and max_seqs
 * such sequences (sp's context and KV plan) is planned first against sp->gpu_mem_budget, or the
 * GPU's free memory when there is none: what does not fit is refused by name before anything
 * is allocated. n_threads: the CPU step's threads (unused on the GPU). sp is copied; the plan
 * it points to must outlive the batch. */
tl_batch *tl_batch_new_for(tl_model *m, int max_rows, int max_seqs, int n_threads, const tl_session_params *sp,
                           tl_error *err);
/* A sequence for the batch, with the batch's parameters: a session that holds its KV caches
 * only (the batch holds the activations); tl_session_free frees it. */
tl_session *tl_batch_session_new(tl_batch *b, tl_error *err);
/* The same with another KV plan (NULL = f16; it must outlive the session): on the CPU only (a
 * device's batch planned its memory for its own plan; err says so). */
tl_session *tl_batch_session_new_plan(tl_batch *b, const tl_kv_plan *plan, tl_error *err);
void tl_batch_free(tl_batch *b);
uint64_t tl_batch_bytes(const tl_batch *b); /* activation buffers, as tl_session_mem.activations (the GPU's: device bytes) */

/* Run one step: every sequence's rows through the model, its KV store appended, its n_past
 * advanced. The rows of all sequences must fit max_rows. On failure (err names the sequence
 * and the layer) the sequences of the step are in an undefined state: reset them. */
int tl_batch_eval(tl_batch *b, const tl_batch_seq *seqs, int n_seq, tl_error *err);

/* ---- Sampling (src/engine/sampler.c): greedy when temp <= 0; otherwise the llama.cpp order:
 * repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw. ---- */

typedef struct {
    float temp;        /* <= 0: greedy */
    int top_k;         /* <= 0: off */
    float top_p;       /* >= 1: off */
    float min_p;       /* <= 0: off */
    float repeat_penalty; /* 1: off */
    int repeat_last_n; /* how many recent tokens the penalty looks at */
    uint64_t seed;
} tl_sampler_params;

typedef struct tl_sampler tl_sampler;

/* The accepted values of the sampling parameters, one rule for the CLI flags and the server's
 * request fields: temperature [0, 1e4] (0 greedy), top_k >= 0 (0 off), top_p [0, 1], min_p
 * [0, 1], repeat_penalty [1e-6, 1e4] (1 off; 0 would divide by zero), repeat_last_n [0, 2^20].
 * Returns 0, or -1 with err naming the field (by its request name) and the value. */
int tl_sampler_check(const tl_sampler_params *p, tl_error *err);

tl_sampler_params tl_sampler_default_params(void);
tl_sampler *tl_sampler_new(const tl_sampler_params *p, int n_vocab);
void tl_sampler_free(tl_sampler *s);
/* Pick a token from logits (modified in place by the penalty). */
int32_t tl_sampler_sample(tl_sampler *s, float *logits);
/* Record a token that entered the sequence (prompt or generated), for the penalty. */
void tl_sampler_accept(tl_sampler *s, int32_t id);

/* ---- Evaluation (src/eval/): docs/accuracy.md ---- */

/* A 95% interval (src/eval/stats.h: Wilson for pass rates, block bootstrap for means). */
typedef struct {
    double value;  /* the point estimate (the sample's own statistic) */
    double lo, hi; /* its 95% interval */
    int64_t n;     /* samples or tokens it rests on */
} tl_interval;

#define TL_STATS_BLOCK 64       /* tokens per bootstrap block (stats.h) */
#define TL_STATS_RESAMPLES 2000 /* bootstrap resamples */

/* Mean of per-sample scores in [0, 1]: Wilson when every score is 0 or 1, else the bootstrap
 * over samples (enough of them) or the Wilson interval of the summed score. */
tl_interval tl_score_interval(const double *scores, int64_t n);
/* Perplexity exp(mean NLL) of per-token NLLs, with the block-bootstrap interval. */
tl_interval tl_ppl_interval(const double *nll, int64_t n);

/* How a PPL ratio interval reads:
 *   TL_VERDICT_NO_LOSS: the interval contains 1, or lies within 1 +/- 1e-4 (stats.h);
 *   TL_VERDICT_LOSS:    it lies above 1 (and reaches beyond the resolution);
 *   TL_VERDICT_LOWER:   it lies below 1 (and beyond the resolution): reported as "measured
 *                       lower perplexity than base" with the interval, never as a gain. */
typedef enum { TL_VERDICT_NO_LOSS, TL_VERDICT_LOSS, TL_VERDICT_LOWER } tl_verdict;
tl_verdict tl_ratio_verdict(tl_interval ratio);
/* One line for people, e.g. "loss 0.90% [0.51%, 1.30%]" or "no measurable loss (PPL ratio
 * 1.0003, 95% interval [0.9991, 1.0015] contains 1)"; returns buf. */
const char *tl_ratio_verdict_text(tl_interval ratio, char *buf, size_t cap);
/* The short name of a verdict for machine-readable lines: "no_loss", "loss", "lower". */
const char *tl_verdict_name(tl_verdict v);

/* Answer scoring (src/eval/score.h: normalization rules). */
typedef enum {
    TL_METRIC_EXACT,    /* normalized exact match */
    TL_METRIC_CONTAINS, /* some reference occurs in the prediction (normalized, at word bounds) */
    TL_METRIC_F1,       /* SQuAD token F1, best over references */
    TL_METRIC_CHOICE,   /* multiple choice: the chosen option index equals the answer */
    TL_METRIC_ALL,      /* RULER string_match_all: fraction of references found in the output */
    TL_METRIC_NUMBER,   /* the first number in the prediction equals the reference (passkey) */
    TL_METRIC_COUNT
} tl_metric;

const char *tl_metric_name(tl_metric m);
/* "exact", "contains", "f1", "choice", "all", "number" (also "em", "string_match_all"); -1 if unknown */
int tl_metric_parse(const char *s);
/* Metric over several references: max for exact/contains/f1/number, "all" semantics for ALL.
 * CHOICE is not scored from text (the caller compares indices). */
double tl_score(tl_metric m, const char *pred, const char *const *refs, int n_refs);

/* Long-context test prompts (src/eval/tasks.h: the haystack, the token-exact layout). */
typedef struct {
    int32_t *ids;     /* all sentences' ids back to back */
    int *off;         /* sentence i is ids[off[i] .. off[i+1]) ; n_sent + 1 entries */
    int n_sent;
    int64_t n_ids;
} tl_haystack;

/* All *.txt files of a folder, in name order, as far as max_tokens needs (tl_read_text_dir). */
int tl_haystack_from_dir(tl_haystack *h, const tl_tokenizer *tok, const char *dir, int64_t max_tokens, tl_error *err);
void tl_haystack_free(tl_haystack *h);
/* The *.txt files of a folder in name order, each followed by sep, read with tl_read_text up
 * to max bytes in all (0: its general cap); *cut tells whether there was more. Returns the
 * text malloc'd and NUL-terminated, or NULL with err. */
char *tl_read_text_dir(const char *dir, const char *sep, size_t max, size_t *len, bool *cut, tl_error *err);

typedef struct {
    int32_t *ids;
    int n;
    int n_needles;
    int *needle_pos, *needle_len; /* in depth order */
    int prefix_len, question_len;
} tl_prompt;

/* One sample: a prompt, references, a metric and a generation budget. */
typedef struct {
    char task[32];
    tl_prompt prompt;
    char **refs;
    int n_refs;
    tl_metric metric;
    int max_new;
    bool stop_newline; /* single answers stop at the first line break */
    double depth;      /* first needle's depth (NIAH grid), -1 if none */
} tl_task_sample;

typedef enum {
    TL_TASK_PASSKEY,     /* "The pass key is 71432. Remember it. 71432 is the pass key." */
    TL_TASK_NIAH_SINGLE, /* RULER niah_single: one special magic number */
    TL_TASK_NIAH_MULTIKEY, /* + 3 distractor needles with other keys */
    TL_TASK_NIAH_MULTIVALUE, /* 4 values for the same key, all asked */
    TL_TASK_NIAH_MULTIQUERY, /* 4 keys, all asked */
    TL_TASK_VT,          /* variable tracking: a chain of 4 hops */
    TL_TASK_CWE,         /* common-words extraction from a numbered word list */
    TL_TASK_COUNT
} tl_task_kind;

const char *tl_task_name(tl_task_kind k);
int tl_task_parse(const char *name); /* -1 if unknown; accepts RULER names (niah_single_1 ...) */
/* Generate one sample of `kind` with exactly len prompt tokens (cwe: at most len). depth < 0:
 * the needle depths come from the rng (RULER); else the (first) needle sits at `depth`. */
int tl_task_generate(tl_task_sample *s, tl_task_kind kind, const tl_tokenizer *tok, const tl_haystack *h, int len,
                     double depth, uint64_t seed, tl_error *err);
void tl_task_sample_free(tl_task_sample *s);

/* A prompt to run (src/eval/runner.h): a greedy answer, or multiple-choice log-likelihoods. */
typedef struct {
    /* in */
    const int32_t *ids; /* prompt, BOS included when wanted */
    int n_ids;
    int max_new;        /* greedy tokens to generate (generation mode) */
    bool stop_newline;  /* stop at the first line break after some text */
    int n_choices;      /* > 0: multiple-choice mode, no generation */
    int32_t *const *choice_ids;
    const int *choice_len;
    /* out */
    char *output;       /* generated text (malloc'd) */
    int n_gen;
    double *choice_ll;  /* [n_choices] summed log-probabilities (malloc'd) */
    int chosen;         /* argmax of choice_ll */
    int reused;         /* prompt tokens taken from the cache */
    double seconds;
} tl_eval_job;

void tl_eval_job_clear(tl_eval_job *j);

/* How a list of jobs runs: on sessions made with `session` (its KV plan, chunk, device, budget;
 * the context is the longest job's prompt and continuation, the threads a share of n_threads),
 * side by side, each taking a contiguous block of jobs, shared prompt prefixes reused. */
typedef struct {
    tl_session_params session;
    int n_threads;   /* in total; 0 = all CPUs */
    int n_parallel;  /* sessions side by side (fewer when the planner says they would not fit
                        in 80% of the available memory) */
    bool no_reuse;   /* recompute shared prefixes */
    bool progress;   /* a progress bar labelled with the run's name on stderr */
    bool print_mem;  /* each session's memory report (tl_session_print_memory) after its last job */
} tl_eval_params;

/* Run the jobs (src/eval/runner.c); fills their outputs (free with tl_eval_job_clear); *seconds
 * gets the wall time. */
int tl_eval_run(tl_model *m, const tl_eval_params *p, const char *label, tl_eval_job *jobs, int n_jobs,
                double *seconds, tl_error *err);
/* Whether shared prompt prefixes are reused under p (the sessions can truncate). */
bool tl_eval_can_reuse(const tl_eval_params *p);

/* Result lines (src/eval/report.h): {"cmd", "config", "metric", "value", "n", "seconds",
 * ...extra, "lo", "hi"} appended to path (created if missing) in a single write; config and
 * extra (may be NULL) are copied, not taken. */
int tl_result_append(const char *path, const char *cmd, const struct cJSON *config, const char *metric, double value,
                     int64_t n, double seconds, const struct cJSON *extra, tl_error *err);
/* The same with an interval: value and n from it, and "lo", "hi" after the other fields. */
int tl_result_append_ci(const char *path, const char *cmd, const struct cJSON *config, const char *metric,
                        tl_interval ci, double seconds, const struct cJSON *extra, tl_error *err);
/* Adds "n", "lo" and "hi" of an interval to a JSON summary object (lo/hi null when unknown). */
void tl_json_add_interval(struct cJSON *o, tl_interval ci);
/* "0.80 [0.49, 0.94]": a value and its interval, `prec` decimals; returns buf. */
const char *tl_interval_str(tl_interval ci, int prec, char *buf, size_t cap);
/* An SVG heatmap: ny rows (e.g. depths) by nx columns (e.g. lengths), values in [0,1]
 * (NaN = not run), red (0) to green (1), value printed in each cell. malloc'd string. */
char *tl_svg_heatmap(const char *title, const char *xlabel, const char *const *xs, int nx, const char *ylabel,
                     const char *const *ys, int ny, const double *values);

/* Perplexity (src/eval/perplexity.h: llama.cpp's windows, the second half of each scored) and
 * the KL divergence against a baseline run (src/eval/kld.h: the baseline file). */
typedef struct {
    int n_windows;       /* windows scored */
    int64_t n_scored;    /* tokens scored */
    double *nll;         /* [n_scored] each scored token's NLL, in text order */
    double nll_sum, nll2_sum;
    double ppl, ppl_err;
    double seconds;
} tl_ppl_result;

typedef struct {
    int64_t n;
    double ppl_base, ppl_new, ppl_ratio, mean_ln_ratio;
    double kld_mean, kld_err, kld_median, kld_p99, kld_max;
    double mean_abs_dp, rms_dp;
    double same_top1;   /* fraction */
    double tail_mass;   /* mean base probability outside the top-K */
    /* 95% intervals: circular block bootstrap over the scored tokens for the means (the
     * ratio's paired: both runs' NLL differences token by token), Wilson for same top-1.
     * Median, 99th percentile and max describe this text's KLD distribution: no interval. */
    tl_interval ci_ppl_base, ci_ppl_new, ci_ratio, ci_ln_ratio, ci_kld, ci_abs_dp, ci_rms_dp, ci_same_top1;
} tl_kld_stats;

typedef struct {
    int n_ctx;            /* window in tokens (the session's context) */
    int max_windows;      /* <= 0: all (with kl_read: as many as the baseline holds) */
    const char *kl_write; /* write this run's top-K log-probabilities as a baseline here */
    int kl_top_k;         /* K of a baseline written */
    const char *kl_read;  /* compare this run with the baseline here */
    bool progress;        /* a progress bar on stderr */
} tl_ppl_params;

typedef struct {
    tl_ppl_result res;
    bool kld;             /* a baseline was written or read */
    int kl_top_k;         /* its K */
    tl_kld_stats kl;      /* kl_read: this run against the baseline */
    tl_session *session;  /* the session that ran (for its memory report); freed with the report */
} tl_ppl_report;

/* The perplexity of ids[0..n_ids) (tokenized with BOS) in windows of p->n_ctx tokens, on a
 * session made with sp (its n_ctx replaced by the window), writing or comparing a KL baseline.
 * A baseline is opened (and checked against this run) before the session is made. */
int tl_perplexity_run(tl_model *m, const tl_session_params *sp, const int32_t *ids, int64_t n_ids,
                      const tl_ppl_params *p, tl_ppl_report *out, tl_error *err);
void tl_ppl_report_free(tl_ppl_report *r);

/* ---- Calibration (src/engine/calibrate.c, src/engine/calibrate_keys.c) ---- */

/* TailorKV's per-layer dense/sparse identification: the attention mass outside each of the
 * last n_q query rows' top `top` fraction of keys, per layer (src/engine/calibrate.h). */
typedef struct {
    int n_q;      /* query rows scored (32) */
    double top;   /* fraction of keys counted as "top" (0.05) */
    int n_threads;
    int chunk;
} tl_calib_params;

/* Run the calibration over tokens[0..n) of model m: scores[n_layer] (NAN for none), window[i]
 * true for sliding-window layers (they keep their window whatever the plan). */
int tl_calibrate(tl_model *m, const int32_t *tokens, int n, const tl_calib_params *p, double *scores, bool *window,
                 tl_error *err);

typedef enum { TL_TAILOR_DENSE = 0, TL_TAILOR_SPARSE = 1, TL_TAILOR_WINDOW = 2 } tl_tailor_layer_kind;
/* Calibration result -> plan JSON text for --kv tailor:plan=FILE (malloc'd). kinds[i] from
 * scores unless window. */
char *tl_tailor_plan_json(const char *model, int n_layers, const double *scores, const int *kinds, double tau,
                          double top, int n_q, int n_tokens);

/* The key layout of each layer for auto:B, measured on a short text (src/engine/calibrate.h). */
enum { TL_KV_AUTO_CALIB_TOKENS = 512, TL_KV_AUTO_CALIB_ROWS = 32 };
enum { TL_KV_AUTO_MAX_CANDIDATES = 5 };
/* The short name of candidate i ("tok", "chan", "tok+smooth", ...). */
const char *tl_kv_auto_candidate_name(int i);

typedef struct {
    int n_layer;
    int chosen[TL_MAX_LAYERS];                          /* candidate index; -1 for a window layer */
    double err[TL_MAX_LAYERS][TL_KV_AUTO_MAX_CANDIDATES]; /* NAN where a candidate does not fit */
    int n_candidates;
    int n_tokens; /* calibration tokens */
    double seconds;
} tl_kv_auto_report;

/* Replace every auto entry of policies[n_layer] (a plan's layers) by its layer's measured
 * choice. text NULL: the built-in text (its first TL_KV_AUTO_CALIB_TOKENS tokens; a given text
 * is cut the same way). gpu_only: choose among the layouts the CUDA backend runs. rep may be
 * NULL. A plan without auto entries is left alone (0, nothing run). */
int tl_kv_auto_resolve(tl_model *m, tl_kv_layer_policy *policies, const char *text, size_t text_len, bool gpu_only,
                       int n_threads, tl_kv_auto_report *rep, tl_error *err);
/* The resolved plan as a JSON plan file (usable as --kv FILE): "n_layers", "default" (the most
 * common choice), "layers" (every other layer), and "measured" (informational: the auto spec,
 * the text, the tokens, each layer's error per candidate). malloc'd. */
char *tl_kv_auto_plan_json(const tl_kv_auto_report *rep, const tl_kv_layer_policy *resolved, const char *spec,
                           const char *text_name);
/* One line: how many layers took each layout, the calibration's size and time, the worst error. */
void tl_kv_auto_summary(const tl_kv_auto_report *rep, char *buf, size_t n);

/* Where a quantized KV policy's error comes from (src/engine/calibrate.h): per layer that quantizes,
 * the relative attention error of the last n_rows queries of ids[0..n) with the keys quantized
 * (values exact), the values quantized (keys exact), and both (also per query head). */
typedef struct {
    bool measured;
    double err_k, err_v, err_kv;
    int worst_head;        /* the query head with the largest err_kv */
    double worst_head_err;
} tl_kv_diag_layer;
typedef struct {
    int n_layer, n_tokens, n_rows;
    tl_kv_diag_layer layer[TL_MAX_LAYERS];
    double seconds;
} tl_kv_diag_report;
int tl_kv_diagnose(tl_model *m, const tl_kv_layer_policy *policies, const int32_t *ids, int n, int n_rows,
                   int n_threads, tl_kv_diag_report *rep, tl_error *err);

/* ---- Weights: quantize (src/convert/quantize.h, src/convert/awq.h) and synthetic models (src/model/synth.h) ---- */

typedef struct {
    int n_grid;         /* alpha grid points in [0, 1) (default 20) */
    int clip_grid;      /* clipping ratios tried per group of 128 (default 20; <= 1: no clipping) */
    int max_samples;    /* activation rows kept per group for the search (default 512) */
    int n_ctx;          /* calibration window (default 512) */
    int64_t max_tokens; /* calibration tokens used (0: all given) */
    int n_threads;      /* 0: all CPUs */
    bool progress;      /* one line per layer on stderr */
} tl_awq_params;

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

typedef struct tl_awq_group tl_awq_group; /* one layer's group of matrices (src/convert/awq.h) */

/* AWQ's effect over the groups it scaled. */
typedef struct {
    int applied;        /* groups scaled */
    int clipped;        /* of them, with clipping kept */
    int skipped_o;      /* o projections skipped (grouped-query attention) */
    double err_rtn;     /* mean relative output error with plain w4g128 RTN ... */
    double err_awq;     /* ... and with AWQ (0 when none applied) */
} tl_awq_summary;

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
    tl_awq_summary awq;     /* AWQ: summed over awq_groups */
    int64_t awq_tokens;
    int awq_samples;
    double seconds, awq_seconds;
} tl_quantize_report;

/* "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K", "f16", "bf16", "f32", "w4g128";
 * "awq" gives w4g128 with *awq = true. */
int tl_quantize_parse_type(const char *name, tl_type *type, bool *awq, tl_error *err);
/* Re-encode the weight matrices of in_path into out_path (src/convert/quantize.h says which and how). */
int tl_quantize_file(const char *in_path, const char *out_path, const tl_quantize_params *p, tl_quantize_report *rep,
                     tl_error *err);
void tl_quantize_report_free(tl_quantize_report *rep);

/* A public model config, whose shapes and metadata synthetic models take. */
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
/* Write a GGUF with random weights and the shape's metadata (temp file + rename). */
int tl_synth_write(const tl_synth_params *p, const char *path, tl_error *err);

/* ---- The model report of `tailor info` (src/engine/info.c) ----
 * What is in a GGUF file (metadata, tensors), the model tailor reads from it, and the memory a
 * session would need (the planner's projection, computed without allocating); or the same
 * for a synth shape, no file needed. */
typedef struct tl_info tl_info;

typedef struct {
    const char *path;             /* a GGUF file, or NULL and ... */
    const tl_synth_shape *shape;  /* ... a shape */
    tl_type type;                 /* the shape's weight format */
    int n_layer;                  /* the shape's layers (0 = all) */
    const char *device;           /* NULL/"cpu", or "cuda": tl_info_memory adds the GPU's plan (a file only) */
    tl_cuda_opts cuda;            /* cuda: the backend's options (widen changes the weights' bytes) */
} tl_info_params;

/* Reads the file (its header and metadata; the model too when tailor can run it) or the shape. */
tl_info *tl_info_open(const tl_info_params *p, tl_error *err);
void tl_info_free(tl_info *I);
/* Whether there is a model tailor can run (else why is in the report), and its layers. */
bool tl_info_has_model(const tl_info *I);
int tl_info_n_layer(const tl_info *I);
/* The memory of a session of n_ctx tokens (0 = the training context) and chunk (0 = 512)
 * under plan, added to the report; with a device (tl_info_params.device), also the device memory
 * plan that --gpu-mem-budget checks and the session allocates by. Errors name the layer whose
 * policy does not fit, or why there is no device plan. */
int tl_info_memory(tl_info *I, const tl_kv_plan *plan, int n_ctx, int chunk, tl_error *err);
/* The report as markdown or JSON (the same facts); tensors: every tensor, not only by type. */
void tl_info_print(const tl_info *I, FILE *f, bool json, bool tensors);

/* ---- The OpenAI-compatible HTTP server (src/server/server.h, docs/server.md) ----
 * Fill tl_server_params, tl_server_start, then wait (signals) and tl_server_stop. */
typedef struct tl_server tl_server;

/* The default body limit's room for the JSON around a prompt (other fields, message objects). */
#define TL_BODY_SLACK (64u << 10)
/* File descriptors and threads kept out of the connection budget for the server itself (model
 * file, listening socket, slot and pool threads, logs). */
#define TL_CONN_RESERVE 64

typedef struct {
    const char *host;          /* numeric address or name to bind; default "127.0.0.1" */
    int port;                  /* 0 = any free port (see tl_server_port) */
    int n_parallel;            /* P: slots decoding at once */
    int n_queue;               /* requests that may wait for a slot before 429 */
    int n_ctx;                 /* tokens per slot; 0 = the model's training context */
    int n_threads;             /* threads of the batched step; 0 = CPUs */
    int chunk;                 /* prefill chunk (0 = default) */
    int batch_tokens;          /* rows per step, decode and prefill (0 = chunk + P); more than P */
    const tl_kv_plan *kv;      /* KV policy of each layer in every slot (NULL = f16); read at start */
    /* Other KV plans a request may ask for ("kv": TEXT, TEXT one of kv_allow_text or its plan's
     * canonical text; CPU only); a slot takes the request's plan when it starts it. Read at start. */
    const tl_kv_plan *kv_allow;
    const char *const *kv_allow_text; /* as given (--kv-allow) */
    int n_kv_allow;
    const char *device;        /* "cpu" (NULL) or "cuda": where the step runs and the slots' KV caches live */
    uint64_t gpu_mem_budget;   /* cuda: the slots' KV, the step's buffers and the weights must fit this many
                                  bytes (0: the GPU's free memory at start), else the start fails */
    tl_cuda_opts cuda;         /* cuda: the backend's options */
    uint64_t kv_budget;        /* KV bytes the admitted requests may need at once (the planner's, at each
                                  request's prompt + max_tokens); 0 = no limit */
    int kv_wait_s;             /* how long a request waits for KV room before 429 */
    const char *api_key;       /* NULL = no auth; a key that is set must pass tl_server_check_api_key */
    size_t max_body;           /* request bytes (413 above); 0 = n_ctx x the longest token's bytes
                                  + TL_BODY_SLACK: room for any prompt that fits the context */
    int timeout_s;             /* idle connection timeout (no byte either way) */
    int header_timeout_s;      /* a request's line and headers must be in this long after the connection
                                  opens or the previous answer ends, else the connection is closed */
    int body_timeout_s;        /* a body must be in this long after its headers (408; closed at twice) */
    int max_connections;       /* open connections (each one a thread); 0 = 4 * (P + queue) + 16; must
                                  stay below the file-descriptor and thread limits (TL_CONN_RESERVE) */
    int max_connections_per_ip; /* from one client address; 0 = P + queue + 4 */
    const char *chat_template; /* NULL = detect from GGUF; a name of tl_chat_names() forces one */
    bool chat_parse_special;   /* control tokens in message content count as such (off: plain text,
                                  so a user cannot forge template markers such as <|im_start|>) */
    const char *model_id;      /* id shown by /v1/models; NULL = file name */
    tl_sampler_params sampling; /* defaults for fields a request leaves out */
    int default_max_tokens;    /* when a request has no max_tokens; -1 = until EOG / context */
    bool verbose;              /* log each request to stderr */
    bool prefill_q8;           /* prompt pieces through the integer kernels (tl_session_params.prefill_q8);
                                  tailor serve's default (--prefill q8) */
} tl_server_params;

tl_server_params tl_server_default_params(void);
/* The chat template names --chat-template takes, "phi4|chatml|..." (chat.c). */
const char *tl_chat_names(void);

/* A key that is set must be usable: not empty (an empty key must never mean "no auth") and
 * without spaces or control characters (it travels in an HTTP header and is compared
 * exactly). NULL is fine: no auth. Returns 0, or -1 with err saying what is wrong. */
int tl_server_check_api_key(const char *key, tl_error *err);

/* Loads nothing: the model stays the caller's and must outlive the server. Creates the slots
 * (sessions, threads) and starts listening. Returns NULL with err on failure. */
tl_server *tl_server_start(tl_model *m, const char *model_path, const tl_server_params *p, tl_error *err);
int tl_server_port(const tl_server *s);
/* Stops accepting, cancels running work, joins every thread and frees everything. */
void tl_server_stop(tl_server *s);
/* The parameters in use, with every default filled in (limits for the start-up report). */
const tl_server_params *tl_server_params_in_use(const tl_server *s);
/* For the start-up report: memory of one slot (all are alike), its context and the chat
 * template in use ("chatml", "gemma", "llama3", "none", "unsupported"). */
void tl_server_slot_memory(tl_server *s, tl_session_mem *out, int *n_ctx, const char **chat);

/* ---- The KV Pareto sweep (src/pareto/, docs/pareto.md) ----
 * Weight format x KV policy x prefill chunk on one model: memory, accuracy relative to the f16
 * baseline and speed of each configuration, the frontier, a report. Each configuration runs
 * in a child process (this program re-executed with the child arguments), so a crash or an
 * out-of-memory kill is recorded as that configuration's failure. */

/* Axes for a cartesian grid. Lists are comma-separated; NULL = the default of that axis.
 * Modifier axes (gran, group, residual, smooth, rot) apply to quantized KV specs only. */
typedef struct {
    const char *weights;  /* "base,w4g128" */
    const char *kv;       /* "f16,k8v8,k4v4" */
    const char *gran;     /* "tok,chan,block,tensor" (chan = per-channel keys, per-token values) */
    const char *group;    /* "32,64,128" */
    const char *residual; /* "0,128" */
    const char *smooth;   /* "0,1" */
    const char *rot;      /* "0,1" */
    const char *chunk;    /* "64,256,full" */
} tl_pareto_axes;

#define TL_PARETO_MAX_DEPTHS 32
#define TL_PARETO_MAX_MERGE 64

typedef struct {
    const char *model, *text, *haystack, *out, *grid_file, *grid_size, *tasks, *project_to, *calib,
        *weights_files, *only, *baseline, *skip_tasks;
    const char *device; /* NULL / "cpu", or "cuda": configurations run on GPU 0 */
    tl_cuda_opts cuda;  /* cuda: the backend's options (--cuda-opt, passed on to each configuration) */
    tl_pareto_axes axes;
    int ctx, target_ctx, threads, jobs, windows, tail, n_decode, niah_samples, ruler_samples;
    double depths[TL_PARETO_MAX_DEPTHS];
    int n_depths;
    double budget, max_loss; /* bytes (0: none); a fraction (< 0: none) */
    bool resume, emit, use_speed, dry_run;
    uint64_t seed;
    const char *merge[TL_PARETO_MAX_MERGE];
    int n_merge;
    /* how a configuration's process is started: this program (exe) and its arguments (argv[0]
     * included) before the configuration's own (--only ID [--skip-tasks T] -t N --child
     * --baseline B) */
    const char *exe;
    const char *const *child_args;
    int n_child_args;
} tl_pareto_sweep_params;

/* The parts of `tailor pareto`. Each prints its progress and errors ("tailor pareto: ...") and
 * returns the command's exit status: 0, 1 (a failure) or 2 (bad input). */
int tl_pareto_sweep(const tl_pareto_sweep_params *p);  /* the grid, run (or --dry-run, --emit-jobs), the report */
int tl_pareto_child(const tl_pareto_sweep_params *p);  /* one configuration, p->only, in this process */
int tl_pareto_merge(const tl_pareto_sweep_params *p);  /* --merge: p->merge into p->out, and the report */
int tl_pareto_report(const tl_pareto_sweep_params *p); /* --report: the report of p->out */

#ifdef __cplusplus
}
#endif

#endif
