/* plan.c: see plan.h. */
#include "plan.h"
#include "../cpu/qpack.h"
#include "../cpu/quants.h"

#include <string.h>

int tl_plan_n_ctx(const tl_config *c, int n_ctx) { return n_ctx > 0 ? n_ctx : c->n_ctx_train; }

int tl_model_resolve_n_ctx(const tl_model *m, int n_ctx) { return tl_plan_n_ctx(&m->cfg, n_ctx); }

int tl_plan_chunk(int n_ctx, int chunk) {
    if (chunk <= 0) chunk = 512;
    return chunk > n_ctx ? n_ctx : chunk;
}

void tl_plan_layer_kv(const tl_config *c, int n_ctx, int il, const tl_kv_layer_policy *requested, tl_kv_shape *shape,
                      tl_kv_layer_policy *effective) {
    *shape = (tl_kv_shape){
        .n_head = c->n_head,
        .n_head_kv = c->n_head_kv,
        .head_dim_k = c->head_dim_k,
        .head_dim_v = c->head_dim_v,
        .n_ctx = n_ctx,
        .window = c->layer_swa[il] ? c->sliding_window : 0,
        .scale = c->attn_scale,
        .softcap = c->attn_softcap,
    };
    const tl_kv_layer_policy f16 = {.kind = TL_KV_F16};
    *effective = requested ? *requested : f16;
    if (shape->window > 0 && effective->kind != TL_KV_F32 && effective->kind != TL_KV_F16 && effective->kind != TL_KV_BF16)
        *effective = f16;
}

tl_plan_target tl_plan_target_model(const tl_model *m) {
    return (tl_plan_target){.cfg = &m->cfg, .model = m, .weights = m->weight_bytes};
}

void tl_plan_weights(const tl_plan_target *t, uint64_t *file, uint64_t *packed) {
    *file = t->weights;
    *packed = 0;
    if (t->model) {
        const tl_mat *mats[TL_MODEL_MAX_PACKED];
        const int n = tl_model_packed_mats(t->model, mats);
        const bool mapped = tl_gguf_mapped(t->model->gguf);
        for (int i = 0; i < n; i++) {
            const tl_mat *w = mats[i];
            if (!w->pack || !tlq_pack_applies(w->type, w->n_in)) continue;
            *packed += tlq_pack_bytes(w->type, w->n_in, w->n_out);
            if (mapped) *file -= tl_row_size(w->type, w->n_in) * (uint64_t)w->n_out;
        }
        return;
    }
    /* tl_model_packed_mats by shape: each layer's q, k, v, o, gate, up and down, and the
     * output (n_vocab rows, tied or not) */
    const tl_config *c = t->cfg;
    const int64_t E = c->n_embd, F = c->n_ff, qd = (int64_t)c->n_head * c->head_dim_k,
                  kd = (int64_t)c->n_head_kv * c->head_dim_k, vd = (int64_t)c->n_head_kv * c->head_dim_v,
                  od = (int64_t)c->n_head * c->head_dim_v;
    const int64_t layer[7][2] = {{E, qd}, {E, kd}, {E, vd}, {od, E}, {E, F}, {E, F}, {F, E}}; /* n_in, n_out */
    for (int i = 0; i < 8; i++) {
        const int64_t n_in = i < 7 ? layer[i][0] : E, n_out = i < 7 ? layer[i][1] : c->n_vocab;
        const uint64_t times = i < 7 ? (uint64_t)c->n_layer : 1;
        if (!tlq_pack_applies(t->type, n_in)) continue;
        *packed += times * tlq_pack_bytes(t->type, n_in, n_out);
        *file -= times * tl_row_size(t->type, n_in) * (uint64_t)n_out;
    }
}

size_t tl_plan_mm_scratch(const tl_plan_target *t, int chunk) {
    const tl_config *c = t->cfg;
    size_t need = 0;
    if (t->model) {
        const tl_weights *w = &t->model->w;
        need = tl_matmul_scratch_size(w->output.type, c->n_embd, chunk);
        for (int il = 0; il < c->n_layer; il++) {
            const tl_layer_weights *L = &w->layers[il];
            const tl_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
                need = TL_MAX(need, tl_matmul_scratch_size(mats[i]->type, mats[i]->n_in, chunk));
        }
        return need;
    }
    /* matrices read n_embd (q, k, v, gate, up, output), n_head*head_dim_v (wo) or n_ff (down) */
    const int64_t n_in[3] = {c->n_embd, (int64_t)c->n_head * c->head_dim_v, c->n_ff};
    for (int i = 0; i < 3; i++) need = TL_MAX(need, tl_matmul_scratch_size(t->type, n_in[i], chunk));
    return need;
}

void tl_plan_activations(const tl_plan_target *t, int chunk, const tl_kv_layer_policy *effective, tl_act_sizes *out) {
    const tl_config *c = t->cfg;
    const size_t C = (size_t)chunk, E = (size_t)c->n_embd, f = sizeof(float);
    const size_t qdim = (size_t)c->n_head * c->head_dim_k;
    bool predicts = false;
    for (int il = 0; il < c->n_layer; il++) predicts |= effective[il].kind == TL_KV_OFFLOAD;
    *out = (tl_act_sizes){
        .x = f * C * E,
        .xn = f * C * E,
        .tmp = f * C * E,
        .q = f * C * qdim,
        .k = f * C * c->n_head_kv * c->head_dim_k,
        .v = f * C * c->n_head_kv * c->head_dim_v,
        .attn = f * C * c->n_head * c->head_dim_v,
        .gate = f * C * c->n_ff,
        .up = f * C * c->n_ff,
        .rope = f * C * 2 * (size_t)c->n_rot,
        .mm_scratch = tl_plan_mm_scratch(t, chunk),
        .q_pred = predicts ? f * C * qdim : 0,
    };
}

uint64_t tl_act_sizes_total(const tl_act_sizes *a) {
    return (uint64_t)a->x + a->xn + a->tmp + a->q + a->k + a->v + a->attn + a->gate + a->up + a->rope + a->mm_scratch +
           a->q_pred;
}

/* Layer il's KV bytes after n_tokens, its shape and effective policy. */
static int layer_kv(const tl_config *c, int n_ctx, int il, const tl_kv_layer_policy *policies, int64_t n_tokens,
                    tl_kv_shape *sh, tl_kv_layer_policy *eff, tl_kv_bytes *b, tl_error *err) {
    tl_plan_layer_kv(c, n_ctx, il, policies ? &policies[il] : NULL, sh, eff);
    if (tl_kv_layer_bytes_formula(eff, sh, n_tokens, b, err)) return tl_fail_prefix(err, "layer %d KV cache", il);
    return 0;
}

static void kv_add(tl_kv_bytes *sum, const tl_kv_bytes *b) {
    sum->codes += b->codes;
    sum->scales += b->scales;
    sum->residual += b->residual;
    sum->other += b->other;
    sum->host += b->host;
}

int tl_plan_kv(const tl_config *c, int n_ctx, const tl_kv_layer_policy *policies, int64_t n_tokens, tl_kv_bytes *out,
               tl_error *err) {
    memset(out, 0, sizeof *out);
    n_ctx = tl_plan_n_ctx(c, n_ctx);
    if (n_tokens < 0) n_tokens = n_ctx;
    for (int il = 0; il < c->n_layer; il++) {
        tl_kv_shape sh;
        tl_kv_layer_policy eff;
        tl_kv_bytes b;
        if (layer_kv(c, n_ctx, il, policies, n_tokens, &sh, &eff, &b, err)) return -1;
        kv_add(out, &b);
    }
    return 0;
}

int tl_plan_check_kv(const tl_config *c, const tl_kv_plan *plan, tl_error *err) {
    if (plan && plan->n_layers != c->n_layer)
        return tl_fail(err, "--kv: the plan has %d layers but the model has %d", plan->n_layers, c->n_layer);
    return 0;
}

int tl_plan_kv_bytes(const tl_model *m, int n_ctx, const tl_kv_plan *plan, int64_t n_tokens, tl_kv_bytes *out,
                     tl_error *err) {
    if (tl_plan_check_kv(&m->cfg, plan, err)) return -1;
    return tl_plan_kv(&m->cfg, n_ctx, plan ? plan->layers : NULL, n_tokens, out, err);
}

int tl_plan_memory(const tl_plan_target *t, int n_ctx, int chunk, const tl_kv_layer_policy *policies, int64_t n_tokens,
                   tl_mem_plan *out, tl_error *err) {
    const tl_config *c = t->cfg;
    memset(out, 0, sizeof *out);
    out->n_ctx = tl_plan_n_ctx(c, n_ctx);
    out->chunk = tl_plan_chunk(out->n_ctx, chunk);
    tl_plan_weights(t, &out->weights_file, &out->weights_packed);
    out->weights = out->weights_file + out->weights_packed;
    if (n_tokens < 0) n_tokens = out->n_ctx;
    for (int il = 0; il < c->n_layer; il++) {
        tl_kv_shape sh;
        tl_kv_bytes b;
        if (layer_kv(c, out->n_ctx, il, policies, n_tokens, &sh, &out->eff[il], &b, err)) return -1;
        out->window[il] = sh.window;
        out->kv_layer[il] = tl_kv_bytes_total(&b);
        out->kv += out->kv_layer[il];
        kv_add(&out->kv_parts, &b);
    }
    tl_plan_activations(t, out->chunk, out->eff, &out->act);
    out->activations = tl_act_sizes_total(&out->act);
    return 0;
}
