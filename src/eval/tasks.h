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

#include "../common.h"
#include "../tokenizer.h"
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

typedef struct {
    int32_t *ids;     /* all sentences' ids back to back */
    int *off;         /* sentence i is ids[off[i] .. off[i+1]) ; n_sent + 1 entries */
    int n_sent;
    int64_t n_ids;
} tl_haystack;

/* Build from text (whitespace-normalized and split as above). Stops after max_tokens tokens
 * (<= 0: all). */
int tl_haystack_from_text(tl_haystack *h, const tl_tokenizer *tok, const char *text, size_t len, int64_t max_tokens,
                          tl_error *err);
/* All *.txt files of a folder, in name order, as far as max_tokens needs (tl_read_text_dir). */
int tl_haystack_from_dir(tl_haystack *h, const tl_tokenizer *tok, const char *dir, int64_t max_tokens, tl_error *err);
/* The *.txt files of a folder in name order, each followed by sep, read with tl_read_text
 * (common.h) up to max bytes in all (0: its general cap); *cut tells whether there was more.
 * Returns the text malloc'd and NUL-terminated, or NULL with err. */
char *tl_read_text_dir(const char *dir, const char *sep, size_t max, size_t *len, bool *cut, tl_error *err);
void tl_haystack_free(tl_haystack *h);

/* Tokenize a text piece as it would appear inside running text after a sentence end
 * (leading-space rule above); malloc'd ids, *n their count. */
int32_t *tl_tokenize_piece(const tl_tokenizer *tok, const char *text, int *n, tl_error *err);

typedef struct {
    const char *text; /* needle sentence, starting with a space */
    double depth;     /* 0..1 */
} tl_needle;

typedef struct {
    int32_t *ids;
    int n;
    int n_needles;
    int *needle_pos, *needle_len; /* in depth order */
    int prefix_len, question_len;
} tl_prompt;

/* Build a prompt of exactly len tokens. The haystack stream starts at sentence `start`
 * (mod n_sent) and wraps around. A NULL haystack is allowed when no filler is needed. */
int tl_prompt_build(tl_prompt *p, const tl_tokenizer *tok, const tl_haystack *h, int start, const char *instruction,
                    const tl_needle *needles, int n_needles, const char *question, int len, tl_error *err);
void tl_prompt_free(tl_prompt *p);

/* ---- Task generators ----
 * One sample: a prompt, references, a metric and a generation budget. */
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

#endif
