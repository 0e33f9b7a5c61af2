/* batch.h: one forward step over several sequences of the same model (continuous batching);
 * what it promises is in include/tailor.h ("Batches"). */
#ifndef TL_BATCH_H
#define TL_BATCH_H

#include "session.h"

/* tl_batch_seq, tl_batch_new_for, tl_batch_session_new, tl_batch_eval, tl_batch_bytes and
 * tl_batch_free: include/tailor.h. */

/* A CPU batch of n_threads threads for sequences of tl_session_new_for_batch (tests, benchmarks). */
tl_batch *tl_batch_new(tl_model *m, int max_rows, int max_seqs, int n_threads, tl_error *err);

#endif
