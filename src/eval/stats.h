/* stats.h: the 95% intervals of the accuracy figures tailor prints (docs/accuracy.md,
 * "Intervals"). Three kinds:
 *
 *  - a pass rate, k of n samples that score 0 or 1 (NIAH cells, exact-match tasks, same
 *    top-1): Wilson's score interval, which stays inside [0, 1] and is not empty at k = 0 or
 *    k = n (0 of 10 gives [0, 0.278], where the normal interval would give [0, 0]).
 *
 *  - the mean of a per-token value over the scored tokens of a text (NLL for perplexity, KLD,
 *    the NLL difference of two configurations for their PPL ratio): a circular block
 *    bootstrap. Neighbouring tokens of a document are correlated (a hard passage is hard for
 *    several sentences), so resampling single tokens would pretend there are more independent
 *    observations than there are and give too narrow an interval. Each resample instead
 *    glues together ceil(n / L) blocks of L = TL_STATS_BLOCK consecutive tokens with uniform
 *    random starts, wrapping around the end ("circular": every token is equally likely to be
 *    drawn, so the resampled means are centred on the sample mean, which the plain moving-
 *    block bootstrap's are not), cut to n tokens. TL_STATS_RESAMPLES resamples from a fixed
 *    seed, so the same input always gives the same interval; percentile interval (the 2.5%
 *    and 97.5% points of the resampled means). Paired comparisons use the per-token
 *    differences of the two runs on the same text (the same tokens resampled for both), which
 *    cancels the text's own difficulty: what remains is the noise of the difference.
 *
 *  - the mean of per-sample scores in [0, 1] that are not all 0 or 1 (F1, RULER's fraction
 *    of answers found): a percentile bootstrap over samples (blocks of 1: samples are
 *    generated independently) from TL_STATS_MIN_BOOT_N samples on; below that a bootstrap
 *    cannot see the spread, and the Wilson interval of the summed score is used instead
 *    (conservative: a [0, 1] variable of mean p has variance at most p(1 - p)).
 *
 * Everything here is deterministic and allocation-light; n == 0 gives value, lo and hi NaN. */
#ifndef TL_EVAL_STATS_H
#define TL_EVAL_STATS_H

#include "../base/common.h"

#define TL_STATS_Z95 1.959963984540054   /* the standard normal's 97.5% point */
/* TL_STATS_BLOCK (64 tokens per bootstrap block, see above and docs) and TL_STATS_RESAMPLES
 * (2000 bootstrap resamples): include/tailor.h, with tl_interval and the verdicts. */
#define TL_STATS_SEED 0x7461696c6f72ull  /* "tailor": every bootstrap starts from it */
#define TL_STATS_MIN_BOOT_N 20           /* fewer fractional scores: Wilson of their sum */
#define TL_STATS_RATIO_RESOLUTION 1e-4   /* PPL ratios within 1 +/- 0.01% count as equal */

/* Wilson score interval of a pass rate k / n (0 <= k <= n). */
tl_interval tl_wilson(int64_t k, int64_t n);

/* tl_score_interval (mean of per-sample scores in [0, 1]: Wilson when every score is 0 or 1,
 * else the bootstrap over samples from TL_STATS_MIN_BOOT_N on, or the Wilson interval of the
 * summed score) and tl_ppl_interval: include/tailor.h. */

/* Mean of x[0..n) with its circular-block-bootstrap interval, blocks of `block` consecutive
 * values (TL_STATS_BLOCK for the tokens of a text, 1 for independent samples). A block is
 * never longer than n / 2, so even a short input has two blocks to shuffle. */
tl_interval tl_block_mean(const double *x, int64_t n, int block);
/* The same, by the definition: each resample's values gathered one by one. For tests. */
tl_interval tl_block_mean_ref(const double *x, int64_t n, int block);

/* PPL(new) / PPL(base) = exp(mean(nll_new - nll_base)) over the same tokens, with the paired
 * block-bootstrap interval. Identical inputs give exactly [1, 1]. */
tl_interval tl_ppl_ratio_interval(const double *nll_base, const double *nll_new, int64_t n);

/* How a PPL ratio interval reads (tl_verdict, tl_ratio_verdict, its text and name):
 * include/tailor.h. */

#endif
