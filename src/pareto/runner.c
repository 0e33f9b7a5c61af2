/* runner.c: one configuration of a Pareto sweep, evaluated in this process.
 *
 * Tasks (each gives one result line, appended to results.jsonl with a single write as soon
 * as it finishes):
 *   ppl    perplexity of the last `ppl_tail` tokens of each window of ctx tokens (default:
 *          the second half, llama.cpp's convention; every window starts from an empty cache
 *          with BOS first when the vocab adds it). The baseline writes each scored row's
 *          top-32 log-probabilities (+ the correct token's, + the rest mass) to a small file;
 *          other configurations report mean KL divergence and same-top-1 against it
 *          (tl_kld_row: coarse-grained KL, a lower bound of the full KL). Only the scored
 *          rows' logits are computed, in pieces of at most 512 rows (a 262k-vocabulary model
 *          at 16k context would otherwise need 8 GiB of logits). Also measures memory
 *          (session accounting with ctx tokens held), prefill tokens/s (the windows) and
 *          decode tokens/s (n_decode single-token steps at depth ctx).
 *   niah   passkey needles at the given depths in a ctx-token essay haystack, greedy answers,
 *          exact number match (src/eval/tasks.h).
 *   ruler  niah_multikey, niah_multivalue, niah_multiquery and vt at ctx tokens; or any single
 *          RULER task name (tl_task_parse).
 * Memory: weights (tl_model.weight_bytes) + KV (the stores' bytes) + activations (the
 * session's chunk-sized buffers) + one row of logits (what generation holds). On the GPU
 * (device "cuda") the memory axis is the device's: weights as uploaded + KV device tier +
 * activations + the block-format weights' workspace, measured from the session's allocations
 * and recorded beside the device planner's projection for the same session (they must agree;
 * "device_plan_equal" says whether they did). */
#define _GNU_SOURCE
#include "pareto.h"
#include "../eval/kld.h"
#include "../eval/report.h"
#include "../eval/runner.h"
#include "../eval/stats.h"
#include "../eval/tasks.h"
#include "../engine/plan.h"
#include "../kv/policy.h"
#include "../convert/quantize.h"
#include "../engine/session.h"
#include "../model/synth.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define KLD_TOPK 32
#define PIECE_MAX 512
static const char KLD_MAGIC[8] = {'T', 'L', 'P', 'K', 'L', 'D', '0', '1'};

static uint64_t peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return 0;
    return (uint64_t)ru.ru_maxrss * 1024u;
}

static cJSON *config_json(const tl_pareto_config *c, const char *model, int ctx) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "label", c->label);
    cJSON_AddStringToObject(o, "model", model ? model : "");
    cJSON_AddStringToObject(o, "weights", c->weights);
    cJSON_AddStringToObject(o, "kv", c->kv);
    cJSON_AddStringToObject(o, "kv_layer", c->kv_layer);
    cJSON_AddNumberToObject(o, "chunk", c->chunk);
    cJSON_AddNumberToObject(o, "ctx", ctx);
    return o;
}

int tl_pareto_append_failure(const char *results, const tl_pareto_config *c, const char *model, int ctx,
                             const char *task, const char *reason, const cJSON *extra, tl_error *err) {
    cJSON *cfg = config_json(c, model, ctx);
    cJSON *x = extra ? cJSON_Duplicate(extra, 1) : cJSON_CreateObject();
    cJSON_AddStringToObject(x, "status", "failed");
    cJSON_AddStringToObject(x, "reason", reason && *reason ? reason : "unknown error");
    int rc = tl_result_append(results, "pareto", cfg, task, NAN, 0, 0, x, err);
    cJSON_Delete(x);
    cJSON_Delete(cfg);
    return rc;
}

/* ---- memory by formula ---- */
/* The planner's memory at n_tokens held (the context, and the chunk's "full" = all of it)
 * plus one row of logits; the plan retargeted when the model has another layer count. */
static int mem_common(const tl_plan_target *t, const tl_kv_plan *plan, int chunk, int n_tokens, tl_pareto_mem *out,
                      tl_error *err) {
    memset(out, 0, sizeof *out);
    tl_kv_plan retargeted = {0};
    if (plan->n_layers != t->cfg->n_layer) {
        if (tl_kv_plan_retarget(plan, t->cfg->n_layer, &retargeted, err)) return -1;
        plan = &retargeted;
    }
    tl_mem_plan *mp = tl_xcalloc(1, sizeof *mp);
    const int rc = tl_plan_memory(t, n_tokens, chunk > 0 ? chunk : n_tokens, plan->layers, n_tokens, mp, err);
    if (!rc) {
        out->chunk = mp->chunk;
        out->weights = mp->weights;
        out->kv = mp->kv;
        out->act = mp->activations;
        out->logits = sizeof(float) * (uint64_t)t->cfg->n_vocab;
        out->total = out->weights + out->kv + out->act + out->logits;
    }
    free(mp);
    tl_kv_plan_free(&retargeted);
    return rc;
}

int tl_pareto_mem_project(const struct tl_model *m, const tl_kv_plan *plan, int chunk, int n_tokens, tl_pareto_mem *out,
                          tl_error *err) {
    const tl_plan_target t = tl_plan_target_model(m);
    return mem_common(&t, plan, chunk, n_tokens, out, err);
}

/* the matrix type a weight format gives on another model (base: f16, the paper's baseline) */
static int fmt_type(const char *fmt, tl_type *t, tl_error *err) {
    if (!strcmp(fmt, "base") || !strcmp(fmt, "f16")) return *t = TL_TYPE_F16, 0;
    bool awq;
    return tl_quantize_parse_type(fmt, t, &awq, err);
}

int tl_pareto_mem_project_to(const char *target, const char *weights_fmt, const tl_kv_plan *plan, int chunk,
                             int n_tokens, tl_pareto_mem *out, tl_error *err) {
    tl_type t;
    if (fmt_type(weights_fmt, &t, err)) return -1;
    const size_t L = strlen(target);
    if (L > 5 && !strcmp(target + L - 5, ".gguf")) {
        tl_model *m = tl_model_load(target, err);
        if (!m) return tl_fail_prefix(err, "--project-to");
        tl_plan_target pt = tl_plan_target_model(m);
        if (strcmp(weights_fmt, "base")) {
            /* re-encode every matrix the quantizer would: block matrices, token_embd, output */
            const tl_weights *ws = &m->w;
            const tl_mat *all[2 + 7 * TL_MAX_LAYERS];
            int n = 0;
            all[n++] = &ws->tok_embd;
            if (!ws->tied_output) all[n++] = &ws->output;
            for (int il = 0; il < m->cfg.n_layer; il++) {
                const tl_layer_weights *Lw = &ws->layers[il];
                const tl_mat *mm[] = {&Lw->wq, &Lw->wk, &Lw->wv, &Lw->wo, &Lw->w_gate, &Lw->w_up, &Lw->w_down};
                for (int i = 0; i < 7; i++) all[n++] = mm[i];
            }
            for (int i = 0; i < n; i++) {
                pt.weights -= tl_row_size(all[i]->type, all[i]->n_in) * (uint64_t)all[i]->n_out;
                pt.weights += tl_row_size(t, all[i]->n_in) * (uint64_t)all[i]->n_out;
            }
            pt.model = NULL; /* the scratch of matrices all of type t */
            pt.type = t;
        }
        int rc = mem_common(&pt, plan, chunk, n_tokens, out, err);
        tl_model_free(m);
        return rc;
    }
    const tl_synth_shape *sh = tl_synth_find_shape(target);
    if (!sh) return tl_fail(err, "--project-to '%s': not a .gguf file nor a known shape (tailor synth --list)", target);
    tl_config cfg;
    tl_synth_config(sh, 0, 0, 0, &cfg);
    const tl_plan_target pt = {.cfg = &cfg, .type = t, .weights = tl_synth_weight_bytes(sh, t, 0, 0)};
    return mem_common(&pt, plan, chunk, n_tokens, out, err);
}

static cJSON *mem_json(const tl_pareto_mem *m) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "weights", (double)m->weights);
    cJSON_AddNumberToObject(o, "kv", (double)m->kv);
    cJSON_AddNumberToObject(o, "act", (double)m->act);
    cJSON_AddNumberToObject(o, "logits", (double)m->logits);
    cJSON_AddNumberToObject(o, "total", (double)m->total);
    cJSON_AddNumberToObject(o, "chunk", m->chunk);
    return o;
}

/* ---- the perplexity task with its KL baseline ---- */
typedef struct {
    FILE *f;          /* the baseline read, or out.f */
    tl_outfile out;   /* the baseline written */
    bool writing;
    int V, K;
    size_t rec;
    unsigned char *buf;
    int64_t rows;
} kl_file;

static size_t rec_bytes(int K) { return 12 + 8 * (size_t)K; }

static int kl_open(kl_file *k, const char *path, bool writing, int V, uint64_t hash, tl_error *err) {
    memset(k, 0, sizeof *k);
    k->writing = writing;
    k->V = V;
    k->K = TL_MIN(KLD_TOPK, V);
    unsigned char h[32] = {0};
    if (writing) {
        /* written under a temporary name and renamed when complete: a baseline killed midway
         * leaves no file that later runs would trust */
        if (tl_outfile_open(&k->out, path, NULL, err)) return -1;
        k->f = k->out.f;
        memcpy(h, KLD_MAGIC, 8);
        memcpy(h + 8, &V, 4);
        memcpy(h + 12, &k->K, 4);
        memcpy(h + 16, &hash, 8);
        if (fwrite(h, 1, 32, k->f) != 32) return tl_fail(err, "%s: write failed", path);
    } else {
        if (!(k->f = fopen(path, "rb")))
            return tl_fail(err, "KL baseline %s: %s (the baseline configuration writes it)", path, strerror(errno));
        uint64_t fh;
        int fv;
        if (fread(h, 1, 32, k->f) != 32 || memcmp(h, KLD_MAGIC, 8)) return tl_fail(err, "%s: not a pareto KL baseline", path);
        memcpy(&fv, h + 8, 4);
        memcpy(&k->K, h + 12, 4);
        memcpy(&fh, h + 16, 8);
        if (fv != V) return tl_fail(err, "%s: baseline vocabulary %d, this model %d", path, fv, V);
        if (fh != hash) return tl_fail(err, "%s: baseline scored other tokens (different text, -c or --ppl-tail)", path);
        if (k->K < 1 || k->K > V) return tl_fail(err, "%s: bad top-k %d", path, k->K);
    }
    k->rec = rec_bytes(k->K);
    k->buf = tl_xmalloc(k->rec);
    return 0;
}

static void kl_close(kl_file *k, bool complete) {
    tl_error err;
    if (k->writing && complete && tl_outfile_commit(&k->out, &err)) fprintf(stderr, "pareto: %s\n", err.msg);
    if (k->writing) tl_outfile_abort(&k->out); /* nothing once committed */
    else if (k->f) fclose(k->f);
    free(k->buf);
    memset(k, 0, sizeof *k);
}

/* indices of the K largest of lp[0..V) in descending order (a min-heap of K) */
static void top_k(const float *lp, int V, int K, int32_t *ids) {
    int n = 0;
    for (int i = 0; i < V; i++) {
        if (n < K) {
            int c = n++;
            ids[c] = i;
            while (c > 0 && lp[ids[(c - 1) / 2]] > lp[ids[c]]) {
                int32_t t = ids[c];
                ids[c] = ids[(c - 1) / 2];
                ids[(c - 1) / 2] = t;
                c = (c - 1) / 2;
            }
        } else if (lp[i] > lp[ids[0]]) {
            ids[0] = i;
            for (int c = 0;;) {
                int l = 2 * c + 1, r = l + 1, s = c;
                if (l < n && lp[ids[l]] < lp[ids[s]]) s = l;
                if (r < n && lp[ids[r]] < lp[ids[s]]) s = r;
                if (s == c) break;
                int32_t t = ids[c];
                ids[c] = ids[s];
                ids[s] = t;
                c = s;
            }
        }
    }
    /* heap -> descending (insertion sort; K is small); ties by lower id first */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && (lp[ids[j]] > lp[ids[j - 1]] || (lp[ids[j]] == lp[ids[j - 1]] && ids[j] < ids[j - 1])); j--) {
            int32_t t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
}

typedef struct {
    double nll, kl, top1;
    int64_t n;
    double *tok_nll, *tok_base_nll, *tok_kl; /* per scored token (base ones when compared), malloc'd */
    double secs_prefill; /* session time of the windows */
    int64_t tok_prefill;
    double decode_tps;
    tl_pareto_mem measured;
    uint64_t rss;
    bool on_gpu;      /* device memory: measured by part, and the planner's projection */
    tl_device_mem gm;
    tl_device_plan gp;
    bool gp_ok;
} ppl_out;

/* {"value", "lo", "hi", "n"} */
static cJSON *interval_json(tl_interval ci) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "value", ci.value);
    tl_json_add_interval(o, ci);
    return o;
}

static void ppl_out_free(ppl_out *o) {
    free(o->tok_nll), free(o->tok_base_nll), free(o->tok_kl);
    o->tok_nll = o->tok_base_nll = o->tok_kl = NULL;
}

/* The first n_tokens tokens of the text at path (and a few more), or fewer if it is shorter. */
static int32_t *tokenize_text(const tl_model *m, const char *path, int64_t n_tokens, size_t *n, tl_error *err) {
    size_t len = 0;
    char *text = tl_read_text(path, tl_tok_text_bytes(m->tok, n_tokens), &len, NULL, err);
    if (!text) return NULL;
    size_t need = 0, icap = len + 16;
    int32_t *ids = tl_xmalloc(sizeof(int32_t) * icap);
    if (tl_tokenize(m->tok, text, len, true, false, ids, icap, &need, err) || need > icap) {
        if (need > icap && !err->msg[0]) tl_fail(err, "%s: tokenizer needs more room", path);
        free(ids);
        free(text);
        tl_fail_prefix(err, "%s", path);
        return NULL;
    }
    free(text);
    *n = need;
    return ids;
}

static int run_ppl(tl_model *m, const tl_kv_plan *plan, const tl_pareto_config *c, const tl_pareto_run_params *p,
                   ppl_out *o, tl_error *err) {
    memset(o, 0, sizeof *o);
    const int V = m->cfg.n_vocab, ctx = p->ctx;
    const int tail = p->ppl_tail > 0 ? TL_MIN(p->ppl_tail, ctx - 1) : ctx - 1 - ctx / 2;
    const int first = ctx - 1 - tail; /* scored rows: positions first .. ctx-2 predict first+1 .. ctx-1 */
    size_t n_ids = 0;
    const int n_dec = p->n_decode > 0 ? p->n_decode : 0;
    const int64_t want = (int64_t)(p->ppl_windows > 0 ? p->ppl_windows : 1) * ctx + n_dec; /* windows + decode */
    int32_t *ids = tokenize_text(m, p->text_path, want, &n_ids, err);
    if (!ids) return -1;
    int n_win = (int)((int64_t)n_ids / ctx);
    if (n_win < 1) {
        free(ids);
        return tl_fail(err, "%s: %zu tokens, fewer than one window of %d", p->text_path, n_ids, ctx);
    }
    n_win = TL_MIN(n_win, p->ppl_windows > 0 ? p->ppl_windows : 1);
    const tl_session_params sp = {.n_ctx = ctx + n_dec + 1, .n_threads = p->n_threads, .chunk = c->chunk > 0 ? c->chunk : ctx,
                                  .kv = plan, .device = p->device, .cuda = p->cuda};
    tl_session *s = tl_session_new(m, &sp, err);
    if (!s) {
        free(ids);
        return -1;
    }
    const int piece = TL_MIN(s->chunk, PIECE_MAX);
    float *logits = tl_xmalloc(sizeof(float) * (size_t)piece * V);
    float *lp = tl_xmalloc(sizeof(float) * (size_t)V);
    int32_t *win = tl_xmalloc(sizeof(int32_t) * (size_t)(ctx + n_dec + 1));
    int32_t top[KLD_TOPK];
    const int32_t bos = tl_tok_bos(m->tok);
    const bool add_bos = tl_tok_add_bos(m->tok) && bos >= 0;
    /* the scored tokens identify a baseline: hash of the windows' ids and the tail length */
    uint64_t hash = tl_kld_hash_ids(ids, (int64_t)n_win * ctx) ^ ((uint64_t)tail * 0x9E3779B97F4A7C15ull);
    kl_file kf = {0};
    bool have_kl = p->kl_base != NULL;
    int rc = -1;
    const size_t n_scored = (size_t)n_win * (size_t)(tail + 1);
    o->tok_nll = tl_xcalloc(n_scored, sizeof(double));
    o->tok_base_nll = tl_xcalloc(n_scored, sizeof(double));
    o->tok_kl = tl_xcalloc(n_scored, sizeof(double));
    if (have_kl && kl_open(&kf, p->kl_base, p->write_base, V, hash, err)) goto done;
    for (int w = 0; w < n_win; w++) {
        memcpy(win, ids + (int64_t)w * ctx, sizeof(int32_t) * (size_t)ctx);
        if (add_bos) win[0] = bos;
        tl_session_reset(s);
        double t0 = tl_time_s();
        if (first > 0 && tl_session_eval(s, win, first, NULL, false, err)) goto done;
        o->secs_prefill += tl_time_s() - t0;
        for (int pos = first; pos < ctx; pos += piece) {
            const int nr = TL_MIN(piece, ctx - pos);
            t0 = tl_time_s();
            if (tl_session_eval(s, win + pos, nr, logits, true, err)) goto done;
            o->secs_prefill += tl_time_s() - t0;
            for (int r = 0; r < nr && pos + r + 1 < ctx; r++) {
                const int32_t target = win[pos + r + 1];
                tl_kld_log_softmax(logits + (size_t)r * V, V, -1, lp);
                o->nll -= lp[target];
                o->tok_nll[o->n] = -lp[target];
                o->n++;
                if (!have_kl) continue;
                unsigned char *rec = kf.buf;
                if (kf.writing) {
                    top_k(lp, V, kf.K, top);
                    double mass = 0;
                    for (int i = 0; i < kf.K; i++) mass += exp((double)lp[top[i]]);
                    const float lpt = lp[target], rest = mass < 1 ? (float)log1p(-mass) : -INFINITY;
                    memcpy(rec, &target, 4);
                    memcpy(rec + 4, &lpt, 4);
                    memcpy(rec + 8, &rest, 4);
                    memcpy(rec + 12, top, 4 * (size_t)kf.K);
                    for (int i = 0; i < kf.K; i++) memcpy(rec + 12 + 4 * (size_t)kf.K + 4 * (size_t)i, &lp[top[i]], 4);
                    if (fwrite(rec, 1, kf.rec, kf.f) != kf.rec) {
                        tl_fail(err, "%s: write failed", p->kl_base);
                        goto done;
                    }
                } else {
                    if (fread(rec, 1, kf.rec, kf.f) != kf.rec) {
                        tl_fail(err, "KL baseline %s: truncated", p->kl_base);
                        goto done;
                    }
                    int32_t bt;
                    float rest, blpt;
                    memcpy(&bt, rec, 4);
                    memcpy(&blpt, rec + 4, 4);
                    memcpy(&rest, rec + 8, 4);
                    if (bt != target) {
                        tl_fail(err, "KL baseline %s: target differs at row %lld", p->kl_base, (long long)o->n);
                        goto done;
                    }
                    int32_t bid[KLD_TOPK];
                    float blp[KLD_TOPK];
                    memcpy(bid, rec + 12, 4 * (size_t)kf.K);
                    memcpy(blp, rec + 12 + 4 * (size_t)kf.K, 4 * (size_t)kf.K);
                    const double kl = tl_kld_row(bid, blp, kf.K, rest, lp);
                    o->kl += kl;
                    o->tok_kl[o->n - 1] = kl;
                    o->tok_base_nll[o->n - 1] = -(double)blpt;
                    int best = 0;
                    for (int i = 1; i < V; i++)
                        if (lp[i] > lp[best]) best = i;
                    o->top1 += best == bid[0];
                }
            }
        }
    }
    o->tok_prefill = (int64_t)n_win * ctx;
    /* memory with ctx tokens held: the session's own accounting */
    tl_session_mem sm;
    tl_session_memory(s, &sm);
    o->measured.weights = sm.weights;
    o->measured.kv = sm.kv;
    o->measured.act = sm.activations;
    o->measured.logits = sizeof(float) * (uint64_t)V;
    o->measured.total = sm.weights + sm.kv + sm.activations + o->measured.logits;
    o->measured.chunk = s->chunk;
    if (tl_session_device_memory(s, &o->gm)) {
        /* the device's bytes: weights as uploaded, the KV device tier allocated, activations
         * and the block-format workspace; and the planner's figures for the same session */
        o->on_gpu = true;
        o->measured.weights = o->gm.weights;
        o->measured.kv = o->gm.kv_alloc;
        o->measured.act = o->gm.activations + o->gm.workspace;
        o->measured.total = o->measured.weights + o->measured.kv + o->measured.act + o->measured.logits;
        tl_error perr = {{0}};
        o->gp_ok = !tl_session_device_plan(s, plan->layers, &o->gp, &perr);
    }
    /* decode at depth ctx: the text's next tokens one at a time */
    if (n_dec > 0) {
        const int64_t base = (int64_t)(n_win - 1) * ctx + ctx;
        for (int i = 0; i < n_dec; i++) win[i] = base + i < (int64_t)n_ids ? ids[base + i] : ids[i];
        double t0 = tl_time_s();
        for (int i = 0; i < n_dec; i++)
            if (tl_session_eval(s, win + i, 1, logits, false, err)) goto done;
        o->decode_tps = n_dec / (tl_time_s() - t0);
    }
    rc = 0;
done:
    if (have_kl) kl_close(&kf, rc == 0);
    free(win);
    free(lp);
    free(logits);
    free(ids);
    tl_session_free(s);
    o->rss = peak_rss_bytes();
    return rc;
}

/* ---- NIAH / RULER through the eval runner ---- */
typedef struct {
    tl_model *m;
    const tl_kv_plan *plan;
    int chunk;
    const char *device;
    const tl_cuda_opts *cuda;
} factory_ctx;

static tl_session *factory(void *ctx, int n_ctx, int n_threads, tl_error *err) {
    factory_ctx *f = ctx;
    const tl_session_params sp = {.n_ctx = n_ctx, .n_threads = n_threads, .chunk = f->chunk > 0 ? f->chunk : n_ctx,
                                  .kv = f->plan, .device = f->device, .cuda = *f->cuda};
    return tl_session_new(f->m, &sp, err);
}

/* scores (may be NULL) receives each sample's score, n_kinds x n_depths x samples in that order
 * (the same samples for every configuration of a sweep: seeds depend on the indices only). */
static int run_samples(tl_model *m, const tl_kv_plan *plan, const tl_pareto_config *c, const tl_pareto_run_params *p,
                       const tl_task_kind *kinds, int n_kinds, const double *depths, int n_depths, int samples,
                       double *score, int *n_out, double *tps, double *scores, tl_error *err) {
    tl_haystack hay = {0};
    const int n = n_kinds * n_depths * samples;
    tl_task_sample *ts = tl_xcalloc((size_t)n, sizeof *ts);
    tl_eval_job *jobs = tl_xcalloc((size_t)n, sizeof *jobs);
    int rc = -1, k = 0;
    if (tl_haystack_from_dir(&hay, m->tok, p->haystack, (int64_t)p->ctx + 4096, err)) goto done;
    for (int ki = 0; ki < n_kinds; ki++)
        for (int di = 0; di < n_depths; di++)
            for (int si = 0; si < samples; si++, k++) {
                const uint64_t seed = p->seed * 1000003ull + (uint64_t)si * 7919 + (uint64_t)di * 104729 + (uint64_t)ki * 31;
                if (tl_task_generate(&ts[k], kinds[ki], m->tok, &hay, p->ctx, depths ? depths[di] : -1.0, seed, err)) {
                    tl_fail_prefix(err, "%s", tl_task_name(kinds[ki]));
                    goto done;
                }
                jobs[k] = (tl_eval_job){.ids = ts[k].prompt.ids, .n_ids = ts[k].prompt.n, .max_new = ts[k].max_new,
                                   .stop_newline = ts[k].stop_newline};
            }
    factory_ctx fc = {m, plan, c->chunk, p->device, &p->cuda};
    tl_runner r = {.model = m, .new_session = factory, .factory_ctx = &fc, .n_threads = p->n_threads, .n_parallel = 1,
                   .no_reuse = true};
    const double t0 = tl_time_s();
    if (tl_run_jobs(&r, jobs, n, err)) goto done;
    const double secs = tl_time_s() - t0;
    double sum = 0;
    int64_t toks = 0;
    for (k = 0; k < n; k++) {
        const double sk = tl_score(ts[k].metric, jobs[k].output ? jobs[k].output : "", (const char *const *)ts[k].refs,
                                   ts[k].n_refs);
        sum += sk;
        if (scores) scores[k] = sk;
        toks += ts[k].prompt.n;
    }
    *score = sum / n;
    *n_out = n;
    *tps = toks / secs;
    rc = 0;
done:
    for (int i = 0; i < n; i++) {
        tl_task_sample_free(&ts[i]);
        tl_eval_job_clear(&jobs[i]);
    }
    free(ts);
    free(jobs);
    tl_haystack_free(&hay);
    return rc;
}

/* "device": {"name", "weights", "workspace", "kv_device", "kv_host", "activations", "total"} as
 * allocated, and "device_plan": the planner's same parts, with reserve and total
 * (tl_device_plan_json; report.c compares them). */
static void x_add_device(cJSON *x, const ppl_out *o) {
    const tl_device_mem *g = &o->gm;
    cJSON *d = cJSON_AddObjectToObject(x, "device");
    cJSON_AddStringToObject(d, "name", g->device);
    cJSON_AddNumberToObject(d, "weights", (double)g->weights);
    cJSON_AddNumberToObject(d, "workspace", (double)g->workspace);
    cJSON_AddNumberToObject(d, "kv_device", (double)g->kv_alloc);
    cJSON_AddNumberToObject(d, "kv_host", (double)g->host_alloc);
    cJSON_AddNumberToObject(d, "activations", (double)g->activations);
    cJSON_AddNumberToObject(d, "total", (double)(g->weights + g->workspace + g->kv_alloc + g->activations));
    if (!o->gp_ok) return;
    tl_device_plan_json(cJSON_AddObjectToObject(x, "device_plan"), &o->gp);
}

int tl_pareto_run_config(const tl_pareto_config *c, const tl_pareto_run_params *p, tl_error *err) {
    /* test hooks: make one configuration crash, to check that a sweep survives it; or stall
     * for 5 s first, to kill its sweep while it runs */
    const char *crash = getenv("TL_PARETO_CRASH"), *stall = getenv("TL_PARETO_STALL");
    if (crash && *crash && strstr(c->id, crash)) abort();
    if (stall && *stall && strstr(c->id, stall)) sleep(5);
    char tasks[512];
    snprintf(tasks, sizeof tasks, "%s", p->tasks && *p->tasks ? p->tasks : "ppl");
    const char *model_name = p->base_model ? p->base_model : p->model_path;
    tl_kv_plan plan = {0};
    tl_model *m = tl_model_load(p->model_path, err);
    int rc = 0;
    if (m && tl_kv_plan_parse(&plan, c->kv, c->kv_layer[0] ? c->kv_layer : NULL, m->cfg.n_layer, err)) {
        tl_model_free(m);
        m = NULL;
    }
    char *save = NULL;
    for (char *t = strtok_r(tasks, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (tl_pareto_in_list(p->skip_tasks, t)) continue;
        tl_error terr = {{0}};
        if (!m) {
            tl_pareto_append_failure(p->results, c, model_name, p->ctx, t, err->msg, NULL, &terr);
            rc = -1;
            continue;
        }
        cJSON *x = cJSON_CreateObject();
        double value = NAN, secs = 0;
        int64_t n = 0;
        const double t0 = tl_time_s();
        int trc = 0;
        if (!strcmp(t, "ppl")) {
            ppl_out o;
            trc = run_ppl(m, &plan, c, p, &o, &terr);
            if (trc) ppl_out_free(&o);
            if (!trc) {
                value = exp(o.nll / (double)o.n);
                n = o.n;
                cJSON_AddNumberToObject(x, "ppl", value);
                if (p->kl_base && !p->write_base) {
                    /* against the baseline, paired over the same tokens (docs/accuracy.md, Intervals) */
                    const tl_interval ratio = tl_ppl_ratio_interval(o.tok_base_nll, o.tok_nll, o.n);
                    const tl_interval kld = tl_block_mean(o.tok_kl, o.n, TL_STATS_BLOCK);
                    const tl_interval top1 = tl_wilson((int64_t)llround(o.top1), o.n);
                    cJSON_AddNumberToObject(x, "kld", o.kl / (double)o.n);
                    cJSON_AddNumberToObject(x, "same_top1", o.top1 / (double)o.n);
                    cJSON_AddItemToObject(x, "ppl_ratio_ci", interval_json(ratio));
                    cJSON_AddItemToObject(x, "kld_ci", interval_json(kld));
                    cJSON_AddItemToObject(x, "same_top1_ci", interval_json(top1));
                }
                ppl_out_free(&o);
                cJSON_AddItemToObject(x, "mem", mem_json(&o.measured));
                if (o.on_gpu) x_add_device(x, &o);
                cJSON_AddNumberToObject(x, "rss_peak", (double)o.rss);
                cJSON *sp = cJSON_AddObjectToObject(x, "speed");
                cJSON_AddNumberToObject(sp, "prefill_tps", o.tok_prefill / o.secs_prefill);
                cJSON_AddNumberToObject(sp, "decode_tps", o.decode_tps);
                cJSON_AddNumberToObject(sp, "threads", p->n_threads);
                /* the same memory by formula at the evaluated length, and projected */
                tl_pareto_mem f;
                if (!tl_pareto_mem_project(m, &plan, c->chunk, p->ctx, &f, &terr))
                    cJSON_AddItemToObject(x, "mem_formula", mem_json(&f));
                if (p->target_ctx > 0 &&
                    !tl_pareto_mem_project(m, &plan, c->chunk, p->target_ctx, &f, &terr)) {
                    cJSON *pj = mem_json(&f);
                    cJSON_AddNumberToObject(pj, "ctx", p->target_ctx);
                    cJSON_AddItemToObject(x, "proj", pj);
                }
                if (p->target_ctx > 0 && p->project_to) {
                    if (!tl_pareto_mem_project_to(p->project_to, c->weights, &plan, c->chunk, p->target_ctx, &f,
                                                  &terr)) {
                        cJSON *pj = mem_json(&f);
                        cJSON_AddNumberToObject(pj, "ctx", p->target_ctx);
                        cJSON_AddStringToObject(pj, "model", p->project_to);
                        cJSON_AddItemToObject(x, "proj_to", pj);
                    } else {
                        cJSON_AddStringToObject(x, "proj_to_error", terr.msg);
                    }
                    terr.msg[0] = 0;
                }
            }
        } else {
            tl_task_kind kinds[TL_TASK_COUNT];
            int nk = 0, samples = p->ruler_samples > 0 ? p->ruler_samples : 1, nd = 1;
            const double *depths = NULL;
            if (!strcmp(t, "niah")) {
                kinds[nk++] = TL_TASK_PASSKEY;
                depths = p->niah_depths;
                nd = p->n_niah_depths;
                samples = p->niah_samples > 0 ? p->niah_samples : 1;
            } else if (!strcmp(t, "ruler")) {
                kinds[nk++] = TL_TASK_NIAH_MULTIKEY;
                kinds[nk++] = TL_TASK_NIAH_MULTIVALUE;
                kinds[nk++] = TL_TASK_NIAH_MULTIQUERY;
                kinds[nk++] = TL_TASK_VT;
            } else if (tl_task_parse(t) >= 0) {
                kinds[nk++] = (tl_task_kind)tl_task_parse(t);
            }
            double tps = 0, score = 0;
            int cnt = 0;
            double *scores = tl_xcalloc((size_t)TL_MAX(1, nk) * (size_t)TL_MAX(1, depths ? nd : 1) * (size_t)samples,
                                        sizeof(double));
            if (!nk) trc = tl_fail(&terr, "unknown task '%s' (ppl, niah, ruler or a RULER task name)", t);
            else if (depths && nd <= 0) trc = tl_fail(&terr, "niah: no depths");
            else
                trc = run_samples(m, &plan, c, p, kinds, nk, depths, depths ? nd : 1, samples, &score, &cnt, &tps, scores,
                                  &terr);
            if (!trc) {
                value = score;
                n = cnt;
                /* every sample's score: the report pairs them with the baseline's (same seeds) */
                cJSON_AddItemToObject(x, "samples", cJSON_CreateDoubleArray(scores, cnt));
                cJSON_AddItemToObject(x, "score_ci", interval_json(tl_score_interval(scores, cnt)));
                cJSON *sp = cJSON_AddObjectToObject(x, "speed");
                cJSON_AddNumberToObject(sp, "prompt_tps", tps);
                cJSON_AddNumberToObject(x, "rss_peak", (double)peak_rss_bytes());
            }
            free(scores);
        }
        secs = tl_time_s() - t0;
        if (trc) {
            tl_error aerr = {{0}};
            if (tl_pareto_append_failure(p->results, c, model_name, p->ctx, t, terr.msg, NULL, &aerr))
                fprintf(stderr, "pareto: %s\n", aerr.msg);
            fprintf(stderr, "pareto: %s: %s: failed: %s\n", c->id, t, terr.msg);
        } else {
            cJSON_AddStringToObject(x, "status", "ok");
            cJSON *cfg = config_json(c, model_name, p->ctx);
            if (tl_result_append(p->results, "pareto", cfg, t, value, n, secs, x, &terr)) {
                fprintf(stderr, "pareto: %s\n", terr.msg);
                rc = -1;
            }
            cJSON_Delete(cfg);
        }
        cJSON_Delete(x);
    }
    tl_kv_plan_free(&plan);
    tl_model_free(m);
    return rc;
}
