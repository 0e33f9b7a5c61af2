/* test_synth: synthetic GGUF models (src/model/synth.c) load with the right config and shapes, run
 * a forward pass to finite logits, copy a tokenizer verbatim, and the memory projection equals
 * what real sessions allocate and hold; the qwen3 / phi3 / gemma2 shapes have their published
 * parameter counts and write files whose loaded config is the projected one. */
#include "../testutil.h"
#include "../../src/engine/plan.h"
#include "../../src/kv/policy.h"
#include "../../src/engine/session.h"
#include "../../src/model/synth.h"
#include "../../include/tailor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path_buf[4][256];

static const char *tmp_path(int i, const char *tag) {
    snprintf(path_buf[i], sizeof path_buf[i], "/tmp/tl_test_synth_%ld_%s.gguf", (long)getpid(), tag);
    return path_buf[i];
}

/* Independent std/mean of a tensor's values (dequantized). */
static void stats(const tl_gguf_tensor *t, double *mean, double *sd) {
    const int64_t n = t->ne[0], rows = TL_MIN(t->ne[1], 64);
    float *row = malloc(sizeof(float) * (size_t)n);
    double s = 0, ss = 0;
    for (int64_t r = 0; r < rows; r++) {
        tl_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)r * tl_row_size(t->type, n), row, n);
        for (int64_t i = 0; i < n; i++) s += row[i], ss += (double)row[i] * row[i];
    }
    const double N = (double)(n * rows);
    *mean = s / N;
    *sd = sqrt(ss / N - *mean * *mean);
    free(row);
}

/* Run a session over tokens; check logits are finite and not constant, and that the memory
 * projection equals the session's activations and KV bytes. */
static void check_session(tl_model *m, const char *kv, int n_ctx, int chunk, const int32_t *ids, int n) {
    tl_error err = {{0}};
    tl_kv_plan plan = {0};
    CHECKF(tl_kv_plan_parse(&plan, kv, NULL, m->cfg.n_layer, &err) == 0, "%s", err.msg);
    tl_session *s = tl_session_new_with_policies(m, n_ctx, 2, chunk, plan.layers, &err);
    CHECKF(s != NULL, "%s", err.msg);
    if (!s) {
        tl_kv_plan_free(&plan);
        return;
    }
    const tl_plan_target t = tl_plan_target_model(m);
    tl_mem_plan *p = calloc(1, sizeof *p);
    CHECKF(tl_plan_memory(&t, n_ctx, chunk, plan.layers, n, p, &err) == 0, "%s", err.msg);
    CHECK(p->chunk == s->chunk && p->n_ctx == s->n_ctx);
    CHECKF(p->activations == s->act_bytes, "projected activations %llu, session %llu (kv %s)",
           (unsigned long long)p->activations, (unsigned long long)s->act_bytes, kv);
    const int V = m->cfg.n_vocab;
    float *logits = malloc(sizeof(float) * (size_t)V);
    CHECKF(tl_session_eval(s, ids, n, logits, false, &err) == 0, "%s", err.msg);
    int finite = 1;
    float lo = logits[0], hi = logits[0];
    for (int i = 0; i < V; i++) {
        if (!isfinite(logits[i])) finite = 0;
        lo = fminf(lo, logits[i]);
        hi = fmaxf(hi, logits[i]);
    }
    CHECK(finite);
    CHECKF(hi - lo > 1e-3f && hi - lo < 100.0f, "logit range %g..%g", lo, hi);
    tl_session_mem mem;
    tl_session_memory(s, &mem);
    CHECKF(p->kv == mem.kv, "projected KV %llu, session %llu after %d tokens (%s)", (unsigned long long)p->kv,
           (unsigned long long)mem.kv, n, kv);
    CHECK(p->kv_parts.codes == mem.kv_parts.codes && p->kv_parts.scales == mem.kv_parts.scales &&
          p->kv_parts.residual == mem.kv_parts.residual);
    /* the weights: the file's bytes, less the matrices the CPU's integer GEMM holds packed instead */
    CHECK(p->weights == mem.weights && p->weights_file == mem.weights_file && p->weights_packed == mem.weights_packed &&
          mem.weights == mem.weights_file + mem.weights_packed && mem.weights_file <= m->weight_bytes);
    free(p);
    free(logits);
    tl_session_free(s);
    tl_kv_plan_free(&plan);
}

static void test_shapes(void) {
    CHECK(tl_synth_n_shapes() == 10);
    CHECK(tl_synth_find_shape("nope") == NULL);
    const tl_synth_shape *s = tl_synth_find_shape("llama-3.1-8b");
    CHECK(s && s->n_layer == 32 && s->n_embd == 4096 && s->n_vocab == 128256 && !s->tied);
    /* Llama-3.1-8B has 8,030,261,248 parameters; in f16 with f32 norms (65 x 4096) and the
     * 64 f32 rope factors, as llama.cpp's F16 conversion stores it */
    CHECK(tl_synth_weight_bytes(s, TL_TYPE_F16, 0, 0) == 8030261248ull * 2 + 65ull * 4096 * 2 + 64 * 4);
    /* SmolLM2-135M: 134,515,008 parameters (tied), 61 norms of 576 */
    const tl_synth_shape *sm = tl_synth_find_shape("smollm2-135m");
    CHECK(sm && tl_synth_weight_bytes(sm, TL_TYPE_F32, 0, 0) == 134515008ull * 4);
    /* published parameter counts (safetensors): Qwen3-8B 8,190,735,360 (untied, q/k norms of
     * 128); Phi-3-mini-128k 3,821,079,552 (fused qkv and gate-up), plus the GGUF's two sets of
     * 48 f32 rope factors; Gemma-2-9B 9,241,705,984 (tied, four norms per layer). In f16 with
     * f32 vectors: 2 bytes a parameter, 2 more per norm value. */
    const tl_synth_shape *q3 = tl_synth_find_shape("qwen3-8b"), *p3 = tl_synth_find_shape("phi-3-mini-128k"),
                         *g2 = tl_synth_find_shape("gemma-2-9b");
    CHECK(q3 && p3 && g2);
    if (q3 && p3 && g2) {
        CHECK(tl_synth_weight_bytes(q3, TL_TYPE_F16, 0, 0) == 8190735360ull * 2 + (73ull * 4096 + 72 * 128) * 2);
        CHECK(tl_synth_weight_bytes(p3, TL_TYPE_F16, 0, 0) == 3821079552ull * 2 + 65ull * 3072 * 2 + 96 * 4);
        CHECK(tl_synth_weight_bytes(g2, TL_TYPE_F16, 0, 0) == 9241705984ull * 2 + 169ull * 3584 * 2);
    }
    /* llama3 rope factors, recomputed in double: 1 for short wavelengths, 8 for long ones,
     * smooth in between */
    float f[64];
    tl_synth_llama3_rope_factors(s, f);
    int ok = 1;
    for (int i = 0; i < 64; i++) {
        const double freq = 1.0 / pow(500000.0, 2.0 * i / 128.0), wl = 2 * M_PI / freq;
        double want;
        if (wl < 8192.0 / 4) want = 1;
        else if (wl > 8192.0) want = 8;
        else {
            const double sm2 = (8192.0 / wl - 1) / 3;
            want = 1 / ((1 - sm2) / 8 + sm2);
        }
        if (fabs(f[i] - want) > 1e-4 * want) {
            ok = 0;
            fprintf(stderr, "rope factor %d: %g want %g\n", i, f[i], want);
        }
    }
    CHECK(ok && f[0] == 1.0f && f[63] == 8.0f);
    /* projection closed form for dense f16: layers x ctx x kv heads x (dk + dv) x 2 bytes */
    tl_config c;
    tl_synth_config(s, 0, 0, 0, &c);
    tl_mem_plan *p = calloc(1, sizeof *p);
    tl_error err = {{0}};
    const tl_plan_target pt = {.cfg = &c, .type = TL_TYPE_F16};
    CHECK(tl_plan_memory(&pt, 131072, 0, NULL, -1, p, &err) == 0);
    CHECK(p->kv == 32ull * 131072 * 8 * 256 * 2 && p->chunk == 512);
    free(p);
    tl_type t;
    CHECK(tl_synth_parse_type("Q4_1", &t, &err) == 0 && t == TL_TYPE_Q4_1);
    CHECK(tl_synth_parse_type("q3_k", &t, &err) != 0);
}

static void test_fallback_vocab(void) {
    const char *path = tmp_path(0, "smol");
    tl_error err = {{0}};
    tl_synth_params p = {.shape = tl_synth_find_shape("smollm2-135m"), .type = TL_TYPE_F16, .seed = 7, .n_layer = 2};
    CHECKF(tl_synth_write(&p, path, &err) == 0, "%s", err.msg);
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    const tl_config *c = &m->cfg;
    CHECK(c->arch == TL_ARCH_LLAMA && c->n_layer == 2 && c->n_embd == 576 && c->n_ff == 1536);
    CHECK(c->n_head == 9 && c->n_head_kv == 3 && c->head_dim_k == 64 && c->head_dim_v == 64 && c->n_rot == 64);
    CHECK(c->n_vocab == 49152 && c->n_ctx_train == 8192 && c->rope_base == 100000.0f && c->norm_eps == 1e-5f);
    CHECK(m->w.tied_output && !m->w.rope_freqs);
    CHECK(m->weight_bytes == tl_synth_weight_bytes(p.shape, TL_TYPE_F16, 2, 0));
    const tl_gguf_tensor *te = tl_gguf_find_tensor(m->gguf, "token_embd.weight");
    CHECK(te && te->type == TL_TYPE_F16 && te->ne[0] == 576 && te->ne[1] == 49152);
    const tl_gguf_tensor *td = tl_gguf_find_tensor(m->gguf, "blk.1.ffn_down.weight");
    CHECK(td && td->ne[0] == 1536 && td->ne[1] == 576);
    CHECK(tl_gguf_find_tensor(m->gguf, "blk.2.attn_q.weight") == NULL);
    CHECK(tl_gguf_find(m->gguf, "tailor.synth.sentinel") == NULL); /* dropped from the output */
    CHECK(m->w.layers[1].ffn_norm[0] == 1.0f && m->w.layers[1].ffn_norm[575] == 1.0f);
    double mean, sd;
    stats(te, &mean, &sd);
    CHECKF(fabs(mean) < 1e-3 && fabs(sd - 0.02) < 0.001, "token_embd mean %g sd %g", mean, sd);
    stats(td, &mean, &sd);
    CHECKF(fabs(sd - 0.02 / 2.0) < 0.0005, "ffn_down sd %g (want 0.01)", sd);

    /* byte-level vocabulary: bytes are ids 0..255, BOS 256 first */
    int32_t ids[64];
    size_t n = 0;
    CHECK(tl_tokenize(m->tok, "Hi!", 3, true, true, ids, 64, &n, &err) == 0);
    CHECK(n == 4 && ids[0] == 256 && ids[1] == 'H' && ids[2] == 'i' && ids[3] == '!');
    CHECK(tl_tok_eos(m->tok) == 257 && tl_token_find(m->tok, "<|extra_0|>") == 258);
    char *text = tl_detokenize(m->tok, ids + 1, 3, false);
    CHECK(text && !strcmp(text, "Hi!"));
    free(text);
    int32_t toks[40];
    for (int i = 0; i < 40; i++) toks[i] = (i * 7919) % 49152;
    check_session(m, "f16", 64, 16, toks, 40);
    check_session(m, "k2v2:kivi", 256, 0, toks, 40);
    check_session(m, "k4v4:g64", 64, 7, toks, 40);
    tl_model_free(m);

    /* same seed, same bytes; another seed, other bytes */
    const char *again = tmp_path(1, "smol2");
    CHECK(tl_synth_write(&p, again, &err) == 0);
    size_t la = 0, lb = 0;
    char *a = tl_test_read_file(path, &la), *b = tl_test_read_file(again, &lb);
    CHECK(a && b && la == lb && !memcmp(a, b, la));
    free(b);
    p.seed = 8;
    CHECK(tl_synth_write(&p, again, &err) == 0);
    b = tl_test_read_file(again, &lb);
    CHECK(b && la == lb && memcmp(a, b, la) != 0);
    free(a);
    free(b);
    unlink(again);
    unlink(path);
}

/* --vocab: tokenizer keys copied verbatim, the vocab size wins; covers qwen2 (biases, NEOX)
 * and llama3 rope factors with tiny files (512-token vocabulary). */
static void test_vocab_copy(void) {
    const char *voc = tl_test_shared("models/stories260K.gguf");
    if (!tl_test_have(voc)) return;
    tl_error err = {{0}};
    tl_model *ref = tl_model_load(voc, &err);
    CHECKF(ref != NULL, "%s", err.msg);
    if (!ref) return;
    const char *names[] = {"smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b"};
    const tl_type types[] = {TL_TYPE_Q8_0, TL_TYPE_Q4_1, TL_TYPE_Q4_0};
    for (int k = 0; k < 3; k++) {
        const char *path = tmp_path(2, names[k]);
        tl_synth_params p = {.shape = tl_synth_find_shape(names[k]), .type = types[k], .vocab_path = voc, .n_layer = 1,
                             .n_ctx = 4096};
        CHECKF(tl_synth_write(&p, path, &err) == 0, "%s", err.msg);
        tl_model *m = tl_model_load(path, &err);
        CHECKF(m != NULL, "%s: %s", names[k], err.msg);
        if (!m) continue;
        CHECK(m->cfg.n_vocab == 512 && m->cfg.n_layer == 1 && m->cfg.n_ctx_train == 4096);
        CHECK(m->weight_bytes == tl_synth_weight_bytes(p.shape, types[k], 1, 512));
        /* every tokenizer key, byte for byte */
        int same = 1, n_tok_keys = 0;
        for (int64_t i = 0; i < tl_gguf_n_kv(ref->gguf); i++) {
            size_t len;
            const char *key = tl_gguf_key_name(ref->gguf, i, &len);
            if (len <= 10 || memcmp(key, "tokenizer.", 10)) continue;
            n_tok_keys++;
            char kz[256];
            snprintf(kz, sizeof kz, "%.*s", (int)len, key);
            const tl_gguf_value *a = tl_gguf_kv_value(ref->gguf, i), *b = tl_gguf_find(m->gguf, kz);
            if (!b || a->type != b->type) same = 0;
            else if (a->type == TL_GGUF_ARRAY && a->v.arr.n != b->v.arr.n) same = 0;
        }
        CHECK(same && n_tok_keys >= 5);
        int32_t ia[64], ib[64];
        size_t na = 0, nb = 0;
        const char *txt = "Once upon a time, there was a little cat.";
        CHECK(tl_tokenize(ref->tok, txt, strlen(txt), true, true, ia, 64, &na, &err) == 0);
        CHECK(tl_tokenize(m->tok, txt, strlen(txt), true, true, ib, 64, &nb, &err) == 0);
        CHECK(na == nb && na > 5 && !memcmp(ia, ib, na * sizeof(int32_t)));
        if (k == 1) CHECK(m->cfg.arch == TL_ARCH_QWEN2 && m->w.layers[0].bq && m->cfg.rope_style == TL_ROPE_NEOX);
        if (k == 2) CHECK(m->w.rope_freqs && m->w.rope_freqs[0] == 1.0f && m->w.rope_freqs[31] == 32.0f);
        /* uniform-type scratch (info --shape) equals the model's */
        const tl_plan_target tm = tl_plan_target_model(m), tu = {.cfg = &m->cfg, .type = types[k]};
        CHECK(tl_plan_mm_scratch(&tu, 64) == tl_plan_mm_scratch(&tm, 64));
        check_session(m, "f16", 128, 32, ia, (int)na);
        check_session(m, k == 0 ? "k8v8" : "k4v2:kivi", 128, 5, ia, (int)na);
        tl_model_free(m);
        unlink(path);
    }
    tl_model_free(ref);
}

/* The qwen3 / phi3 / gemma2 shapes' files, shrunk (64-wide, 2 layers, 320-token byte-level
 * vocabulary) but with their architecture's tensors and keys: the loaded config is the one
 * tl_synth_config projects (sliding layers, query scale, soft-caps, LongRoPE), the weights the
 * table's formula, and sessions run and match the memory projection. */
static void test_arch_shapes(void) {
    const char *names[] = {"qwen3-8b", "phi-3-mini-128k", "gemma-2-9b"};
    for (int k = 0; k < 3; k++) {
        tl_synth_shape sh = *tl_synth_find_shape(names[k]);
        sh.n_embd = 64;
        sh.n_ff = 96;
        sh.n_head = 2;
        sh.n_head_kv = sh.n_head_kv == sh.n_head ? 2 : 1;
        sh.head_dim = 32;
        sh.n_vocab = 320;
        const char *path = tmp_path(2, names[k]);
        tl_error err = {{0}};
        tl_synth_params p = {.shape = &sh, .type = TL_TYPE_Q8_0, .seed = 3, .n_layer = 2};
        CHECKF(tl_synth_write(&p, path, &err) == 0, "%s", err.msg);
        tl_model *m = tl_model_load(path, &err);
        CHECKF(m != NULL, "%s: %s", names[k], err.msg);
        if (!m) continue;
        tl_config c;
        tl_synth_config(&sh, 2, 0, 0, &c);
        const tl_config *l = &m->cfg;
        CHECKF(!strcmp(l->arch_name, sh.arch) && l->arch == c.arch && l->rope_style == TL_ROPE_NEOX &&
                   l->rope_style == c.rope_style && l->n_head_kv == c.n_head_kv && l->sliding_window == c.sliding_window &&
                   l->attn_scale == c.attn_scale && l->attn_softcap == c.attn_softcap &&
                   l->final_softcap == c.final_softcap && l->rope_attn_factor == c.rope_attn_factor &&
                   l->n_ctx_orig == c.n_ctx_orig && l->embd_scale == c.embd_scale && l->gelu_ffn == c.gelu_ffn &&
                   !memcmp(l->layer_swa, c.layer_swa, sizeof c.layer_swa),
               "%s: the loaded config differs from the projected one", names[k]);
        CHECK(m->weight_bytes == tl_synth_weight_bytes(&sh, TL_TYPE_Q8_0, 2, 0));
        if (k == 0) CHECK(m->w.layers[1].q_norm && m->w.layers[1].k_norm && !m->w.tied_output);
        if (k == 1) {
            /* LongRoPE: 131072 / 4096 tokens, the long factors ending at the ratio */
            CHECK(l->n_ctx_orig == 4096 && fabsf(l->rope_attn_factor - 1.19024f) < 1e-4f && !l->sliding_window);
            CHECK(m->w.rope_long && m->w.rope_short && m->w.rope_long[15] == 32.0f && m->w.rope_short[15] == 1.0f);
            CHECK(m->w.layers[0].wk.data == (const uint8_t *)m->w.layers[0].wq.data + 64 * tl_row_size(TL_TYPE_Q8_0, 64));
        }
        if (k == 2) {
            CHECK(l->layer_swa[0] && !l->layer_swa[1] && l->sliding_window == 4096 && m->w.tied_output);
            CHECK(l->attn_softcap == 50.0f && l->final_softcap == 30.0f && m->w.layers[1].ffn_post_norm);
        }
        int32_t ids[40];
        for (int i = 0; i < 40; i++) ids[i] = (i * 37) % 320;
        check_session(m, "f16", 64, 16, ids, 40);
        check_session(m, "k4v4", 64, 16, ids, 40);
        tl_model_free(m);
        unlink(path);
    }
}

/* --type q4_K_M: q4_K matrices, q6_K for the output projection and for attn_v / ffn_down of the
 * layers llama.cpp's use_more_bits picks (8 layers: 0, 3, 6, 7); the block types of --type;
 * the file loads and its weight bytes are its tensors'. */
static void test_block_types(void) {
    tl_error err = {{0}};
    tl_synth_params p = {.seed = 3, .n_layer = 8};
    CHECK(tl_synth_parse_weights("q4_K_M", &p, &err) == 0 && p.type == TL_TYPE_Q4_K && p.q4_k_m);
    CHECK(tl_synth_parse_weights("w4g128", &p, &err) == 0 && p.type == TL_TYPE_W4G128 && !p.q4_k_m);
    CHECK(tl_synth_parse_weights("q3_K", &p, &err) != 0 && strstr(err.msg, "q4_K_M"));
    const char *names[] = {"q5_0", "q5_1", "q4_K", "q5_K", "q6_K"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        tl_type t;
        CHECKF(tl_synth_parse_type(names[i], &t, &err) == 0 && !strcmp(tl_type_name(t), names[i]), "--type %s", names[i]);
    }
    tl_synth_shape tiny = {.name = "tiny", .arch = "llama", .source = "test", .n_layer = 8, .n_embd = 256, .n_ff = 512,
                           .n_head = 4, .n_head_kv = 2, .head_dim = 64, .n_vocab = 300, .n_ctx = 256,
                           .rope_base = 10000.0f, .norm_eps = 1e-5f};
    const char *path = tmp_path(2, "q4km");
    p.shape = &tiny;
    CHECK(tl_synth_parse_weights("q4_K_M", &p, &err) == 0);
    CHECKF(tl_synth_write(&p, path, &err) == 0, "%s", err.msg);
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    CHECK(m->w.tok_embd.type == TL_TYPE_Q4_K && m->w.output.type == TL_TYPE_Q6_K);
    uint64_t sum = 0;
    for (int64_t i = 0; i < tl_gguf_n_tensors(m->gguf); i++) sum += tl_gguf_tensor_at(m->gguf, i)->nbytes;
    CHECKF(m->weight_bytes == sum, "weight bytes %llu, tensors %llu", (unsigned long long)m->weight_bytes, (unsigned long long)sum);
    for (int il = 0; il < 8; il++) {
        const tl_layer_weights *L = &m->w.layers[il];
        const tl_type more = il == 0 || il == 3 || il == 6 || il == 7 ? TL_TYPE_Q6_K : TL_TYPE_Q4_K;
        CHECKF(L->wv.type == more && L->w_down.type == more, "layer %d: v %s, down %s", il, tl_type_name(L->wv.type),
               tl_type_name(L->w_down.type));
        CHECK(L->wq.type == TL_TYPE_Q4_K && L->wk.type == TL_TYPE_Q4_K && L->w_gate.type == TL_TYPE_Q4_K);
    }
    tl_model_free(m);
    unlink(path);
}

static void test_errors(void) {
    tl_error err = {{0}};
    tl_synth_params p = {.shape = tl_synth_find_shape("smollm2-135m"), .type = TL_TYPE_F16, .n_layer = 1,
                         .vocab_path = "/nonexistent/v.gguf"};
    CHECK(tl_synth_write(&p, tmp_path(3, "err"), &err) != 0 && strstr(err.msg, "--vocab"));
    p.vocab_path = NULL;
    CHECK(tl_synth_write(&p, "/nonexistent/dir/x.gguf", &err) != 0 && strstr(err.msg, "/nonexistent/dir"));
}

int main(void) {
    test_shapes();
    test_fallback_vocab();
    test_vocab_copy();
    test_arch_shapes();
    test_block_types();
    test_errors();
    return tl_test_done();
}
