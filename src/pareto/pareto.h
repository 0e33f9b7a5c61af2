/* pareto.h: tailor pareto, the KV Pareto sweep (docs/pareto.md, papers.md section 2).
 *
 * A sweep evaluates a grid of configurations -- weight format x KV policy (precision pair,
 * granularity, group, residual, smoothing, rotation, per-layer plans) x prefill chunk -- on
 * one model at one evaluation context, and for each records
 *   - memory: weights + KV + peak activations, measured from the session's allocator
 *     accounting at the evaluated context (peak RSS of the child process as a cross-check)
 *     and projected exactly (the planner, tl_plan_memory) to --target-ctx and to
 *     another model's shapes;
 *   - accuracy per task, relative to the f16 baseline of the same sweep;
 *   - speed: prefill and decode tokens/s at the evaluated depth.
 * The frontier is the set of non-dominated configurations in (memory, accuracy).
 *
 * Split: grid.c (configurations, grid files, default grid), frontier.c (dominance, picks),
 * runner.c (one configuration in-process: the child side), report.c (results.jsonl
 * aggregation, frontier.csv, report.md), plot.c (SVG and PNG), sweep.c (the sweep: the grid,
 * the weights, a process per configuration, resume, the report; its entry points are in
 * include/tailor.h). */
#ifndef TL_PARETO_H
#define TL_PARETO_H

#include "../base/common.h"
#include "../kv/policy.h"

#include <cjson/cJSON.h>
#include <stdio.h>

/* ---- Configurations (grid.c) ---- */
typedef struct {
    char weights[32];   /* "base" (the file as given), "f16", "q8_0", "q4_0", "q4_K", "w4g128", "awq" */
    char kv[256];       /* KV policy text or JSON plan path (canonicalised once a model is known) */
    char kv_layer[256]; /* per-layer overrides, "" = none */
    int chunk;          /* prefill chunk; 0 = the whole context ("full") */
    char id[600];       /* canonical key: "w=<weights> kv=<kv>[ kvl=<overrides>] chunk=<n|full>" */
    char label[128];    /* short plot label: "w4g128 k4v4:smooth c256" */
} tl_pareto_config;

typedef struct {
    tl_pareto_config *v;
    int n, cap;
} tl_pareto_grid;

void tl_pareto_config_set(tl_pareto_config *c, const char *weights, const char *kv, const char *kv_layer, int chunk);
/* Recompute id and label from the fields. */
void tl_pareto_config_finish(tl_pareto_config *c);
/* The configuration's identity for a model of n_layer layers: its KV text made canonical (the
 * plan's base policy and overrides, tl_kv_plan_format_parts), so that equal behaviour gives
 * an equal id; left as given when it does not parse (the run then records why). */
void tl_pareto_config_canon(tl_pareto_config *c, int n_layer);
/* The configuration an id names ("w=<weights> kv=<kv>[ kvl=<overrides>] chunk=<n|full>");
 * -1 when id is not one. */
int tl_pareto_config_from_id(const char *id, tl_pareto_config *c);
/* Append unless a configuration with the same id is there; returns its index. */
int tl_pareto_grid_add(tl_pareto_grid *g, const tl_pareto_config *c);
void tl_pareto_grid_free(tl_pareto_grid *g);

/* tl_pareto_axes (comma lists per axis, NULL = the axis's default) and the sweep itself
 * (tl_pareto_sweep_params, tl_pareto_sweep, _child, _merge, _report; sweep.c): include/tailor.h. */

int tl_pareto_grid_from_axes(tl_pareto_grid *g, const tl_pareto_axes *a, tl_error *err);
/* Grid file (JSON): {"axes": {"weights": [...], "kv": [...], "chunk": [256, "full"], ...},
 *                    "configs": [{"weights": "base", "kv": "k4v4", "kv_layer": "0=f16", "chunk": 256}, ...]}
 * Both keys optional; axes give the cartesian product, configs are added as they are. */
int tl_pareto_grid_from_json(tl_pareto_grid *g, const char *json, const char *where, tl_error *err);
/* The default grid, modelled on the KV Pareto paper's at modest size (docs/pareto.md):
 * weights {base, w4g128 (+awq with_awq)} x KV pairs {f16, k8v8, k8v4, k8v2, k4v4, k4v2, k2v2}
 * at per-token g32 (+K-smoothing for 4- and 2-bit keys), chunk 256; plus on base weights
 * k4v4 with per-channel keys / per-block / per-tensor, g64 / g128, no smoothing, rotation,
 * KIVI k2v2 and k1v1 (per-channel keys, r128); plus chunk 64 / 1024 / full on w4g128 k4v4.
 * size: "paper" (that), "small" (the KV pairs x weights only), "tiny" (f16, k8v8, k4v4, k2v2:kivi). */
int tl_pareto_grid_default(tl_pareto_grid *g, const char *size, bool with_awq, tl_error *err);

/* ---- Frontier (frontier.c) ---- */
typedef struct {
    double mem;   /* bytes (lower is better) */
    double acc;   /* accuracy (higher is better) */
    double speed; /* tokens/s (higher is better); NaN = not used */
    int failed;   /* 1: not a candidate */
} tl_pareto_point;

/* on_frontier[i] = 1 when no other point is at least as good in every objective and better in
 * one (speed only when use_speed). Exact duplicates are all on the frontier together.
 * Returns the number on the frontier. */
int tl_pareto_frontier(const tl_pareto_point *p, int n, bool use_speed, int *on_frontier);
/* Best accuracy with mem <= budget (ties: less memory, then faster, then lower index); -1 if none. */
int tl_pareto_pick_budget(const tl_pareto_point *p, int n, double budget);
/* Least memory with acc >= min_acc (ties: higher accuracy, then faster, then lower index); -1 if none. */
int tl_pareto_pick_min_mem(const tl_pareto_point *p, int n, double min_acc);

/* ---- One configuration, in-process (runner.c) ---- */
typedef struct {
    const char *model_path;  /* the weights file of this configuration's weight format */
    const char *base_model;  /* the model as given (for "model" in result lines) */
    const char *text_path;   /* perplexity text */
    const char *haystack;    /* NIAH/RULER haystack folder */
    const char *results;     /* results.jsonl to append to */
    const char *kl_base;     /* baseline top-K file: written when write_base, else compared */
    bool write_base;
    const char *tasks;       /* "ppl,niah,ruler,<ruler task names>" */
    int ctx;                 /* evaluation context */
    int ppl_windows;         /* windows of ctx tokens (1) */
    int ppl_tail;            /* scored tokens at the end of each window (0 = the second half) */
    int n_decode;            /* decode steps timed at depth ctx (16) */
    int niah_samples;        /* per depth (1) */
    const double *niah_depths;
    int n_niah_depths;
    int ruler_samples;       /* per RULER task (1) */
    int n_threads;
    uint64_t seed;
    int target_ctx;          /* projection target (0 = none) */
    const char *project_to;  /* a GGUF path or a synth shape name ("llama-3.1-8b"), or NULL */
    const char *skip_tasks;  /* comma list of tasks already in results.jsonl (resume) */
    const char *device;      /* NULL / "cpu", or "cuda": sessions on GPU 0, memory measured on the
                                device by part and checked against the device planner */
    tl_cuda_opts cuda;       /* cuda: the backend's options */
} tl_pareto_run_params;

/* Run the tasks of one configuration and append one line per task to p->results. A task
 * that fails is recorded as failed with its reason; returns -1 only when nothing could run
 * (model or plan unusable), after recording every task as failed. */
int tl_pareto_run_config(const tl_pareto_config *c, const tl_pareto_run_params *p, tl_error *err);

/* The result line written for a failed (config, task). extra may be NULL. */
int tl_pareto_append_failure(const char *results, const tl_pareto_config *c, const char *model, int ctx,
                             const char *task, const char *reason, const cJSON *extra, tl_error *err);

/* Memory of a configuration for a loaded model at n_tokens held, by formula. */
typedef struct {
    uint64_t weights, kv, act, logits, total;
    int chunk;
} tl_pareto_mem;

struct tl_model;
int tl_pareto_mem_project(const struct tl_model *m, const tl_kv_plan *plan, int chunk, int n_tokens, tl_pareto_mem *out,
                          tl_error *err);
/* The same for another model: a GGUF path or a synth shape name; weights re-encoded to the
 * configuration's format ("base" = the file's own / f16 for a shape); the plan retargeted to
 * its layer count (tl_kv_plan_retarget). */
int tl_pareto_mem_project_to(const char *target, const char *weights_fmt, const tl_kv_plan *plan, int chunk,
                             int n_tokens, tl_pareto_mem *out, tl_error *err);

/* ---- Results, frontier, report (report.c) ---- */
typedef struct {
    char id[600], label[128], weights[32], kv[256], kv_layer[256];
    int chunk;
    bool failed;
    char reason[512];
    int n_tasks;
    char task[8][32];
    double score[8];   /* raw task score: ppl for "ppl", accuracy for the others */
    double rel[8];     /* score relative to the baseline, 1 = baseline */
    double rel_lo[8], rel_hi[8]; /* its 95% interval (paired with the baseline; = rel without data) */
    double ratio_lo[8], ratio_hi[8]; /* ppl: the line's paired PPL ratio interval (NaN if none) */
    double *samples[8];  /* sample tasks: each sample's score (same seeds in every configuration) */
    int n_samples[8];
    bool task_ok[8];
    double kld;        /* ppl task: mean KLD vs baseline (NaN if none) */
    double top1;       /* ppl task: same top-1 fraction */
    double mem_w, mem_kv, mem_act, mem_total, rss; /* measured, bytes */
    double proj_total, proj_kv;                   /* --target-ctx */
    double proj2_total, proj2_kv;                 /* --project-to at --target-ctx */
    double prefill_tps, decode_tps;
    double acc;        /* aggregated relative accuracy (mean of rel over tasks), 1 = baseline */
    double acc_lo, acc_hi; /* mean of the tasks' interval ends: conservative for the mean; the
                              frontier and the picks use acc_lo (the pessimistic end) */
    bool baseline, frontier;
    char device[64];   /* GPU runs: the card ("" on the CPU) */
    int device_plan;   /* GPU runs: 1 the planner's projection holds (report.c), 0 not, -1 unknown */
} tl_pareto_row;

typedef struct {
    tl_pareto_row *rows;
    int n;
    int base;          /* index of the baseline row or -1 */
    int ctx, target_ctx;
    char model[512], project_to[512];
    char tasks[8][32];
    int n_tasks;
} tl_pareto_table;

/* Read one or more results.jsonl files (later lines for the same (config, task) win; torn or
 * unparsable lines are skipped), compute relative accuracy against the baseline
 * (baseline_id: that config, or NULL = weights base, kv f16, the smallest chunk id found) with
 * its 95% interval -- ppl: PPL(base)/PPL from the paired block bootstrap of the line; sample
 * tasks: paired with the baseline's samples (0/1 scores: Wilson bounds of the two discordant
 * counts; fractional: a bootstrap of the differences) -- and the frontier on the pessimistic
 * end (use_speed: 3 objectives). */
int tl_pareto_load(tl_pareto_table *t, const char *const *paths, int n_paths, const char *baseline_id, bool use_speed,
                   tl_error *err);
void tl_pareto_table_free(tl_pareto_table *t);
/* Which (config id, task) pairs are recorded (for --resume); returns malloc'd "id\ttask\n" lines. */
char *tl_pareto_done_pairs(const char *path);
/* Of the comma list `tasks`, those recorded for id in `done` (tl_pareto_done_pairs), as a
 * comma list (malloc'd; "" when none). */
char *tl_pareto_done_tasks(const char *done, const char *id, const char *tasks);
/* Cut a torn last line of a results file (a sweep killed mid-write) so appended lines start clean. */
void tl_pareto_repair_tail(const char *path);
/* Comma lists: the number of items, and whether item is one of them (list may be NULL). */
int tl_pareto_n_items(const char *list);
bool tl_pareto_in_list(const char *list, const char *item);

typedef struct {
    double budget;    /* bytes, 0 = none */
    double max_loss;  /* fraction (0.01 = 1%), < 0 = none */
    const char *title;
} tl_pareto_report_opts;

int tl_pareto_write_csv(const tl_pareto_table *t, const char *path, tl_error *err);
/* report.md: all rows, frontier marked, baseline, memory reduction %, accuracy delta %, picks. */
char *tl_pareto_report_md(const tl_pareto_table *t, const tl_pareto_report_opts *o);

/* ---- Plot (plot.c) ---- */
/* which: memory axis 0 = measured at the evaluated context, 1 = projected to the target
 * context, 2 = projected to the --project-to model (frontier recomputed on that axis). */
char *tl_pareto_svg(const tl_pareto_table *t, const char *title, int which);
/* The same plot drawn with cairo (DejaVu Sans text) and written as a PNG to path through
 * tl_outfile (a temp file renamed when complete). Returns 0, or -1 with err -- always in a
 * build without cairo (tl_pareto_have_png false; CMake finds cairo with pkg-config). */
int tl_pareto_png(const tl_pareto_table *t, const char *title, int which, const char *path, tl_error *err);
bool tl_pareto_have_png(void);

#endif
