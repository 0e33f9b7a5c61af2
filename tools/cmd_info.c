/* tailor info: what is in a GGUF file (metadata, tensors), the model tailor reads from it, and
 * the memory a session would need at any context and KV policy, computed without allocating
 * (tl_info, src/engine/info.c: the planner's projection, which the session allocates by). With
 * --shape it projects a model from the synth shape table, no file needed (e.g. Llama-3.1-8B at
 * 128k). */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: tailor info FILE [--kv SPEC] [--kv-layer OVERRIDES] [-c CTX] [--chunk N] [--tensors] [-o md|json]\n"
           "                 [--device cpu|cuda] [--cuda-opt LIST]\n"
           "       tailor info --shape NAME [--type f16|bf16|q8_0|q4_1|q4_0|f32] [--layers N] [--kv SPEC] [-c CTX] ...\n"
           "  Prints the GGUF header and metadata, the model config as tailor reads it, a per-type tensor\n"
           "  summary (--tensors: every tensor) and the memory of a CPU session: weights (the file's bytes\n"
           "  kept mapped + the copies this CPU's integer GEMM repacks, which replace theirs) + KV cache\n"
           "  holding CTX tokens (default: the training context) under the KV policy (default f16) +\n"
           "  activations for the prefill chunk (default 512). --shape projects a model of the synth shape\n"
           "  table (see tailor synth -h) with no file. --device cuda (a file only): also the GPU's plan at\n"
           "  those settings, the bytes --gpu-mem-budget checks and a GPU session allocates (weights as\n"
           "  uploaded, their workspace, the KV device tier, activations, the runtime reserve; the TailorKV\n"
           "  host tier apart); no GPU is needed to print it.\n");
}

int tl_cmd_info(int argc, char **argv) {
    const char *path = NULL, *shape = NULL, *kv = NULL, *kv_layer = NULL, *fmt = "md", *device = NULL;
    tl_cuda_opts cuda = {0};
    int n_ctx = 0, chunk = 0, layers = 0;
    bool tensors = false;
    tl_type type = TL_TYPE_F16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help();
            return 0;
        }
        if (!strcmp(a, "--tensors")) {
            tensors = true;
            continue;
        }
        if (a[0] != '-' || !a[1]) {
            if (path) {
                fprintf(stderr, "tailor info: one file at a time ('%s' and '%s')\n", path, a);
                return 2;
            }
            path = a;
            continue;
        }
        if (!(v = tl_cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) path = v;
        else if (!strcmp(a, "--kv")) kv = v;
        else if (!strcmp(a, "--kv-layer")) kv_layer = v;
        else if (!strcmp(a, "--device")) {
            if (tl_cli_device(a, v, &device)) return 2;
        } else if (!strcmp(a, "--cuda-opt")) {
            if (tl_cli_cuda_opt(v, &cuda)) return 2;
        }
        else if (tl_cli_is(&tl_flag_ctx, a)) {
            if (tl_cli_flag_int(&tl_flag_ctx, a, v, &n_ctx)) return 2;
        } else if (tl_cli_is(&tl_flag_chunk, a)) {
            if (tl_cli_flag_int(&tl_flag_chunk, a, v, &chunk)) return 2;
        } else if (!strcmp(a, "--shape")) shape = v;
        else if (tl_cli_is(&tl_flag_layers, a)) {
            if (tl_cli_flag_int(&tl_flag_layers, a, v, &layers)) return 2;
        } else if (!strcmp(a, "--type")) {
            tl_error e = {{0}};
            if (tl_synth_parse_type(v, &type, &e)) {
                fprintf(stderr, "tailor info: --type: %s\n", e.msg);
                return 2;
            }
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (strcmp(v, "md") && strcmp(v, "json")) {
                fprintf(stderr, "tailor info: -o: '%s' is not md or json\n", v);
                return 2;
            }
            fmt = v;
        } else {
            fprintf(stderr, "tailor info: unknown flag '%s' (see -h)\n", a);
            return 2;
        }
    }
    if (!path == !shape) {
        fprintf(stderr, "tailor info: give a GGUF FILE or --shape NAME (one of them)\n");
        return 2;
    }
    tl_error err = {{0}};
    int rc = 1;
    tl_kv_plan plan = {0};
    tl_info_params ip = {.path = path, .type = type, .n_layer = layers, .device = device, .cuda = cuda};
    if (shape && !(ip.shape = tl_synth_find_shape(shape))) {
        fprintf(stderr, "tailor info: unknown shape '%s'; known:", shape);
        for (size_t i = 0; i < tl_synth_n_shapes(); i++) fprintf(stderr, " %s", tl_synth_shape_at(i)->name);
        fprintf(stderr, "\n");
        return 2;
    }
    tl_info *I = tl_info_open(&ip, &err);
    if (!I) goto done;
    if (tl_info_has_model(I)) {
        /* the session's memory, by the planner */
        if (tl_kv_plan_parse(&plan, kv ? kv : "f16", kv_layer, tl_info_n_layer(I), &err) ||
            tl_info_memory(I, &plan, n_ctx, chunk, &err)) {
            rc = 2;
            goto done;
        }
    } else if (kv || kv_layer || n_ctx) {
        fprintf(stderr, "tailor info: memory projection skipped: the file is not a model tailor can run\n");
    }
    tl_info_print(I, stdout, !strcmp(fmt, "json"), tensors);
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor info: %s\n", err.msg);
    tl_kv_plan_free(&plan);
    tl_info_free(I);
    return rc;
}
