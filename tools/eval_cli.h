/* eval_cli.h: what the evaluation commands (perplexity, niah, ruler, eval) share on top of
 * cli.h: the extra flags --parallel --out --no-reuse --quiet, the run of a list of jobs with
 * sessions made from the flags (tl_eval_run) and the "config" object of result lines.
 * Implemented in cmd_eval.c. */
#ifndef TL_EVAL_CLI_H
#define TL_EVAL_CLI_H

#include "cli.h"

#include <cjson/cJSON.h>

typedef struct {
    tl_cli_common c;
    int n_parallel;     /* --parallel N: sessions run side by side */
    const char *out;    /* --out FILE.jsonl: result lines appended */
    bool no_reuse;      /* --no-reuse: recompute shared prefixes */
    bool quiet;         /* --quiet: no progress bar */
    tl_model *model;    /* tl_eval_cli_load: -m ... */
    tl_kv_plan plan;    /* ... and --kv/--kv-layer parsed for it */
} tl_eval_cli;

void tl_eval_cli_init(tl_eval_cli *e);
/* Load the model and parse the KV plan for it. */
int tl_eval_cli_load(tl_eval_cli *e, tl_error *err);
void tl_eval_cli_free(tl_eval_cli *e);
/* common flags + the ones above; 1 consumed, 0 not ours, -1 bad value */
int tl_eval_cli_arg(tl_eval_cli *e, int argc, char **argv, int *i);
/* help text of the shared flags */
void tl_eval_cli_help(FILE *f);
/* threads to use in total: -t, else the online CPUs */
int tl_eval_cli_threads(const tl_eval_cli *e);
/* The run's parameters from the flags: sessions (--kv/--kv-layer/--chunk/--device, the plan
 * parsed), -t, --parallel, --no-reuse, the progress bar unless --quiet, --mem. */
tl_eval_params tl_eval_cli_params(const tl_eval_cli *e);
/* Run the jobs (tl_eval_run) with a progress bar labelled `label`; *secs gets the wall time. */
int tl_eval_cli_run(tl_eval_cli *e, const char *label, tl_eval_job *jobs, int n_jobs, double *secs, tl_error *err);
/* Whether shared prompt prefixes are reused with these flags (tl_eval_can_reuse). */
bool tl_eval_cli_can_reuse(const tl_eval_cli *e);
/* The runner job of a generated task sample (its prompt, generation budget and stop rule). */
tl_eval_job tl_task_job(const tl_task_sample *s);
/* {"model", "kv", "kv_layer", "chunk", "threads", "parallel", "arch"} plus what the command adds */
cJSON *tl_eval_cli_config(const tl_eval_cli *e);
/* Append a result line when --out was given (errors printed, not fatal). */
void tl_eval_cli_result(const tl_eval_cli *e, const char *cmd, const cJSON *config, const char *metric, double value,
                        int64_t n, double seconds, const cJSON *extra);
/* The same for a value with its 95% interval: value and n from it, plus "lo" and "hi". */
void tl_eval_cli_result_ci(const tl_eval_cli *e, const char *cmd, const cJSON *config, const char *metric, tl_interval ci,
                           double seconds, const cJSON *extra);

#endif
