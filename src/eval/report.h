/* report.h: what the evaluation commands print and write: a progress bar on stderr, result
 * lines in JSON (appended, one object per line, for the Pareto tool), SVG heatmaps.
 *
 * Result line: {"cmd":"niah","config":{model, kv, kv_layer, ctx, chunk, threads, ...},
 *               "metric":"passkey_acc","value":0.8,"n":10,"seconds":12.3, ...extra,
 *               "lo":0.49,"hi":0.94}   (lo/hi: the value's 95% interval, stats.h). */
#ifndef TL_EVAL_REPORT_H
#define TL_EVAL_REPORT_H

#include "../base/common.h"
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

/* Result lines (tl_result_append, tl_result_append_ci), tl_json_add_interval, tl_interval_str
 * and tl_svg_heatmap: include/tailor.h. */

#endif
