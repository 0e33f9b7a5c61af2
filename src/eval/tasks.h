/* tasks.h: deterministic long-context test prompts built as token ids.
 *
 * Haystack. Text files (a folder of .txt, read in name order) are joined, every whitespace
 * run becomes one space, and the text is cut into sentences after '.', '!' or '?' followed by
 * a space. Each sentence is tokenized on its own as " Sentence text." (with its leading space;
 * without it when the vocab adds a SentencePiece space prefix), so a sentence's ids are the
 * ids it gets inside running text: byte-level BPE pre-tokenizers split before " Word", and
 * SentencePiece escapes the space into the following "▁Word". tl_prompt_check_seams
 * verifies this on a built prompt (re-tokenizing its text), and the tests check it per model.
 *
 * Prompt layout (len = total tokens, exactly):
 *   [BOS] instruction | seg 0 | needle 0 | seg 1 | needle 1 | ... | seg k | question
 * Needles are sorted by depth; with H = len - |BOS+instruction| - |question| - sum |needle|,
 * needle i starts at token P + round(depth_i * H) + sum_{j<i} |needle j| (P = |BOS+instruction|)
 * -- token-exact. Each segment is filled from the sentence stream with whole sentences and
 * then cut to its exact length by dropping tokens at its *start*: every needle and the
 * question follow a complete sentence (a sentence boundary), and only the text right after
 * the instruction or after a needle starts mid-sentence.
 * All randomness comes from a splitmix64 generator seeded by the caller. */
#ifndef TL_EVAL_TASKS_H
#define TL_EVAL_TASKS_H

#include "../base/common.h"
#include "../model/tokenizer.h"
#include "score.h"

/* splitmix64: tiny, good enough, identical everywhere */
typedef struct {
    uint64_t s;
} tl_rng;
static inline uint64_t tl_rng_next(tl_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline uint64_t tl_rng_below(tl_rng *r, uint64_t n) { return n ? tl_rng_next(r) % n : 0; }
static inline double tl_rng_unit(tl_rng *r) { return (double)(tl_rng_next(r) >> 11) / 9007199254740992.0; }

/* tl_haystack (all sentences' ids back to back, sentence i at ids[off[i] .. off[i+1])),
 * tl_haystack_from_dir, tl_haystack_free and tl_read_text_dir: include/tailor.h. */

/* Build from text (whitespace-normalized and split as above). Stops after max_tokens tokens
 * (<= 0: all). */
int tl_haystack_from_text(tl_haystack *h, const tl_tokenizer *tok, const char *text, size_t len, int64_t max_tokens,
                          tl_error *err);

/* Tokenize a text piece as it would appear inside running text after a sentence end
 * (leading-space rule above); malloc'd ids, *n their count. */
int32_t *tl_tokenize_piece(const tl_tokenizer *tok, const char *text, int *n, tl_error *err);

typedef struct {
    const char *text; /* needle sentence, starting with a space */
    double depth;     /* 0..1 */
} tl_needle;

/* tl_prompt (ids, needle positions and lengths in depth order): include/tailor.h. */

/* Build a prompt of exactly len tokens. The haystack stream starts at sentence `start`
 * (mod n_sent) and wraps around. A NULL haystack is allowed when no filler is needed. */
int tl_prompt_build(tl_prompt *p, const tl_tokenizer *tok, const tl_haystack *h, int start, const char *instruction,
                    const tl_needle *needles, int n_needles, const char *question, int len, tl_error *err);
void tl_prompt_free(tl_prompt *p);

/* ---- Task generators ----
 * One sample (tl_task_sample: a prompt, references, a metric and a generation budget) of a
 * task (tl_task_kind: passkey, RULER's NIAH variants, vt, cwe), tl_task_generate and its
 * names: include/tailor.h. */

#endif
