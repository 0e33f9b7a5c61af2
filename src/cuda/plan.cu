/* plan.cu: the device memory a session would take, planned before anything is allocated
 * (tl_cuda_plan_memory; a batch's, batch.cu, from the same parts): weights as uploaded
 * (weights.cu), their workspace, the KV tiers (as forward.cu's tlc_side_setup and offload.cu
 * allocate them), activations, a runtime reserve; and the check of a plan against a budget
 * (--gpu-mem-budget). */
#include "forward.cuh"

#include <stdio.h>
#include <string.h>

extern "C" {
#include "../engine/plan.h"
#include "../kv/policy.h"
}

/* Bytes tlc_side_setup allocates for one side (0 with err when it would refuse). */
static int side_bytes(const tl_kv_side *p, tl_kv_kind kind, int d, int residual, int cap, int n_kv, uint64_t *out,
                      tl_error *err) {
    if (kind != TL_KV_QUANT || p->bits == 16) {
        *out = (uint64_t)cap * d * n_kv * (kind == TL_KV_F32 ? 4 : 2);
        return 0;
    }
    const uint64_t ub = 4 * (uint64_t)p->bits;
    if (d % 32) return tl_fail(err, "head_dim %d is not a multiple of 32", d);
    if (p->gran == TL_KV_GRAN_TOKEN) {
        const int g = p->group == 0 ? d : p->group;
        const uint64_t row = (uint64_t)(d / 32) * ub, ps = (uint64_t)(d / g) * (p->quantizer == TL_KV_SYM ? 1 : 2);
        *out = ((uint64_t)cap * row + (uint64_t)cap * ps * 2 + (uint64_t)residual * d * 2) * n_kv;
    } else if (p->gran == TL_KV_GRAN_CHANNEL) {
        const int g = p->group, base = TL_MAX(residual, g), R = (base + g - 1) / g * g;
        const uint64_t ngrp = ((uint64_t)cap + g - 1) / g, ppg = p->quantizer == TL_KV_SYM ? 1 : 2;
        *out = (ngrp * (uint64_t)d * (g / 32) * ub + ngrp * (uint64_t)d * ppg * 2 + (uint64_t)R * d * 2) * n_kv;
    } else {
        return tl_fail(err, "per-block and per-tensor granularity have no GPU implementation");
    }
    return 0;
}

uint64_t tlc_plan_weights(const tl_model *m, bool widen) {
    /* as tlc_upload_weights stores them (block formats with kernels as they are unless widen,
     * other non-float types widened to f16) */
    const tl_config *c = &m->cfg;
    uint64_t w = tlc_mat_bytes(&m->w.tok_embd, widen) + (uint64_t)c->n_embd * 4;
    if (!m->w.tied_output) w += tlc_mat_bytes(&m->w.output, widen);
    const uint64_t qdim = (uint64_t)c->n_head * c->head_dim_k, kdim = (uint64_t)c->n_head_kv * c->head_dim_k,
                   vdim = (uint64_t)c->n_head_kv * c->head_dim_v;
    for (int il = 0; il < c->n_layer; il++) {
        const tl_layer_weights *S = &m->w.layers[il];
        const tl_mat *mats[] = {&S->wq, &S->wk, &S->wv, &S->wo, &S->w_gate, &S->w_up, &S->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++) w += tlc_mat_bytes(mats[i], widen);
        w += (uint64_t)c->n_embd * 4 * (2 + (S->attn_post_norm ? 1 : 0) + (S->ffn_post_norm ? 1 : 0));
        w += (uint64_t)c->head_dim_k * 4 * ((S->q_norm ? 1 : 0) + (S->k_norm ? 1 : 0));
        w += 4 * ((S->bq ? qdim : 0) + (S->bk ? kdim : 0) + (S->bv ? vdim : 0));
    }
    return w;
}

int tlc_plan_kv(const tl_model *m, int n_ctx, const tl_kv_layer_policy *policies, int gen_cap, uint64_t *dev, uint64_t *host,
                uint64_t *crow, uint64_t *pstage, bool *any_off, tl_error *err) {
    const tl_config *c = &m->cfg;
    *dev = *host = *crow = *pstage = 0;
    *any_off = false;
    for (int il = 0; il < c->n_layer; il++) {
        tl_kv_shape sh;
        tl_kv_layer_policy p;
        tl_plan_layer_kv(c, n_ctx, il, policies ? &policies[il] : NULL, &sh, &p);
        if (p.kind == TL_KV_OFFLOAD) {
            tlc_off_sizes z;
            if (tlc_off_sizes_of(&p.off, c->n_head, c->n_head_kv, c->head_dim_k, c->head_dim_v, n_ctx, gen_cap, &z, err))
                return tl_fail_prefix(err, "layer %d", il);
            *dev += z.dev;
            *host += z.host;
            *crow = TL_MAX(*crow, z.crow);       /* two are allocated, shared by the layers */
            *pstage = TL_MAX(*pstage, z.pstage); /* one, shared */
            *any_off = true;
            continue;
        }
        const int cap = sh.window > 0 ? TL_MIN(sh.window, n_ctx) : n_ctx;
        /* auto:B, not resolved yet: the larger of the layouts the GPU can be given */
        tl_kv_layer_policy cand[TL_KV_AUTO_MAX_CANDIDATES];
        const int nc = p.kind == TL_KV_AUTO ? tl_kv_auto_candidates(&p, true, cand) : 1;
        if (p.kind != TL_KV_AUTO) cand[0] = p;
        uint64_t most = 0;
        for (int i = 0; i < nc; i++) {
            uint64_t bk = 0, bv = 0;
            if (side_bytes(&cand[i].k, cand[i].kind, c->head_dim_k, cand[i].residual, cap, c->n_head_kv, &bk, err) ||
                side_bytes(&cand[i].v, cand[i].kind, c->head_dim_v, cand[i].residual, cap, c->n_head_kv, &bv, err))
                return tl_fail_prefix(err, "layer %d", il);
            most = TL_MAX(most, bk + bv);
        }
        *dev += most;
    }
    return 0;
}

uint64_t tlc_plan_rows(const tl_config *c, int rows) {
    const uint64_t E = c->n_embd, C = (uint64_t)rows, od = (uint64_t)c->n_head * c->head_dim_v;
    const uint64_t qdim = (uint64_t)c->n_head * c->head_dim_k, kdim = (uint64_t)c->n_head_kv * c->head_dim_k,
                   vdim = (uint64_t)c->n_head_kv * c->head_dim_v;
    const uint64_t max_in = TL_MAX(E, TL_MAX(od, (uint64_t)c->n_ff));
    return 4 * C * (3 * E + qdim + kdim + vdim + od + 2 * (uint64_t)c->n_ff + 2 * (uint64_t)c->n_rot) + 4 * (uint64_t)c->n_vocab +
           2 * C * max_in + 4 * C;
}

uint64_t tlc_plan_ws(const tl_model *m, bool widen) {
    size_t wdq;
    int xq_cap;
    return tlc_ws_bytes(m, widen, &wdq, &xq_cap);
}

extern "C" int tl_cuda_plan_memory(const tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                                   const tl_cuda_opts *o, tl_device_plan *out, tl_error *err) {
    o = tlc_opts(o);
    memset(out, 0, sizeof *out);
    const tl_config *c = &m->cfg;
    n_ctx = tl_plan_n_ctx(c, n_ctx);
    chunk = tl_plan_chunk(n_ctx, chunk);
    out->weights = tlc_plan_weights(m, o->widen);
    uint64_t crow, pstage;
    bool any_off;
    if (tlc_plan_kv(m, n_ctx, policies, o->gen_cap, &out->kv_device, &out->kv_host, &crow, &pstage, &any_off, err))
        return -1;
    const uint64_t qdim = (uint64_t)c->n_head * c->head_dim_k;
    out->activations = tlc_plan_rows(c, chunk) + 8 * (uint64_t)c->n_rot + (any_off ? 2 * 4 * qdim : 0) + 2 * crow + pstage +
                       TLC_PLAN_PARTIALS; /* + attention partials (grown on demand) */
    out->workspace = tlc_plan_ws(m, o->widen);
    out->reserve = TLC_PLAN_RESERVE; /* CUDA context, module images, cuBLAS workspace */
    out->total = out->weights + out->workspace + out->kv_device + out->activations + out->reserve;
    return 0;
}

static double gib(uint64_t b) { return (double)b / 1073741824.0; }

int tlc_check_plan(const tl_device_plan *p, uint64_t budget, const char *name, const char *what, int rows, tl_error *err) {
    if (p->total <= budget) return 0;
    const uint64_t fixed = p->weights + p->workspace + p->activations + p->reserve;
    char part[200];
    if (p->weights > budget)
        snprintf(part, sizeof part, "the weights alone (%.2f GiB) do not fit", gib(p->weights));
    else if (fixed > budget)
        snprintf(part, sizeof part, "weights + workspace + activations for %d rows + runtime reserve (%.2f GiB) do not fit",
                 rows, gib(fixed));
    else
        snprintf(part, sizeof part, "the KV device tier (%.2f GiB for %s) does not fit in the %.2f GiB left", gib(p->kv_device),
                 what, gib(budget - fixed));
    return tl_fail(err,
                   "%s %.2f GiB: %s; over by %.2f GiB (plan: weights %.2f + block-format workspace %.2f + "
                   "KV device tier %.2f + activations %.2f + CUDA/cuBLAS reserve %.2f = %.2f GiB; KV host tier %.2f GiB)",
                   name, gib(budget), part, gib(p->total - budget), gib(p->weights), gib(p->workspace), gib(p->kv_device),
                   gib(p->activations), gib(p->reserve), gib(p->total), gib(p->kv_host));
}

extern "C" int tl_cuda_check_budget(const tl_model *m, int n_ctx, int chunk, const tl_kv_layer_policy *policies,
                                    const tl_cuda_opts *o, uint64_t budget, tl_error *err) {
    tl_device_plan p;
    if (tl_cuda_plan_memory(m, n_ctx, chunk, policies, o, &p, err)) return tl_fail_prefix(err, "--gpu-mem-budget");
    n_ctx = tl_plan_n_ctx(&m->cfg, n_ctx);
    chunk = tl_plan_chunk(n_ctx, chunk);
    char what[64];
    snprintf(what, sizeof what, "%d tokens", n_ctx);
    return tlc_check_plan(&p, budget, "--gpu-mem-budget", what, chunk, err);
}

