/* tailor pareto: sweep weight format x KV policy x prefill chunk, measure memory / accuracy /
 * speed, report the Pareto frontier (tl_pareto_sweep: src/pareto/sweep.c; docs/pareto.md).
 *
 * Each configuration runs in its own process: this binary re-executed with the parent's flags
 * (less the sweep-only ones) and --only ID --child. --emit-jobs prints those commands (GNU
 * parallel, Slurm arrays); --merge combines the results.jsonl of several runs. */
#define _GNU_SOURCE
#include "cli.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void help(void) {
    printf("usage: tailor pareto -m MODEL -o OUTDIR [-c 8192] [--target-ctx 131072] [--tasks ppl,niah]\n"
           "       [--grid FILE.json | --grid-size paper|small|tiny | axis flags] [--budget 2GiB] [--max-loss 1%%]\n"
           "       [--project-to FILE.gguf|llama-3.1-8b] [-j N] [-t THREADS] [--resume] [--emit-jobs]\n"
           "       tailor pareto --merge DIR|FILE... -o OUTDIR       tailor pareto --report OUTDIR\n"
           "  Sweeps configurations (weights x KV policy x prefill chunk); for each: memory (weights + KV +\n"
           "  peak activations, measured at -c and projected to --target-ctx), accuracy per task relative\n"
           "  to the f16 baseline, prefill/decode speed. Writes results.jsonl, frontier.csv, report.md,\n"
           "  frontier.svg and (built with cairo) frontier.png in OUTDIR.\n"
           "  tasks: ppl (PPL + KLD of the last --ppl-tail tokens of --windows windows), niah (passkey at\n"
           "         --niah-depths), ruler (multikey, multivalue, multiquery, vt), or RULER task names\n"
           "  axis flags (comma lists, cartesian product): --weights base,f16,q8_0,q4_0,q4_K,w4g128,awq\n"
           "         --kv-axis f16,k8v8,k8v4,k8v2,k4v4,k4v2,k2v2,k1v1 (any --kv spec or plan.json)\n"
           "         --gran tok,chan,block,tensor  --groups 32,64,128  --residual 0,128  --smooth 0,1\n"
           "         --rot 0,1  --chunks 64,256,1024,full\n"
           "  weights: quantized once into OUTDIR/weights/ (awq needs --calib TEXT), or --weights-file\n"
           "         q4_0=FILE,awq=FILE. 'base' is the model as given.\n"
           "  --windows N (2) --ppl-tail N (second half) --decode N (16) --niah-depths 0,25,50,75,100\n"
           "  --niah-samples N (4 per depth) --ruler-samples N (4) --haystack DIR -f TEXT (default: the haystack)\n"
           "  --baseline ID  --speed (3-D frontier with decode speed)  --dry-run (list configurations)\n"
           "  --device cpu|cuda: run the configurations on GPU 0; memory is then the device's by part\n"
           "         (weights as uploaded, KV device tier, activations + workspace) beside the planner's\n"
           "%s", tl_cuda_opts_help());
}

static int parse_args(tl_pareto_sweep_params *o, bool *child, bool *report_only, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    tl_cli_cuda_env(&o->cuda);
    o->ctx = 8192;
    o->target_ctx = 131072;
    o->tasks = "ppl,niah";
    o->jobs = 1;
    /* enough to tell a 1% perplexity loss from none (two windows of 8192: ~8k scored tokens, a
     * paired ratio interval of about +-0.3% for a 4-bit cache); needles and task samples are
     * coarser (20 agreeing needles bound a loss only below 16%): raise them for task claims */
    o->windows = 2;
    o->n_decode = 16;
    o->niah_samples = 4;
    o->ruler_samples = 4;
    o->max_loss = -1;
    o->seed = 1234;
    const double dd[5] = {0, 0.25, 0.5, 0.75, 1};
    memcpy(o->depths, dd, sizeof dd);
    o->n_depths = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help();
            exit(0);
        }
#define FLAG(name) (!strcmp(a, name))
        if (FLAG("--resume")) o->resume = true;
        else if (FLAG("--emit-jobs")) o->emit = true;
        else if (FLAG("--child")) *child = true;
        else if (FLAG("--speed")) o->use_speed = true;
        else if (FLAG("--dry-run")) o->dry_run = true;
        else if (FLAG("--merge")) {
            while (i + 1 < argc && argv[i + 1][0] != '-' && o->n_merge < TL_PARETO_MAX_MERGE)
                o->merge[o->n_merge++] = argv[++i];
            if (!o->n_merge) {
                fprintf(stderr, "tailor pareto: --merge needs one or more DIR or results.jsonl\n");
                return -1;
            }
        } else {
            if (!(v = tl_cli_value(argc, argv, &i))) return -1;
            int bad = 0;
            if (FLAG("-m") || FLAG("--model")) o->model = v;
            else if (FLAG("-f") || FLAG("--file")) o->text = v;
            else if (FLAG("--haystack")) o->haystack = v;
            else if (FLAG("-o") || FLAG("--out")) o->out = v;
            else if (FLAG("--report")) o->out = v, *report_only = true;
            else if (FLAG("--grid")) o->grid_file = v;
            else if (FLAG("--grid-size")) o->grid_size = v;
            else if (FLAG("--tasks")) o->tasks = v;
            else if (FLAG("--project-to")) o->project_to = v;
            else if (FLAG("--calib")) o->calib = v;
            else if (FLAG("--weights-file")) o->weights_files = v;
            else if (FLAG("--only")) o->only = v;
            else if (FLAG("--baseline")) o->baseline = v;
            else if (FLAG("--skip-tasks")) o->skip_tasks = v;
            else if (FLAG("--weights")) o->axes.weights = v;
            else if (FLAG("--kv-axis") || FLAG("--kv")) o->axes.kv = v;
            else if (FLAG("--gran")) o->axes.gran = v;
            else if (FLAG("--groups")) o->axes.group = v;
            else if (FLAG("--residual")) o->axes.residual = v;
            else if (FLAG("--smooth")) o->axes.smooth = v;
            else if (FLAG("--rot")) o->axes.rot = v;
            else if (FLAG("--chunks") || FLAG("--chunk")) o->axes.chunk = v;
            else if (tl_cli_is(&tl_flag_ctx, a)) bad = tl_cli_flag_int(&tl_flag_ctx, a, v, &o->ctx);
            else if (FLAG("--target-ctx")) bad = tl_cli_int(a, v, 0, 1 << 26, &o->target_ctx);
            else if (FLAG("--device")) bad = tl_cli_device(a, v, &o->device);
            else if (FLAG("--cuda-opt")) bad = tl_cli_cuda_opt(v, &o->cuda);
            else if (tl_cli_is(&tl_flag_threads, a)) bad = tl_cli_flag_int(&tl_flag_threads, a, v, &o->threads);
            else if (FLAG("-j") || tl_cli_is(&tl_flag_parallel, a)) bad = tl_cli_flag_int(&tl_flag_parallel, a, v, &o->jobs);
            else if (FLAG("--windows") || FLAG("--chunks-ppl")) bad = tl_cli_int(a, v, 1, 1 << 20, &o->windows);
            else if (FLAG("--ppl-tail")) bad = tl_cli_int(a, v, 0, 1 << 24, &o->tail);
            else if (FLAG("--decode")) bad = tl_cli_int(a, v, 0, 1 << 20, &o->n_decode);
            else if (FLAG("--niah-samples")) bad = tl_cli_int(a, v, 1, 1 << 20, &o->niah_samples);
            else if (FLAG("--ruler-samples")) bad = tl_cli_int(a, v, 1, 1 << 20, &o->ruler_samples);
            else if (FLAG("--niah-depths"))
                bad = (o->n_depths = tl_parse_depth_list(a, v, o->depths, TL_PARETO_MAX_DEPTHS)) < 0;
            else if (FLAG("--budget")) {
                uint64_t b;
                bad = tl_cli_size(a, v, 0, &b);
                o->budget = (double)b;
            }
            else if (FLAG("-s") || FLAG("--seed")) o->seed = strtoull(v, NULL, 10);
            else if (FLAG("--max-loss")) {
                char *end;
                o->max_loss = strtod(v, &end);
                if (end == v || (*end && strcmp(end, "%")) || o->max_loss < 0) {
                    fprintf(stderr, "tailor pareto: --max-loss: '%s' is not a percentage (1%%, 0.5)\n", v);
                    return -1;
                }
                if (*end == '%' || o->max_loss >= 1) o->max_loss /= 100.0;
            } else {
                fprintf(stderr, "tailor pareto: unknown flag '%s' (see -h)\n", a);
                return -1;
            }
            if (bad) return -1;
        }
#undef FLAG
    }
    if (o->ctx < 16) { /* -c 0 (a training context) is not a window size the sweep can use */
        fprintf(stderr, "tailor pareto: -c %d: the evaluation context must be at least 16 tokens\n", o->ctx);
        return -1;
    }
    return 0;
}

static char *self_exe(void) {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return tl_xstrdup("tailor");
    buf[n] = 0;
    return tl_xstrdup(buf);
}

/* A configuration's command, before its own arguments: this binary, "pareto" and the parent's
 * flags minus the sweep-only ones (the sweep adds --only ID --child ...). */
static const char **child_args(int argc, char **argv, const char *exe, int *n_out) {
    const char **v = tl_xcalloc((size_t)argc + 2, sizeof *v);
    int n = 0;
    v[n++] = exe;
    v[n++] = "pareto";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--resume") || !strcmp(a, "--emit-jobs") || !strcmp(a, "--dry-run")) continue;
        if (!strcmp(a, "-j") || !strcmp(a, "--parallel") || !strcmp(a, "-t") || !strcmp(a, "--threads") ||
            !strcmp(a, "--only") || !strcmp(a, "--skip-tasks")) {
            i++;
            continue;
        }
        v[n++] = argv[i];
    }
    *n_out = n;
    return v;
}

int tl_cmd_pareto(int argc, char **argv) {
    tl_pareto_sweep_params o;
    bool child = false, report_only = false;
    if (parse_args(&o, &child, &report_only, argc, argv)) return 2;
    if (o.n_merge) return tl_pareto_merge(&o);
    if (!o.out) {
        fprintf(stderr, "tailor pareto: -o OUTDIR is required\n");
        return 2;
    }
    if (report_only) return tl_pareto_report(&o);
    if (!o.model) {
        fprintf(stderr, "tailor pareto: -m MODEL is required\n");
        return 2;
    }
    if (o.threads <= 0) o.threads = tl_cpu_count();
    if (!o.haystack) o.haystack = tl_default_haystack();
    if (child) return tl_pareto_child(&o);
    char *exe = self_exe();
    const char **args = child_args(argc, argv, exe, &o.n_child_args);
    o.child_args = args;
    const int rc = tl_pareto_sweep(&o);
    free(args);
    free(exe);
    return rc;
}
