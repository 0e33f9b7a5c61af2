/* perplexity.h: llama.cpp's perplexity convention. The text is tokenized once (with BOS when
 * the vocab adds it); it is cut into windows of n_ctx tokens; each window starts from an
 * empty cache with its first token replaced by BOS (when the vocab has one and adds it), and
 * only the second half of each window is scored: the log-probability of token j+1 given the
 * logits at j, for j in [n_ctx/2, n_ctx - 1). PPL = exp(mean NLL); its uncertainty is the
 * delta-method standard error, PPL * sd(NLL) / sqrt(count - 1); the per-token NLLs are kept
 * for the block-bootstrap interval (stats.h), which, unlike the standard error, allows for
 * neighbouring tokens being correlated. */
#ifndef TL_PERPLEXITY_H
#define TL_PERPLEXITY_H

#include "../engine/session.h"

/* Scored rows of a window of n_ctx tokens: positions n_ctx/2 .. n_ctx-2 predict the next. */
static inline int tl_ppl_rows_per_window(int n_ctx) { return n_ctx - 1 - n_ctx / 2; }

/* tl_ppl_result (windows and tokens scored, each scored token's NLL, PPL and its standard
 * error), and tl_perplexity_run, the whole command with a KL baseline: include/tailor.h. */

/* Called with the log-probabilities (each row log-softmaxed, tl_kld_log_softmax's arithmetic)
 * of a window's scored positions, in order, a piece of rows at a time (n_rows rows of n_vocab,
 * row r predicts targets[r]); lets KL-divergence tooling see
 * every distribution without the whole window's logits in memory at once (16k rows of a
 * 262k vocabulary would be 17 GB). Return non-zero to stop. */
typedef int (*tl_ppl_window_fn)(void *ctx, int window, const float *logprobs, const int32_t *targets, int n_rows,
                                int n_vocab);

void tl_ppl_result_free(tl_ppl_result *res);

/* max_windows <= 0: all. progress: print "[i]ppl" lines like llama.cpp to stderr/stdout. */
int tl_perplexity(tl_session *s, const int32_t *ids, int64_t n_ids, int n_ctx, int max_windows, bool progress,
                  tl_ppl_window_fn fn, void *fn_ctx, tl_ppl_result *res, tl_error *err);

#endif
