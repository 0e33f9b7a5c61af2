/* tailor ruler: RULER-style synthetic long-context tasks, generated from a seed
 * (src/eval/tasks.h): niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe
 * (and passkey). Scores are RULER's string_match_all (fraction of the expected answers found
 * in the greedy output); passkey uses exact match of the first number. */
#define _GNU_SOURCE
#include "eval_cli.h"

#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: tailor ruler -m MODEL [--tasks T1,T2,...] [-c LEN | --lengths 4k,8k] [-n SAMPLES] [-s SEED]\n"
           "       [--haystack DIR] [--json F]\n"
           "  tasks: niah_single niah_multikey niah_multivalue niah_multiquery vt cwe passkey (default: the six\n"
           "  RULER ones). Prints per-task and average scores per length.\n");
    tl_eval_cli_help(stdout);
}

int tl_cmd_ruler(int argc, char **argv) {
    tl_eval_cli e;
    tl_eval_cli_init(&e);
    int kinds[TL_TASK_COUNT], nk = 0, lengths[16], nl = 0, samples = 0;
    const char *hay_dir = NULL, *json = NULL;
    e.c.sp.seed = 42;
    for (int i = 1; i < argc; i++) {
        int r = tl_eval_cli_arg(&e, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help();
            return 0;
        }
        if (!(v = tl_cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--tasks")) {
            char *cp = tl_xstrdup(v), *save = NULL;
            nk = 0;
            for (char *t = strtok_r(cp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int k = tl_task_parse(t);
                if (k < 0 || nk == TL_TASK_COUNT) {
                    fprintf(stderr, "tailor ruler: --tasks: '%s' unknown (niah_single, niah_multikey, "
                                    "niah_multivalue, niah_multiquery, vt, cwe, passkey)\n", t);
                    free(cp);
                    return 2;
                }
                kinds[nk++] = k;
            }
            free(cp);
        } else if (!strcmp(a, "--lengths")) {
            if ((nl = tl_parse_int_list(a, v, 1, lengths, 16)) < 0) return 2;
        } else if (tl_cli_is(&tl_flag_samples, a)) {
            if (tl_cli_flag_int(&tl_flag_samples, a, v, &samples)) return 2;
        } else if (!strcmp(a, "--haystack")) hay_dir = v;
        else if (!strcmp(a, "--json")) json = v;
        else {
            fprintf(stderr, "tailor ruler: unknown flag '%s' (see -h)\n", a);
            return 2;
        }
    }
    if (!e.c.model) {
        fprintf(stderr, "tailor ruler: -m MODEL is required\n");
        return 2;
    }
    if (tl_cli_output("--json", json)) return 1;
    if (nk == 0)
        for (int k = TL_TASK_NIAH_SINGLE; k <= TL_TASK_CWE; k++) kinds[nk++] = k;
    if (nl == 0) lengths[nl++] = e.c.n_ctx > 0 ? e.c.n_ctx : 4096;
    if (samples == 0) samples = e.c.n_predict != 128 && e.c.n_predict > 0 ? e.c.n_predict : 4;
    if (!hay_dir) hay_dir = tl_default_haystack();
    tl_error err = {{0}};
    int rc = 1, n_jobs = nl * nk * samples, maxlen = 0;
    tl_haystack hay = {0};
    tl_task_sample *ts = tl_xcalloc((size_t)n_jobs, sizeof *ts);
    tl_eval_job *jobs = tl_xcalloc((size_t)n_jobs, sizeof *jobs);
    cJSON *cfg = NULL, *jo = NULL;
    for (int i = 0; i < nl; i++) maxlen = TL_MAX(maxlen, lengths[i]);
    if (tl_eval_cli_load(&e, &err)) goto done;
    const tl_tokenizer *tok = tl_model_tokenizer(e.model);
    if (tl_haystack_from_dir(&hay, tok, hay_dir, (int64_t)maxlen + 4096, &err)) goto done;
    for (int li = 0, j = 0; li < nl; li++)
        for (int ki = 0; ki < nk; ki++)
            for (int si = 0; si < samples; si++, j++) {
                const uint64_t seed = e.c.sp.seed * 1000003ull + (uint64_t)si * 7919 + (uint64_t)lengths[li] * 31;
                if (tl_task_generate(&ts[j], (tl_task_kind)kinds[ki], tok, &hay, lengths[li], -1, seed, &err)) {
                    tl_fail_prefix(&err, "length %d sample %d", lengths[li], si);
                    goto done;
                }
                jobs[j] = tl_task_job(&ts[j]);
            }
    double all_secs;
    if (tl_eval_cli_run(&e, "ruler", jobs, n_jobs, &all_secs, &err)) goto done;
    cfg = tl_eval_cli_config(&e);
    cJSON_AddNumberToObject(cfg, "seed", (double)e.c.sp.seed);
    cJSON_AddStringToObject(cfg, "haystack", hay_dir);
    jo = cJSON_CreateObject();
    cJSON_AddItemToObject(jo, "config", cJSON_Duplicate(cfg, 1));
    cJSON *jres = cJSON_AddArrayToObject(jo, "results");
    printf("RULER-style tasks, %s, kv %s, %d sample(s) per task, seed %llu; each score with its 95%% interval\n\n| task |",
           e.c.model, e.c.kv ? e.c.kv : "f16", samples, (unsigned long long)e.c.sp.seed);
    for (int li = 0; li < nl; li++) printf(" %d |", lengths[li]);
    printf("\n| --- |");
    for (int li = 0; li < nl; li++) printf(" ---: |");
    printf("\n");
    /* scores in job order (length, task, sample) */
    double *score = tl_xcalloc((size_t)n_jobs, sizeof(double)), *lsecs = tl_xcalloc((size_t)nl, sizeof(double));
    for (int j = 0; j < n_jobs; j++)
        score[j] = tl_score(ts[j].metric, jobs[j].output, (const char *const *)ts[j].refs, ts[j].n_refs);
    cJSON *jsum = cJSON_AddArrayToObject(jo, "summary");
    char b[64];
    for (int ki = 0; ki < nk; ki++) {
        printf("| %s |", tl_task_name((tl_task_kind)kinds[ki]));
        for (int li = 0; li < nl; li++) {
            const int j0 = (li * nk + ki) * samples;
            double secs = 0;
            for (int si = 0; si < samples; si++) {
                const int j = j0 + si;
                secs += jobs[j].seconds;
                cJSON *s = cJSON_CreateObject();
                cJSON_AddStringToObject(s, "task", ts[j].task);
                cJSON_AddNumberToObject(s, "length", lengths[li]);
                cJSON_AddNumberToObject(s, "prompt_tokens", ts[j].prompt.n);
                cJSON_AddItemToObject(s, "expected", cJSON_CreateStringArray((const char *const *)ts[j].refs, ts[j].n_refs));
                cJSON_AddStringToObject(s, "output", jobs[j].output);
                cJSON_AddNumberToObject(s, "score", score[j]);
                cJSON_AddNumberToObject(s, "seconds", jobs[j].seconds);
                cJSON_AddItemToArray(jres, s);
            }
            lsecs[li] += secs;
            const tl_interval ci = tl_score_interval(score + j0, samples);
            printf(" %s |", tl_interval_str(ci, 3, b, sizeof b));
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "task", tl_task_name((tl_task_kind)kinds[ki]));
            cJSON_AddNumberToObject(x, "length", lengths[li]);
            char metric[64];
            snprintf(metric, sizeof metric, "ruler_%s", tl_task_name((tl_task_kind)kinds[ki]));
            tl_eval_cli_result_ci(&e, "ruler", cfg, metric, ci, secs, x);
            cJSON_AddNumberToObject(x, "score", ci.value);
            tl_json_add_interval(x, ci);
            cJSON_AddItemToArray(jsum, x);
        }
        printf("\n");
    }
    /* the average over tasks of a length: the mean of all its samples (the tasks have as many) */
    printf("| **average** |");
    for (int li = 0; li < nl; li++) {
        const tl_interval ci = tl_score_interval(score + (size_t)li * nk * samples, (int64_t)nk * samples);
        printf(" **%s** |", tl_interval_str(ci, 3, b, sizeof b));
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "length", lengths[li]);
        tl_eval_cli_result_ci(&e, "ruler", cfg, "ruler_avg", ci, lsecs[li], x);
        cJSON_AddStringToObject(x, "task", "average");
        cJSON_AddNumberToObject(x, "score", ci.value);
        tl_json_add_interval(x, ci);
        cJSON_AddItemToArray(jsum, x);
    }
    printf("\n| seconds |");
    for (int li = 0; li < nl; li++) printf(" %.0f |", lsecs[li]);
    printf("\n");
    fprintf(stderr, "ruler: %d samples in %.1f s\n", n_jobs, all_secs);
    free(score);
    free(lsecs);
    if (json) {
        cJSON_AddNumberToObject(jo, "seconds", all_secs);
        char *s = cJSON_Print(jo);
        if (tl_write_file(json, s, strlen(s), &err)) fprintf(stderr, "tailor ruler: --json: %s\n", err.msg);
        free(s);
    }
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor ruler: %s\n", err.msg);
    cJSON_Delete(cfg);
    cJSON_Delete(jo);
    for (int j = 0; j < n_jobs; j++) {
        tl_task_sample_free(&ts[j]);
        tl_eval_job_clear(&jobs[j]);
    }
    free(ts);
    free(jobs);
    tl_haystack_free(&hay);
    tl_eval_cli_free(&e);
    return rc;
}
