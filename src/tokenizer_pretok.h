/* tokenizer_pretok.h: byte-level BPE pre-tokenizers (internal to the tokenizer).
 *
 * llama.cpp splits text with a list of regexes applied one after another; each regex splits
 * every current piece into its matches and the unmatched gaps between them. Each regex is
 * hand-coded here as a matcher with the same (ECMAScript, leftmost, ordered-alternation)
 * semantics over codepoints, using the Unicode categories of unicode.h. */
#ifndef TL_TOKENIZER_PRETOK_H
#define TL_TOKENIZER_PRETOK_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TL_PRE_DEFAULT = 0,    /* "default" / missing: [\p{P}$+<=>^~|]+, gpt2, \p{N}+, [0-9]{3} */
    TL_PRE_GPT2,           /* gpt-2, mpt, olmo, jais, phi-2, roberta-bpe, ... */
    TL_PRE_LLAMA3,         /* llama3, llama-bpe, dbrx, smaug-bpe, chatglm-bpe, ... */
    TL_PRE_QWEN2,          /* qwen2, stablelm2, megrez, deepseek-r1-qwen */
    TL_PRE_DEEPSEEK_CODER, /* deepseek-coder */
    TL_PRE_FALCON,         /* falcon */
    TL_PRE_SMOLLM,         /* smollm, starcoder, refact, command-r, codeshell, exaone, minerva-7b */
    TL_PRE_BLOOM,          /* bloom, gpt3-finnish, poro-chat */
    TL_PRE_VIKING,         /* viking */
} tl_pretok;

/* Growable array of piece lengths (in codepoints). */
typedef struct {
    size_t *v;
    size_t n, cap;
} tl_szvec;

void tl_szvec_push(tl_szvec *s, size_t x);
void tl_szvec_free(tl_szvec *s);

/* Split cps[0..n) (with flags[i] = tl_unicode_flags(cps[i])) into pieces; out receives the
 * piece lengths in order (they sum to n). tmp is scratch space; both are reset first. */
void tl_pretok_split(tl_pretok kind, const uint32_t *cps, const uint16_t *flags, size_t n, tl_szvec *out,
                     tl_szvec *tmp);

#endif
