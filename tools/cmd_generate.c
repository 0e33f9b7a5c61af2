/* tailor generate: stream a continuation of a prompt to stdout, timings to stderr. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: tailor generate -m MODEL [-p TEXT | -f FILE] [-n N] [-c CTX] [-t THREADS] [--chunk N]\n"
           "       [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [-s SEED]\n"
           "       [--kv SPEC] [--kv-layer OVERRIDES] [--mem] [--ignore-eos] [--show-ids] [--no-bos] [--prefill q8|f32]\n"
           "       [--device cpu|cuda] [--gpu-mem-budget SIZE] [--cuda-opt LIST]\n"
           "  -n -1 generates until an end-of-generation token or the context is full.\n"
           "  --prefill q8 (default): prompt chunks of quantized weights run the integer kernels over q8-rounded\n"
           "  activations, as decode does (as tailor serve); f32: chunks of 32+ tokens widen the weights to f32.\n"
           "  --temp 0 is greedy. --show-ids prints the generated token ids to stderr.\n");
    tl_cli_device_help(stdout);
}

int tl_cmd_generate(int argc, char **argv) {
    tl_cli_common c;
    tl_cli_common_init(&c);
    bool ignore_eos = false, show_ids = false, no_bos = false;
    for (int i = 1; i < argc; i++) {
        int r = tl_cli_common_arg(&c, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        if (!strcmp(argv[i], "--ignore-eos")) ignore_eos = true;
        else if (!strcmp(argv[i], "--show-ids")) show_ids = true;
        else if (!strcmp(argv[i], "--no-bos")) no_bos = true;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            help();
            return 0;
        } else {
            fprintf(stderr, "tailor generate: unknown flag '%s' (see -h)\n", argv[i]);
            return 2;
        }
    }
    if (!c.model) {
        fprintf(stderr, "tailor generate: -m MODEL is required\n");
        return 2;
    }
    if (c.prefill < 0) c.prefill = 1; /* as tailor serve */
    tl_error err = {{0}};
    int rc = 1;
    size_t text_len = 0, n_prompt = 0;
    char *text = NULL;
    int32_t *ids = NULL;
    tl_session *s = NULL;
    tl_sampler *smp = NULL;
    float *logits = NULL;
    tl_model *m = tl_model_load(c.model, &err);
    if (!m) goto done;
    const tl_tokenizer *tok = tl_model_tokenizer(m);
    /* no more text than the context can hold: a longer prompt cannot fit anyway */
    const int n_ctx = tl_model_resolve_n_ctx(m, c.n_ctx);
    if (!(text = tl_cli_prompt_text(&c, tok, n_ctx, &text_len, &err))) goto done;
    if (!(ids = tl_tokenize_all(tok, text, text_len, !no_bos, &n_prompt, &err))) {
        tl_fail_prefix(&err, "prompt");
        goto done;
    }
    if (n_prompt == 0) {
        tl_fail(&err, "the prompt is empty and the model adds no BOS token: nothing to start from");
        goto done;
    }
    if (!(s = tl_cli_session(m, &c, &err))) goto done;
    const int ctx = tl_session_n_ctx(s);
    if ((int)n_prompt >= ctx) {
        tl_fail(&err, "prompt of %zu tokens does not fit the context of %d tokens (raise -c)", n_prompt, ctx);
        goto done;
    }
    const int V = tl_model_n_vocab(m);
    logits = tl_xmalloc(sizeof(float) * (size_t)V);
    smp = tl_sampler_new(&c.sp, V);
    for (size_t i = 0; i < n_prompt; i++) tl_sampler_accept(smp, ids[i]);

    double t0 = tl_time_s();
    if (tl_session_eval(s, ids, (int)n_prompt, logits, false, &err)) goto done;
    double t_prompt = tl_time_s() - t0;

    int max_new = c.n_predict < 0 ? ctx - (int)n_prompt : TL_MIN(c.n_predict, ctx - (int)n_prompt);
    int32_t *gen = tl_xmalloc(sizeof(int32_t) * (size_t)(max_new > 0 ? max_new : 1));
    int n_gen = 0;
    double t1 = tl_time_s();
    char piece[256];
    while (n_gen < max_new) {
        int32_t id = tl_sampler_sample(smp, logits);
        if (!ignore_eos && tl_tok_is_eog(tok, id)) break;
        gen[n_gen++] = id;
        tl_sampler_accept(smp, id);
        size_t np = tl_token_to_piece(tok, id, false, piece, sizeof piece);
        fwrite(piece, 1, np < sizeof piece ? np : sizeof piece, stdout);
        fflush(stdout);
        if (n_gen == max_new || tl_session_n_past(s) + 1 > ctx) break;
        if (tl_session_eval(s, &id, 1, logits, false, &err)) {
            free(gen);
            goto done;
        }
    }
    double t_gen = tl_time_s() - t1;
    printf("\n");
    if (show_ids) {
        fprintf(stderr, "token_ids: [");
        for (int i = 0; i < n_gen; i++) fprintf(stderr, "%s%d", i ? ", " : "", gen[i]);
        fprintf(stderr, "]\n");
    }
    fprintf(stderr, "prompt: %zu tokens in %.1f ms (%.2f tokens/s)\n", n_prompt, t_prompt * 1e3,
            n_prompt / (t_prompt > 0 ? t_prompt : 1e-9));
    fprintf(stderr, "generation: %d tokens in %.1f ms (%.2f ms/token, %.2f tokens/s)\n", n_gen, t_gen * 1e3,
            n_gen ? t_gen * 1e3 / n_gen : 0.0, n_gen / (t_gen > 0 ? t_gen : 1e-9));
    if (c.mem) tl_session_print_memory(stderr, s);
    free(gen);
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor generate: %s\n", err.msg);
    free(logits);
    tl_sampler_free(smp);
    tl_session_free(s);
    free(ids);
    free(text);
    tl_model_free(m);
    return rc;
}
