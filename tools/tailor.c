/* tailor: one CLI, many subcommands. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"generate", tl_cmd_generate, "generate text from a prompt"},
    {"perplexity", tl_cmd_perplexity, "perplexity of a text (llama.cpp's windows)"},
    {"bench", tl_cmd_bench, "prefill / decode speed (llama-bench style)"},
    {"info", tl_cmd_info, "metadata, tensors, sizes and memory of a GGUF file"},
    {"tokenize", tl_cmd_tokenize, "token ids of a text"},
    {"synth", tl_cmd_synth, "write a GGUF with random weights and a real model's shapes"},
    {"niah", tl_cmd_niah, "needle-in-a-haystack grid over lengths and depths"},
    {"ruler", tl_cmd_ruler, "RULER-style synthetic long-context tasks"},
    {"eval", tl_cmd_eval, "score a JSONL task file (exact, contains, F1, choice)"},
    {"calibrate", tl_cmd_calibrate, "TailorKV: per-layer dense/sparse calibration, writes a plan"},
    {"quantize", tl_cmd_quantize, "quantize weights (q8_0, q4_0, q4_K, w4g128, awq) into a new GGUF"},
    {"serve", tl_cmd_serve, "OpenAI-compatible HTTP server"},
    {"pareto", tl_cmd_pareto, "KV Pareto sweep: memory vs accuracy frontier over weights x KV x chunk"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: tailor <command> [options]   (tailor <command> -h for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "tailor: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
