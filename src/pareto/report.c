/* report.c: results.jsonl -> table of configurations (relative accuracy, frontier),
 * frontier.csv and report.md; what a results file already holds (--resume). */
#define _GNU_SOURCE
#include "pareto.h"
#include "../eval/stats.h"
#include "../eval/report.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double num(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}
static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsString(v) ? v->valuestring : "";
}

static int task_index(tl_pareto_table *t, const char *task) {
    for (int i = 0; i < t->n_tasks; i++)
        if (!strcmp(t->tasks[i], task)) return i;
    if (t->n_tasks == 8) return -1;
    snprintf(t->tasks[t->n_tasks], sizeof t->tasks[0], "%s", task);
    return t->n_tasks++;
}

static tl_pareto_row *row_for(tl_pareto_table *t, const cJSON *cfg, int *cap) {
    const char *id = str(cfg, "id");
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->rows[i].id, id)) return &t->rows[i];
    if (t->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        t->rows = tl_xrealloc(t->rows, sizeof *t->rows * (size_t)*cap);
    }
    tl_pareto_row *r = &t->rows[t->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", id);
    snprintf(r->label, sizeof r->label, "%s", str(cfg, "label"));
    snprintf(r->weights, sizeof r->weights, "%s", str(cfg, "weights"));
    snprintf(r->kv, sizeof r->kv, "%s", str(cfg, "kv"));
    snprintf(r->kv_layer, sizeof r->kv_layer, "%s", str(cfg, "kv_layer"));
    r->chunk = (int)num(cfg, "chunk");
    r->kld = r->top1 = r->mem_w = r->mem_kv = r->mem_act = r->mem_total = r->rss = NAN;
    r->device_plan = -1;
    r->proj_total = r->proj_kv = r->proj2_total = r->proj2_kv = r->prefill_tps = r->decode_tps = r->acc = NAN;
    r->acc_lo = r->acc_hi = NAN;
    for (int i = 0; i < 8; i++) r->score[i] = r->rel[i] = r->rel_lo[i] = r->rel_hi[i] = r->ratio_lo[i] = r->ratio_hi[i] = NAN;
    return r;
}

/* rel_lo/rel_hi of task k of row r against the baseline row b (rel[k] already set). */
static void rel_interval(tl_pareto_row *r, const tl_pareto_row *b, int k, bool ppl, bool is_base) {
    r->rel_lo[k] = r->rel_hi[k] = r->rel[k];
    if (is_base) return;
    if (ppl) { /* rel = 1 / ratio: the ends swap */
        if (!isnan(r->ratio_lo[k]) && !isnan(r->ratio_hi[k]) && r->ratio_lo[k] > 0) {
            r->rel_lo[k] = 1.0 / r->ratio_hi[k];
            r->rel_hi[k] = 1.0 / r->ratio_lo[k];
        }
        return;
    }
    const int n = r->n_samples[k];
    if (n == 0 || n != b->n_samples[k]) return; /* nothing to pair: no interval */
    bool binary = true;
    for (int i = 0; i < n && binary; i++)
        binary = (r->samples[k][i] == 0 || r->samples[k][i] == 1) && (b->samples[k][i] == 0 || b->samples[k][i] == 1);
    double dlo, dhi;
    if (binary) { /* discordant pairs: won (config right, base wrong) and lost */
        int64_t won = 0, lost = 0;
        for (int i = 0; i < n; i++) won += r->samples[k][i] > b->samples[k][i], lost += r->samples[k][i] < b->samples[k][i];
        const tl_interval w = tl_wilson(won, n), l = tl_wilson(lost, n);
        dlo = w.lo - l.hi;
        dhi = w.hi - l.lo;
    } else {
        double *d = tl_xmalloc(sizeof(double) * (size_t)n);
        for (int i = 0; i < n; i++) d[i] = r->samples[k][i] - b->samples[k][i];
        const tl_interval di = tl_block_mean(d, n, 1);
        free(d);
        dlo = di.lo;
        dhi = di.hi;
    }
    const double bs = b->score[k];
    r->rel_lo[k] = bs > 0 ? (bs + dlo) / bs : 1 + dlo;
    r->rel_hi[k] = bs > 0 ? (bs + dhi) / bs : 1 + dhi;
}

static void take_line(tl_pareto_table *t, const cJSON *o, int *cap) {
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(o, "config");
    if (strcmp(str(o, "cmd"), "pareto") || !cJSON_IsObject(cfg) || !*str(cfg, "id")) return;
    const int ti = task_index(t, str(o, "metric"));
    if (ti < 0) return;
    tl_pareto_row *r = row_for(t, cfg, cap);
    if (!t->model[0]) snprintf(t->model, sizeof t->model, "%s", str(cfg, "model"));
    if (!t->ctx) t->ctx = (int)num(cfg, "ctx");
    const bool ok = !strcmp(str(o, "status"), "ok");
    r->task_ok[ti] = ok;
    r->score[ti] = ok ? num(o, "value") : NAN;
    if (!ok) snprintf(r->reason, sizeof r->reason, "%s: %s", t->tasks[ti], str(o, "reason"));
    const cJSON *mem = cJSON_GetObjectItemCaseSensitive(o, "mem");
    if (!mem) mem = cJSON_GetObjectItemCaseSensitive(o, "mem_formula");
    if (ok && mem && (cJSON_GetObjectItemCaseSensitive(o, "mem") || isnan(r->mem_total))) {
        r->mem_w = num(mem, "weights");
        r->mem_kv = num(mem, "kv");
        r->mem_act = num(mem, "act") + num(mem, "logits");
        r->mem_total = num(mem, "total");
    }
    const cJSON *dev = cJSON_GetObjectItemCaseSensitive(o, "device");
    if (ok && dev) {
        snprintf(r->device, sizeof r->device, "%s", str(dev, "name"));
        /* the plan holds: weights, workspace and both KV tiers to the byte; activations at most
         * as planned (the attention partials grow on demand up to the planner's allowance) */
        const cJSON *pl = cJSON_GetObjectItemCaseSensitive(o, "device_plan");
        r->device_plan = !pl ? -1
                             : num(pl, "weights") == num(dev, "weights") && num(pl, "workspace") == num(dev, "workspace") &&
                                   num(pl, "kv_device") == num(dev, "kv_device") && num(pl, "kv_host") == num(dev, "kv_host") &&
                                   num(dev, "activations") <= num(pl, "activations");
    }
    if (ok && !isnan(num(o, "rss_peak"))) r->rss = isnan(r->rss) ? num(o, "rss_peak") : fmax(r->rss, num(o, "rss_peak"));
    const cJSON *pj = cJSON_GetObjectItemCaseSensitive(o, "proj");
    if (ok && pj) {
        r->proj_total = num(pj, "total");
        r->proj_kv = num(pj, "kv");
        t->target_ctx = (int)num(pj, "ctx");
    }
    const cJSON *p2 = cJSON_GetObjectItemCaseSensitive(o, "proj_to");
    if (ok && p2) {
        r->proj2_total = num(p2, "total");
        r->proj2_kv = num(p2, "kv");
        snprintf(t->project_to, sizeof t->project_to, "%s", str(p2, "model"));
    }
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(o, "speed");
    if (ok && sp && !isnan(num(sp, "prefill_tps"))) {
        r->prefill_tps = num(sp, "prefill_tps");
        r->decode_tps = num(sp, "decode_tps");
    } else if (ok && sp && isnan(r->prefill_tps)) {
        r->prefill_tps = num(sp, "prompt_tps");
    }
    if (ok && !strcmp(t->tasks[ti], "ppl") && !isnan(num(o, "kld"))) {
        r->kld = num(o, "kld");
        r->top1 = num(o, "same_top1");
    }
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(o, "ppl_ratio_ci");
    r->ratio_lo[ti] = ok && rc ? num(rc, "lo") : NAN;
    r->ratio_hi[ti] = ok && rc ? num(rc, "hi") : NAN;
    const cJSON *sm = cJSON_GetObjectItemCaseSensitive(o, "samples");
    free(r->samples[ti]);
    r->samples[ti] = NULL;
    r->n_samples[ti] = 0;
    if (ok && cJSON_IsArray(sm)) {
        const int n = cJSON_GetArraySize(sm);
        r->samples[ti] = tl_xcalloc((size_t)TL_MAX(n, 1), sizeof(double));
        for (int i = 0; i < n; i++) r->samples[ti][i] = cJSON_GetArrayItem(sm, i)->valuedouble;
        r->n_samples[ti] = n;
    }
    if (r->n_tasks < t->n_tasks) r->n_tasks = t->n_tasks;
}

int tl_pareto_load(tl_pareto_table *t, const char *const *paths, int n_paths, const char *baseline_id, bool use_speed,
                   tl_error *err) {
    memset(t, 0, sizeof *t);
    t->base = -1;
    int cap = 0;
    for (int f = 0; f < n_paths; f++) {
        FILE *fp = fopen(paths[f], "r");
        if (!fp) return tl_fail(err, "%s: cannot open", paths[f]);
        char *line = NULL;
        size_t lcap = 0;
        ssize_t len;
        while ((len = getline(&line, &lcap, fp)) > 0) {
            if (line[len - 1] != '\n') break; /* a torn last line (killed mid-write) */
            cJSON *o = cJSON_Parse(line);
            if (o) take_line(t, o, &cap);
            cJSON_Delete(o);
        }
        free(line);
        fclose(fp);
    }
    if (t->n == 0) return tl_fail(err, "no pareto result lines in %s%s", n_paths ? paths[0] : "(none)", n_paths > 1 ? " ..." : "");
    /* baseline: the named one, else base weights + f16 KV (chunk 256 preferred) */
    for (int i = 0; i < t->n; i++) {
        const tl_pareto_row *r = &t->rows[i];
        if (baseline_id ? !strcmp(r->id, baseline_id)
                        : (!strcmp(r->weights, "base") && !strcmp(r->kv, "f16") && !r->kv_layer[0] &&
                           (t->base < 0 || (r->chunk == 256 && t->rows[t->base].chunk != 256))))
            t->base = i;
    }
    if (baseline_id && t->base < 0) return tl_fail(err, "baseline '%s' not in the results", baseline_id);
    const tl_pareto_row *b = t->base >= 0 ? &t->rows[t->base] : NULL;
    for (int i = 0; i < t->n; i++) {
        tl_pareto_row *r = &t->rows[i];
        r->n_tasks = t->n_tasks;
        r->baseline = i == t->base;
        double sum = 0, sum_lo = 0, sum_hi = 0;
        int cnt = 0;
        for (int k = 0; k < t->n_tasks; k++) {
            if (!r->task_ok[k]) {
                r->failed = true;
                if (!r->reason[0]) snprintf(r->reason, sizeof r->reason, "%s: not run", t->tasks[k]);
                continue;
            }
            if (!b || !b->task_ok[k]) continue;
            const double s = r->score[k], bs = b->score[k];
            /* ppl: PPL_base / PPL (= exp(-(mean NLL - base mean NLL))); tasks: score / base score,
             * or 1 + the absolute difference when the baseline scores 0 */
            if (!strcmp(t->tasks[k], "ppl")) r->rel[k] = bs / s;
            else r->rel[k] = bs > 0 ? s / bs : 1 + s - bs;
            rel_interval(r, b, k, !strcmp(t->tasks[k], "ppl"), r == b);
            sum += r->rel[k];
            sum_lo += r->rel_lo[k];
            sum_hi += r->rel_hi[k];
            cnt++;
        }
        r->acc = cnt ? sum / cnt : NAN;
        r->acc_lo = cnt ? sum_lo / cnt : NAN;
        r->acc_hi = cnt ? sum_hi / cnt : NAN;
        if (isnan(r->mem_total)) r->failed = true;
    }
    tl_pareto_point *pts = tl_xcalloc((size_t)t->n, sizeof *pts);
    int *on = tl_xcalloc((size_t)t->n, sizeof *on);
    for (int i = 0; i < t->n; i++)
        pts[i] = (tl_pareto_point){t->rows[i].mem_total, t->rows[i].acc_lo, t->rows[i].decode_tps, t->rows[i].failed};
    tl_pareto_frontier(pts, t->n, use_speed, on);
    for (int i = 0; i < t->n; i++) t->rows[i].frontier = on[i];
    free(pts);
    free(on);
    return 0;
}

void tl_pareto_table_free(tl_pareto_table *t) {
    for (int i = 0; i < t->n; i++)
        for (int k = 0; k < 8; k++) free(t->rows[i].samples[k]);
    free(t->rows);
    memset(t, 0, sizeof *t);
}

char *tl_pareto_done_pairs(const char *path) {
    FILE *fp = fopen(path, "r");
    size_t cap = 4096, n = 0;
    char *out = tl_xmalloc(cap);
    out[0] = 0;
    if (!fp) return out;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, fp)) > 0) {
        if (line[len - 1] != '\n') break;
        cJSON *o = cJSON_Parse(line);
        const cJSON *cfg = o ? cJSON_GetObjectItemCaseSensitive(o, "config") : NULL;
        if (o && !strcmp(str(o, "cmd"), "pareto") && cfg) {
            const char *id = str(cfg, "id"), *task = str(o, "metric");
            const size_t need = strlen(id) + strlen(task) + 3;
            if (n + need + 1 > cap) out = tl_xrealloc(out, cap = 2 * (n + need + 1));
            n += (size_t)sprintf(out + n, "%s\t%s\n", id, task);
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(fp);
    return out;
}

/* ---- output ---- */


static double mib(double b) { return b / 1048576.0; }
static double red(double m, double base) { return 100.0 * (1.0 - m / base); }

int tl_pareto_write_csv(const tl_pareto_table *t, const char *path, tl_error *err) {
    tl_strbuf b = {0};
    tl_strbuf_printf(&b, "id,label,weights,kv,kv_layer,chunk,mem_bytes,mem_reduction_pct,acc_rel,acc_delta_pct,kv_bytes,act_bytes,"
            "proj_ctx,proj_bytes,proj_reduction_pct,proj_to,proj_to_bytes,proj_to_reduction_pct,prefill_tps,decode_tps,acc_lo,acc_hi\n");
    const tl_pareto_row *B = t->base >= 0 ? &t->rows[t->base] : NULL;
    /* frontier rows by increasing memory */
    int *idx = tl_xcalloc((size_t)t->n + 1, sizeof *idx), n = 0;
    for (int i = 0; i < t->n; i++)
        if (t->rows[i].frontier) idx[n++] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t->rows[idx[j]].mem_total < t->rows[idx[j - 1]].mem_total; j--) {
            int x = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = x;
        }
    for (int k = 0; k < n; k++) {
        const tl_pareto_row *r = &t->rows[idx[k]];
        tl_strbuf_printf(&b, "\"%s\",\"%s\",%s,%s,\"%s\",%d,%.0f,%.2f,%.6f,%.3f,%.0f,%.0f,%d,%.0f,%.2f,\"%s\",%.0f,%.2f,%.2f,%.2f,%.6f,%.6f\n", r->id,
            r->label, r->weights, r->kv, r->kv_layer, r->chunk, r->mem_total, B ? red(r->mem_total, B->mem_total) : NAN,
            r->acc, 100 * (r->acc - 1), r->mem_kv, r->mem_act, t->target_ctx, r->proj_total,
            B ? red(r->proj_total, B->proj_total) : NAN, t->project_to, r->proj2_total,
            B ? red(r->proj2_total, B->proj2_total) : NAN, r->prefill_tps, r->decode_tps, r->acc_lo, r->acc_hi);
    }
    free(idx);
    int rc = tl_write_file(path, b.p, b.n, err);
    free(b.p);
    return rc;
}

static tl_pareto_point *points(const tl_pareto_table *t, int which) {
    tl_pareto_point *p = tl_xcalloc((size_t)t->n + 1, sizeof *p);
    for (int i = 0; i < t->n; i++) {
        const tl_pareto_row *r = &t->rows[i];
        const double m = which == 0 ? r->mem_total : which == 1 ? r->proj_total : r->proj2_total;
        p[i] = (tl_pareto_point){m, r->acc_lo, r->decode_tps, r->failed || isnan(m)};
    }
    return p;
}

static void fmt_mem(char *buf, size_t n, double bytes) {
    if (isnan(bytes)) snprintf(buf, n, "-");
    else if (bytes >= 1024.0 * 1048576.0) snprintf(buf, n, "%.2f GiB", bytes / 1073741824.0);
    else snprintf(buf, n, "%.1f MiB", mib(bytes));
}

/* within-loss picks for one memory axis */
static void picks(tl_strbuf *b, const tl_pareto_table *t, int which, const char *what, double max_loss) {
    const tl_pareto_row *B = &t->rows[t->base];
    const double bm = which == 0 ? B->mem_total : which == 1 ? B->proj_total : B->proj2_total;
    if (isnan(bm)) return;
    tl_pareto_point *p = points(t, which);
    char bb[32];
    fmt_mem(bb, sizeof bb, bm);
    tl_strbuf_printf(b, "\n**%s** (baseline %s):\n\n", what, bb);
    const double losses[3] = {0.01, 0.03, max_loss};
    for (int k = 0; k < 3; k++) {
        if (k == 2 && (max_loss < 0 || max_loss == 0.01 || max_loss == 0.03)) continue;
        const int i = tl_pareto_pick_min_mem(p, t->n, 1.0 - losses[k]);
        if (i < 0) {
            tl_strbuf_printf(b, "- within %.0f%% loss: none\n", 100 * losses[k]);
            continue;
        }
        const tl_pareto_row *r = &t->rows[i];
        char m[32];
        fmt_mem(m, sizeof m, p[i].mem);
        tl_strbuf_printf(b, "- within %g%% accuracy loss (at the pessimistic end of its interval): `%s`, %s, **-%.1f%%** "
                            "total memory (accuracy %+.2f%%, 95%% [%+.2f%%, %+.2f%%])\n",
            100 * losses[k], r->label, m, red(p[i].mem, bm), 100 * (r->acc - 1), 100 * (r->acc_lo - 1), 100 * (r->acc_hi - 1));
    }
    free(p);
}

char *tl_pareto_report_md(const tl_pareto_table *t, const tl_pareto_report_opts *o) {
    tl_strbuf b = {0};
    const tl_pareto_row *B = t->base >= 0 ? &t->rows[t->base] : NULL;
    tl_strbuf_printf(&b, "# %s\n\n", o && o->title ? o->title : "KV Pareto sweep");
    tl_strbuf_printf(&b, "Model `%s`, evaluation context %d tokens, tasks:", t->model, t->ctx);
    for (int k = 0; k < t->n_tasks; k++) tl_strbuf_printf(&b, " %s", t->tasks[k]);
    int n_ok = 0, n_front = 0;
    for (int i = 0; i < t->n; i++) n_ok += !t->rows[i].failed, n_front += t->rows[i].frontier;
    tl_strbuf_printf(&b, ". %d configurations, %d evaluated, %d failed, %d on the frontier.\n\n", t->n, n_ok, t->n - n_ok, n_front);
    tl_strbuf_printf(&b, "Memory = weights + KV cache + peak activations (chunk buffers, matmul scratch, one row of logits), "
            "from the session's allocator accounting with %d tokens held. Accuracy is relative to the baseline "
            "(100%% = baseline): ppl as PPL(base)/PPL, other tasks as score/base score; `acc` is their mean. Each "
            "comes with a 95%% interval paired with the baseline (ppl: block bootstrap over the scored tokens; "
            "needle and task scores: the same samples in every configuration, Wilson bounds on the ones won and "
            "lost); `acc`'s interval averages the tasks' ends (conservative). The frontier and the picks use the "
            "pessimistic end, so a configuration is never chosen for a difference inside the noise; an interval "
            "containing 100%% reads \"no measurable loss\".\n\n",
            t->ctx);
    int n_dev = 0, n_eq = 0;
    const char *card = NULL;
    for (int i = 0; i < t->n; i++) {
        const tl_pareto_row *r = &t->rows[i];
        if (!r->device[0]) continue;
        n_dev++, n_eq += r->device_plan == 1;
        card = r->device;
    }
    if (n_dev) {
        tl_strbuf_printf(&b, "Run on the GPU (%s): memory is the device's, as allocated: weights as uploaded + KV device "
                "tier + activations and the block-format weights' workspace (+ one row of logits). The planner's "
                "projection equals the allocation of weights, workspace and KV tiers to the byte, and bounds the "
                "activations (attention partials grow on demand up to its allowance), for %d of %d configurations",
                card, n_eq, n_dev);
        for (int i = 0, first = 1; i < t->n; i++)
            if (t->rows[i].device[0] && t->rows[i].device_plan != 1) {
                tl_strbuf_printf(&b, "%s`%s`", first ? " (not: " : ", ", t->rows[i].label);
                first = 0;
            }
        tl_strbuf_printf(&b, "%s.\n\n", n_eq < n_dev ? ")" : "");
    }
    if (B) {
        char m[32], p1[32], p2[32];
        fmt_mem(m, sizeof m, B->mem_total);
        fmt_mem(p1, sizeof p1, B->proj_total);
        fmt_mem(p2, sizeof p2, B->proj2_total);
        tl_strbuf_printf(&b, "Baseline `%s`: %s total (weights %.1f MiB, KV %.1f MiB, activations %.1f MiB)", B->label, m,
            mib(B->mem_w), mib(B->mem_kv), mib(B->mem_act));
        if (t->target_ctx) tl_strbuf_printf(&b, "; at %d tokens %s", t->target_ctx, p1);
        if (t->project_to[0]) tl_strbuf_printf(&b, "; as %s at %d tokens %s", t->project_to, t->target_ctx, p2);
        tl_strbuf_printf(&b, ".\n");
    } else {
        tl_strbuf_printf(&b, "No baseline (base weights, f16 KV) in the results: relative accuracy is not available.\n");
    }
    if (B) {
        picks(&b, t, 0, "Smallest total memory within a loss, at the evaluated context", o ? o->max_loss : -1);
        if (t->target_ctx) {
            char w[96];
            snprintf(w, sizeof w, "Projected to %d tokens (same model)", t->target_ctx);
            picks(&b, t, 1, w, o ? o->max_loss : -1);
        }
        if (t->project_to[0]) {
            char w[700];
            snprintf(w, sizeof w, "Projected to %s at %d tokens (weights re-encoded to each format; base = f16)",
                     t->project_to, t->target_ctx);
            picks(&b, t, 2, w, o ? o->max_loss : -1);
        }
        if (o && o->budget > 0) {
            const int which = t->target_ctx ? 1 : 0;
            tl_pareto_point *p = points(t, which);
            const int i = tl_pareto_pick_budget(p, t->n, o->budget);
            char bud[32];
            fmt_mem(bud, sizeof bud, o->budget);
            tl_strbuf_printf(&b, "\n**Budget %s** (%s): ", bud, which ? "projected memory at the target context" : "measured memory");
            if (i < 0) tl_strbuf_printf(&b, "no configuration fits: memory binds everywhere.\n");
            else {
                const tl_pareto_row *r = &t->rows[i];
                char m[32];
                fmt_mem(m, sizeof m, p[i].mem);
                tl_strbuf_printf(&b, "`%s` (%s, accuracy %+.2f%%, 95%% [%+.2f%%, %+.2f%%]). ", r->label, m, 100 * (r->acc - 1),
                                 100 * (r->acc_lo - 1), 100 * (r->acc_hi - 1));
                /* the budget binds when a more accurate configuration exists above it */
                int better = -1;
                for (int j = 0; j < t->n; j++)
                    if (!p[j].failed && p[j].acc > p[i].acc && (better < 0 || p[j].mem < p[better].mem)) better = j;
                if (better >= 0) {
                    char m2[32];
                    fmt_mem(m2, sizeof m2, p[better].mem);
                    tl_strbuf_printf(&b, "The memory budget binds: the next more accurate configuration, `%s` (accuracy %+.2f%%), needs %s.\n",
                        t->rows[better].label, 100 * (t->rows[better].acc - 1), m2);
                } else {
                    tl_strbuf_printf(&b, "The budget does not bind: this is the most accurate configuration; accuracy is the limit.\n");
                }
            }
            free(p);
        }
    }
    /* the table, by memory */
    int *idx = tl_xcalloc((size_t)t->n + 1, sizeof *idx);
    for (int i = 0; i < t->n; i++) idx[i] = i;
    for (int i = 1; i < t->n; i++)
        for (int j = i; j > 0; j--) {
            const tl_pareto_row *x = &t->rows[idx[j]], *y = &t->rows[idx[j - 1]];
            const double mx = isnan(x->mem_total) ? INFINITY : x->mem_total, my = isnan(y->mem_total) ? INFINITY : y->mem_total;
            if (mx >= my) break;
            int tmp = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = tmp;
        }
    tl_strbuf_printf(&b, "\n## All configurations (by total memory; ★ = frontier, B = baseline)\n\n| | weights | KV | chunk | total | vs base | KV | act | peak RSS |");
    for (int k = 0; k < t->n_tasks; k++) tl_strbuf_printf(&b, " %s |", t->tasks[k]);
    tl_strbuf_printf(&b, " KLD | acc | Δacc [95%%] |");
    if (t->target_ctx) tl_strbuf_printf(&b, " @%dk | vs base |", t->target_ctx / 1024);
    if (t->project_to[0]) tl_strbuf_printf(&b, " proj-to | vs base |");
    tl_strbuf_printf(&b, " prefill t/s | decode t/s |\n|---|---|---|---:|---:|---:|---:|---:|---:|");
    for (int k = 0; k < t->n_tasks; k++) tl_strbuf_printf(&b, "---:|");
    tl_strbuf_printf(&b, "---:|---:|---:|");
    if (t->target_ctx) tl_strbuf_printf(&b, "---:|---:|");
    if (t->project_to[0]) tl_strbuf_printf(&b, "---:|---:|");
    tl_strbuf_printf(&b, "---:|---:|\n");
    for (int q = 0; q < t->n; q++) {
        const tl_pareto_row *r = &t->rows[idx[q]];
        char ch[16];
        if (r->chunk > 0) snprintf(ch, sizeof ch, "%d", r->chunk);
        else snprintf(ch, sizeof ch, "full");
        tl_strbuf_printf(&b, "| %s%s | %s | `%s%s%s` | %s |", r->frontier ? "★" : "", r->baseline ? "B" : "", r->weights, r->kv,
            r->kv_layer[0] ? " " : "", r->kv_layer, ch);
        if (isnan(r->mem_total) && r->failed) {
            tl_strbuf_printf(&b, " failed: %s |\n", r->reason);
            continue;
        }
        tl_strbuf_printf(&b, " %.1f MiB | %+.1f%% | %.1f | %.1f | %.0f |", mib(r->mem_total), B ? -red(r->mem_total, B->mem_total) : NAN,
            mib(r->mem_kv), mib(r->mem_act), mib(r->rss));
        for (int k = 0; k < t->n_tasks; k++) {
            if (!r->task_ok[k]) tl_strbuf_printf(&b, " failed |");
            else if (!strcmp(t->tasks[k], "ppl")) tl_strbuf_printf(&b, " %.3f |", r->score[k]);
            else tl_strbuf_printf(&b, " %.2f |", r->score[k]);
        }
        if (isnan(r->kld)) tl_strbuf_printf(&b, " - |");
        else tl_strbuf_printf(&b, " %.4f |", r->kld);
        if (r->baseline || isnan(r->acc_lo)) tl_strbuf_printf(&b, " %.2f%% | %+.2f%% |", 100 * r->acc, 100 * (r->acc - 1));
        else if (r->acc_lo <= 1 && r->acc_hi >= 1)
            tl_strbuf_printf(&b, " %.2f%% | no measurable loss [%+.2f%%, %+.2f%%] |", 100 * r->acc, 100 * (r->acc_lo - 1),
                             100 * (r->acc_hi - 1));
        else
            tl_strbuf_printf(&b, " %.2f%% | %+.2f%% [%+.2f%%, %+.2f%%] |", 100 * r->acc, 100 * (r->acc - 1),
                             100 * (r->acc_lo - 1), 100 * (r->acc_hi - 1));
        if (t->target_ctx) tl_strbuf_printf(&b, " %.1f MiB | %+.1f%% |", mib(r->proj_total), B ? -red(r->proj_total, B->proj_total) : NAN);
        if (t->project_to[0])
            tl_strbuf_printf(&b, " %.2f GiB | %+.1f%% |", r->proj2_total / 1073741824.0, B ? -red(r->proj2_total, B->proj2_total) : NAN);
        tl_strbuf_printf(&b, " %.1f | %.1f |", r->prefill_tps, r->decode_tps);
        if (r->failed) tl_strbuf_printf(&b, " (%s)", r->reason);
        tl_strbuf_printf(&b, "\n");
    }
    free(idx);
    tl_strbuf_printf(&b, "\nColumns: total/KV/act in MiB at %d tokens; peak RSS of the configuration's process (MiB: includes "
            "the mapped weight file, evaluation buffers and the text/haystack, a cross-check only); KLD: mean "
            "KL divergence of the next-token distribution vs the baseline (top-32 + rest); Δacc relative to the baseline.\n",
        t->ctx);
    return b.p;
}

/* Cut a torn last line (a sweep killed mid-write) so that appended lines start clean. */
void tl_pareto_repair_tail(const char *path) {
    int fd = open(path, O_RDWR);
    if (fd < 0) return;
    off_t size = lseek(fd, 0, SEEK_END), keep = size;
    char c;
    while (keep > 0 && pread(fd, &c, 1, keep - 1) == 1 && c != '\n') keep--;
    if (keep != size) {
        fprintf(stderr, "pareto: dropping a torn last line of %s (%lld bytes)\n", path, (long long)(size - keep));
        if (ftruncate(fd, keep)) fprintf(stderr, "pareto: %s: cannot truncate: %s\n", path, strerror(errno));
    }
    close(fd);
}

int tl_pareto_n_items(const char *list) {
    int n = 1;
    for (const char *p = list; *p; p++) n += *p == ',';
    return n;
}

bool tl_pareto_in_list(const char *list, const char *item) {
    if (!list) return false;
    const size_t n = strlen(item);
    for (const char *s = list; (s = strstr(s, item)); s += n)
        if ((s == list || s[-1] == ',') && (s[n] == 0 || s[n] == ',')) return true;
    return false;
}

/* the tasks of `tasks` recorded for id in `done` ("id\ttask\n" lines), as a comma list */
char *tl_pareto_done_tasks(const char *done, const char *id, const char *tasks) {
    char *out = tl_xmalloc(strlen(tasks) + 2);
    out[0] = 0;
    char *dup = tl_xstrdup(tasks), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char key[1024];
        snprintf(key, sizeof key, "%s\t%s\n", id, t);
        bool found = false;
        for (const char *p = done; (p = strstr(p, key)); p++)
            if (p == done || p[-1] == '\n') {
                found = true;
                break;
            }
        if (found) {
            if (out[0]) strcat(out, ",");
            strcat(out, t);
        }
    }
    free(dup);
    return out;
}
