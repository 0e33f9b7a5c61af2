/* tailor perplexity: llama.cpp-convention perplexity of a text file, and KL divergence
 * against a baseline run (src/eval/kld.h):
 *   tailor perplexity -m M -f T -c 2048 --kl-base-write base.kld          # the reference run
 *   tailor perplexity -m M -f T -c 2048 --kl-base base.kld --kv k4v2:kivi  # compare
 * Two flags rather than one that switches on the file's existence: a typo in the path can
 * then never silently turn a comparison into a new baseline. */
#include "eval_cli.h"

#include <stdlib.h>
#include <string.h>

int tl_cmd_perplexity(int argc, char **argv) {
    tl_eval_cli e;
    tl_eval_cli_init(&e);
    tl_cli_common *c = &e.c;
    int max_windows = 0, top_k = 32;
    const char *kl_write = NULL, *kl_read = NULL;
    for (int i = 1; i < argc; i++) {
        int r = tl_eval_cli_arg(&e, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: tailor perplexity -m MODEL -f TEXT [-c CTX] [--chunks N] [-t THREADS] [--chunk N]\n"
                   "       [--kv SPEC] [--kv-layer OVERRIDES] [--mem] [--out FILE.jsonl]\n"
                   "       [--kl-base-write FILE [--kl-topk K]] | [--kl-base FILE]\n"
                   "  Scores the second half of each window of CTX tokens (llama.cpp's convention).\n"
                   "  --kl-base-write stores this run's top-K log-probabilities (+ the rest mass, + the\n"
                   "  correct token's) as a baseline; --kl-base compares this run with one: PPL(base),\n"
                   "  PPL(new), ratio, mean/median/p99/max KLD, mean |dp| of the correct token, same top-1, each\n"
                   "  with its 95%% interval (block bootstrap over the scored tokens, paired for the ratio; Wilson\n"
                   "  for same top-1), and a verdict: \"no measurable loss\" while the ratio's interval holds 1.\n");
            tl_cli_device_help(stdout);
            return 0;
        }
        const char *v = tl_cli_value(argc, argv, &i);
        if (!v) return 2;
        if (!strcmp(a, "--chunks") || !strcmp(a, "--windows")) {
            if (tl_cli_int(a, v, 0, 1 << 30, &max_windows)) return 2;
        } else if (!strcmp(a, "--kl-base-write")) kl_write = v;
        else if (!strcmp(a, "--kl-base") || !strcmp(a, "--kl-divergence-base")) kl_read = v;
        else if (!strcmp(a, "--kl-topk")) {
            if (tl_cli_int(a, v, 1, 1 << 20, &top_k)) return 2;
        } else {
            fprintf(stderr, "tailor perplexity: unknown flag '%s' (see -h)\n", a);
            return 2;
        }
    }
    if (!c->model || !c->file) {
        fprintf(stderr, "tailor perplexity: -m MODEL and -f TEXT are required\n");
        return 2;
    }
    if (kl_write && kl_read) {
        fprintf(stderr, "tailor perplexity: give --kl-base-write (make a baseline) or --kl-base (compare), not both\n");
        return 2;
    }
    if (tl_cli_output("--kl-base-write", kl_write)) return 1; /* before the run, not after it */
    tl_error err = {{0}};
    int rc = 1;
    size_t len = 0, n = 0;
    char *text = NULL;
    int32_t *ids = NULL;
    tl_ppl_report rep = {0};
    if (tl_eval_cli_load(&e, &err)) goto done;
    const int n_ctx = c->n_ctx > 0 ? c->n_ctx : 2048;
    c->n_ctx = n_ctx;
    /* the general cap, not the windows asked for: a KL baseline is tied to the whole text read */
    if (!(text = tl_read_text(c->file, 0, &len, NULL, &err))) goto done;
    if (!(ids = tl_tokenize_all(tl_model_tokenizer(e.model), text, len, true, &n, &err))) {
        tl_fail_prefix(&err, "%s", c->file);
        goto done;
    }
    const tl_ppl_params pp = {.n_ctx = n_ctx, .max_windows = max_windows, .kl_write = kl_write, .kl_top_k = top_k,
                              .kl_read = kl_read, .progress = !e.quiet};
    const tl_session_params sp = tl_cli_session_params(c, &e.plan);
    if (tl_perplexity_run(e.model, &sp, ids, (int64_t)n, &pp, &rep, &err)) goto done;
    const tl_ppl_result res = rep.res;
    printf("model %s, text %s (%zu tokens), -c %d, %d windows, %lld tokens scored, kv %s\n", c->model, c->file, n, n_ctx,
           res.n_windows, (long long)res.n_scored, c->kv ? c->kv : "f16"); /* as given: auto:4, a plan file */
    const tl_interval ci_ppl = tl_ppl_interval(res.nll, res.n_scored);
    /* +/- is llama.cpp's standard error (tokens taken as independent), kept to compare with it */
    printf("Final estimate: PPL = %.4f +/- %.5f  95%% [%.4f, %.4f]\n", res.ppl, res.ppl_err, ci_ppl.lo, ci_ppl.hi);
    cJSON *cfg = tl_eval_cli_config(&e);
    cJSON_AddStringToObject(cfg, "text", c->file);
    cJSON_AddNumberToObject(cfg, "ctx", n_ctx);
    tl_eval_cli_result_ci(&e, "perplexity", cfg, "ppl", (tl_interval){res.ppl, ci_ppl.lo, ci_ppl.hi, res.n_scored},
                          res.seconds, NULL);
    if (kl_write) printf("KL baseline written to %s (top-%d log-probabilities of %lld tokens)\n", kl_write, rep.kl_top_k,
                         (long long)res.n_scored);
    if (kl_read) {
        const tl_kld_stats st = rep.kl;
        cJSON_AddStringToObject(cfg, "kl_base", kl_read);
        printf("KL divergence vs %s (%lld tokens, top-%d baseline, base tail mass %.2e):\n", kl_read, (long long)st.n,
               rep.kl_top_k, st.tail_mass);
        /* each figure, then its 95% interval (block bootstrap over the scored tokens; Wilson for
         * same top-1); median, p99 and max describe this text's KLD distribution */
        printf("  PPL(base)          %10.4f              95%% [%.4f, %.4f]\n", st.ppl_base, st.ci_ppl_base.lo,
               st.ci_ppl_base.hi);
        printf("  PPL(new)           %10.4f              95%% [%.4f, %.4f]\n", st.ppl_new, st.ci_ppl_new.lo,
               st.ci_ppl_new.hi);
        printf("  PPL ratio          %10.6f              95%% [%.6f, %.6f] paired\n", st.ppl_ratio, st.ci_ratio.lo,
               st.ci_ratio.hi);
        printf("  mean ln ratio      %10.6f              95%% [%.6f, %.6f] paired\n", st.mean_ln_ratio,
               st.ci_ln_ratio.lo, st.ci_ln_ratio.hi);
        printf("  mean KLD           %10.6f +/- %.6f 95%% [%.6f, %.6f]\n", st.kld_mean, st.kld_err, st.ci_kld.lo,
               st.ci_kld.hi);
        printf("  median KLD         %10.6f\n  99th pct KLD       %10.6f\n  max KLD            %10.6f\n", st.kld_median,
               st.kld_p99, st.kld_max);
        printf("  mean |dp| correct  %9.4f%%              95%% [%.4f%%, %.4f%%]\n", 100 * st.mean_abs_dp,
               100 * st.ci_abs_dp.lo, 100 * st.ci_abs_dp.hi);
        printf("  RMS dp correct     %9.4f%%              95%% [%.4f%%, %.4f%%]\n", 100 * st.rms_dp, 100 * st.ci_rms_dp.lo,
               100 * st.ci_rms_dp.hi);
        printf("  same top-1         %9.3f%%              95%% [%.3f%%, %.3f%%] Wilson\n", 100 * st.same_top1,
               100 * st.ci_same_top1.lo, 100 * st.ci_same_top1.hi);
        printf("  (95%% intervals: circular block bootstrap over %d-token blocks, %d resamples, paired for the ratio;\n"
               "   median, 99th pct and max describe this text's distribution, without an interval)\n",
               TL_STATS_BLOCK, TL_STATS_RESAMPLES);
        char verdict[256];
        tl_ratio_verdict_text(st.ci_ratio, verdict, sizeof verdict);
        printf("verdict: %s\n", verdict);
        /* result lines with the figures printed above and their intervals (p99 and max: none) */
        const struct {
            const char *name;
            double v;
            const tl_interval *ci;
        } rows[] = {{"ppl_base", st.ppl_base, &st.ci_ppl_base}, {"ppl_ratio", st.ppl_ratio, &st.ci_ratio},
                    {"kld_mean", st.kld_mean, &st.ci_kld},       {"kld_p99", st.kld_p99, NULL},
                    {"kld_max", st.kld_max, NULL},               {"mean_abs_dp", st.mean_abs_dp, &st.ci_abs_dp},
                    {"same_top1", st.same_top1, &st.ci_same_top1}};
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "verdict", tl_verdict_name(tl_ratio_verdict(st.ci_ratio)));
        for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
            const cJSON *extra = rows[i].ci == &st.ci_ratio ? x : NULL;
            if (rows[i].ci)
                tl_eval_cli_result_ci(&e, "perplexity", cfg, rows[i].name,
                                      (tl_interval){rows[i].v, rows[i].ci->lo, rows[i].ci->hi, st.n}, res.seconds, extra);
            else tl_eval_cli_result(&e, "perplexity", cfg, rows[i].name, rows[i].v, st.n, res.seconds, extra);
        }
        cJSON_Delete(x);
    }
    cJSON_Delete(cfg);
    fprintf(stderr, "%.1f s, %.1f tokens/s\n", res.seconds, res.n_windows * (double)n_ctx / res.seconds);
    if (c->mem) tl_session_print_memory(stderr, rep.session);
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor perplexity: %s\n", err.msg);
    tl_ppl_report_free(&rep);
    free(ids);
    free(text);
    tl_eval_cli_free(&e);
    return rc;
}
