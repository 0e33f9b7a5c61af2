/* test_backend: the backend tables (src/engine/backend.h) and the CUDA backend's options.
 *  - --device names: the CPU's table for NULL and "cpu", an error naming an unknown device;
 *    "cuda" gives the CUDA table (its ABI and name checked) where the build has it, else says
 *    the build has no CUDA support; a missing library ($TAILOR_CUDA_LIB) is an error naming
 *    the path (in a child process: the library is opened once per process);
 *  - --cuda-opt lists: every option parsed, formatted back to the same list, lists adding up,
 *    and each bad item refused naming itself and what is accepted. */
#include "../testutil.h"
#include "../../src/engine/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void devices(void) {
    tl_error err = {{0}};
    CHECK(tl_backend_find(NULL, &err) == &tl_backend_cpu);
    CHECK(tl_backend_find("cpu", &err) == &tl_backend_cpu);
    CHECK(tl_backend_cpu.abi == TL_BACKEND_ABI && !tl_backend_cpu.gpu && !tl_backend_cpu.batch_new);
    CHECKF(tl_backend_find("tpu", &err) == NULL && strstr(err.msg, "--device 'tpu': unknown device"), "%s", err.msg);
    const tl_backend_ops *be = tl_backend_find("cuda", &err);
    if (be) {
        CHECK(be->abi == TL_BACKEND_ABI && !strcmp(be->name, "cuda") && be->gpu);
        CHECK(be->init && be->free && be->eval && be->reset && be->memory && be->batch_new && be->batch_eval);
    } else {
        CHECKF(strstr(err.msg, "--device cuda: this build of tailor has no CUDA support"), "%s", err.msg);
    }
}

/* A library that is not there: the CLI's message names the path and why (or, in a build
 * without CUDA, says so). */
static void missing_library(void) {
    const char *bin = getenv("TL_BIN");
    if (!bin) {
        tl_test_skip("TL_BIN not set (run through ctest)");
        return;
    }
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "TAILOR_CUDA_LIB=/nonexistent/libtailor-cuda.so %s generate -m %s --device cuda -p hi -n 1 2>&1 | tail -1", bin,
             tl_test_fixture("synth_llama_tied.gguf"));
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL);
    if (!p) return;
    char line[2048] = "";
    if (!fgets(line, sizeof line, p)) line[0] = 0;
    pclose(p);
    CHECKF(strstr(line, "--device cuda: cannot load the CUDA backend /nonexistent/libtailor-cuda.so: ") ||
               strstr(line, "--device cuda: this build of tailor has no CUDA support"),
           "%s", line);
}

static void opts(void) {
    tl_error err = {{0}};
    tl_cuda_opts o = {0};
    char buf[256];
    CHECK(tl_cuda_opts_format(&o, buf, sizeof buf) == 0 && !buf[0]);
    const char *all = "safe,no-decode,no-dec-mma,no-tc,no-fuse,no-pdl,widen,no-batch-attn,prof,verbose,dec-tc=4096,dec-minb=3,gen-cap=8192";
    CHECKF(tl_cuda_opts_parse(&o, all, &err) == 0, "%s", err.msg);
    CHECK(o.safe && o.no_decode && o.no_dec_mma && o.no_tc && o.no_fuse && o.no_pdl && o.widen && o.no_batch_attn && o.prof &&
          o.verbose);
    CHECK(o.dec_tc == 4096 && !o.dec_tc_quant && o.dec_minb == 3 && o.gen_cap == 8192);
    tl_cuda_opts_format(&o, buf, sizeof buf);
    CHECKF(!strcmp(buf, all), "formatted '%s'", buf);
    tl_cuda_opts back = {0};
    CHECK(tl_cuda_opts_parse(&back, buf, &err) == 0 && !memcmp(&back, &o, sizeof o));

    tl_cuda_opts a = {0};
    CHECK(tl_cuda_opts_parse(&a, "widen", &err) == 0 && tl_cuda_opts_parse(&a, "dec-tc=always", &err) == 0);
    CHECK(a.widen && a.dec_tc == 1 && a.dec_tc_quant);
    CHECK(tl_cuda_opts_parse(&a, "dec-tc=never", &err) == 0 && a.dec_tc == -1 && !a.dec_tc_quant);
    CHECK(tl_cuda_opts_parse(&a, NULL, &err) == 0 && tl_cuda_opts_parse(&a, "", &err) == 0 && a.widen);

    const struct {
        const char *list, *needle;
    } bad[] = {
        {"fast", "--cuda-opt 'fast': unknown option (safe, no-decode"}, {"dec-minb=4", "--cuda-opt 'dec-minb=4': 2 or 3"},
        {"dec-tc=soon", "'dec-tc=soon': always, never"},                 {"gen-cap=0", "'gen-cap=0': tokens"},
        {"widen=1", "'widen=1': widen takes no value"},                   {"widen,decode", "'decode': unknown option"},
        {"dec-tc", "'dec-tc': unknown option"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tl_cuda_opts x = {0};
        err.msg[0] = 0;
        CHECKF(tl_cuda_opts_parse(&x, bad[i].list, &err) == -1 && strstr(err.msg, bad[i].needle), "'%s': %s", bad[i].list,
               err.msg);
    }
    CHECK(strstr(tl_cuda_opts_help(), "gen-cap=N") && strstr(tl_cuda_opts_help(), "TL_CUDA_SAFE=1"));
}

int main(void) {
    devices();
    opts();
    missing_library();
    return tl_test_done();
}
