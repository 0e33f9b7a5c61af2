/* decode_mma.cu: decode attention (one new token) over per-token quantized K and V (8/4/2-bit
 * codes in asymmetric groups of >= 32 channels, f16 residual ring) on tensor cores, the codes
 * dequantized in registers.
 *
 * Why: decode.cu's CUDA-core path spends ~2900 instructions per warp and 32-token tile on
 * unpacking, dp4a, the lane reduce-scatter and 512 value FMAs per lane, so at 128k keys it ran
 * at a third of the memory bandwidth whatever the bits (k4v4 and k2v2 barely faster than f16).
 * Here a tile costs 760 (k2v2) to 1010 (k8v8) instructions: the code and parameter rows go
 * global -> shared by cp.async (2-3 stages per warp, nothing held in registers while in
 * flight), ldmatrix hands each lane its code bytes already in mma fragment order, two codes
 * become one f16x2 (lop3 mask | magic, hsub2 magic: exact) and one hfma2 applies the token's
 * (s, z), and mma.sync.m16n8k16 (f16 in, f32 accumulate) takes the products.
 *
 * Work split: grid (KV head, split): splits 0..n_split-1 take equal runs of the 32-token tiles
 * of the quantized history [0, nq) (the last tile partial: its rows past nq are zero-filled by
 * cp.async and their scores masked), split n_split the f16 residual ring [nq, n_past) with
 * plain f32 code over 16-byte row loads. The 4 warps of a block walk their own tiles, each with
 * its own online softmax; the block merges its warps and writes (max, sum, O) like decode.cu's
 * splits, and decode.cu's merge kernel combines the splits with the new token.
 *
 * Roles (transposed FlashAttention-2, so that no A operand is mostly zero rows): S^T = K Q^T
 * with A = K (16 tokens x 16 channels, dequantized), B = Q^T (16 channels x 8 heads: the G <= 8
 * query heads of the KV head, zero columns past G); P^T goes from the S^T accumulators to B
 * layout by movmatrix (an in-register 8x8 transpose); O^T = V^T P^T with A = V^T (16 channels x
 * 16 tokens, dequantized). Per tile 16 + 16 mma, 8 + 8 ldmatrix.x4, 4 movmatrix.
 * Fragment layouts as in prefill_tc.cu (lane = 4*gq + tq; A a0 = A[gq][2tq, 2tq+1],
 * a1 = A[gq+8][2tq, 2tq+1], a2 = A[gq][2tq+8, 2tq+9], a3 = A[gq+8][2tq+8, 2tq+9];
 * B b0 = B[2tq, 2tq+1][gq], b1 = B[2tq+8, 2tq+9][gq]; C c0, c1 = C[gq][2tq, 2tq+1], c2, c3 row gq+8).
 *
 * Code bytes in shared memory: a tile is 32 token rows of the store's code row (D*bits/8 bytes,
 * kvq_pack32 layout), in 16-byte chunks, chunk u of token t at (t*NCH + (u ^ swz(t))) * 16
 * so that the 8 rows of one ldmatrix matrix hit 8 different bank groups.
 *  - K, ldmatrix of 8 tokens x one chunk: lane gets token gq's chunk bytes 4tq..4tq+3; field f
 *    (0 .. 8/bits-1) of bytes (4tq, 4tq+2) fills slots 2tq, 2tq+1 and of bytes (4tq+1, 4tq+3)
 *    slots 2tq+8, 2tq+9 of k-step (chunk, f); Q^T's rows are loaded in that channel order.
 *  - V, ldmatrix.trans of 8 tokens x one chunk: lane gets bytes 2gq, 2gq+1 of tokens 2tq and
 *    2tq+1 (one per half of the register): field f of byte 2gq (2gq+1) of both tokens is row gq
 *    (gq+8) of m-tile (chunk, f), channel code_ch(chunk, 2gq (+1), f).
 * Numerics: q (times scale * log2 e), the dequantized K and V and P in f16, products and sums in
 * f32: like prefill_tc.cu, ~5e-4 relative to the exact result over the same codes. */
#include "backend.cuh"
#include "mma.cuh"

#include <math.h>

namespace {

constexpr int NW = 4; /* warps per block */
constexpr int NTH = NW * 32;
constexpr int TT = 32;        /* tokens per tile */
constexpr int GMAX = 8;       /* query heads per KV head: A rows 0..7 */
constexpr int TAIL_MAX = 512; /* longest f16 ring the tail block takes */
/* 4 resident blocks per SM (<= 128 registers, 16 warps), stages in <= 200 KB of shared memory:
 * measured against 3 blocks with 3 stages and 7 blocks of 2 warps (docs/cuda.md, session 5) */
constexpr int MINB = 4;
constexpr size_t SMEM_SM = 200 * 1024;

struct dq_p {
    kv_side K, V;
    const float *q;
    float *part; /* [Hkv][n_split + 1][G][D + 2]: (max, sum, O[D]) per split */
    int n_past, G, nq, split_len, n_split; /* nq: quantized tokens (the rest are in the f16 rings) */
    float scale; /* softmax scale * log2(e) */
};

template <int D, int KB, int VB>
struct dq_cfg {
    static constexpr int KROW = D * KB / 8, VROW = D * VB / 8; /* code bytes per token */
    static constexpr int KCH = KROW / 16, VCH = VROW / 16;     /* 16-byte chunks per token */
    static constexpr int PMAX = D / 8;                         /* parameter bytes per token at most (D/32 groups x 2 halves) */
    static constexpr int KC = 0, VC = TT * KROW, KP = VC + TT * VROW, VP = KP + TT * PMAX;
    static constexpr int STAGE = VP + TT * PMAX;
    /* cp.async stages per warp: 3 where MINB blocks' worth fit in SMEM_SM, else 2 */
    static constexpr int NST = (size_t)MINB * NW * 3 * STAGE <= SMEM_SM ? 3 : 2;
    static constexpr size_t SMEM = (size_t)NW * NST * STAGE;
    static_assert((size_t)GMAX * D * sizeof(float) + TT * GMAX * sizeof(float) <= (size_t)2 * STAGE,
                  "a warp's stages hold its tail scratch and its merge row");
};

__device__ __forceinline__ __half2 as_h2(uint32_t u) { return *(const __half2 *)&u; }
__device__ __forceinline__ uint32_t as_u(__half2 h) { return *(const uint32_t *)&h; }

/* Byte offset of chunk u of token row t in a code tile of NCH chunks per row (swizzled). */
template <int NCH>
__device__ __forceinline__ int chunk_off(int t, int u) {
    return (t * NCH + (u ^ ((t / (8 / NCH)) & (NCH - 1)))) * 16;
}

/* Channel of field f (bits B*f..) of byte b of 16-byte chunk u in a code row (kvq_pack32: units
 * of 32 values in 4*B bytes; byte j of a unit holds value j (8 bits), values j, j+16 (4 bits),
 * or values j, j+8, j+16, j+24 (2 bits) in fields 0, 1, ...). */
template <int B>
__device__ __forceinline__ int code_ch(int u, int b, int f) {
    if (B == 8) return 16 * u + b;
    if (B == 4) return 32 * u + b + 16 * f;
    return 64 * u + 32 * (b >> 3) + (b & 7) + 8 * f;
}

/* The unit (32 values) of a chunk byte b. */
template <int B>
__device__ __forceinline__ int code_unit(int u, int b) {
    return B == 8 ? u >> 1 : B == 4 ? u : 2 * u + (b >> 3);
}

/* Field f of bytes bb and bb+2 of r (bb, f: constants after unrolling) as an f16 pair of the
 * exact codes. No shift for byte 0: a field at bits P..P+B-1 of a half, under the exponent
 * 2^(10-P) (whose mantissa unit is then 2^-P), reads 2^(10-P) + code exactly (lop3 mask | magic),
 * and the magic is subtracted exactly (hsub2); byte 1 takes one shift by 8 first. */
template <int B>
__device__ __forceinline__ __half2 code_pair(uint32_t r, int bb, int f) {
    const int P = B * f;
    const uint32_t m1 = ((1u << B) - 1) << P, mask = m1 | m1 << 16;
    const uint32_t e = (uint32_t)(25 - P) << 10, magic = e | e << 16; /* f16 2^(10-P) in each half */
    const uint32_t x = bb ? r >> 8 : r;
    uint32_t y;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(y) : "r"(x), "r"(mask), "r"(magic)); /* (x & mask) | magic */
    return __hsub2(as_h2(y), as_h2(magic));
}

/* Field f of bytes bb, bb+2 of r dequantized: code * s + z, one rounding (as prefill_tc.cu). */
template <int B>
__device__ __forceinline__ uint32_t dq2(uint32_t r, int bb, int f, __half2 s2, __half2 z2) {
    return as_u(__hfma2(code_pair<B>(r, bb, f), s2, z2));
}

/* (s, z) pairs of two tokens from their parameter words s | z << 16 (asymmetric groups). */
__device__ __forceinline__ void sz_pair(uint32_t w0, uint32_t w1, __half2 &s2, __half2 &z2) {
    s2 = as_h2(__byte_perm(w0, w1, 0x5410));
    z2 = as_h2(__byte_perm(w0, w1, 0x7632));
}

/* Parameter word (s | z << 16) of token row t, group offset goff (halves), in a tile's parameter rows. */
__device__ __forceinline__ uint32_t pword(const uint8_t *P, int t, int pstride, int goff) {
    return *(const uint32_t *)((const uint16_t *)P + t * pstride + goff);
}


/* cp.async of tile [t0, t0 + 32) of one side: code rows (swizzled chunks) and parameter rows;
 * rows at or past nq (the last tile) are zero-filled, not read: zero codes and parameters
 * dequantize to 0, finite under the zero probability their masked scores get. */
template <int NCH>
__device__ __forceinline__ void issue_side(const kv_side &S, int h, int t0, int nq, uint8_t *codes, uint8_t *params, int lane) {
    const uint8_t *cg = S.codes + h * S.codes_head + (size_t)t0 * S.row_bytes;
    const bool full = t0 + TT <= nq;
#pragma unroll
    for (int k = 0; k < NCH; k++) {
        const int i = lane + 32 * k, t = i / NCH, u = i % NCH;
        cp16z(codes + chunk_off<NCH>(t, u), cg + (size_t)i * 16, full || t0 + t < nq ? 16 : 0);
    }
    if (lane < S.pstride * 4) { /* 32 rows x pstride halves: <= 32 chunks of 16 bytes */
        const uint8_t *pg = (const uint8_t *)(S.params + h * S.params_head + (size_t)t0 * S.pstride);
        const int valid = (nq - t0) * S.pstride * 2 - lane * 16; /* bytes of rows < nq from this chunk on */
        cp16z(params + lane * 16, pg + (size_t)lane * 16, full ? 16 : valid >= 16 ? 16 : valid > 0 ? valid : 0);
    }
}

/* The tail block's warp: the f16 rings' tokens [lo, n_past) in tiles of 32, exact f32 (lane =
 * token for the scores, reading its K row by 16-byte loads; lane = D/32 adjacent channels for
 * the values). */
template <int D>
__device__ void tail_warp(const dq_p &p, int h, int lo, uint8_t *scratch, float (&acc)[GMAX][D / 32], float (&mrow)[GMAX],
                          float (&lrow)[GMAX]) {
    constexpr int CPL = D / 32; /* value channels per lane */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, G = p.G;
    float *qs = (float *)scratch, *ps = qs + GMAX * D;
    for (int e = lane; e < G * D; e += 32) qs[e] = p.q[(size_t)h * G * D + e] * p.scale;
    __syncwarp();
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        mrow[g] = -INFINITY;
        lrow[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < CPL; i++) acc[g][i] = 0.0f;
    }
    const uint16_t *kf = (const uint16_t *)p.K.fp + h * p.K.fp_head, *vf = (const uint16_t *)p.V.fp + h * p.V.fp_head;
    for (int t0 = lo + TT * warp; t0 < p.n_past; t0 += TT * NW) {
        const int t = min(t0 + lane, p.n_past - 1);
        const bool ok = t0 + lane < p.n_past;
        float sc[GMAX];
#pragma unroll
        for (int g = 0; g < GMAX; g++) sc[g] = 0.0f;
        const uint4 *kr = (const uint4 *)(kf + (size_t)(t % p.K.R) * D);
#pragma unroll
        for (int j0 = 0; j0 < D / 8; j0 += 4) {
            uint4 kw[4]; /* 4 loads in flight per lane */
#pragma unroll
            for (int j = 0; j < 4; j++) kw[j] = kr[j0 + j];
#pragma unroll
            for (int jj = 0; jj < 4; jj++) {
                const int j = j0 + jj;
                const __half2 *hp = (const __half2 *)&kw[jj];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float2 k = __half22float2(hp[e]);
#pragma unroll
                    for (int g = 0; g < GMAX; g++)
                        if (g < G) sc[g] = fmaf(qs[g * D + 8 * j + 2 * e], k.x, fmaf(qs[g * D + 8 * j + 2 * e + 1], k.y, sc[g]));
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g >= G) break;
            const float x = ok ? sc[g] : -INFINITY, mn = fmaxf(mrow[g], wmax(x));
            const float corr = ex2(mrow[g] - mn), pg = ok ? ex2(x - mn) : 0.0f;
            lrow[g] = lrow[g] * corr + wsum(pg);
            mrow[g] = mn;
#pragma unroll
            for (int i = 0; i < CPL; i++) acc[g][i] *= corr;
            ps[lane * GMAX + g] = pg;
        }
        __syncwarp();
        const int nt = min(TT, p.n_past - t0);
#pragma unroll 8
        for (int tt = 0; tt < nt; tt++) {
            const uint16_t *vr = vf + (size_t)((t0 + tt) % p.V.R) * D + CPL * lane;
            float v[CPL];
            if (CPL == 4) {
                const uint2 w = *(const uint2 *)vr;
                const float2 a = __half22float2(as_h2(w.x)), b = __half22float2(as_h2(w.y));
                v[0] = a.x, v[1] = a.y, v[2 % CPL] = b.x, v[3 % CPL] = b.y;
            } else {
                const float2 a = __half22float2(as_h2(*(const uint32_t *)vr));
                v[0] = a.x, v[1 % CPL] = a.y;
            }
#pragma unroll
            for (int g = 0; g < GMAX; g++)
                if (g < G)
#pragma unroll
                    for (int i = 0; i < CPL; i++) acc[g][i] = fmaf(ps[tt * GMAX + g], v[i], acc[g][i]);
        }
        __syncwarp();
    }
}

/* One block: KV head h, split sp of sequence p (sp == n_split: the f16 rings' tail) (dq_k: one
 * sequence; dq_many_k: one of several, the same code). */
template <int D, int KB, int VB>
__device__ __forceinline__ void dq_body(const dq_p &p, int h, int sp) {
    using C = dq_cfg<D, KB, VB>;
    constexpr int KCH = C::KCH, VCH = C::VCH, FK = 8 / KB, FV = 8 / VB, NKS = D / 16, NMT = D / 16, NST = C::NST;
    extern __shared__ __align__(16) uint8_t dsm[];
    __shared__ float mw[NW][GMAX], lw[NW][GMAX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gq = lane >> 2, tq = lane & 3, G = p.G;
    uint8_t *region = dsm + (size_t)warp * NST * C::STAGE;
    float *orow = (float *)region; /* [G][D] this warp's unnormalized output, after its loop */
    if (sp == p.n_split) {
        /* ---- tail: the f16 rings, [nq, n_past) ---- */
        float acc[GMAX][D / 32], mrow[GMAX], lrow[GMAX];
        tail_warp<D>(p, h, p.nq, region, acc, mrow, lrow);
        __syncwarp();
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g >= G) break;
#pragma unroll
            for (int i = 0; i < D / 32; i++) orow[g * D + (D / 32) * lane + i] = acc[g][i];
            if (lane == 0) {
                mw[warp][g] = mrow[g];
                lw[warp][g] = lrow[g];
            }
        }
    } else {
        /* ---- main: whole tiles of codes ---- */
        const int kps = p.K.pstride, vps = p.V.pstride;
        /* Q^T B fragments of k-step (chunk u, field f): slots 2tq, 2tq+1 = bytes 4tq, 4tq+2 and
         * slots 2tq+8, 2tq+9 = bytes 4tq+1, 4tq+3 of the chunk, in field f; column gq = head gq */
        uint32_t qb[NKS][2];
        {
            const bool col = gq < G;
            const float *qg = p.q + (size_t)(h * G + (col ? gq : 0)) * D;
            const float sc = col ? p.scale : 0.0f;
#pragma unroll
            for (int u = 0; u < KCH; u++)
#pragma unroll
                for (int f = 0; f < FK; f++) {
                    const int kk = u * FK + f;
                    qb[kk][0] = pack_h2(qg[code_ch<KB>(u, 4 * tq, f)] * sc, qg[code_ch<KB>(u, 4 * tq + 2, f)] * sc);
                    qb[kk][1] = pack_h2(qg[code_ch<KB>(u, 4 * tq + 1, f)] * sc, qg[code_ch<KB>(u, 4 * tq + 3, f)] * sc);
                }
        }
        /* parameter offsets (halves) of this lane's groups, by chunk: K bytes 4tq.., V bytes 2gq.. */
        int kgo[KCH], vgo[VCH];
#pragma unroll
        for (int u = 0; u < KCH; u++) kgo[u] = code_unit<KB>(u, 4 * tq) * 32 / p.K.g * p.K.ppg;
#pragma unroll
        for (int u = 0; u < VCH; u++) vgo[u] = code_unit<VB>(u, 2 * gq) * 32 / p.V.g * p.V.ppg;
        /* O^T accumulators: m-tile (u, f): c0, c1 = channel code_ch(u, 2gq, f), heads 2tq, 2tq+1;
         * c2, c3 = channel code_ch(u, 2gq + 1, f) */
        float o[NMT][4];
#pragma unroll
        for (int n = 0; n < NMT; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
        float mrun[2] = {-INFINITY, -INFINITY}, lrun[2] = {0.0f, 0.0f}; /* heads 2tq, 2tq+1 */
        const int lo = sp * p.split_len, hi = min((p.nq + TT - 1) / TT * TT, lo + p.split_len);
        const int ntile = (hi - lo) / TT, mine = ntile > warp ? (ntile - warp + NW - 1) / NW : 0;
        auto issue = [&](int i) { /* this warp's i-th tile into stage i % NST */
            if (i < mine) {
                uint8_t *st = region + (i % NST) * C::STAGE;
                const int t0 = lo + (warp + i * NW) * TT;
                issue_side<KCH>(p.K, h, t0, p.nq, st + C::KC, st + C::KP, lane);
                issue_side<VCH>(p.V, h, t0, p.nq, st + C::VC, st + C::VP, lane);
            }
            cp_commit();
        };
#pragma unroll
        for (int i = 0; i < NST - 1; i++) issue(i);
        for (int it = 0; it < mine; it++) {
            issue(it + NST - 1);
            cp_wait<NST - 1>();
            __syncwarp();
            const uint8_t *st = region + (it % NST) * C::STAGE;
            const uint8_t *Kc = st + C::KC, *Vc = st + C::VC, *Kp = st + C::KP, *Vp = st + C::VP;
            /* ---- S^T = K Q^T: m-tiles of 16 tokens; matrices (m-tile mt, chunk u, octet hh) ---- */
            float s[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) s[mt][0] = s[mt][1] = s[mt][2] = s[mt][3] = 0.0f;
#pragma unroll
            for (int i4 = 0; i4 < KCH; i4++) {
                uint32_t r[4];
                {
                    const int idx = 4 * i4 + (lane >> 3), mt = idx / (2 * KCH), u = (idx % (2 * KCH)) >> 1;
                    ldsm4(r, Kc + chunk_off<KCH>(16 * mt + 8 * (idx & 1) + (lane & 7), u));
                }
#pragma unroll
                for (int pr = 0; pr < 2; pr++) {
                    const int idx = 4 * i4 + 2 * pr, mt = idx / (2 * KCH), u = (idx % (2 * KCH)) >> 1;
                    /* (s, s) and (z, z) of tokens 16mt + gq and 16mt + 8 + gq */
                    const __half2 w0 = as_h2(pword(Kp, 16 * mt + gq, kps, kgo[u]));
                    const __half2 w1 = as_h2(pword(Kp, 16 * mt + 8 + gq, kps, kgo[u]));
                    const __half2 s0 = __low2half2(w0), z0 = __high2half2(w0), s1 = __low2half2(w1), z1 = __high2half2(w1);
                    const uint32_t ra = r[2 * pr], rb = r[2 * pr + 1];
#pragma unroll
                    for (int f = 0; f < FK; f++) {
                        uint32_t a[4];
                        a[0] = dq2<KB>(ra, 0, f, s0, z0);
                        a[1] = dq2<KB>(rb, 0, f, s1, z1);
                        a[2] = dq2<KB>(ra, 1, f, s0, z0);
                        a[3] = dq2<KB>(rb, 1, f, s1, z1);
                        mma16816(s[mt], a, qb[u * FK + f][0], qb[u * FK + f][1]);
                    }
                }
            }
            {
                const int t0 = lo + (warp + it * NW) * TT;
                if (t0 + TT > p.nq) /* the last tile: rows past nq are not keys */
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) {
                        if (t0 + 16 * mt + gq >= p.nq) s[mt][0] = s[mt][1] = -INFINITY;
                        if (t0 + 16 * mt + 8 + gq >= p.nq) s[mt][2] = s[mt][3] = -INFINITY;
                    }
            }
            /* ---- online softmax per head (lanes gq share a head column) ---- */
            uint32_t pb[2][2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float mx = fmaxf(fmaxf(s[0][e], s[0][2 + e]), fmaxf(s[1][e], s[1][2 + e]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
                const float mn = fmaxf(mrun[e], mx), corr = ex2(mrun[e] - mn);
                mrun[e] = mn;
                float ps = 0.0f;
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    s[mt][e] = ex2(s[mt][e] - mn);
                    s[mt][2 + e] = ex2(s[mt][2 + e] - mn);
                    ps += s[mt][e] + s[mt][2 + e];
                }
                lrun[e] = fmaf(lrun[e], corr, ps);
#pragma unroll
                for (int n = 0; n < NMT; n++) {
                    o[n][e] *= corr;
                    o[n][2 + e] *= corr;
                }
            }
            /* P^T B fragments: the S^T accumulators are the 8x8 (token, head) blocks in A/C
             * layout; transposed in registers they are (head, token) = B's layout */
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                pb[mt][0] = movtrans(pack_h2(s[mt][0], s[mt][1]));
                pb[mt][1] = movtrans(pack_h2(s[mt][2], s[mt][3]));
            }
            /* ---- O^T += V^T P^T: matrices (k-step kv, chunk u, octet hh), .trans ---- */
#pragma unroll
            for (int i4 = 0; i4 < VCH; i4++) {
                uint32_t r[4];
                {
                    const int idx = 4 * i4 + (lane >> 3), kv = idx / (2 * VCH), u = (idx % (2 * VCH)) >> 1;
                    ldsm4t(r, Vc + chunk_off<VCH>(16 * kv + 8 * (idx & 1) + (lane & 7), u));
                }
#pragma unroll
                for (int pr = 0; pr < 2; pr++) {
                    const int idx = 4 * i4 + 2 * pr, kv = idx / (2 * VCH), u = (idx % (2 * VCH)) >> 1;
                    const int t = 16 * kv + 2 * tq;
                    __half2 s0, z0, s1, z1; /* tokens (t, t + 1) and (t + 8, t + 9) */
                    sz_pair(pword(Vp, t, vps, vgo[u]), pword(Vp, t + 1, vps, vgo[u]), s0, z0);
                    sz_pair(pword(Vp, t + 8, vps, vgo[u]), pword(Vp, t + 9, vps, vgo[u]), s1, z1);
                    const uint32_t ra = r[2 * pr], rb = r[2 * pr + 1];
#pragma unroll
                    for (int f = 0; f < FV; f++) {
                        uint32_t a[4];
                        a[0] = dq2<VB>(ra, 0, f, s0, z0);
                        a[1] = dq2<VB>(ra, 1, f, s0, z0);
                        a[2] = dq2<VB>(rb, 0, f, s1, z1);
                        a[3] = dq2<VB>(rb, 1, f, s1, z1);
                        mma16816(o[u * FV + f], a, pb[kv][0], pb[kv][1]);
                    }
                }
            }
            __syncwarp(); /* the stage is refilled NST - 1 iterations on */
        }
        cp_wait<0>();
        __syncwarp();
#pragma unroll
        for (int e = 0; e < 2; e++) {
            lrun[e] += __shfl_xor_sync(0xffffffffu, lrun[e], 4);
            lrun[e] += __shfl_xor_sync(0xffffffffu, lrun[e], 8);
            lrun[e] += __shfl_xor_sync(0xffffffffu, lrun[e], 16);
            const int g = 2 * tq + e;
            if (g < G) {
#pragma unroll
                for (int u = 0; u < VCH; u++)
#pragma unroll
                    for (int f = 0; f < FV; f++) {
                        orow[g * D + code_ch<VB>(u, 2 * gq, f)] = o[u * FV + f][e];
                        orow[g * D + code_ch<VB>(u, 2 * gq + 1, f)] = o[u * FV + f][2 + e];
                    }
                if (gq == 0) {
                    mw[warp][g] = mrun[e];
                    lw[warp][g] = lrun[e];
                }
            }
        }
    }
    __syncthreads();
    /* ---- merge the warps into this split's (max, sum, O) ---- */
    for (int e = threadIdx.x; e < G * D; e += NTH) {
        const int g = e / D, c = e % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < NW; w++) M = fmaxf(M, mw[w][g]);
        float L = 0.0f, O = 0.0f;
        if (M != -INFINITY)
#pragma unroll
            for (int w = 0; w < NW; w++) {
                if (mw[w][g] == -INFINITY) continue;
                const float wt = ex2(mw[w][g] - M);
                L = fmaf(wt, lw[w][g], L);
                O = fmaf(wt, ((const float *)(dsm + (size_t)w * NST * C::STAGE))[g * D + c], O);
            }
        float *pp = p.part + (((size_t)h * (p.n_split + 1) + sp) * G + g) * (D + 2);
        if (c == 0) {
            pp[0] = M;
            pp[1] = L;
        }
        pp[2 + c] = O;
    }
}

template <int D, int KB, int VB>
__global__ void __launch_bounds__(NTH, MINB) dq_k(dq_p p) {
    pdl_trigger();
    pdl_wait();
    dq_body<D, KB, VB>(p, blockIdx.x, blockIdx.y);
}

/* Several sequences of one layer (the batched step), each with the splits it gets alone:
 * grid (Hkv, largest n_split + 1, sequences); parameters in place (__grid_constant__). */
#define DQ_SET 12
struct dq_set {
    dq_p s[DQ_SET];
};
static_assert(sizeof(dq_set) <= 4000, "dq_set must fit the 4 KB of kernel parameters");

template <int D, int KB, int VB>
__global__ void __launch_bounds__(NTH, MINB) dq_many_k(const __grid_constant__ dq_set P) {
    pdl_trigger();
    pdl_wait();
    const dq_p &p = P.s[blockIdx.z];
    if ((int)blockIdx.y > p.n_split) return;
    dq_body<D, KB, VB>(p, blockIdx.x, blockIdx.y);
}

/* Splits of p for occ resident blocks (dq_k's): one full wave (the tail block included), at
 * least 2 tiles per warp. A sequence gets the same splits alone and in a dq_set. */
static void dq_split(const tlc_ctx *cx, int occ, int Hkv, dq_p &p) {
    const int tiles = (p.nq + TT - 1) / TT, want = TL_MAX(1, cx->n_sm * occ / Hkv - 1);
    int per = (tiles + want - 1) / want;
    per = TL_MAX(2 * NW, (per + NW - 1) / NW * NW);
    p.split_len = per * TT;
    p.n_split = (tiles + per - 1) / per;
}

/* ps[0..n) of one variant and shape: one with dq_k, several in sets of DQ_SET with dq_many_k,
 * each set's partials side by side in the scratch and merged (tlc_dec_merge[_many]) before the
 * next set reuses it. 1: the variant's shared memory exceeds the device's (not handled). */
template <int D, int KB, int VB>
int dq_launch(tlc_ctx *cx, dq_p *ps, int n, int Hkv, const float *const *knew, const float *const *vnew, float *const *out,
              tl_error *err) {
    using C = dq_cfg<D, KB, VB>;
    if (C::SMEM > cx->smem_optin) return 1;
    cudaError_t e = cudaFuncSetAttribute(dq_k<D, KB, VB>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM);
    if (e == cudaSuccess && n > 1)
        e = cudaFuncSetAttribute(dq_many_k<D, KB, VB>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM);
    if (e != cudaSuccess)
        return tl_fail(err, "cudaFuncSetAttribute(decode attention on tensor cores, %zu bytes): %s", C::SMEM, cudaGetErrorString(e));
    int occ = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, dq_k<D, KB, VB>, NTH, C::SMEM) != cudaSuccess || occ < 1) occ = 1;
    for (int i = 0; i < n; i++) dq_split(cx, occ, Hkv, ps[i]);
    const size_t unit = (size_t)Hkv * ps[0].G * (D + 2) * sizeof(float); /* partials of one split */
    if (n == 1) {
        dq_p &p = ps[0];
        const int ns = p.n_split + 1;
        if (tlc_scratch(cx, unit * ns, err)) return -1;
        p.part = (float *)cx->scratch;
        e = tlc_launch(!cx->no_pdl, dq_k<D, KB, VB>, dim3(Hkv, ns), dim3(NTH), C::SMEM, cx->stream, p);
        if (e != cudaSuccess) return tl_fail(err, "CUDA kernel decode attention (tensor cores, codes): %s", cudaGetErrorString(e));
        return tlc_dec_merge(cx, D, Hkv, p.G, ns, p.part, p.q, p.scale, knew[0], vnew[0], out[0], err);
    }
    for (int a = 0; a < n;) {
        const int b = TL_MIN(n, a + DQ_SET);
        size_t need = 0;
        int max_ns = 1;
        for (int i = a; i < b; i++) {
            need += unit * (ps[i].n_split + 1);
            max_ns = TL_MAX(max_ns, ps[i].n_split + 1);
        }
        if (tlc_scratch(cx, need, err)) return -1; /* (a larger one waits for the stream first) */
        dq_set P;
        memset(&P, 0, sizeof P);
        tlc_merge_row mr[DQ_SET];
        size_t off = 0;
        for (int i = a; i < b; i++) {
            dq_p &p = P.s[i - a];
            p = ps[i];
            p.part = (float *)((char *)cx->scratch + off);
            off += unit * (p.n_split + 1);
            mr[i - a] = tlc_merge_row{p.part, p.q, knew[i], vnew[i], out[i], Hkv, p.G, p.n_split + 1, p.scale};
        }
        e = tlc_launch(!cx->no_pdl, dq_many_k<D, KB, VB>, dim3(Hkv, max_ns, b - a), dim3(NTH), C::SMEM, cx->stream, P);
        if (e != cudaSuccess)
            return tl_fail(err, "CUDA kernel decode attention (tensor cores, codes, %d sequences): %s", b - a, cudaGetErrorString(e));
        if (tlc_dec_merge_many(cx, D, b - a, mr, err)) return -1;
        a = b;
    }
    return 0;
}

template <int D, int KB>
int dq_v(tlc_ctx *cx, dq_p *ps, int n, int Hkv, int vb, const float *const *knew, const float *const *vnew, float *const *out,
         tl_error *err) {
    switch (vb) {
    case 8: return dq_launch<D, KB, 8>(cx, ps, n, Hkv, knew, vnew, out, err);
    case 4: return dq_launch<D, KB, 4>(cx, ps, n, Hkv, knew, vnew, out, err);
    default: return dq_launch<D, KB, 2>(cx, ps, n, Hkv, knew, vnew, out, err);
    }
}

/* dq_launch of the variant (head size D, key and value bits). */
int dq_kv(tlc_ctx *cx, dq_p *ps, int n, int D, int Hkv, int kb, int vb, const float *const *knew, const float *const *vnew,
          float *const *out, tl_error *err) {
#define KV_(DD)                                                                                     \
    switch (kb) {                                                                                   \
    case 8: return dq_v<DD, 8>(cx, ps, n, Hkv, vb, knew, vnew, out, err);                           \
    case 4: return dq_v<DD, 4>(cx, ps, n, Hkv, vb, knew, vnew, out, err);                           \
    default: return dq_v<DD, 2>(cx, ps, n, Hkv, vb, knew, vnew, out, err);                          \
    }
    if (D == 64) KV_(64)
    KV_(128)
#undef KV_
}

void dq_params(const tlc_layer_kv *L, int n_past, const float *q, dq_p *p) {
    memset(p, 0, sizeof *p);
    p->K = L->k;
    p->V = L->v;
    p->q = q;
    p->n_past = n_past;
    p->G = L->n_head / L->n_head_kv;
    p->nq = L->k.nq;
    p->scale = L->scale * 1.4426950408889634f;
}

bool codes_side(const kv_side &S) {
    return S.mode == KV_SLIDE && S.g >= 32 && !S.sym && (S.bits == 8 || S.bits == 4 || S.bits == 2) &&
           (S.params_head * 2) % 16 == 0 && (S.codes_head % 16) == 0 && ((uintptr_t)S.params % 16) == 0 &&
           ((uintptr_t)S.codes % 16) == 0;
}

} // namespace

bool tlc_dec_mma_takes(const tlc_ctx *cx, const tlc_layer_kv *L, int n_past) {
    const int D = L->k.d, G = L->n_head / L->n_head_kv;
    if (cx->no_dec_mma || L->window != 0 || L->off || L->v.d != D || (D != 64 && D != 128) || G > GMAX) return false;
    if (!codes_side(L->k) || !codes_side(L->v)) return false;
    const int nq = L->k.nq;
    return L->v.nq == nq && n_past - nq <= TAIL_MAX && !(n_past > nq && (L->k.R < 1 || L->v.R < 1));
}

int tlc_attn_decode_mma(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, const float *q, const float *knew,
                        const float *vnew, float *out, tl_error *err) {
    if (!tlc_dec_mma_takes(cx, L, n_past)) return 1;
    dq_p p;
    dq_params(L, n_past, q, &p);
    return dq_kv(cx, &p, 1, L->k.d, L->n_head_kv, L->k.bits, L->v.bits, &knew, &vnew, &out, err);
}

int tlc_attn_decode_mma_many(tlc_ctx *cx, int n, const tlc_dec_row *rows, bool *done, tl_error *err) {
    if (n > TLC_MANY) return tl_fail(err, "decode attention: %d rows at once (at most %d)", n, TLC_MANY);
    dq_p ps[TLC_MANY];
    const float *kn[TLC_MANY], *vn[TLC_MANY];
    float *out[TLC_MANY];
    int idx[TLC_MANY];
    bool ok[TLC_MANY];
    for (int i = 0; i < n; i++) ok[i] = !done[i] && tlc_dec_mma_takes(cx, rows[i].L, rows[i].n_past);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (!ok[i]) continue;
        const tlc_layer_kv *A = rows[i].L;
        int m = 0;
        for (int j = i; j < n; j++) {
            const tlc_layer_kv *B = rows[j].L;
            if (!ok[j] || B->k.d != A->k.d || B->n_head_kv != A->n_head_kv || B->n_head != A->n_head ||
                B->k.bits != A->k.bits || B->v.bits != A->v.bits)
                continue;
            dq_params(B, rows[j].n_past, rows[j].q, &ps[m]);
            kn[m] = rows[j].knew, vn[m] = rows[j].vnew, out[m] = rows[j].out;
            idx[m++] = j;
            ok[j] = false;
        }
        rc = dq_kv(cx, ps, m, A->k.d, A->n_head_kv, A->k.bits, A->v.bits, kn, vn, out, err);
        if (rc == 0)
            for (int k = 0; k < m; k++) done[idx[k]] = true;
        else if (rc == 1) /* the variant's shared memory exceeds the device's: left to the caller, as alone */
            rc = 0;
    }
    return rc;
}
