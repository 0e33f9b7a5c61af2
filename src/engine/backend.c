/* backend.c: the device backends' tables (backend.h), and the CUDA backend's options
 * (--cuda-opt: tl_cuda_opts_parse).
 *
 * The CUDA backend is a shared object, libtailor-cuda.so, that a build with CUDA puts beside
 * its executables (TL_CUDA_LIB names the file). It is opened the first time something asks for
 * --device cuda (a session, a batch, the GPU's bandwidth), so a process that runs on the CPU
 * maps neither it nor the CUDA runtime and cuBLAS it brings. Where it is looked for:
 * $TAILOR_CUDA_LIB (a path) when set, else the running executable's own folder. The library
 * exports one symbol, tl_cuda_backend(), which returns its table; the table's abi must equal
 * this engine's TL_BACKEND_ABI. Once opened it stays: the model's device weights hold its
 * free function. */
#define _GNU_SOURCE
#include "backend.h"
#include "../base/common.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TL_CUDA_LIB
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <unistd.h>

/* The library's path: $TAILOR_CUDA_LIB, or TL_CUDA_LIB in the executable's folder. */
static int cuda_lib_path(char *path, size_t n, tl_error *err) {
    const char *env = getenv("TAILOR_CUDA_LIB");
    if (env && *env) {
        snprintf(path, n, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return tl_fail(err, "cannot find the CUDA backend %s: /proc/self/exe: %s (set TAILOR_CUDA_LIB to its path)",
                       TL_CUDA_LIB, strerror(errno));
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    snprintf(path, n, "%s/%s", slash ? exe : ".", TL_CUDA_LIB);
    return 0;
}

static const tl_backend_ops *cuda_open(tl_error *err) {
    char path[PATH_MAX + 64];
    if (cuda_lib_path(path, sizeof path, err)) return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        tl_fail(err, "cannot load the CUDA backend %s: %s (it is built beside the tailor binary; TAILOR_CUDA_LIB names "
                     "another path)", path, dlerror());
        return NULL;
    }
    const tl_backend_ops *(*get)(void);
    *(void **)&get = dlsym(h, "tl_cuda_backend");
    const tl_backend_ops *be = get ? get() : NULL;
    if (!be) {
        tl_fail(err, "%s is not a tailor CUDA backend: no tl_cuda_backend table", path);
    } else if (be->abi != TL_BACKEND_ABI) {
        tl_fail(err, "%s speaks backend ABI %d, this tailor speaks %d: build the two together", path, be->abi,
                TL_BACKEND_ABI);
        be = NULL;
    }
    if (!be) dlclose(h);
    return be;
}

/* Opened once per process; a failure is remembered with its message. */
static pthread_mutex_t cuda_mu = PTHREAD_MUTEX_INITIALIZER;
static bool cuda_tried;
static const tl_backend_ops *cuda_be;
static tl_error cuda_err;

static const tl_backend_ops *cuda_backend(tl_error *err) {
    pthread_mutex_lock(&cuda_mu);
    if (!cuda_tried) {
        cuda_tried = true;
        cuda_be = cuda_open(&cuda_err);
    }
    const tl_backend_ops *be = cuda_be;
    pthread_mutex_unlock(&cuda_mu);
    if (!be) tl_fail(err, "%s", cuda_err.msg);
    return be;
}
#endif

/* ---- --cuda-opt ---- */

/* The options that are switches, by name. */
static const struct {
    const char *name;
    size_t off;
} cuda_switches[] = {
    {"safe", offsetof(tl_cuda_opts, safe)},       {"no-decode", offsetof(tl_cuda_opts, no_decode)},
    {"no-dec-mma", offsetof(tl_cuda_opts, no_dec_mma)}, {"no-tc", offsetof(tl_cuda_opts, no_tc)},
    {"no-fuse", offsetof(tl_cuda_opts, no_fuse)}, {"no-pdl", offsetof(tl_cuda_opts, no_pdl)},
    {"widen", offsetof(tl_cuda_opts, widen)},     {"no-batch-attn", offsetof(tl_cuda_opts, no_batch_attn)},
    {"prof", offsetof(tl_cuda_opts, prof)},       {"verbose", offsetof(tl_cuda_opts, verbose)},
};
#define CUDA_OPTS_LIST                                                                                          \
    "safe, no-decode, no-dec-mma, dec-tc=N|always|never, dec-minb=2|3, no-tc, no-fuse, no-pdl, widen, "       \
    "gen-cap=N, no-batch-attn, prof, verbose"

/* v as an integer in [lo, hi]: 0, else -1. */
static int opt_int(const char *v, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    const long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return -1;
    *out = (int)x;
    return 0;
}

static int cuda_opt_one(tl_cuda_opts *o, char *item, tl_error *err) {
    char *eq = strchr(item, '=');
    const char *v = eq ? eq + 1 : NULL;
    if (eq) *eq = 0;
    for (size_t i = 0; i < sizeof cuda_switches / sizeof *cuda_switches; i++)
        if (!strcmp(item, cuda_switches[i].name)) {
            if (v) return tl_fail(err, "--cuda-opt '%s=%s': %s takes no value", item, v, item);
            *(bool *)((char *)o + cuda_switches[i].off) = true;
            return 0;
        }
    if (!strcmp(item, "dec-tc") && v) {
        o->dec_tc_quant = !strcmp(v, "always");
        if (!strcmp(v, "always")) o->dec_tc = 1;
        else if (!strcmp(v, "never")) o->dec_tc = -1;
        else if (opt_int(v, 1, 1 << 30, &o->dec_tc))
            return tl_fail(err, "--cuda-opt 'dec-tc=%s': always, never, or the history length (keys) to start at", v);
        return 0;
    }
    if (!strcmp(item, "dec-minb") && v) {
        if (strcmp(v, "2") && strcmp(v, "3")) return tl_fail(err, "--cuda-opt 'dec-minb=%s': 2 or 3", v);
        o->dec_minb = v[0] - '0';
        return 0;
    }
    if (!strcmp(item, "gen-cap") && v) {
        if (opt_int(v, 1, 1 << 24, &o->gen_cap))
            return tl_fail(err, "--cuda-opt 'gen-cap=%s': tokens, 1 to %d", v, 1 << 24);
        return 0;
    }
    return tl_fail(err, "--cuda-opt '%s%s%s': unknown option (" CUDA_OPTS_LIST ")", item, v ? "=" : "", v ? v : "");
}

int tl_cuda_opts_parse(tl_cuda_opts *o, const char *list, tl_error *err) {
    if (!list || !*list) return 0;
    char *copy = tl_xstrdup(list), *save = NULL;
    int rc = 0;
    for (char *item = strtok_r(copy, ",", &save); item && !rc; item = strtok_r(NULL, ",", &save))
        rc = cuda_opt_one(o, item, err);
    free(copy);
    return rc;
}

int tl_cuda_opts_format(const tl_cuda_opts *o, char *buf, size_t n) {
    tl_strbuf b = {0};
    for (size_t i = 0; i < sizeof cuda_switches / sizeof *cuda_switches; i++)
        if (*(const bool *)((const char *)o + cuda_switches[i].off))
            tl_strbuf_printf(&b, "%s%s", b.n ? "," : "", cuda_switches[i].name);
    if (o->dec_tc_quant) tl_strbuf_printf(&b, "%sdec-tc=always", b.n ? "," : "");
    else if (o->dec_tc < 0) tl_strbuf_printf(&b, "%sdec-tc=never", b.n ? "," : "");
    else if (o->dec_tc > 0) tl_strbuf_printf(&b, "%sdec-tc=%d", b.n ? "," : "", o->dec_tc);
    if (o->dec_minb) tl_strbuf_printf(&b, "%sdec-minb=%d", b.n ? "," : "", o->dec_minb);
    if (o->gen_cap) tl_strbuf_printf(&b, "%sgen-cap=%d", b.n ? "," : "", o->gen_cap);
    const int len = snprintf(buf, n, "%s", b.n ? b.p : "");
    free(b.p);
    return len;
}

const char *tl_cuda_opts_help(void) {
    return "  --cuda-opt LIST: the CUDA backend's options, comma-separated (repeatable; none by default):\n"
           "    safe            the reference path, for debugging: every attention in the general kernel with\n"
           "                    plain loops, the GLU unfused, no PDL (also TL_CUDA_SAFE=1 in the environment)\n"
           "    no-decode       one-token steps in the general attention kernel (default: decode.cu, decode_mma.cu)\n"
           "    no-dec-mma      per-token KV codes decode on decode.cu's CUDA cores (default: decode_mma.cu's\n"
           "                    tensor cores)\n"
           "    dec-tc=N        f16 decode attention on tensor cores from N keys of history on (default 65536);\n"
           "                    dec-tc=always: from the first, per-token codes too; dec-tc=never: decode.cu only\n"
           "    dec-minb=2|3    decode.cu's head_dim-128 kernels at 2 or 3 blocks per SM (default: 3 for\n"
           "                    per-channel keys, else 2)\n"
           "    no-tc           prefill chunks in the general attention kernel (default: prefill_tc.cu's tensor cores)\n"
           "    no-fuse         the decode GLU activation and the quantization of a norm's output as their own\n"
           "                    kernels (default: fused into gate/up, and into the rmsnorm)\n"
           "    no-pdl          kernels launched without programmatic dependent launch (default: with, sm_90)\n"
           "    widen           GGUF block-format weights widened to f16 at upload (default: kept as in the file)\n"
           "    gen-cap=N       generated tokens a TailorKV sparse layer holds on the GPU (default 4096)\n"
           "    no-batch-attn   a batched step (tailor serve) attends and appends each sequence's one-token row\n"
           "                    with launches of its own (default: one launch per layer for up to 12 sequences)\n"
           "    prof            GPU time per part of the one-token steps, on stderr at the end (default off)\n"
           "    verbose         the weights' upload (GiB, seconds) on stderr (default off)\n";
}

/* ---- the device backends ---- */

const tl_backend_ops *tl_backend_load(const char *device, tl_error *err) {
    if (strcmp(device, "cuda")) {
        tl_fail(err, "no backend named '%s' (cuda)", device);
        return NULL;
    }
#ifdef TL_CUDA_LIB
    return cuda_backend(err);
#else
    tl_fail(err, "this build of tailor has no CUDA support (configure with -DTL_CUDA=ON where nvcc is installed)");
    return NULL;
#endif
}
