/* tailor quantize: re-encode a GGUF file's weight matrices (src/convert/quantize.h, src/convert/awq.h). */
#include "cli.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: tailor quantize IN.gguf OUT.gguf --type q8_0|q4_0|q4_1|q5_0|q5_1|q4_K|q5_K|q6_K|w4g128|awq\n"
           "       [-f CALIB_TEXT] [--keep output,token_embd] [-t THREADS] [-q]\n"
           "       AWQ: [--calib-tokens N] [--calib-ctx N] [--samples N] [--grid N] [--clip-grid N | --no-clip]\n"
           "  Re-encodes every 2-D weight matrix (token_embd and output included unless kept) and copies\n"
           "  everything else. RTN types are bit-exact with llama.cpp's reference quantizers; w4g128 is\n"
           "  tailor's 4-bit asymmetric format with groups of 128 (llama.cpp cannot load it).\n"
           "  awq: activation-aware scaling searched on CALIB_TEXT (default 8192 tokens in windows of 512,\n"
           "  512 rows per group, alpha grid 20, clipping grid 20), then w4g128.\n"
           "  --keep: comma list of tensor names; a name without blk.N. (ffn_down) keeps it in every layer.\n");
}

static double mib(uint64_t b) { return (double)b / (1024.0 * 1024.0); }

int tl_cmd_quantize(int argc, char **argv) {
    tl_quantize_params p;
    tl_quantize_default_params(&p);
    p.awq_params.max_tokens = 8192;
    const char *in = NULL, *out = NULL, *type = NULL;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int iv;
#define VAL() \
    if (!(v = tl_cli_value(argc, argv, &i))) return 2
#define INT(lo, hi, dst) \
    do { \
        VAL(); \
        if (tl_cli_int(a, v, lo, hi, &iv)) return 2; \
        dst = iv; \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help();
            return 0;
        } else if (!strcmp(a, "--type")) {
            VAL();
            type = v;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            VAL();
            p.calib_path = v;
        } else if (!strcmp(a, "--keep")) {
            VAL();
            p.keep = v;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            INT(1, 1024, p.n_threads);
        } else if (!strcmp(a, "--calib-tokens")) {
            INT(16, INT_MAX, p.awq_params.max_tokens);
        } else if (!strcmp(a, "--calib-ctx")) {
            INT(16, 1 << 20, p.awq_params.n_ctx);
        } else if (!strcmp(a, "--samples")) {
            INT(1, 1 << 20, p.awq_params.max_samples);
        } else if (!strcmp(a, "--grid")) {
            INT(1, 1000, p.awq_params.n_grid);
        } else if (!strcmp(a, "--clip-grid")) {
            INT(0, 1000, p.awq_params.clip_grid);
        } else if (!strcmp(a, "--no-clip")) {
            p.awq_params.clip_grid = 0;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "tailor quantize: unknown flag '%s' (see -h)\n", a);
            return 2;
        } else if (!in) {
            in = a;
        } else if (!out) {
            out = a;
        } else {
            fprintf(stderr, "tailor quantize: unexpected argument '%s'\n", a);
            return 2;
        }
#undef INT
#undef VAL
    }
    if (!in || !out || !type) {
        fprintf(stderr, "tailor quantize: IN.gguf OUT.gguf and --type are required (see -h)\n");
        return 2;
    }
    tl_error err = {{0}};
    if (tl_quantize_parse_type(type, &p.type, &p.awq, &err)) {
        fprintf(stderr, "tailor quantize: --type: %s\n", err.msg);
        return 2;
    }
    if (p.awq && !p.calib_path) {
        fprintf(stderr, "tailor quantize: --type awq needs a calibration text (-f FILE)\n");
        return 2;
    }
    if (!p.awq && p.calib_path) fprintf(stderr, "tailor quantize: note: -f is only used by --type awq\n");
    p.progress = !quiet;
    tl_quantize_report r;
    if (tl_quantize_file(in, out, &p, &r, &err)) {
        fprintf(stderr, "tailor quantize: %s\n", err.msg);
        tl_quantize_report_free(&r);
        return 1;
    }
    printf("%s -> %s (%s): %d tensors: %d quantized, %d fallback, %d kept\n", in, out, type, r.n_tensors,
           r.n_quantized, r.n_fallback, r.n_kept);
    printf("tensor data %.2f MiB -> %.2f MiB, file %.2f MiB, %.1f s\n", mib(r.bytes_in), mib(r.bytes_out),
           mib(r.file_bytes), r.seconds);
    for (int t = 0; t < TL_TYPE_COUNT; t++)
        if (r.type_count[t])
            printf("  %-7s %4llu tensors %9.2f MiB  (%.2f bits/weight)\n", tl_type_name(t),
                   (unsigned long long)r.type_count[t], mib(r.type_bytes[t]), tl_type_bits_per_weight((tl_type)t));
    if (p.awq) {
        const tl_awq_summary *s = &r.awq;
        printf("awq: %lld calibration tokens (%s), %d rows per group, %d groups scaled (%d with clipping), "
               "mean relative output error RTN %.4g -> AWQ %.4g; %.1f s\n",
               (long long)r.awq_tokens, p.calib_path, r.awq_samples, s->applied, s->clipped, s->err_rtn, s->err_awq,
               r.awq_seconds);
        if (s->skipped_o)
            printf("awq: o projection skipped in %d layers (%s); they are plain w4g128 RTN\n", s->skipped_o,
                   "grouped-query attention: one V channel feeds several heads");
    }
    tl_quantize_report_free(&r);
    return 0;
}
