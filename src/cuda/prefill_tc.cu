/* prefill_tc.cu: tensor-core flash attention (FlashAttention-2 style) for prefill chunks
 * (m > 1 query rows) and long-context decode (m = 1, from tlc_ctx.dec_tc_from keys) over a KV
 * cache without a sliding window whose sides are dense f16 or per-token codes (8/4/2 bits,
 * groups of >= 32 channels, f16 residual ring): code tiles are staged by cp.async and
 * dequantized to f16 in shared memory (unit_to_f16), then the same mma.sync path runs. Keys
 * in per-channel codes (KIVI's layout, KV_FLUSH: 8/4/2 bits, token groups of 32/64/128, f16
 * block of the newest tokens) are decoded straight from global memory into the f16 tile
 * (side_convert_chan): a 32-token unit of one channel per thread.
 *
 * attn.cu's general kernel computes in fp32 on CUDA cores (~13 TFLOP/s on an H100); this one
 * uses mma.sync.m16n8k16 (f16 operands, f32 accumulators) with ldmatrix fragments.
 *
 * Work split. The query "items" of one KV head h are (row r, GQA head g) in the order
 * item = r*G + g (head hq = h*G + g); a block takes BM = 64 consecutive items (4 warps x 16),
 * so the G heads sharing a KV head share every K/V tile the block loads. Keys are walked in
 * tiles of BN = 64 tokens, cp.async (16 B) double-buffered in shared memory. History tokens
 * (< n_past) come from the store (row t: no ring wrap without a window); tokens of the chunk
 * itself (n_past..) come from knew/vnew (f32, [m][Hkv][d]) rounded to f16 on the way into
 * shared memory -- exactly what the store holds after tlc_kv_append. Causal mask: item of row
 * r sees keys t <= n_past + r. When there are too few blocks to fill the GPU, the key range is
 * split over blocks (flash-decoding) and the partial states merged by log-sum-exp weights.
 *
 * Numerics: q is scaled by scale*log2(e) and rounded to f16; scores accumulate in f32 in
 * log2 units; online softmax in f32 with exp2; P is rounded to f16 for the PV product, the row
 * sums use the f32 P; O accumulates in f32. Expected relative error vs exact f32 over the same
 * f16 history: ~5e-4 (f16 rounding of q, p and the chunk's own K/V).
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 .row.col f16 -> f32; lane = 4*gq + tq):
 *   A 16x16 (row-major), 4 x .f16x2:  a0 = A[gq][2tq, 2tq+1]     a1 = A[gq+8][2tq, 2tq+1]
 *                                     a2 = A[gq][2tq+8, 2tq+9]   a3 = A[gq+8][2tq+8, 2tq+9]
 *   B 16x8 (k x n, "col": each column contiguous in k), 2 x .f16x2:
 *                                     b0 = B[2tq, 2tq+1][gq]     b1 = B[2tq+8, 2tq+9][gq]
 *   C/D 16x8 f32:                     c0,c1 = C[gq][2tq, 2tq+1]  c2,c3 = C[gq+8][2tq, 2tq+1]
 *   (the lower half of an f16x2 register holds the lower column / k index)
 *   ldmatrix.x4: lanes 8j..8j+7 give the row addresses of matrix j (8 rows of 8 halves);
 *     register j of lane l = matrix j [l/4][2(l%4), 2(l%4)+1]; with .trans it is
 *     matrix j [2(l%4)][l/4], [2(l%4)+1][l/4] (the transpose's row l/4).
 * Uses:
 *   Q (A of S = Q K^T), k-step kk: matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7),
 *     (rows 0-7, cols 8-15), (rows 8-15, cols 8-15) = a0..a3; lane l reads
 *     row (l & 7) + 8*((l >> 3) & 1), col 16kk + 8*(l >> 4).
 *   K (B of S, B[k = channel][n = token] = K[token][channel], rows of Ks are contiguous in the
 *     channel = "col"), tokens n0..n0+15, k-step kk: matrices (tokens 0-7, ch 0-7) = b0 and
 *     (tokens 0-7, ch 8-15) = b1 of n-tile n0; (tokens 8-15, ch 0-7), (tokens 8-15, ch 8-15)
 *     = b0, b1 of n-tile n0+8; lane l reads token n0 + (l & 7) + 8*(l >> 4),
 *     channel 16kk + 8*((l >> 3) & 1).
 *   P (A of O = P V) straight from the S accumulators: keys 16kk..16kk+15 are S n-tiles 2kk
 *     and 2kk+1: a0 = (s[2kk][0], s[2kk][1]), a1 = (s[2kk][2], s[2kk][3]),
 *     a2 = (s[2kk+1][0], s[2kk+1][1]), a3 = (s[2kk+1][2], s[2kk+1][3]).
 *   V (B of O, B[k = token][n = channel] = V[token][channel]: rows of Vs are contiguous in n,
 *     so .trans): tokens 16kk.., channels n0..n0+15: matrices (tokens 0-7, ch 0-7) = b0 and
 *     (tokens 8-15, ch 0-7) = b1 of n-tile n0; (tokens 0-7, ch 8-15), (tokens 8-15, ch 8-15)
 *     = b0, b1 of n-tile n0+8; lane l reads token 16kk + (l & 7) + 8*((l >> 3) & 1),
 *     channel n0 + 8*(l >> 4).
 * Shared rows are padded to D+8 halves (272 or 144 bytes): the 8 row addresses of one
 * ldmatrix matrix then fall in 8 different 16-byte bank groups (conflict-free). */
#include "backend.cuh"
#include "cuda_test.h"
#include "mma.cuh"

#include <limits.h>
#include <math.h>
#include <stdlib.h>

namespace {

constexpr int BM = 64;      /* query items per block (4 warps x 16 rows) */
constexpr int BN = 64;      /* keys per tile */
constexpr int NTH = 128;    /* threads per block */
constexpr int MIN_KEYS_PER_SPLIT = 256;

struct tc_p {
    kv_side K, V; /* dense f16 ([Hkv][cap][D]) or per-token codes (kernels.cuh, KV_SLIDE) */
    const float *q, *knew, *vnew;
    float *out, *part, *ml; /* partials (split runs): acc [Hkv][n_qblk][n_split][BM][D], (m, l) [..][BM][2] */
    int n_past, m, Hq, Hkv, G, n_qblk, n_split, split_len;
    float qscale; /* softmax scale * log2(e) */
};

/* 8 consecutive floats (32-byte aligned) times s, rounded to f16, as one 16-byte word. */
__device__ __forceinline__ uint4 cvt8(const float *src, float s) {
    const float4 a = ((const float4 *)src)[0], b = ((const float4 *)src)[1];
    return make_uint4(pack_h2(a.x * s, a.y * s), pack_h2(a.z * s, a.w * s), pack_h2(b.x * s, b.y * s),
                      pack_h2(b.z * s, b.w * s));
}

/* Shared memory of one side (K or V) of a block. Dense f16 (QB 0): the tile [BN][D+8] twice
 * (cp.async double buffer). Per-token codes (QB > 0 bits): one f16 tile, filled from a
 * double-buffered staging area that cp.async fills with the tile's code rows and parameter
 * rows. Per-channel codes (QB < 0, -QB bits): one f16 tile, no staging. */
template <int D, int QB>
struct side_smem {
    static constexpr int NB = QB ? 1 : 2;                                  /* f16 tiles */
    static constexpr size_t tile_bytes = sizeof(__half) * BN * (D + 8);
    static constexpr size_t code_bytes = QB > 0 ? (size_t)BN * (D / 32) * 4 * QB : 0;
    static constexpr size_t param_bytes = QB > 0 ? (size_t)BN * (D / 32) * 2 * 2 : 0; /* pstride <= (D/32) x 2 halves */
    static constexpr size_t stage_bytes = code_bytes + param_bytes;
    static constexpr size_t bytes = NB * tile_bytes + 2 * stage_bytes;
};

/* Issue the loads of tokens [t0, t0 + BN) of KV head h for one side. Dense: history rows by
 * cp.async into tile, chunk rows (n_past <= t < kend) converted from f32 (xnew, [m][Hkv][D]),
 * rows >= kend zero (masked; zero keeps 0 * garbage out of the PV product). Codes: cp.async of
 * the code rows of quantized tokens (t < nq) into stage, and of the tile's parameter rows when
 * the whole tile is quantized (else side_convert reads them itself). */
template <int D, int QB>
__device__ __forceinline__ void side_issue(const kv_side &S, int h, int t0, int n_past, int kend, const float *xnew,
                                           int Hkv, __half *tile, uint8_t *stage) {
    constexpr int SD = D + 8;
    if constexpr (QB < 0) {
        return; /* per-channel codes: side_convert_chan reads them */
    } else if constexpr (QB == 0) {
        constexpr int CH = D / 8, RSTEP = NTH / CH;
        const int c = threadIdx.x % CH, r0 = threadIdx.x / CH;
        const uint16_t *g = (const uint16_t *)S.fp + h * S.fp_head + c * 8;
        if (t0 + BN <= n_past) {
#pragma unroll
            for (int j = 0; j < BN / RSTEP; j++) {
                const int r = r0 + j * RSTEP;
                cp16(tile + r * SD + c * 8, g + (size_t)(t0 + r) * D);
            }
            return;
        }
        for (int j = 0; j < BN / RSTEP; j++) {
            const int r = r0 + j * RSTEP, t = t0 + r;
            if (t < n_past) {
                cp16(tile + r * SD + c * 8, g + (size_t)t * D);
            } else {
                uint4 w = make_uint4(0, 0, 0, 0);
                if (t < kend) w = cvt8(xnew + (size_t)(t - n_past) * Hkv * D + (size_t)h * D + c * 8, 1.0f);
                *(uint4 *)(tile + r * SD + c * 8) = w;
            }
        }
    } else {
        constexpr int RB = D / 32 * 4 * QB, CPR = RB / 16; /* code bytes and 16-byte chunks per row */
        const int nq = min(S.nq, n_past);
        const uint8_t *cg = S.codes + h * S.codes_head;
        for (int e = threadIdx.x; e < BN * CPR; e += NTH) {
            const int r = e / CPR, c = e % CPR, t = t0 + r;
            if (t < nq) cp16(stage + r * RB + c * 16, cg + (size_t)t * RB + c * 16);
        }
        if (t0 + BN <= nq) {
            const int pb = BN * S.pstride * 2; /* bytes, a multiple of 16 */
            const uint8_t *pg = (const uint8_t *)(S.params + h * S.params_head + (size_t)t0 * S.pstride);
            uint8_t *ps = stage + side_smem<D, QB>::code_bytes;
            for (int c = threadIdx.x; c < pb / 16; c += NTH) cp16(ps + c * 16, pg + c * 16);
        }
    }
}

/* 32 codes of one unit (QB bits, kvq_pack32 layout: code i in byte i % (4 QB), bits
 * (i / (4 QB)) * QB) to f16 x = code * s + z at dst[0..31]: two codes per 32-bit word as
 * 1024 + code (exact f16 bit patterns 0x6400 | code), minus 1024, then one f16 fma. */
template <int QB>
__device__ __forceinline__ void unit_to_f16(const uint32_t *w, __half2 s2, __half2 z2, __half *dst) {
    const __half2 k1024 = __float2half2_rn(1024.0f);
    constexpr uint32_t mask = ((1u << QB) - 1) * 0x00010001u;
#pragma unroll
    for (int i0 = 0; i0 < 32; i0 += 8) {
        constexpr int UB = 4 * QB;
        const int byte = i0 % UB, sh = i0 / UB * QB;
        const uint32_t wa = w[byte / 4], wb = w[byte / 4 + 1];
        const uint32_t x[4] = {__byte_perm(wa, 0, 0x4140), __byte_perm(wa, 0, 0x4342), __byte_perm(wb, 0, 0x4140),
                               __byte_perm(wb, 0, 0x4342)};
        uint32_t o[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t hb = ((x[j] >> sh) & mask) | 0x64006400u;
            const __half2 v = __hfma2(__hsub2(*(const __half2 *)&hb, k1024), s2, z2);
            o[j] = *(const uint32_t *)&v;
        }
        *(uint4 *)(dst + i0) = make_uint4(o[0], o[1], o[2], o[3]);
    }
}

/* A per-channel codes side's f16 tile (tokens t0 .. t0 + BN): the 32-token units of quantized
 * tokens (t < nq; nq is a multiple of the group, itself of 32, so a unit is all quantized or
 * not) decoded by a thread per (unit, channel) -- a warp's lanes take consecutive channels, so
 * each of its 32 row stores writes 64 contiguous bytes; the f16 block's rows (nq <= t < n_past,
 * slot t - nq) and the chunk's rows (f32) copied, rows >= kend zero. */
template <int D, int B>
__device__ __forceinline__ void side_convert_chan(const kv_side &S, int h, int t0, int n_past, int kend,
                                                  const float *xnew, int Hkv, __half *tile) {
    constexpr int SD = D + 8, UB = 4 * B; /* bytes of one 32-code unit */
    const int nq = min(S.nq, n_past);
    for (int e = threadIdx.x; e < (BN / 32) * D; e += NTH) {
        const int u = e / D, c = e % D, t = t0 + 32 * u;
        if (t >= nq) continue;
        const int grp = t / S.g, ui = (t % S.g) / 32;
        const uint32_t *un = (const uint32_t *)(S.codes + h * S.codes_head + grp * S.grp_bytes + ((size_t)c * (S.g / 32) + ui) * UB);
        float s, z;
        q_decode_params(S.params + h * S.params_head + grp * S.grp_halves + (size_t)c * S.ppg, B, S.sym, &s, &z);
        uint32_t w[B];
#pragma unroll
        for (int k = 0; k < B; k++) w[k] = un[k];
        __half *dst = tile + (32 * u) * SD + c;
#pragma unroll
        for (int i = 0; i < 32; i++) { /* kvq_pack32: code i in byte i % (4B), bits (i / (4B)) * B */
            const int byte = i % UB, sh = i / UB * B;
            const int code = (int)((w[byte >> 2] >> (8 * (byte & 3) + sh)) & ((1u << B) - 1));
            dst[i * SD] = __float2half_rn((float)code * s + z);
        }
    }
    constexpr int CH = D / 8;
    for (int e = threadIdx.x; e < BN * CH; e += NTH) {
        const int r = e / CH, c8 = e % CH, t = t0 + r;
        if (t < nq) continue;
        uint4 w = make_uint4(0, 0, 0, 0);
        if (t < n_past) w = *(const uint4 *)((const uint16_t *)S.fp + h * S.fp_head + (size_t)(t - S.nq) * D + c8 * 8);
        else if (t < kend) w = cvt8(xnew + (size_t)(t - n_past) * Hkv * D + (size_t)h * D + c8 * 8, 1.0f);
        *(uint4 *)(tile + r * SD + c8 * 8) = w;
    }
}

/* A per-token codes side's f16 tile from its staging area (after the cp.async wait): quantized
 * tokens decoded, the f16 residual ring's rows (nq <= t < n_past) and the chunk's rows (f32)
 * copied, rows >= kend zero. One 32-channel unit per thread and step. */
template <int D, int QB>
__device__ __forceinline__ void side_convert_tok(const kv_side &S, int h, int t0, int n_past, int kend, const float *xnew,
                                                 int Hkv, const uint8_t *stage, __half *tile) {
    constexpr int SD = D + 8, U = D / 32, RB = U * 4 * QB;
    const int nq = min(S.nq, n_past);
    const uint16_t *pstage = (const uint16_t *)(stage + side_smem<D, QB>::code_bytes);
    for (int e = threadIdx.x; e < BN * U; e += NTH) {
        const int r = e / U, u = e % U, t = t0 + r;
        __half *dst = tile + r * SD + u * 32;
        if (t < nq) {
            const uint16_t *pr = t0 + BN <= nq ? pstage + r * S.pstride : S.params + h * S.params_head + (size_t)t * S.pstride;
            const int gi = u * 32 / S.g * S.ppg;
            const __half sv = __ushort_as_half(pr[gi]);
            const __half zv = S.sym ? __hmul(sv, __float2half(-(float)(1 << (QB - 1)))) : __ushort_as_half(pr[gi + 1]);
            unit_to_f16<QB>((const uint32_t *)(stage + r * RB + u * 4 * QB), __half2half2(sv), __half2half2(zv), dst);
        } else if (t < n_past) {
            const uint4 *src = (const uint4 *)((const uint16_t *)S.fp + h * S.fp_head + (size_t)(t % S.R) * D + u * 32);
#pragma unroll
            for (int k = 0; k < 4; k++) ((uint4 *)dst)[k] = src[k];
        } else {
#pragma unroll
            for (int k = 0; k < 4; k++)
                ((uint4 *)dst)[k] = t < kend ? cvt8(xnew + (size_t)(t - n_past) * Hkv * D + (size_t)h * D + u * 32 + 8 * k, 1.0f)
                                             : make_uint4(0, 0, 0, 0);
        }
    }
}

/* A codes side's f16 tile for key tile t0: per-token codes (QB > 0) or per-channel (QB < 0). */
template <int D, int QB>
__device__ __forceinline__ void side_convert(const kv_side &S, int h, int t0, int n_past, int kend, const float *xnew,
                                             int Hkv, const uint8_t *stage, __half *tile) {
    if constexpr (QB < 0) side_convert_chan<D, -QB>(S, h, t0, n_past, kend, xnew, Hkv, tile);
    else side_convert_tok<D, QB>(S, h, t0, n_past, kend, xnew, Hkv, stage, tile);
}

/* KB, VB: 0 for a dense f16 side, else the bits of its per-token codes (negative: per-channel
 * codes of -KB bits, keys only). */
template <int D, int KB, int VB>
__global__ void __launch_bounds__(NTH, 2) prefill_tc_k(tc_p p) {
    constexpr int SD = D + 8, CH = D / 8, KSTEP = D / 16, NO = D / 8;
    using KS = side_smem<D, KB>;
    using VS = side_smem<D, VB>;
    extern __shared__ uint4 smem_u4[];
    __half *Qs = (__half *)smem_u4;                /* [BM][SD] */
    __half *Ks = Qs + BM * SD;                     /* [KS::NB][BN][SD] */
    __half *Vs = (__half *)((uint8_t *)Ks + KS::NB * KS::tile_bytes);
    uint8_t *kst = (uint8_t *)Vs + VS::NB * VS::tile_bytes; /* [2] staging (codes sides) */
    uint8_t *vst = kst + 2 * KS::stage_bytes;

    /* the last query blocks have the most keys (causal): start them first */
    const int qb = p.n_qblk - 1 - (int)blockIdx.x, h = blockIdx.y, sp = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
    const int G = p.G, n_items = p.m * G, i0 = qb * BM;
    const int rmax = min(p.m - 1, (i0 + BM - 1) / G);
    const int kend = p.n_past + rmax + 1; /* keys this block may see: [0, kend) */
    const int lo = sp * p.split_len, hi = min(kend, lo + p.split_len);
    const int n_tiles = hi > lo ? (hi - lo + BN - 1) / BN : 0;

    pdl_trigger(); /* launched with PDL (tlc_launch): q, knew, vnew come from the kernels before */
    pdl_wait();
    const int Hkv = p.Hkv;
    if (n_tiles > 0) {
        side_issue<D, KB>(p.K, h, lo, p.n_past, kend, p.knew, Hkv, Ks, kst);
        side_issue<D, VB>(p.V, h, lo, p.n_past, kend, p.vnew, Hkv, Vs, vst);
    }
    cp_commit();
    for (int e = tid; e < BM * CH; e += NTH) {
        const int i = e / CH, c = e % CH, it = i0 + i;
        uint4 w = make_uint4(0, 0, 0, 0); /* padding items: q = 0 (finite scores, output not written) */
        if (it < n_items) {
            const int r = it / G, hq = h * G + it % G;
            w = cvt8(p.q + ((size_t)r * p.Hq + hq) * D + c * 8, p.qscale);
        }
        *(uint4 *)(Qs + i * SD + c * 8) = w;
    }
    __syncthreads();
    uint32_t qa[KSTEP][4];
    {
        const __half *qw = Qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < KSTEP; kk++) ldsm4(qa[kk], qw + kk * 16);
    }

    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* rows gq and gq + 8 of the warp */
    const int ia = i0 + warp * 16 + gq, ib = ia + 8;
    const bool live = i0 + warp * 16 < n_items;
    const int posa = p.n_past + min(ia / G, p.m - 1), posb = p.n_past + min(ib / G, p.m - 1);
    /* per-lane ldmatrix offsets (halves) inside a K / V tile */
    const int koff = ((lane & 7) + (lane >> 4) * 8) * SD + ((lane >> 3) & 1) * 8;
    const int voff = ((lane & 7) + ((lane >> 3) & 1) * 8) * SD + (lane >> 4) * 8;

    for (int j = 0; j < n_tiles; j++) {
        const int t0 = lo + j * BN, buf = j & 1;
        if (j + 1 < n_tiles) {
            side_issue<D, KB>(p.K, h, t0 + BN, p.n_past, kend, p.knew, Hkv, Ks + (KB ? 0 : (buf ^ 1) * BN * SD),
                              kst + (buf ^ 1) * KS::stage_bytes);
            side_issue<D, VB>(p.V, h, t0 + BN, p.n_past, kend, p.vnew, Hkv, Vs + (VB ? 0 : (buf ^ 1) * BN * SD),
                              vst + (buf ^ 1) * VS::stage_bytes);
        }
        cp_commit(); /* possibly empty: keeps "all but the newest group" = tile j */
        cp_wait<1>();
        __syncthreads();
        if constexpr (KB != 0 || VB != 0) { /* codes sides: tile j's f16 rows from its staging area */
            if constexpr (KB != 0) side_convert<D, KB>(p.K, h, t0, p.n_past, kend, p.knew, Hkv, kst + buf * KS::stage_bytes, Ks);
            if constexpr (VB != 0) side_convert<D, VB>(p.V, h, t0, p.n_past, kend, p.vnew, Hkv, vst + buf * VS::stage_bytes, Vs);
            __syncthreads();
        }
        if (!live) { /* all 16 items of this warp are padding (decode: m = 1, G < 64): load only */
            __syncthreads();
            continue;
        }
        const __half *Kb = Ks + (KB ? 0 : buf * BN * SD) + koff, *Vb = Vs + (VB ? 0 : buf * BN * SD) + voff;

        /* S = Q K^T: 16 rows x 64 keys per warp (8 n-tiles) */
        float s[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KSTEP; kk++) {
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t b[4];
                ldsm4(b, Kb + np * 16 * SD + kk * 16);
                mma16816(s[2 * np], qa[kk], b[0], b[1]);
                mma16816(s[2 * np + 1], qa[kk], b[2], b[3]);
            }
        }
        if (t0 + BN > p.n_past) { /* the tile reaches the chunk: causal mask (also hides rows >= kend) */
#pragma unroll
            for (int n = 0; n < 8; n++) {
                const int t = t0 + n * 8 + 2 * tq;
                if (t > posa) s[n][0] = -INFINITY;
                if (t + 1 > posa) s[n][1] = -INFINITY;
                if (t > posb) s[n][2] = -INFINITY;
                if (t + 1 > posb) s[n][3] = -INFINITY;
            }
        }
        /* online softmax: a row's 64 scores live in the 4 lanes of a quad */
        float x0 = m0, x1 = m1;
#pragma unroll
        for (int n = 0; n < 8; n++) {
            x0 = fmaxf(x0, fmaxf(s[n][0], s[n][1]));
            x1 = fmaxf(x1, fmaxf(s[n][2], s[n][3]));
        }
        x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 1));
        x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 2));
        x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 1));
        x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 2));
        /* a row with no visible key yet keeps max -inf: subtract 0 then (all p = 0, no NaN) */
        const float b0 = x0 == -INFINITY ? 0.0f : x0, b1 = x1 == -INFINITY ? 0.0f : x1;
        const float c0 = ex2(m0 - b0), c1 = ex2(m1 - b1); /* m = -inf -> 0 (acc, l are 0 then) */
        m0 = x0;
        m1 = x1;
        uint32_t pa[4][4];
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int n = 0; n < 8; n++) {
            const float p0 = ex2(s[n][0] - b0), p1 = ex2(s[n][1] - b0), p2 = ex2(s[n][2] - b1), p3 = ex2(s[n][3] - b1);
            sum0 += p0 + p1;
            sum1 += p2 + p3;
            pa[n >> 1][(n & 1) * 2] = pack_h2(p0, p1);
            pa[n >> 1][(n & 1) * 2 + 1] = pack_h2(p2, p3);
        }
        l0 = l0 * c0 + sum0; /* per-lane partial sums; the quad is summed at the end */
        l1 = l1 * c1 + sum1;
#pragma unroll
        for (int n = 0; n < NO; n++) {
            o[n][0] *= c0;
            o[n][1] *= c0;
            o[n][2] *= c1;
            o[n][3] *= c1;
        }
        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t b[4];
                ldsm4t(b, Vb + kk * 16 * SD + dp * 16);
                mma16816(o[2 * dp], pa[kk], b[0], b[1]);
                mma16816(o[2 * dp + 1], pa[kk], b[2], b[3]);
            }
        }
        __syncthreads(); /* buffer buf is refilled by the next iteration's prefetch */
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    if (p.n_split == 1) {
        /* n_tiles >= 1 and key 0 is visible to every row: l > 0 */
        const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
        if (ia < n_items) {
            float *dst = p.out + ((size_t)(ia / G) * p.Hq + h * G + ia % G) * D + 2 * tq;
#pragma unroll
            for (int n = 0; n < NO; n++) *(float2 *)(dst + n * 8) = make_float2(o[n][0] * inv0, o[n][1] * inv0);
        }
        if (ib < n_items) {
            float *dst = p.out + ((size_t)(ib / G) * p.Hq + h * G + ib % G) * D + 2 * tq;
#pragma unroll
            for (int n = 0; n < NO; n++) *(float2 *)(dst + n * 8) = make_float2(o[n][2] * inv1, o[n][3] * inv1);
        }
    } else {
        const size_t slot = ((size_t)(h * p.n_qblk + qb) * p.n_split + sp) * BM + warp * 16 + gq;
        float *da = p.part + slot * D + 2 * tq, *db = da + 8 * D;
#pragma unroll
        for (int n = 0; n < NO; n++) {
            *(float2 *)(da + n * 8) = make_float2(o[n][0], o[n][1]);
            *(float2 *)(db + n * 8) = make_float2(o[n][2], o[n][3]);
        }
        if (tq == 0) {
            *(float2 *)(p.ml + slot * 2) = make_float2(m0, l0);
            *(float2 *)(p.ml + (slot + 8) * 2) = make_float2(m1, l1);
        }
    }
}

/* out = sum_s w_s acc_s / sum_s w_s l_s, w_s = 2^(m_s - M) (m in log2 units). A warp per
 * item forms its split weights once into shared memory ([rows][n_split + 1], the last entry
 * 1/L); then every thread sums its (item, channel) over the splits with independent loads.
 * Few blocks run this (decode: Hkv), so it is latency-bound and the loads must overlap. */
__global__ void prefill_tc_merge_k(tc_p p, int D) {
    extern __shared__ float wsm[];
    pdl_trigger();
    pdl_wait();
    const int qb = blockIdx.x, h = blockIdx.y, G = p.G, S = p.n_split, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const int rows = min(BM, p.m * G - qb * BM);
    const size_t base = (size_t)(h * p.n_qblk + qb) * S * BM;
    for (int i = threadIdx.x >> 5; i < rows; i += nw) {
        float M = -INFINITY, L = 0.0f;
        for (int s = lane; s < S; s += 32) M = fmaxf(M, p.ml[(base + (size_t)s * BM + i) * 2]);
        M = wmax(M);
        for (int s = lane; s < S; s += 32) {
            const size_t k = base + (size_t)s * BM + i;
            const float ms = p.ml[k * 2], w = ms == -INFINITY ? 0.0f : exp2f(ms - M); /* a split with no visible key: 0 */
            wsm[i * (S + 1) + s] = w;
            L = fmaf(w, p.ml[k * 2 + 1], L);
        }
        L = wsum(L);
        if (lane == 0) wsm[i * (S + 1) + S] = 1.0f / L;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
        const int i = e / D, c = e % D, it = qb * BM + i;
        const float *w = wsm + i * (S + 1);
        const float *src = p.part + (base + i) * D + c;
        float acc = 0.0f;
#pragma unroll 8
        for (int s = 0; s < S; s++) acc = fmaf(w[s], w[s] != 0.0f ? src[(size_t)s * BM * D] : 0.0f, acc);
        p.out[((size_t)(it / G) * p.Hq + h * G + it % G) * D + c] = acc * w[S];
    }
}

template <int D, int KB, int VB>
size_t smem_bytes() {
    return sizeof(__half) * (size_t)BM * (D + 8) + side_smem<D, KB>::bytes + side_smem<D, VB>::bytes;
}

/* The template bits of a side (0 dense f16, > 0 per-token codes, < 0 per-channel codes), or
 * INT_MIN where the kernel has no path. */
int side_bits(const kv_side &S) {
    if (S.mode == KV_DENSE) return S.dt == DT_F16 ? 0 : INT_MIN;
    if (S.mode == KV_FLUSH) /* units of 32 tokens in groups of 32/64/128, an f16 block beside */
        return (S.bits == 8 || S.bits == 4 || S.bits == 2) && S.g % 32 == 0 && S.fp ? -S.bits : INT_MIN;
    if (S.mode != KV_SLIDE || (S.bits != 8 && S.bits != 4 && S.bits != 2) || S.g % 32) return INT_MIN;
    /* 16-byte cp.async of whole tiles of parameter rows: heads start 16-byte aligned */
    if ((S.params_head * 2) % 16 || (S.R > 0 && !S.fp)) return INT_MIN;
    return S.bits;
}

/* (K bits, V bits) pairs with a kernel (0: dense f16; negative K: per-channel keys, KIVI), as
 * X(D, KB, VB) */
#define TC_FORMATS(D) \
    X(D, 0, 0) X(D, 8, 8) X(D, 4, 4) X(D, 2, 2) X(D, 0, 4) X(D, 0, 2) X(D, 8, 4) X(D, 4, 2) X(D, -4, 4) X(D, -2, 2) X(D, -4, 2)

bool tc_format(int kb, int vb) {
#define X(DD, KB, VB) || (kb == KB && vb == VB)
    return false TC_FORMATS(0);
#undef X
}

template <int D, int KB, int VB>
cudaError_t launch_tc(tlc_ctx *cx, const tc_p &p, dim3 grid, bool pdl) {
    const size_t smem = smem_bytes<D, KB, VB>();
    if (smem > cx->smem_optin) return cudaErrorInvalidConfiguration;
    cudaError_t e = cudaFuncSetAttribute(prefill_tc_k<D, KB, VB>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    return tlc_launch(pdl, prefill_tc_k<D, KB, VB>, grid, dim3(NTH), smem, cx->stream, p);
}

} // namespace

int tlc_attn_prefill_tc(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, int m, const float *q, const float *knew,
                        const float *vnew, float *out, tl_error *err) {
    const kv_side &K = L->k, &V = L->v;
    if (m < 1 || (m == 1 && (cx->dec_tc_from <= 0 || n_past < cx->dec_tc_from)) || L->window != 0 || L->off) return 1;
    const int kb = side_bits(K), vb = side_bits(V);
    if (!tc_format(kb, vb) || (m == 1 && (kb || vb) && !cx->dec_tc_quant)) return 1;
    const int D = K.d;
    if (V.d != D || (D != 64 && D != 128)) return 1;
    if (L->n_head_kv <= 0 || L->n_head % L->n_head_kv) return 1;
    /* history row t is store row t (no wrap): holds without a window (cap = n_ctx) */
    if (n_past > K.cap || n_past > V.cap) return 1;
    /* 16-byte vector loads and cp.async need aligned bases (rows are multiples of 16 bytes) */
    if (((uintptr_t)q | (uintptr_t)knew | (uintptr_t)vnew | (uintptr_t)out | (uintptr_t)K.fp | (uintptr_t)V.fp |
         (uintptr_t)K.codes | (uintptr_t)V.codes | (uintptr_t)K.params | (uintptr_t)V.params) & 15)
        return 1;

    tc_p p;
    memset(&p, 0, sizeof p);
    p.K = K;
    p.V = V;
    p.q = q;
    p.knew = knew;
    p.vnew = vnew;
    p.out = out;
    p.n_past = n_past;
    p.m = m;
    p.Hq = L->n_head;
    p.Hkv = L->n_head_kv;
    p.G = L->n_head / L->n_head_kv;
    p.qscale = L->scale * 1.4426950408889634f;
    const long long n_items = (long long)m * p.G;
    p.n_qblk = (int)((n_items + BM - 1) / BM);
    const int blocks = p.n_qblk * p.Hkv, total = n_past + m;
    /* two blocks fit an SM (launch bounds, 87 KB of shared memory at D = 128): split the keys
     * when fewer than that many blocks exist, keeping >= MIN_KEYS_PER_SPLIT keys per split */
    const int slots = 2 * TL_MAX(1, cx->n_sm);
    int n_split = 1;
    if (blocks < slots) n_split = TL_MAX(1, TL_MIN(slots / blocks, total / MIN_KEYS_PER_SPLIT));
    int split_len = (total + n_split - 1) / n_split;
    split_len = (split_len + BN - 1) / BN * BN;
    n_split = (total + split_len - 1) / split_len;
    p.n_split = n_split;
    p.split_len = split_len;
    if (n_split > 1) {
        const size_t rows = (size_t)blocks * n_split * BM;
        if (tlc_scratch(cx, rows * (D + 2) * sizeof(float), err)) return -1;
        p.part = (float *)cx->scratch;
        p.ml = p.part + rows * D;
    }
    const dim3 grid(p.n_qblk, p.Hkv, n_split);
    const bool pdl = !cx->no_pdl;
    cudaError_t e = cudaErrorInvalidValue;
#define X(DD, KB, VB) \
    if (D == DD && kb == KB && vb == VB) e = launch_tc<DD, KB, VB>(cx, p, grid, pdl);
    TC_FORMATS(64)
    TC_FORMATS(128)
#undef X
    if (e != cudaSuccess)
        return tl_fail(err, "CUDA kernel prefill attention (tensor cores, K %d%s / V %d bits): %s", kb ? abs(kb) : 16,
                       kb < 0 ? " per-channel" : "", vb ? vb : 16,
                       cudaGetErrorString(e));
    if (n_split > 1) {
        const size_t msm = sizeof(float) * (size_t)TL_MIN((long long)BM, n_items) * (n_split + 1);
        if (msm > 48 * 1024 && (e = cudaFuncSetAttribute(prefill_tc_merge_k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                         (int)msm)) != cudaSuccess)
            return tl_fail(err, "cudaFuncSetAttribute(prefill attention merge, %zu bytes): %s", msm, cudaGetErrorString(e));
        e = tlc_launch(pdl, prefill_tc_merge_k, dim3(p.n_qblk, p.Hkv), dim3(256), msm, cx->stream, p, D);
        if (e != cudaSuccess) return tl_fail(err, "CUDA kernel prefill attention merge: %s", cudaGetErrorString(e));
    }
    return 0;
}

/* ---------------- benchmark hook (cuda_test.h: tl_cuda_attn_bench) ---------------- */

namespace {

/* x[i] = a uniform value in [-amp, amp) from a hash of (seed, i), plus `spike` on channel
 * (i % d) == 5 (an outlier channel, like real keys); f16 when h16. */
__global__ void bench_fill_k(void *x, size_t n, int d, uint32_t seed, float amp, float spike, int h16) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 0x9e3779b1u ^ seed ^ (uint32_t)(i >> 32) * 0x85ebca6bu;
        h ^= h >> 16, h *= 0x7feb352du, h ^= h >> 15, h *= 0x846ca68bu, h ^= h >> 16;
        const float v = ((float)(h >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * amp + ((i % d) == 5 ? spike : 0.0f);
        if (h16) ((__half *)x)[i] = __float2half_rn(v);
        else ((float *)x)[i] = v;
    }
}

int bench_fill(tlc_ctx *cx, void *x, size_t n, int d, uint32_t seed, float amp, float spike, int h16, tl_error *err) {
    bench_fill_k<<<1024, 256, 0, cx->stream>>>(x, n, d, seed, amp, spike, h16);
    TLC_LAUNCH_CHECK("bench fill");
    return 0;
}

} // namespace

extern "C" int tl_cuda_attn_bench(const tl_kv_shape *s, int n_past, int m, int tc, int reps, double *ms, float *out,
                                  tl_error *err) {
    char why[256];
    if (!tl_cuda_available(why, sizeof why)) return tl_fail(err, "%s", why);
    if (n_past < 0 || m < 1 || reps < 1 || s->n_head_kv <= 0 || s->n_head % s->n_head_kv)
        return tl_fail(err, "tl_cuda_attn_bench: n_past %d, m %d, reps %d, heads %d/%d", n_past, m, reps, s->n_head, s->n_head_kv);
    tlc_ctx cx;
    memset(&cx, 0, sizeof cx);
    tlc_layer_kv L;
    memset(&L, 0, sizeof L);
    float *dq = NULL, *dk = NULL, *dv = NULL, *dout = NULL;
    cudaEvent_t ev[2] = {NULL, NULL};
    int rc = -1;
    const int Hq = s->n_head, Hkv = s->n_head_kv, dkd = s->head_dim_k, dvd = s->head_dim_v, cap = n_past + m;
    cudaDeviceProp prop;
    if (cudaSetDevice(0) != cudaSuccess || cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaStreamCreateWithFlags(&cx.stream, cudaStreamNonBlocking) != cudaSuccess || cudaEventCreate(&ev[0]) != cudaSuccess ||
        cudaEventCreate(&ev[1]) != cudaSuccess) {
        tl_fail(err, "tl_cuda_attn_bench: device 0: %s", cudaGetErrorString(cudaGetLastError()));
        goto done;
    }
    cx.n_sm = prop.multiProcessorCount;
    cx.smem_optin = prop.sharedMemPerBlockOptin;
    cx.no_tc = !tc;
    cx.dec_tc_from = tc && m == 1 ? 1 : 0; /* m = 1: tensor cores vs decode.cu */
    L.n_head = Hq;
    L.n_head_kv = Hkv;
    L.scale = s->scale;
    {
        kv_side *sd[2] = {&L.k, &L.v};
        const int d[2] = {dkd, dvd};
        for (int i = 0; i < 2; i++) {
            sd[i]->mode = KV_DENSE;
            sd[i]->dt = DT_F16;
            sd[i]->d = d[i];
            sd[i]->cap = cap;
            sd[i]->fp_head = (size_t)cap * d[i];
            if (cudaMalloc(&sd[i]->fp, sizeof(uint16_t) * Hkv * sd[i]->fp_head) != cudaSuccess) {
                tl_fail(err, "tl_cuda_attn_bench: out of GPU memory (KV cache of %d tokens)", cap);
                goto done;
            }
        }
    }
    if (cudaMalloc((void **)&dq, sizeof(float) * (size_t)m * Hq * dkd) != cudaSuccess ||
        cudaMalloc((void **)&dk, sizeof(float) * (size_t)m * Hkv * dkd) != cudaSuccess ||
        cudaMalloc((void **)&dv, sizeof(float) * (size_t)m * Hkv * dvd) != cudaSuccess ||
        cudaMalloc((void **)&dout, sizeof(float) * (size_t)m * Hq * dvd) != cudaSuccess) {
        tl_fail(err, "tl_cuda_attn_bench: out of GPU memory (chunk of %d rows)", m);
        goto done;
    }
    /* the same data for every call (fixed seeds): tc and general runs see equal inputs */
    if (bench_fill(&cx, L.k.fp, Hkv * L.k.fp_head, dkd, 1, 1.7f, 6.0f, 1, err) ||
        bench_fill(&cx, L.v.fp, Hkv * L.v.fp_head, dvd, 2, 1.0f, 0.0f, 1, err) ||
        bench_fill(&cx, dq, (size_t)m * Hq * dkd, dkd, 3, 1.5f, 0.0f, 0, err) ||
        bench_fill(&cx, dk, (size_t)m * Hkv * dkd, dkd, 4, 1.7f, 6.0f, 0, err) ||
        bench_fill(&cx, dv, (size_t)m * Hkv * dvd, dvd, 5, 1.0f, 0.0f, 0, err))
        goto done;
    if (tlc_attention(&cx, &L, n_past, m, dq, dk, dv, dout, err)) goto done; /* warm-up (and scratch growth) */
    cudaEventRecord(ev[0], cx.stream);
    for (int i = 0; i < reps; i++)
        if (tlc_attention(&cx, &L, n_past, m, dq, dk, dv, dout, err)) goto done;
    cudaEventRecord(ev[1], cx.stream);
    {
        cudaError_t e = cudaEventSynchronize(ev[1]);
        float t = 0.0f;
        if (e == cudaSuccess) e = cudaEventElapsedTime(&t, ev[0], ev[1]);
        if (e == cudaSuccess && out)
            e = cudaMemcpy(out, dout, sizeof(float) * (size_t)m * Hq * dvd, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) {
            tl_fail(err, "tl_cuda_attn_bench: %s", cudaGetErrorString(e));
            goto done;
        }
        *ms = t / reps;
    }
    rc = 0;
done:
    if (cx.stream) cudaStreamSynchronize(cx.stream);
    cudaFree(L.k.fp);
    cudaFree(L.v.fp);
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(cx.scratch);
    for (int i = 0; i < 2; i++)
        if (ev[i]) cudaEventDestroy(ev[i]);
    if (cx.stream) cudaStreamDestroy(cx.stream);
    return rc;
}
