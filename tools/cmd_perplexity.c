/* tailor perplexity: llama.cpp-convention perplexity of a text file. */
#include "cli.h"
#include "../src/eval/perplexity.h"

#include <stdlib.h>
#include <string.h>

int tl_cmd_perplexity(int argc, char **argv) {
    tl_cli_common c;
    tl_cli_common_init(&c);
    int max_windows = 0;
    for (int i = 1; i < argc; i++) {
        int r = tl_cli_common_arg(&c, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        if (!strcmp(argv[i], "--chunks") || !strcmp(argv[i], "--windows")) {
            const char *v = tl_cli_value(argc, argv, &i);
            if (!v || tl_cli_int(argv[i - 1], v, 0, 1 << 30, &max_windows)) return 2;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: tailor perplexity -m MODEL -f TEXT [-c CTX] [--chunks N] [-t THREADS] [--chunk N]\n"
                   "       [--kv SPEC] [--kv-layer OVERRIDES] [--mem]\n"
                   "  Scores the second half of each window of CTX tokens (llama.cpp's convention).\n");
            return 0;
        } else {
            fprintf(stderr, "tailor perplexity: unknown flag '%s' (see -h)\n", argv[i]);
            return 2;
        }
    }
    if (!c.model || !c.file) {
        fprintf(stderr, "tailor perplexity: -m MODEL and -f TEXT are required\n");
        return 2;
    }
    tl_error err = {{0}};
    int rc = 1;
    size_t len = 0, n = 0;
    char *text = NULL;
    int32_t *ids = NULL;
    tl_session *s = NULL;
    tl_model *m = tl_model_load(c.model, &err);
    if (!m) goto done;
    if (!(text = tl_cli_read_file(c.file, &len, &err))) goto done;
    if (!(ids = tl_cli_tokenize(m, text, len, true, &n, &err))) {
        tl_fail_prefix(&err, "%s", c.file);
        goto done;
    }
    const int n_ctx = c.n_ctx > 0 ? c.n_ctx : 2048;
    c.n_ctx = n_ctx;
    if (!(s = tl_cli_session(m, &c, &err))) goto done;
    tl_ppl_result res;
    if (tl_perplexity(s, ids, (int64_t)n, n_ctx, max_windows, true, NULL, NULL, &res, &err)) goto done;
    printf("model %s, text %s (%zu tokens), -c %d, %d windows, %lld tokens scored, kv %s\n", c.model, c.file, n, n_ctx,
           res.n_windows, (long long)res.n_scored, c.kv ? c.kv : "f16");
    printf("Final estimate: PPL = %.4f +/- %.5f\n", res.ppl, res.ppl_err);
    fprintf(stderr, "%.1f s, %.1f tokens/s\n", res.seconds, res.n_windows * (double)n_ctx / res.seconds);
    if (c.mem) tl_cli_print_mem(stderr, s);
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor perplexity: %s\n", err.msg);
    tl_session_free(s);
    free(ids);
    free(text);
    tl_model_free(m);
    return rc;
}
