/* cli.h: what every subcommand shares: the flag table and value parsers (each error names the
 * flag), the common flags and the session parameters made from them, prompt text, checks of
 * output paths before any work. The tools use the engine through include/tailor.h only. */
#ifndef TL_CLI_H
#define TL_CLI_H

#include "../include/tailor.h"

#include <stdio.h>

/* Flags shared by generate / perplexity / bench / evaluation commands. */
typedef struct {
    const char *model;    /* -m */
    const char *prompt;   /* -p */
    const char *file;     /* -f */
    int n_predict;        /* -n */
    int n_ctx;            /* -c */
    int n_threads;        /* -t */
    int chunk;            /* --chunk (also -b / -ub for llama.cpp habits) */
    const char *kv;       /* --kv */
    const char *kv_layer; /* --kv-layer */
    tl_sampler_params sp; /* --temp --top-k --top-p --min-p --repeat-penalty --repeat-last-n -s/--seed */
    bool mem;             /* --mem */
    const char *device;   /* --device cpu|cuda (NULL = cpu) */
    tl_cuda_opts cuda;    /* --cuda-opt LIST (repeatable), over the environment's switches (tl_cli_cuda_env) */
    uint64_t gpu_mem_budget; /* --gpu-mem-budget SIZE (tl_cli_size; 0 = none) */
    uint64_t kv_budget;      /* --kv-budget SIZE (tl_cli_size; 0 = none): serve's KV memory for admitted requests */
    int prefill;             /* --prefill q8|f32: 1 q8, 0 f32, -1 not given (the command's default: q8 for
                                generate, bench and serve, f32 where accuracy is measured) */
} tl_cli_common;

/* Defaults, then the environment's CUDA switches (tl_cli_cuda_env). */
void tl_cli_common_init(tl_cli_common *c);
/* Try to consume argv[*i] (and its value) as a common flag. Returns 1 if consumed, 0 if
 * not a common flag, -1 on a bad value (message printed). */
int tl_cli_common_arg(tl_cli_common *c, int argc, char **argv, int *i);

/* An output file given by a flag, checked before any work (tl_check_output: not a directory,
 * device or pipe, in a writable folder); prints "tailor: FLAG: why" and returns -1 if not. */
int tl_cli_output(const char *flag, const char *path);

/* The numeric flags several subcommands take: one table, so that each has the same spellings,
 * range and meaning of 0 wherever it appears. */
typedef struct {
    const char *names[5]; /* spellings, NULL after the last */
    int lo, hi;
} tl_cli_flag;
/* --device: "cpu" or "cuda" into *out; prints "tailor: FLAG: why" and returns -1 otherwise. */
int tl_cli_device(const char *flag, const char *v, const char **out);
/* --cuda-opt LIST onto *o (tl_cuda_opts_parse); prints the error and returns -1 on a bad item. */
int tl_cli_cuda_opt(const char *v, tl_cuda_opts *o);
/* The environment's CUDA switches onto *o: TL_CUDA_SAFE=1 (the option safe), and the old
 * per-kernel variables (TL_CUDA_WIDEN=1, TL_CUDA_DECODE=0, ...), each read as its --cuda-opt
 * item with a note on stderr that it is deprecated; a bad value is ignored, saying so. */
void tl_cli_cuda_env(tl_cuda_opts *o);
/* The device flags' help (--device, --gpu-mem-budget, --cuda-opt and its options). */
void tl_cli_device_help(FILE *f);
extern const tl_cli_flag tl_flag_ctx;      /* -c --ctx-size [--ctx]: tokens, 0 = the model's training context */
extern const tl_cli_flag tl_flag_chunk;    /* --chunk -b -ub --batch-size: prefill chunk in tokens */
extern const tl_cli_flag tl_flag_threads;  /* -t --threads */
extern const tl_cli_flag tl_flag_parallel; /* --parallel -np: sessions, slots or jobs side by side */
extern const tl_cli_flag tl_flag_layers;   /* --layers: a shape's layer count */
extern const tl_cli_flag tl_flag_samples;  /* --samples: per grid point or task */
/* Whether arg is one of f's spellings. */
bool tl_cli_is(const tl_cli_flag *f, const char *arg);
/* v as f's value (tl_cli_int over f's range). */
int tl_cli_flag_int(const tl_cli_flag *f, const char *arg, const char *v, int *out);

/* Value parsers: print "tailor <cmd>: <flag>: ..." and return -1 on bad input. */
int tl_cli_int(const char *flag, const char *s, long lo, long hi, int *out);
int tl_cli_float(const char *flag, const char *s, float *out);
/* "1k,2k,4096" -> ints in [lo, 2^24] (k = 1024); returns the count, -1 on error (message printed) */
int tl_parse_int_list(const char *flag, const char *s, int lo, int *out, int cap);
/* "0,25,50,75,100" (percent when any value > 1, or with '%') or "0,0.5,1" -> fractions in 0..1 */
int tl_parse_depth_list(const char *flag, const char *s, double *out, int cap);
/* A byte size (tl_parse_size: K/KiB.. binary, KB.. decimal) of at least lo bytes. */
int tl_cli_size(const char *flag, const char *s, uint64_t lo, uint64_t *out);
const char *tl_cli_value(int argc, char **argv, int *i); /* NULL + message if missing */

/* The prompt text from -p or -f (malloc'd); -f reads at most what n_tokens tokens of t span
 * (tl_tok_text_bytes; n_tokens <= 0: the general cap), with a note when it cuts. */
char *tl_cli_prompt_text(const tl_cli_common *c, const tl_tokenizer *t, int64_t n_tokens, size_t *len, tl_error *err);

/* The session parameters of the common flags (-c, -t, --chunk, --device, --gpu-mem-budget,
 * --cuda-opt) with the plan parsed from --kv/--kv-layer; the context warning on. */
tl_session_params tl_cli_session_params(const tl_cli_common *c, const tl_kv_plan *plan);
/* A session from the common flags, --kv/--kv-layer parsed for m. */
tl_session *tl_cli_session(tl_model *m, const tl_cli_common *c, tl_error *err);

/* The NIAH/RULER haystack folder when --haystack is not given: $TL_SHARED/data/pg_essays, else
 * the first of the shared folder's usual places that exists. */
const char *tl_default_haystack(void);

int tl_cmd_generate(int argc, char **argv);
int tl_cmd_perplexity(int argc, char **argv);
int tl_cmd_bench(int argc, char **argv);
int tl_cmd_info(int argc, char **argv);
int tl_cmd_tokenize(int argc, char **argv);
int tl_cmd_synth(int argc, char **argv);
int tl_cmd_niah(int argc, char **argv);
int tl_cmd_ruler(int argc, char **argv);
int tl_cmd_eval(int argc, char **argv);
int tl_cmd_calibrate(int argc, char **argv);
int tl_cmd_quantize(int argc, char **argv);
int tl_cmd_serve(int argc, char **argv);
int tl_cmd_pareto(int argc, char **argv);

#endif
