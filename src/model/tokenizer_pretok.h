/* tokenizer_pretok.h: byte-level BPE pre-tokenizers (internal to the tokenizer).
 *
 * llama.cpp splits text with a list of regexes applied one after another; each regex splits
 * every current piece into its matches and the unmatched gaps between them. Each regex is
 * hand-coded here as a matcher with the same (ECMAScript, leftmost, ordered-alternation)
 * semantics over codepoints, using the Unicode categories of unicode.h. Every
 * tokenizer.ggml.pre name llama.cpp (June 2025) knows maps to one of these kinds. */
#ifndef TL_TOKENIZER_PRETOK_H
#define TL_TOKENIZER_PRETOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    TL_PRE_DEFAULT = 0,    /* "default" / missing: [\p{P}$+<=>^~|]+, gpt2, \p{N}+, [0-9]{3} */
    TL_PRE_GPT2,           /* gpt-2, mpt, olmo, jais, trillion, phi-2, roberta-bpe, jina-*, gigachat */
    TL_PRE_LLAMA3,         /* llama3, llama-bpe, falcon3, pixtral, dbrx, smaug-bpe, chatglm-bpe, glm4 */
    TL_PRE_QWEN2,          /* qwen2, deepseek-r1-qwen, stablelm2, megrez, bailingmoe: llama3 with \p{N} */
    TL_PRE_SEED_CODER,     /* seed-coder: qwen2 whose punctuation does not take the newlines after it */
    TL_PRE_DEEPSEEK_LLM,   /* deepseek-llm: [\r\n], \s?[Latin, Greek, Cyrillic...]+, \s?[punct]+, \s+$, CJK, \p{N}+ */
    TL_PRE_DEEPSEEK3,      /* deepseek-v3: \p{N}{1,3}, [CJK kana]+, then a llama3-like regex over \p{L}\p{M} / \p{P}\p{S} */
    TL_PRE_DEEPSEEK_CODER, /* deepseek-coder */
    TL_PRE_FALCON,         /* falcon */
    TL_PRE_SMOLLM,         /* smollm, starcoder, refact, command-r, codeshell, exaone, minerva-7b */
    TL_PRE_BLOOM,          /* bloom, gpt3-finnish, poro-chat */
    TL_PRE_VIKING,         /* viking */
    TL_PRE_TEKKEN,         /* tekken: words split at case changes, \p{N}, punctuation with [\r\n/]* */
    TL_PRE_GPT4O,          /* gpt-4o, llama4: tekken's words with contractions, \p{N}{1,3} */
    TL_PRE_CHAMELEON,      /* chameleon: sentinels, image tokens, [\t\n] / 4 / 2 spaces, digits, punctuation, gpt2 */
    TL_PRE_SUPERBPE,       /* superbpe: \p{N}+ then digit groups of three from the right; no word split */
} tl_pretok;

/* A tokenizer.ggml.pre name and the settings llama.cpp ties to it (before the GGUF's own
 * add_bos_token and bos_token_id override them). */
typedef struct {
    const char *name;
    tl_pretok pre;
    bool clean_spaces;  /* detokenize collapses " ." " ," " 's" ... */
    bool ignore_merges; /* a word that is a token is that token, merges or not */
    bool add_bos;       /* add BOS by default */
    bool no_bos;        /* no BOS id by default */
} tl_pretok_info;

/* The entry for a tokenizer.ggml.pre name; NULL if llama.cpp does not know it. */
const tl_pretok_info *tl_pretok_find(const char *name);
/* The i-th known name (for listings and tests); NULL past the last. */
const tl_pretok_info *tl_pretok_at(size_t i);

/* Growable array of piece lengths (in codepoints). */
typedef struct {
    size_t *v;
    size_t n, cap;
} tl_szvec;

void tl_szvec_push(tl_szvec *s, size_t x);
void tl_szvec_free(tl_szvec *s);

/* Split cps[0..n) (with flags[i] = tl_unicode_flags(cps[i])) into pieces; out receives the
 * piece lengths in order (they sum to n; none is 0). tmp is scratch space; both are reset first. */
void tl_pretok_split(tl_pretok kind, const uint32_t *cps, const uint16_t *flags, size_t n, tl_szvec *out,
                     tl_szvec *tmp);

#endif
