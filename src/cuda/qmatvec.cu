/* qmatvec.cu: weights that stay in their GGUF block formats on the device (q8_0, q4_0, q4_1,
 * q5_0, q5_1, q4_K, q5_K, q6_K, w4g128), byte for byte as in the file (cpu/quants_internal.h).
 *
 * Decode (one token): the input vector is quantized once per product to int8 blocks of 32
 * values (xq) with a float scale d and d * sum(q) per block (xd, like q8_1 but in f32), then
 * a warp per output row walks the row in "units" (a 32-value block, or 64 values of a K, q6_K
 * or w4g128 block: two activation blocks whose codes share one set of weight bytes), one unit
 * per lane at a time. The integer dot of a unit's codes with
 * the activation codes is taken four bytes at a time by __dp4a, and the block scales and
 * minimums are applied once per 32 (q6_K: 16) values:
 *   sum_j (d q_j + m) dx xq_j = d dx sum(q xq) + m (dx sum(xq)),
 * with the zero points of q4_0 / q5_0 / q6_K folded in the same way. Weights are read with
 * loads as wide as the format's alignment allows: 16 bytes for q4_K / q5_K codes and the K
 * blocks' 16-byte headers, 4 bytes for q4_1 / q5_1 / w4g128, and for the formats of odd block
 * size (q4_0, q5_0, q8_0, q6_K, 2-byte aligned) aligned 4-byte words funnel-shifted into place.
 * q/k/v share one launch, gate/up run in one warp per row pairs with the activation fused,
 * bias and residual add are fused: the same interface as matvec.cu (tlc_mv).
 *
 * Beside it, for tests, a reference: one thread per output row, every weight dequantized
 * element by element (qval, the CPU's tl_dequantize_row in the same float operations) and
 * multiplied with the f32 input.
 *
 * Prefill (several rows) dequantizes a slab of rows to f16 (deq_f16_k, through qval) into a
 * workspace and multiplies with cuBLAS (linear.cu); the embedding rows are read through qval. */
#include "backend.cuh"

extern "C" {
#include "../cpu/quants_internal.h"
}

#define QMV_THR 256
#define QMV_WARPS (QMV_THR / 32)

/* Values per block, bytes per block, values per unit of the fast kernel. */
template <int T> struct qfmt;
template <> struct qfmt<TL_TYPE_Q4_0> { enum { BV = 32, BB = sizeof(blk_q4_0), VPU = 32 }; };
template <> struct qfmt<TL_TYPE_Q4_1> { enum { BV = 32, BB = sizeof(blk_q4_1), VPU = 32 }; };
template <> struct qfmt<TL_TYPE_Q5_0> { enum { BV = 32, BB = sizeof(blk_q5_0), VPU = 32 }; };
template <> struct qfmt<TL_TYPE_Q5_1> { enum { BV = 32, BB = sizeof(blk_q5_1), VPU = 32 }; };
template <> struct qfmt<TL_TYPE_Q8_0> { enum { BV = 32, BB = sizeof(blk_q8_0), VPU = 32 }; };
template <> struct qfmt<TL_TYPE_Q4_K> { enum { BV = QKK, BB = sizeof(blk_q4_K), VPU = 64 }; };
template <> struct qfmt<TL_TYPE_Q5_K> { enum { BV = QKK, BB = sizeof(blk_q5_K), VPU = 64 }; };
template <> struct qfmt<TL_TYPE_Q6_K> { enum { BV = QKK, BB = sizeof(blk_q6_K), VPU = 64 }; };
template <> struct qfmt<TL_TYPE_W4G128> { enum { BV = QW4, BB = sizeof(blk_w4g128), VPU = 64 }; };

extern "C" bool tlc_qtype_has_kernels(int t) {
    switch (t) {
    case TL_TYPE_Q4_0: case TL_TYPE_Q4_1: case TL_TYPE_Q5_0: case TL_TYPE_Q5_1: case TL_TYPE_Q8_0:
    case TL_TYPE_Q4_K: case TL_TYPE_Q5_K: case TL_TYPE_Q6_K: case TL_TYPE_W4G128: return true;
    default: return false;
    }
}

/* Run F<T>::run(args) for the block type qt. */
template <template <int> class F, typename... A>
static cudaError_t qdispatch(int qt, A... args) {
    switch (qt) {
    case TL_TYPE_Q4_0: return F<TL_TYPE_Q4_0>::run(args...);
    case TL_TYPE_Q4_1: return F<TL_TYPE_Q4_1>::run(args...);
    case TL_TYPE_Q5_0: return F<TL_TYPE_Q5_0>::run(args...);
    case TL_TYPE_Q5_1: return F<TL_TYPE_Q5_1>::run(args...);
    case TL_TYPE_Q8_0: return F<TL_TYPE_Q8_0>::run(args...);
    case TL_TYPE_Q4_K: return F<TL_TYPE_Q4_K>::run(args...);
    case TL_TYPE_Q5_K: return F<TL_TYPE_Q5_K>::run(args...);
    case TL_TYPE_Q6_K: return F<TL_TYPE_Q6_K>::run(args...);
    case TL_TYPE_W4G128: return F<TL_TYPE_W4G128>::run(args...);
    default: return cudaErrorInvalidValue;
    }
}

/* ---------------- element by element (reference, dequantization, embeddings) ---------------- */

__device__ __forceinline__ uint32_t u32_at(const uint8_t *p) { /* p 2-byte aligned */
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}

/* q4_K / q5_K scale and min of sub-block j (tlq_scale_min_k4). */
__device__ __forceinline__ void kscale(const uint8_t *q, int j, int &sc, int &mn) {
    if (j < 4) {
        sc = q[j] & 63;
        mn = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Value i of a row: the CPU's dequantizers (cpu/quants.c, cpu/quants_kquants.c, cpu/quants_w4.c), the same
 * float operations in the same order. */
template <int T>
__device__ __forceinline__ float qval(const uint8_t *row, int i) {
    const int j = i % qfmt<T>::BV;
    const uint8_t *bp = row + (size_t)(i / qfmt<T>::BV) * qfmt<T>::BB;
    if (T == TL_TYPE_Q4_0) {
        const blk_q4_0 *b = (const blk_q4_0 *)bp;
        const int q = j < 16 ? b->qs[j] & 0xF : b->qs[j - 16] >> 4;
        return (q - 8) * h2f(b->d);
    } else if (T == TL_TYPE_Q4_1) {
        const blk_q4_1 *b = (const blk_q4_1 *)bp;
        const int q = j < 16 ? b->qs[j] & 0xF : b->qs[j - 16] >> 4;
        return q * h2f(b->d) + h2f(b->m);
    } else if (T == TL_TYPE_Q5_0 || T == TL_TYPE_Q5_1) {
        const uint8_t *qs = T == TL_TYPE_Q5_0 ? ((const blk_q5_0 *)bp)->qs : ((const blk_q5_1 *)bp)->qs;
        const uint8_t *qhb = T == TL_TYPE_Q5_0 ? ((const blk_q5_0 *)bp)->qh : ((const blk_q5_1 *)bp)->qh;
        const uint32_t qh = qhb[0] | (qhb[1] << 8) | (qhb[2] << 16) | ((uint32_t)qhb[3] << 24);
        const int q = (j < 16 ? qs[j] & 0xF : qs[j - 16] >> 4) | (int)(((qh >> j) & 1) << 4);
        if (T == TL_TYPE_Q5_0) return (q - 16) * h2f(((const blk_q5_0 *)bp)->d);
        return q * h2f(((const blk_q5_1 *)bp)->d) + h2f(((const blk_q5_1 *)bp)->m);
    } else if (T == TL_TYPE_Q8_0) {
        const blk_q8_0 *b = (const blk_q8_0 *)bp;
        return b->qs[j] * h2f(b->d);
    } else if (T == TL_TYPE_Q4_K || T == TL_TYPE_Q5_K) {
        const uint8_t *qs = T == TL_TYPE_Q4_K ? ((const blk_q4_K *)bp)->qs : ((const blk_q5_K *)bp)->qs;
        const uint8_t *scales = T == TL_TYPE_Q4_K ? ((const blk_q4_K *)bp)->scales : ((const blk_q5_K *)bp)->scales;
        const uint16_t *dd = (const uint16_t *)bp; /* d, dmin first in both */
        int sc, mn;
        kscale(scales, j / 32, sc, mn);
        const int g = j / 64, r = j % 64;
        int q = r < 32 ? qs[32 * g + r] & 0xF : qs[32 * g + r - 32] >> 4;
        if (T == TL_TYPE_Q5_K) q |= ((((const blk_q5_K *)bp)->qh[r % 32] >> (2 * g + r / 32)) & 1) << 4;
        const float d1 = h2f(dd[0]) * sc, m1 = h2f(dd[1]) * mn;
        return d1 * q - m1;
    } else if (T == TL_TYPE_Q6_K) {
        const blk_q6_K *b = (const blk_q6_K *)bp;
        const int h = j / 128, r = j % 128, q4 = r / 32, l = r % 32;
        const uint8_t *ql = b->ql + 64 * h;
        const int lo = (ql[l + 32 * (q4 & 1)] >> (4 * (q4 >> 1))) & 0xF;
        const int q = lo | (((b->qh[32 * h + l] >> (2 * q4)) & 3) << 4);
        return h2f(b->d) * b->scales[j / 16] * (q - 32);
    } else {
        const blk_w4g128 *b = (const blk_w4g128 *)bp;
        const int q = j < QW4 / 2 ? b->qs[j] & 0xF : b->qs[j - QW4 / 2] >> 4;
        return (float)q * h2f(b->d) + h2f(b->m);
    }
}

template <int T>
__global__ void qmatvec_ref_k(const uint8_t *W, size_t rb, int n_in, int n_out, const float *x, float *y) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_out) return;
    const uint8_t *row = W + (size_t)r * rb;
    float acc = 0.0f;
    for (int i = 0; i < n_in; i++) acc = fmaf(qval<T>(row, i), x[i], acc);
    y[r] = acc;
}

/* Rows r0 .. r0 + nr - 1 to f16, row-major [nr][n_in]; a thread writes 8 values. */
template <int T>
__global__ void deq_f16_k(const uint8_t *W, size_t rb, int n_in, int r0, int nr, uint4 *out) {
    const int n8 = n_in / 8;
    const size_t total = (size_t)nr * n8;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        const int r = (int)(e / n8), c = (int)(e % n8) * 8;
        const uint8_t *row = W + (size_t)(r0 + r) * rb;
        uint32_t u[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const __half2 h = __floats2half2_rn(qval<T>(row, c + 2 * k), qval<T>(row, c + 2 * k + 1));
            u[k] = *(const uint32_t *)&h;
        }
        out[e] = make_uint4(u[0], u[1], u[2], u[3]);
    }
}

template <int T>
__global__ void embed_q_k(const uint8_t *E, size_t rb, const int32_t *tok, int n_embd, float scale, float *x) {
    const int t = blockIdx.x;
    const uint8_t *row = E + (size_t)tok[t] * rb;
    for (int i = threadIdx.x; i < n_embd; i += blockDim.x) x[(size_t)t * n_embd + i] = qval<T>(row, i) * scale;
}

/* ---------------- the decode kernel ---------------- */

/* x as int8 blocks of 32: xq[32 b .. 32 b + 31] = round(x / d_b), xd[b] = (d_b, d_b * sum). */
__global__ void quant_x_k(const float *x, int n, int8_t *xq, float2 *xd) {
    pdl_trigger();
    pdl_wait();
    const int b = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (b >= n / 32) return; /* whole warps */
    quant_block32(x[32 * b + lane], lane, xq + 32 * b, xd + b);
}

/* The 8 words (32 codes) of activation block b. */
__device__ __forceinline__ void ldx(const int8_t *xq, int b, int *x) {
    const int4 *p = (const int4 *)(xq + 32 * (size_t)b);
    const int4 a = __ldg(p), c = __ldg(p + 1);
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = c.x, x[5] = c.y, x[6] = c.z, x[7] = c.w;
}

/* kscale from the 12 scale bytes held as three words w0 w1 w2 (a load each instead of byte
 * loads): bytes j, j + 4, j + 8 (j < 4) or j - 4, j, j + 4 (j >= 4) are byte j & 3 of each word. */
__device__ __forceinline__ void kscale_w(uint32_t w0, uint32_t w1, uint32_t w2, int j, int &sc, int &mn) {
    const int k = 8 * (j & 3);
    const int b0 = (w0 >> k) & 0xFF, b1 = (w1 >> k) & 0xFF, b2 = (w2 >> k) & 0xFF;
    if (j < 4) {
        sc = b0 & 63;
        mn = b1 & 63;
    } else {
        sc = (b2 & 0xF) | ((b0 >> 6) << 4);
        mn = (b2 >> 4) | ((b1 >> 6) << 4);
    }
}

/* Spread the low 4 bits of b to bit 4 of each byte (the fifth bit of four q5 codes). */
__device__ __forceinline__ int spread4(uint32_t b) {
    return (int)(((b & 1) << 4) | ((b & 2) << 11) | ((b & 4) << 18) | ((b & 8) << 25));
}

/* NW words from p, which is 2-byte aligned (the blocks of odd size: q8_0, q4_0, q5_0, q6_K): aligned
 * word loads funnel-shifted into place, one more load than words when p is not 4-byte aligned
 * (it reads at most 2 bytes past the NW words, within the same aligned word). */
template <int NW>
__device__ __forceinline__ void ldw(const uint8_t *p, uint32_t *w) {
    const int mis = (int)((uintptr_t)p & 3);
    const uint32_t *a = (const uint32_t *)(p - mis);
    uint32_t t[NW + 1];
#pragma unroll
    for (int k = 0; k < NW; k++) t[k] = a[k];
    t[NW] = mis ? a[NW] : 0u;
#pragma unroll
    for (int k = 0; k < NW; k++) w[k] = __funnelshift_r(t[k], t[k + 1], 8 * mis);
}

/* The activation codes a unit meets: NB blocks of 32 (two for the 64-value units), loaded once
 * per unit and shared by every row a warp computes. */
template <int T> struct xunit {
    enum { NB = qfmt<T>::VPU / 32 };
    int x[NB][8];
    float2 d[NB];
};

template <int T>
__device__ __forceinline__ void load_xunit(int u, const int8_t *__restrict__ xq, const float2 *__restrict__ xd, xunit<T> &X) {
    int b0 = u, b1 = 0;
    if (T == TL_TYPE_Q4_K || T == TL_TYPE_Q5_K) b0 = 2 * u, b1 = b0 + 1; /* sub-blocks 2p, 2p + 1 of super-block u / 4 */
    if (T == TL_TYPE_W4G128 || T == TL_TYPE_Q6_K) b0 = 2 * u - (u & 1), b1 = b0 + 2; /* low nibbles, then high */
    ldx(xq, b0, X.x[0]);
    X.d[0] = __ldg(xd + b0);
    if (xunit<T>::NB > 1) {
        ldx(xq, b1, X.x[xunit<T>::NB - 1]);
        X.d[xunit<T>::NB - 1] = __ldg(xd + b1);
    }
}

/* Unit u of a row against the quantized input X (load_xunit): its part of the row's dot product. */
template <int T>
__device__ __forceinline__ float unit_dot(const uint8_t *__restrict__ row, int u, const xunit<T> &X) {
    const uint32_t M4 = 0x0F0F0F0Fu;
    const int *x = X.x[0];
    if (T == TL_TYPE_Q8_0) {
        const uint8_t *bp = row + (size_t)u * qfmt<T>::BB;
        uint32_t w[8];
        ldw<8>(bp + 2, w);
        int s = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) s = __dp4a((int)w[k], x[k], s);
        return h2f(*(const uint16_t *)bp) * X.d[0].x * (float)s;
    } else if (T == TL_TYPE_Q4_0 || T == TL_TYPE_Q5_0) {
        const uint8_t *bp = row + (size_t)u * qfmt<T>::BB;
        const uint8_t *qs = bp + (T == TL_TYPE_Q4_0 ? 2 : 6);
        const uint32_t qh = T == TL_TYPE_Q5_0 ? u32_at(bp + 2) : 0;
        uint32_t ws[4];
        ldw<4>(qs, ws);
        int s = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t w = ws[k];
            int lo = (int)(w & M4), hi = (int)((w >> 4) & M4);
            if (T == TL_TYPE_Q5_0) {
                lo |= spread4(qh >> (4 * k));
                hi |= spread4(qh >> (16 + 4 * k));
            }
            s = __dp4a(lo, x[k], s);
            s = __dp4a(hi, x[4 + k], s);
        }
        const float zero = T == TL_TYPE_Q4_0 ? 8.0f : 16.0f;
        return h2f(*(const uint16_t *)bp) * (X.d[0].x * (float)s - zero * X.d[0].y);
    } else if (T == TL_TYPE_Q4_1 || T == TL_TYPE_Q5_1) {
        const uint8_t *bp = row + (size_t)u * qfmt<T>::BB; /* 4-byte aligned */
        const uint32_t *qs = (const uint32_t *)(bp + (T == TL_TYPE_Q4_1 ? 4 : 8));
        const uint32_t qh = T == TL_TYPE_Q5_1 ? *(const uint32_t *)(bp + 4) : 0;
        const uint32_t dm = *(const uint32_t *)bp;
        int s = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t w = qs[k];
            int lo = (int)(w & M4), hi = (int)((w >> 4) & M4);
            if (T == TL_TYPE_Q5_1) {
                lo |= spread4(qh >> (4 * k));
                hi |= spread4(qh >> (16 + 4 * k));
            }
            s = __dp4a(lo, x[k], s);
            s = __dp4a(hi, x[4 + k], s);
        }
        return h2f((uint16_t)dm) * X.d[0].x * (float)s + h2f((uint16_t)(dm >> 16)) * X.d[0].y;
    } else if (T == TL_TYPE_Q4_K || T == TL_TYPE_Q5_K) {
        /* unit = sub-blocks 2p and 2p+1 of super-block sb: 32 code bytes, low nibbles the
         * first sub-block, high nibbles the second (q5_K: bits 2p and 2p+1 of qh); the block's
         * first 16 bytes (d, dmin, the 12 scale bytes) in one load */
        const int sb = u >> 2, p = u & 3;
        const uint8_t *bp = row + (size_t)sb * qfmt<T>::BB; /* 16-byte aligned */
        const uint4 hd = *(const uint4 *)bp;
        const uint4 *q4 = (const uint4 *)(bp + (T == TL_TYPE_Q4_K ? 16 : 48) + 32 * p);
        const uint4 c0 = q4[0], c1 = q4[1];
        const uint32_t w[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
        uint32_t qh[8];
        if (T == TL_TYPE_Q5_K) {
            const uint4 h0 = ((const uint4 *)(bp + 16))[0], h1 = ((const uint4 *)(bp + 16))[1];
            qh[0] = h0.x, qh[1] = h0.y, qh[2] = h0.z, qh[3] = h0.w, qh[4] = h1.x, qh[5] = h1.y, qh[6] = h1.z, qh[7] = h1.w;
        }
        int sc0, m0, sc1, m1;
        kscale_w(hd.y, hd.z, hd.w, 2 * p, sc0, m0);
        kscale_w(hd.y, hd.z, hd.w, 2 * p + 1, sc1, m1);
        int s0 = 0, s1 = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int lo = (int)(w[k] & M4), hi = (int)((w[k] >> 4) & M4);
            if (T == TL_TYPE_Q5_K) {
                lo |= (int)(((qh[k] >> (2 * p)) & 0x01010101u) << 4);
                hi |= (int)(((qh[k] >> (2 * p + 1)) & 0x01010101u) << 4);
            }
            s0 = __dp4a(lo, X.x[0][k], s0);
            s1 = __dp4a(hi, X.x[1][k], s1);
        }
        return h2f((uint16_t)hd.x) * ((float)sc0 * X.d[0].x * (float)s0 + (float)sc1 * X.d[1].x * (float)s1) -
               h2f((uint16_t)(hd.x >> 16)) * ((float)m0 * X.d[0].y + (float)m1 * X.d[1].y);
    } else if (T == TL_TYPE_Q6_K) {
        /* unit u = 4 sb + 2 h + q (q = 0, 1): activation blocks b0 = 8 sb + 4 h + q and b0 + 2 of
         * half h of super-block sb. The 32 ql bytes at 64 h + 32 q hold b0's low 4 bits in their
         * low nibbles and b0 + 2's in their high ones; the 32 qh bytes at 128 + 32 h hold their
         * top 2 bits at bits 2q and 2q + 4 of each byte; a scale per 16 values */
        const int sb = u >> 2, h = (u >> 1) & 1, q = u & 1;
        const uint8_t *bp = row + (size_t)sb * qfmt<T>::BB; /* 2-byte aligned */
        uint32_t L[8], H[8];
        ldw<8>(bp + 64 * h + 32 * q, L);
        ldw<8>(bp + QKK / 2 + 32 * h, H);
        const uint16_t sc0 = *(const uint16_t *)(bp + QKK / 2 + QKK / 4 + 8 * h + 2 * q); /* scales of b0 */
        const uint16_t sc1 = *(const uint16_t *)(bp + QKK / 2 + QKK / 4 + 8 * h + 2 * q + 4); /* of b0 + 2 */
        int s00 = 0, s01 = 0, s10 = 0, s11 = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t v0 = (L[k] & M4) | (((H[k] >> (2 * q)) & 0x03030303u) << 4);
            const uint32_t v1 = ((L[k] >> 4) & M4) | (((H[k] >> (2 * q + 4)) & 0x03030303u) << 4);
            const int c0 = (int)__vsub4(v0, 0x20202020u), c1 = (int)__vsub4(v1, 0x20202020u); /* code - 32 per byte */
            if (k < 4) {
                s00 = __dp4a(c0, X.x[0][k], s00);
                s10 = __dp4a(c1, X.x[1][k], s10);
            } else {
                s01 = __dp4a(c0, X.x[0][k], s01);
                s11 = __dp4a(c1, X.x[1][k], s11);
            }
        }
        const float d = h2f(*(const uint16_t *)(bp + QKK / 2 + QKK / 4 + QKK / 16));
        return d * (X.d[0].x * ((float)(int8_t)sc0 * (float)s00 + (float)(int8_t)(sc0 >> 8) * (float)s01) +
                    X.d[1].x * ((float)(int8_t)sc1 * (float)s10 + (float)(int8_t)(sc1 >> 8) * (float)s11));
    } else {
        /* w4g128: unit = code bytes 32 v .. 32 v + 31 of group g: low nibbles are values
         * 32 v + r (activation block 4 g + v), high nibbles 64 + 32 v + r (block 4 g + 2 + v) */
        const int g = u >> 1, v = u & 1;
        const uint8_t *bp = row + (size_t)g * qfmt<T>::BB; /* 4-byte aligned */
        const uint32_t *qs = (const uint32_t *)(bp + 4 + 32 * v);
        const uint32_t dm = *(const uint32_t *)bp;
        int s0 = 0, s1 = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t w = qs[k];
            s0 = __dp4a((int)(w & M4), X.x[0][k], s0);
            s1 = __dp4a((int)((w >> 4) & M4), X.x[1][k], s1);
        }
        return h2f((uint16_t)dm) * (X.d[0].x * (float)s0 + X.d[1].x * (float)s1) +
               h2f((uint16_t)(dm >> 16)) * (X.d[0].y + X.d[1].y);
    }
}

__device__ __forceinline__ float qmv_act(float x, int glu) {
    if (glu == 2) return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return x / (1.0f + expf(-x));
}

/* A warp per output row (GLU: the same row of gate and of up, sharing the activation loads),
 * each lane a unit at a time, against nr <= NR input rows (row r's codes at xq + r n_in, its
 * outputs at y[s] + r n_out[s]). A sequence alone runs NR = 1; the batched step's decode rows
 * (batch.cu) run NR = 4 or 8, so a weight unit comes from memory once for all of them (the
 * loads for the rows after the first hit L1). Every (output row, input row) sum is the one
 * NR = 1 gives that input row: the same lane takes the same units in the same order and adds
 * unit_dot's value to its own accumulator, then the same warp sum, bias, residual add and
 * activation -- so a sequence's numbers do not depend on what shares its step (checked bit for
 * bit by tl_cuda_qmatvec_rows_test). Several output rows per warp sharing each activation load
 * were measured slower for one input row (H100, Llama-3.1-8B shapes, Q4_K_M: 2 rows 3.49
 * ms/token, 4 rows 4.46, 1 row 3.39): fewer warps in flight cost more than the saved loads. */
template <int T, int GLU, int NR>
__global__ void __launch_bounds__(QMV_THR) qmatvec_k(tlc_mv a, int nr, const int8_t *xq, const float2 *xd) {
    const int lane = threadIdx.x & 31;
    pdl_trigger();
    int row = blockIdx.x * QMV_WARPS + (threadIdx.x >> 5), si = 0;
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
    const size_t rb = (size_t)(a.n_in / qfmt<T>::BV) * qfmt<T>::BB;
    const uint8_t *W = (const uint8_t *)(si == 0 ? a.W[0] : si == 1 ? a.W[1] : a.W[2]) + row * rb;
    const uint8_t *W1 = (const uint8_t *)a.W[1] + row * rb;
    if (live && (size_t)lane * 128 < rb) { /* the row's first 4 KiB to L2 while the kernels before finish */
        asm volatile("prefetch.global.L2 [%0];" ::"l"(W + lane * 128));
        if (GLU) asm volatile("prefetch.global.L2 [%0];" ::"l"(W1 + lane * 128));
    }
    pdl_wait(); /* xq, xd (and y for add) come from the kernels before */
    if (!live) return;
    const int nu = a.n_in / qfmt<T>::VPU, nb = a.n_in / 32;
    float acc[NR], acc1[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = acc1[r] = 0.0f;
#pragma unroll 2
    for (int u = lane; u < nu; u += 32) {
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r >= nr) break;
            xunit<T> X;
            load_xunit<T>(u, xq + (size_t)r * a.n_in, xd + (size_t)r * nb, X);
            acc[r] += unit_dot<T>(W, u, X);
            if (GLU) acc1[r] += unit_dot<T>(W1, u, X);
        }
    }
    float *y = si == 0 ? a.y[0] : si == 1 ? a.y[1] : a.y[2];
    const float *b = si == 0 ? a.bias[0] : si == 1 ? a.bias[1] : a.bias[2];
    const int add = si == 0 ? a.add[0] : si == 1 ? a.add[1] : a.add[2];
#pragma unroll
    for (int r = 0; r < NR; r++) {
        if (r >= nr) break;
        float s = wsum(acc[r]);
        if (GLU) {
            const float s1 = wsum(acc1[r]);
            if (lane == 0) a.y[0][(size_t)r * a.n_out[0] + row] = qmv_act(s, GLU) * s1;
            continue;
        }
        if (lane) continue;
        float *yr = y + (size_t)r * n_out_s;
        if (b) s += b[row];
        yr[row] = add ? yr[row] + s : s;
    }
}

/* ---------------- launchers ---------------- */

template <int T> struct qmv_run {
    template <int NR>
    static cudaError_t go(const tlc_mv *a, int nr, int blocks, cudaStream_t st, bool pdl, const int8_t *xq, const float2 *xd) {
        if (a->glu == 1) return tlc_launch(pdl, qmatvec_k<T, 1, NR>, dim3(blocks), dim3(QMV_THR), 0, st, *a, nr, xq, xd);
        if (a->glu == 2) return tlc_launch(pdl, qmatvec_k<T, 2, NR>, dim3(blocks), dim3(QMV_THR), 0, st, *a, nr, xq, xd);
        return tlc_launch(pdl, qmatvec_k<T, 0, NR>, dim3(blocks), dim3(QMV_THR), 0, st, *a, nr, xq, xd);
    }
    static cudaError_t run(const tlc_mv *a, int nr, int blocks, cudaStream_t st, bool pdl, const int8_t *xq, const float2 *xd) {
        if (nr == 1) return go<1>(a, nr, blocks, st, pdl, xq, xd);
        if (nr <= 4) return go<4>(a, nr, blocks, st, pdl, xq, xd);
        return go<TLC_MV_ROWS>(a, nr, blocks, st, pdl, xq, xd);
    }
};

/* The products of a over nr <= TLC_MV_ROWS rows of x (n_in apart), quantized into xq/xd unless
 * x is cx->xq_of (one row). */
static int qmv_launch(tlc_ctx *cx, const tlc_mv *a, int nr, tl_error *err) {
    if (a->glu && !tlc_glu_shape(a)) return 1;
    if ((size_t)a->n_in * nr > (size_t)cx->xq_cap)
        return tl_fail(err, "quantized matvec: %d rows of %d input columns exceed the activation buffer (%d values)", nr, a->n_in,
                       cx->xq_cap);
    const bool pdl = !cx->no_pdl;
    const int nb = a->n_in / 32 * nr;
    cudaError_t e;
    if (nr > 1 || a->x != cx->xq_of) {
        e = tlc_launch(pdl, quant_x_k, dim3((nb + 7) / 8), dim3(256), 0, cx->stream, a->x, nb * 32, cx->xq, cx->xd);
        if (e != cudaSuccess) return tl_fail(err, "CUDA kernel quantize activations (%d x %d): %s", nr, a->n_in, cudaGetErrorString(e));
        if (nr > 1) cx->xq_of = NULL; /* xq holds several rows now */
    }
    int rows = a->glu ? a->n_out[0] : 0;
    if (!a->glu)
        for (int s = 0; s < a->nseg; s++) rows += a->n_out[s];
    e = qdispatch<qmv_run>(a->qt, a, nr, (rows + QMV_WARPS - 1) / QMV_WARPS, cx->stream, pdl, (const int8_t *)cx->xq,
                           (const float2 *)cx->xd);
    if (e != cudaSuccess)
        return tl_fail(err, "CUDA kernel %s matvec (%d x %d, %d rows): %s", tl_type_name(a->qt), rows, a->n_in, nr,
                       cudaGetErrorString(e));
    return 0;
}

int tlc_qmatvec(tlc_ctx *cx, const tlc_mv *a, tl_error *err) { return qmv_launch(cx, a, 1, err); }

int tlc_qmatvec_rows(tlc_ctx *cx, const tlc_mv *a, int nr, tl_error *err) {
    for (int r0 = 0; r0 < nr; r0 += TLC_MV_ROWS) {
        const int n = TL_MIN(nr - r0, TLC_MV_ROWS);
        tlc_mv b = *a;
        b.x = a->x + (size_t)r0 * a->n_in;
        for (int s = 0; s < a->nseg; s++) b.y[s] = a->y[s] + (size_t)r0 * a->n_out[s];
        if (n == 1) cx->xq_of = NULL; /* a lone last row: quantized here too */
        const int rc = qmv_launch(cx, &b, n, err); /* 1 (glu's shape) comes at the first window, before any launch */
        if (rc) return rc;
    }
    return 0;
}

template <int T> struct qref_run {
    static cudaError_t run(const void *W, int n_in, int n_out, const float *x, float *y, cudaStream_t st) {
        const size_t rb = (size_t)(n_in / qfmt<T>::BV) * qfmt<T>::BB;
        qmatvec_ref_k<T><<<(n_out + 127) / 128, 128, 0, st>>>((const uint8_t *)W, rb, n_in, n_out, x, y);
        return cudaGetLastError();
    }
};

int tlc_qmatvec_ref(tlc_ctx *cx, int qt, const void *W, int n_in, int n_out, const float *x, float *y, tl_error *err) {
    cudaError_t e = qdispatch<qref_run>(qt, W, n_in, n_out, x, y, cx->stream);
    if (e != cudaSuccess) return tl_fail(err, "CUDA kernel %s reference matvec: %s", tl_type_name(qt), cudaGetErrorString(e));
    return 0;
}

template <int T> struct qdeq_run {
    static cudaError_t run(const void *W, int n_in, int r0, int nr, uint16_t *out, cudaStream_t st) {
        const size_t rb = (size_t)(n_in / qfmt<T>::BV) * qfmt<T>::BB, n8 = (size_t)nr * (n_in / 8);
        const size_t blocks = TL_MIN((n8 + 255) / 256, (size_t)65536);
        deq_f16_k<T><<<(unsigned)(blocks ? blocks : 1), 256, 0, st>>>((const uint8_t *)W, rb, n_in, r0, nr, (uint4 *)out);
        return cudaGetLastError();
    }
};

int tlc_qdequant(tlc_ctx *cx, int qt, const void *W, int n_in, int r0, int nr, uint16_t *out, tl_error *err) {
    cudaError_t e = qdispatch<qdeq_run>(qt, W, n_in, r0, nr, out, cx->stream);
    if (e != cudaSuccess) return tl_fail(err, "CUDA kernel %s dequantize (%d rows): %s", tl_type_name(qt), nr, cudaGetErrorString(e));
    return 0;
}

template <int T> struct qembed_run {
    static cudaError_t run(const void *E, int n_embd, const int32_t *tok, int n, float scale, float *x, cudaStream_t st) {
        const size_t rb = (size_t)(n_embd / qfmt<T>::BV) * qfmt<T>::BB;
        embed_q_k<T><<<n, n_embd >= 256 ? 256 : 64, 0, st>>>((const uint8_t *)E, rb, tok, n_embd, scale, x);
        return cudaGetLastError();
    }
};

int tlc_qembed(tlc_ctx *cx, int qt, const void *E, int n_embd, const int32_t *tok, int n, float scale, float *x, tl_error *err) {
    cudaError_t e = qdispatch<qembed_run>(qt, E, n_embd, tok, n, scale, x, cx->stream);
    if (e != cudaSuccess) return tl_fail(err, "CUDA kernel %s embedding: %s", tl_type_name(qt), cudaGetErrorString(e));
    return 0;
}
