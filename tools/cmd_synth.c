/* tailor synth: write a GGUF with random weights and a real model's shapes and metadata
 * (for speed and memory work on models we do not have). */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void help(FILE *f) {
    fprintf(f, "usage: tailor synth --shape NAME -o FILE [--type f16|bf16|f32|q8_0|q4_0|q4_1|q5_0|q5_1|q4_K|q5_K|q6_K|\n"
               "       w4g128|q4_K_M] [--vocab FILE.gguf]\n"
               "       [--seed S] [--layers N] [--ctx N] [-q]\n"
               "  Random weights (std 0.02, output projections 0.02/sqrt(2 layers), norms 1) with the shapes\n"
               "  and metadata of a public model config. --vocab copies every tokenizer.* key of another GGUF\n"
               "  (its vocabulary size then sets n_vocab); without it a byte-level gpt2 vocabulary (256 byte\n"
               "  tokens, <|bos|>, <|eos|>, control fillers) is written. --layers N keeps the first N layers.\n"
               "  Tensors are streamed to disk: any size needs only a few MiB of memory. -q: no progress.\n"
               "shapes:\n");
    for (size_t i = 0; i < tl_synth_n_shapes(); i++) {
        const tl_synth_shape *s = tl_synth_shape_at(i);
        fprintf(f, "  %-15s %-6s %2d layers, dim %4d, ffn %5d, heads %2d/%d, head dim %3d, vocab %6d, ctx %6d  (%s)\n",
                s->name, s->arch, s->n_layer, s->n_embd, s->n_ff, s->n_head, s->n_head_kv, s->head_dim, s->n_vocab,
                s->n_ctx, s->source);
    }
}

int tl_cmd_synth(int argc, char **argv) {
    tl_synth_params p = {.type = TL_TYPE_F16, .seed = 42, .progress = true};
    const char *shape = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help(stdout);
            return 0;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            p.progress = false;
            continue;
        }
        if (!(v = tl_cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--shape")) shape = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--type")) {
            tl_error e = {{0}};
            if (tl_synth_parse_weights(v, &p, &e)) {
                fprintf(stderr, "tailor synth: --type: %s\n", e.msg);
                return 2;
            }
        } else if (!strcmp(a, "--vocab")) p.vocab_path = v;
        else if (!strcmp(a, "--seed") || !strcmp(a, "-s")) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end) {
                fprintf(stderr, "tailor synth: %s: '%s' is not a non-negative integer\n", a, v);
                return 2;
            }
            p.seed = s;
        } else if (tl_cli_is(&tl_flag_layers, a)) {
            if (tl_cli_flag_int(&tl_flag_layers, a, v, &p.n_layer)) return 2;
        } else if (tl_cli_is(&tl_flag_ctx, a)) {
            if (tl_cli_flag_int(&tl_flag_ctx, a, v, &p.n_ctx)) return 2;
        } else {
            fprintf(stderr, "tailor synth: unknown flag '%s' (see -h)\n", a);
            return 2;
        }
    }
    if (!shape || !out) {
        fprintf(stderr, "tailor synth: --shape NAME and -o FILE are required\n");
        help(stderr);
        return 2;
    }
    if (!(p.shape = tl_synth_find_shape(shape))) {
        fprintf(stderr, "tailor synth: unknown shape '%s'; known:", shape);
        for (size_t i = 0; i < tl_synth_n_shapes(); i++) fprintf(stderr, " %s", tl_synth_shape_at(i)->name);
        fprintf(stderr, "\n");
        return 2;
    }
    if (tl_cli_output("-o", out)) return 1;
    tl_error err = {{0}};
    double t0 = tl_time_s();
    if (tl_synth_write(&p, out, &err)) {
        fprintf(stderr, "tailor synth: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "synth: wrote %s (%s, %s, %d layers) in %.1f s\n", out, p.shape->name, p.q4_k_m ? "q4_K_M" : tl_type_name(p.type),
            p.n_layer > 0 ? p.n_layer : p.shape->n_layer, tl_time_s() - t0);
    return 0;
}
