/* kernels.cuh: device-side pieces shared by the CUDA backend's translation units: the KV side
 * description (the CPU store's layouts, src/kv/quant.c and quant_kernels.h) and the
 * quantizer, bit for bit like the CPU's (f16 parameters, round-to-nearest-even codes). */
#ifndef TL_CUDA_KERNELS_CUH
#define TL_CUDA_KERNELS_CUH

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

enum { KV_DENSE = 0, KV_SLIDE = 1, KV_FLUSH = 2 };
enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };

/* One side (K or V) of one layer's cache on the device, per KV head h:
 *   DENSE: fp rows [h][cap][d] of type dt; token t in row t % cap (cap = n_ctx, or the window)
 *   SLIDE: codes [h][n_ctx][row_bytes] (token layout, d/32 units of 4*bits bytes),
 *          params [h][n_ctx][pstride] halves (d/g groups x ppg), f16 ring [h][R][d] of the R
 *          latest tokens (slot t % R); tokens < nq are quantized
 *   FLUSH: (per-channel, KIVI keys) per token group of g: codes [h][grp][d][g/32 units],
 *          params [h][grp][d][ppg], f16 block [h][R][d] of the tokens >= nq (slot t - nq) */
struct kv_side {
    int mode, dt, bits, sym, g, R, d, cap, ppg, pstride, nq;
    size_t row_bytes, grp_bytes, grp_halves, codes_head, params_head, fp_head;
    uint8_t *codes;
    uint16_t *params;
    void *fp;
};

/* Max and sum over the 32 lanes of a warp (every lane gets the result). */
__device__ __forceinline__ float wmax(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float wsum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One activation block of 32 values as int8 codes, a value per lane (the whole warp calls it):
 * xq[lane] = round(v / d), and lane 0 writes *xd = (d, d * sum of the codes), d = max|v| / 127.
 * The one rounding of quantized-weight products' inputs (quant_x_k, rmsnorm_quant_k). */
__device__ __forceinline__ void quant_block32(float v, int lane, int8_t *xq, float2 *xd) {
    const float amax = wmax(fabsf(v));
    const float d = amax / 127.0f;
    const int q = amax > 0.0f ? __float2int_rn(v / d) : 0;
    const float sum = wsum((float)q);
    xq[lane] = (int8_t)q;
    if (lane == 0) *xd = make_float2(d, d * sum);
}

__device__ __forceinline__ float f16r(float x) { return __half2float(__float2half_rn(x)); }
__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

/* kvq_params_range + kvq_decode_params: the (s, z) a group with range [mn, mx] gets, and the
 * halves stored for it. */
__device__ __forceinline__ void q_params(float mn, float mx, int bits, int sym, uint16_t *p0, uint16_t *p1, float *s,
                                         float *z) {
    if (sym) {
        const float amax = fmaxf(fabsf(mn), fabsf(mx));
        const int qm = (1 << (bits - 1)) - 1;
        *p0 = __half_as_ushort(__float2half_rn(amax / (float)qm));
        *s = h2f(*p0);
        *z = -(float)(1 << (bits - 1)) * *s;
    } else {
        const int qm = (1 << bits) - 1;
        *p0 = __half_as_ushort(__float2half_rn((mx - mn) / (float)qm));
        *p1 = __half_as_ushort(__float2half_rn(mn));
        *s = h2f(*p0);
        *z = h2f(*p1);
    }
}

/* kvq_encode */
__device__ __forceinline__ int q_encode(float x, float s, float z, int bits) {
    const int qm = (1 << bits) - 1;
    if (!(s > 0)) return 0;
    const float q = rintf((x - z) / s);
    return q < 0 ? 0 : q > (float)qm ? qm : (int)q;
}

/* The whole warp holds code c (lane i = code i of a 32-value unit); writes the unit's 4*bits
 * bytes at dst in kvq_pack32's layout. */
__device__ __forceinline__ void q_pack_warp(int c, int bits, uint8_t *dst) {
    const int lane = threadIdx.x & 31;
    if (bits == 8) {
        dst[lane] = (uint8_t)c;
    } else if (bits == 4) {
        const int hi = __shfl_down_sync(0xffffffffu, c, 16);
        if (lane < 16) dst[lane] = (uint8_t)(c | hi << 4);
    } else if (bits == 2) {
        const int c8 = __shfl_down_sync(0xffffffffu, c, 8), c16 = __shfl_down_sync(0xffffffffu, c, 16),
                  c24 = __shfl_down_sync(0xffffffffu, c, 24);
        if (lane < 8) dst[lane] = (uint8_t)(c | c8 << 2 | c16 << 4 | c24 << 6);
    } else {
        const unsigned m = __ballot_sync(0xffffffffu, c & 1);
        if (lane < 4) dst[lane] = (uint8_t)(m >> (8 * lane));
    }
}

/* Code i of a unit read straight from memory (one byte load). */
__device__ __forceinline__ int q_code_mem(const uint8_t *u, int bits, int i) {
    int byte, shift;
    if (bits == 8) byte = i, shift = 0;
    else if (bits == 4) byte = i & 15, shift = (i >> 4) * 4;
    else if (bits == 2) byte = i & 7, shift = (i >> 3) * 2;
    else byte = i >> 3, shift = i & 7;
    return (int)(u[byte] >> shift) & ((1 << bits) - 1);
}

/* All 32 values of a unit: out[i * os] = code_i * s + z (B compile-time: codes stay in registers). */
template <int B>
__device__ __forceinline__ void q_unit_decode(const uint8_t *u, float s, float z, float *out, int os) {
    uint32_t w[B];
#pragma unroll
    for (int k = 0; k < B; k++) w[k] = ((const uint32_t *)u)[k];
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int byte, shift;
        if (B == 8) byte = i, shift = 0;
        else if (B == 4) byte = i & 15, shift = (i >> 4) * 4;
        else if (B == 2) byte = i & 7, shift = (i >> 3) * 2;
        else byte = i >> 3, shift = i & 7;
        const int code = (int)((w[byte >> 2] >> (8 * (byte & 3) + shift)) & ((1u << B) - 1));
        out[i * os] = (float)code * s + z;
    }
}

__device__ __forceinline__ void q_unit_decode_any(int bits, const uint8_t *u, float s, float z, float *out, int os) {
    switch (bits) {
    case 8: q_unit_decode<8>(u, s, z, out, os); break;
    case 4: q_unit_decode<4>(u, s, z, out, os); break;
    case 2: q_unit_decode<2>(u, s, z, out, os); break;
    default: q_unit_decode<1>(u, s, z, out, os); break;
    }
}

__device__ __forceinline__ void q_decode_params(const uint16_t *p, int bits, int sym, float *s, float *z) {
    *s = h2f(p[0]);
    *z = sym ? -(float)(1 << (bits - 1)) * *s : h2f(p[1]);
}

#endif
