/* tokenizer.h: tokenizers read from a GGUF's tokenizer.ggml.* metadata, with llama.cpp's
 * semantics (so token ids match llama.cpp's llama_tokenize exactly):
 *  - "gpt2": byte-level BPE with merges; every pre-tokenizer (tokenizer.ggml.pre) llama.cpp of
 *    June 2025 knows (tokenizer_pretok.h lists them).
 *  - "llama": SentencePiece-style BPE over scores with byte fallback (<0xXX> tokens),
 *    space prefix and "▁" escaping (add_space_prefix from metadata).
 *  - "bert": WordPiece (lower-cased, accents dropped, greedy longest tokens per word).
 * llama.cpp's "t5" (Unigram) and "rwkv" tokenizers are refused by name.
 * Special/control tokens in the text are recognised when parse_special is true. */
#ifndef TL_TOKENIZER_H
#define TL_TOKENIZER_H

#include "../base/common.h"
#include "gguf.h"

tl_tokenizer *tl_tokenizer_load(const tl_gguf *g, tl_error *err);
/* tl_tokenizer_open, tl_tokenizer_free, tl_tokenize, tl_tokenize_all, tl_tokenize_opts (tl_span,
 * tl_tok_opts), tl_token_to_piece, tl_detokenize_ex, tl_tok_max_piece, tl_tok_is_eog and
 * tl_tok_text_bytes: include/tailor.h. */

int32_t tl_tok_n_vocab(const tl_tokenizer *t);
int32_t tl_tok_bos(const tl_tokenizer *t); /* -1 if none */
int32_t tl_tok_eos(const tl_tokenizer *t); /* -1 if none */
int32_t tl_tok_sep(const tl_tokenizer *t); /* WordPiece's [SEP], added after the text; -1 if none */
bool tl_tok_add_bos(const tl_tokenizer *t);  /* tokenizer.ggml.add_bos_token (llama.cpp default per model type) */

/* The raw vocab string of a token (NUL-terminated, owned by the tokenizer). */
const char *tl_token_text(const tl_tokenizer *t, int32_t id);

/* Decode a sequence to a malloc'd NUL-terminated string (llama.cpp's detokenize, see
 * tl_detokenize_ex in include/tailor.h for the exact space rules). */
char *tl_detokenize(const tl_tokenizer *t, const int32_t *ids, size_t n, bool render_special);

/* Find the id of a token by its exact text, -1 if absent. */
int32_t tl_token_find(const tl_tokenizer *t, const char *text);

bool tl_tok_add_eos(const tl_tokenizer *t);          /* tokenizer.ggml.add_eos_token */
bool tl_tok_add_space_prefix(const tl_tokenizer *t); /* SPM: "▁" prepended to the text */

#endif
