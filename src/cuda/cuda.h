/* cuda.h: the CUDA backend behind a plain C interface (C code never includes CUDA headers).
 *
 * A tl_cuda_session is the GPU twin of a tl_session: the forward pass of llama / qwen2 /
 * gemma3 on one GPU with the weights resident in device memory (uploaded once per model and
 * shared by its sessions; freed by tl_model_free), the KV cache of every layer in device
 * memory (dense f32/f16/bf16, or quantized per-token / per-channel KIVI with residual windows,
 * in the CPU store's packing layout, see src/kv/quant.c), and activations sized by the chunk.
 * table.c makes it the "cuda" backend (engine/backend.h) that engine/session.c and engine/batch.c call.
 *
 * The hooks that test and time one kernel family alone are in cuda_test.h. Builds without
 * CUDA (TL_CUDA=OFF, or nvcc missing) link src/cuda/stub.c instead: every function then fails
 * with a message saying so, and tl_cuda_available() is false. */
#ifndef TL_CUDA_H
#define TL_CUDA_H

#include "../base/common.h"
#include "../kv/kv.h"
#include "../engine/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

struct tl_model;
typedef struct tl_cuda_session tl_cuda_session;

/* The backend's table (table.c). */
const tl_backend_ops *tl_cuda_backend(void);

/* Is a usable CUDA device there? When not, why (e.g. "this build has no CUDA support",
 * "cudaGetDeviceCount: no CUDA-capable device is detected"). why may be NULL. */
bool tl_cuda_available(char *why, size_t n);

/* Device 0's name and its memory's peak bandwidth in GB/s (10^9 B/s), from its memory clock
 * and bus width: 2 (double data rate) x clock x bus bytes (H100 SXM: 2 x 2619 MHz x 640 B =
 * 3352; H200: 4800). false when there is no device. */
bool tl_cuda_device_bandwidth(char *name, size_t n, double *peak_gbs);

/* Options (include/tailor.h, --cuda-opt): every call that takes them reads NULL as the
 * defaults. The model's weights are uploaded by its first session with that session's widen;
 * a later session or batch asking for the other format fails saying so. */

/* One session on device 0. policies: one per layer (NULL = f16). Fails with a message naming
 * the layer and the policy when a policy has no GPU implementation (offloading, rotation,
 * smoothing, per-tensor and per-block granularity). */
tl_cuda_session *tl_cuda_session_new(struct tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                                     const tl_cuda_opts *o, tl_error *err);
/* A sequence of a batch (tl_cuda_batch_eval): its KV caches and position only (the batch
 * holds the activations and workspace); tl_cuda_eval refuses it. */
tl_cuda_session *tl_cuda_session_new_kv(struct tl_model *m, int n_ctx, const tl_kv_layer_policy *policies,
                                        const tl_cuda_opts *o, tl_error *err);
/* The options a session was made with. */
const tl_cuda_opts *tl_cuda_session_opts(const tl_cuda_session *g);
void tl_cuda_session_free(tl_cuda_session *g);
/* Like tl_session_eval (the caller checked n > 0 and the capacity). */
int tl_cuda_eval(tl_cuda_session *g, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err);
void tl_cuda_reset(tl_cuda_session *g);
int tl_cuda_n_past(const tl_cuda_session *g);
/* tl_session_truncate_max and tl_session_truncate on the GPU's caches (the CPU stores' rules):
 * the largest count <= n the session can be cut back to, holding exactly those rows; the cut
 * (n must be such a count). */
int tl_cuda_truncate_max(const tl_cuda_session *g, int n);
int tl_cuda_truncate(tl_cuda_session *g, int n, tl_error *err);

/* ---- continuous batching (batch.cu): one forward step over several sequences ----
 * The step's workspace (activations for max_rows rows, cuBLAS, the block-format slab, logits
 * for max_seqs sequences) belongs to the batch; the sequences are sessions of the same model,
 * usually made by tl_cuda_session_new_kv (KV only). Each sequence gets the logits tl_cuda_eval
 * would give it for the same tokens, whatever shares its step (see batch.cu). */
typedef struct tl_cuda_batch tl_cuda_batch;
typedef struct {
    tl_cuda_session *g;    /* at most once per step */
    const int32_t *tokens; /* n tokens appended at positions n_past.. */
    int n;                 /* >= 1 */
    float *logits;         /* NULL, or n_vocab floats for the last row (n * n_vocab with all_logits) */
    bool all_logits;
} tl_cuda_seq;
/* policies / n_ctx: the sequences the batch is made for (TailorKV staging is reserved for
 * them; a sequence unlike them grows it when it comes). */
tl_cuda_batch *tl_cuda_batch_new(struct tl_model *m, int max_rows, int max_seqs, int n_ctx, const tl_kv_layer_policy *policies,
                                 const tl_cuda_opts *o, tl_error *err);
void tl_cuda_batch_free(tl_cuda_batch *b);
/* Device bytes of the step's buffers (activations, logits, staging; not the block-format
 * workspace, which tl_device_plan.workspace counts). */
uint64_t tl_cuda_batch_bytes(const tl_cuda_batch *b);
/* One step: the sequences in ascending order of n (the one-token ones first), their rows at
 * most max_rows in all; every KV cache appended, every n_past advanced. On failure the
 * sequences of the step are in an undefined state: reset them. */
int tl_cuda_batch_eval(tl_cuda_batch *b, const tl_cuda_seq *seqs, int n_seq, tl_error *err);

/* Benchmarking: append n random K/V rows (normal-ish, unit scale) to every layer's cache
 * through the same append/quantize path as eval, without running the model. */
int tl_cuda_fill_random(tl_cuda_session *g, int n, uint64_t seed, tl_error *err);

/* The session's device memory by part (engine/backend.h). */
void tl_cuda_memory(const tl_cuda_session *g, tl_device_mem *out);

/* Device memory a session would take (engine/backend.h), planned before allocating anything:
 * weights as uploaded (block formats with GPU kernels as they are in the file, other non-float
 * types widened to f16), their workspace, the device tier of every layer's KV at n_ctx tokens,
 * activations at the chunk size (+ attention partials), and a fixed reserve for the CUDA
 * context and cuBLAS. */
int tl_cuda_plan_memory(const struct tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                        const tl_cuda_opts *o, tl_device_plan *out, tl_error *err);
/* A batch (max_rows, max_seqs) serving n_seq sequences of n_ctx tokens under policies: the
 * weights and the block-format workspace once, n_seq times the KV tiers, the batch's
 * activations (rows, logits, TailorKV staging and predicted queries, attention partials) and
 * the sequences' own small buffers, the CUDA/cuBLAS reserve. */
int tl_cuda_plan_batch(const struct tl_model *m, int n_ctx, const tl_kv_layer_policy *policies, const tl_cuda_opts *o,
                       int n_seq, int max_rows, int max_seqs, tl_device_plan *out, tl_error *err);
/* That plan against budget bytes (--gpu-mem-budget), or with budget 0 against the device's free
 * memory now (less the reserve, and less the weights when they are uploaded already): fails
 * naming the part that does not fit and by how much, before anything is allocated. */
int tl_cuda_check_batch(const struct tl_model *m, int n_ctx, const tl_kv_layer_policy *policies, const tl_cuda_opts *o,
                        int n_seq, int max_rows, int max_seqs, uint64_t budget, tl_error *err);
/* --gpu-mem-budget: fails (with the part that does not fit and by how much) when the plan
 * exceeds budget bytes. */
int tl_cuda_check_budget(const struct tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                         const tl_cuda_opts *o, uint64_t budget, tl_error *err);

/* Free the device copy of a model's weights (called by tl_model_free; NULL is fine). */
void tl_cuda_weights_free(void *w);

#ifdef __cplusplus
}
#endif

#endif
