/* report.h: what the evaluation commands print and write: a progress bar on stderr, result
 * lines in JSON (appended, one object per line, for the Pareto tool), SVG heatmaps.
 *
 * Result line: {"cmd":"niah","config":{model, kv, kv_layer, ctx, chunk, threads, ...},
 *               "metric":"passkey_acc","value":0.8,"n":10,"seconds":12.3, ...extra}. */
#ifndef TL_EVAL_REPORT_H
#define TL_EVAL_REPORT_H

#include "../common.h"

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

/* An SVG heatmap: ny rows (e.g. depths) by nx columns (e.g. lengths), values in [0,1]
 * (NaN = not run), red (0) to green (1), value printed in each cell. malloc'd string. */
char *tl_svg_heatmap(const char *title, const char *xlabel, const char *const *xs, int nx, const char *ylabel,
                     const char *const *ys, int ny, const double *values);


#endif
