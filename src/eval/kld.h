/* kld.h: KL divergence of a run against a baseline run (llama.cpp's --kl-divergence idea,
 * with a compact baseline file).
 *
 * Baseline file ("tailor perplexity --kl-base-write FILE"): for every scored token (the
 * perplexity windows of tl_perplexity), the base model's log-probabilities of
 *   - the correct next token,
 *   - its top-K tokens (ids and log-probs, K = 32 by default),
 *   - everything else lumped together: log(1 - sum of the top-K probabilities).
 * Why top-K and not the full distribution: a full row is n_vocab values (262,144 for Gemma-3:
 * 512 KiB per token even at 16 bits, gigabytes for a long text), while K = 32 costs 268 bytes.
 * The KL divergence of the coarsened distributions (top-K tokens of the base + one "rest"
 * bucket) is a lower bound of the full KL (coarse-graining never increases KL) and equals it
 * when the tail holds no mass; the file records the mean tail mass so the bound's slack is
 * visible (it is printed). The correct token's probability is stored exactly, so PPL(base),
 * delta-p and same-top-1 are exact.
 *
 * Layout (little-endian): 64-byte header
 *   "TLKLD001" | u32 n_vocab | u32 n_ctx | u32 top_k | u32 n_windows | u32 rows_per_window |
 *   u32 reserved | u64 n_text_tokens | u64 fnv1a hash of the text's token ids | 16 bytes zero
 * then n_windows * rows_per_window records of
 *   i32 target | f32 lp_target | f32 lp_rest | i32 top_id[K] | f32 top_lp[K]
 * (top ids in descending probability). A compare run checks n_vocab, n_ctx and the hash, so a
 * baseline is only compared with a run over the same tokens. lp_target is each token's NLL
 * under the base (negated), so the compare run has both runs' NLL token by token: the paired
 * block bootstrap of the PPL ratio (stats.h) needs nothing more from the file. */
#ifndef TL_EVAL_KLD_H
#define TL_EVAL_KLD_H

#include "../base/common.h"
#include "stats.h"

#include <stdio.h>

typedef struct {
    FILE *f;            /* the baseline read, or out.f */
    char *path;
    tl_outfile out;     /* the baseline written (a temp file until tl_kld_finish) */
    bool writing;
    int n_vocab, n_ctx, top_k, rows_per_window;
    int rows_in_window; /* rows of the current window seen so far (pieces arrive in order) */
    int n_windows;      /* written so far (write) / in the file (read) */
    uint64_t n_text_tokens, hash;
    /* scratch */
    int32_t *order;     /* [n_vocab] */
    void *rec;          /* one record */
    /* compare accumulators, per row: KL, the base's and this run's NLL of the correct token,
     * the difference of its probabilities (new - base) */
    double *kl, *nll_base_row, *nll_new_row, *dp_row;
    int64_t n_rows, rows_cap;
    double nll_base, nll_new, sum_kl, sum_kl2, sum_absdp, sum_dp2, tail_base;
    int64_t same_top1;
    int windows_read;
} tl_kld;

uint64_t tl_kld_hash_ids(const int32_t *ids, int64_t n);

/* Start writing a baseline (to a temp file, renamed by tl_kld_finish). */
int tl_kld_open_write(tl_kld *k, const char *path, int n_vocab, int n_ctx, int top_k, const int32_t *ids,
                      int64_t n_ids, tl_error *err);
/* Open a baseline for comparison; checks it matches this run. */
int tl_kld_open_read(tl_kld *k, const char *path, int n_vocab, int n_ctx, const int32_t *ids, int64_t n_ids,
                     tl_error *err);
/* One window's scored rows as log-probabilities (the tl_ppl_window_fn arguments). */
int tl_kld_window(tl_kld *k, const float *logprobs, const int32_t *targets, int n_rows, tl_error *err);
/* Write mode: patch the header and rename into place. Read mode: nothing to do. */
int tl_kld_finish(tl_kld *k, tl_error *err);
void tl_kld_close(tl_kld *k);

/* tl_kld_stats, a comparison's figures with their 95% intervals: include/tailor.h. */

void tl_kld_stats_get(tl_kld *k, tl_kld_stats *st);

/* The per-row quantities, exposed for tests: log-softmax in double rounded to float (out may
 * be logits); returns log softmax[target] unrounded (0 when target < 0). */
double tl_kld_log_softmax(const float *logits, int n, int32_t target, float *out);
/* KL(base || new) of one row from the base's stored record values and the new log-probs. */
double tl_kld_row(const int32_t *top_id, const float *top_lp, int k, float lp_rest, const float *new_lp);

#endif
