/* model.c: read a model's config from GGUF metadata and bind its tensors, checking every
 * shape and type. Errors name the file and the tensor or key. */
#include "model.h"
#include "../../include/tailor.h"

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

/* What each architecture's files hold and the rules llama.cpp applies to it, one row each. */
typedef struct {
    const char *name;     /* general.architecture */
    tl_arch arch;
    tl_rope_style rope;   /* NORM: adjacent pairs (the converter permuted q/k); NEOX: halves */
    tl_arch_layout layout;
    bool gemma;           /* embeddings times sqrt(n_embd), GELU-tanh FFN */
    int swa_pattern;      /* n > 0: layer il slides when il % n < n - 1 */
    int big_layers;       /* a model with this many layers scales queries by 1/sqrt(n_embd/n_head) */
} arch_info;

static const arch_info archs[] = {
    {"llama", TL_ARCH_LLAMA, TL_ROPE_NORM, {0}, false, 0, 0},
    {"mistral", TL_ARCH_LLAMA, TL_ROPE_NORM, {0}, false, 0, 0},
    {"qwen2", TL_ARCH_QWEN2, TL_ROPE_NEOX, {.qkv_bias = true}, false, 0, 0},
    {"qwen3", TL_ARCH_QWEN3, TL_ROPE_NEOX, {.qk_norm = true}, false, 0, 0},
    {"phi3", TL_ARCH_PHI3, TL_ROPE_NEOX, {.fused = true}, false, 0, 0},
    /* Gemma 2: even layers slide; the 27B model (46 layers) scales queries by 1/sqrt(144) */
    {"gemma2", TL_ARCH_GEMMA2, TL_ROPE_NEOX, {.post_norms = true}, true, 2, 46},
    /* Gemma 3: five sliding layers then one global; the 27B model has 62 layers */
    {"gemma3", TL_ARCH_GEMMA3, TL_ROPE_NEOX, {.qk_norm = true, .post_norms = true}, true, 6, 62},
};

static const arch_info *arch_find(const char *name) {
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++)
        if (!strcmp(archs[i].name, name)) return &archs[i];
    return NULL;
}

static const arch_info *arch_of(tl_arch a) {
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++)
        if (archs[i].arch == a) return &archs[i];
    return NULL;
}

int tl_arch_layout_of(const char *arch, tl_arch_layout *out) {
    const arch_info *ai = arch_find(arch);
    if (!ai) return -1;
    *out = ai->layout;
    return 0;
}

float tl_longrope_attn_factor(int n_ctx, int n_ctx_orig) {
    if (n_ctx_orig <= 1 || n_ctx <= n_ctx_orig) return 1.0f;
    return sqrtf(1.0f + logf((float)n_ctx / (float)n_ctx_orig) / logf((float)n_ctx_orig));
}

static int unsupported_arch(const char *name, tl_error *err) {
    char shown[128], list[160] = "";
    tl_escape(shown, sizeof shown, name, strlen(name), NULL);
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", archs[i].name);
    return tl_fail(err, "architecture '%s' is not supported (supported: %s)", shown, list);
}

int tl_config_arch_rules(tl_config *c, tl_error *err) {
    const arch_info *ai = arch_find(c->arch_name);
    if (!ai) return unsupported_arch(c->arch_name, err);
    c->arch = ai->arch;
    c->rope_style = ai->rope;
    c->embd_scale = c->gelu_ffn = ai->gemma;
    c->rope_base_swa = c->rope_base;
    for (int il = 0; il < c->n_layer; il++) c->layer_swa[il] = false;
    if (ai->swa_pattern > 0 && c->sliding_window > 0)
        for (int il = 0; il < c->n_layer; il++) c->layer_swa[il] = il % ai->swa_pattern < ai->swa_pattern - 1;
    /* phi3: a window shorter than the training context (Phi-3-mini-4k: 2047 of 4096) applies to
     * every layer, as in transformers (llama.cpp ignores it); 262144 (the 128k models) is none */
    if (c->arch == TL_ARCH_PHI3 && c->sliding_window > 0 && c->sliding_window < c->n_ctx_train)
        for (int il = 0; il < c->n_layer; il++) c->layer_swa[il] = true;
    bool any_swa = false;
    for (int il = 0; il < c->n_layer; il++) any_swa |= c->layer_swa[il];
    if (!any_swa) c->sliding_window = 0;
    if (c->arch == TL_ARCH_GEMMA3) c->rope_base_swa = 10000.0f; /* local layers: base 1e4, unscaled */
    const bool big = ai->big_layers > 0 && c->n_layer == ai->big_layers;
    c->attn_scale = 1.0f / sqrtf((float)(big ? c->n_embd / c->n_head : c->head_dim_k));
    return 0;
}

static int read_config(const tl_gguf *g, tl_config *c, tl_error *err) {
    char *arch = NULL;
    if (tl_gguf_get_str(g, "general.architecture", &arch, err)) return -1;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
    const arch_info *ai = arch_find(arch);
    if (!ai) {
        unsupported_arch(arch, err);
        free(arch);
        return tl_fail_prefix(err, "%s", tl_gguf_path(g));
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
            tl_fail(err, "%s: rope scaling type '%s' is not supported (none, linear, llama3 rope_freqs, phi3 LongRoPE factors)",
                    tl_gguf_path(g), shown);
            free(type);
            return -1;
        }
        if (type && !strcmp(type, "linear") && factor > 0.0f) c->rope_freq_scale = 1.0f / factor;
        free(type);
    }
    /* LongRoPE (phi3): the context the model was pre-trained for, and the factor on cos/sin
     * (any architecture may carry it, as in llama.cpp); phi3 files without the factor get the
     * converter's value, sqrt(1 + ln(ctx/orig) / ln(orig)) */
    v = (uint32_t)c->n_ctx_train;
    if (key_u32(g, a, "rope.scaling.original_context_length", &v, false, err)) return -1;
    c->n_ctx_orig = (int)v;
    if (c->n_ctx_orig <= 0)
        return tl_fail(err, "%s: key %s.rope.scaling.original_context_length = %u is not a context length",
                       tl_gguf_path(g), a, v);
    c->rope_attn_factor = ai->arch == TL_ARCH_PHI3 ? tl_longrope_attn_factor(c->n_ctx_train, c->n_ctx_orig) : 1.0f;
    if (key_f32(g, a, "rope.scaling.attn_factor", &c->rope_attn_factor, FLT_MIN, 100, "a positive number <= 100", err))
        return -1;
    c->norm_eps = 1e-5f;
    if (key_f32(g, a, "attention.layer_norm_rms_epsilon", &c->norm_eps, FLT_MIN, 1, "a positive number <= 1", err))
        return -1;
    /* sliding window: gemma3 files must say it; gemma2's default is 4096 (llama.cpp's); phi3's
     * applies when shorter than the context (tl_config_arch_rules) */
    if (ai->arch == TL_ARCH_GEMMA3 || ai->arch == TL_ARCH_GEMMA2 || ai->arch == TL_ARCH_PHI3) {
        uint32_t w = ai->arch == TL_ARCH_GEMMA2 ? 4096 : 0;
        if (key_u32(g, a, "attention.sliding_window", &w, ai->arch == TL_ARCH_GEMMA3, err)) return -1;
        c->sliding_window = (int)w;
        if (c->sliding_window < 0)
            return tl_fail(err, "%s: key %s.attention.sliding_window = %u is too large", tl_gguf_path(g), a, w);
    }
    /* soft-capping (gemma2): llama.cpp's defaults when the keys are absent; 0 turns one off */
    if (ai->arch == TL_ARCH_GEMMA2) {
        c->attn_softcap = 50.0f;
        c->final_softcap = 30.0f;
        if (key_f32(g, a, "attn_logit_softcapping", &c->attn_softcap, 0, 1e6f, "a number in 0..1e6 (0: none)", err) ||
            key_f32(g, a, "final_logit_softcapping", &c->final_softcap, 0, 1e6f, "a number in 0..1e6 (0: none)", err))
            return -1;
    }
    if (tl_config_arch_rules(c, err)) return tl_fail_prefix(err, "%s", tl_gguf_path(g));
    return 0;
}

/* Find a tensor, check its type is usable and its shape is [n_in, n_out] (n_out 0 = 1-D). */
static const tl_gguf_tensor *get_tensor(const tl_model *m, const char *name, int64_t ne0, int64_t ne1, bool required,
                                        tl_error *err, int *failed) {
    const tl_gguf *g = m->gguf;
    const tl_gguf_tensor *t = tl_gguf_find_tensor(g, name);
    if (!t) {
        if (required) {
            tl_fail(err, "%s: tensor '%s' is missing (a %s model needs it)", tl_gguf_path(g), name, m->cfg.arch_name);
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
    const tl_gguf_tensor *t = get_tensor(m, name, n, 0, required, err, failed);
    if (!t) return NULL;
    m->weight_bytes += t->nbytes;
    if (t->type == TL_TYPE_F32) return (const float *)t->data;
    float *f = tl_xmalloc(sizeof(float) * (size_t)n);
    tl_dequantize_row(t->type, t->data, f, n);
    m->owned = tl_xrealloc(m->owned, sizeof(float *) * (size_t)(m->n_owned + 1));
    m->owned[m->n_owned++] = f;
    return f;
}

/* A slot for the matrix's repacked copy where the CPU kernels have one for its type. */
static tl_wpack *new_pack(tl_model *m, tl_type t, int64_t n_in) {
    if (!tl_wpack_wanted(t, n_in)) return NULL;
    tl_wpack *p = tl_wpack_new(tl_gguf_mapped(m->gguf)); /* a file's pages are released once packed */
    m->packs = tl_xrealloc(m->packs, sizeof(tl_wpack *) * (size_t)(m->n_packs + 1));
    m->packs[m->n_packs++] = p;
    return p;
}

static tl_mat get_mat(tl_model *m, const char *name, int64_t n_in, int64_t n_out, bool required, tl_error *err,
                      int *failed) {
    tl_mat r = {0};
    const tl_gguf_tensor *t = get_tensor(m, name, n_in, n_out, required, err, failed);
    if (!t) return r;
    r.data = t->data;
    r.type = t->type;
    r.n_in = n_in;
    r.n_out = n_out;
    r.name = t->name;
    r.pack = new_pack(m, r.type, n_in);
    m->weight_bytes += t->nbytes;
    return r;
}

/* Rows [r0, r0 + n) of a matrix, as a matrix (phi3's fused tensors; no copy of the weights;
 * its own pack slot). */
static tl_mat mat_rows(tl_model *m, const tl_mat *whole, int64_t r0, int64_t n) {
    tl_mat r = *whole;
    r.data = (const uint8_t *)whole->data + (size_t)r0 * tl_row_size(whole->type, whole->n_in);
    r.n_out = n;
    r.pack = new_pack(m, r.type, r.n_in);
    return r;
}

static int bind_weights(tl_model *m, tl_error *err) {
    const tl_config *c = &m->cfg;
    const arch_info *ai = arch_of(c->arch);
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
    w->rope_freqs = get_vec(m, "rope_freqs.weight", c->n_rot / 2, false, err, &failed);
    if (!failed) w->rope_long = get_vec(m, "rope_factors_long.weight", c->n_rot / 2, false, err, &failed);
    if (!failed) w->rope_short = get_vec(m, "rope_factors_short.weight", c->n_rot / 2, false, err, &failed);
    if (failed) return -1;
    const int64_t qdim = (int64_t)c->n_head * c->head_dim_k, kdim = (int64_t)c->n_head_kv * c->head_dim_k;
    const int64_t vdim = (int64_t)c->n_head_kv * c->head_dim_v, odim = (int64_t)c->n_head * c->head_dim_v;
    for (int il = 0; il < c->n_layer && !failed; il++) {
        tl_layer_weights *L = &w->layers[il];
#define NM(s) (snprintf(name, sizeof name, "blk.%d.%s", il, s), name)
        L->attn_norm = get_vec(m, NM("attn_norm.weight"), c->n_embd, true, err, &failed);
        if (!failed) L->ffn_norm = get_vec(m, NM("ffn_norm.weight"), c->n_embd, true, err, &failed);
        if (!failed && ai->layout.fused) {
            const tl_mat qkv = get_mat(m, NM("attn_qkv.weight"), c->n_embd, qdim + kdim + vdim, true, err, &failed);
            if (!failed) {
                L->wq = mat_rows(m, &qkv, 0, qdim);
                L->wk = mat_rows(m, &qkv, qdim, kdim);
                L->wv = mat_rows(m, &qkv, qdim + kdim, vdim);
            }
        } else if (!failed) {
            L->wq = get_mat(m, NM("attn_q.weight"), c->n_embd, qdim, true, err, &failed);
            if (!failed) L->wk = get_mat(m, NM("attn_k.weight"), c->n_embd, kdim, true, err, &failed);
            if (!failed) L->wv = get_mat(m, NM("attn_v.weight"), c->n_embd, vdim, true, err, &failed);
        }
        if (!failed) L->wo = get_mat(m, NM("attn_output.weight"), odim, c->n_embd, true, err, &failed);
        if (!failed && ai->layout.fused) {
            const tl_mat gate_up = get_mat(m, NM("ffn_up.weight"), c->n_embd, 2 * (int64_t)c->n_ff, true, err, &failed);
            if (!failed) {
                L->w_gate = mat_rows(m, &gate_up, 0, c->n_ff);
                L->w_up = mat_rows(m, &gate_up, c->n_ff, c->n_ff);
            }
        } else if (!failed) {
            L->w_gate = get_mat(m, NM("ffn_gate.weight"), c->n_embd, c->n_ff, true, err, &failed);
            if (!failed) L->w_up = get_mat(m, NM("ffn_up.weight"), c->n_embd, c->n_ff, true, err, &failed);
        }
        if (!failed) L->w_down = get_mat(m, NM("ffn_down.weight"), c->n_ff, c->n_embd, true, err, &failed);
        if (!failed) L->bq = get_vec(m, NM("attn_q.bias"), qdim, ai->layout.qkv_bias, err, &failed);
        if (!failed) L->bk = get_vec(m, NM("attn_k.bias"), kdim, ai->layout.qkv_bias, err, &failed);
        if (!failed) L->bv = get_vec(m, NM("attn_v.bias"), vdim, ai->layout.qkv_bias, err, &failed);
        if (ai->layout.qk_norm && !failed) {
            L->q_norm = get_vec(m, NM("attn_q_norm.weight"), c->head_dim_k, true, err, &failed);
            if (!failed) L->k_norm = get_vec(m, NM("attn_k_norm.weight"), c->head_dim_k, true, err, &failed);
        }
        if (ai->layout.post_norms && !failed) {
            L->attn_post_norm = get_vec(m, NM("post_attention_norm.weight"), c->n_embd, true, err, &failed);
            if (!failed) L->ffn_post_norm = get_vec(m, NM("post_ffw_norm.weight"), c->n_embd, true, err, &failed);
        }
#undef NM
    }
    return failed ? -1 : 0;
}

void tl_model_rope_freqs(const tl_model *m, int n_ctx, bool swa, double *inv_freq) {
    const tl_config *c = &m->cfg;
    const bool plain = swa && c->arch == TL_ARCH_GEMMA3;
    const float *ff = m->w.rope_freqs;
    if (!ff) ff = n_ctx > c->n_ctx_orig && m->w.rope_long ? m->w.rope_long : m->w.rope_short;
    for (int i = 0; i < c->n_rot / 2; i++) {
        double f = pow(plain ? c->rope_base_swa : c->rope_base, -2.0 * i / c->n_rot);
        if (!plain) f *= c->rope_freq_scale;
        if (!plain && ff) f /= ff[i];
        inv_freq[i] = f;
    }
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

int tl_model_packed_mats(const tl_model *m, const tl_mat **out) {
    int n = 0;
    for (int il = 0; il < m->cfg.n_layer; il++) {
        const tl_layer_weights *L = &m->w.layers[il];
        const tl_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++) out[n++] = mats[i];
    }
    out[n++] = &m->w.output;
    return n;
}

void tl_model_pack(const tl_model *m, struct tl_pool *pool) {
    const tl_mat *mats[TL_MODEL_MAX_PACKED];
    const int n = tl_model_packed_mats(m, mats);
    for (int i = 0; i < n; i++) tl_wpack_make(mats[i]->pack, pool, mats[i]->type, mats[i]->data, mats[i]->n_in, mats[i]->n_out);
}

void tl_model_cpu_weights(const tl_model *m, uint64_t *file, uint64_t *packed) {
    const tl_mat *mats[TL_MODEL_MAX_PACKED];
    const int n = tl_model_packed_mats(m, mats);
    *file = m->weight_bytes;
    *packed = 0;
    for (int i = 0; i < n; i++) {
        const tl_mat *w = mats[i];
        *packed += tl_wpack_bytes(w->pack);
        if (tl_wpack_released(w->pack)) *file -= tl_row_size(w->type, w->n_in) * (uint64_t)w->n_out;
    }
}

void tl_mat_get_row(const tl_mat *w, int64_t row, float *dst) {
    if (w->pack && tl_wpack_bytes(w->pack)) { /* the file's pages were released: the copy's bytes */
        const size_t rs = tl_row_size(w->type, w->n_in);
        uint8_t stack[4096], *buf = rs <= sizeof stack ? stack : tl_xmalloc(rs);
        if (tl_wpack_get_row(w->pack, row, buf)) {
            tl_dequantize_row(w->type, buf, dst, w->n_in);
            if (buf != stack) free(buf);
            return;
        }
        if (buf != stack) free(buf);
    }
    tl_get_row(w->type, w->data, w->n_in, row, dst);
}

void tl_model_free(tl_model *m) {
    if (!m) return;
    if (m->dev_weights) m->dev_weights_free(m->dev_weights);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    for (int i = 0; i < m->n_packs; i++) tl_wpack_free(m->packs[i]);
    free(m->packs);
    tl_tokenizer_free(m->tok);
    tl_gguf_close(m->gguf);
    free(m);
}

int tl_model_n_vocab(const tl_model *m) { return m->cfg.n_vocab; }
int tl_model_n_ctx_train(const tl_model *m) { return m->cfg.n_ctx_train; }
int tl_model_n_layer(const tl_model *m) { return m->cfg.n_layer; }
const char *tl_model_arch(const tl_model *m) { return m->cfg.arch_name; }
const tl_tokenizer *tl_model_tokenizer(const tl_model *m) { return m->tok; }
uint64_t tl_model_weight_bytes(const tl_model *m) { return m->weight_bytes; }

char *tl_model_meta_str(const tl_model *m, const char *key) {
    char *v = NULL;
    if (tl_gguf_opt_str(m->gguf, key, &v, NULL)) return NULL; /* not a string */
    return v;
}

uint64_t tl_model_decode_weight_bytes(const tl_model *m) {
    const tl_mat *e = &m->w.tok_embd;
    return m->weight_bytes - (m->w.tied_output ? 0 : tl_row_size(e->type, e->n_in) * (uint64_t)e->n_out);
}
