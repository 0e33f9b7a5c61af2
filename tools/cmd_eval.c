/* tailor eval: score a JSONL task file with any KV policy; also the flag/config helpers the
 * evaluation commands share (eval_cli.h).
 *
 * One task per line:
 *   {"id": "q1", "prompt": "...", "answers": ["Paris"], "metric": "exact"}
 *   {"context": "<long document>", "question": "Who ...?", "answers": ["..."], "metric": "f1"}
 *   {"prompt": "Q: 2+2=? A:", "choices": ["3", "4", "5"], "answer": 1, "metric": "choice"}
 * prompt = context + "\n\n" + question when there is no "prompt" (--join changes the glue).
 * "answer" may stand for "answers" (a string, or for choice the index, the letter or the
 * choice's text). Metrics: exact, contains, f1, number, all (RULER string_match_all), choice
 * (log-likelihood of each choice after the prompt, as " " + choice; highest wins).
 * "max_new" per line or --max-new (default 32) bounds greedy answers. Consecutive lines with
 * the same context reuse its KV state when the session can truncate (see runner.h). */
#define _GNU_SOURCE
#include "eval_cli.h"

#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

void tl_eval_cli_init(tl_eval_cli *e) {
    memset(e, 0, sizeof *e);
    tl_cli_common_init(&e->c);
    e->n_parallel = 1;
}

int tl_eval_cli_load(tl_eval_cli *e, tl_error *err) {
    if (!(e->model = tl_model_load(e->c.model, err))) return -1;
    return tl_kv_plan_parse(&e->plan, e->c.kv, e->c.kv_layer, tl_model_n_layer(e->model), err);
}

void tl_eval_cli_free(tl_eval_cli *e) {
    tl_kv_plan_free(&e->plan);
    tl_model_free(e->model);
    e->model = NULL;
}

int tl_eval_cli_arg(tl_eval_cli *e, int argc, char **argv, int *i) {
    int r = tl_cli_common_arg(&e->c, argc, argv, i);
    if (r) return r;
    const char *a = argv[*i], *v;
    if (tl_cli_is(&tl_flag_parallel, a)) {
        if (!(v = tl_cli_value(argc, argv, i))) return -1;
        return tl_cli_flag_int(&tl_flag_parallel, a, v, &e->n_parallel) ? -1 : 1;
    }
    if (!strcmp(a, "--out") || !strcmp(a, "-o")) {
        if (!(v = tl_cli_value(argc, argv, i))) return -1;
        e->out = v;
        return 1;
    }
    if (!strcmp(a, "--no-reuse")) return e->no_reuse = true, 1;
    if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) return e->quiet = true, 1;
    return 0;
}

void tl_eval_cli_help(FILE *f) {
    fprintf(f, "  shared: -m MODEL [-t THREADS] [--chunk N] [--kv SPEC] [--kv-layer OVERRIDES] [--mem]\n"
               "          [--parallel N] sessions side by side, threads split between them (more memory)\n"
               "          [--out FILE.jsonl] append result lines {cmd, config, metric, value, n, seconds}\n"
               "          [--no-reuse] never reuse a shared prompt prefix   [--quiet] no progress bar\n");
    tl_cli_device_help(f);
}

int tl_eval_cli_threads(const tl_eval_cli *e) { return e->c.n_threads > 0 ? e->c.n_threads : tl_cpu_count(); }

tl_eval_params tl_eval_cli_params(const tl_eval_cli *e) {
    return (tl_eval_params){.session = tl_cli_session_params(&e->c, &e->plan),
                            .n_threads = tl_eval_cli_threads(e),
                            .n_parallel = e->n_parallel,
                            .no_reuse = e->no_reuse,
                            .progress = !e->quiet,
                            .print_mem = e->c.mem};
}

bool tl_eval_cli_can_reuse(const tl_eval_cli *e) {
    const tl_eval_params p = tl_eval_cli_params(e);
    return tl_eval_can_reuse(&p);
}

tl_eval_job tl_task_job(const tl_task_sample *s) {
    return (tl_eval_job){.ids = s->prompt.ids, .n_ids = s->prompt.n, .max_new = s->max_new, .stop_newline = s->stop_newline};
}

int tl_eval_cli_run(tl_eval_cli *e, const char *label, tl_eval_job *jobs, int n_jobs, double *secs, tl_error *err) {
    const tl_eval_params p = tl_eval_cli_params(e);
    return tl_eval_run(e->model, &p, label, jobs, n_jobs, secs, err);
}

cJSON *tl_eval_cli_config(const tl_eval_cli *e) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", e->c.model ? e->c.model : "");
    if (e->model) cJSON_AddStringToObject(o, "arch", tl_model_arch(e->model));
    /* the canonical plan text, so equal policies compare equal in the Pareto tool */
    char *kv = e->plan.n_layers ? tl_kv_plan_format(&e->plan) : NULL;
    cJSON_AddStringToObject(o, "kv", kv ? kv : e->c.kv ? e->c.kv : "f16");
    cJSON_AddStringToObject(o, "kv_spec", e->c.kv ? e->c.kv : "f16"); /* as given: auto:4, a plan file */
    cJSON_AddStringToObject(o, "device", e->c.device ? e->c.device : "cpu");
    free(kv);
    if (e->c.kv_layer) cJSON_AddStringToObject(o, "kv_layer", e->c.kv_layer);
    cJSON_AddNumberToObject(o, "chunk", tl_plan_chunk(INT_MAX, e->c.chunk)); /* as asked, before the context clamps it */
    cJSON_AddNumberToObject(o, "threads", tl_eval_cli_threads(e));
    cJSON_AddNumberToObject(o, "parallel", e->n_parallel);
    return o;
}

void tl_eval_cli_result(const tl_eval_cli *e, const char *cmd, const cJSON *config, const char *metric, double value,
                        int64_t n, double seconds, const cJSON *extra) {
    if (!e->out) return;
    tl_error err = {{0}};
    if (tl_result_append(e->out, cmd, config, metric, value, n, seconds, extra, &err))
        fprintf(stderr, "tailor %s: --out: %s\n", cmd, err.msg);
}

void tl_eval_cli_result_ci(const tl_eval_cli *e, const char *cmd, const cJSON *config, const char *metric, tl_interval ci,
                           double seconds, const cJSON *extra) {
    if (!e->out) return;
    tl_error err = {{0}};
    if (tl_result_append_ci(e->out, cmd, config, metric, ci, seconds, extra, &err))
        fprintf(stderr, "tailor %s: --out: %s\n", cmd, err.msg);
}

/* ---- tailor eval ---- */

typedef struct {
    char *id;
    char *prompt;
    char **refs;
    int n_refs;
    tl_metric metric;
    int max_new;
    char **choices;
    int n_choices;
    int answer_idx;
    int32_t *ids;
    size_t n_ids;
    int32_t **choice_ids;
    int *choice_len;
    double score;
} item;

static void item_free(item *it) {
    free(it->id);
    free(it->prompt);
    for (int i = 0; i < it->n_refs; i++) free(it->refs[i]);
    free(it->refs);
    for (int i = 0; i < it->n_choices; i++) {
        free(it->choices[i]);
        if (it->choice_ids) free(it->choice_ids[i]);
    }
    free(it->choices);
    free(it->choice_ids);
    free(it->choice_len);
    free(it->ids);
}

static char *json_text(const cJSON *v) {
    if (cJSON_IsString(v)) return tl_xstrdup(v->valuestring);
    if (cJSON_IsNumber(v)) {
        char b[64];
        if (v->valuedouble == (double)(long long)v->valuedouble) snprintf(b, sizeof b, "%lld", (long long)v->valuedouble);
        else snprintf(b, sizeof b, "%.17g", v->valuedouble);
        return tl_xstrdup(b);
    }
    return NULL;
}

static int parse_item(const char *line, int lineno, const char *path, const char *join, tl_metric def_metric,
                      int def_max_new, item *it, tl_error *err) {
    memset(it, 0, sizeof *it);
    it->answer_idx = -1;
    cJSON *o = cJSON_Parse(line);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return tl_fail(err, "%s:%d: not a JSON object", path, lineno);
    }
    int rc = -1;
    const cJSON *id = cJSON_GetObjectItem(o, "id"), *pr = cJSON_GetObjectItem(o, "prompt"),
                *cx = cJSON_GetObjectItem(o, "context"), *q = cJSON_GetObjectItem(o, "question"),
                *ans = cJSON_GetObjectItem(o, "answers"), *an1 = cJSON_GetObjectItem(o, "answer"),
                *me = cJSON_GetObjectItem(o, "metric"), *ch = cJSON_GetObjectItem(o, "choices"),
                *mn = cJSON_GetObjectItem(o, "max_new");
    char idb[32];
    snprintf(idb, sizeof idb, "%d", lineno);
    it->id = id ? json_text(id) : NULL;
    if (!it->id) it->id = tl_xstrdup(idb);
    if (cJSON_IsString(pr)) it->prompt = tl_xstrdup(pr->valuestring);
    else if (cJSON_IsString(cx) || cJSON_IsString(q)) {
        const char *a = cJSON_IsString(cx) ? cx->valuestring : "", *b = cJSON_IsString(q) ? q->valuestring : "";
        size_t n = strlen(a) + strlen(join) + strlen(b) + 1;
        it->prompt = tl_xmalloc(n);
        snprintf(it->prompt, n, "%s%s%s", a, *a && *b ? join : "", b);
    } else {
        tl_fail(err, "%s:%d: needs \"prompt\" or \"context\"/\"question\"", path, lineno);
        goto done;
    }
    it->metric = def_metric;
    if (me) {
        int m = cJSON_IsString(me) ? tl_metric_parse(me->valuestring) : -1;
        if (m < 0) {
            tl_fail(err, "%s:%d: metric must be exact, contains, f1, number, all or choice", path, lineno);
            goto done;
        }
        it->metric = (tl_metric)m;
    }
    it->max_new = cJSON_IsNumber(mn) && mn->valuedouble >= 1 ? (int)mn->valuedouble : def_max_new;
    if (cJSON_IsArray(ch)) {
        it->n_choices = cJSON_GetArraySize(ch);
        it->choices = tl_xcalloc((size_t)it->n_choices + 1, sizeof(char *));
        for (int i = 0; i < it->n_choices; i++) {
            it->choices[i] = json_text(cJSON_GetArrayItem(ch, i));
            if (!it->choices[i]) {
                tl_fail(err, "%s:%d: choice %d is not a string", path, lineno, i);
                goto done;
            }
        }
        if (!me) it->metric = TL_METRIC_CHOICE;
    }
    const cJSON *a = ans ? ans : an1;
    if (cJSON_IsArray(a)) {
        for (const cJSON *x = a->child; x; x = x->next) {
            char *t = json_text(x);
            if (!t) continue;
            it->refs = tl_xrealloc(it->refs, sizeof(char *) * (size_t)(it->n_refs + 1));
            it->refs[it->n_refs++] = t;
        }
    } else if (a) {
        char *t = json_text(a);
        if (t) {
            it->refs = tl_xmalloc(sizeof(char *));
            it->refs[it->n_refs++] = t;
        }
    }
    if (it->metric == TL_METRIC_CHOICE) {
        if (it->n_choices < 2) {
            tl_fail(err, "%s:%d: metric choice needs a \"choices\" list of 2 or more", path, lineno);
            goto done;
        }
        /* the answer: an index, a letter A.., or the text of a choice */
        if (cJSON_IsNumber(a) || (cJSON_IsArray(a) && cJSON_IsNumber(a->child))) {
            const cJSON *x = cJSON_IsArray(a) ? a->child : a;
            it->answer_idx = (int)x->valuedouble;
        } else if (it->n_refs > 0) {
            const char *r = it->refs[0];
            for (int i = 0; i < it->n_choices && it->answer_idx < 0; i++)
                if (!strcmp(r, it->choices[i])) it->answer_idx = i;
            if (it->answer_idx < 0 && strlen(r) == 1 && toupper((unsigned char)r[0]) >= 'A')
                it->answer_idx = toupper((unsigned char)r[0]) - 'A';
        }
        if (it->answer_idx < 0 || it->answer_idx >= it->n_choices) {
            tl_fail(err, "%s:%d: the answer names no choice (give its index, letter or text)", path, lineno);
            goto done;
        }
    } else if (it->n_refs == 0) {
        tl_fail(err, "%s:%d: needs \"answers\" (or \"answer\")", path, lineno);
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(o);
    if (rc) item_free(it);
    return rc;
}

static void help_eval(void) {
    printf("usage: tailor eval -m MODEL --tasks FILE.jsonl [--metric M] [--max-new N] [--join TEXT] [--limit N]\n"
           "       [--pred FILE.jsonl]\n"
           "  Scores each line {prompt | context+question, answers, metric[, choices, max_new]} with greedy\n"
           "  answers (exact, contains, f1, number, all) or choice log-likelihoods, and prints the mean\n"
           "  score per metric and overall. --pred writes each item's output and score.\n");
    tl_eval_cli_help(stdout);
}

int tl_cmd_eval(int argc, char **argv) {
    tl_eval_cli e;
    tl_eval_cli_init(&e);
    const char *tasks = NULL, *join = "\n\n", *pred = NULL;
    int max_new = 32, limit = 0, def_metric = TL_METRIC_CONTAINS;
    for (int i = 1; i < argc; i++) {
        int r = tl_eval_cli_arg(&e, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help_eval();
            return 0;
        }
        if (!(v = tl_cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--tasks")) tasks = v;
        else if (!strcmp(a, "--join")) join = v;
        else if (!strcmp(a, "--pred")) pred = v;
        else if (!strcmp(a, "--max-new")) {
            if (tl_cli_int(a, v, 1, 1 << 20, &max_new)) return 2;
        } else if (!strcmp(a, "--limit")) {
            if (tl_cli_int(a, v, 0, INT_MAX, &limit)) return 2;
        } else if (!strcmp(a, "--metric")) {
            if ((def_metric = tl_metric_parse(v)) < 0) {
                fprintf(stderr, "tailor eval: --metric: '%s' unknown (exact, contains, f1, number, all, choice)\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "tailor eval: unknown flag '%s' (see -h)\n", a);
            return 2;
        }
    }
    if (!e.c.model || !tasks) {
        fprintf(stderr, "tailor eval: -m MODEL and --tasks FILE.jsonl are required\n");
        return 2;
    }
    tl_error err = {{0}};
    int rc = 1, n_items = 0;
    item *items = NULL;
    tl_eval_job *jobs = NULL;
    size_t len = 0;
    char *text = tl_read_whole(tasks, &len, &err);
    if (!text) goto done;
    if (tl_eval_cli_load(&e, &err)) goto done;
    const tl_tokenizer *tok = tl_model_tokenizer(e.model);
    /* parse and tokenize */
    int lineno = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        while (*line == ' ' || *line == '\t' || *line == '\r') line++;
        if (!*line) continue;
        if (limit && n_items >= limit) break;
        items = tl_xrealloc(items, sizeof(item) * (size_t)(n_items + 1));
        if (parse_item(line, lineno, tasks, join, (tl_metric)def_metric, max_new, &items[n_items], &err)) goto done;
        item *it = &items[n_items++];
        if (!(it->ids = tl_tokenize_all(tok, it->prompt, strlen(it->prompt), true, &it->n_ids, &err))) {
            tl_fail_prefix(&err, "%s:%d", tasks, lineno);
            goto done;
        }
        if (it->n_ids == 0) {
            tl_fail(&err, "%s:%d: empty prompt", tasks, lineno);
            goto done;
        }
        if (it->n_choices) {
            it->choice_ids = tl_xcalloc((size_t)it->n_choices, sizeof(int32_t *));
            it->choice_len = tl_xcalloc((size_t)it->n_choices, sizeof(int));
            for (int c = 0; c < it->n_choices; c++) {
                size_t n = strlen(it->choices[c]) + 2, nt = 0;
                char *t = tl_xmalloc(n);
                /* the continuation follows the prompt after a space, lm-eval's target delimiter */
                snprintf(t, n, "%s%s", isspace((unsigned char)it->choices[c][0]) ? "" : " ", it->choices[c]);
                size_t cap = n + 8;
                it->choice_ids[c] = tl_xmalloc(sizeof(int32_t) * cap);
                if (tl_tokenize(tok, t, strlen(t), false, false, it->choice_ids[c], cap, &nt, &err) ||
                    nt > cap || nt == 0) {
                    free(t);
                    tl_fail(&err, "%s:%d: choice %d does not tokenize", tasks, lineno, c);
                    goto done;
                }
                free(t);
                it->choice_len[c] = (int)nt;
            }
        }
    }
    if (n_items == 0) {
        tl_fail(&err, "%s: no tasks", tasks);
        goto done;
    }
    jobs = tl_xcalloc((size_t)n_items, sizeof *jobs);
    for (int i = 0; i < n_items; i++) {
        item *it = &items[i];
        jobs[i] = (tl_eval_job){.ids = it->ids, .n_ids = (int)it->n_ids, .max_new = it->metric == TL_METRIC_CHOICE ? 0 : it->max_new,
                           .stop_newline = it->metric != TL_METRIC_ALL, .n_choices = it->metric == TL_METRIC_CHOICE ? it->n_choices : 0,
                           .choice_ids = it->choice_ids, .choice_len = it->choice_len};
    }
    double secs;
    if (tl_eval_cli_run(&e, "eval", jobs, n_items, &secs, &err)) goto done;
    /* score */
    int64_t reused = 0;
    FILE *pf = pred ? fopen(pred, "w") : NULL;
    if (pred && !pf) fprintf(stderr, "tailor eval: --pred %s: cannot open\n", pred);
    for (int i = 0; i < n_items; i++) {
        item *it = &items[i];
        tl_eval_job *j = &jobs[i];
        reused += j->reused;
        it->score = it->metric == TL_METRIC_CHOICE ? (double)(j->chosen == it->answer_idx)
                                                   : tl_score(it->metric, j->output ? j->output : "",
                                                              (const char *const *)it->refs, it->n_refs);
        if (pf) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "id", it->id);
            cJSON_AddStringToObject(o, "metric", tl_metric_name(it->metric));
            if (it->metric == TL_METRIC_CHOICE) {
                cJSON_AddNumberToObject(o, "chosen", j->chosen);
                cJSON_AddNumberToObject(o, "answer", it->answer_idx);
            } else
                cJSON_AddStringToObject(o, "output", j->output ? j->output : "");
            cJSON_AddNumberToObject(o, "score", it->score);
            cJSON_AddNumberToObject(o, "prompt_tokens", (double)it->n_ids);
            cJSON_AddNumberToObject(o, "seconds", j->seconds);
            char *s = cJSON_PrintUnformatted(o);
            fprintf(pf, "%s\n", s);
            free(s);
            cJSON_Delete(o);
        }
    }
    if (pf) fclose(pf);
    cJSON *cfg = tl_eval_cli_config(&e);
    cJSON_AddStringToObject(cfg, "tasks", tasks);
    /* the mean score per metric and overall, each with its 95% interval (stats.h: Wilson for
     * 0/1 scores, else a bootstrap over items) */
    printf("| metric | n | score | 95%% lo | 95%% hi |\n| --- | ---: | ---: | ---: | ---: |\n");
    double *sc = tl_xmalloc(sizeof(double) * (size_t)n_items);
    for (int m = 0; m <= TL_METRIC_COUNT; m++) { /* m == TL_METRIC_COUNT: all items */
        int64_t n = 0;
        for (int i = 0; i < n_items; i++)
            if (m == TL_METRIC_COUNT || items[i].metric == (tl_metric)m) sc[n++] = items[i].score;
        if (!n) continue;
        const tl_interval ci = tl_score_interval(sc, n);
        char name[32];
        snprintf(name, sizeof name, "eval_%s", m == TL_METRIC_COUNT ? "score" : tl_metric_name((tl_metric)m));
        printf("| %s | %lld | %.4f | %.4f | %.4f |\n", m == TL_METRIC_COUNT ? "all" : tl_metric_name((tl_metric)m),
               (long long)n, ci.value, ci.lo, ci.hi);
        tl_eval_cli_result_ci(&e, "eval", cfg, name, ci, secs, NULL);
    }
    free(sc);
    cJSON_Delete(cfg);
    fprintf(stderr, "eval: %d items, %.1f s, %lld prompt tokens reused from the cache%s\n", n_items, secs,
            (long long)reused, tl_eval_cli_can_reuse(&e) ? "" : " (the session cannot truncate: no reuse)");
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor eval: %s\n", err.msg);
    for (int i = 0; i < n_items; i++) {
        item_free(&items[i]);
        if (jobs) tl_eval_job_clear(&jobs[i]);
    }
    free(items);
    free(jobs);
    free(text);
    tl_eval_cli_free(&e);
    return rc;
}
