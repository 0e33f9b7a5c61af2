/* test_plan: the planner (src/engine/plan.h) projects exactly what a CPU session allocates and
 * holds: context and chunk, every activation buffer (the predicted-query buffer of TailorKV
 * included) and the KV bytes of every store kind -- dense f32/f16/bf16, quantized per-token,
 * per-channel, smoothed, rotated, per-tensor, auto:B once resolved, offloaded, and mixed plans --
 * before and after a prompt, at several chunk sizes; on a model with sliding-window layers
 * too, where a quantized or offloaded request becomes a dense window. And the weights part of
 * quantized models (check_weights): the integer GEMM's x16 copies a CPU session makes and the
 * file bytes they replace, whose pages the process really gives back. */
#include "../testutil.h"
#include "../../src/engine/calibrate.h"
#include "../../src/engine/plan.h"
#include "../../src/kv/policy.h"
#include "../../src/cpu/qpack.h"
#include "../../src/engine/session.h"
#include "../../src/model/synth.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static tl_kv_layer_policy off_policy(int sinks, int recent, int topk, int channels, int summary, int page) {
    tl_kv_layer_policy p;
    memset(&p, 0, sizeof p);
    p.kind = TL_KV_OFFLOAD;
    p.off = (tl_kv_offload_params){sinks, recent, topk, channels, summary, page};
    return p;
}

static void check_parts(const tl_kv_bytes *a, const tl_kv_bytes *b, const char *what) {
    CHECKF(a->codes == b->codes && a->scales == b->scales && a->residual == b->residual && a->other == b->other &&
               a->host == b->host,
           "%s: KV parts differ (codes %llu/%llu, scales %llu/%llu, residual %llu/%llu, other %llu/%llu, host "
           "%llu/%llu)",
           what, (unsigned long long)a->codes, (unsigned long long)b->codes, (unsigned long long)a->scales,
           (unsigned long long)b->scales, (unsigned long long)a->residual, (unsigned long long)b->residual,
           (unsigned long long)a->other, (unsigned long long)b->other, (unsigned long long)a->host,
           (unsigned long long)b->host);
}

/* One plan at one chunk: projection == allocation with nothing held, and after n tokens. */
static void check_plan(tl_model *m, const char *what, const tl_kv_layer_policy *pol, int n_ctx, int chunk,
                       const int32_t *ids, int n) {
    tl_error err = {{0}};
    tl_session *s = tl_session_new_with_policies(m, n_ctx, 2, chunk, pol, &err);
    CHECKF(s != NULL, "%s chunk %d: %s", what, chunk, err.msg);
    if (!s) return;
    /* auto:B layers are resolved by the session's calibration: project the layouts it chose */
    tl_kv_layer_policy *held = malloc(sizeof *held * (size_t)m->cfg.n_layer);
    memcpy(held, pol, sizeof *held * (size_t)m->cfg.n_layer);
    CHECKF(tl_kv_auto_resolve(m, held, NULL, 0, false, 2, NULL, &err) == 0, "%s: %s", what, err.msg);
    const tl_plan_target t = tl_plan_target_model(m);
    tl_mem_plan *p = calloc(1, sizeof *p);
    for (int pass = 0; pass < 2; pass++) {
        const int n_held = pass ? n : 0;
        if (pass) CHECKF(tl_session_eval(s, ids, n, NULL, false, &err) == 0, "%s: %s", what, err.msg);
        CHECKF(tl_plan_memory(&t, n_ctx, chunk, held, n_held, p, &err) == 0, "%s: %s", what, err.msg);
        tl_session_mem sm;
        tl_session_memory(s, &sm);
        CHECKF(p->n_ctx == s->n_ctx && p->chunk == s->chunk, "%s chunk %d: ctx/chunk %d/%d, session %d/%d", what,
               chunk, p->n_ctx, p->chunk, s->n_ctx, s->chunk);
        CHECKF(p->activations == s->act_bytes && p->activations == sm.activations,
               "%s chunk %d: activations %llu, session allocated %llu", what, chunk,
               (unsigned long long)p->activations, (unsigned long long)s->act_bytes);
        CHECKF(p->kv == sm.kv, "%s chunk %d, %d tokens: KV %llu, session %llu", what, chunk, n_held,
               (unsigned long long)p->kv, (unsigned long long)sm.kv);
        check_parts(&p->kv_parts, &sm.kv_parts, what);
        CHECKF(p->weights == sm.weights && p->weights_file == sm.weights_file && p->weights_packed == sm.weights_packed,
               "%s: weights file %llu + packed %llu, session %llu + %llu", what, (unsigned long long)p->weights_file,
               (unsigned long long)p->weights_packed, (unsigned long long)sm.weights_file,
               (unsigned long long)sm.weights_packed);
        CHECK((p->act.q_pred > 0) == (s->q_pred != NULL));
    }
    free(p);
    free(held);
    tl_session_free(s);
}

/* Every spec at chunks 7, 64 and 0 (512, clamped to the context), then TailorKV plans. */
static void check_model(const char *path, const char *const *specs, int n_specs) {
    if (!tl_test_have(path)) return;
    tl_error err = {{0}};
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return;
    const int L = m->cfg.n_layer, n = 150, n_ctx = 160;
    int32_t *ids = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) ids[i] = (i * 37 + 11) % m->cfg.n_vocab;
    const int chunks[] = {7, 64, 0};
    tl_kv_layer_policy *pol = malloc(sizeof *pol * (size_t)L);
    for (int k = 0; k < n_specs; k++) {
        tl_kv_plan plan = {0};
        CHECKF(tl_kv_plan_parse(&plan, specs[k], NULL, L, &err) == 0, "%s: %s", specs[k], err.msg);
        for (size_t c = 0; c < sizeof chunks / sizeof *chunks && plan.layers; c++)
            check_plan(m, specs[k], plan.layers, n_ctx, chunks[c], ids, n);
        tl_kv_plan_free(&plan);
    }
    /* TailorKV: every layer offloaded; and dense quantized layers around offloaded ones */
    for (int i = 0; i < L; i++) pol[i] = off_policy(4, 8, 32, 8, 0, 0);
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) check_plan(m, "offload", pol, n_ctx, chunks[c], ids, n);
    tl_kv_plan kivi = {0};
    CHECK(tl_kv_plan_parse(&kivi, "k2v2:kivi", NULL, L, &err) == 0);
    for (int i = 0; i < L; i++) pol[i] = i % 2 ? off_policy(8, 16, 16, 16, 8, 16) : kivi.layers[i];
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) check_plan(m, "mixed", pol, n_ctx, chunks[c], ids, n);
    tl_kv_plan_free(&kivi);
    /* context 0 = the training context, chunk 0 = 512 */
    const tl_plan_target t = tl_plan_target_model(m);
    tl_mem_plan *p = calloc(1, sizeof *p);
    CHECK(tl_plan_memory(&t, 0, 0, NULL, 0, p, &err) == 0 && p->n_ctx == m->cfg.n_ctx_train &&
          p->chunk == TL_MIN(512, m->cfg.n_ctx_train) && p->act.q_pred == 0);
    free(p);
    free(pol);
    free(ids);
    tl_model_free(m);
}

/* Resident bytes of the process's mappings of the file at path (/proc/self/smaps), -1 when
 * they cannot be read. */
static long long mapped_rss(const char *path) {
    char real[PATH_MAX];
    if (!realpath(path, real)) return -1;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[PATH_MAX + 256];
    long long sum = 0, kb;
    bool in = false;
    while (fgets(line, sizeof line, f)) {
        char *sp = strchr(line, ' ');
        if (sp && strchr(line, '-') && strchr(line, '-') < sp) { /* a mapping's header line: range perms ... path */
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            const size_t n = strlen(line), m = strlen(real);
            in = n >= m && !strcmp(line + n - m, real) && line[n - m - 1] == ' ';
        } else if (in && sscanf(line, "Rss: %lld kB", &kb) == 1) {
            sum += kb * 1024;
        }
    }
    fclose(f);
    return sum;
}

/* A read fault of a file mapping also maps the pages around it that the page cache holds, in
 * 64 KiB windows (the kernel's fault_around_bytes): beside a packed matrix, reading a
 * neighbour (a tensor that stays in the file, or the next matrix while it is packed) can map up
 * to that much of the released pages again, unread. */
#define FAULT_AROUND 65536LL

/* The weights of a quantized model on the CPU: the planner's file + packed bytes equal what a
 * session holds, with 1 thread and with 2 (every CPU session has a pool and packs), and with
 * the scalar kernels (nothing packs: the file stays whole); the file's pages of the packed
 * matrices leave the process's resident set (what stays: the header and metadata, the tensors
 * not packed, e.g. an untied embedding, and at most a fault-around window on either side of a
 * packed matrix); 
 * rows read through the copy (a tied embedding) equal the file's. single_type: every matrix of
 * the file has one type, so the planner's shape-only projection gives the same split. */
static void check_weights(const char *path_in, int n_packed_types, bool single_type) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", path_in);
    tl_error err = {{0}};
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m != NULL, "%s: %s", path, err.msg);
    if (!m) return;
    const int n = 40, n_ctx = 64;
    int32_t ids[40];
    for (int i = 0; i < n; i++) ids[i] = (i * 37 + 11) % m->cfg.n_vocab;
    const tl_plan_target t = tl_plan_target_model(m);
    tl_mem_plan *p = calloc(1, sizeof *p);
    const bool simd = tl_simd_level_get() != TL_SIMD_SCALAR; /* (TAILOR_FORCE_SCALAR=1: never packs) */
    for (int pass = 0; pass < 3; pass++) { /* scalar kernels, then 1 and 2 threads */
        tl_quants_force_scalar(pass == 0 || !simd);
        tl_session *s = tl_session_new_with_policies(m, n_ctx, pass == 2 ? 2 : 1, 16, NULL, &err);
        CHECKF(s != NULL, "%s: %s", path, err.msg);
        if (!s) break;
        CHECKF(tl_session_eval(s, ids, n, NULL, false, &err) == 0, "%s: %s", path, err.msg);
        CHECK(tl_plan_memory(&t, n_ctx, 16, NULL, n, p, &err) == 0);
        tl_session_mem sm;
        tl_session_memory(s, &sm);
        CHECKF(p->weights_file == sm.weights_file && p->weights_packed == sm.weights_packed && p->weights == sm.weights &&
                   sm.weights == sm.weights_file + sm.weights_packed,
               "%s pass %d: planned file %llu + packed %llu, session %llu + %llu", path, pass,
               (unsigned long long)p->weights_file, (unsigned long long)p->weights_packed,
               (unsigned long long)sm.weights_file, (unsigned long long)sm.weights_packed);
        const bool packs = pass > 0 && simd;
        CHECKF((sm.weights_packed > 0) == packs && (sm.weights_file < m->weight_bytes) == packs,
               "%s pass %d: packed %llu, file %llu of %llu", path, pass, (unsigned long long)sm.weights_packed,
               (unsigned long long)sm.weights_file, (unsigned long long)m->weight_bytes);
        /* the packed bytes: tlq_pack_bytes of each matrix the kernels run, no more */
        const tl_mat *mats[TL_MODEL_MAX_PACKED];
        const int nm = tl_model_packed_mats(m, mats);
        uint64_t want = 0, replaced = 0;
        int types = 0;
        bool seen[TL_TYPE_COUNT] = {0};
        for (int i = 0; i < nm && packs; i++) {
            const tl_mat *w = mats[i];
            if (!tlq_pack_applies(w->type, w->n_in)) continue;
            CHECKF(tl_wpack_bytes(w->pack) == tlq_pack_bytes(w->type, w->n_in, w->n_out) && tl_wpack_released(w->pack),
                   "%s: %s: packed %llu, formula %zu", path, w->name, (unsigned long long)tl_wpack_bytes(w->pack),
                   tlq_pack_bytes(w->type, w->n_in, w->n_out));
            want += tlq_pack_bytes(w->type, w->n_in, w->n_out);
            replaced += tl_row_size(w->type, w->n_in) * (uint64_t)w->n_out;
            types += !seen[w->type];
            seen[w->type] = true;
        }
        if (packs) {
            CHECKF(types == n_packed_types, "%s: %d packed types, want %d", path, types, n_packed_types);
            CHECK(sm.weights_packed == want && sm.weights_file == m->weight_bytes - replaced);
            /* the process holds the file's bytes of what was not packed, and no more */
            uint64_t tensors = 0;
            for (int64_t i = 0; i < tl_gguf_n_tensors(m->gguf); i++) tensors += tl_gguf_tensor_at(m->gguf, i)->nbytes;
            const long long rss = mapped_rss(path), page = sysconf(_SC_PAGESIZE);
            const long long bound = (long long)p->weights_file + (long long)(tl_gguf_file_size(m->gguf) - tensors) +
                                    2 * FAULT_AROUND * nm + page;
            if (rss < 0) tl_test_skip("%s: /proc/self/smaps unreadable: the mapping's resident bytes not checked", path);
            else CHECKF(rss <= bound, "%s: %lld bytes of the file resident, at most %lld expected", path, rss, bound);
            if (single_type) { /* the shape-only projection (tailor info --shape, pareto --project-to) */
                const tl_plan_target ts = {.cfg = &m->cfg, .type = mats[0]->type, .weights = m->weight_bytes};
                uint64_t f2, p2;
                tl_plan_weights(&ts, &f2, &p2);
                CHECKF(f2 == sm.weights_file && p2 == sm.weights_packed, "%s: by shape file %llu + packed %llu", path,
                       (unsigned long long)f2, (unsigned long long)p2);
            }
        }
        if (packs && pass == 2) { /* last: reading the file's rows brings their pages back */
            /* embedding rows through the copy (a tied output's) are the file's */
            const tl_mat *e = &m->w.tok_embd;
            float *a = malloc(sizeof(float) * (size_t)e->n_in), *b = malloc(sizeof(float) * (size_t)e->n_in);
            bool same = true;
            for (int64_t r = 0; r < e->n_out; r += 7) {
                tl_mat_get_row(e, r, a);
                tl_get_row(e->type, e->data, e->n_in, r, b);
                same &= !memcmp(a, b, sizeof(float) * (size_t)e->n_in);
            }
            CHECKF(same, "%s: embedding rows from the packed copy differ from the file's", path);
            free(a), free(b);
        }
        tl_session_free(s);
    }
    tl_quants_force_scalar(!simd);
    free(p);
    tl_model_free(m);
}

/* Synthetic quantized models (no download): every x16 type, tied and untied outputs, 3004 rows
 * of vocabulary (the last group of 16 padded), phi3's fused tensors packed as their views. */
static void check_weights_synth(void) {
    /* large enough that the packed bytes (2 to 7 MB) dwarf the fault-around allowance (2 MB) */
    tl_synth_shape tiny = {.name = "tiny", .arch = "llama", .source = "test", .n_layer = 2, .n_embd = 512, .n_ff = 1024,
                           .n_head = 8, .n_head_kv = 4, .head_dim = 64, .n_vocab = 3004, .n_ctx = 256,
                           .rope_base = 10000.0f, .norm_eps = 1e-5f, .tied = true};
    tl_synth_shape phi = *tl_synth_find_shape("phi-3-mini-128k");
    phi.n_embd = 512, phi.n_ff = 1024, phi.n_head = 8, phi.n_head_kv = 8, phi.head_dim = 64, phi.n_vocab = 3200;
    const struct {
        const tl_synth_shape *shape;
        const char *type;
        bool tied;
        int packed_types;
    } cases[] = {{&tiny, "q4_K_M", false, 2}, {&tiny, "q4_0", true, 1}, {&tiny, "q4_1", true, 1},
                 {&tiny, "q8_0", true, 1},    {&phi, "q8_0", false, 1}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        tl_synth_shape sh = *cases[k].shape;
        if (sh.tied != cases[k].tied && !strcmp(sh.arch, "llama")) sh.tied = cases[k].tied;
        char path[256];
        snprintf(path, sizeof path, "/tmp/tl_test_plan_%ld_%zu.gguf", (long)getpid(), k);
        tl_error err = {{0}};
        tl_synth_params sp = {.shape = &sh, .seed = 5, .n_layer = 2};
        CHECKF(tl_synth_parse_weights(cases[k].type, &sp, &err) == 0 && tl_synth_write(&sp, path, &err) == 0, "%s: %s",
               cases[k].type, err.msg);
        check_weights(path, cases[k].packed_types, !sp.q4_k_m);
        unlink(path);
    }
}

int main(void) {
    const char *all[] = {"f32", "f16", "bf16", "k8v8", "k4v4:smooth", "k4v4:rot", "k2v2:kivi",
                         "k4v2:kchan:vtok:g64:r32", "k4v4:tensor", "k16v4:r64", "auto:4"};
    check_model(tl_test_shared("models/tailor-test-31m.gguf"), all, 11);
    /* sliding-window layers: a quantized or offloaded request keeps a dense window there */
    const char *some[] = {"f16", "k8v8", "k2v2:kivi"};
    check_model(tl_test_models("gemma-3-270m-q4_k_m.gguf"), some, 3);
    check_weights_synth();
    if (tl_test_have(tl_test_models("SmolLM2-135M-Instruct.Q4_1.gguf")))
        check_weights(tl_test_models("SmolLM2-135M-Instruct.Q4_1.gguf"), 2, false); /* q4_1, a q8_0 output */
    if (tl_test_have(tl_test_models("gemma-3-270m-q4_k_m.gguf")))
        check_weights(tl_test_models("gemma-3-270m-q4_k_m.gguf"), 3, false); /* q8_0, q4_K, q6_K (q5_0 stays) */
    return tl_test_done();
}
