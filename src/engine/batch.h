/* batch.h: one forward step over several sequences of the same model (continuous batching).
 *
 * The rows of all sequences (a decode token, a prefill chunk, ...) are concatenated so every
 * weight matrix is read once per step for all of them; RoPE, q/k norms and attention run per
 * sequence at its own positions against its own KV store, whatever its policy. Each sequence
 * gets the logits tl_session_eval would give it for the same tokens, up to the order of float
 * additions (tests/engine/test_batch.c; on the GPU, src/cuda/batch.cu and tests/cuda/test_cuda.c). */
#ifndef TL_BATCH_H
#define TL_BATCH_H

#include "session.h"

/* One sequence's part of a step. */
typedef struct tl_batch_seq {
    tl_session *s;         /* a session of the batch's model on the batch's device, at most once per step */
    const int32_t *tokens; /* n tokens appended at positions s->n_past.. */
    int n;                 /* >= 1 */
    float *logits;         /* NULL, or n_vocab floats for the last row (n * n_vocab with all_logits) */
    bool all_logits;
} tl_batch_seq;

/* The shared workspace: activations for max_rows rows in all, logits for max_seqs sequences,
 * the thread pool that runs the step. */
typedef struct tl_batch tl_batch;

tl_batch *tl_batch_new(tl_model *m, int max_rows, int max_seqs, int n_threads, tl_error *err);
/* A batch for sequences made with sp (tl_batch_session_new): on sp->device. On the GPU the
 * step runs in src/cuda/batch.cu (activations, logits and TailorKV staging on the device, the
 * sequences' sessions holding their KV caches only), and the memory of the batch and max_seqs
 * such sequences (sp's context and KV plan) is planned first against sp->gpu_mem_budget, or the
 * GPU's free memory when there is none: what does not fit is refused by name before anything
 * is allocated. n_threads: the CPU step's threads (unused on the GPU). sp is copied; the plan
 * it points to must outlive the batch. */
tl_batch *tl_batch_new_for(tl_model *m, int max_rows, int max_seqs, int n_threads, const tl_session_params *sp,
                           tl_error *err);
/* A sequence for the batch: tl_session_new_for_batch with the batch's parameters. */
tl_session *tl_batch_session_new(tl_batch *b, tl_error *err);
void tl_batch_free(tl_batch *b);
uint64_t tl_batch_bytes(const tl_batch *b); /* activation buffers, as tl_session_mem.activations (the GPU's: device bytes) */

/* Run one step: every sequence's rows through the model, its KV store appended, its n_past
 * advanced. The rows of all sequences must fit max_rows. On failure (err names the sequence
 * and the layer) the sequences of the step are in an undefined state: reset them. */
int tl_batch_eval(tl_batch *b, const tl_batch_seq *seqs, int n_seq, tl_error *err);

#endif
