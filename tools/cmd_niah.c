/* tailor niah: needle-in-a-haystack grid over context lengths and needle depths.
 * Each cell is -n samples of one needle (passkey or RULER's "special magic number") placed at
 * a token-exact depth in a haystack of essays (src/eval/tasks.h), answered greedily and scored
 * by exact match of the first number in the answer. Prints a table (depth x length), and writes
 * CSV / JSON / SVG heatmap and result lines on request. */
#define _GNU_SOURCE
#include "eval_cli.h"

#include <stdlib.h>
#include <string.h>

#define MAX_GRID 64

static void help(void) {
    printf("usage: tailor niah -m MODEL [--lengths 1k,2k,4k,8k] [--depths 0,25,50,75,100] [-n SAMPLES]\n"
           "       [--needle passkey|magic] [--haystack DIR] [-s SEED] [--csv F] [--json F] [--svg F]\n"
           "  Lengths are whole prompts in tokens (instruction + haystack + needle + question).\n"
           "  The needle starts at instruction + round(depth * haystack tokens), token-exact.\n");
    tl_eval_cli_help(stdout);
}

/* The mean score of length li and depth di (-1: all of them) with its 95% interval; scores
 * are in job order: length, depth, sample. */
static tl_interval subset(const double *score, int nl, int nd, int samples, int li, int di) {
    double *v = tl_xmalloc(sizeof(double) * (size_t)nl * nd * samples);
    int64_t n = 0;
    for (int l = 0, k = 0; l < nl; l++)
        for (int d = 0; d < nd; d++)
            for (int s = 0; s < samples; s++, k++)
                if ((li < 0 || l == li) && (di < 0 || d == di)) v[n++] = score[k];
    const tl_interval ci = tl_score_interval(v, n);
    free(v);
    return ci;
}

static void csv_field(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int tl_cmd_niah(int argc, char **argv) {
    tl_eval_cli e;
    tl_eval_cli_init(&e);
    int lengths[MAX_GRID] = {1024, 2048, 4096, 8192}, nl = 4, samples = 1;
    double depths[MAX_GRID] = {0, 0.25, 0.5, 0.75, 1};
    int nd = 5;
    const char *hay_dir = NULL, *csv = NULL, *json = NULL, *svg = NULL, *needle = "passkey";
    e.c.sp.seed = 1234;
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
        if (!strcmp(a, "--lengths") || !strcmp(a, "-L")) {
            if ((nl = tl_parse_int_list(a, v, 1, lengths, MAX_GRID)) < 0) return 2;
        } else if (!strcmp(a, "--depths")) {
            if ((nd = tl_parse_depth_list(a, v, depths, MAX_GRID)) < 0) return 2;
        } else if (tl_cli_is(&tl_flag_samples, a)) {
            if (tl_cli_flag_int(&tl_flag_samples, a, v, &samples)) return 2;
        } else if (!strcmp(a, "--haystack")) hay_dir = v;
        else if (!strcmp(a, "--csv")) csv = v;
        else if (!strcmp(a, "--json")) json = v;
        else if (!strcmp(a, "--svg")) svg = v;
        else if (!strcmp(a, "--needle")) {
            if (strcmp(v, "passkey") && strcmp(v, "magic")) {
                fprintf(stderr, "tailor niah: --needle: '%s' is not passkey or magic\n", v);
                return 2;
            }
            needle = v;
        } else {
            fprintf(stderr, "tailor niah: unknown flag '%s' (see -h)\n", a);
            return 2;
        }
    }
    if (tl_cli_output("--json", json) || tl_cli_output("--svg", svg)) return 1;
    /* -n is the common "tokens to predict" flag; here it counts samples per cell */
    if (e.c.n_predict != 128) samples = e.c.n_predict > 0 ? e.c.n_predict : 1;
    if (e.c.n_ctx > 0 && nl == 4 && lengths[0] == 1024) {
        lengths[0] = e.c.n_ctx; /* -c LEN alone: a one-length grid */
        nl = 1;
    }
    if (!e.c.model) {
        fprintf(stderr, "tailor niah: -m MODEL is required\n");
        return 2;
    }
    if (!hay_dir) hay_dir = tl_default_haystack();
    tl_error err = {{0}};
    int rc = 1, n_jobs = nl * nd * samples, maxlen = 0;
    tl_haystack hay = {0};
    tl_task_sample *ts = tl_xcalloc((size_t)n_jobs, sizeof *ts);
    tl_eval_job *jobs = tl_xcalloc((size_t)n_jobs, sizeof *jobs);
    double *acc = tl_xcalloc((size_t)(nl * nd), sizeof(double)), *secs = tl_xcalloc((size_t)nl, sizeof(double));
    double *score = tl_xcalloc((size_t)n_jobs, sizeof(double));
    for (int i = 0; i < nl; i++) maxlen = TL_MAX(maxlen, lengths[i]);
    const tl_task_kind kind = !strcmp(needle, "passkey") ? TL_TASK_PASSKEY : TL_TASK_NIAH_SINGLE;
    if (tl_eval_cli_load(&e, &err)) goto done;
    const double tl0 = tl_time_s();
    const tl_tokenizer *tok = tl_model_tokenizer(e.model);
    if (tl_haystack_from_dir(&hay, tok, hay_dir, (int64_t)maxlen + 4096, &err)) goto done;
    fprintf(stderr, "niah: haystack %s: %d sentences, %lld tokens (%.1f s)\n", hay_dir, hay.n_sent,
            (long long)hay.n_ids, tl_time_s() - tl0);
    for (int li = 0, k = 0; li < nl; li++)
        for (int di = 0; di < nd; di++)
            for (int si = 0; si < samples; si++, k++) {
                /* one seed per (sample, depth, length): reproducible cell by cell */
                const uint64_t seed = e.c.sp.seed * 1000003ull + (uint64_t)si * 7919 + (uint64_t)di * 104729 +
                                      (uint64_t)lengths[li] * 31;
                if (tl_task_generate(&ts[k], kind, tok, &hay, lengths[li], depths[di], seed, &err)) {
                    tl_fail_prefix(&err, "length %d depth %g", lengths[li], depths[di]);
                    goto done;
                }
                jobs[k] = tl_task_job(&ts[k]);
            }
    double all_secs;
    if (tl_eval_cli_run(&e, "niah", jobs, n_jobs, &all_secs, &err)) goto done;
    /* scores in job order (length, depth, sample); each figure below is the mean of a subset
     * of them with its 95% interval */
    for (int li = 0, k = 0; li < nl; li++)
        for (int di = 0; di < nd; di++)
            for (int si = 0; si < samples; si++, k++) {
                score[k] = tl_score(ts[k].metric, jobs[k].output, (const char *const *)ts[k].refs, ts[k].n_refs);
                acc[di * nl + li] += score[k] / samples;
                secs[li] += jobs[k].seconds;
            }
    const tl_interval all = subset(score, nl, nd, samples, -1, -1);
    /* table */
    char b[64];
    printf("NIAH (%s needle), %s, kv %s, %d sample(s) per cell; each score with its 95%% interval (Wilson)\n\n"
           "| depth \\ length |", needle, e.c.model, e.c.kv ? e.c.kv : "f16", samples);
    for (int li = 0; li < nl; li++) printf(" %d |", lengths[li]);
    printf(" mean |\n| --- |");
    for (int li = 0; li <= nl; li++) printf(" ---: |");
    printf("\n");
    for (int di = 0; di < nd; di++) {
        printf("| %.0f%% |", depths[di] * 100);
        for (int li = 0; li < nl; li++)
            printf(" %s |", tl_interval_str(subset(score, nl, nd, samples, li, di), 2, b, sizeof b));
        printf(" %s |\n", tl_interval_str(subset(score, nl, nd, samples, -1, di), 2, b, sizeof b));
    }
    printf("| mean |");
    for (int li = 0; li < nl; li++)
        printf(" %s |", tl_interval_str(subset(score, nl, nd, samples, li, -1), 2, b, sizeof b));
    printf(" %s |\n| seconds |", tl_interval_str(all, 2, b, sizeof b));
    for (int li = 0; li < nl; li++) printf(" %.0f |", secs[li]);
    printf(" %.0f |\n", all_secs);
    /* files */
    cJSON *cfg = tl_eval_cli_config(&e);
    cJSON_AddStringToObject(cfg, "needle", needle);
    cJSON_AddStringToObject(cfg, "haystack", hay_dir);
    cJSON_AddNumberToObject(cfg, "seed", (double)e.c.sp.seed);
    /* result lines: per cell (length and depth), per length (length only), overall (neither) */
    const char *metric = kind == TL_TASK_PASSKEY ? "niah_passkey_acc" : "niah_magic_acc";
    for (int li = 0; li < nl; li++) {
        double ls = 0;
        for (int di = 0; di < nd; di++) {
            cJSON *x = cJSON_CreateObject();
            cJSON_AddNumberToObject(x, "length", lengths[li]);
            cJSON_AddNumberToObject(x, "depth", depths[di]);
            double cs = 0;
            for (int si = 0; si < samples; si++) cs += jobs[(li * nd + di) * samples + si].seconds;
            tl_eval_cli_result_ci(&e, "niah", cfg, metric, subset(score, nl, nd, samples, li, di), cs, x);
            cJSON_Delete(x);
            ls += cs;
        }
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "length", lengths[li]);
        tl_eval_cli_result_ci(&e, "niah", cfg, metric, subset(score, nl, nd, samples, li, -1), ls, x);
        cJSON_Delete(x);
    }
    tl_eval_cli_result_ci(&e, "niah", cfg, metric, all, all_secs, NULL);
    if (csv) {
        FILE *f = fopen(csv, "w");
        if (!f) fprintf(stderr, "tailor niah: --csv %s: cannot open\n", csv);
        else {
            /* n, lo, hi: the sample's cell (length x depth): its samples and the 95% interval of its accuracy */
            fprintf(f, "length,depth,sample,needle_pos,expected,output,score,seconds,reused,n,lo,hi\n");
            for (int li = 0, k = 0; li < nl; li++)
                for (int di = 0; di < nd; di++) {
                    const tl_interval ci = subset(score, nl, nd, samples, li, di);
                    for (int si = 0; si < samples; si++, k++) {
                        fprintf(f, "%d,%g,%d,%d,%s,", lengths[li], depths[di], si, ts[k].prompt.needle_pos[0],
                                ts[k].refs[0]);
                        csv_field(f, jobs[k].output);
                        fprintf(f, ",%g,%.3f,%d,%lld,%.6f,%.6f\n", score[k], jobs[k].seconds, jobs[k].reused,
                                (long long)ci.n, ci.lo, ci.hi);
                    }
                }
            fclose(f);
        }
    }
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "config", cJSON_Duplicate(cfg, 1));
        cJSON_AddItemToObject(o, "lengths", cJSON_CreateIntArray(lengths, nl));
        cJSON_AddItemToObject(o, "depths", cJSON_CreateDoubleArray(depths, nd));
        cJSON *cells = cJSON_AddArrayToObject(o, "cells");
        for (int li = 0, k = 0; li < nl; li++)
            for (int di = 0; di < nd; di++) {
                cJSON *c = cJSON_CreateObject();
                cJSON_AddNumberToObject(c, "length", lengths[li]);
                cJSON_AddNumberToObject(c, "depth", depths[di]);
                cJSON_AddNumberToObject(c, "accuracy", acc[di * nl + li]);
                tl_json_add_interval(c, subset(score, nl, nd, samples, li, di));
                cJSON *outs = cJSON_AddArrayToObject(c, "samples");
                for (int si = 0; si < samples; si++, k++) {
                    cJSON *s = cJSON_CreateObject();
                    cJSON_AddStringToObject(s, "expected", ts[k].refs[0]);
                    cJSON_AddStringToObject(s, "output", jobs[k].output);
                    cJSON_AddNumberToObject(s, "needle_pos", ts[k].prompt.needle_pos[0]);
                    cJSON_AddNumberToObject(s, "seconds", jobs[k].seconds);
                    cJSON_AddItemToArray(outs, s);
                }
                cJSON_AddItemToArray(cells, c);
            }
        cJSON *bl = cJSON_AddArrayToObject(o, "by_length"), *bd = cJSON_AddArrayToObject(o, "by_depth");
        for (int li = 0; li < nl; li++) {
            cJSON *c = cJSON_CreateObject();
            cJSON_AddNumberToObject(c, "length", lengths[li]);
            const tl_interval ci = subset(score, nl, nd, samples, li, -1);
            cJSON_AddNumberToObject(c, "accuracy", ci.value);
            tl_json_add_interval(c, ci);
            cJSON_AddItemToArray(bl, c);
        }
        for (int di = 0; di < nd; di++) {
            cJSON *c = cJSON_CreateObject();
            cJSON_AddNumberToObject(c, "depth", depths[di]);
            const tl_interval ci = subset(score, nl, nd, samples, -1, di);
            cJSON_AddNumberToObject(c, "accuracy", ci.value);
            tl_json_add_interval(c, ci);
            cJSON_AddItemToArray(bd, c);
        }
        cJSON_AddNumberToObject(o, "mean", all.value);
        tl_json_add_interval(o, all);
        cJSON_AddNumberToObject(o, "seconds", all_secs);
        char *s = cJSON_Print(o);
        if (tl_write_file(json, s, strlen(s), &err)) fprintf(stderr, "tailor niah: --json: %s\n", err.msg);
        free(s);
        cJSON_Delete(o);
    }
    if (svg) {
        char xs[MAX_GRID][16], ys[MAX_GRID][16], title[512];
        const char *xp[MAX_GRID], *yp[MAX_GRID];
        for (int li = 0; li < nl; li++) {
            if (lengths[li] % 1024 == 0) snprintf(xs[li], 16, "%dk", lengths[li] / 1024);
            else snprintf(xs[li], 16, "%d", lengths[li]);
            xp[li] = xs[li];
        }
        for (int di = 0; di < nd; di++) {
            snprintf(ys[di], 16, "%.0f%%", depths[di] * 100);
            yp[di] = ys[di];
        }
        const char *base = strrchr(e.c.model, '/');
        snprintf(title, sizeof title, "NIAH %s: %s, kv %s (mean %.2f, 95%% [%.2f, %.2f])", needle,
                 base ? base + 1 : e.c.model, e.c.kv ? e.c.kv : "f16", all.value, all.lo, all.hi);
        char *s = tl_svg_heatmap(title, "prompt length (tokens)", xp, nl, "needle depth", yp, nd, acc);
        if (tl_write_file(svg, s, strlen(s), &err)) fprintf(stderr, "tailor niah: --svg: %s\n", err.msg);
        free(s);
    }
    cJSON_Delete(cfg);
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor niah: %s\n", err.msg);
    for (int k = 0; k < n_jobs; k++) {
        tl_task_sample_free(&ts[k]);
        tl_eval_job_clear(&jobs[k]);
    }
    free(ts);
    free(jobs);
    free(acc);
    free(score);
    free(secs);
    tl_haystack_free(&hay);
    tl_eval_cli_free(&e);
    return rc;
}
