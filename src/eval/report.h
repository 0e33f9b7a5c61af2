/* report.h: what the evaluation commands print and write: a progress bar on stderr, result
 * lines in JSON (appended, one object per line, for the Pareto tool), SVG heatmaps.
 *
 * Result line: {"cmd":"niah","config":{model, kv, kv_layer, ctx, chunk, threads, ...},
 *               "metric":"passkey_acc","value":0.8,"n":10,"seconds":12.3, ...extra,
 *               "lo":0.49,"hi":0.94}   (lo/hi: the value's 95% interval, stats.h). */
#ifndef TL_EVAL_REPORT_H
#define TL_EVAL_REPORT_H

#include "../common.h"
#include "stats.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>

typedef struct {
    pthread_mutex_t mu;
    const char *label;
    int64_t total, done; /* work units (prompt tokens) */
    int n_items, items_done;
    double t0, last_print;
    bool tty, enabled;
    int last_pct;
} tl_progress;

void tl_progress_init(tl_progress *p, const char *label, int64_t total_units, int n_items, bool enabled);
/* Thread-safe: `units` more work done, and `items` more items finished (0 while an item is
 * still under way: a perplexity window arrives in several pieces). */
void tl_progress_add(tl_progress *p, int64_t units, int items);
void tl_progress_done(tl_progress *p);

/* Append one result line to path (created if missing) with a single write. `config` and
 * `extra` (may be NULL) are copied, not taken. */
int tl_result_append(const char *path, const char *cmd, const cJSON *config, const char *metric, double value,
                     int64_t n, double seconds, const cJSON *extra, tl_error *err);

/* The same with an interval: value and n from it, and "lo", "hi" after the other fields. */
int tl_result_append_ci(const char *path, const char *cmd, const cJSON *config, const char *metric, tl_interval ci,
                        double seconds, const cJSON *extra, tl_error *err);
/* Adds "n", "lo" and "hi" of an interval to a JSON summary object (lo/hi null when unknown). */
void tl_json_add_interval(cJSON *o, tl_interval ci);
/* "0.80 [0.49, 0.94]": a value and its interval, `prec` decimals; returns buf. */
const char *tl_interval_str(tl_interval ci, int prec, char *buf, size_t cap);

/* An SVG heatmap: ny rows (e.g. depths) by nx columns (e.g. lengths), values in [0,1]
 * (NaN = not run), red (0) to green (1), value printed in each cell. malloc'd string. */
char *tl_svg_heatmap(const char *title, const char *xlabel, const char *const *xs, int nx, const char *ylabel,
                     const char *const *ys, int ny, const double *values);


#endif
