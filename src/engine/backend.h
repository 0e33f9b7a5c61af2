/* backend.h: what a session runs on. One table of operations per backend; session.c and
 * batch.c call through it and know nothing of the devices behind it.
 *
 *   cpu    session.c's forward pass (the table is at the end of session.c): the session's own
 *          stores and buffers (tl_session.kv, .act), batch.c's batched step
 *   cuda   src/cuda/ (table.c wraps its tl_cuda_* entry points): the backend's state is a
 *          tl_cuda_session at tl_session.impl, its batched step a tl_cuda_batch
 *
 * tl_backend_find (session.h) maps a --device name to its table; tl_backend_load gives the
 * device backends'. A session keeps its table (s->be) for its life; so does a batch. */
#ifndef TL_ENGINE_BACKEND_H
#define TL_ENGINE_BACKEND_H

#include "../../include/tailor.h"

#include <stdio.h>

struct tl_batch_seq;

/* Bumped whenever the table or a type it passes changes (tl_session's layout, session.h;
 * tl_session_mem;
 * tl_session_params and tl_cuda_opts, tailor.h; tl_batch_seq; the structs below): a backend
 * library built with another value is refused when it is opened. */
#define TL_BACKEND_ABI 4 /* 2: tl_session_mem gained weights_file, weights_packed, weights_read; 3: tl_cuda_opts.no_batch_attn;
                          * 4: plan_for */

/* A device's own memory of a session, by part. KV held follows the CPU stores' exact
 * formulas (what a step reads); the other parts are what is allocated on the device. */
typedef struct {
    uint64_t weights;      /* device copy of the weights (shared by the model's sessions) */
    uint64_t kv_alloc;     /* KV capacity allocated on the device (all layers, n_ctx tokens) */
    uint64_t activations;  /* chunk-sized buffers, attention partials */
    uint64_t workspace;    /* block-format weights: the prefill GEMM's f16 slab + the decode's int8 input */
    tl_kv_bytes kv_held;   /* held now, split like the CPU stores */
    uint64_t weights_read; /* bytes of weights one decode step reads (all but the embedding table) */
    uint64_t dev_free, dev_total; /* the device's free and total memory now */
    char device[128];
    /* TailorKV sparse layers (policy kind TL_KV_OFFLOAD) */
    int n_offload;          /* how many layers offload */
    uint64_t host_alloc;    /* pinned mapped host tier allocated (n_ctx tokens) */
    uint64_t h2d_decode;    /* host -> device bytes read by decode steps (the top-k rows) */
    uint64_t h2d_chan;      /* host -> device bytes of channel rows moved by decode steps (summary 0) */
    uint64_t d2h;           /* prompt K/V written to the host tier */
    uint64_t h2d_prefill;   /* host -> device bytes of the host tier copied back for prefill attention */
    int64_t decode_steps;
} tl_device_mem;

/* Device memory a session would take, planned before allocating anything: weights (as
 * uploaded), their workspace (equal to tl_device_mem.workspace), the device tier of every
 * layer's KV at n_ctx tokens (equal to tl_device_mem.kv_alloc), activations at the chunk size
 * (+ attention partials), and a fixed reserve for the runtime (CUDA context, cuBLAS). */
typedef struct {
    uint64_t weights, workspace, kv_device, kv_host, activations, reserve, total;
} tl_device_plan;

/* p's parts added to the JSON object o: weights, workspace, kv_device, kv_host, activations,
 * reserve, total (engine/info.c; tailor info's device_memory, pareto's device_plan). */
struct cJSON;
void tl_device_plan_json(struct cJSON *o, const tl_device_plan *p);

typedef struct tl_backend_ops {
    int abi;          /* TL_BACKEND_ABI of the headers the backend was built with */
    const char *name; /* the --device value: "cpu", "cuda" */
    bool gpu;         /* tl_session_on_gpu */

    /* Whether the backend computes m's architecture: 0, or -1 with err saying what it lacks.
     * NULL: everything the loader accepts. */
    int (*supports)(const tl_model *m, tl_error *err);
    /* The device's name and peak memory bandwidth in GB/s; false with the reason in name. NULL:
     * none (the CPU's is measured: tl_memory_read_bandwidth). */
    bool (*bandwidth)(char *name, size_t n, double *peak_gbs);

    /* Device memory plans (NULL on the CPU: the planner, engine/plan.h, is its whole plan).
     * check_budget: the plan of a session of p (its context, chunk and options) against budget
     * bytes, failing with the part that does not fit and by how much, before anything is
     * allocated. plan: the plan of a session like s (its context, chunk and options). plan_for:
     * the plan of a session of p on m, with no session (tailor info --device). */
    int (*check_budget)(const tl_model *m, const tl_session_params *p, const tl_kv_layer_policy *policies,
                        uint64_t budget, tl_error *err);
    int (*plan)(const tl_session *s, const tl_kv_layer_policy *policies, tl_device_plan *out, tl_error *err);
    int (*plan_for)(const tl_model *m, const tl_session_params *p, const tl_kv_layer_policy *policies, tl_device_plan *out,
                    tl_error *err);

    /* Sessions. s arrives with model, n_ctx and chunk resolved, n_past 0, be set and a pool when
     * it has host work; init makes the backend's state (the CPU: s's stores and buffers; others:
     * s->impl). policies: one per layer, auto layers resolved (NULL = f16). kv_only: a sequence
     * of a batched step, which holds its KV caches only (the batch holds the workspace). p: the
     * options (p->cuda), or NULL for the defaults. On failure init leaves what free releases. */
    int (*init)(tl_session *s, const tl_kv_layer_policy *policies, bool kv_only, const tl_session_params *p,
                tl_error *err);
    void (*free)(tl_session *s);
    /* n > 0 tokens that fit the context (the caller checked), appended at s->n_past, which
     * advances by n. */
    int (*eval)(tl_session *s, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err);
    /* n random K/V rows appended through the backend's append path (tl_session_fill_random);
     * NULL where the backend cannot. Advances s->n_past. */
    int (*fill_random)(tl_session *s, int n, uint64_t seed, tl_error *err);
    void (*reset)(tl_session *s); /* the caller sets n_past to 0 */
    /* tl_session_truncate_max for 0 <= n < s->n_past, and the cut itself (0 < n < n_past; the
     * caller sets n_past after it succeeds). */
    int (*truncate_max)(const tl_session *s, int n);
    int (*truncate)(tl_session *s, int n, tl_error *err);
    /* KV held and activations (out arrives zeroed with the weights filled in). */
    void (*memory)(const tl_session *s, tl_session_mem *out);
    /* The device's accounting (NULL on the CPU). */
    void (*device_memory)(const tl_session *s, tl_device_mem *out);
    /* The lines --mem prints after the common one (NULL: none). */
    void (*print_memory)(FILE *f, const tl_session *s);

    /* A batched step that runs on the device (NULL on the CPU: batch.c's own step). batch_new
     * plans the batch with max_seqs sequences of sp's context, plan and options against
     * sp->gpu_mem_budget (or the free device memory) before allocating; batch_eval runs the
     * sequences in the order given, which batch.c laid out and checked, without advancing
     * their n_past (batch.c does). */
    void *(*batch_new)(tl_model *m, int max_rows, int max_seqs, const tl_session_params *sp, tl_error *err);
    void (*batch_free)(void *b);
    uint64_t (*batch_bytes)(const void *b); /* device bytes of the step's buffers */
    int (*batch_eval)(void *b, const struct tl_batch_seq *const *seqs, int n_seq, tl_error *err);
} tl_backend_ops;

/* The table of a device backend ("cuda"; backend.c), or NULL with err saying why it cannot be
 * had (e.g. "this build of tailor has no CUDA support (...)"); callers name the device. */
const tl_backend_ops *tl_backend_load(const char *device, tl_error *err);

/* The CPU's table (session.c). */
extern const tl_backend_ops tl_backend_cpu;

#endif
