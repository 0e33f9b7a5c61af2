/* session.c: the forward pass of llama / qwen2 / qwen3 / phi3 / gemma2 / gemma3 over a chunk
 * of tokens.
 *
 * Per block (pre-norm transformer):
 *   xn = rmsnorm(x) * w_attn_norm
 *   q, k, v = xn Wq (+bq), xn Wk (+bk), xn Wv (+bv)      -- phi3: views of one fused Wqkv
 *   qwen3, gemma3: q, k = per-head rmsnorm(q) * q_norm, rmsnorm(k) * k_norm
 *   q, k = rope(q, pos), rope(k, pos)
 *   a = attention(q, cache ++ (k, v))            -- the KV store does this (kv/kv.h);
 *                                                   gemma2 soft-caps the scores there
 *   o = a Wo ; gemma2/3: o = rmsnorm(o) * post_attention_norm
 *   x += o
 *   xn = rmsnorm(x) * w_ffn_norm
 *   f = (act(xn Wgate) * (xn Wup)) Wdown          -- act = silu, gemma: gelu-tanh;
 *                                                   phi3: Wgate, Wup views of one fused matrix
 *   gemma2/3: f = rmsnorm(f) * post_ffw_norm
 *   x += f
 * logits = rmsnorm(x) * output_norm, times Wout (tied: the embedding matrix);
 * gemma2: logits = cap * tanh(logits / cap).
 * A prompt is processed in chunks of `chunk` tokens, so activation memory is bounded by the
 * chunk size and not by the prompt length. */
#include "session.h"
#include "calibrate.h"
#include "../../include/tailor.h"
#include "../kv/policy.h"
#include "../kv/tailor_plan.h"
#include "plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void tl_rmsnorm_rows(const tl_vec_ops *vo, const float *x, float *out, const float *w, int n_rows, int dim, float eps) {
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *o = out + (size_t)r * dim;
        const float ss = vo->sumsq(xr, dim);
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int i = 0; i < dim; i++) o[i] = xr[i] * inv * w[i];
    }
}

void tl_rope_head(float *h, const float *cs, int n_rot, tl_rope_style style) {
    const int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const int a = style == TL_ROPE_NORM ? 2 * i : i;
        const int b = style == TL_ROPE_NORM ? 2 * i + 1 : i + half;
        const float x0 = h[a], x1 = h[b];
        h[a] = x0 * c - x1 * s;
        h[b] = x0 * s + x1 * c;
    }
}

void tl_session_rope_cs(const tl_session *s, int pos, int b, float *cs) {
    const tl_config *c = &s->model->cfg;
    for (int i = 0; i < c->n_rot / 2; i++) {
        const double ang = (double)pos * s->inv_freq[b][i];
        cs[2 * i] = (float)cos(ang) * c->rope_attn_factor;
        cs[2 * i + 1] = (float)sin(ang) * c->rope_attn_factor;
    }
}

static void matmul(tl_session *s, const tl_mat *w, const float *x, int n_tok, float *y) {
    tl_matmul_w(s->pool, w->pack, w->type, w->data, w->n_in, w->n_out, x, n_tok, y, w->n_out, s->act.mm_scratch,
                s->mm_flags);
}

void tl_add_bias(float *y, const float *b, int n_tok, int dim) {
    if (!b) return;
    for (int t = 0; t < n_tok; t++)
        for (int i = 0; i < dim; i++) y[(size_t)t * dim + i] += b[i];
}

static void query_post(tl_session *s, int il, float *q, int n, int pos0, const float *rope);

/* One chunk of n tokens at positions n_past.. ; logits: NULL, last row only, or all rows. */
static int forward_chunk(tl_session *s, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err) {
    const tl_model *m = s->model;
    const tl_config *c = &m->cfg;
    const tl_weights *w = &m->w;
    const tl_vec_ops *vo = s->vo;
    tl_activations *a = &s->act;
    const int E = c->n_embd, half = c->n_rot / 2;
    const int kdim = c->n_head_kv * c->head_dim_k;
    const int vdim = c->n_head_kv * c->head_dim_v;

    for (int t = 0; t < n; t++) {
        if (tokens[t] < 0 || tokens[t] >= c->n_vocab)
            return tl_fail(err, "token id %d at position %d is outside the vocabulary (0..%d)", tokens[t],
                           s->n_past + t, c->n_vocab - 1);
        tl_mat_get_row(&w->tok_embd, tokens[t], a->x + (size_t)t * E);
        if (c->embd_scale) vo->scale(a->x + (size_t)t * E, E, sqrtf((float)E));
    }
    /* cos/sin for each token and both RoPE bases */
    for (int t = 0; t < n; t++)
        for (int b = 0; b < 2; b++) tl_session_rope_cs(s, s->n_past + t, b, a->rope + ((size_t)t * 2 + b) * half * 2);

    for (int il = 0; il < c->n_layer; il++) {
        const tl_layer_weights *L = &w->layers[il];
        const int base = c->layer_swa[il] ? 1 : 0;
        tl_rmsnorm_rows(vo, a->x, a->xn, L->attn_norm, n, E, c->norm_eps);
        if (s->observer) s->observer(s->observer_ctx, il, TL_ACT_ATTN_IN, a->xn, n, E);
        const tl_mm_job qkv[3] = {{L->wq.pack, L->wq.type, L->wq.data, L->wq.n_out, a->q, L->wq.n_out},
                                  {L->wk.pack, L->wk.type, L->wk.data, L->wk.n_out, a->k, L->wk.n_out},
                                  {L->wv.pack, L->wv.type, L->wv.data, L->wv.n_out, a->v, L->wv.n_out}};
        tl_matmul_w_multi(s->pool, qkv, 3, E, a->xn, n, a->mm_scratch, s->mm_flags);
        query_post(s, il, a->q, n, s->n_past, a->rope);
        tl_add_bias(a->k, L->bk, n, kdim);
        tl_add_bias(a->v, L->bv, n, vdim);
        if (L->k_norm) tl_rmsnorm_rows(vo, a->k, a->k, L->k_norm, n * c->n_head_kv, c->head_dim_k, c->norm_eps);
        for (int t = 0; t < n; t++) {
            const float *cs = a->rope + ((size_t)t * 2 + base) * half * 2;
            for (int h = 0; h < c->n_head_kv; h++)
                tl_rope_head(a->k + (size_t)t * kdim + (size_t)h * c->head_dim_k, cs, c->n_rot, c->rope_style);
        }
        /* the next layer's store may want its queries predicted from this layer's input */
        if (il + 1 < c->n_layer && s->kv[il + 1]->ops->wants_query_prediction) {
            tl_session_query(s, il + 1, a->xn, n, s->n_past, s->q_pred);
            s->kv[il + 1]->ops->predicted_query(s->kv[il + 1], s->pool, n, s->q_pred);
        }
        if (tl_kv_forward(s->kv[il], s->pool, n, a->q, a->k, a->v, a->attn, err))
            return tl_fail_prefix(err, "layer %d", il);
        if (s->observer) s->observer(s->observer_ctx, il, TL_ACT_ATTN_OUT, a->attn, n, c->n_head * c->head_dim_v);
        matmul(s, &L->wo, a->attn, n, a->tmp);
        if (L->attn_post_norm) tl_rmsnorm_rows(vo, a->tmp, a->tmp, L->attn_post_norm, n, E, c->norm_eps);
        for (size_t i = 0; i < (size_t)n * E; i++) a->x[i] += a->tmp[i];

        tl_rmsnorm_rows(vo, a->x, a->xn, L->ffn_norm, n, E, c->norm_eps);
        if (s->observer) s->observer(s->observer_ctx, il, TL_ACT_FFN_IN, a->xn, n, E);
        const tl_mm_job ffn[2] = {{L->w_gate.pack, L->w_gate.type, L->w_gate.data, c->n_ff, a->gate, c->n_ff},
                                  {L->w_up.pack, L->w_up.type, L->w_up.data, c->n_ff, a->up, c->n_ff}};
        tl_matmul_w_multi(s->pool, ffn, 2, E, a->xn, n, a->mm_scratch, s->mm_flags);
        if (c->gelu_ffn) vo->geglu(a->gate, a->gate, a->up, n * c->n_ff);
        else vo->swiglu(a->gate, a->gate, a->up, n * c->n_ff);
        if (s->observer) s->observer(s->observer_ctx, il, TL_ACT_FFN_MID, a->gate, n, c->n_ff);
        matmul(s, &L->w_down, a->gate, n, a->tmp);
        if (L->ffn_post_norm) tl_rmsnorm_rows(vo, a->tmp, a->tmp, L->ffn_post_norm, n, E, c->norm_eps);
        for (size_t i = 0; i < (size_t)n * E; i++) a->x[i] += a->tmp[i];
    }
    s->n_past += n;

    if (logits) {
        const int first = all_logits ? 0 : n - 1, rows = n - first;
        tl_rmsnorm_rows(vo, a->x + (size_t)first * E, a->xn, w->output_norm, rows, E, c->norm_eps);
        tl_matmul_w(s->pool, w->output.pack, w->output.type, w->output.data, E, c->n_vocab, a->xn, rows, logits,
                    c->n_vocab, a->mm_scratch, s->mm_flags);
        tl_softcap(logits, rows * c->n_vocab, c->final_softcap);
    }
    return 0;
}

void tl_session_check_keys(tl_session *s) {
    s->keys_checked = true;
    const int L = s->model->cfg.n_layer;
    int n_bad = 0, worst = -1;
    tl_kv_key_check w = {0};
    for (int il = 0; il < L; il++) {
        tl_kv_key_check kc;
        if (!tl_kv_quant_key_check(s->kv[il], &kc)) continue;
        const double fix = TL_MIN(kc.err_smooth, kc.err_chan);
        if (!(kc.err_tok > 0.3 && fix < 0.5 * kc.err_tok)) continue;
        n_bad++;
        if (worst < 0 || kc.err_tok > w.err_tok) worst = il, w = kc;
    }
    if (!n_bad) return;
    fprintf(stderr,
            "tailor: warning: per-token %d-bit keys lose most of the key signal (outlier channels or channel offsets) "
            "in %d of %d layers: relative key error up to "
            "%.2f (layer %d, first %d tokens; the mean-removed keys' energy as 1); smoothed keys would give %.2f, "
            "per-channel keys %.2f: add :kchan (KIVI's key layout) or :smooth to the policy, or use --kv auto:%d "
            "(docs/real-models.md)\n",
            w.bits, n_bad, L, w.err_tok, worst, w.tokens, w.err_smooth, w.err_chan, w.bits);
}

int tl_session_eval(tl_session *s, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err) {
    if (n <= 0) return tl_fail(err, "nothing to evaluate (0 tokens)");
    if (s->n_past + n > s->n_ctx)
        return tl_fail(err, "context overflow: %d tokens held + %d new exceed the context size %d (raise -c)",
                       s->n_past, n, s->n_ctx);
    return s->be->eval(s, tokens, n, logits, all_logits, err);
}

/* The prompt chunk by chunk; the per-token key check after the first. */
static int cpu_eval(tl_session *s, const int32_t *tokens, int n, float *logits, bool all_logits, tl_error *err) {
    const int V = s->model->cfg.n_vocab;
    for (int i = 0; i < n; i += s->chunk) {
        const int nc = TL_MIN(s->chunk, n - i);
        const bool last = i + nc == n;
        float *out = NULL;
        if (all_logits && logits) out = logits + (size_t)i * V;
        else if (last && logits) out = logits;
        if (forward_chunk(s, tokens + i, nc, out, all_logits, err)) return -1;
    }
    if (!s->keys_checked) tl_session_check_keys(s);
    return 0;
}

int tl_session_fill_random(tl_session *s, int n, uint64_t seed, tl_error *err) {
    if (!s->be->fill_random) return tl_fail(err, "random K/V rows: only the CUDA backend fills a cache without the model");
    if (n < 0 || s->n_past + n > s->n_ctx)
        return tl_fail(err, "random K/V rows: %d tokens held + %d exceed the context size %d", s->n_past, n, s->n_ctx);
    return s->be->fill_random(s, n, seed, err);
}

void tl_session_reset(tl_session *s) {
    s->n_past = 0;
    s->be->reset(s);
}

static void cpu_reset(tl_session *s) {
    for (int il = 0; il < s->model->cfg.n_layer; il++) tl_kv_clear(s->kv[il]);
}

int tl_session_n_past(const tl_session *s) { return s->n_past; }
int tl_session_n_ctx(const tl_session *s) { return s->n_ctx; }
int tl_session_chunk(const tl_session *s) { return s->chunk; }
bool tl_session_on_gpu(const tl_session *s) { return s->be->gpu; }
int tl_session_n_threads(const tl_session *s) { return s->pool ? tl_pool_size(s->pool) : 0; }

bool tl_gpu_bandwidth(char *name, size_t n, double *peak_gbs) {
    *peak_gbs = 0;
    tl_error err;
    const tl_backend_ops *be = tl_backend_load("cuda", &err);
    if (!be) {
        if (name && n) snprintf(name, n, "%s", err.msg);
        return false;
    }
    return be->bandwidth(name, n, peak_gbs);
}

int tl_session_truncate_max(const tl_session *s, int n_tokens) {
    const int n = TL_MAX(0, TL_MIN(n_tokens, s->n_past));
    if (n == s->n_past) return n;
    return s->be->truncate_max(s, n);
}

static int cpu_truncate_max(const tl_session *s, int n) {
    for (;;) { /* each layer's largest count at or below n, until every layer accepts the same */
        int m = n;
        for (int il = 0; il < s->model->cfg.n_layer; il++) {
            const tl_kv_layer *l = s->kv[il];
            m = l->ops->truncate_max ? l->ops->truncate_max(l, m) : 0;
        }
        if (m == n) return n;
        n = m;
    }
}

int tl_session_truncate(tl_session *s, int n_tokens, tl_error *err) {
    if (n_tokens < 0 || n_tokens > s->n_past)
        return tl_fail(err, "truncate to %d tokens: the session holds %d", n_tokens, s->n_past);
    if (n_tokens == s->n_past) return 0;
    if (n_tokens == 0) return tl_session_reset(s), 0;
    if (s->be->truncate(s, n_tokens, err)) return -1;
    s->n_past = n_tokens;
    return 0;
}

static int cpu_truncate(tl_session *s, int n_tokens, tl_error *err) {
    const int L = s->model->cfg.n_layer;
    for (int pass = 0; pass < 2; pass++) /* check every layer first, then cut */
        for (int il = 0; il < L; il++) {
            tl_kv_layer *l = s->kv[il];
            if (!l->ops->truncate)
                return tl_fail(err, "truncate: layer %d's %s KV store cannot drop tokens", il, l->ops->name);
            if (l->ops->truncate(l, n_tokens, pass == 0, err)) return tl_fail_prefix(err, "layer %d", il);
        }
    return 0;
}

static void *act_alloc(tl_session *s, size_t bytes) {
    void *p = tl_amalloc(bytes);
    if (!p) {
        fprintf(stderr, "tailor: out of memory allocating %zu bytes of activations\n", bytes);
        abort();
    }
    s->act_bytes += bytes;
    return p;
}

static void init_rope(tl_session *s) {
    for (int b = 0; b < 2; b++) tl_model_rope_freqs(s->model, s->n_ctx, b == 1, s->inv_freq[b]);
}

/* auto:B layers resolved by calibration (calibrate_keys.c): NULL when there are none, else a
 * malloc'd copy of the plan with each auto layer replaced by its measured layout. */
static tl_kv_layer_policy *resolve_auto(tl_model *m, const tl_kv_layer_policy *policies, bool gpu, int n_threads,
                                        bool *failed, tl_error *err) {
    *failed = false;
    const int L = m->cfg.n_layer;
    int n_auto = 0;
    for (int il = 0; policies && il < L; il++) n_auto += policies[il].kind == TL_KV_AUTO;
    if (!n_auto) return NULL;
    tl_kv_layer_policy *r = tl_xmalloc(sizeof *r * (size_t)L);
    memcpy(r, policies, sizeof *r * (size_t)L);
    tl_kv_auto_report rep;
    if (tl_kv_auto_resolve(m, r, NULL, 0, gpu, n_threads, &rep, err)) {
        free(r);
        *failed = true;
        return NULL;
    }
    char line[512];
    tl_kv_auto_summary(&rep, line, sizeof line);
    fprintf(stderr, "tailor: --kv auto: %s (pin the plan: tailor calibrate --auto ... -o plan.json)\n", line);
    return r;
}

int tl_kv_plan_resolve_auto(tl_kv_plan *out, tl_model *m, const tl_kv_plan *plan, int n_threads, tl_error *err) {
    const int L = m->cfg.n_layer;
    out->n_layers = 0;
    out->layers = NULL;
    if (tl_plan_check_kv(&m->cfg, plan, err)) return -1;
    bool failed;
    tl_kv_layer_policy *r = resolve_auto(m, plan->layers, false, n_threads, &failed, err);
    if (failed) return -1;
    if (!r) {
        r = tl_xmalloc(sizeof *r * (size_t)L);
        memcpy(r, plan->layers, sizeof *r * (size_t)L);
    }
    out->n_layers = L;
    out->layers = r;
    return 0;
}

/* A session of m on backend be: the backend's check of the model, auto layers measured (among
 * the layouts a GPU runs, on one), context and chunk resolved (engine/plan.h), then be->init.
 * kv_only: a sequence of the backend's batched step (its KV caches only). p: the options, or
 * NULL for the defaults. */
static tl_session *session_make(tl_model *m, const tl_backend_ops *be, int n_ctx, int n_threads, int chunk,
                                const tl_kv_layer_policy *policies, bool kv_only, const tl_session_params *p,
                                tl_error *err) {
    if (be->supports && be->supports(m, err)) return NULL;
    bool failed;
    tl_kv_layer_policy *resolved = resolve_auto(m, policies, be->gpu, n_threads, &failed, err);
    if (failed) return NULL;
    tl_session *s = tl_xcalloc(1, sizeof *s);
    s->model = m;
    s->be = be;
    s->n_ctx = tl_plan_n_ctx(&m->cfg, n_ctx);
    s->chunk = tl_plan_chunk(s->n_ctx, chunk);
    /* host work: the CPU's forward pass, or a device's logits (perplexity's log-softmax); a
     * sequence of a device's batch has none */
    if (!kv_only) s->pool = tl_pool_new(n_threads);
    const int rc = be->init(s, resolved ? resolved : policies, kv_only, p, err);
    free(resolved);
    if (rc) {
        tl_session_free(s);
        return NULL;
    }
    return s;
}

tl_session *tl_session_new_with_policies(tl_model *m, int n_ctx, int n_threads, int chunk,
                                         const tl_kv_layer_policy *policies, tl_error *err) {
    return session_make(m, &tl_backend_cpu, n_ctx, n_threads, chunk, policies, false, NULL, err);
}

/* The CPU's stores and buffers, sized by the planner. */
static int cpu_init(tl_session *s, const tl_kv_layer_policy *policies, bool kv_only, const tl_session_params *p,
                    tl_error *err) {
    const tl_config *c = &s->model->cfg;
    if (c->n_rot / 2 > 512) return tl_fail(err, "rope dimension %d too large", c->n_rot);
    s->vo = tl_vec_get();
    /* the kernels' copies of the weights (and the file's pages released), before the first
     * chunk is timed; a CPU session always has a pool (a batch's sequences too: the batch packs
     * as well), so the planner counts them for every CPU session (tl_plan_weights) */
    if (s->pool) tl_model_pack(s->model, s->pool);
    init_rope(s);
    tl_kv_layer_policy *eff = tl_xmalloc(sizeof *eff * (size_t)c->n_layer);
    for (int il = 0; il < c->n_layer; il++) {
        tl_kv_shape sh;
        tl_plan_layer_kv(c, s->n_ctx, il, policies ? &policies[il] : NULL, &sh, &eff[il]);
        s->kv[il] = tl_kv_layer_new(&eff[il], &sh, err);
        if (!s->kv[il]) {
            free(eff);
            return tl_fail_prefix(err, "layer %d KV cache", il);
        }
    }
    /* the buffers as the planner sizes them */
    const tl_plan_target t = tl_plan_target_model(s->model);
    tl_act_sizes z;
    tl_plan_activations(&t, s->chunk, eff, &z);
    free(eff);
    tl_activations *a = &s->act;
    a->x = act_alloc(s, z.x);
    a->xn = act_alloc(s, z.xn);
    a->q = act_alloc(s, z.q);
    a->k = act_alloc(s, z.k);
    a->v = act_alloc(s, z.v);
    a->attn = act_alloc(s, z.attn);
    a->gate = act_alloc(s, z.gate);
    a->up = act_alloc(s, z.up);
    a->tmp = act_alloc(s, z.tmp);
    a->rope = act_alloc(s, z.rope);
    a->mm_scratch_bytes = z.mm_scratch;
    a->mm_scratch = act_alloc(s, z.mm_scratch);
    if (z.q_pred) s->q_pred = act_alloc(s, z.q_pred);
    return 0;
}

void tl_session_free(tl_session *s) {
    if (!s) return;
    s->be->free(s);
    tl_pool_free(s->pool);
    free(s);
}

static void cpu_free(tl_session *s) {
    for (int il = 0; il < s->model->cfg.n_layer; il++) tl_kv_destroy(s->kv[il]);
    tl_activations *a = &s->act;
    void *bufs[] = {a->x, a->xn, a->q, a->k, a->v, a->attn, a->gate, a->up, a->tmp, a->rope, a->logits, a->mm_scratch, s->q_pred};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) tl_afree(bufs[i]);
}

/* Wq's bias, q-norm and RoPE on n rows of queries at positions pos0..; rope: the rows' cos/sin
 * (the forward pass's table, both bases per row) or NULL (computed here, the same values). */
static void query_post(tl_session *s, int il, float *q, int n, int pos0, const float *rope) {
    const tl_config *c = &s->model->cfg;
    const int qdim = c->n_head * c->head_dim_k, half = c->n_rot / 2, base = c->layer_swa[il] ? 1 : 0;
    const tl_layer_weights *L = &s->model->w.layers[il];
    tl_add_bias(q, L->bq, n, qdim);
    if (L->q_norm) tl_rmsnorm_rows(s->vo, q, q, L->q_norm, n * c->n_head, c->head_dim_k, c->norm_eps);
    float *cs = rope ? NULL : tl_xmalloc(sizeof(float) * (size_t)half * 2);
    for (int t = 0; t < n; t++) {
        const float *r = rope ? rope + ((size_t)t * 2 + base) * half * 2 : cs;
        if (!rope) tl_session_rope_cs(s, pos0 + t, base, cs);
        for (int h = 0; h < c->n_head; h++) tl_rope_head(q + (size_t)t * qdim + (size_t)h * c->head_dim_k, r, c->n_rot, c->rope_style);
    }
    free(cs);
}

void tl_session_query(tl_session *s, int il, const float *xn, int n, int pos0, float *q) {
    const tl_layer_weights *L = &s->model->w.layers[il];
    tl_matmul_w(s->pool, L->wq.pack, L->wq.type, L->wq.data, L->wq.n_in, L->wq.n_out, xn, n, q, L->wq.n_out,
                n <= s->chunk ? s->act.mm_scratch : NULL, s->mm_flags);
    query_post(s, il, q, n, pos0, NULL);
}

void tl_session_memory(const tl_session *s, tl_session_mem *out) {
    memset(out, 0, sizeof *out);
    out->weights = out->weights_file = s->model->weight_bytes;
    out->weights_read = tl_model_decode_weight_bytes(s->model);
    s->be->memory(s, out);
}

static void cpu_memory(const tl_session *s, tl_session_mem *out) {
    tl_model_cpu_weights(s->model, &out->weights_file, &out->weights_packed);
    out->weights = out->weights_file + out->weights_packed;
    /* every byte held but an untied embedding's (not packed, one row read a step) */
    out->weights_read = out->weights - (s->model->weight_bytes - tl_model_decode_weight_bytes(s->model));
    out->activations = s->act_bytes;
    for (int il = 0; il < s->model->cfg.n_layer; il++) {
        tl_kv_bytes b;
        s->kv[il]->ops->bytes(s->kv[il], &b);
        out->kv_parts.codes += b.codes;
        out->kv_parts.scales += b.scales;
        out->kv_parts.residual += b.residual;
        out->kv_parts.other += b.other;
        out->kv_parts.host += b.host;
        out->kv += tl_kv_bytes_total(&b);
    }
}

bool tl_session_device_memory(const tl_session *s, tl_device_mem *out) {
    if (!s->be->device_memory) return false;
    s->be->device_memory(s, out);
    return true;
}

int tl_session_device_plan(const tl_session *s, const tl_kv_layer_policy *policies, tl_device_plan *out, tl_error *err) {
    if (!s->be->plan) return tl_fail(err, "device memory plan: the %s backend has no device", s->be->name);
    return s->be->plan(s, policies, out, err);
}

tl_session_params tl_session_default_params(void) {
    tl_session_params p = {0};
    return p;
}

const tl_backend_ops *tl_backend_find(const char *device, tl_error *err) {
    if (!device || !strcmp(device, "cpu")) return &tl_backend_cpu;
    if (strcmp(device, "cuda")) {
        tl_fail(err, "--device '%s': unknown device (cpu, cuda)", device);
        return NULL;
    }
    const tl_backend_ops *be = tl_backend_load(device, err);
    if (!be) tl_fail_prefix(err, "--device %s", device);
    return be;
}

tl_session *tl_session_new_on(tl_model *m, int n_ctx, int n_threads, int chunk, const tl_kv_layer_policy *policies,
                              const char *device, tl_error *err) {
    const tl_backend_ops *be = tl_backend_find(device, err);
    return be ? session_make(m, be, n_ctx, n_threads, chunk, policies, false, NULL, err) : NULL;
}

/* The plan's per-layer policies (NULL: f16 everywhere); -1 when the plan is for another depth. */
static int params_policies(const tl_model *m, const tl_session_params *p, const tl_kv_layer_policy **policies,
                           tl_error *err) {
    *policies = NULL;
    if (!p->kv) return 0;
    if (tl_plan_check_kv(&m->cfg, p->kv, err)) return -1;
    *policies = p->kv->layers;
    return 0;
}

tl_session *tl_session_new_for_batch(tl_model *m, const tl_session_params *p, tl_error *err) {
    const tl_kv_layer_policy *policies;
    if (params_policies(m, p, &policies, err)) return NULL;
    const tl_backend_ops *be = tl_backend_find(p->device, err);
    if (!be) return NULL;
    /* batch.c's own step (the CPU's) runs sessions of chunk 1 and one thread; a device's step
     * runs sequences that hold their KV caches only */
    if (!be->batch_new) return session_make(m, be, p->n_ctx, 1, 1, policies, false, p, err);
    return session_make(m, be, p->n_ctx, p->n_threads, p->chunk, policies, true, p, err);
}

tl_session *tl_session_new(tl_model *m, const tl_session_params *p, tl_error *err) {
    if (p->warn_ctx && p->n_ctx > m->cfg.n_ctx_train)
        fprintf(stderr, "tailor: warning: context %d exceeds the model's training context %d; quality may degrade\n",
                p->n_ctx, m->cfg.n_ctx_train);
    const tl_kv_layer_policy *policies;
    if (params_policies(m, p, &policies, err)) return NULL;
    const tl_backend_ops *be = tl_backend_find(p->device, err);
    if (!be) return NULL;
    if (p->gpu_mem_budget && be->check_budget && be->check_budget(m, p, policies, p->gpu_mem_budget, err)) return NULL;
    tl_session *s = session_make(m, be, p->n_ctx, p->n_threads, p->chunk, policies, false, p, err);
    if (s && p->prefill_q8) s->mm_flags = TL_MM_Q8;
    return s;
}

static double mib(uint64_t b) { return (double)b / (1024.0 * 1024.0); }

void tl_session_print_memory(FILE *f, const tl_session *s) {
    tl_session_mem m;
    tl_session_memory(s, &m);
    char split[96] = "";
    if (m.weights_packed)
        snprintf(split, sizeof split, " (file %.2f, repacked for the CPU GEMM %.2f)", mib(m.weights_file),
                 mib(m.weights_packed));
    fprintf(f, "memory: weights %.2f MiB%s + KV %.2f MiB (codes %.2f, scales %.2f, residual %.2f, other %.2f, host %.2f) "
               "+ activations %.2f MiB = %.2f MiB  [%d tokens held]\n",
            mib(m.weights), split, mib(m.kv), mib(m.kv_parts.codes), mib(m.kv_parts.scales), mib(m.kv_parts.residual),
            mib(m.kv_parts.other), mib(m.kv_parts.host), mib(m.activations), mib(m.weights + m.kv + m.activations),
            s->n_past);
    if (s->be->print_memory) s->be->print_memory(f, s);
}

static void cpu_print_memory(FILE *f, const tl_session *s) { tl_tailor_print_mem(f, s->kv, s->model->cfg.n_layer); }

/* The CPU backend: session.c's forward pass and batch.c's batched step. */
const tl_backend_ops tl_backend_cpu = {
    .abi = TL_BACKEND_ABI,
    .name = "cpu",
    .gpu = false,
    .init = cpu_init,
    .free = cpu_free,
    .eval = cpu_eval,
    .reset = cpu_reset,
    .truncate_max = cpu_truncate_max,
    .truncate = cpu_truncate,
    .memory = cpu_memory,
    .print_memory = cpu_print_memory,
};
