/* model.c: read a model's config from GGUF metadata and bind its tensors, checking every
 * shape and type. Errors name the file and the tensor or key. */
#include "model.h"
#include "../include/tailor.h"
#include "cuda/cuda.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int key_u32(const tl_gguf *g, const char *arch, const char *suffix, uint32_t *out, bool required, tl_error *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (required) return tl_gguf_get_u32(g, key, out, err);
    return tl_gguf_opt_u32(g, key, out, err);
}

/* A float hyper-parameter, when present, must lie in [lo, hi] (which excludes NaN and the
 * infinities): a NaN RMSNorm epsilon or a RoPE base of 0 loads and runs, and every logit is NaN. */
static int key_f32(const tl_gguf *g, const char *arch, const char *suffix, float *out, float lo, float hi,
                   const char *what, tl_error *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    float v = *out;
    if (tl_gguf_opt_f32(g, key, &v, err)) return -1;
    if (!(v >= lo && v <= hi))
        return tl_fail(err, "%s: key '%s' = %g is not %s", tl_gguf_path(g), key, v, what);
    *out = v;
    return 0;
}

static int read_config(const tl_gguf *g, tl_config *c, tl_error *err) {
    char *arch = NULL;
    if (tl_gguf_get_str(g, "general.architecture", &arch, err)) return -1;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
    if (!strcmp(arch, "llama") || !strcmp(arch, "mistral")) c->arch = TL_ARCH_LLAMA;
    else if (!strcmp(arch, "qwen2")) c->arch = TL_ARCH_QWEN2;
    else if (!strcmp(arch, "gemma3")) c->arch = TL_ARCH_GEMMA3;
    else {
        char shown[128];
        tl_escape(shown, sizeof shown, arch, strlen(arch), NULL);
        tl_fail(err, "%s: architecture '%s' is not supported (supported: llama, mistral, qwen2, gemma3)",
                tl_gguf_path(g), shown);
        free(arch);
        return -1;
    }
    free(arch);
    const char *a = c->arch_name;
    uint32_t v;
    if (key_u32(g, a, "embedding_length", &v, true, err)) return -1;
    c->n_embd = (int)v;
    if (key_u32(g, a, "block_count", &v, true, err)) return -1;
    c->n_layer = (int)v;
    if (key_u32(g, a, "feed_forward_length", &v, true, err)) return -1;
    c->n_ff = (int)v;
    if (key_u32(g, a, "attention.head_count", &v, true, err)) return -1;
    c->n_head = (int)v;
    v = (uint32_t)c->n_head;
    if (key_u32(g, a, "attention.head_count_kv", &v, false, err)) return -1;
    c->n_head_kv = (int)v;
    v = 0;
    if (key_u32(g, a, "context_length", &v, true, err)) return -1;
    c->n_ctx_train = (int)v;
    if (c->n_layer <= 0 || c->n_layer > TL_MAX_LAYERS || c->n_embd <= 0 || c->n_embd > 65536 || c->n_head <= 0 ||
        c->n_head > 1024 || c->n_head_kv <= 0 || c->n_head % c->n_head_kv != 0 || c->n_ff <= 0 || c->n_ff > 1 << 20 ||
        c->n_ctx_train <= 0)
        return tl_fail(err, "%s: implausible hyperparameters (layers %d, embd %d, heads %d/%d, ffn %d, ctx %d)",
                       tl_gguf_path(g), c->n_layer, c->n_embd, c->n_head, c->n_head_kv, c->n_ff, c->n_ctx_train);
    v = (uint32_t)(c->n_embd / c->n_head);
    if (key_u32(g, a, "attention.key_length", &v, false, err)) return -1;
    c->head_dim_k = (int)v;
    v = (uint32_t)c->head_dim_k;
    if (key_u32(g, a, "attention.value_length", &v, false, err)) return -1;
    c->head_dim_v = (int)v;
    if (c->head_dim_k <= 0 || c->head_dim_k > 1024 || c->head_dim_v <= 0 || c->head_dim_v > 1024 || (c->head_dim_k & 1))
        return tl_fail(err, "%s: bad head size %d/%d", tl_gguf_path(g), c->head_dim_k, c->head_dim_v);
    v = (uint32_t)c->head_dim_k;
    if (key_u32(g, a, "rope.dimension_count", &v, false, err)) return -1;
    c->n_rot = (int)v;
    if (c->n_rot <= 0 || c->n_rot > c->head_dim_k || (c->n_rot & 1))
        return tl_fail(err, "%s: key %s.rope.dimension_count = %d does not fit head size %d", tl_gguf_path(g), a,
                       c->n_rot, c->head_dim_k);
    c->rope_base = 10000.0f;
    if (key_f32(g, a, "rope.freq_base", &c->rope_base, FLT_MIN, FLT_MAX, "a positive number", err)) return -1;
    c->rope_freq_scale = 1.0f;
    {
        char key[128], *type = NULL;
        snprintf(key, sizeof key, "%s.rope.scaling.type", a);
        if (tl_gguf_opt_str(g, key, &type, err)) return -1;
        float factor = 0.0f;
        if (key_f32(g, a, "rope.scaling.factor", &factor, 0, FLT_MAX, "a number >= 0 (0: none)", err)) {
            free(type);
            return -1;
        }
        if (type && strcmp(type, "none") && strcmp(type, "linear")) {
            char shown[128];
            tl_escape(shown, sizeof shown, type, strlen(type), NULL);
            tl_fail(err, "%s: rope scaling type '%s' is not supported (none, linear, llama3 rope_freqs)", tl_gguf_path(g),
                    shown);
            free(type);
            return -1;
        }
        if (type && !strcmp(type, "linear") && factor > 0.0f) c->rope_freq_scale = 1.0f / factor;
        free(type);
    }
    c->norm_eps = 1e-5f;
    if (key_f32(g, a, "attention.layer_norm_rms_epsilon", &c->norm_eps, FLT_MIN, 1, "a positive number <= 1", err))
        return -1;
    c->rope_style = c->arch == TL_ARCH_LLAMA ? TL_ROPE_NORM : TL_ROPE_NEOX;
    c->attn_scale = 1.0f / sqrtf((float)c->head_dim_k);
    c->rope_base_swa = c->rope_base;
    if (c->arch == TL_ARCH_GEMMA3) {
        /* llama.cpp's convention for gemma3 files without a layer-pattern key: five
         * sliding-window layers then one global, local layers with RoPE base 10000. */
        uint32_t w = 0;
        if (key_u32(g, a, "attention.sliding_window", &w, true, err)) return -1;
        c->sliding_window = (int)w;
        for (int il = 0; il < c->n_layer; il++) c->layer_swa[il] = (il % 6) < 5;
        c->rope_base_swa = 10000.0f;
        c->embd_scale = true;
        c->gelu_ffn = true;
    }
    return 0;
}

/* Find a tensor, check its type is usable and its shape is [n_in, n_out] (n_out 0 = 1-D). */
static const tl_gguf_tensor *get_tensor(const tl_gguf *g, const char *name, int64_t ne0, int64_t ne1, bool required,
                                        tl_error *err, int *failed) {
    const tl_gguf_tensor *t = tl_gguf_find_tensor(g, name);
    if (!t) {
        if (required) {
            tl_fail(err, "%s: tensor '%s' is missing", tl_gguf_path(g), name);
            *failed = 1;
        }
        return NULL;
    }
    const tl_type_traits *tt = tl_type_info(t->type);
    if (!tt || !tt->supported) {
        tl_fail(err, "%s: tensor '%s' has type %s, which tailor does not support", tl_gguf_path(g), name,
                tl_type_name(t->type));
        *failed = 1;
        return NULL;
    }
    const int64_t want1 = ne1 > 0 ? ne1 : 1;
    if (t->ne[0] != ne0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1) {
        if (ne1 > 0)
            tl_fail(err, "%s: tensor '%s': expected %lldx%lld, found %lldx%lldx%lldx%lld", tl_gguf_path(g), name,
                    (long long)ne0, (long long)ne1, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                    (long long)t->ne[3]);
        else
            tl_fail(err, "%s: tensor '%s': expected %lld values, found %lldx%lldx%lldx%lld", tl_gguf_path(g), name,
                    (long long)ne0, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3]);
        *failed = 1;
        return NULL;
    }
    return t;
}

/* A 1-D vector as f32: points into the file when it is f32, else widened into an owned copy. */
static const float *get_vec(tl_model *m, const char *name, int64_t n, bool required, tl_error *err, int *failed) {
    const tl_gguf_tensor *t = get_tensor(m->gguf, name, n, 0, required, err, failed);
    if (!t) return NULL;
    m->weight_bytes += t->nbytes;
    if (t->type == TL_TYPE_F32) return (const float *)t->data;
    float *f = tl_xmalloc(sizeof(float) * (size_t)n);
    tl_dequantize_row(t->type, t->data, f, n);
    m->owned = tl_xrealloc(m->owned, sizeof(float *) * (size_t)(m->n_owned + 1));
    m->owned[m->n_owned++] = f;
    return f;
}

static tl_mat get_mat(tl_model *m, const char *name, int64_t n_in, int64_t n_out, bool required, tl_error *err,
                      int *failed) {
    tl_mat r = {0};
    const tl_gguf_tensor *t = get_tensor(m->gguf, name, n_in, n_out, required, err, failed);
    if (!t) return r;
    r.data = t->data;
    r.type = t->type;
    r.n_in = n_in;
    r.n_out = n_out;
    r.name = t->name;
    m->weight_bytes += t->nbytes;
    return r;
}

static int bind_weights(tl_model *m, tl_error *err) {
    const tl_config *c = &m->cfg;
    tl_weights *w = &m->w;
    int failed = 0;
    char name[128];
    w->tok_embd = get_mat(m, "token_embd.weight", c->n_embd, c->n_vocab, true, err, &failed);
    if (failed) return -1;
    w->output_norm = get_vec(m, "output_norm.weight", c->n_embd, true, err, &failed);
    if (failed) return -1;
    w->output = get_mat(m, "output.weight", c->n_embd, c->n_vocab, false, err, &failed);
    if (failed) return -1;
    if (!w->output.data) {
        w->output = w->tok_embd;
        w->tied_output = true;
    }
    if (tl_gguf_find_tensor(m->gguf, "rope_freqs.weight")) {
        w->rope_freqs = get_vec(m, "rope_freqs.weight", c->n_rot / 2, true, err, &failed);
        if (failed) return -1;
    }
    const int64_t qdim = (int64_t)c->n_head * c->head_dim_k, kdim = (int64_t)c->n_head_kv * c->head_dim_k;
    const int64_t vdim = (int64_t)c->n_head_kv * c->head_dim_v, odim = (int64_t)c->n_head * c->head_dim_v;
    for (int il = 0; il < c->n_layer && !failed; il++) {
        tl_layer_weights *L = &w->layers[il];
#define NM(s) (snprintf(name, sizeof name, "blk.%d.%s", il, s), name)
        L->attn_norm = get_vec(m, NM("attn_norm.weight"), c->n_embd, true, err, &failed);
        if (!failed) L->ffn_norm = get_vec(m, NM("ffn_norm.weight"), c->n_embd, true, err, &failed);
        if (!failed) L->wq = get_mat(m, NM("attn_q.weight"), c->n_embd, qdim, true, err, &failed);
        if (!failed) L->wk = get_mat(m, NM("attn_k.weight"), c->n_embd, kdim, true, err, &failed);
        if (!failed) L->wv = get_mat(m, NM("attn_v.weight"), c->n_embd, vdim, true, err, &failed);
        if (!failed) L->wo = get_mat(m, NM("attn_output.weight"), odim, c->n_embd, true, err, &failed);
        if (!failed) L->w_gate = get_mat(m, NM("ffn_gate.weight"), c->n_embd, c->n_ff, true, err, &failed);
        if (!failed) L->w_up = get_mat(m, NM("ffn_up.weight"), c->n_embd, c->n_ff, true, err, &failed);
        if (!failed) L->w_down = get_mat(m, NM("ffn_down.weight"), c->n_ff, c->n_embd, true, err, &failed);
        const bool qwen = c->arch == TL_ARCH_QWEN2;
        if (!failed) L->bq = get_vec(m, NM("attn_q.bias"), qdim, qwen, err, &failed);
        if (!failed) L->bk = get_vec(m, NM("attn_k.bias"), kdim, qwen, err, &failed);
        if (!failed) L->bv = get_vec(m, NM("attn_v.bias"), vdim, qwen, err, &failed);
        if (c->arch == TL_ARCH_GEMMA3 && !failed) {
            L->q_norm = get_vec(m, NM("attn_q_norm.weight"), c->head_dim_k, true, err, &failed);
            if (!failed) L->k_norm = get_vec(m, NM("attn_k_norm.weight"), c->head_dim_k, true, err, &failed);
            if (!failed) L->attn_post_norm = get_vec(m, NM("post_attention_norm.weight"), c->n_embd, true, err, &failed);
            if (!failed) L->ffn_post_norm = get_vec(m, NM("post_ffw_norm.weight"), c->n_embd, true, err, &failed);
        }
#undef NM
    }
    if (!w->tied_output) {
        /* tok_embd is only gathered from (one row per token), but count it: it is resident. */
    }
    return failed ? -1 : 0;
}

tl_model *tl_model_load(const char *path, tl_error *err) {
    tl_gguf *g = tl_gguf_open(path, err);
    if (!g) return NULL;
    tl_model *m = tl_xcalloc(1, sizeof *m);
    m->gguf = g;
    if (read_config(g, &m->cfg, err)) goto fail;
    m->tok = tl_tokenizer_load(g, err);
    if (!m->tok) goto fail;
    m->cfg.n_vocab = tl_tok_n_vocab(m->tok);
    {
        /* the embedding matrix decides the logits' size; the vocab must agree */
        const tl_gguf_tensor *te = tl_gguf_find_tensor(g, "token_embd.weight");
        if (te && te->ne[1] != m->cfg.n_vocab) {
            tl_fail(err, "%s: tensor 'token_embd.weight' has %lld rows but the vocabulary has %d tokens", path,
                    (long long)te->ne[1], m->cfg.n_vocab);
            goto fail;
        }
    }
    if (bind_weights(m, err)) goto fail;
    return m;
fail:
    tl_model_free(m);
    return NULL;
}

void tl_model_free(tl_model *m) {
    if (!m) return;
    tl_cuda_weights_free(m->gpu);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    tl_tokenizer_free(m->tok);
    tl_gguf_close(m->gguf);
    free(m);
}

int tl_model_n_vocab(const tl_model *m) { return m->cfg.n_vocab; }
int tl_model_n_ctx_train(const tl_model *m) { return m->cfg.n_ctx_train; }
const char *tl_model_arch(const tl_model *m) { return m->cfg.arch_name; }
