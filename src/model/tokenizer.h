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
/* tl_tokenizer_open, tl_tokenizer_free, tl_tokenize, tl_tokenize_all, tl_token_to_piece,
 * tl_tok_is_eog and tl_tok_text_bytes: include/tailor.h. */

int32_t tl_tok_n_vocab(const tl_tokenizer *t);
int32_t tl_tok_bos(const tl_tokenizer *t); /* -1 if none */
int32_t tl_tok_eos(const tl_tokenizer *t); /* -1 if none */
int32_t tl_tok_sep(const tl_tokenizer *t); /* WordPiece's [SEP], added after the text; -1 if none */
bool tl_tok_add_bos(const tl_tokenizer *t);  /* tokenizer.ggml.add_bos_token (llama.cpp default per model type) */

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

/* The raw vocab string of a token (NUL-terminated, owned by the tokenizer). */
const char *tl_token_text(const tl_tokenizer *t, int32_t id);

/* Decode a sequence to a malloc'd NUL-terminated string (llama.cpp's detokenize, see
 * tl_detokenize_ex below for the exact space rules). */
char *tl_detokenize(const tl_tokenizer *t, const int32_t *ids, size_t n, bool render_special);

/* Find the id of a token by its exact text, -1 if absent. */
int32_t tl_token_find(const tl_tokenizer *t, const char *text);

/* ---- extensions ----
 * tl_detokenize is llama.cpp's llama_detokenize(remove_special = false, unparse_special =
 * render_special): when add_space_prefix (SPM) the first token's piece loses one leading
 * space (so after a leading BOS nothing is stripped: " Hello"); and for BPE vocabs whose pre-tokenizer sets clean_spaces (gpt-2, llama3,
 * falcon, default, ...) " ." " ," " !" " ?" " 's" etc. are collapsed. That clean-up is lossy,
 * so exact round trips need TL_DETOK_NO_CLEANUP:
 * detokenize_ex(tokenize(x, add_special = false, parse_special = false), NO_CLEANUP) == x. */
enum {
    TL_DETOK_REMOVE_SPECIAL = 1, /* drop a leading BOS / trailing EOS the vocab adds (llama.cpp's remove_special) */
    TL_DETOK_RENDER_SPECIAL = 2, /* control tokens render as their text */
    TL_DETOK_NO_CLEANUP = 4,     /* skip clean_up_tokenization_spaces */
};
/* Returns a malloc'd NUL-terminated string; *len (if non-NULL) gets its length, which
 * counts embedded NUL bytes. */
char *tl_detokenize_ex(const tl_tokenizer *t, const int32_t *ids, size_t n, unsigned flags, size_t *len);
bool tl_tok_add_eos(const tl_tokenizer *t);          /* tokenizer.ggml.add_eos_token */
bool tl_tok_add_space_prefix(const tl_tokenizer *t); /* SPM: "▁" prepended to the text */

#endif
