/* matvec.cu: the decode (one token) matrix-vector products. They are bound by the bytes of
 * the weights, so the kernel is built for loads: a warp per output row, each lane keeping
 * eight 16-byte weight loads in flight before it uses the first; up to three matrices that
 * share their input (q/k/v) run in one launch.
 *
 * glu: segments 0 and 1 are gate and up with the same rows; a warp computes gate row r and
 * up row r and writes act(gate) * up (SiLU or GELU-tanh, act_k's formulas), so the activation
 * kernel leaves the decode step. --cuda-opt no-fuse turns it off (forward.cu then runs act_k).
 * (Fusing the rmsnorm into the products as well, every block normalising x into shared memory
 * first, was measured on an H100: 0.35 ms per token slower on Llama-3.1-8B, so it is not done.)
 *
 * The kernels are launched with programmatic dependent launch (backend.cuh: pdl_trigger /
 * pdl_wait): the small kernels before them let them start early, so each block issues its
 * first weight loads while the previous kernel finishes, then waits for x. --cuda-opt no-pdl: off. */
#include "backend.cuh"
#include "cuda_test.h"

#include <math.h>

#define MV_THR 256
#define MV_ROWS (MV_THR / 32)

/* 8 weights (one 16-byte load) times 8 inputs. */
template <int WT>
__device__ __forceinline__ float dot8(uint4 w, float4 a, float4 b) {
    float f[8];
    if (WT == WT_BF16) {
        const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            f[2 * k] = __uint_as_float(u[k] << 16);
            f[2 * k + 1] = __uint_as_float(u[k] & 0xffff0000u);
        }
    } else {
        const __half2 *h = (const __half2 *)&w;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float2 t = __half22float2(h[k]);
            f[2 * k] = t.x;
            f[2 * k + 1] = t.y;
        }
    }
    float s = f[0] * a.x;
    s = fmaf(f[1], a.y, s);
    s = fmaf(f[2], a.z, s);
    s = fmaf(f[3], a.w, s);
    s = fmaf(f[4], b.x, s);
    s = fmaf(f[5], b.y, s);
    s = fmaf(f[6], b.z, s);
    s = fmaf(f[7], b.w, s);
    return s;
}

__device__ __forceinline__ float mv_act(float x, int glu) {
    if (glu == 2) return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return x / (1.0f + expf(-x));
}

/* The first 8 (one matrix) or 4 + 4 (glu) 16-byte weight loads of a lane, issued before the
 * kernel waits for its predecessor (pdl_wait): weights do not depend on it. */
template <int NB>
__device__ __forceinline__ void preload(const void *W, int row, int n, int lane, uint4 *w) {
    const uint4 *w4 = (const uint4 *)((const uint16_t *)W + (size_t)row * n);
    const int n8 = n / 8;
#pragma unroll
    for (int k = 0; k < NB; k++)
        if (lane + 32 * k < n8) w[k] = __ldcs(w4 + lane + 32 * k);
}

/* Row `row` of a 16-bit matrix against x: the lane's partial sum, 8 loads in flight; the
 * first 8 loads were issued by preload<8>. */
template <int WT>
__device__ __forceinline__ float row_dot16(const void *W, int row, int n, const float4 *x4, int lane, const uint4 *pre) {
    const uint4 *w4 = (const uint4 *)((const uint16_t *)W + (size_t)row * n);
    const int n8 = n / 8;
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int i = lane + 32 * k;
        if (i < n8) acc += dot8<WT>(pre[k], __ldg(x4 + 2 * i), __ldg(x4 + 2 * i + 1));
    }
    int i = lane + 32 * 8;
    for (; i + 32 * 7 < n8; i += 32 * 8) {
        uint4 w[8];
#pragma unroll
        for (int k = 0; k < 8; k++) w[k] = __ldcs(w4 + i + 32 * k);
#pragma unroll
        for (int k = 0; k < 8; k++) acc += dot8<WT>(w[k], __ldg(x4 + 2 * (i + 32 * k)), __ldg(x4 + 2 * (i + 32 * k) + 1));
    }
    for (; i < n8; i += 32) acc += dot8<WT>(__ldcs(w4 + i), __ldg(x4 + 2 * i), __ldg(x4 + 2 * i + 1));
    return acc;
}

/* Two rows (gate and up) against x, 4 + 4 loads in flight; the first 4 + 4 preloaded
 * (pre[0..3] gate, pre[4..7] up). */
template <int WT>
__device__ __forceinline__ void row_dot16x2(const void *A, const void *B, int row, int n, const float4 *x4, int lane,
                                            const uint4 *pre, float &sa, float &sb) {
    const uint4 *a4 = (const uint4 *)((const uint16_t *)A + (size_t)row * n), *b4 = (const uint4 *)((const uint16_t *)B + (size_t)row * n);
    const int n8 = n / 8;
    float acca = 0.0f, accb = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int i = lane + 32 * k;
        if (i < n8) {
            const float4 xa = __ldg(x4 + 2 * i), xb = __ldg(x4 + 2 * i + 1);
            acca += dot8<WT>(pre[k], xa, xb);
            accb += dot8<WT>(pre[4 + k], xa, xb);
        }
    }
    int i = lane + 32 * 4;
    for (; i + 32 * 3 < n8; i += 32 * 4) {
        uint4 wa[4], wb[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            wa[k] = __ldcs(a4 + i + 32 * k);
            wb[k] = __ldcs(b4 + i + 32 * k);
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float4 xa = __ldg(x4 + 2 * (i + 32 * k)), xb = __ldg(x4 + 2 * (i + 32 * k) + 1);
            acca += dot8<WT>(wa[k], xa, xb);
            accb += dot8<WT>(wb[k], xa, xb);
        }
    }
    for (; i < n8; i += 32) {
        const float4 xa = __ldg(x4 + 2 * i), xb = __ldg(x4 + 2 * i + 1);
        acca += dot8<WT>(__ldcs(a4 + i), xa, xb);
        accb += dot8<WT>(__ldcs(b4 + i), xa, xb);
    }
    sa = acca;
    sb = accb;
}


template <int WT, bool VEC, int GLU>
__global__ void __launch_bounds__(MV_THR) matvec_k(tlc_mv a) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    pdl_trigger();
    /* this warp's row (segment si), and its first weight loads, before the wait */
    int row = blockIdx.x * MV_ROWS + warp, si = 0;
    if (!GLU && row >= a.n_out[0]) {
        row -= a.n_out[0];
        si = 1;
        if (a.nseg > 2 && row >= a.n_out[1]) {
            row -= a.n_out[1];
            si = 2;
        }
    }
    const int n_out_s = si == 0 ? a.n_out[0] : si == 1 ? a.n_out[1] : a.n_out[2];
    const bool live = si < a.nseg && row < n_out_s;
    const int n = a.n_in;
    const void *W = si == 0 ? a.W[0] : si == 1 ? a.W[1] : a.W[2];
    uint4 pre[8];
    if (VEC && WT != WT_F32 && live) {
        if (GLU) {
            preload<4>(a.W[0], row, n, lane, pre);
            preload<4>(a.W[1], row, n, lane, pre + 4);
        } else {
            preload<8>(W, row, n, lane, pre);
        }
    }
    pdl_wait(); /* x (and y for add) come from the kernels before */
    const float4 *x4 = (const float4 *)a.x;
    if (!live) return;
    if (GLU) {
        float g, u;
        row_dot16x2<WT>(a.W[0], a.W[1], row, n, x4, lane, pre, g, u);
        g = wsum(g);
        u = wsum(u);
        if (lane == 0) a.y[0][row] = mv_act(g, GLU) * u;
        return;
    }
    float acc = 0.0f;
    if (VEC && WT != WT_F32) {
        acc = row_dot16<WT>(W, row, n, x4, lane, pre);
    } else if (VEC) {
        const float4 *w4 = (const float4 *)((const float *)W + (size_t)row * n);
#pragma unroll 4
        for (int i = lane; i < n / 4; i += 32) {
            const float4 w = __ldg(w4 + i), x = __ldg(x4 + i);
            acc = fmaf(w.x, x.x, acc);
            acc = fmaf(w.y, x.y, acc);
            acc = fmaf(w.z, x.z, acc);
            acc = fmaf(w.w, x.w, acc);
        }
    } else {
        const float *xf = (const float *)x4;
        for (int i = lane; i < n; i += 32) acc = fmaf(ldw<WT>(W, (size_t)row * n + i), xf[i], acc);
    }
    acc = wsum(acc);
    if (lane == 0) {
        float *y = si == 0 ? a.y[0] : si == 1 ? a.y[1] : a.y[2];
        const float *b = si == 0 ? a.bias[0] : si == 1 ? a.bias[1] : a.bias[2];
        const int add = si == 0 ? a.add[0] : si == 1 ? a.add[1] : a.add[2];
        if (b) acc += b[row];
        y[row] = add ? y[row] + acc : acc;
    }
}

/* ---- several input rows at once (the batched step's decode rows, batch.cu) ----
 * matvec_k for nr <= NR rows of x (row r at x + r * ldx, its outputs at y[s] + r * n_out[s]).
 * A warp takes RO consecutive output rows (MV_RO; 2 with glu, whose rows are pairs) against
 * every input row: each weight load serves the nr input rows, each input load the RO output
 * rows, so the weights are read once for all the rows and the inputs once per RO rows. Each
 * (output row, input row) sum is exactly matvec_k's: the same lane takes the same weights
 * (i = lane, lane + 32, ... in increasing order), a 16-byte load's dot8 added to the lane's sum
 * (f32: fmaf by element; scalar: fmaf), then the same warp sum, bias, residual add and
 * activation; so a sequence's numbers do not depend on what shares its step (checked bit for
 * bit against matvec_k by tl_cuda_matvec_rows_test). The last group of a matrix may hold fewer
 * than RO rows: its missing rows read the group's first row again (cached) and are not written. */
#define MV_RO 4

template <int WT, int NR, int RO>
__device__ __forceinline__ void rows_dot16(const void *W, int row0, int nro, int n, const float *x, int ldx, int nr, int lane,
                                           float (&acc)[RO][NR]) {
    const int n8 = n / 8;
    const uint4 *w4[RO];
#pragma unroll
    for (int o = 0; o < RO; o++) w4[o] = (const uint4 *)((const uint16_t *)W + (size_t)(row0 + (o < nro ? o : 0)) * n);
    int i = lane;
    for (; i + 32 < n8; i += 64) {
        uint4 w[2][RO];
#pragma unroll
        for (int k = 0; k < 2; k++)
#pragma unroll
            for (int o = 0; o < RO; o++) w[k][o] = __ldcs(w4[o] + i + 32 * k);
#pragma unroll
        for (int k = 0; k < 2; k++)
#pragma unroll
            for (int r = 0; r < NR; r++)
                if (r < nr) {
                    const float4 *x4 = (const float4 *)(x + (size_t)r * ldx);
                    const float4 xa = __ldg(x4 + 2 * (i + 32 * k)), xb = __ldg(x4 + 2 * (i + 32 * k) + 1);
#pragma unroll
                    for (int o = 0; o < RO; o++) acc[o][r] += dot8<WT>(w[k][o], xa, xb);
                }
    }
    for (; i < n8; i += 32) {
        uint4 w[RO];
#pragma unroll
        for (int o = 0; o < RO; o++) w[o] = __ldcs(w4[o] + i);
#pragma unroll
        for (int r = 0; r < NR; r++)
            if (r < nr) {
                const float4 *x4 = (const float4 *)(x + (size_t)r * ldx);
                const float4 xa = __ldg(x4 + 2 * i), xb = __ldg(x4 + 2 * i + 1);
#pragma unroll
                for (int o = 0; o < RO; o++) acc[o][r] += dot8<WT>(w[o], xa, xb);
            }
    }
}

/* gate rows (A) and up rows (B) against every input row: row_dot16x2's sums, per pair. */
template <int WT, int NR, int RO>
__device__ __forceinline__ void rows_dot16x2(const void *A, const void *B, int row0, int nro, int n, const float *x, int ldx,
                                             int nr, int lane, float (&sa)[RO][NR], float (&sb)[RO][NR]) {
    const int n8 = n / 8;
    const uint4 *a4[RO], *b4[RO];
#pragma unroll
    for (int o = 0; o < RO; o++) {
        const size_t r = (size_t)(row0 + (o < nro ? o : 0)) * n;
        a4[o] = (const uint4 *)((const uint16_t *)A + r);
        b4[o] = (const uint4 *)((const uint16_t *)B + r);
    }
    int i = lane;
    for (; i + 32 < n8; i += 64) {
        uint4 wa[2][RO], wb[2][RO];
#pragma unroll
        for (int k = 0; k < 2; k++)
#pragma unroll
            for (int o = 0; o < RO; o++) {
                wa[k][o] = __ldcs(a4[o] + i + 32 * k);
                wb[k][o] = __ldcs(b4[o] + i + 32 * k);
            }
#pragma unroll
        for (int k = 0; k < 2; k++)
#pragma unroll
            for (int r = 0; r < NR; r++)
                if (r < nr) {
                    const float4 *x4 = (const float4 *)(x + (size_t)r * ldx);
                    const float4 xa = __ldg(x4 + 2 * (i + 32 * k)), xb = __ldg(x4 + 2 * (i + 32 * k) + 1);
#pragma unroll
                    for (int o = 0; o < RO; o++) {
                        sa[o][r] += dot8<WT>(wa[k][o], xa, xb);
                        sb[o][r] += dot8<WT>(wb[k][o], xa, xb);
                    }
                }
    }
    for (; i < n8; i += 32) {
        uint4 wa[RO], wb[RO];
#pragma unroll
        for (int o = 0; o < RO; o++) {
            wa[o] = __ldcs(a4[o] + i);
            wb[o] = __ldcs(b4[o] + i);
        }
#pragma unroll
        for (int r = 0; r < NR; r++)
            if (r < nr) {
                const float4 *x4 = (const float4 *)(x + (size_t)r * ldx);
                const float4 xa = __ldg(x4 + 2 * i), xb = __ldg(x4 + 2 * i + 1);
#pragma unroll
                for (int o = 0; o < RO; o++) {
                    sa[o][r] += dot8<WT>(wa[o], xa, xb);
                    sb[o][r] += dot8<WT>(wb[o], xa, xb);
                }
            }
    }
}

/* f32 weights, 16-byte loads: matvec_k's fmaf by element. */
template <int NR, int RO>
__device__ __forceinline__ void rows_dot32(const float *W, int row0, int nro, int n, const float *x, int ldx, int nr, int lane,
                                           float (&acc)[RO][NR]) {
    const float4 *w4[RO];
#pragma unroll
    for (int o = 0; o < RO; o++) w4[o] = (const float4 *)(W + (size_t)(row0 + (o < nro ? o : 0)) * n);
    for (int i = lane; i < n / 4; i += 32) {
        float4 w[RO];
#pragma unroll
        for (int o = 0; o < RO; o++) w[o] = __ldg(w4[o] + i);
#pragma unroll
        for (int r = 0; r < NR; r++)
            if (r < nr) {
                const float4 xv = __ldg((const float4 *)(x + (size_t)r * ldx) + i);
#pragma unroll
                for (int o = 0; o < RO; o++) {
                    acc[o][r] = fmaf(w[o].x, xv.x, acc[o][r]);
                    acc[o][r] = fmaf(w[o].y, xv.y, acc[o][r]);
                    acc[o][r] = fmaf(w[o].z, xv.z, acc[o][r]);
                    acc[o][r] = fmaf(w[o].w, xv.w, acc[o][r]);
                }
            }
    }
}

/* Rows not in 16-byte units: an element at a time. */
template <int WT, int NR, int RO>
__device__ __forceinline__ void rows_scalar(const void *W, int row0, int nro, int n, const float *x, int ldx, int nr, int lane,
                                            float (&acc)[RO][NR]) {
    for (int i = lane; i < n; i += 32) {
        float w[RO];
#pragma unroll
        for (int o = 0; o < RO; o++) w[o] = ldw<WT>(W, (size_t)(row0 + (o < nro ? o : 0)) * n + i);
#pragma unroll
        for (int r = 0; r < NR; r++)
            if (r < nr) {
                const float xv = x[(size_t)r * ldx + i];
#pragma unroll
                for (int o = 0; o < RO; o++) acc[o][r] = fmaf(w[o], xv, acc[o][r]);
            }
    }
}

/* Output-row groups of RO rows over the segments: the warps a launch needs. */
static __host__ __device__ __forceinline__ int mv_groups(int n_out, int ro) { return (n_out + ro - 1) / ro; }

template <int WT, bool VEC, int GLU, int NR>
__global__ void __launch_bounds__(MV_THR) matvec_rows_k(tlc_mv a, int nr, int ldx) {
    constexpr int RO = GLU ? 2 : MV_RO;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    pdl_trigger();
    /* this warp's group: output rows row0 .. row0 + nro - 1 of segment si */
    int gi = blockIdx.x * MV_ROWS + warp, si = 0;
    if (!GLU) {
        const int g0 = mv_groups(a.n_out[0], RO), g1 = a.nseg > 1 ? mv_groups(a.n_out[1], RO) : 0;
        if (gi >= g0) {
            gi -= g0;
            si = 1;
            if (gi >= g1) {
                gi -= g1;
                si = 2;
            }
        }
    }
    const int n_out_s = si == 0 ? a.n_out[0] : si == 1 ? a.n_out[1] : a.n_out[2];
    const int row0 = gi * RO, n = a.n_in;
    const int nro = si < a.nseg && row0 < n_out_s ? min(RO, n_out_s - row0) : 0;
    const void *W = si == 0 ? a.W[0] : si == 1 ? a.W[1] : a.W[2];
    pdl_wait(); /* x (and y for add) come from the kernels before */
    if (!nro) return;
    float acc[RO][NR], acc2[RO][NR];
#pragma unroll
    for (int o = 0; o < RO; o++)
#pragma unroll
        for (int r = 0; r < NR; r++) acc[o][r] = acc2[o][r] = 0.0f;
    if (GLU) rows_dot16x2<WT, NR, RO>(a.W[0], a.W[1], row0, nro, n, a.x, ldx, nr, lane, acc, acc2);
    else if (VEC && WT != WT_F32) rows_dot16<WT, NR, RO>(W, row0, nro, n, a.x, ldx, nr, lane, acc);
    else if (VEC) rows_dot32<NR, RO>((const float *)W, row0, nro, n, a.x, ldx, nr, lane, acc);
    else rows_scalar<WT, NR, RO>(W, row0, nro, n, a.x, ldx, nr, lane, acc);
    float *y = si == 0 ? a.y[0] : si == 1 ? a.y[1] : a.y[2];
    const float *b = si == 0 ? a.bias[0] : si == 1 ? a.bias[1] : a.bias[2];
    const int add = si == 0 ? a.add[0] : si == 1 ? a.add[1] : a.add[2];
#pragma unroll
    for (int o = 0; o < RO; o++) {
        if (o >= nro) break;
        const int row = row0 + o;
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r >= nr) break;
            if (GLU) {
                const float g = wsum(acc[o][r]), u = wsum(acc2[o][r]);
                if (lane == 0) a.y[0][(size_t)r * a.n_out[0] + row] = mv_act(g, GLU) * u;
            } else {
                float s = wsum(acc[o][r]);
                if (lane == 0) {
                    float *yr = y + (size_t)r * n_out_s;
                    if (b) s += b[row];
                    yr[row] = add ? yr[row] + s : s;
                }
            }
        }
    }
}

template <int WT>
static cudaError_t launch(const tlc_mv &a, bool vec, int blocks, cudaStream_t st, bool pdl) {
    if (a.glu == 1) return tlc_launch(pdl, matvec_k<WT, true, 1>, dim3(blocks), dim3(MV_THR), 0, st, a);
    if (a.glu == 2) return tlc_launch(pdl, matvec_k<WT, true, 2>, dim3(blocks), dim3(MV_THR), 0, st, a);
    if (vec) return tlc_launch(pdl, matvec_k<WT, true, 0>, dim3(blocks), dim3(MV_THR), 0, st, a);
    return tlc_launch(pdl, matvec_k<WT, false, 0>, dim3(blocks), dim3(MV_THR), 0, st, a);
}

int tlc_matvec(tlc_ctx *cx, const tlc_mv *a, tl_error *err) {
    if (a->wt == WT_Q) return tlc_qmatvec(cx, a, err); /* GGUF block formats: qmatvec.cu */
    const bool vec = a->wt == WT_F32 ? a->n_in % 4 == 0 : a->n_in % 8 == 0;
    /* glu: the vector path on 16-bit weights, without biases */
    if (a->glu && (!vec || a->wt == WT_F32 || !tlc_glu_shape(a)))
        return 1;
    int rows = a->glu ? a->n_out[0] : 0;
    if (!a->glu)
        for (int s = 0; s < a->nseg; s++) rows += a->n_out[s];
    const int blocks = (rows + MV_ROWS - 1) / MV_ROWS;
    const bool pdl = !cx->no_pdl;
    cudaError_t e = a->wt == WT_BF16 ? launch<WT_BF16>(*a, vec, blocks, cx->stream, pdl)
                    : a->wt == WT_F16 ? launch<WT_F16>(*a, vec, blocks, cx->stream, pdl)
                                      : launch<WT_F32>(*a, vec, blocks, cx->stream, pdl);
    if (e != cudaSuccess) return tl_fail(err, "CUDA kernel matvec (%d x %d): %s", rows, a->n_in, cudaGetErrorString(e));
    return 0;
}

template <int WT, int NR>
static cudaError_t launch_rows(const tlc_mv &a, bool vec, int nr, int ldx, int blocks, cudaStream_t st, bool pdl) {
    if (a.glu == 1) return tlc_launch(pdl, matvec_rows_k<WT, true, 1, NR>, dim3(blocks), dim3(MV_THR), 0, st, a, nr, ldx);
    if (a.glu == 2) return tlc_launch(pdl, matvec_rows_k<WT, true, 2, NR>, dim3(blocks), dim3(MV_THR), 0, st, a, nr, ldx);
    if (vec) return tlc_launch(pdl, matvec_rows_k<WT, true, 0, NR>, dim3(blocks), dim3(MV_THR), 0, st, a, nr, ldx);
    return tlc_launch(pdl, matvec_rows_k<WT, false, 0, NR>, dim3(blocks), dim3(MV_THR), 0, st, a, nr, ldx);
}

template <int WT>
static cudaError_t launch_rows_wt(const tlc_mv &a, bool vec, int nr, int ldx, int blocks, cudaStream_t st, bool pdl) {
    if (nr <= 4) return launch_rows<WT, 4>(a, vec, nr, ldx, blocks, st, pdl);
    return launch_rows<WT, TLC_MV_ROWS>(a, vec, nr, ldx, blocks, st, pdl);
}

int tlc_matvec_rows(tlc_ctx *cx, const tlc_mv *a, int nr, int ldx, tl_error *err) {
    if (nr < 1) return 0;
    if (a->wt == WT_Q) {
        if (ldx != a->n_in) return tl_fail(err, "matvec over several rows: block formats take rows %d apart, not %d", a->n_in, ldx);
        return tlc_qmatvec_rows(cx, a, nr, err);
    }
    if (nr == 1) return tlc_matvec(cx, a, err); /* the very kernel a sequence alone runs */
    const bool vec = a->wt == WT_F32 ? a->n_in % 4 == 0 : a->n_in % 8 == 0;
    if (a->glu && (!vec || a->wt == WT_F32 || !tlc_glu_shape(a)))
        return 1; /* as tlc_matvec */
    if (vec && ldx % (a->wt == WT_F32 ? 4 : 8))
        return tl_fail(err, "matvec over several rows: row stride %d breaks the 16-byte loads", ldx);
    int rows = a->glu ? a->n_out[0] : 0, groups = a->glu ? mv_groups(a->n_out[0], 2) : 0;
    for (int s = 0; !a->glu && s < a->nseg; s++) {
        rows += a->n_out[s];
        groups += mv_groups(a->n_out[s], MV_RO);
    }
    const int blocks = (groups + MV_ROWS - 1) / MV_ROWS; /* a warp per group of output rows */
    const bool pdl = !cx->no_pdl;
    for (int r0 = 0; r0 < nr; r0 += TLC_MV_ROWS) {
        const int n = nr - r0 < TLC_MV_ROWS ? nr - r0 : TLC_MV_ROWS;
        tlc_mv b = *a;
        b.x = a->x + (size_t)r0 * ldx;
        for (int s = 0; s < a->nseg; s++) b.y[s] = a->y[s] + (size_t)r0 * a->n_out[s];
        cudaError_t e;
        if (n == 1) {
            const int rc = tlc_matvec(cx, &b, err);
            if (rc) return rc;
            continue;
        }
        e = a->wt == WT_BF16 ? launch_rows_wt<WT_BF16>(b, vec, n, ldx, blocks, cx->stream, pdl)
            : a->wt == WT_F16 ? launch_rows_wt<WT_F16>(b, vec, n, ldx, blocks, cx->stream, pdl)
                              : launch_rows_wt<WT_F32>(b, vec, n, ldx, blocks, cx->stream, pdl);
        if (e != cudaSuccess)
            return tl_fail(err, "CUDA kernel matvec over %d rows (%d x %d): %s", n, rows, a->n_in, cudaGetErrorString(e));
    }
    return 0;
}

/* ---- the several-row products against tlc_matvec, a row at a time (tests) ---- */

/* a (its W, x = dX, y = dY set) over m rows: into y_rows through tlc_matvec_rows, into y_one a row
 * at a time through tlc_matvec, each from y0 (m rows of n_out on the host, the residual add) or
 * from NaN (every output must be written). */
static int rows_vs_one(tlc_ctx *cx, const tlc_mv &a, int m, float *dY, const float *y0, float *y_rows, float *y_one,
                       tl_error *err) {
    const size_t ny = (size_t)m * a.n_out[0];
    for (int path = 0; path < 2; path++) {
        cudaError_t e = y0 ? cudaMemcpyAsync(dY, y0, sizeof(float) * ny, cudaMemcpyHostToDevice, cx->stream)
                           : cudaMemsetAsync(dY, 0xff, sizeof(float) * ny, cx->stream);
        if (e != cudaSuccess) return tl_fail(err, "rows test: %s", cudaGetErrorString(e));
        cx->xq_of = NULL;
        if (path == 0) {
            const int r = tlc_matvec_rows(cx, &a, m, a.n_in, err);
            if (r > 0) return tl_fail(err, "rows test: the glu fusion does not take this shape");
            if (r) return -1;
        } else {
            for (int r = 0; r < m; r++) {
                tlc_mv b = a;
                b.x = a.x + (size_t)r * a.n_in;
                b.y[0] = b.y[1] = dY + (size_t)r * a.n_out[0];
                if (tlc_matvec(cx, &b, err)) return -1;
            }
        }
        e = cudaMemcpyAsync(path ? y_one : y_rows, dY, sizeof(float) * ny, cudaMemcpyDeviceToHost, cx->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(cx->stream);
        if (e != cudaSuccess) return tl_fail(err, "rows test: path %d: %s", path, cudaGetErrorString(e));
    }
    return 0;
}

/* The matrices W (and W2 with glu) as stored on the device (wt, qt: tlc_mv's), w_bytes each,
 * against m rows of X: rows_vs_one. */
static int rows_test(int wt, int qt, const void *W, const void *W2, size_t w_bytes, int n_in, int n_out, const float *bias,
                     const float *y0, int glu, const float *X, int m, float *y_rows, float *y_one, tl_error *err) {
    tlc_ctx cx;
    memset(&cx, 0, sizeof cx);
    if (cudaSetDevice(0) != cudaSuccess || cudaStreamCreateWithFlags(&cx.stream, cudaStreamNonBlocking) != cudaSuccess)
        return tl_fail(err, "rows test: device 0: %s", cudaGetErrorString(cudaGetLastError()));
    void *dW[2] = {NULL, NULL};
    float *dX = NULL, *dY = NULL, *dB = NULL;
    int rc = -1;
    if (wt == WT_Q) { /* the quantized input of TLC_MV_ROWS rows, as a session's workspace holds it */
        cx.xq_cap = TLC_MV_ROWS * n_in;
        if (cudaMalloc((void **)&cx.xq, (size_t)cx.xq_cap) != cudaSuccess ||
            cudaMalloc((void **)&cx.xd, sizeof(float2) * (size_t)(cx.xq_cap / 32)) != cudaSuccess)
            goto oom;
    }
    for (int s = 0; s < (glu ? 2 : 1); s++)
        if (cudaMalloc(&dW[s], w_bytes) != cudaSuccess || cudaMemcpy(dW[s], s ? W2 : W, w_bytes, cudaMemcpyHostToDevice) != cudaSuccess)
            goto oom;
    if (cudaMalloc((void **)&dX, sizeof(float) * (size_t)m * n_in) != cudaSuccess ||
        cudaMalloc((void **)&dY, sizeof(float) * (size_t)m * n_out) != cudaSuccess ||
        (bias && cudaMalloc((void **)&dB, sizeof(float) * n_out) != cudaSuccess) ||
        cudaMemcpy(dX, X, sizeof(float) * (size_t)m * n_in, cudaMemcpyHostToDevice) != cudaSuccess ||
        (bias && cudaMemcpy(dB, bias, sizeof(float) * n_out, cudaMemcpyHostToDevice) != cudaSuccess))
        goto oom;
    {
        tlc_mv a;
        memset(&a, 0, sizeof a);
        a.nseg = glu ? 2 : 1;
        a.n_in = n_in;
        a.wt = wt;
        a.qt = qt;
        a.glu = glu;
        a.x = dX;
        for (int s = 0; s < a.nseg; s++) {
            a.W[s] = dW[s];
            a.y[s] = dY; /* glu writes y[0] only */
            a.n_out[s] = n_out;
        }
        a.bias[0] = glu ? NULL : dB;
        a.add[0] = !glu && y0;
        rc = rows_vs_one(&cx, a, m, dY, y0, y_rows, y_one, err);
    }
    goto done;
oom:
    tl_fail(err, "rows test: out of GPU memory");
done:
    cudaStreamSynchronize(cx.stream);
    void *bufs[] = {dW[0], dW[1], dX, dY, dB, cx.xq, cx.xd};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) cudaFree(bufs[i]);
    cudaStreamDestroy(cx.stream);
    return rc;
}

extern "C" int tl_cuda_matvec_rows_test(int wt, const float *W, const float *W2, int n_in, int n_out, const float *bias,
                                        const float *y0, int glu, const float *X, int m, float *y_rows, float *y_one,
                                        tl_error *err) {
    if (wt < WT_F32 || wt > WT_BF16 || m < 1 || n_in < 1 || n_out < 1 || (glu && !W2))
        return tl_fail(err, "tl_cuda_matvec_rows_test: type %d, %d x %d, %d rows, glu %d", wt, n_out, n_in, m, glu);
    const size_t nw = (size_t)n_in * n_out, es = wt == WT_F32 ? 4 : 2;
    void *host[2] = {malloc(nw * es), malloc(nw * es)};
    for (int s = 0; s < (glu ? 2 : 1); s++) {
        const float *src = s ? W2 : W;
        for (size_t i = 0; i < nw; i++) {
            if (wt == WT_F32) ((float *)host[s])[i] = src[i];
            else ((uint16_t *)host[s])[i] = wt == WT_F16 ? tl_fp32_to_fp16(src[i]) : tl_fp32_to_bf16(src[i]);
        }
    }
    const int rc = rows_test(wt, 0, host[0], host[1], nw * es, n_in, n_out, bias, y0, glu, X, m, y_rows, y_one, err);
    free(host[0]);
    free(host[1]);
    return rc;
}

extern "C" int tl_cuda_qmatvec_rows_test(int t, const void *W, const void *W2, int n_in, int n_out, const float *bias,
                                         const float *y0, int glu, const float *X, int m, float *y_rows, float *y_one,
                                         tl_error *err) {
    const size_t rb = tlc_qtype_has_kernels(t) ? tl_row_size((tl_type)t, n_in) : 0;
    if (!rb || m < 1 || n_out < 1 || (glu && !W2))
        return tl_fail(err, "tl_cuda_qmatvec_rows_test: %s, %d x %d, %d rows, glu %d", tl_type_name(t), n_out, n_in, m, glu);
    return rows_test(WT_Q, t, W, W2, rb * n_out, n_in, n_out, bias, y0, glu, X, m, y_rows, y_one, err);
}
