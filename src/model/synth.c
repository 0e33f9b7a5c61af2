/* synth.c: synthetic GGUF models with real models' shapes, and memory projections (synth.h).
 *
 * Writing: the metadata goes through tl_gguf_writer (so every key type, and tokenizer keys
 * copied verbatim from another file, are serialized by the one GGUF writer); tensor data is
 * then streamed, one block of rows at a time, because tl_gguf_write needs every tensor's
 * bytes in memory at once (16 GB for an f16 8B model). The writer emits the metadata into a
 * small side file ending with a sentinel key; we take its key/value bytes, drop the sentinel,
 * and write header + metadata + tensor infos + generated data ourselves in the same layout
 * (GGUF v3, alignment 32, tensors packed in order, each aligned). */
#define _GNU_SOURCE
#include "synth.h"
#include "../base/threads.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Public configs (config.json of each model on the Hugging Face hub). */
#define LLAMA3_ROPE(f) .rope_factor = (f), .rope_low_freq = 1.0f, .rope_high_freq = 4.0f, .rope_orig_ctx = 8192
static const tl_synth_shape shapes[] = {
    {.name = "llama-3.1-8b", .arch = "llama", .source = "meta-llama/Llama-3.1-8B", .n_layer = 32, .n_embd = 4096,
     .n_ff = 14336, .n_head = 32, .n_head_kv = 8, .head_dim = 128, .n_vocab = 128256, .n_ctx = 131072,
     .rope_base = 500000.0f, .norm_eps = 1e-5f, LLAMA3_ROPE(8.0f)},
    {.name = "llama-3.2-1b", .arch = "llama", .source = "meta-llama/Llama-3.2-1B", .n_layer = 16, .n_embd = 2048,
     .n_ff = 8192, .n_head = 32, .n_head_kv = 8, .head_dim = 64, .n_vocab = 128256, .n_ctx = 131072,
     .rope_base = 500000.0f, .norm_eps = 1e-5f, .tied = true, LLAMA3_ROPE(32.0f)},
    {.name = "llama-3.2-3b", .arch = "llama", .source = "meta-llama/Llama-3.2-3B", .n_layer = 28, .n_embd = 3072,
     .n_ff = 8192, .n_head = 24, .n_head_kv = 8, .head_dim = 128, .n_vocab = 128256, .n_ctx = 131072,
     .rope_base = 500000.0f, .norm_eps = 1e-5f, .tied = true, LLAMA3_ROPE(32.0f)},
    {.name = "qwen2.5-0.5b", .arch = "qwen2", .source = "Qwen/Qwen2.5-0.5B", .n_layer = 24, .n_embd = 896,
     .n_ff = 4864, .n_head = 14, .n_head_kv = 2, .head_dim = 64, .n_vocab = 151936, .n_ctx = 32768,
     .rope_base = 1000000.0f, .norm_eps = 1e-6f, .tied = true},
    {.name = "qwen2.5-7b", .arch = "qwen2", .source = "Qwen/Qwen2.5-7B", .n_layer = 28, .n_embd = 3584,
     .n_ff = 18944, .n_head = 28, .n_head_kv = 4, .head_dim = 128, .n_vocab = 152064, .n_ctx = 32768,
     .rope_base = 1000000.0f, .norm_eps = 1e-6f},
    {.name = "qwen3-8b", .arch = "qwen3", .source = "Qwen/Qwen3-8B", .n_layer = 36, .n_embd = 4096, .n_ff = 12288,
     .n_head = 32, .n_head_kv = 8, .head_dim = 128, .n_vocab = 151936, .n_ctx = 40960, .rope_base = 1000000.0f,
     .norm_eps = 1e-6f},
    /* v0.3 (vocab 32768); GGUF conversions of Mistral use the llama architecture */
    {.name = "mistral-7b", .arch = "llama", .source = "mistralai/Mistral-7B-v0.3", .n_layer = 32, .n_embd = 4096,
     .n_ff = 14336, .n_head = 32, .n_head_kv = 8, .head_dim = 128, .n_vocab = 32768, .n_ctx = 32768,
     .rope_base = 1000000.0f, .norm_eps = 1e-5f},
    /* LongRoPE from 4096 to 131072 tokens; sliding_window 262144 (>= the context: none) */
    {.name = "phi-3-mini-128k", .arch = "phi3", .source = "microsoft/Phi-3-mini-128k-instruct", .n_layer = 32,
     .n_embd = 3072, .n_ff = 8192, .n_head = 32, .n_head_kv = 32, .head_dim = 96, .n_vocab = 32064, .n_ctx = 131072,
     .rope_base = 10000.0f, .norm_eps = 1e-5f, .longrope_ctx = 4096, .sliding_window = 262144},
    /* even layers slide over 4096 tokens; scores soft-capped at 50, logits at 30 */
    {.name = "gemma-2-9b", .arch = "gemma2", .source = "google/gemma-2-9b", .n_layer = 42, .n_embd = 3584,
     .n_ff = 14336, .n_head = 16, .n_head_kv = 8, .head_dim = 256, .n_vocab = 256000, .n_ctx = 8192,
     .rope_base = 10000.0f, .norm_eps = 1e-6f, .tied = true, .sliding_window = 4096, .attn_softcap = 50.0f,
     .final_softcap = 30.0f},
    {.name = "smollm2-135m", .arch = "llama", .source = "HuggingFaceTB/SmolLM2-135M", .n_layer = 30, .n_embd = 576,
     .n_ff = 1536, .n_head = 9, .n_head_kv = 3, .head_dim = 64, .n_vocab = 49152, .n_ctx = 8192,
     .rope_base = 100000.0f, .norm_eps = 1e-5f, .tied = true},
};
#undef LLAMA3_ROPE

size_t tl_synth_n_shapes(void) { return sizeof shapes / sizeof *shapes; }
const tl_synth_shape *tl_synth_shape_at(size_t i) { return i < tl_synth_n_shapes() ? &shapes[i] : NULL; }

const tl_synth_shape *tl_synth_find_shape(const char *name) {
    for (size_t i = 0; i < tl_synth_n_shapes(); i++)
        if (!strcmp(shapes[i].name, name)) return &shapes[i];
    return NULL;
}

void tl_synth_config(const tl_synth_shape *s, int n_layer, int n_vocab, int n_ctx, tl_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->arch_name, sizeof c->arch_name, "%s", s->arch);
    c->n_vocab = n_vocab > 0 ? n_vocab : s->n_vocab;
    c->n_embd = s->n_embd;
    c->n_layer = n_layer > 0 ? n_layer : s->n_layer;
    c->n_head = s->n_head;
    c->n_head_kv = s->n_head_kv;
    c->head_dim_k = c->head_dim_v = s->head_dim;
    c->n_ff = s->n_ff;
    c->n_ctx_train = n_ctx > 0 ? n_ctx : s->n_ctx;
    c->norm_eps = s->norm_eps;
    c->n_rot = s->head_dim;
    c->rope_base = s->rope_base;
    c->rope_freq_scale = 1.0f;
    c->n_ctx_orig = s->longrope_ctx > 0 ? s->longrope_ctx : c->n_ctx_train;
    c->rope_attn_factor = s->longrope_ctx > 0 ? tl_longrope_attn_factor(s->n_ctx, s->longrope_ctx) : 1.0f;
    c->sliding_window = s->sliding_window;
    c->attn_softcap = s->attn_softcap;
    c->final_softcap = s->final_softcap;
    /* the table holds supported architectures only (test_synth loads each) */
    tl_config_arch_rules(c, NULL);
}

void tl_synth_llama3_rope_factors(const tl_synth_shape *s, float *out) {
    /* float32 throughout, as the converter's torch tensors are */
    const int dim = s->head_dim;
    const float low_wavelen = (float)s->rope_orig_ctx / s->rope_low_freq;
    const float high_wavelen = (float)s->rope_orig_ctx / s->rope_high_freq;
    for (int i = 0; i < dim / 2; i++) {
        const float freq = 1.0f / powf(s->rope_base, (float)(2 * i) / (float)dim);
        const float wavelen = (float)(2.0 * M_PI) / freq;
        if (wavelen < high_wavelen) out[i] = 1.0f;
        else if (wavelen > low_wavelen) out[i] = s->rope_factor;
        else {
            const float smooth = ((float)s->rope_orig_ctx / wavelen - s->rope_low_freq) /
                                 (s->rope_high_freq - s->rope_low_freq);
            out[i] = 1.0f / ((1.0f - smooth) / s->rope_factor + smooth);
        }
    }
}

void tl_synth_longrope_factors(const tl_synth_shape *s, bool long_factors, float *out) {
    const int half = s->head_dim / 2;
    const float ratio = s->longrope_ctx > 0 ? (float)s->n_ctx / (float)s->longrope_ctx : 1.0f;
    for (int i = 0; i < half; i++) {
        const float x = half > 1 ? (float)i / (float)(half - 1) : 0.0f;
        out[i] = long_factors ? 1.0f + (ratio - 1.0f) * x * x : 1.0f;
    }
}

int tl_synth_parse_type(const char *name, tl_type *out, tl_error *err) {
    static const struct {
        const char *name;
        tl_type t;
    } types[] = {{"f32", TL_TYPE_F32},   {"f16", TL_TYPE_F16},   {"bf16", TL_TYPE_BF16},  {"q8_0", TL_TYPE_Q8_0},
                 {"q4_0", TL_TYPE_Q4_0}, {"q4_1", TL_TYPE_Q4_1}, {"q5_0", TL_TYPE_Q5_0},  {"q5_1", TL_TYPE_Q5_1},
                 {"q4_K", TL_TYPE_Q4_K}, {"q5_K", TL_TYPE_Q5_K}, {"q6_K", TL_TYPE_Q6_K},  {"w4g128", TL_TYPE_W4G128}};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (!strcasecmp(name, types[i].name)) {
            *out = types[i].t;
            return 0;
        }
    return tl_fail(err, "'%s' is not one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K, w4g128", name);
}

int tl_synth_parse_weights(const char *name, tl_synth_params *p, tl_error *err) {
    p->q4_k_m = !strcasecmp(name, "q4_K_M");
    if (p->q4_k_m) {
        p->type = TL_TYPE_Q4_K;
        return 0;
    }
    if (!tl_synth_parse_type(name, &p->type, err)) return 0;
    return tl_fail(err, "'%s' is not one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K, w4g128, q4_K_M",
                   name);
}

/* llama.cpp's use_more_bits: the layers whose attn_v / ffn_down a Q4_K_M file keeps in q6_K
 * (the first and last eighth, every third one between: half of them). */
static bool more_bits(int il, int n_layer) {
    return il < n_layer / 8 || il >= 7 * n_layer / 8 || (il - n_layer / 8) % 3 == 2;
}

/* ---- The tensor list ---- */
typedef enum { T_MATRIX, T_ONES, T_BIAS, T_ROPE, T_LONGROPE_LONG, T_LONGROPE_SHORT } tensor_kind;

typedef struct {
    char name[64];
    tensor_kind kind;
    tl_type type;
    uint32_t n_dims;
    int64_t ne[2];
    float std;
    uint64_t nbytes, offset;
} synth_tensor;

typedef struct {
    synth_tensor *t;
    int n, cap;
} tensor_list;

static void add(tensor_list *l, const char *name, tensor_kind kind, tl_type type, int64_t ne0, int64_t ne1, float std) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->t = tl_xrealloc(l->t, sizeof *l->t * (size_t)l->cap);
    }
    synth_tensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->type = kind == T_MATRIX ? type : TL_TYPE_F32;
    t->n_dims = ne1 > 0 ? 2 : 1;
    t->ne[0] = ne0;
    t->ne[1] = ne1 > 0 ? ne1 : 1;
    t->std = std;
    t->nbytes = tl_row_size(t->type, ne0) * (uint64_t)t->ne[1];
}

/* llama.cpp's tensor names and order, with the architecture's own tensors (tl_arch_layout).
 * Std 0.02 for matrices (GPT-2 init), output projections scaled by 1/sqrt(2 n_layer) so the
 * residual stream grows slowly; norms 1. */
static void build_tensors(const tl_synth_shape *s, tl_type type, bool q4_k_m, int n_layer, int n_vocab, tensor_list *l) {
    const int64_t E = s->n_embd, F = s->n_ff, qd = (int64_t)s->n_head * s->head_dim,
                  kd = (int64_t)s->n_head_kv * s->head_dim;
    const float std = 0.02f, std_out = 0.02f / sqrtf(2.0f * (float)n_layer);
    tl_arch_layout lay = {0};
    tl_arch_layout_of(s->arch, &lay); /* the table holds supported architectures only */
    add(l, "token_embd.weight", T_MATRIX, type, E, n_vocab, std);
    if (s->rope_factor > 0) add(l, "rope_freqs.weight", T_ROPE, TL_TYPE_F32, s->head_dim / 2, 0, 0);
    if (s->longrope_ctx > 0) {
        add(l, "rope_factors_long.weight", T_LONGROPE_LONG, TL_TYPE_F32, s->head_dim / 2, 0, 0);
        add(l, "rope_factors_short.weight", T_LONGROPE_SHORT, TL_TYPE_F32, s->head_dim / 2, 0, 0);
    }
    add(l, "output_norm.weight", T_ONES, TL_TYPE_F32, E, 0, 0);
    if (!s->tied) add(l, "output.weight", T_MATRIX, q4_k_m ? TL_TYPE_Q6_K : type, E, n_vocab, std);
    char nm[64];
    for (int il = 0; il < n_layer; il++) {
#define NM(x) (snprintf(nm, sizeof nm, "blk.%d.%s", il, x), nm)
        const tl_type more = q4_k_m && more_bits(il, n_layer) ? TL_TYPE_Q6_K : type;
        add(l, NM("attn_norm.weight"), T_ONES, TL_TYPE_F32, E, 0, 0);
        if (lay.fused) {
            add(l, NM("attn_qkv.weight"), T_MATRIX, type, E, qd + 2 * kd, std);
        } else {
            add(l, NM("attn_q.weight"), T_MATRIX, type, E, qd, std);
            if (lay.qkv_bias) add(l, NM("attn_q.bias"), T_BIAS, TL_TYPE_F32, qd, 0, std);
            add(l, NM("attn_k.weight"), T_MATRIX, type, E, kd, std);
            if (lay.qkv_bias) add(l, NM("attn_k.bias"), T_BIAS, TL_TYPE_F32, kd, 0, std);
            add(l, NM("attn_v.weight"), T_MATRIX, more, E, kd, std);
            if (lay.qkv_bias) add(l, NM("attn_v.bias"), T_BIAS, TL_TYPE_F32, kd, 0, std);
        }
        if (lay.qk_norm) {
            add(l, NM("attn_q_norm.weight"), T_ONES, TL_TYPE_F32, s->head_dim, 0, 0);
            add(l, NM("attn_k_norm.weight"), T_ONES, TL_TYPE_F32, s->head_dim, 0, 0);
        }
        add(l, NM("attn_output.weight"), T_MATRIX, type, qd, E, std_out);
        if (lay.post_norms) add(l, NM("post_attention_norm.weight"), T_ONES, TL_TYPE_F32, E, 0, 0);
        add(l, NM("ffn_norm.weight"), T_ONES, TL_TYPE_F32, E, 0, 0);
        if (lay.fused) {
            add(l, NM("ffn_up.weight"), T_MATRIX, type, E, 2 * F, std);
        } else {
            add(l, NM("ffn_gate.weight"), T_MATRIX, type, E, F, std);
            add(l, NM("ffn_up.weight"), T_MATRIX, type, E, F, std);
        }
        add(l, NM("ffn_down.weight"), T_MATRIX, more, F, E, std_out);
        if (lay.post_norms) add(l, NM("post_ffw_norm.weight"), T_ONES, TL_TYPE_F32, E, 0, 0);
#undef NM
    }
}

uint64_t tl_synth_weight_bytes(const tl_synth_shape *s, tl_type type, int n_layer, int n_vocab) {
    tensor_list l = {0};
    build_tensors(s, type, false, n_layer > 0 ? n_layer : s->n_layer, n_vocab > 0 ? n_vocab : s->n_vocab, &l);
    uint64_t sum = 0;
    for (int i = 0; i < l.n; i++) sum += l.t[i].nbytes;
    free(l.t);
    return sum;
}

/* ---- Random numbers: splitmix64 (one stream per tensor, so the order of writing does not
 * matter), approximate normals as a sum of four 16-bit uniforms (Irwin-Hall, fast). ---- */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill_normal(uint64_t *rng, float *out, int64_t n, float std) {
    /* sum of 4 uniforms on [0, 65535]: mean 131070, sd ~ 65536/sqrt(3) */
    const float k = std * 1.7320508f / 65536.0f;
    for (int64_t i = 0; i < n; i++) {
        const uint64_t r = splitmix64(rng);
        const int64_t sum = (int64_t)(r & 0xffff) + (int64_t)((r >> 16) & 0xffff) + (int64_t)((r >> 32) & 0xffff) +
                            (int64_t)(r >> 48);
        out[i] = (float)(sum - 131070) * k;
    }
}

/* ---- Metadata ---- */
static int file_type_of(tl_type t) {
    switch (t) {
    case TL_TYPE_F32: return 0;
    case TL_TYPE_F16: return 1;
    case TL_TYPE_Q4_0: return 2;
    case TL_TYPE_Q4_1: return 3;
    case TL_TYPE_Q8_0: return 7;
    case TL_TYPE_Q5_0: return 8;
    case TL_TYPE_Q5_1: return 9;
    case TL_TYPE_Q4_K: return 15;
    case TL_TYPE_Q5_K: return 17;
    case TL_TYPE_Q6_K: return 18;
    case TL_TYPE_BF16: return 32;
    case TL_TYPE_W4G128: return 1024; /* LLAMA_FTYPE_GUESSED: tailor's own format (as tailor quantize) */
    default: return -1;
    }
}

/* GPT-2's byte-to-unicode map: printable bytes stand for themselves, the rest map to 256+k
 * in byte order. Writes the UTF-8 of byte b's character; returns its length. */
static int byte_token(int b, char *out) {
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) cp = b;
    else {
        int k = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    out[2] = 0;
    return 2;
}

/* Byte-level fallback vocabulary: 256 byte tokens, <|bos|>, <|eos|>, control fillers. */
static void put_fallback_vocab(tl_gguf_writer *w, int n_vocab) {
    char **toks = tl_xmalloc(sizeof(char *) * (size_t)n_vocab);
    int32_t *types = tl_xmalloc(sizeof(int32_t) * (size_t)n_vocab);
    for (int i = 0; i < n_vocab; i++) {
        char buf[32];
        if (i < 256) {
            byte_token(i, buf);
            types[i] = 1; /* normal */
        } else {
            if (i == 256) snprintf(buf, sizeof buf, "<|bos|>");
            else if (i == 257) snprintf(buf, sizeof buf, "<|eos|>");
            else snprintf(buf, sizeof buf, "<|extra_%d|>", i - 258);
            types[i] = 3; /* control */
        }
        toks[i] = tl_xstrdup(buf);
    }
    tl_gguf_w_str(w, "tokenizer.ggml.model", "gpt2");
    tl_gguf_w_str(w, "tokenizer.ggml.pre", "default");
    tl_gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, NULL, (uint64_t)n_vocab);
    tl_gguf_w_arr(w, "tokenizer.ggml.token_type", TL_GGUF_INT32, types, (uint64_t)n_vocab);
    /* llama.cpp requires the key, not any merge: without merges text tokenizes to bytes */
    const char *none[1] = {""};
    tl_gguf_w_arr_str(w, "tokenizer.ggml.merges", none, NULL, 0);
    tl_gguf_w_u32(w, "tokenizer.ggml.bos_token_id", 256);
    tl_gguf_w_u32(w, "tokenizer.ggml.eos_token_id", 257);
    tl_gguf_w_bool(w, "tokenizer.ggml.add_bos_token", true);
    tl_gguf_w_bool(w, "tokenizer.ggml.add_eos_token", false);
    for (int i = 0; i < n_vocab; i++) free(toks[i]);
    free(toks);
    free(types);
}

#define SENTINEL_KEY "tailor.synth.sentinel"
#define SENTINEL_VAL 0x5EA1ED5Bu

/* Serialize the metadata with tl_gguf_writer into a side file, and return its key/value bytes
 * (without the sentinel) and count. */
static int metadata_bytes(tl_gguf_writer *w, const char *path, uint8_t **kv, size_t *kv_len, uint64_t *n_kv,
                          tl_error *err) {
    tl_gguf_w_u32(w, SENTINEL_KEY, SENTINEL_VAL);
    size_t plen = strlen(path) + 48;
    char *side = tl_xmalloc(plen);
    snprintf(side, plen, "%s.meta.%ld", path, (long)getpid());
    if (tl_gguf_write(w, side, err)) {
        free(side);
        return -1;
    }
    FILE *f = fopen(side, "rb");
    uint8_t *buf = NULL;
    long n = -1;
    if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 24 && fseek(f, 0, SEEK_SET) == 0) {
        buf = tl_xmalloc((size_t)n);
        if (fread(buf, 1, (size_t)n, f) != (size_t)n) n = -1;
    }
    if (f) fclose(f);
    unlink(side);
    free(side);
    if (n < 24) {
        free(buf);
        return tl_fail(err, "%s: cannot read back the metadata just written", path);
    }
    /* the sentinel is the last key: 8-byte length, name, type uint32, value; only zero
     * padding (< alignment) follows it */
    uint8_t pat[8 + sizeof SENTINEL_KEY - 1 + 8];
    const uint64_t klen = sizeof SENTINEL_KEY - 1;
    for (int i = 0; i < 8; i++) pat[i] = (uint8_t)(klen >> (8 * i));
    memcpy(pat + 8, SENTINEL_KEY, klen);
    const uint32_t tv[2] = {TL_GGUF_UINT32, SENTINEL_VAL}; /* little-endian host */
    memcpy(pat + 8 + klen, tv, 8);
    long at = -1;
    for (long p = n - (long)sizeof pat; p >= 24 && p >= n - (long)sizeof pat - 256; p--)
        if (!memcmp(buf + p, pat, sizeof pat)) {
            at = p;
            break;
        }
    uint64_t count;
    memcpy(&count, buf + 16, 8);
    if (at < 0 || count < 1) {
        free(buf);
        return tl_fail(err, "%s: metadata sentinel not found in the serialized header", path);
    }
    *kv_len = (size_t)(at - 24);
    *kv = tl_xmalloc(*kv_len ? *kv_len : 1);
    memcpy(*kv, buf + 24, *kv_len);
    *n_kv = count - 1;
    free(buf);
    return 0;
}

/* fwrite that remembers the first error */
typedef struct {
    FILE *f;
    uint64_t pos;
    int err;
} out_t;

static void out_bytes(out_t *o, const void *p, size_t n) {
    if (n && !o->err && fwrite(p, 1, n, o->f) != n) o->err = errno ? errno : EIO;
    o->pos += n;
}

static void out_le(out_t *o, uint64_t v, int n) {
    uint8_t b[8];
    for (int i = 0; i < n; i++) b[i] = (uint8_t)(v >> (8 * i));
    out_bytes(o, b, (size_t)n);
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static void out_pad(out_t *o, uint64_t a) {
    static const uint8_t zeros[64];
    uint64_t n = align_up(o->pos, a) - o->pos;
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        out_bytes(o, zeros, k);
        n -= k;
    }
}

typedef struct {
    const synth_tensor *t;
    const float *rows;
    uint8_t *buf;
    size_t rb;
} quant_job;

static void quant_rows(void *ctx, int64_t r, int thread_id) {
    (void)thread_id;
    const quant_job *j = ctx;
    tl_quantize_row(j->t->type, j->rows + (size_t)r * j->t->ne[0], j->buf + (size_t)r * j->rb, j->t->ne[0]);
}

/* Generate one tensor's data block by block and write it: the values row after row from the
 * tensor's random stream, then the rows of a block quantized by the pool's threads (the
 * K-quants' reference quantizers are slow: one thread takes minutes for an 8B model). */
static void write_tensor(out_t *o, const synth_tensor *t, uint64_t seed, int index, const tl_synth_shape *s,
                         tl_pool *pool, uint8_t *buf, size_t buf_bytes, float *rows, size_t rows_bytes, uint64_t *done,
                         uint64_t total, bool progress, int *last_pct) {
    uint64_t rng = seed * 0x2545F4914F6CDD1Dull + (uint64_t)index * 0x9E3779B97F4A7C15ull + 1;
    const size_t rb = tl_row_size(t->type, t->ne[0]);
    const int64_t rows_per_block =
        TL_MAX(1, TL_MIN((int64_t)(buf_bytes / rb), (int64_t)(rows_bytes / (sizeof(float) * (size_t)t->ne[0]))));
    for (int64_t r0 = 0; r0 < t->ne[1] && !o->err; r0 += rows_per_block) {
        const int64_t nr = TL_MIN(rows_per_block, t->ne[1] - r0);
        for (int64_t r = 0; r < nr; r++) {
            float *row = rows + (size_t)r * t->ne[0];
            switch (t->kind) {
            case T_MATRIX:
            case T_BIAS: fill_normal(&rng, row, t->ne[0], t->std); break;
            case T_ONES:
                for (int64_t i = 0; i < t->ne[0]; i++) row[i] = 1.0f;
                break;
            case T_ROPE: tl_synth_llama3_rope_factors(s, row); break;
            case T_LONGROPE_LONG: tl_synth_longrope_factors(s, true, row); break;
            case T_LONGROPE_SHORT: tl_synth_longrope_factors(s, false, row); break;
            }
        }
        quant_job job = {t, rows, buf, rb};
        tl_pool_run(pool, nr, quant_rows, &job);
        out_bytes(o, buf, (size_t)nr * rb);
        *done += (uint64_t)nr * rb;
        const int pct = (int)(100.0 * (double)*done / (double)(total ? total : 1));
        if (progress && pct != *last_pct) {
            *last_pct = pct;
            fprintf(stderr, "\rsynth: %.0f of %.0f MiB (%d%%)", (double)*done / 1048576.0, (double)total / 1048576.0,
                    pct);
        }
    }
}

int tl_synth_write(const tl_synth_params *p, const char *path, tl_error *err) {
    const tl_synth_shape *s = p->shape;
    if (!s) return tl_fail(err, "synth: no shape given");
    const tl_type_traits *tr = tl_type_info(p->type);
    if (!tr || file_type_of(p->type) < 0)
        return tl_fail(err, "synth: weight type %s cannot be written", tl_type_name(p->type));
    if (s->n_embd % tr->block_size || s->n_ff % tr->block_size || (s->n_head * s->head_dim) % tr->block_size)
        return tl_fail(err, "synth: %s rows (%d, %d) are not multiples of the %s block size %d", s->name, s->n_embd,
                       s->n_ff, tr->name, tr->block_size);
    const int n_layer = p->n_layer > 0 ? p->n_layer : s->n_layer;
    const int n_ctx = p->n_ctx > 0 ? p->n_ctx : s->n_ctx;
    if (n_layer > TL_MAX_LAYERS) return tl_fail(err, "synth: %d layers (at most %d)", n_layer, TL_MAX_LAYERS);

    tl_gguf *vocab = NULL;
    int n_vocab = s->n_vocab;
    if (p->vocab_path) {
        if (!(vocab = tl_gguf_open(p->vocab_path, err))) return tl_fail_prefix(err, "--vocab");
        const tl_gguf_value *toks = tl_gguf_find(vocab, "tokenizer.ggml.tokens");
        if (!toks || toks->type != TL_GGUF_ARRAY || toks->v.arr.elem_type != TL_GGUF_STRING || toks->v.arr.n == 0 ||
            toks->v.arr.n > (1u << 24)) {
            tl_fail(err, "--vocab %s: no usable tokenizer.ggml.tokens array", p->vocab_path);
            tl_gguf_close(vocab);
            return -1;
        }
        n_vocab = (int)toks->v.arr.n;
    }

    /* metadata, in llama.cpp's key names */
    tl_gguf_writer *w = tl_gguf_writer_new();
    char key[128], name[160];
    const char *a = s->arch;
#define K(x) (snprintf(key, sizeof key, "%s.%s", a, x), key)
    tl_gguf_w_str(w, "general.architecture", a);
    snprintf(name, sizeof name, "synthetic %s (random weights, shapes of %s)", s->name, s->source);
    tl_gguf_w_str(w, "general.name", name);
    tl_gguf_w_u32(w, "general.file_type", p->q4_k_m ? 15u /* MOSTLY_Q4_K_M */ : (uint32_t)file_type_of(p->type));
    if (tr->block_size > 1) tl_gguf_w_u32(w, "general.quantization_version", 2);
    tl_gguf_w_u32(w, K("vocab_size"), (uint32_t)n_vocab);
    tl_gguf_w_u32(w, K("context_length"), (uint32_t)n_ctx);
    tl_gguf_w_u32(w, K("embedding_length"), (uint32_t)s->n_embd);
    tl_gguf_w_u32(w, K("block_count"), (uint32_t)n_layer);
    tl_gguf_w_u32(w, K("feed_forward_length"), (uint32_t)s->n_ff);
    tl_gguf_w_u32(w, K("attention.head_count"), (uint32_t)s->n_head);
    tl_gguf_w_u32(w, K("attention.head_count_kv"), (uint32_t)s->n_head_kv);
    tl_gguf_w_u32(w, K("attention.key_length"), (uint32_t)s->head_dim);
    tl_gguf_w_u32(w, K("attention.value_length"), (uint32_t)s->head_dim);
    tl_gguf_w_u32(w, K("rope.dimension_count"), (uint32_t)s->head_dim);
    tl_gguf_w_f32(w, K("rope.freq_base"), s->rope_base);
    tl_gguf_w_f32(w, K("attention.layer_norm_rms_epsilon"), s->norm_eps);
    if (s->sliding_window > 0) tl_gguf_w_u32(w, K("attention.sliding_window"), (uint32_t)s->sliding_window);
    if (s->attn_softcap > 0) tl_gguf_w_f32(w, K("attn_logit_softcapping"), s->attn_softcap);
    if (s->final_softcap > 0) tl_gguf_w_f32(w, K("final_logit_softcapping"), s->final_softcap);
    if (s->longrope_ctx > 0) {
        tl_gguf_w_u32(w, K("rope.scaling.original_context_length"), (uint32_t)s->longrope_ctx);
        tl_gguf_w_f32(w, K("rope.scaling.attn_factor"), tl_longrope_attn_factor(s->n_ctx, s->longrope_ctx));
    }
#undef K
    if (vocab) {
        for (int64_t i = 0; i < tl_gguf_n_kv(vocab); i++) {
            size_t len;
            const char *k = tl_gguf_key_name(vocab, i, &len);
            if (len > 10 && !memcmp(k, "tokenizer.", 10)) tl_gguf_w_copy_kv(w, vocab, i);
        }
    } else {
        put_fallback_vocab(w, n_vocab);
    }
    uint8_t *kv = NULL;
    size_t kv_len = 0;
    uint64_t n_kv = 0;
    int rc = metadata_bytes(w, path, &kv, &kv_len, &n_kv, err);
    tl_gguf_writer_free(w);
    tl_gguf_close(vocab);
    if (rc) return -1;

    tensor_list l = {0};
    build_tensors(s, p->type, p->q4_k_m, n_layer, n_vocab, &l);
    const uint64_t align = 32;
    uint64_t off = 0, total = 0;
    int64_t max_row = 0;
    for (int i = 0; i < l.n; i++) {
        l.t[i].offset = off;
        off = align_up(off + l.t[i].nbytes, align);
        total += l.t[i].nbytes;
        max_row = TL_MAX(max_row, l.t[i].ne[0]);
    }

    tl_outfile of;
    if (tl_outfile_open(&of, path, NULL, err)) {
        free(kv);
        free(l.t);
        return -1;
    }
    out_t o = {of.f, 0, 0};
    out_bytes(&o, "GGUF", 4);
    out_le(&o, 3, 4);
    out_le(&o, (uint64_t)l.n, 8);
    out_le(&o, n_kv, 8);
    out_bytes(&o, kv, kv_len);
    free(kv);
    for (int i = 0; i < l.n; i++) {
        const synth_tensor *t = &l.t[i];
        out_le(&o, strlen(t->name), 8);
        out_bytes(&o, t->name, strlen(t->name));
        out_le(&o, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) out_le(&o, (uint64_t)t->ne[d], 8);
        out_le(&o, (uint64_t)t->type, 4);
        out_le(&o, t->offset, 8);
    }
    out_pad(&o, align);

    const size_t buf_bytes = 8u << 20, rows_bytes = TL_MAX((size_t)16 << 20, sizeof(float) * (size_t)max_row);
    uint8_t *buf = tl_xmalloc(buf_bytes + tl_row_size(TL_TYPE_F32, max_row));
    float *rows = tl_xmalloc(rows_bytes);
    tl_pool *pool = tl_pool_new(0);
    uint64_t done = 0;
    int last_pct = -1;
    const bool progress = p->progress && total > (256u << 20);
    for (int i = 0; i < l.n && !o.err; i++) {
        write_tensor(&o, &l.t[i], p->seed, i, s, pool, buf, buf_bytes, rows, rows_bytes, &done, total, progress, &last_pct);
        out_pad(&o, align);
    }
    if (progress) fprintf(stderr, "\n");
    tl_pool_free(pool);
    free(buf);
    free(rows);
    free(l.t);

    if (o.err) {
        tl_fail(err, "%s: writing %s failed: %s", path, of.tmp, strerror(o.err));
        tl_outfile_abort(&of);
        return -1;
    }
    return tl_outfile_commit(&of, err);
}
