/* table.c: the CUDA backend's table (engine/backend.h) over the entry points of cuda.h. A
 * session's state is a tl_cuda_session at tl_session.impl: the whole forward pass (tl_cuda_eval)
 * for a session, the KV caches alone for a sequence of a batched step (tl_cuda_batch). */
#include "cuda.h"
#include "../engine/batch.h"
#include "../engine/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the CUDA backend does not compute is refused by name rather than computed wrong. */
static int cu_supports(const tl_model *m, tl_error *err) {
    const tl_config *c = &m->cfg;
    if (c->attn_softcap > 0 || c->final_softcap > 0)
        return tl_fail(err, "--device cuda: this %s model soft-caps its attention scores and final logits, which the "
                            "GPU backend does not implement; run it on the CPU (--device cpu)", c->arch_name);
    return 0;
}

static int cu_check_budget(const tl_model *m, const tl_session_params *p, const tl_kv_layer_policy *policies,
                           uint64_t budget, tl_error *err) {
    return tl_cuda_check_budget(m, p->n_ctx, p->chunk, policies, &p->cuda, budget, err);
}

static int cu_plan(const tl_session *s, const tl_kv_layer_policy *policies, tl_device_plan *out, tl_error *err) {
    return tl_cuda_plan_memory(s->model, s->n_ctx, s->chunk, policies, tl_cuda_session_opts(s->impl), out, err);
}

static int cu_plan_for(const tl_model *m, const tl_session_params *p, const tl_kv_layer_policy *policies,
                       tl_device_plan *out, tl_error *err) {
    return tl_cuda_plan_memory(m, p->n_ctx, p->chunk, policies, &p->cuda, out, err);
}

static int cu_init(tl_session *s, const tl_kv_layer_policy *policies, bool kv_only, const tl_session_params *p,
                   tl_error *err) {
    const tl_cuda_opts *o = p ? &p->cuda : NULL;
    s->impl = kv_only ? tl_cuda_session_new_kv(s->model, s->n_ctx, policies, o, err)
                      : tl_cuda_session_new(s->model, s->n_ctx, s->chunk, policies, o, err);
    s->keys_checked = true; /* the per-token key check reads CPU stores */
    return s->impl ? 0 : -1;
}

static void cu_free(tl_session *s) { tl_cuda_session_free(s->impl); }

static int cu_eval(tl_session *s, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err) {
    if (tl_cuda_eval(s->impl, tokens, n, logits, all_logits, err)) return -1;
    s->n_past += n;
    return 0;
}

static int cu_fill_random(tl_session *s, int n, uint64_t seed, tl_error *err) {
    if (tl_cuda_fill_random(s->impl, n, seed, err)) return -1;
    s->n_past += n;
    return 0;
}

static void cu_reset(tl_session *s) { tl_cuda_reset(s->impl); }

static int cu_truncate_max(const tl_session *s, int n) { return tl_cuda_truncate_max(s->impl, n); }

static int cu_truncate(tl_session *s, int n, tl_error *err) { return tl_cuda_truncate(s->impl, n, err); }

static void cu_memory(const tl_session *s, tl_session_mem *out) {
    tl_device_mem gm;
    tl_cuda_memory(s->impl, &gm);
    out->weights_read = gm.weights_read;
    out->activations = gm.activations;
    out->kv_parts = gm.kv_held;
    out->kv = tl_kv_bytes_total(&gm.kv_held);
}

static void cu_device_memory(const tl_session *s, tl_device_mem *out) { tl_cuda_memory(s->impl, out); }

static double mib(uint64_t b) { return (double)b / (1024.0 * 1024.0); }

static void cu_print_memory(FILE *f, const tl_session *s) {
    tl_device_mem g;
    tl_cuda_memory(s->impl, &g);
    if (g.n_offload) {
        const double steps = g.decode_steps > 0 ? (double)g.decode_steps : 1.0;
        fprintf(f, "tailorKV (gpu): %d sparse layers; host tier allocated %.2f MiB (pinned, mapped); decode h2d "
                   "%.1f KiB/token (PCIe: top-k rows %.1f + channel rows %.1f) over %lld steps; prefill d2h %.2f MiB, "
                   "h2d %.2f MiB (the host tier copied back for prefill attention)\n",
                g.n_offload, mib(g.host_alloc), (g.h2d_decode + g.h2d_chan) / steps / 1024.0,
                g.h2d_decode / steps / 1024.0, g.h2d_chan / steps / 1024.0, (long long)g.decode_steps, mib(g.d2h),
                mib(g.h2d_prefill));
    }
    fprintf(f, "gpu memory (%s): weights %.2f MiB + workspace %.2f MiB + KV allocated %.2f MiB + activations %.2f MiB; "
               "device %.2f of %.2f MiB free\n",
            g.device, mib(g.weights), mib(g.workspace), mib(g.kv_alloc), mib(g.activations), mib(g.dev_free),
            mib(g.dev_total));
}

/* A batched step: the batch.cu workspace, and the step's sequences as it takes them. */
typedef struct {
    tl_cuda_batch *b;
    tl_cuda_seq *seq; /* [max_seqs] */
} cu_batch;

static void *cu_batch_new(tl_model *m, int max_rows, int max_seqs, const tl_session_params *sp, tl_error *err) {
    const tl_kv_layer_policy *pol = sp->kv ? sp->kv->layers : NULL;
    if (tl_cuda_check_batch(m, sp->n_ctx, pol, &sp->cuda, max_seqs, max_rows, max_seqs, sp->gpu_mem_budget, err))
        return NULL;
    tl_cuda_batch *g = tl_cuda_batch_new(m, max_rows, max_seqs, sp->n_ctx, pol, &sp->cuda, err);
    if (!g) return NULL;
    cu_batch *b = tl_xcalloc(1, sizeof *b);
    b->b = g;
    b->seq = tl_xcalloc((size_t)max_seqs, sizeof *b->seq);
    return b;
}

static void cu_batch_free(void *p) {
    cu_batch *b = p;
    tl_cuda_batch_free(b->b);
    free(b->seq);
    free(b);
}

static uint64_t cu_batch_bytes(const void *p) { return tl_cuda_batch_bytes(((const cu_batch *)p)->b); }

static int cu_batch_eval(void *p, const tl_batch_seq *const *seqs, int n_seq, tl_error *err) {
    cu_batch *b = p;
    for (int i = 0; i < n_seq; i++) {
        const tl_batch_seq *q = seqs[i];
        b->seq[i] = (tl_cuda_seq){.g = q->s->impl, .tokens = q->tokens, .n = q->n, .logits = q->logits,
                                  .all_logits = q->all_logits};
    }
    return tl_cuda_batch_eval(b->b, b->seq, n_seq, err);
}

static const tl_backend_ops cuda_ops = {
    .abi = TL_BACKEND_ABI,
    .name = "cuda",
    .gpu = true,
    .supports = cu_supports,
    .bandwidth = tl_cuda_device_bandwidth,
    .check_budget = cu_check_budget,
    .plan = cu_plan,
    .plan_for = cu_plan_for,
    .init = cu_init,
    .free = cu_free,
    .eval = cu_eval,
    .fill_random = cu_fill_random,
    .reset = cu_reset,
    .truncate_max = cu_truncate_max,
    .truncate = cu_truncate,
    .memory = cu_memory,
    .device_memory = cu_device_memory,
    .print_memory = cu_print_memory,
    .batch_new = cu_batch_new,
    .batch_free = cu_batch_free,
    .batch_bytes = cu_batch_bytes,
    .batch_eval = cu_batch_eval,
};

const tl_backend_ops *tl_cuda_backend(void) { return &cuda_ops; }
