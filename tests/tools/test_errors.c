/* Bad input at the model and CLI level: each case is an error that names the problem and
 * the place, a non-zero exit, and no crash. (GGUF container damage — truncation, magic,
 * absurd counts, offsets — is covered by test_gguf.c; this file builds structurally valid
 * GGUFs whose *model* content is wrong, from a real model's tensors.) */
#include "../testutil.h"
#include "../../src/model/gguf.h"
#include "../../src/engine/session.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef enum {
    MUT_NONE,
    MUT_ARCH,
    MUT_DROP_KEY,
    MUT_SHAPE,
    MUT_DROP_TENSOR,
    MUT_HEADS,
    MUT_EPS_NAN,    /* float hyper-parameters that load and run, and give NaN logits */
    MUT_EPS_NEG,
    MUT_ROPE_ZERO,
    MUT_ROPE_INF,
    MUT_SCALE_NAN,
} mutation;

/* Copy stories260K.gguf to `out`, applying one mutation. */
static int write_mutant(const char *out, mutation mut) {
    tl_error err;
    tl_gguf *g = tl_gguf_open(tl_test_shared("models/stories260K.gguf"), &err);
    if (!g) return -1;
    tl_gguf_writer *w = tl_gguf_writer_new();
    for (int64_t i = 0; i < tl_gguf_n_kv(g); i++) {
        size_t len;
        const char *k = tl_gguf_key_name(g, i, &len);
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)len, k);
        if (mut == MUT_ARCH && !strcmp(key, "general.architecture")) {
            tl_gguf_w_str(w, key, "mamba");
            continue;
        }
        if (mut == MUT_DROP_KEY && !strcmp(key, "llama.embedding_length")) continue;
        if (mut == MUT_HEADS && !strcmp(key, "llama.attention.head_count_kv")) {
            tl_gguf_w_u32(w, key, 3); /* 8 query heads are not a multiple of 3 */
            continue;
        }
        if ((mut == MUT_EPS_NAN || mut == MUT_EPS_NEG) && !strcmp(key, "llama.attention.layer_norm_rms_epsilon")) {
            tl_gguf_w_f32(w, key, mut == MUT_EPS_NAN ? NAN : -1e-5f);
            continue;
        }
        if ((mut == MUT_ROPE_ZERO || mut == MUT_ROPE_INF) && !strcmp(key, "llama.rope.freq_base")) {
            tl_gguf_w_f32(w, key, mut == MUT_ROPE_ZERO ? 0.0f : INFINITY);
            continue;
        }
        tl_gguf_w_copy_kv(w, g, i);
    }
    if (mut == MUT_SCALE_NAN) {
        tl_gguf_w_str(w, "llama.rope.scaling.type", "linear");
        tl_gguf_w_f32(w, "llama.rope.scaling.factor", NAN);
    }
    for (int64_t i = 0; i < tl_gguf_n_tensors(g); i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
        if (mut == MUT_DROP_TENSOR && !strcmp(t->name, "blk.2.ffn_up.weight")) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        if (mut == MUT_SHAPE && !strcmp(t->name, "blk.3.attn_k.weight")) {
            /* same bytes, other shape: 64x32 -> 32x64 */
            ne[0] = t->ne[1];
            ne[1] = t->ne[0];
        }
        tl_gguf_w_tensor(w, t->name, t->type, t->n_dims, ne, t->data);
    }
    int rc = tl_gguf_write(w, out, &err);
    if (rc) fprintf(stderr, "write_mutant: %s\n", err.msg);
    tl_gguf_writer_free(w);
    tl_gguf_close(g);
    return rc;
}

static void expect_load_error(mutation mut, const char *needle1, const char *needle2) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/tl_test_errors_%d_%d.gguf", (int)getpid(), (int)mut);
    CHECK(write_mutant(path, mut) == 0);
    tl_error err = {{0}};
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m == NULL, "mutation %d loaded", (int)mut);
    CHECKF(strstr(err.msg, needle1) != NULL, "mutation %d: message '%s' lacks '%s'", (int)mut, err.msg, needle1);
    if (needle2) CHECKF(strstr(err.msg, needle2) != NULL, "mutation %d: message '%s' lacks '%s'", (int)mut, err.msg, needle2);
    tl_model_free(m);
    unlink(path);
}

/* A copy of a tests/fixtures model without tensor `drop` (and with string key `key` set to, or
 * added as, `value` when given) fails to load with a message containing both needles. */
static void expect_fixture_error(const char *fixture, const char *drop, const char *key, const char *value,
                                 const char *needle1, const char *needle2) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/tl_test_errors_%d_fx.gguf", (int)getpid());
    tl_error err = {{0}};
    tl_gguf *g = tl_gguf_open(tl_test_fixture(fixture), &err);
    CHECKF(g != NULL, "%s", err.msg);
    if (!g) return;
    tl_gguf_writer *w = tl_gguf_writer_new();
    bool set = false;
    for (int64_t i = 0; i < tl_gguf_n_kv(g); i++) {
        size_t len;
        const char *k = tl_gguf_key_name(g, i, &len);
        if (key && len == strlen(key) && !memcmp(k, key, len)) tl_gguf_w_str(w, key, value), set = true;
        else tl_gguf_w_copy_kv(w, g, i);
    }
    if (key && !set) tl_gguf_w_str(w, key, value);
    for (int64_t i = 0; i < tl_gguf_n_tensors(g); i++) {
        const tl_gguf_tensor *t = tl_gguf_tensor_at(g, i);
        if (drop && !strcmp(t->name, drop)) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        tl_gguf_w_tensor(w, t->name, t->type, t->n_dims, ne, t->data);
    }
    CHECK(tl_gguf_write(w, path, &err) == 0);
    tl_gguf_writer_free(w);
    tl_gguf_close(g);
    tl_model *m = tl_model_load(path, &err);
    CHECKF(m == NULL, "%s without %s loaded", fixture, drop ? drop : key);
    CHECKF(strstr(err.msg, needle1) && (!needle2 || strstr(err.msg, needle2)), "%s: message '%s' lacks '%s' / '%s'", fixture,
           err.msg, needle1, needle2 ? needle2 : "");
    tl_model_free(m);
    unlink(path);
}

/* What the CUDA backend does not compute (gemma2's soft-capping) is refused by name before any
 * device is touched, in every build that has the backend (its table says what it computes; a
 * build without it says that instead). */
static void expect_cuda_refusal(const char *fixture, const char *needle) {
    tl_error err = {{0}};
    tl_model *m = tl_model_load(tl_test_fixture(fixture), &err);
    CHECKF(m != NULL, "%s: %s", fixture, err.msg);
    if (!m) return;
    tl_session *s = tl_session_new_on(m, 64, 1, 0, NULL, "cuda", &err);
    const bool no_backend = s == NULL && strstr(err.msg, "--device cuda: this build of tailor has no CUDA support");
    CHECKF(no_backend || (s == NULL && strstr(err.msg, needle) && strstr(err.msg, "--device cpu")),
           "%s on cuda: '%s' lacks '%s'", fixture, s ? "(made a session)" : err.msg, needle);
    tl_session_free(s);
    tl_model_free(m);
}

/* Run the CLI; return its exit status and captured stderr (malloc'd). */
static int run_cli(const char *args, char **err_out) {
    const char *bin = getenv("TL_BIN");
    char cmd[2048], errf[128];
    snprintf(errf, sizeof errf, "/tmp/tl_test_errors_%d.err", (int)getpid());
    snprintf(cmd, sizeof cmd, "%s %s >/dev/null 2>%s", bin, args, errf);
    int st = system(cmd);
    *err_out = tl_test_read_file(errf, NULL);
    unlink(errf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* ... and stderr lacks `absent` (e.g. the progress of work that should not have started). */
static void expect_cli_not(const char *args, int want_rc, const char *needle, const char *absent) {
    char *e = NULL;
    int rc = run_cli(args, &e);
    CHECKF(rc == want_rc, "'tailor %s' exited %d, want %d (stderr: %.400s)", args, rc, want_rc, e ? e : "");
    CHECKF(e && strstr(e, needle), "'tailor %s': stderr '%.400s' lacks '%s'", args, e ? e : "", needle);
    if (absent) CHECKF(e && !strstr(e, absent), "'tailor %s': stderr '%.400s' has '%s'", args, e ? e : "", absent);
    free(e);
}

static void expect_cli(const char *args, int want_rc, const char *needle) { expect_cli_not(args, want_rc, needle, NULL); }

/* Outputs are checked before the work: a folder or a missing directory given as an output file,
 * a regular file as pareto's output folder. */
static void test_outputs_first(void) {
    char dir[] = "/tmp/tl_test_errors_o_XXXXXX", file[600], args[2048];
    if (!mkdtemp(dir)) return;
    snprintf(file, sizeof file, "%s/file", dir);
    FILE *f = fopen(file, "w");
    fclose(f);
    const char *stories = tl_test_shared("models/stories260K.gguf"), *text = tl_test_shared("data/pg_essays/apple.txt");
    snprintf(args, sizeof args,
             "pareto -m %s -f %s --kv-axis f16,k8v8 --chunks 64 -c 128 --tasks ppl --decode 2 -t 1 -o %s", stories,
             text, file);
    expect_cli_not(args, 1, "/file: not a directory", "pareto: start");
    snprintf(args, sizeof args, "perplexity -m %s -f %s -c 128 --kl-base-write %s", stories, text, dir);
    expect_cli_not(args, 1, ": is a directory", "perplexity [");
    snprintf(args, sizeof args, "calibrate -m %s -f %s -c 128 -o %s/no/such/plan.json", stories, text, dir);
    expect_cli(args, 1, "tailor: -o: /tmp");
    snprintf(args, sizeof args, "calibrate -m %s -f %s -c 128 -o %s/plan.json --svg %s", stories, text, dir, dir);
    expect_cli(args, 1, "tailor: --svg: /tmp");
    snprintf(args, sizeof args, "niah -m %s --lengths 256 --depths 50 -t 1 --svg %s", stories, dir);
    expect_cli(args, 1, "tailor: --svg: /tmp");
    snprintf(args, sizeof args, "synth --shape smollm2-135m --layers 1 -o %s", dir);
    expect_cli(args, 1, "tailor: -o: /tmp");
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", dir);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The name of a leftover temp output ("*.tmp.*") in dir, or NULL (static buffer). */
static const char *temp_in(const char *dir) {
    static char name[512];
    DIR *d = opendir(dir);
    const char *found = NULL;
    for (struct dirent *e; d && (e = readdir(d));)
        if (strstr(e->d_name, ".tmp.")) {
            snprintf(name, sizeof name, "%s", e->d_name);
            found = name;
        }
    if (d) closedir(d);
    return found;
}

static bool same_content(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *x = tl_test_read_file(a, &la), *y = tl_test_read_file(b, &lb);
    const bool same = x && y && la == lb && !memcmp(x, y, la);
    free(x);
    free(y);
    return same;
}

/* tailor quantize IN OUT never replaces IN: OUT the same path, another spelling of it, a hard or
 * symbolic link to it, IN read-only; OUT takes IN's permission bits; a signal that ends it leaves
 * no OUT.tmp.PID. */
static void test_quantize_output(const char *bin) {
    char dir[] = "/tmp/tl_test_errors_q_XXXXXX";
    if (!mkdtemp(dir)) return;
    const char *stories = tl_test_shared("models/stories260K.gguf");
    char in[600], args[2048], p[700];
    snprintf(in, sizeof in, "%s/in.gguf", dir);
    size_t len = 0;
    char *data = tl_test_read_file(stories, &len);
    FILE *f = fopen(in, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
    free(data);
    chmod(in, 0640);
    snprintf(p, sizeof p, "%s/hard.gguf", dir);
    CHECK(link(in, p) == 0);
    snprintf(p, sizeof p, "%s/sym.gguf", dir);
    CHECK(symlink("in.gguf", p) == 0);
    const char *outs[] = {"%s/in.gguf", "%s/./in.gguf", "%s/../%s/in.gguf", "%s/hard.gguf", "%s/sym.gguf"};
    for (int ro = 0; ro < 2; ro++) {
        chmod(in, ro ? 0444 : 0640);
        for (size_t i = 0; i < sizeof outs / sizeof *outs; i++) {
            char out[700];
            snprintf(out, sizeof out, outs[i], dir, strrchr(dir, '/') + 1);
            snprintf(args, sizeof args, "quantize %s %s --type q8_0 -q", in, out);
            expect_cli(args, 1, "is the same file as the input");
            CHECKF(same_content(in, stories), "'tailor %s' changed the input", args);
            CHECKF(!temp_in(dir), "'tailor %s' left %s", args, temp_in(dir));
        }
    }
    /* the output takes the input's permission bits (0444 here, then 0640) */
    for (int ro = 1; ro >= 0; ro--) {
        chmod(in, ro ? 0444 : 0640);
        snprintf(p, sizeof p, "%s/out%d.gguf", dir, ro);
        snprintf(args, sizeof args, "quantize %s %s --type q8_0 -q", in, p);
        char *e = NULL;
        CHECKF(run_cli(args, &e) == 0, "'tailor %s': %s", args, e ? e : "");
        free(e);
        struct stat st;
        CHECKF(stat(p, &st) == 0 && (st.st_mode & 0777) == (ro ? 0444u : 0640u), "%s: mode %o", p,
               (unsigned)(st.st_mode & 0777));
    }
    /* a signal while the output is being made: the process dies of it and removes its temp file */
    const char *model = tl_test_shared("models/tailor-test-31m.gguf"), *essay = tl_test_shared("data/pg_essays/apple.txt");
    const int sigs[5] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGXFSZ};
    for (int k = 0; k < 5 && tl_test_have(model); k++) {
        char out[700];
        snprintf(out, sizeof out, "%s/sig.gguf", dir);
        pid_t pid = fork();
        if (pid == 0) {
            execl(bin, bin, "quantize", model, out, "--type", "awq", "-f", essay, "-q", (char *)NULL);
            _exit(127);
        }
        bool seen = false;
        for (int t = 0; t < 30000 && !seen; t += 2) { /* the temp file appears before the work starts */
            seen = temp_in(dir) != NULL;
            if (!seen) sleep_ms(2);
        }
        CHECKF(seen, "signal %d: no temp output appeared", sigs[k]);
        kill(pid, sigs[k]);
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        CHECKF(WIFSIGNALED(st) && WTERMSIG(st) == sigs[k], "signal %d: quantize ended with status %#x", sigs[k], st);
        CHECKF(!temp_in(dir), "signal %d left %s", sigs[k], temp_in(dir));
        CHECK(access(out, F_OK) != 0);
    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", dir);
}

/* Text files are read only as far as they can be used (or up to the general cap), and a cut is
 * said: -f /dev/zero gives an error or a result, never memory exhaustion. The release binary runs
 * under a 4 GiB address-space limit (an ASan build reserves far more address space than that). */
static void test_text_cap(const char *bin) {
    const char *stories = tl_test_shared("models/stories260K.gguf");
#if defined(__SANITIZE_ADDRESS__)
    const char *limit = "";
#else
    const char *limit = "ulimit -v 4194304; ";
#endif
    char cmd[2048], errf[128];
    snprintf(errf, sizeof errf, "/tmp/tl_test_errors_%d.cap", (int)getpid());
    struct {
        const char *args;
        int rc;
        const char *needle1, *needle2;
    } cases[] = {
        {"generate -m %s -f /dev/zero -c 512 -n 4", 1, "/dev/zero: only its first 3696 bytes are read",
         "does not fit the context of 512"},
        {"calibrate -m %s -f /dev/zero -c 256 -o /tmp/tl_test_errors_cap.json", 0, "/dev/zero: only its first", NULL},
        {"quantize %s /tmp/tl_test_errors_cap.gguf --type awq -f /dev/zero --calib-tokens 64 -q", 0,
         "/dev/zero: only its first", NULL},
        {"perplexity -m %s -f /dev/zero -c 128 --chunks 1", 0, "/dev/zero: only its first 67108864 bytes",
         "the limit for text files"},
        {"eval -m %s --tasks /dev/zero", 1, "/dev/zero: larger than the limit for text files", NULL},
        {"generate -m %s -p hi -n 1 --kv tailor:plan=/dev/zero", 1, "plan /dev/zero: larger than the limit", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[1024];
        snprintf(args, sizeof args, cases[i].args, stories);
        snprintf(cmd, sizeof cmd, "%stimeout 300 %s %s >/dev/null 2>%s", limit, bin, args, errf);
        int st = system(cmd);
        char *e = tl_test_read_file(errf, NULL);
        const int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        CHECKF(rc == cases[i].rc, "'tailor %s' exited %d, want %d (stderr: %.300s)", args, rc, cases[i].rc, e ? e : "");
        CHECKF(e && strstr(e, cases[i].needle1), "'tailor %s': stderr '%.300s' lacks '%s'", args, e ? e : "",
               cases[i].needle1);
        if (cases[i].needle2)
            CHECKF(e && strstr(e, cases[i].needle2), "'tailor %s': stderr '%.300s' lacks '%s'", args, e ? e : "",
                   cases[i].needle2);
        free(e);
    }
    unlink(errf);
    unlink("/tmp/tl_test_errors_cap.json");
    unlink("/tmp/tl_test_errors_cap.svg");
    unlink("/tmp/tl_test_errors_cap.gguf");
}

/* tailor tokenize needs only the tokenizer: a vocabulary-only file of an architecture the model
 * loader refuses, and a model whose architecture is unknown, tokenize; running them is refused
 * with the reason. */
static void test_tokenize_only(const char *bin) {
    const char *vocab = tl_test_shared("data/tokenizer/ggml-vocab-gpt-2.gguf");
    char cmd[2048], *out = NULL;
    if (tl_test_have(vocab)) {
        snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' -p 'Hello world' --ids", bin, vocab);
        int rc = tl_test_capture(cmd, false, &out);
        CHECKF(rc == 0 && !strcmp(out, "15496 995\n"), "rc %d, '%s'", rc, out); /* llama.cpp's ids, no BOS for gpt-2 */
        free(out);
        snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' -p \"it's\" --pieces", bin, vocab);
        rc = tl_test_capture(cmd, false, &out);
        CHECKF(rc == 0 && !strcmp(out, "270:'it' 338:'\\'s'\n"), "rc %d, '%s'", rc, out);
        free(out);
        char args[1024];
        snprintf(args, sizeof args, "generate -m %s -p hi -n 1", vocab);
        expect_cli(args, 1, "architecture 'gpt2' is not supported");
    }
    char path[256];
    snprintf(path, sizeof path, "/tmp/tl_test_errors_%d_tok.gguf", (int)getpid());
    CHECK(write_mutant(path, MUT_ARCH) == 0);
    char *want = NULL;
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' -p 'Once upon a time'", bin, tl_test_shared("models/stories260K.gguf"));
    CHECK(tl_test_capture(cmd, false, &want) == 0);
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' -p 'Once upon a time'", bin, path);
    int rc = tl_test_capture(cmd, false, &out);
    CHECKF(rc == 0 && strlen(want) > 4 && !strcmp(out, want), "rc %d, '%s' vs '%s'", rc, out, want);
    free(out);
    free(want);
    char args[1024];
    snprintf(args, sizeof args, "generate -m %s -p hi -n 1", path);
    expect_cli(args, 1, "architecture 'mamba' is not supported");
    unlink(path);
}

int main(void) {
    /* the newer architectures: a missing tensor is named with the architecture that needs it */
    expect_fixture_error("synth_qwen3.gguf", "blk.1.attn_k_norm.weight", NULL, NULL,
                         "tensor 'blk.1.attn_k_norm.weight' is missing", "a qwen3 model needs it");
    expect_fixture_error("synth_phi3.gguf", "blk.0.attn_qkv.weight", NULL, NULL, "tensor 'blk.0.attn_qkv.weight' is missing",
                         "a phi3 model needs it");
    expect_fixture_error("synth_gemma2.gguf", "blk.2.post_ffw_norm.weight", NULL, NULL,
                         "tensor 'blk.2.post_ffw_norm.weight' is missing", "a gemma2 model needs it");
    expect_fixture_error("synth_gemma2.gguf", NULL, "general.architecture", "gemma4",
                         "architecture 'gemma4' is not supported", "qwen3, phi3, gemma2, gemma3");
    expect_fixture_error("synth_qwen3.gguf", NULL, "qwen3.rope.scaling.type", "yarn", "rope scaling type 'yarn'", NULL);
    expect_cuda_refusal("synth_gemma2.gguf", "soft-caps");
    if (!tl_test_have(tl_test_shared("models/stories260K.gguf"))) return tl_test_done();
    expect_load_error(MUT_ARCH, "architecture 'mamba' is not supported", "supported: llama, mistral, qwen2, qwen3");
    expect_load_error(MUT_DROP_KEY, "llama.embedding_length", NULL);
    expect_load_error(MUT_SHAPE, "blk.3.attn_k.weight", "expected");
    expect_load_error(MUT_DROP_TENSOR, "blk.2.ffn_up.weight", "missing");
    expect_load_error(MUT_HEADS, "heads 8/3", NULL);
    expect_load_error(MUT_EPS_NAN, "key 'llama.attention.layer_norm_rms_epsilon' = nan is not a positive number", NULL);
    expect_load_error(MUT_EPS_NEG, "key 'llama.attention.layer_norm_rms_epsilon' = -1e-05", NULL);
    expect_load_error(MUT_ROPE_ZERO, "key 'llama.rope.freq_base' = 0 is not a positive number", NULL);
    expect_load_error(MUT_ROPE_INF, "key 'llama.rope.freq_base' = inf", NULL);
    expect_load_error(MUT_SCALE_NAN, "key 'llama.rope.scaling.factor' = nan", NULL);

    const char *bin = getenv("TL_BIN");
    if (!bin || !tl_test_have(bin)) return tl_test_done();
    char args[1024];
    const char *stories = tl_test_shared("models/stories260K.gguf");
    /* invalid UTF-8 prompt */
    snprintf(args, sizeof args, "generate -m %s -p $'abc\\xff\\xfe' -n 4", stories);
    {
        /* system() runs sh, which lacks $'..': write the bytes to a file and use -f */
        const char *pf = "/tmp/tl_test_errors_badutf8.txt";
        FILE *f = fopen(pf, "wb");
        fwrite("abc\xff\xfe", 1, 5, f);
        fclose(f);
        snprintf(args, sizeof args, "generate -m %s -f %s -n 4", stories, pf);
        expect_cli(args, 1, "invalid UTF-8 at byte 3");
        unlink(pf);
    }
    /* context overflow: a 600-token prompt into a 512 context */
    {
        const char *pf = "/tmp/tl_test_errors_long.txt";
        FILE *f = fopen(pf, "wb");
        for (int i = 0; i < 400; i++) fputs("the cat sat. ", f);
        fclose(f);
        snprintf(args, sizeof args, "generate -m %s -f %s -c 512 -n 4", stories, pf);
        expect_cli(args, 1, "does not fit the context");
        snprintf(args, sizeof args, "perplexity -m %s -f %s -c 4096", stories, pf);
        expect_cli(args, 1, "fewer than one window of 4096");
        unlink(pf);
    }
    /* flags */
    snprintf(args, sizeof args, "generate -m %s -n abc", stories);
    expect_cli(args, 2, "-n: 'abc' is not an integer");
    snprintf(args, sizeof args, "generate -m %s --kv k4v3", stories);
    expect_cli(args, 1, "bits 3");
    snprintf(args, sizeof args, "generate -m %s --bogus", stories);
    expect_cli(args, 2, "unknown flag '--bogus'");
    /* sampling flags: the sampler's rule (tl_sampler_check, the server's too), named by flag */
    {
        const char *bad[][2] = {{"--repeat-penalty 0", "'repeat_penalty' is 0, outside [1e-06, 10000]"},
                                {"--temp -1", "'temperature' is -1"},
                                {"--temp inf", "'temperature' is inf"},
                                {"--top-p 1.5", "'top_p' is 1.5"},
                                {"--min-p -0.1", "'min_p' is -0.1"},
                                {"--top-k -3", "'top_k' is -3"},
                                {"--repeat-last-n -1", "'repeat_last_n' is -1"}};
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            snprintf(args, sizeof args, "generate -m %s -p hi -n 2 %s", stories, bad[i][0]);
            expect_cli(args, 2, bad[i][1]);
            /* refused while parsing, before the (missing) model is opened */
            snprintf(args, sizeof args, "serve -m /nonexistent/model.gguf %s", bad[i][0]);
            expect_cli(args, 2, bad[i][1]);
        }
    }
    /* a NaN epsilon or a zero RoPE base: refused at load, not a perplexity of nan */
    for (mutation mut = MUT_EPS_NAN; mut <= MUT_ROPE_ZERO; mut += MUT_ROPE_ZERO - MUT_EPS_NAN) {
        char path[256];
        snprintf(path, sizeof path, "/tmp/tl_test_errors_%d_cli%d.gguf", (int)getpid(), (int)mut);
        CHECK(write_mutant(path, mut) == 0);
        snprintf(args, sizeof args, "perplexity -m %s -f %s -c 128 --chunks 1", path,
                 tl_test_shared("data/pg_essays/apple.txt"));
        expect_cli(args, 1, mut == MUT_EPS_NAN ? "layer_norm_rms_epsilon' = nan" : "rope.freq_base' = 0");
        unlink(path);
    }
    expect_cli("generate -m /nonexistent/model.gguf", 1, "/nonexistent/model.gguf");
    expect_cli("frobnicate", 2, "unknown command 'frobnicate'");
    expect_cli("generate -m /nonexistent/model.gguf --prefill q4", 2, "--prefill: 'q4' is not q8 or f32");
    expect_cli("serve -m /nonexistent/model.gguf --prefill", 2, "--prefill needs a value");
    snprintf(args, sizeof args, "perplexity -m %s -f /nonexistent.txt", stories);
    expect_cli(args, 1, "/nonexistent.txt");
    /* a truncated model file through the CLI */
    {
        const char *pf = "/tmp/tl_test_errors_trunc.gguf";
        size_t len;
        char *data = tl_test_read_file(stories, &len);
        FILE *f = fopen(pf, "wb");
        fwrite(data, 1, len / 2, f);
        fclose(f);
        free(data);
        snprintf(args, sizeof args, "generate -m %s -n 4", pf);
        expect_cli(args, 1, pf);
        unlink(pf);
    }
    test_quantize_output(bin);
    test_text_cap(bin);
    test_tokenize_only(bin);
    test_outputs_first();
    return tl_test_done();
}
