/* linear.cu: the weight products of a forward pass (forward.cuh: tlc_linear): one token through
 * the matrix-vector kernels (matvec.cu, qmatvec.cu), several through cuBLAS GEMMs (16-bit
 * operands, f32 accumulation; block formats dequantized to f16 a slab of rows at a time). */
#include "forward.cuh"

#include <stdio.h>

__global__ void bias_k(float *y, const float *b, int n_tok, int dim) {
    const size_t n = (size_t)n_tok * dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) y[i] += b[i % dim];
}

template <int WT>
__global__ void to16_k(const float *x, uint16_t *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = WT == WT_F16 ? __half_as_ushort(__float2half_rn(x[i])) : __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}

static int grid1(size_t n, int thr) {
    size_t b = (n + thr - 1) / thr;
    return (int)(b > 1048576 ? 1048576 : (b ? b : 1));
}

int tlc_to_f16(cudaStream_t st, const float *x, uint16_t *y, size_t n, tl_error *err) {
    to16_k<WT_F16><<<grid1(n, 256), 256, 0, st>>>(x, y, n);
    TLC_LAUNCH_CHECK("convert to f16");
    return 0;
}

int tlc_qgemm(tlc_ctx *cx, cublasHandle_t blas, const dmat *M, const uint16_t *xh, int n, float *y, bool add, uint16_t *wdq,
              size_t wdq_elems, tl_error *err) {
    const int slab = (int)TL_MIN((size_t)M->n_out, wdq_elems / (size_t)M->n_in);
    if (slab < 1) return tl_fail(err, "%s GEMM: the dequantization workspace (%zu values) holds no row of %d", tl_type_name(M->qt), wdq_elems, M->n_in);
    const float alpha = 1.0f, beta = add ? 1.0f : 0.0f;
    for (int r0 = 0; r0 < M->n_out; r0 += slab) {
        const int nr = TL_MIN(slab, M->n_out - r0);
        if (tlc_qdequant(cx, M->qt, M->d, M->n_in, r0, nr, wdq, err)) return -1;
        cublasStatus_t st = cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, nr, n, M->n_in, &alpha, wdq, CUDA_R_16F, M->n_in, xh,
                                         CUDA_R_16F, M->n_in, &beta, y + r0, CUDA_R_32F, M->n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS)
            return tl_fail(err, "cublasGemmEx (%s rows %d..%d of %dx%d x %d tokens): status %d", tl_type_name(M->qt), r0, r0 + nr - 1,
                           M->n_out, M->n_in, n, (int)st);
    }
    return 0;
}

/* Up to this many rows, block-format products run as one decode product per row: a 4-bit one
 * reads ~0.6 bytes per weight, the dequantize + GEMM path ~4.6 (the blocks, the f16 slab
 * written and read back), so rows are cheaper until about 8. */
#define TLC_QGEMM_MIN_ROWS 8

/* The decode product's arguments for up to three matrices sharing x (their format and n_in). */
tlc_mv tlc_mv_of(int nseg, const dmat *const *W, const float *x, float *const *y, const float *const *bias, const int *add) {
    tlc_mv a;
    memset(&a, 0, sizeof a);
    a.nseg = nseg;
    a.n_in = W[0]->n_in;
    a.wt = W[0]->wt;
    a.qt = W[0]->qt;
    a.x = x;
    for (int s = 0; s < nseg; s++) {
        a.W[s] = W[s]->d;
        a.bias[s] = bias ? bias[s] : NULL;
        a.y[s] = y[s];
        a.n_out[s] = W[s]->n_out;
        a.add[s] = add ? add[s] : 0;
    }
    return a;
}

/* y_s (+)= W_s x (+ b_s) for up to three matrices sharing x and n_in. n tokens. */
int tlc_linear(tl_cuda_session *g, int nseg, const dmat *const *W, const float *x, int n, float *const *y,
                  const float *const *bias, const int *add, tl_error *err) {
    const int n_in = W[0]->n_in, wt = W[0]->wt;
    bool same = true;
    for (int s = 1; s < nseg; s++) same = same && W[s]->wt == wt && (wt != WT_Q || W[s]->qt == W[0]->qt) && W[s]->n_in == n_in;
    bool blocks = true;
    for (int s = 0; s < nseg; s++) blocks = blocks && W[s]->wt == WT_Q;
    if (n > 1 && n <= TLC_QGEMM_MIN_ROWS && blocks) { /* a few rows: one decode product per row */
        g->cx.xq_of = NULL;
        for (int r = 0; r < n; r++) {
            float *yr[3];
            for (int s = 0; s < nseg; s++) yr[s] = y[s] + (size_t)r * W[s]->n_out;
            if (tlc_linear(g, nseg, W, x + (size_t)r * n_in, 1, yr, bias, add, err)) return -1;
        }
        return 0;
    }
    if (n == 1 && !same) { /* e.g. q4_K q/k with a q6_K v: one product per run of matrices of one format, the
                            * input quantized once for all of them */
        const float *of = g->cx.xq_of;
        int rc = 0;
        for (int s0 = 0, s1; s0 < nseg && !rc; s0 = s1) {
            for (s1 = s0 + 1; s1 < nseg && W[s1]->wt == W[s0]->wt && (W[s0]->wt != WT_Q || W[s1]->qt == W[s0]->qt); s1++) {}
            rc = tlc_linear(g, s1 - s0, &W[s0], x, 1, &y[s0], bias ? &bias[s0] : NULL, add ? &add[s0] : NULL, err);
            if (W[s0]->wt == WT_Q) g->cx.xq_of = x; /* xq/xd now hold x */
        }
        g->cx.xq_of = of;
        return rc ? -1 : 0;
    }
    if (n == 1) {
        const tlc_mv a = tlc_mv_of(nseg, W, x, y, bias, add);
        return tlc_matvec(&g->cx, &a, err);
    }
    for (int s = 0; s < nseg; s++) {
        const dmat *M = W[s];
        const void *B = x;
        cudaDataType_t ty = CUDA_R_32F;
        if (M->wt != WT_F32) {
            const size_t ne = (size_t)n * M->n_in;
            const bool f16 = M->wt == WT_F16 || M->wt == WT_Q;
            if (f16) to16_k<WT_F16><<<grid1(ne, 256), 256, 0, g->cx.stream>>>(x, (uint16_t *)g->xb, ne);
            else to16_k<WT_BF16><<<grid1(ne, 256), 256, 0, g->cx.stream>>>(x, (uint16_t *)g->xb, ne);
            TLC_LAUNCH_CHECK("convert activations");
            B = g->xb;
            ty = f16 ? CUDA_R_16F : CUDA_R_16BF;
        }
        const bool acc = add && add[s];
        if (M->wt == WT_Q) {
            if (tlc_qgemm(&g->cx, g->blas, M, (const uint16_t *)B, n, y[s], acc, g->wdq, g->wdq_elems, err)) return -1;
        } else {
            const float alpha = 1.0f, beta = acc ? 1.0f : 0.0f;
            cublasStatus_t st = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, M->n_out, n, M->n_in, &alpha, M->d, ty, M->n_in, B,
                                             ty, M->n_in, &beta, y[s], CUDA_R_32F, M->n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (st != CUBLAS_STATUS_SUCCESS)
                return tl_fail(err, "cublasGemmEx (%dx%d x %d tokens): status %d", M->n_out, M->n_in, n, (int)st);
        }
        if (bias && bias[s]) {
            bias_k<<<grid1((size_t)n * M->n_out, 256), 256, 0, g->cx.stream>>>(y[s], bias[s], n, M->n_out);
            TLC_LAUNCH_CHECK("bias");
        }
    }
    return 0;
}

