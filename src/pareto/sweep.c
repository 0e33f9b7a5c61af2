/* sweep.c: the sweep of `tailor pareto` (tailor.h: tl_pareto_sweep and its parts).
 *
 * Each configuration runs in its own process (the caller's child command, this program
 * re-executed with --only ID): a crash or an out-of-memory kill of one is recorded as that
 * configuration's failure and the sweep goes on; several run side by side with -j, threads
 * split between them. Children append their result lines to OUTDIR/results.jsonl as each task
 * finishes, so --resume continues a killed sweep where it stopped. A child dies with its
 * parent (PR_SET_PDEATHSIG), OUTDIR/journal.tsv records each configuration's process started
 * and ended, and one sweep at a time holds OUTDIR/sweep.lock (children included): a
 * configuration interrupted by a killed sweep runs again, once, on --resume, never beside the
 * one that was running it. --emit-jobs prints the child commands (GNU parallel, Slurm arrays);
 * --merge combines the results.jsonl of several runs. */
#define _GNU_SOURCE
#include "pareto.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WFMT 16

static char *path_join(const char *dir, const char *name) {
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0) abort();
    return p;
}

static bool file_exists(const char *p) { return access(p, R_OK) == 0; }

/* OUTDIR, made when missing, must be a folder this process can write in: checked before any
 * work (a regular file there failed only after every configuration had run). */
static int out_dir(const char *dir) {
    struct stat st;
    const char *why = NULL;
    if (mkdir(dir, 0755) && errno != EEXIST) why = strerror(errno);
    else if (stat(dir, &st) || !S_ISDIR(st.st_mode)) why = "not a directory";
    else if (access(dir, W_OK | X_OK)) why = strerror(errno);
    if (why) fprintf(stderr, "tailor pareto: -o %s: %s\n", dir, why);
    return why ? -1 : 0;
}

/* the file of a weight format: base -> the model; --weights-file mapping; else OUTDIR/weights/<fmt>.gguf */
static char *weights_path(const tl_pareto_sweep_params *o, const char *fmt) {
    if (!strcmp(fmt, "base")) return tl_xstrdup(o->model);
    if (o->weights_files) {
        char *dup = tl_xstrdup(o->weights_files), *save = NULL;
        for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(t, '=');
            if (eq && (size_t)(eq - t) == strlen(fmt) && !strncmp(t, fmt, strlen(fmt))) {
                char *r = tl_xstrdup(eq + 1);
                free(dup);
                return r;
            }
        }
        free(dup);
    }
    char *p = NULL;
    if (asprintf(&p, "%s/weights/%s.gguf", o->out, fmt) < 0) abort();
    return p;
}

static int write_outputs(const tl_pareto_sweep_params *o, const char *const *files, int n_files) {
    tl_error err = {{0}};
    tl_pareto_table t;
    if (tl_pareto_load(&t, files, n_files, o->baseline, o->use_speed, &err)) {
        fprintf(stderr, "tailor pareto: %s\n", err.msg);
        return 1;
    }
    char title[700];
    const char *base = strrchr(t.model, '/');
    snprintf(title, sizeof title, "KV Pareto: %s at %d tokens", base ? base + 1 : t.model, t.ctx);
    tl_pareto_report_opts ro = {o->budget, o->max_loss, title};
    char *csv = path_join(o->out, "frontier.csv"), *md = path_join(o->out, "report.md");
    int rc = 0;
    char *rep = tl_pareto_report_md(&t, &ro);
    if (tl_pareto_write_csv(&t, csv, &err) || tl_write_file(md, rep, strlen(rep), &err)) {
        fprintf(stderr, "tailor pareto: %s\n", err.msg);
        rc = 1;
    }
    /* plots: at the evaluated context, and projected when there is a projection; PNG too when
     * built with cairo */
    static const char *const names[3] = {"frontier", "frontier_target", "frontier_project_to"};
    if (!rc && !tl_pareto_have_png())
        fprintf(stderr, "pareto: note: PNG plots need cairo (this tailor was built without it: install libcairo2-dev "
                        "and rebuild); writing the SVG plots only\n");
    for (int w = 0; w < 3 && !rc; w++) {
        if ((w == 1 && !t.target_ctx) || (w == 2 && !t.project_to[0])) continue;
        char stem[600], *sv;
        snprintf(stem, sizeof stem, "%s/%s", o->out, names[w]);
        char *svg = NULL, *png = NULL;
        if (asprintf(&svg, "%s.svg", stem) < 0 || asprintf(&png, "%s.png", stem) < 0) abort();
        char tw[800];
        if (w == 0) snprintf(tw, sizeof tw, "%s", title);
        else if (w == 1) snprintf(tw, sizeof tw, "%s, memory projected to %d tokens", title, t.target_ctx);
        else snprintf(tw, sizeof tw, "%s, memory as %s at %d tokens", title, t.project_to, t.target_ctx);
        sv = tl_pareto_svg(&t, tw, w);
        if (tl_write_file(svg, sv, strlen(sv), &err) || (tl_pareto_have_png() && tl_pareto_png(&t, tw, w, png, &err))) {
            fprintf(stderr, "tailor pareto: %s\n", err.msg);
            rc = 1;
        } else if (!tl_pareto_have_png() && unlink(png) == 0) {
            fprintf(stderr, "pareto: removed %s (an earlier run's plot, no longer the SVG's data)\n", png);
        }
        free(sv);
        free(svg);
        free(png);
    }
    if (!rc) fprintf(stderr, "pareto: wrote report.md, frontier.csv and plots in %s\n", o->out);
    free(rep);
    free(csv);
    free(md);
    tl_pareto_table_free(&t);
    return rc;
}

int tl_pareto_report(const tl_pareto_sweep_params *o) {
    if (out_dir(o->out)) return 1;
    char *res = path_join(o->out, "results.jsonl");
    const char *files[1] = {res};
    int rc = write_outputs(o, files, 1);
    free(res);
    return rc;
}

int tl_pareto_merge(const tl_pareto_sweep_params *o) {
    if (!o->out) {
        fprintf(stderr, "tailor pareto: --merge needs -o OUTDIR\n");
        return 2;
    }
    if (out_dir(o->out)) return 1;
    char *dst = path_join(o->out, "results.jsonl");
    /* gather everything first: OUTDIR may be one of the inputs */
    size_t cap = 1 << 16, n = 0;
    char *all = tl_xmalloc(cap);
    for (int i = 0; i < o->n_merge; i++) {
        struct stat st;
        char *p = stat(o->merge[i], &st) == 0 && S_ISDIR(st.st_mode) ? path_join(o->merge[i], "results.jsonl")
                                                                       : tl_xstrdup(o->merge[i]);
        tl_error err = {{0}};
        size_t len = 0;
        char *txt = tl_read_whole(p, &len, &err);
        if (!txt) {
            fprintf(stderr, "tailor pareto: --merge: %s\n", err.msg);
            free(p);
            free(all);
            free(dst);
            return 1;
        }
        /* whole lines only */
        while (len && txt[len - 1] != '\n') len--;
        if (n + len + 1 > cap) all = tl_xrealloc(all, cap = 2 * (n + len + 1));
        memcpy(all + n, txt, len);
        n += len;
        free(txt);
        free(p);
    }
    tl_error err = {{0}};
    int rc = tl_write_file(dst, all, n, &err);
    free(all);
    if (rc) {
        fprintf(stderr, "tailor pareto: %s\n", err.msg);
        free(dst);
        return 1;
    }
    const char *files[1] = {dst};
    rc = write_outputs(o, files, 1);
    free(dst);
    return rc;
}

static char *shell_quote(const char *s) {
    size_t n = 3;
    for (const char *p = s; *p; p++) n += *p == '\'' ? 4 : 1;
    char *q = tl_xmalloc(n), *w = q;
    *w++ = '\'';
    for (const char *p = s; *p; p++) {
        if (*p == '\'') {
            memcpy(w, "'\\''", 4);
            w += 4;
        } else *w++ = *p;
    }
    *w++ = '\'';
    *w = 0;
    return q;
}

/* A configuration's command: the caller's (o->child_args) + --only ID [--skip-tasks T] -t N */
static char **child_argv(const tl_pareto_sweep_params *o, const char *id, const char *skip, int threads, int *n_out) {
    char **v = tl_xcalloc((size_t)o->n_child_args + 16, sizeof *v);
    int n = 0;
    for (int i = 0; i < o->n_child_args; i++) v[n++] = (char *)o->child_args[i];
    v[n++] = "--only";
    v[n++] = (char *)id;
    if (skip && *skip) {
        v[n++] = "--skip-tasks";
        v[n++] = (char *)skip;
    }
    static __thread char tbuf[16];
    snprintf(tbuf, sizeof tbuf, "%d", threads);
    v[n++] = "-t";
    v[n++] = tbuf;
    *n_out = n;
    return v;
}

int tl_pareto_child(const tl_pareto_sweep_params *o) {
    tl_pareto_config c;
    if (tl_pareto_config_from_id(o->only, &c)) {
        fprintf(stderr, "tailor pareto: --only '%s': not a configuration id (w=.. kv=.. chunk=..)\n", o->only);
        return 2;
    }
    char *results = path_join(o->out, "results.jsonl"), *kl = path_join(o->out, "baseline.kldb");
    char *wpath = weights_path(o, c.weights);
    char *text = o->text ? tl_xstrdup(o->text) : path_join(o->out, "eval_text.txt");
    const bool is_base = o->baseline && !strcmp(o->baseline, c.id);
    tl_pareto_run_params p = {
        .model_path = wpath, .base_model = o->model, .text_path = text,
        .haystack = o->haystack, .results = results,
        .kl_base = is_base || file_exists(kl) ? kl : NULL, .write_base = is_base, .tasks = o->tasks, .ctx = o->ctx,
        .ppl_windows = o->windows, .ppl_tail = o->tail, .n_decode = o->n_decode, .niah_samples = o->niah_samples,
        .niah_depths = o->depths, .n_niah_depths = o->n_depths, .ruler_samples = o->ruler_samples,
        .n_threads = o->threads, .seed = o->seed, .target_ctx = o->target_ctx, .project_to = o->project_to,
        .skip_tasks = o->skip_tasks, .device = o->device, .cuda = o->cuda};
    tl_error err = {{0}};
    int rc = tl_pareto_run_config(&c, &p, &err);
    if (rc && err.msg[0]) fprintf(stderr, "pareto: %s: %s\n", c.id, err.msg);
    free(results);
    free(kl);
    free(wpath);
    free(text);
    return rc ? 1 : 0;
}

/* One sweep at a time in OUTDIR. The lock's descriptor is inherited by the children (no
 * O_CLOEXEC) and stays open for this process's life: the lock is held until the last of them
 * has ended, also when this process was killed, so a resume never runs beside a configuration
 * that is still running. A killed sweep's children end at once (PR_SET_PDEATHSIG): wait a little
 * for them. */
static int lock_out_dir(const char *dir) {
    char *p = path_join(dir, "sweep.lock");
    const int fd = open(p, O_RDWR | O_CREAT, 0644);
    const char *why = fd < 0 ? strerror(errno) : NULL;
    for (int t = 0; !why && flock(fd, LOCK_EX | LOCK_NB); t++) {
        if (errno != EWOULDBLOCK && errno != EINTR) why = strerror(errno);
        else if (t == 100) why = "in use by another tailor pareto (or a child of one) in this folder";
        else if (t == 0) fprintf(stderr, "pareto: %s is in use; waiting up to 10 s for its processes to end\n", dir);
        if (!why) nanosleep(&(struct timespec){0, 100000000}, NULL);
    }
    if (why) fprintf(stderr, "tailor pareto: %s: %s\n", p, why);
    free(p);
    return why ? -1 : 0;
}

/* One line of OUTDIR/journal.tsv in one write (O_APPEND: lines never interleave): "start\tID"
 * before a configuration's process is made, "end\tID\tHOW" once it has been reaped. */
static void journal(int fd, const char *what, const char *id, const char *how) {
    char line[1024];
    const int n = snprintf(line, sizeof line, "%s\t%s%s%s\n", what, id, how ? "\t" : "", how ? how : "");
    if (fd >= 0 && n > 0 && (size_t)n < sizeof line && write(fd, line, (size_t)n) != n)
        fprintf(stderr, "pareto: journal.tsv: %s\n", strerror(errno));
}

/* How many "what\tID" lines the journal holds for id. */
static int journal_count(const char *text, const char *what, const char *id) {
    char key[700];
    const int k = snprintf(key, sizeof key, "%s\t%s", what, id);
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, key)); p += k)
        n += (p == text || p[-1] == '\n') && (p[k] == '\n' || p[k] == '\t');
    return n;
}

/* the evaluation text when -f is not given: the haystack's .txt files joined (no shell: the
 * paths are data, whatever they hold) */
static int make_text(const tl_pareto_sweep_params *o, const char *path, tl_error *err) {
    if (file_exists(path)) return 0;
    const char *dir = o->haystack;
    size_t len = 0;
    bool cut = false;
    char *text = tl_read_text_dir(dir, "", 0, &len, &cut, err);
    if (cut) fprintf(stderr, "pareto: note: the evaluation text is the first %zu bytes of %s/*.txt\n", len, dir);
    const int rc = !text || tl_write_file(path, text, len, err);
    free(text);
    return rc ? tl_fail_prefix(err, "cannot build the evaluation text from the haystack (give -f TEXT)") : 0;
}

typedef struct {
    pid_t pid;
    int cfg;
    double t0;
} slot;

int tl_pareto_sweep(const tl_pareto_sweep_params *p) {
    tl_pareto_sweep_params o = *p;
    if (out_dir(o.out)) return 1;

    tl_error err = {{0}};
    /* the grid, canonicalised against the model's layer count */
    tl_model *m = tl_model_load(o.model, &err);
    if (!m) {
        fprintf(stderr, "tailor pareto: %s\n", err.msg);
        return 1;
    }
    const int n_layer = tl_model_n_layer(m);
    tl_model_free(m);
    tl_pareto_grid raw = {0}, g = {0};
    int grc = 0;
    const bool any_axis = o.axes.weights || o.axes.kv || o.axes.gran || o.axes.group || o.axes.residual ||
                          o.axes.smooth || o.axes.rot || o.axes.chunk;
    if (o.grid_file) {
        size_t len;
        char *txt = tl_read_whole(o.grid_file, &len, &err);
        grc = !txt || tl_pareto_grid_from_json(&raw, txt, o.grid_file, &err);
        free(txt);
    } else if (any_axis) {
        grc = tl_pareto_grid_from_axes(&raw, &o.axes, &err);
    } else {
        grc = tl_pareto_grid_default(&raw, o.grid_size, o.calib != NULL, &err);
    }
    if (grc) {
        fprintf(stderr, "tailor pareto: %s\n", err.msg);
        tl_pareto_grid_free(&raw);
        return 2;
    }
    /* the baseline first: base weights, f16 KV (added when the grid lacks it) */
    tl_pareto_config base;
    tl_pareto_config_set(&base, "base", "f16", "", 256);
    if (o.baseline && tl_pareto_config_from_id(o.baseline, &base)) {
        fprintf(stderr, "tailor pareto: --baseline '%s': not a configuration id\n", o.baseline);
        return 2;
    }
    if (!o.baseline)
        for (int i = 0; i < raw.n; i++)
            if (!strcmp(raw.v[i].weights, "base") && !strcmp(raw.v[i].kv, "f16") && !raw.v[i].kv_layer[0]) {
                base = raw.v[i];
                break;
            }
    tl_pareto_config_canon(&base, n_layer);
    tl_pareto_grid_add(&g, &base);
    for (int i = 0; i < raw.n; i++) {
        tl_pareto_config_canon(&raw.v[i], n_layer);
        tl_pareto_grid_add(&g, &raw.v[i]);
    }
    tl_pareto_grid_free(&raw);
    /* children and reports agree on the baseline through its id */
    char *base_arg = tl_xstrdup(base.id);
    o.baseline = base_arg;
    int rc = 0;
    if (o.dry_run) {
        for (int i = 0; i < g.n; i++) printf("%s\n", g.v[i].id);
        fprintf(stderr, "pareto: %d configurations\n", g.n);
        goto out;
    }
    if (lock_out_dir(o.out)) {
        rc = 1;
        goto out;
    }
    char *results = path_join(o.out, "results.jsonl");
    if (!o.emit && file_exists(results) && !o.resume) {
        fprintf(stderr, "tailor pareto: %s exists: add --resume to continue that sweep, or pick another -o\n", results);
        free(results);
        rc = 2;
        goto out;
    }
    /* weights: quantize each format once */
    char *failed_fmt[MAX_WFMT] = {0}, *fail_reason[MAX_WFMT] = {0};
    int n_failed_fmt = 0;
    {
        char wdir[PATH_MAX];
        snprintf(wdir, sizeof wdir, "%s/weights", o.out);
        for (int i = 0; i < g.n; i++) {
            const char *fmt = g.v[i].weights;
            bool seen = false;
            for (int j = 0; j < i; j++) seen |= !strcmp(g.v[j].weights, fmt);
            if (seen || !strcmp(fmt, "base")) continue;
            char *wp = weights_path(&o, fmt);
            if (!file_exists(wp)) {
                mkdir(wdir, 0755);
                tl_quantize_params qp;
                tl_quantize_default_params(&qp);
                tl_quantize_report qr = {0};
                tl_error qerr = {{0}};
                int qrc = 0;
                if (!strcmp(fmt, "f16") || !strcmp(fmt, "base")) qp.type = TL_TYPE_F16;
                if (tl_quantize_parse_type(fmt, &qp.type, &qp.awq, &qerr)) qrc = -1;
                else if (qp.awq && !o.calib) qrc = tl_fail(&qerr, "weights '%s' need a calibration text (--calib FILE)", fmt);
                if (!qrc) {
                    qp.calib_path = o.calib;
                    qp.n_threads = o.threads;
                    fprintf(stderr, "pareto: quantizing %s -> %s\n", o.model, wp);
                    qrc = tl_quantize_file(o.model, wp, &qp, &qr, &qerr);
                    tl_quantize_report_free(&qr);
                }
                if (qrc && n_failed_fmt < MAX_WFMT) {
                    fprintf(stderr, "pareto: weights %s: %s\n", fmt, qerr.msg);
                    failed_fmt[n_failed_fmt] = tl_xstrdup(fmt);
                    fail_reason[n_failed_fmt++] = tl_xstrdup(qerr.msg);
                }
            }
            free(wp);
        }
    }
    if (o.emit) {
        printf("# tailor pareto jobs: %d configurations. Run the first (the baseline: it writes the KL\n"
               "# reference) before the others; then e.g. `parallel -j N < jobs.txt` or a Slurm array.\n"
               "# Afterwards: tailor pareto --report %s  (or --merge DIRS... -o OUT for separate outputs)\n",
               g.n, o.out);
        for (int i = 0; i < g.n; i++) {
            int n;
            char **v = child_argv(&o, g.v[i].id, NULL, o.threads, &n);
            for (int k = 0; k < n; k++) {
                char *q = shell_quote(v[k]);
                printf("%s%s", k ? " " : "", q);
                free(q);
            }
            printf(" --child --baseline ");
            char *q = shell_quote(base.id);
            printf("%s\n", q);
            free(q);
            free(v);
        }
        free(results);
        goto out_w;
    }
    tl_pareto_repair_tail(results);
    if (!o.text) {
        char *tp = path_join(o.out, "eval_text.txt");
        if (make_text(&o, tp, &err)) {
            fprintf(stderr, "tailor pareto: %s\n", err.msg);
            free(tp);
            free(results);
            rc = 1;
            goto out_w;
        }
        free(tp);
    }
    {
        char *done = tl_pareto_done_pairs(results);
        char *jpath = path_join(o.out, "journal.tsv"), *jtext = file_exists(jpath) ? tl_read_whole(jpath, NULL, &err) : NULL;
        const int jfd = open(jpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (jfd < 0) fprintf(stderr, "pareto: %s: %s\n", jpath, strerror(errno));
        const int nt = tl_pareto_n_items(o.tasks);
        char **skip = tl_xcalloc((size_t)g.n, sizeof *skip);
        int todo = 0, total = g.n, finished = 0;
        for (int i = 0; i < g.n; i++) {
            skip[i] = tl_pareto_done_tasks(done, g.v[i].id, o.tasks);
            const int ndone = skip[i][0] ? tl_pareto_n_items(skip[i]) : 0;
            if (ndone >= nt) finished++;
            else todo++;
            /* started by a sweep that was killed before it ended: its missing tasks run again, once */
            if (ndone < nt && jtext && journal_count(jtext, "start", g.v[i].id) > journal_count(jtext, "end", g.v[i].id))
                fprintf(stderr, "pareto: %s was interrupted (its sweep was killed); running it again\n", g.v[i].id);
        }
        /* the baseline's KL file is what every other configuration's ppl is compared with (KLD,
         * the paired PPL-ratio interval): when it is gone (a copied or cleaned folder) while
         * others still need it, the baseline's ppl runs again, first */
        char *klb = path_join(o.out, "baseline.kldb");
        if (o.baseline && tl_pareto_in_list(o.tasks, "ppl") && !file_exists(klb)) {
            bool needed = false;
            int bi = -1;
            for (int i = 0; i < g.n; i++) {
                if (!strcmp(g.v[i].id, o.baseline)) bi = i;
                else needed |= !tl_pareto_in_list(skip[i], "ppl");
            }
            if (bi >= 0 && needed && tl_pareto_in_list(skip[bi], "ppl")) {
                char *rest = tl_pareto_done_tasks(done, g.v[bi].id, o.tasks), *keep = tl_xcalloc(strlen(rest) + 1, 1), *sv = NULL;
                for (char *t = strtok_r(rest, ",", &sv); t; t = strtok_r(NULL, ",", &sv))
                    if (strcmp(t, "ppl")) {
                        if (keep[0]) strcat(keep, ",");
                        strcat(keep, t);
                    }
                if (tl_pareto_n_items(skip[bi]) >= nt) finished--, todo++;
                free(skip[bi]);
                skip[bi] = keep;
                free(rest);
                fprintf(stderr, "pareto: %s is missing: the baseline's ppl runs again for the comparisons\n", klb);
            }
        }
        free(klb);
        free(done);
        free(jtext);
        free(jpath);
        /* weight formats that could not be made: recorded as failures up front */
        for (int i = 0; i < g.n; i++)
            for (int f = 0; f < n_failed_fmt; f++) {
                if (strcmp(g.v[i].weights, failed_fmt[f]) || (skip[i][0] && tl_pareto_n_items(skip[i]) >= nt)) continue;
                char reason[700];
                snprintf(reason, sizeof reason, "weights %s: %s", failed_fmt[f], fail_reason[f]);
                char *dup = tl_xstrdup(o.tasks), *save = NULL;
                for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save))
                    if (!tl_pareto_in_list(skip[i], t)) tl_pareto_append_failure(results, &g.v[i], o.model, o.ctx, t, reason, NULL, &err);
                free(dup);
                free(skip[i]);
                skip[i] = tl_xstrdup(o.tasks);
                finished++;
                todo--;
            }
        fprintf(stderr, "pareto: %d configurations x %d task(s) at %d tokens; %d already done, %d to run, %d at a time\n",
                total, nt, o.ctx, finished, todo, o.jobs);
        const int P = TL_MAX(1, o.jobs), T = TL_MAX(1, o.threads / P);
        slot *slots = tl_xcalloc((size_t)P, sizeof *slots);
        int running = 0, next = 0, ran = 0;
        const double t_start = tl_time_s();
        for (;;) {
            /* the baseline alone first: the others compare against its KL file */
            while (running < P && next < g.n) {
                const int ndone = skip[next][0] ? tl_pareto_n_items(skip[next]) : 0;
                if (ndone >= nt) {
                    next++;
                    continue;
                }
                if (next > 0 && running > 0 && slots[0].pid && slots[0].cfg == 0) break; /* baseline still running */
                int n;
                char **v = child_argv(&o, g.v[next].id, skip[next], T, &n);
                v[n++] = "--child";
                v[n++] = "--baseline";
                v[n++] = base_arg;
                v[n] = NULL;
                journal(jfd, "start", g.v[next].id, NULL);
                fflush(NULL);
                const pid_t parent = getpid();
                pid_t pid = fork();
                if (pid == 0) {
                    /* the child dies with this process (and ends now if it is already gone) */
                    if (prctl(PR_SET_PDEATHSIG, SIGTERM) || getppid() != parent) _exit(128 + SIGTERM);
                    execv(v[0], v);
                    fprintf(stderr, "pareto: exec %s: %s\n", v[0], strerror(errno));
                    _exit(127);
                }
                free(v);
                if (pid < 0) {
                    fprintf(stderr, "pareto: fork: %s\n", strerror(errno));
                    journal(jfd, "end", g.v[next].id, "fork failed");
                    break;
                }
                int s = 0;
                while (slots[s].pid) s++;
                slots[s] = (slot){pid, next, tl_time_s()};
                running++;
                fprintf(stderr, "pareto: start [%d/%d] %s\n", next + 1, g.n, g.v[next].id);
                next++;
                if (next == 1) break; /* wait for the baseline */
            }
            if (running == 0) break;
            int status = 0;
            struct rusage ru;
            pid_t pid = wait4(-1, &status, 0, &ru);
            if (pid < 0) {
                if (errno == EINTR) continue;
                break;
            }
            int s = 0;
            while (s < P && slots[s].pid != pid) s++;
            if (s == P) continue;
            const int ci = slots[s].cfg;
            const double secs = tl_time_s() - slots[s].t0;
            slots[s].pid = 0;
            char how[32];
            if (WIFSIGNALED(status)) snprintf(how, sizeof how, "signal %d", WTERMSIG(status));
            else snprintf(how, sizeof how, "exit %d", WEXITSTATUS(status));
            journal(jfd, "end", g.v[ci].id, how);
            running--;
            ran++;
            finished++;
            /* a crash or a kill leaves tasks unrecorded: record them with the reason */
            if (!WIFEXITED(status) || (WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 1)) {
                char reason[256];
                if (WIFSIGNALED(status))
                    snprintf(reason, sizeof reason, "process killed by signal %d (%s)%s; peak RSS %.0f MiB",
                             WTERMSIG(status), strsignal(WTERMSIG(status)),
                             WTERMSIG(status) == SIGKILL ? ", out of memory?" : "", ru.ru_maxrss / 1024.0);
                else snprintf(reason, sizeof reason, "process exited with status %d", WEXITSTATUS(status));
                char *now = tl_pareto_done_pairs(results);
                char *have = tl_pareto_done_tasks(now, g.v[ci].id, o.tasks);
                char *dup = tl_xstrdup(o.tasks), *save = NULL;
                for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                    char *one = tl_pareto_done_tasks(now, g.v[ci].id, t);
                    if (!one[0]) tl_pareto_append_failure(results, &g.v[ci], o.model, o.ctx, t, reason, NULL, &err);
                    free(one);
                }
                free(dup);
                free(have);
                free(now);
                fprintf(stderr, "pareto: %s: %s\n", g.v[ci].id, reason);
            }
            const double el = tl_time_s() - t_start;
            const int left = todo - ran;
            fprintf(stderr, "pareto: [%d/%d done] %s (%.0f s, peak RSS %.0f MiB); elapsed %.0f s, ETA %.0f s\n", finished,
                    total, g.v[ci].id, secs, ru.ru_maxrss / 1024.0, el, left > 0 ? el / ran * left / P : 0.0);
        }
        free(slots);
        for (int i = 0; i < g.n; i++) free(skip[i]);
        free(skip);
        if (jfd >= 0) close(jfd);
    }
    {
        const char *files[1] = {results};
        rc = write_outputs(&o, files, 1);
    }
    free(results);
out_w:
    for (int f = 0; f < n_failed_fmt; f++) free(failed_fmt[f]), free(fail_reason[f]);
out:
    tl_pareto_grid_free(&g);
    free(base_arg);
    return rc;
}
