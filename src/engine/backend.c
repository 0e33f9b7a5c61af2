/* backend.c: the device backends' tables (backend.h).
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

#include <string.h>

#ifdef TL_CUDA_LIB
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
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
