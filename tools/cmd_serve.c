/* tailor serve: the OpenAI-compatible HTTP server (src/server/). Runs until SIGINT/SIGTERM. */
#define _GNU_SOURCE
#include "cli.h"

#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ALLOW 8 /* --kv-allow */

static void help(void) {
    const tl_server_params d = tl_server_default_params();
    printf("usage: tailor serve -m MODEL [--host ADDR] [--port N] [--kv SPEC] [--kv-layer OVERRIDES]\n"
           "       [-c|--ctx-size N] [--parallel P] [--queue Q] [-t THREADS] [--chunk N] [--batch-tokens N]\n"
           "       [--device cpu|cuda] [--gpu-mem-budget SIZE] [--cuda-opt LIST] [--kv-budget SIZE] [--kv-wait S]\n"
           "       [--kv-allow SPEC]...\n"
           "       [--api-key-file FILE | --api-key KEY] [--max-body BYTES] [--timeout S] [--header-timeout S]\n"
           "       [--body-timeout S] [--max-connections N] [--max-connections-per-ip N]\n"
           "       [--chat-template %s] [--chat-parse-special] [--alias NAME]\n"
           "       [-n MAX_TOKENS] [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [-s SEED]\n"
           "       [--prefill q8|f32] [--verbose]\n"
           "  Binds %s:%d by default (--port 0: any free port, printed at start).\n"
           "  P (default %d) slots generate at once, each with its own KV cache of -c tokens under the --kv\n"
           "  policy; each step runs the next token of every generating slot and prompt chunks of the others\n"
           "  through the model at once, on THREADS threads, up to --batch-tokens rows (default --chunk + P).\n"
           "  --device cuda: the slots' KV caches and the step on GPU 0; the weights, the step's buffers and P\n"
           "  slots' KV must fit --gpu-mem-budget (e.g. 24GiB; default: the GPU's free memory) or the start fails.\n"
           "  Up to Q (default %d) more requests wait, beyond that\n"
           "  429. A request that parses and tokenizes a body holds one of these P + Q places while it does.\n"
           "  --kv-budget SIZE (e.g. 2GiB = 2 x 2^30, 2GB = 2 x 10^9; default none): a request is admitted when\n"
           "  its KV at prompt + max_tokens (the planner's bytes under --kv) fits beside the admitted ones';\n"
           "  else it waits up to --kv-wait S (default %d) and gets 429 naming the bytes needed and free.\n"
           "  A slot keeps its KV after a request: one sharing a prefix with it evaluates only the rest.\n"
           "  --kv-allow SPEC (repeatable, at most %d; CPU only): a request may ask for this KV policy instead\n"
           "  of --kv (\"kv\": \"SPEC\" in its body); the slot it gets takes that policy for it.\n"
           "  --max-body (default: the context x the longest token's bytes + %u KiB, room for any prompt\n"
           "  that fits): longer bodies get 413. A prompt with more bytes than the context could hold is\n"
           "  refused before it is tokenized, and tokenizing stops once the context is overfull.\n"
           "  Sampling flags and -n are the defaults for fields a request leaves out (as tailor generate).\n"
           "  --api-key-file FILE (or $TAILOR_API_KEY, or --api-key KEY, which other users see in ps until it\n"
           "  is blanked): every endpoint but /health needs 'Authorization: Bearer KEY'. A key that is given\n"
           "  but empty (or only whitespace) stops the server instead of leaving it open.\n"
           "  Connections (one thread each): at most --max-connections (default 4 (P + Q) + 16, within\n"
           "  ulimit -n / -u less %d), --max-connections-per-ip from one address (default P + Q + 4; behind\n"
           "  a proxy, set it to --max-connections); more are closed at accept. A request's headers must\n"
           "  arrive within --header-timeout (default %d s) of the connection's start or its previous\n"
           "  answer, its body within --body-timeout (default %d s; 408, closed at twice that); idle\n"
           "  connections close after --timeout (default %d s).\n"
           "  Chat messages are tokenized as plain text: only the template's own markers are control tokens;\n"
           "  --chat-parse-special lets message content write control tokens (trusted clients only).\n"
           "  Endpoints: POST /v1/completions /v1/chat/completions /tokenize /detokenize,\n"
           "             GET /v1/models /health /metrics. See docs/server.md.\n",
           tl_chat_names(), d.host, d.port, d.n_parallel, d.n_queue, d.kv_wait_s, MAX_ALLOW, TL_BODY_SLACK >> 10, TL_CONN_RESERVE, d.header_timeout_s,
           d.body_timeout_s, d.timeout_s);
    printf("%s", tl_cuda_opts_help());
}

/* The API key from --api-key, --api-key-file (surrounding whitespace trimmed) or
 * $TAILOR_API_KEY, in that order; *key stays NULL when none is given. A key that is given
 * but unusable (empty, whitespace only, spaces or control characters inside) stops the
 * server: it must never start open by mistake. Returns 0, or -1 after printing why. */
static int read_api_key(const char *arg, const char *file, char **key) {
    *key = NULL;
    tl_error err = {{0}};
    const char *from = "--api-key";
    if (arg && file) {
        fprintf(stderr, "tailor serve: --api-key and --api-key-file: give one of them\n");
        return -1;
    }
    if (arg) {
        fprintf(stderr, "tailor serve: warning: --api-key shows the key to every user of this machine (ps, "
                        "/proc/PID/cmdline) until it is blanked at start; prefer --api-key-file FILE or "
                        "$TAILOR_API_KEY\n");
        *key = tl_xstrdup(arg);
    } else if (file) {
        size_t n = 0;
        from = "--api-key-file";
        if (!(*key = tl_read_whole(file, &n, &err))) {
            fprintf(stderr, "tailor serve: --api-key-file: %s\n", err.msg);
            return -1;
        }
        size_t a = 0;
        while (n && strchr("\r\n \t", (*key)[n - 1])) (*key)[--n] = 0;
        while (a < n && strchr("\r\n \t", (*key)[a])) a++;
        memmove(*key, *key + a, n - a + 1);
    } else if (getenv("TAILOR_API_KEY")) {
        from = "$TAILOR_API_KEY";
        *key = tl_xstrdup(getenv("TAILOR_API_KEY"));
    }
    if (tl_server_check_api_key(*key, &err)) {
        fprintf(stderr, "tailor serve: %s%s%s: %s\n", from, file ? " " : "", file ? file : "", err.msg);
        free(*key);
        *key = NULL;
        return -1;
    }
    return 0;
}

int tl_cmd_serve(int argc, char **argv) {
    tl_cli_common c;
    tl_cli_common_init(&c);
    tl_server_params sp = tl_server_default_params();
    const char *key_file = NULL;
    char *key_arg = NULL;
    const char *allow_text[MAX_ALLOW];
    int n_allow = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int r = tl_cli_common_arg(&c, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
#define VAL() \
    if (!(v = tl_cli_value(argc, argv, &i))) return 2
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help();
            return 0;
        } else if (!strcmp(a, "--host")) {
            VAL();
            sp.host = v;
        } else if (!strcmp(a, "--port")) {
            VAL();
            if (tl_cli_int(a, v, 0, 65535, &sp.port)) return 2;
        } else if (tl_cli_is(&tl_flag_parallel, a)) {
            VAL();
            if (tl_cli_flag_int(&tl_flag_parallel, a, v, &sp.n_parallel)) return 2;
        } else if (!strcmp(a, "--batch-tokens")) {
            VAL();
            if (tl_cli_int(a, v, 1, 1 << 16, &sp.batch_tokens)) return 2;
        } else if (!strcmp(a, "--kv-allow")) {
            VAL();
            if (n_allow == MAX_ALLOW) {
                fprintf(stderr, "tailor serve: --kv-allow: at most %d policies\n", MAX_ALLOW);
                return 2;
            }
            allow_text[n_allow++] = v;
        } else if (!strcmp(a, "--kv-wait")) {
            VAL();
            if (tl_cli_int(a, v, 0, 86400, &sp.kv_wait_s)) return 2;
        } else if (!strcmp(a, "--queue")) {
            VAL();
            if (tl_cli_int(a, v, 0, 1 << 16, &sp.n_queue)) return 2;
        } else if (!strcmp(a, "--api-key")) {
            VAL();
            key_arg = argv[i]; /* copied and blanked once the flags are read */
        } else if (!strcmp(a, "--api-key-file")) {
            VAL();
            key_file = v;
        } else if (!strcmp(a, "--max-body")) {
            VAL();
            int mb;
            if (tl_cli_int(a, v, 64, INT_MAX, &mb)) return 2;
            sp.max_body = (size_t)mb;
        } else if (!strcmp(a, "--timeout")) {
            VAL();
            if (tl_cli_int(a, v, 1, 86400, &sp.timeout_s)) return 2;
        } else if (!strcmp(a, "--header-timeout")) {
            VAL();
            if (tl_cli_int(a, v, 1, 86400, &sp.header_timeout_s)) return 2;
        } else if (!strcmp(a, "--body-timeout")) {
            VAL();
            if (tl_cli_int(a, v, 1, 86400, &sp.body_timeout_s)) return 2;
        } else if (!strcmp(a, "--max-connections")) {
            VAL();
            if (tl_cli_int(a, v, 1, 1 << 20, &sp.max_connections)) return 2;
        } else if (!strcmp(a, "--max-connections-per-ip")) {
            VAL();
            if (tl_cli_int(a, v, 1, 1 << 20, &sp.max_connections_per_ip)) return 2;
        } else if (!strcmp(a, "--chat-template")) {
            VAL();
            sp.chat_template = v;
        } else if (!strcmp(a, "--chat-parse-special")) {
            sp.chat_parse_special = true;
        } else if (!strcmp(a, "--alias")) {
            VAL();
            sp.model_id = v;
        } else if (!strcmp(a, "--verbose")) {
            sp.verbose = true;
        } else {
            fprintf(stderr, "tailor serve: unknown flag '%s' (see -h)\n", a);
            return 2;
        }
#undef VAL
    }
    if (!c.model) {
        fprintf(stderr, "tailor serve: -m MODEL is required\n");
        return 2;
    }
    if (c.kv_budget && c.device && !strcmp(c.device, "cuda")) { /* (the GPU's slots are sized at start) */
        fprintf(stderr, "tailor serve: --kv-budget: with --device cuda every slot's KV is allocated at start and "
                        "--gpu-mem-budget checks it; --kv-budget is for the CPU's slots\n");
        return 2;
    }
    if (c.prompt || c.file) {
        fprintf(stderr, "tailor serve: -p/-f are not used by serve (prompts come in requests)\n");
        return 2;
    }
    tl_error err = {{0}};
    char *key_buf = NULL;
    int key_rc = read_api_key(key_arg, key_file, &key_buf);
    if (key_arg) memset(key_arg, 'x', strlen(key_arg)); /* so ps shows the key no longer */
    if (key_rc) return 2;
    sp.api_key = key_buf;
    sp.n_ctx = c.n_ctx;
    sp.n_threads = c.n_threads;
    sp.device = c.device;
    sp.gpu_mem_budget = c.gpu_mem_budget;
    sp.cuda = c.cuda;
    sp.chunk = c.chunk;
    sp.sampling = c.sp;
    sp.default_max_tokens = c.n_predict;
    sp.kv_budget = c.kv_budget;
    if (c.prefill >= 0) sp.prefill_q8 = c.prefill; /* default q8 (tl_server_default_params) */

    /* Signals are taken synchronously by this thread (sigwait); every thread started from
     * here on inherits the blocked mask, so none of them is interrupted. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    tl_server *srv = NULL;
    tl_kv_plan plan = {0}, allow[MAX_ALLOW] = {{0}};
    char *kv_text = NULL;
    tl_model *m = tl_model_load(c.model, &err);
    if (!m || tl_kv_plan_parse(&plan, c.kv, c.kv_layer, tl_model_n_layer(m), &err)) goto done;
    sp.kv = &plan;
    for (int k = 0; k < n_allow; k++)
        if (tl_kv_plan_parse(&allow[k], allow_text[k], NULL, tl_model_n_layer(m), &err)) {
            tl_fail_prefix(&err, "--kv-allow '%s'", allow_text[k]);
            goto done;
        }
    sp.kv_allow = allow;
    sp.kv_allow_text = allow_text;
    sp.n_kv_allow = n_allow;
    if (!(srv = tl_server_start(m, c.model, &sp, &err))) goto done;
    tl_session_mem mem;
    int n_ctx;
    const char *chat;
    tl_server_slot_memory(srv, &mem, &n_ctx, &chat);
    kv_text = tl_kv_plan_format(&plan);
    fprintf(stderr,
            "tailor serve: %s: %d slot(s) x %d tokens, KV %s%s, %.2f MiB activations shared by the slots%s, chat template %s%s\n",
            c.model, sp.n_parallel, n_ctx, kv_text, n_allow ? " (requests may ask for others: --kv-allow)" : "",
            mem.activations / 1048576.0,
            c.device && !strcmp(c.device, "cuda") ? " (on the GPU)" : "", chat,
            sp.api_key && *sp.api_key ? ", API key required" : "");
    const tl_server_params *in_use = tl_server_params_in_use(srv);
    fprintf(stderr, "tailor serve: requests of at most %zu bytes; at most %d connections, %d per address\n",
            in_use->max_body, in_use->max_connections, in_use->max_connections_per_ip);
    fprintf(stderr, "tailor serve: listening on http://%s:%d\n", sp.host, tl_server_port(srv));
    fflush(stderr);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "tailor serve: signal %d, shutting down\n", sig);
    rc = 0;
done:
    if (rc) fprintf(stderr, "tailor serve: %s\n", err.msg);
    tl_server_stop(srv);
    tl_kv_plan_free(&plan);
    for (int k = 0; k < n_allow; k++) tl_kv_plan_free(&allow[k]);
    free(kv_text);
    tl_model_free(m);
    free(key_buf);
    return rc;
}
