/* backend.cuh: host-side declarations shared by forward.cu and attn.cu. */
#ifndef TL_CUDA_BACKEND_CUH
#define TL_CUDA_BACKEND_CUH

#include <cuda_runtime.h>

extern "C" {
#include "../common.h"
#include "cuda.h"
}
#include "kernels.cuh"

#define TLC_QMAX 64 /* queries (rows x GQA group) per attention block */

/* Per-session device context. */
struct tlc_ctx {
    cudaStream_t stream;
    int n_sm;
    size_t smem_optin;    /* largest dynamic shared memory a block may ask for */
    bool safe;            /* TL_CUDA_SAFE=1: plain attention loops (no register prefetch, no blocking) */
    bool old_decode;      /* TL_CUDA_DECODE=0: decode uses the general attention kernel (decode.cu off) */
    int dec_minb;         /* TL_CUDA_DEC_MINB=3: head_dim-128 decode kernels built for 3 blocks/SM (default 2) */
    void *scratch;        /* attention partials, grown on demand */
    size_t scratch_bytes;
};

struct tlc_layer_kv {
    kv_side k, v;
    int n_head, n_head_kv, window;
    float scale;
};

#define TLC_LAUNCH_CHECK(what)                                                                            \
    do {                                                                                                  \
        cudaError_t e_ = cudaGetLastError();                                                              \
        if (e_ != cudaSuccess) return tl_fail(err, "CUDA kernel %s: %s", what, cudaGetErrorString(e_)); \
    } while (0)

int tlc_scratch(tlc_ctx *cx, size_t bytes, tl_error *err);
size_t tlc_attn_smem(int nqmax, int dk, int dv);
int tlc_attention(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, int m, const float *q, const float *knew,
                  const float *vnew, float *out, tl_error *err);
/* Decode (one new token) attention, decode.cu: 0 done, -1 error, 1 not handled (format or
 * head size without a decode kernel: use tlc_attention's general kernel). */
int tlc_attn_decode(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, const float *q, const float *knew, const float *vnew,
                    float *out, tl_error *err);
int tlc_kv_append(tlc_ctx *cx, tlc_layer_kv *L, int n_past, int m, const float *k, const float *v, tl_error *err);

#endif
