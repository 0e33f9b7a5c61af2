/* hooks.cu: the test hooks of cuda_test.h: one layer's KV cache and attention, one TailorKV
 * sparse layer, the block-format products, each alone on device 0 against host inputs
 * (tests/cuda/test_cuda.c). */
#include "forward.cuh"
#include "cuda_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------- one layer alone (tests) ---------------- */

extern "C" int tl_cuda_layer_attend(const tl_kv_layer_policy *p, const tl_kv_shape *s, int n_hist, int chunk, const float *kh,
                                    const float *vh, int m, const float *q, const float *k, const float *v, float *out, int mode,
                                    tl_error *err) {
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) return tl_fail(err, "%s", why);
    if (chunk <= 0 || m <= 0) return tl_fail(err, "tl_cuda_layer_attend: chunk %d, m %d", chunk, m);
    if (s->softcap > 0) return tl_fail(err, "tl_cuda_layer_attend: soft-capped scores have no GPU implementation");
    tl_cuda_session *g = (tl_cuda_session *)tl_xcalloc(1, sizeof *g);
    tlc_layer_kv L;
    memset(&L, 0, sizeof L);
    float *dq = NULL, *dk = NULL, *dv = NULL, *dout = NULL;
    int rc = -1;
    /* capacity rounded up to 8 tokens, like a session with a round n_ctx: every per-token
     * parameter layout then starts its heads 16-byte aligned, as the tensor-core kernel needs */
    const int n_ctx = (n_hist + m + 7) / 8 * 8, Hq = s->n_head, Hkv = s->n_head_kv, dkd = s->head_dim_k, dvd = s->head_dim_v;
    const int rows = TL_MAX(chunk, m);
    const size_t kdim = (size_t)Hkv * dkd, vdim = (size_t)Hkv * dvd;
    cudaDeviceProp prop;
    if (cudaSetDevice(0) != cudaSuccess || cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaStreamCreateWithFlags(&g->cx.stream, cudaStreamNonBlocking) != cudaSuccess) {
        tl_fail(err, "tl_cuda_layer_attend: device 0: %s", cudaGetErrorString(cudaGetLastError()));
        goto done;
    }
    g->cx.n_sm = prop.multiProcessorCount;
    g->cx.smem_optin = prop.sharedMemPerBlockOptin;
    g->cx.old_decode = g->cx.no_tc = mode == 1; /* mode 1: the general kernel only */
    g->cx.dec_tc_from = mode == 2 ? 1 : 0; /* mode 2: decode on tensor cores (quantized sides too) */
    g->cx.dec_tc_quant = mode == 2;
    g->cx.no_dec_mma = mode == 3; /* mode 3: as 0, per-token codes on decode.cu's CUDA-core path */
    L.n_head = Hq;
    L.n_head_kv = Hkv;
    L.window = s->window;
    L.scale = s->scale;
    {
        const int cap = s->window > 0 ? TL_MIN(s->window, n_ctx) : n_ctx;
        if (tlc_side_setup(g, &L.k, &p->k, p->kind, dkd, p->residual, cap, Hkv, "K", err) ||
            tlc_side_setup(g, &L.v, &p->v, p->kind, dvd, p->residual, cap, Hkv, "V", err))
            goto done;
    }
    if (cudaMalloc((void **)&dq, sizeof(float) * (size_t)m * Hq * dkd) != cudaSuccess ||
        cudaMalloc((void **)&dk, sizeof(float) * (size_t)rows * kdim) != cudaSuccess ||
        cudaMalloc((void **)&dv, sizeof(float) * (size_t)rows * vdim) != cudaSuccess ||
        cudaMalloc((void **)&dout, sizeof(float) * (size_t)m * Hq * dvd) != cudaSuccess) {
        tl_fail(err, "tl_cuda_layer_attend: out of GPU memory");
        goto done;
    }
    for (int i = 0; i < n_hist; i += chunk) {
        const int nc = TL_MIN(chunk, n_hist - i);
        /* uploads on the session's stream: a plain cudaMemcpy from pageable memory may return
         * before its DMA lands, and the non-blocking stream would not wait for it */
        if (cudaMemcpyAsync(dk, kh + (size_t)i * kdim, sizeof(float) * nc * kdim, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess ||
            cudaMemcpyAsync(dv, vh + (size_t)i * vdim, sizeof(float) * nc * vdim, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess) {
            tl_fail(err, "tl_cuda_layer_attend: upload");
            goto done;
        }
        if (tlc_kv_append(&g->cx, &L, i, nc, dk, dv, err)) goto done;
        if (cudaStreamSynchronize(g->cx.stream) != cudaSuccess) {
            tl_fail(err, "tl_cuda_layer_attend: append: %s", cudaGetErrorString(cudaGetLastError()));
            goto done;
        }
    }
    if (cudaMemcpyAsync(dq, q, sizeof(float) * (size_t)m * Hq * dkd, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess ||
        cudaMemcpyAsync(dk, k, sizeof(float) * (size_t)m * kdim, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess ||
        cudaMemcpyAsync(dv, v, sizeof(float) * (size_t)m * vdim, cudaMemcpyHostToDevice, g->cx.stream) != cudaSuccess) {
        tl_fail(err, "tl_cuda_layer_attend: upload");
        goto done;
    }
    if (tlc_attention(&g->cx, &L, n_hist, m, dq, dk, dv, dout, err)) goto done;
    {
        cudaError_t e = cudaStreamSynchronize(g->cx.stream);
        if (e == cudaSuccess) e = cudaMemcpyAsync(out, dout, sizeof(float) * (size_t)m * Hq * dvd, cudaMemcpyDeviceToHost, g->cx.stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(g->cx.stream);
        if (e != cudaSuccess) {
            tl_fail(err, "tl_cuda_layer_attend: attention: %s", cudaGetErrorString(e));
            goto done;
        }
    }
    rc = 0;
done:
    if (g->cx.stream) cudaStreamSynchronize(g->cx.stream);
    kv_side *sides[2] = {&L.k, &L.v};
    for (int i = 0; i < 2; i++) {
        cudaFree(sides[i]->codes);
        cudaFree(sides[i]->params);
        cudaFree(sides[i]->fp);
    }
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(g->cx.scratch);
    if (g->cx.stream) cudaStreamDestroy(g->cx.stream);
    free(g);
    return rc;
}

/* ---------------- one TailorKV layer alone (tests) ---------------- */

extern "C" int tl_cuda_offload_layer_test(const tl_kv_layer_policy *p, const tl_kv_shape *s, int n_hist, int chunk,
                                          const float *qh, const float *kh, const float *vh, float *outh, int n_dec,
                                          const float *q, const float *qpred, const float *k, const float *v, float *out,
                                          int *sel, int *nsel, tl_error *err) {
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) return tl_fail(err, "%s", why);
    if (p->kind != TL_KV_OFFLOAD || chunk < 2) return tl_fail(err, "tl_cuda_offload_layer_test: offload policy, chunk >= 2");
    if (s->softcap > 0) return tl_fail(err, "tl_cuda_offload_layer_test: soft-capped scores have no GPU implementation");
    tlc_ctx cx;
    memset(&cx, 0, sizeof cx);
    tlc_off *o = NULL;
    float *dq = NULL, *dqp = NULL, *dk = NULL, *dv = NULL, *dout = NULL;
    int rc = -1;
    const int Hq = s->n_head, Hkv = s->n_head_kv, dkd = s->head_dim_k, dvd = s->head_dim_v;
    const size_t qdim = (size_t)Hq * dkd, kdim = (size_t)Hkv * dkd, vdim = (size_t)Hkv * dvd, odim = (size_t)Hq * dvd;
    const int n_ctx = n_hist + n_dec;
    cudaDeviceProp prop;
    if (cudaSetDevice(0) != cudaSuccess || cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaStreamCreateWithFlags(&cx.stream, cudaStreamNonBlocking) != cudaSuccess)
        return tl_fail(err, "tl_cuda_offload_layer_test: device 0: %s", cudaGetErrorString(cudaGetLastError()));
    cx.n_sm = prop.multiProcessorCount;
    cx.smem_optin = prop.sharedMemPerBlockOptin;
    uint64_t grown;
    if (tlc_off_new(&o, &p->off, Hq, Hkv, dkd, dvd, n_ctx, 0, s->scale, err) || tlc_off_reserve(&cx, o, &grown, err)) goto done;
    if (cudaMalloc((void **)&dq, sizeof(float) * chunk * qdim) != cudaSuccess ||
        cudaMalloc((void **)&dqp, sizeof(float) * qdim) != cudaSuccess ||
        cudaMalloc((void **)&dk, sizeof(float) * chunk * kdim) != cudaSuccess ||
        cudaMalloc((void **)&dv, sizeof(float) * chunk * vdim) != cudaSuccess ||
        cudaMalloc((void **)&dout, sizeof(float) * chunk * odim) != cudaSuccess) {
        tl_fail(err, "tl_cuda_offload_layer_test: out of GPU memory");
        goto done;
    }
#define UP(dst, src, n) (cudaMemcpyAsync(dst, src, sizeof(float) * (n), cudaMemcpyHostToDevice, cx.stream) != cudaSuccess)
    for (int i = 0; i < n_hist; i += chunk) {
        const int nc = TL_MIN(chunk, n_hist - i);
        if (nc < 2) {
            tl_fail(err, "tl_cuda_offload_layer_test: a 1-token prefill chunk would be a generated token");
            goto done;
        }
        if (UP(dq, qh + i * qdim, nc * qdim) || UP(dk, kh + i * kdim, nc * kdim) || UP(dv, vh + i * vdim, nc * vdim)) {
            tl_fail(err, "upload");
            goto done;
        }
        if (tlc_off_prefill(&cx, o, nc, dq, dk, dv, dout, err)) goto done;
        if (cudaMemcpyAsync(outh + i * odim, dout, sizeof(float) * nc * odim, cudaMemcpyDeviceToHost, cx.stream) != cudaSuccess ||
            cudaStreamSynchronize(cx.stream) != cudaSuccess) {
            tl_fail(err, "prefill: %s", cudaGetErrorString(cudaGetLastError()));
            goto done;
        }
    }
    for (int j = 0; j < n_dec; j++) {
        if (UP(dq, q + j * qdim, qdim) || UP(dk, k + j * kdim, kdim) || UP(dv, v + j * vdim, vdim) ||
            (qpred && UP(dqp, qpred + j * qdim, qdim))) {
            tl_fail(err, "upload");
            goto done;
        }
        /* with a prediction, the channel rows (summary 0) come by the side-stream prefetch, as in a model */
        if (qpred && tlc_off_prefetch(&cx, o, dqp, err)) goto done;
        if (tlc_off_decode(&cx, o, dq, dqp, qpred != NULL, dk, dv, dout, err)) goto done;
        if (cudaMemcpyAsync(out + j * odim, dout, sizeof(float) * odim, cudaMemcpyDeviceToHost, cx.stream) != cudaSuccess ||
            cudaStreamSynchronize(cx.stream) != cudaSuccess) {
            tl_fail(err, "decode: %s", cudaGetErrorString(cudaGetLastError()));
            goto done;
        }
        int ms;
        if (tlc_off_last_selection(&cx, o, sel + (size_t)j * Hkv * TL_MAX(1, p->off.topk), nsel + (size_t)j * Hkv, &ms, err))
            goto done;
    }
#undef UP
    rc = 0;
done:
    if (cx.stream) cudaStreamSynchronize(cx.stream);
    tlc_off_free(o);
    cudaFree(dq);
    cudaFree(dqp);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(cx.scratch);
    tlc_crow_free(&cx);
    if (cx.stream) cudaStreamDestroy(cx.stream);
    return rc;
}

/* ---------------- block-format products alone (tests) ---------------- */

extern "C" int tl_cuda_qmatmul_test(int t, const void *W, int n_in, int n_out, const float *X, int m, int slab_rows,
                                    float *y_fast, float *y_ref, float *y_pre, tl_error *err) {
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) return tl_fail(err, "%s", why);
    if (!tlc_qtype_has_kernels(t)) return tl_fail(err, "tl_cuda_qmatmul_test: %s has no GPU kernels", tl_type_name(t));
    const size_t rb = tl_row_size((tl_type)t, n_in);
    if (!rb || m < 1 || n_out < 1 || slab_rows < 1)
        return tl_fail(err, "tl_cuda_qmatmul_test: %s with %d columns, %d rows, m %d, slab %d", tl_type_name(t), n_in, n_out, m,
                       slab_rows);
    tlc_ctx cx;
    memset(&cx, 0, sizeof cx);
    cublasHandle_t blas = NULL;
    void *dW = NULL;
    float *dX = NULL, *dY = NULL;
    uint16_t *dXh = NULL, *wdq = NULL;
    const size_t ny = (size_t)m * n_out, nx = (size_t)m * n_in;
    int rc = -1;
    if (cudaSetDevice(0) != cudaSuccess || cudaStreamCreateWithFlags(&cx.stream, cudaStreamNonBlocking) != cudaSuccess)
        return tl_fail(err, "tl_cuda_qmatmul_test: device 0: %s", cudaGetErrorString(cudaGetLastError()));
    cx.xq_cap = n_in;
    if (cudaMalloc(&dW, rb * n_out) != cudaSuccess || cudaMalloc((void **)&dX, sizeof(float) * nx) != cudaSuccess ||
        cudaMalloc((void **)&dY, sizeof(float) * ny) != cudaSuccess || cudaMalloc((void **)&dXh, 2 * nx) != cudaSuccess ||
        cudaMalloc((void **)&wdq, 2 * (size_t)slab_rows * n_in) != cudaSuccess ||
        cudaMalloc((void **)&cx.xq, n_in) != cudaSuccess || cudaMalloc((void **)&cx.xd, sizeof(float2) * (n_in / 32)) != cudaSuccess) {
        tl_fail(err, "tl_cuda_qmatmul_test: out of GPU memory");
        goto done;
    }
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(blas, cx.stream) != CUBLAS_STATUS_SUCCESS) {
        tl_fail(err, "tl_cuda_qmatmul_test: cublasCreate failed");
        goto done;
    }
    if (cudaMemcpyAsync(dW, W, rb * n_out, cudaMemcpyHostToDevice, cx.stream) != cudaSuccess ||
        cudaMemcpyAsync(dX, X, sizeof(float) * nx, cudaMemcpyHostToDevice, cx.stream) != cudaSuccess) {
        tl_fail(err, "tl_cuda_qmatmul_test: upload");
        goto done;
    }
    for (int path = 0; path < 3; path++) {
        float *out = path == 0 ? y_fast : path == 1 ? y_ref : y_pre;
        if (!out) continue;
        cudaMemsetAsync(dY, 0xff, sizeof(float) * ny, cx.stream); /* NaN: every output must be written */
        for (int r = 0; r < m && path < 2; r++) {
            if (path == 1) {
                if (tlc_qmatvec_ref(&cx, t, dW, n_in, n_out, dX + (size_t)r * n_in, dY + (size_t)r * n_out, err)) goto done;
                continue;
            }
            tlc_mv a;
            memset(&a, 0, sizeof a);
            a.W[0] = dW;
            a.y[0] = dY + (size_t)r * n_out;
            a.n_out[0] = n_out;
            a.nseg = 1;
            a.n_in = n_in;
            a.wt = WT_Q;
            a.qt = t;
            a.x = dX + (size_t)r * n_in;
            if (tlc_matvec(&cx, &a, err)) goto done;
        }
        if (path == 2) {
            const dmat M = {dW, WT_Q, t, n_in, n_out};
            if (tlc_to_f16(cx.stream, dX, dXh, nx, err) ||
                tlc_qgemm(&cx, blas, &M, dXh, m, dY, false, wdq, (size_t)slab_rows * n_in, err))
                goto done;
        }
        cudaError_t e = cudaMemcpyAsync(out, dY, sizeof(float) * ny, cudaMemcpyDeviceToHost, cx.stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(cx.stream);
        if (e != cudaSuccess) {
            tl_fail(err, "tl_cuda_qmatmul_test: %s path %d: %s", tl_type_name(t), path, cudaGetErrorString(e));
            goto done;
        }
    }
    rc = 0;
done:
    cudaStreamSynchronize(cx.stream);
    if (blas) cublasDestroy(blas);
    void *bufs[] = {dW, dX, dY, dXh, wdq, cx.xq, cx.xd};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) cudaFree(bufs[i]);
    cudaStreamDestroy(cx.stream);
    return rc;
}
