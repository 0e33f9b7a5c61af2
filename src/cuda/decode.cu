/* decode.cu: attention for one new token (decode) over a long history: flash-decoding.
 *
 * The general kernel (attn.cu) decodes 32-token tiles into shared memory in fp32 behind four
 * block barriers per tile; at long context it is bound by instructions and barriers, not by
 * bytes (docs/cuda.md: k2v2 took as long as f16). This kernel is built for bytes:
 *  - grid (KV head, split): the keys [kstart, n_past] are cut into n_split ranges so that
 *    Hkv * n_split blocks fill every SM once (occupancy from the runtime); each block holds
 *    the GQA group of query heads of its KV head (q in registers, pre-scaled by scale*log2 e);
 *  - each of the block's 4 warps walks its own 32-token tiles with its own online softmax:
 *    no block barrier inside the loop;
 *  - keys: a token is read by D/8 lanes, each lane owning 8 channels (16-byte loads of f16
 *    rows; for per-token codes the lane's `bits` bytes, 2..8-byte loads, scored as
 *    s*(q.codes) + z*sum(q) with the lane's 8 query values rounded to int8 and q.codes taken
 *    by two dp4a: k_codes_i8); the partial dots of the 32 tokens
 *    are reduce-scattered over the lanes (G*(D/8-1) shuffles per tile) so that lane i ends
 *    with the score of token i;
 *  - per-channel (KIVI) keys: lane i scores token i itself, reading channel units (the same
 *    bytes for the whole warp: one transaction) against a per-warp table q*s in shared
 *    memory, plus the constant q.z of the token group;
 *  - values: the same D/8-lanes-per-token split; p is broadcast through a per-warp shared
 *    array; quantized values accumulate s*p*code per channel and p*z per lane (added at the end);
 *  - every tile takes these paths: tokens outside the valid range (window start, history
 *    end) read a clamped valid row and add nothing; a tile straddling the per-token residual
 *    boundary runs the codes pass and the f16-ring pass over its two token ranges; f16 rows
 *    (dense, residual ring, KIVI block) are read in the quantized side's lane map;
 *  - the new token (f32, exact) is not in any tile: it joins in the final merge;
 *  - the 4 warps merge through shared memory once, and a small kernel merges the splits by
 *    their log-sum-exp weights (or the block writes the output itself when n_split == 1).
 * Formats with a fast path: dense f16; per-token 8/4/2-bit (asym or sym, groups >= 32);
 * per-channel 4/2-bit keys, in the pairs DEC_FORMATS lists. Other combinations, head sizes
 * other than 64/128, and groups of more than 4 queries (except f16/f16) return 1 and the
 * general kernel runs. --cuda-opt no-decode turns this kernel off (tlc_ctx.old_decode). */
#include "backend.cuh"

#include <math.h>

#define DW 4 /* warps per block */
#define DTHR (DW * 32)

/* formats (template KF/VF): 16 dense f16; 8/4/2 per-token codes; -4/-2 per-channel codes */

struct dec_p {
    kv_side K, V;
    const float *q, *knew, *vnew;
    float *out, *part;
    int n_past, Hkv, G, klo, kstart, split_len, n_split;
    float scale; /* attention scale * log2(e): scores in the log2 domain */
};

/* Channel of value e (0..7) of lane li (0..D/8-1) in a token for format F: the lane owns the
 * `bits` bytes li*bits.. of the token's code row (kvq_pack32 layout, units of 32 values).
 * f16 rows (dense stores, residual rings and blocks) are read in the same lane map. */
template <int F>
__device__ __forceinline__ int chmap(int li, int e) {
    const int u = li >> 2, r = li & 3;
    if (F == 4) return u * 32 + r * 4 + (e & 3) + 16 * (e >> 2);
    if (F == 2) return u * 32 + r * 2 + (e & 1) + 8 * (e >> 1);
    return 8 * li + e; /* dense, 8-bit codes, per-channel keys */
}

/* The lane's 8 halves of an f16 row in chmap<F> order (16, 2x8 or 4x4-byte loads). */
template <int F>
__device__ __forceinline__ uint4 ld_row(const uint16_t *row, int li) {
    const uint16_t *b = row + (li >> 2) * 32;
    if (F == 4) {
        const uint2 x = *(const uint2 *)(b + (li & 3) * 4), y = *(const uint2 *)(b + (li & 3) * 4 + 16);
        return make_uint4(x.x, x.y, y.x, y.y);
    }
    if (F == 2) {
        const uint16_t *c = b + (li & 3) * 2;
        return make_uint4(*(const uint32_t *)c, *(const uint32_t *)(c + 8), *(const uint32_t *)(c + 16), *(const uint32_t *)(c + 24));
    }
    return __ldcs((const uint4 *)(row + 8 * li));
}

/* Code of value e from the lane's bytes (w0: bytes 0..3, w1: bytes 4..7), as a float. */
template <int B>
__device__ __forceinline__ float code_f(uint32_t w0, uint32_t w1, int e) {
    uint32_t c;
    if (B == 8) c = ((e < 4 ? w0 : w1) >> (8 * (e & 3))) & 0xffu;
    else if (B == 4) c = (w0 >> (8 * (e & 3) + 4 * (e >> 2))) & 0xfu;
    else c = (w0 >> (8 * (e & 1) + 2 * (e >> 1))) & 3u;
    return __uint_as_float(0x4B000000u | c) - 8388608.0f; /* exact int -> float, no I2F */
}

template <int B>
__device__ __forceinline__ void ld_codes(const uint8_t *p, uint32_t &w0, uint32_t &w1) {
    if (B == 8) {
        const uint2 v = *(const uint2 *)p;
        w0 = v.x;
        w1 = v.y;
    } else if (B == 4) {
        w0 = *(const uint32_t *)p;
    } else {
        w0 = *(const uint16_t *)p;
    }
}

/* Reduce-scatter over the N lanes of a subgroup: v[i][g] summed over the lanes; lane li ends
 * with the sum for i = li in v[0][g]. */
template <int OFF, int N, int GP>
__device__ __forceinline__ void rscatter_step(float (&v)[N][GP], int li) {
    const bool up = (li & OFF) != 0;
#pragma unroll
    for (int i = 0; i < OFF; i++)
#pragma unroll
        for (int g = 0; g < GP; g++) {
            const float a = v[i][g], b = v[i + OFF][g];
            v[i][g] = (up ? b : a) + __shfl_xor_sync(0xffffffffu, up ? a : b, OFF);
        }
    if constexpr (OFF > 1) rscatter_step<OFF / 2, N, GP>(v, li);
}
template <int N, int GP>
__device__ __forceinline__ void rscatter(float (&v)[N][GP], int li) {
    rscatter_step<N / 2, N, GP>(v, li);
}


__device__ __forceinline__ void h8(uint4 w, float *f) {
    const __half2 *hp = (const __half2 *)&w;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 x = __half22float2(hp[k]);
        f[2 * k] = x.x;
        f[2 * k + 1] = x.y;
    }
}

enum { SLOT_DENSE = 0, SLOT_RING = 1, SLOT_BLOCK = 2 };

/* Row of token t among a side's f16 rows: dense ring of cap rows, residual ring of R, or
 * the KIVI block (first token nq). r0 = t0 % cap for the dense case (t in [t0, t0+32)). */
__device__ __forceinline__ int f16_slot(const kv_side &S, int mode, int t, int t0, int r0) {
    if (mode == SLOT_DENSE) {
        if (S.cap >= 32) {
            const int r = r0 + (t - t0);
            return r >= S.cap ? r - S.cap : r;
        }
        return t % S.cap;
    }
    return mode == SLOT_RING ? t % S.R : t - S.nq;
}

/* The lane's tile layout: at iteration i, subgroup sg (D/8 lanes) reads token t0 + sg*LPT + i.
 * Tokens outside [a, b) read a valid token's row instead (clamped: never garbage, which
 * could be NaN) and add nothing. */

/* part[i][g] += q.k over the lane's channels, f16 rows. */
template <int LPT, int GP, int F>
__device__ __forceinline__ void k_rows(const kv_side &S, int h, int mode, int t0, int a, int b, int sg, int li,
                                       const float (&qk)[GP][8], float (&part)[LPT][GP]) {
    const uint16_t *base = (const uint16_t *)S.fp + h * S.fp_head;
    const int r0 = mode == SLOT_DENSE ? t0 % S.cap : 0;
    /* two halves of LPT/2 rows: 16-byte loads in flight without spilling registers */
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        uint4 kr[LPT / 2];
#pragma unroll
        for (int j = 0; j < LPT / 2; j++) {
            const int t = min(max(t0 + sg * LPT + hf * (LPT / 2) + j, a), b - 1);
            kr[j] = ld_row<F>(base + (size_t)f16_slot(S, mode, t, t0, r0) * S.d, li);
        }
#pragma unroll
        for (int j = 0; j < LPT / 2; j++) {
            const int i = hf * (LPT / 2) + j, t = t0 + sg * LPT + i;
            const bool in = t >= a && t < b;
            float f[8];
            h8(kr[j], f);
#pragma unroll
            for (int g = 0; g < GP; g++) {
                float x = qk[g][0] * f[0];
#pragma unroll
                for (int e = 1; e < 8; e++) x = fmaf(qk[g][e], f[e], x);
                part[i][g] += in ? x : 0.0f;
            }
        }
    }
}

/* Issue the loads of a tile's per-token codes for the lane (its B bytes of each of its LPT
 * tokens, clamped to [a, b) as above) and their parameter words (s | z << 16, or s). */
template <int LPT, int B>
__device__ __forceinline__ void ld_tile_codes(const kv_side &S, int h, int t0, int a, int b, int sg, int li,
                                              uint32_t (&w0)[LPT], uint32_t (&w1)[LPT], uint32_t (&pw)[LPT]) {
    const uint8_t *cb = S.codes + h * S.codes_head + li * B;
    const uint16_t *pb = S.params + h * S.params_head + ((li >> 2) * 32 / S.g) * S.ppg;
#pragma unroll
    for (int i = 0; i < LPT; i++) {
        const int t = min(max(t0 + sg * LPT + i, a), b - 1);
        ld_codes<B>(cb + (size_t)t * S.row_bytes, w0[i], w1[i]);
        const uint16_t *pr = pb + (size_t)t * S.pstride;
        pw[i] = S.sym ? (uint32_t)pr[0] : *(const uint32_t *)pr;
    }
}

/* (s, z) of a parameter word (symmetric: z = -2^(B-1) s). */
template <int B>
__device__ __forceinline__ void tok_sz(const kv_side &S, uint32_t pw, float &s, float &z) {
    s = h2f((uint16_t)(pw & 0xffffu));
    z = S.sym ? -(float)(1 << (B - 1)) * s : h2f((uint16_t)(pw >> 16));
}

/* u8 x s8 dot of 4 byte pairs, added to c (PTX dp4a). */
__device__ __forceinline__ int dp4a_us(uint32_t a, uint32_t b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

/* The lane's 8 codes (chmap order e = 0..7) as two words of 4 bytes: e 0..3 and e 4..7. */
template <int B>
__device__ __forceinline__ void codes_u8(uint32_t w0, uint32_t w1, uint32_t &lo, uint32_t &hi) {
    if (B == 8) {
        lo = w0;
        hi = w1;
    } else if (B == 4) {
        lo = w0 & 0x0F0F0F0Fu;
        hi = (w0 >> 4) & 0x0F0F0F0Fu;
    } else { /* byte 0 holds e 0,2,4,6 and byte 1 e 1,3,5,7 in bit pairs 0..3 */
        lo = (w0 & 0x0303u) | ((w0 << 14) & 0x03030000u);
        hi = ((w0 >> 4) & 0x0303u) | ((w0 << 10) & 0x03030000u);
    }
}

/* k_codes with an int8 query: part[i][g] += s * qs[g] * (qi[g] . codes) + z * sum(q). The
 * query of each lane's 8 channels is rounded to int8 with its own scale qs (max |q| / 127):
 * two dp4a per token and query instead of 8 dequantizations and 8 FMAs (the decode kernel
 * is bound by instructions, not bytes, for these formats). */
template <int LPT, int GP, int B>
__device__ __forceinline__ void k_codes_i8(const kv_side &S, int h, int t0, int a, int b, int sg, int li,
                                           const uint32_t (&qi)[GP][2], const float (&qs)[GP], const float (&qsum)[GP],
                                           float (&part)[LPT][GP]) {
    uint32_t w0[LPT], w1[LPT], pw[LPT];
    ld_tile_codes<LPT, B>(S, h, t0, a, b, sg, li, w0, w1, pw);
#pragma unroll
    for (int i = 0; i < LPT; i++) {
        const int t = t0 + sg * LPT + i;
        const bool in = t >= a && t < b;
        float s, z;
        tok_sz<B>(S, pw[i], s, z);
        uint32_t lo, hi;
        codes_u8<B>(w0[i], w1[i], lo, hi);
#pragma unroll
        for (int g = 0; g < GP; g++) {
            const int d = dp4a_us(hi, qi[g][1], dp4a_us(lo, qi[g][0], 0));
            part[i][g] += in ? fmaf(s * qs[g], (float)d, z * qsum[g]) : 0.0f;
        }
    }
}

/* acc[g][e] += p * v, f16 rows; pv = the warp's p array [32][GP]. */
template <int LPT, int GP, int F>
__device__ __forceinline__ void v_rows(const kv_side &S, int h, int mode, int t0, int a, int b, int sg, int li,
                                       const float (*pv)[GP], float (&acc)[GP][8]) {
    const uint16_t *base = (const uint16_t *)S.fp + h * S.fp_head;
    const int r0 = mode == SLOT_DENSE ? t0 % S.cap : 0;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        uint4 vr[LPT / 2];
#pragma unroll
        for (int j = 0; j < LPT / 2; j++) {
            const int t = min(max(t0 + sg * LPT + hf * (LPT / 2) + j, a), b - 1);
            vr[j] = ld_row<F>(base + (size_t)f16_slot(S, mode, t, t0, r0) * S.d, li);
        }
#pragma unroll
        for (int j = 0; j < LPT / 2; j++) {
            const int tt = sg * LPT + hf * (LPT / 2) + j;
            const bool in = t0 + tt >= a && t0 + tt < b;
            float f[8];
            h8(vr[j], f);
#pragma unroll
            for (int g = 0; g < GP; g++) {
                const float w = in ? pv[tt][g] : 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] = fmaf(w, f[e], acc[g][e]);
            }
        }
    }
}

/* acc[g][e] += p*s * code, pz[g] += p*z, per-token codes. */
template <int LPT, int GP, int B>
__device__ __forceinline__ void v_codes(const kv_side &S, int h, int t0, int a, int b, int sg, int li, const float (*pv)[GP],
                                        float (&acc)[GP][8], float (&pz)[GP]) {
    uint32_t w0[LPT], w1[LPT], pw[LPT];
    ld_tile_codes<LPT, B>(S, h, t0, a, b, sg, li, w0, w1, pw);
#pragma unroll
    for (int i = 0; i < LPT; i++) {
        const int tt = sg * LPT + i;
        const bool in = t0 + tt >= a && t0 + tt < b;
        float s, z;
        tok_sz<B>(S, pw[i], s, z);
        float cf[8];
#pragma unroll
        for (int e = 0; e < 8; e++) cf[e] = code_f<B>(w0[i], w1[i], e);
#pragma unroll
        for (int g = 0; g < GP; g++) {
            const float w = in ? pv[tt][g] : 0.0f;
            pz[g] = fmaf(w, z, pz[g]);
            const float ws = w * s;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] = fmaf(ws, cf[e], acc[g][e]);
        }
    }
}

/* Scores of the new token (f32, exact): snew[g] = q_g . knew (q pre-scaled in qs[g][c]). */
template <int D>
__device__ __forceinline__ void new_scores(const float *qs, int qstride, const float *knew, int h, int G, float *snew) {
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int g = threadIdx.x >> 5; g < G; g += nw) {
        float s = 0.0f;
        for (int c = lane; c < D; c += 32) s = fmaf(qs[g * qstride + c], knew[(size_t)h * D + c], s);
        s = wsum(s);
        if (lane == 0) snew[g] = s;
    }
}

/* One block of the decode attention: KV head h, split sp of sequence p (dec_k: one sequence;
 * dec_many_k: one of several, the same code). */
template <int D, int GP, int KF, int VF>
__device__ __forceinline__ void dec_body(const dec_p &p, int h, int sp) {
    constexpr int LPT = D / 8; /* lanes per token = tile iterations (tokens per lane-subgroup) */
    __shared__ __align__(16) float qsm[GP][D];
    __shared__ __align__(16) float wsm[DW][GP * D]; /* per warp: KIVI q*s table, then the accumulator */
    __shared__ __align__(16) float psm[DW][32][GP];
    __shared__ float msm[DW][GP], lsm[DW][GP], snew[GP];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int li = lane % LPT, sg = lane / LPT, G = p.G;
    for (int e = tid; e < GP * D; e += DTHR) {
        const int g = e / D, c = e % D;
        qsm[g][c] = g < G ? p.q[(size_t)(h * G + g) * D + c] * p.scale : 0.0f;
    }
    __syncthreads();
    /* per-token key codes take an int8 query (qi8, qs8: k_codes_i8); the f32 query qk is then
     * dead after this setup, and the f16 residual rows reload it from qsm */
    float qk[GP][8], qsum[GP], acc[GP][8], pz[GP], lsum[GP], mrun[GP], qs8[GP];
    uint32_t qi8[GP][2];
#pragma unroll
    for (int g = 0; g < GP; g++) {
        qsum[g] = 0.0f;
        float amax = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            qk[g][e] = qsm[g][chmap<KF>(li, e)];
            qsum[g] += qk[g][e];
            amax = fmaxf(amax, fabsf(qk[g][e]));
            acc[g][e] = 0.0f;
        }
        qs8[g] = amax / 127.0f;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        qi8[g][0] = qi8[g][1] = 0;
#pragma unroll
        for (int e = 0; e < 8; e++) qi8[g][e >> 2] |= ((uint32_t)__float2int_rn(qk[g][e] * inv) & 0xffu) << (8 * (e & 3));
        pz[g] = lsum[g] = 0.0f;
        mrun[g] = -INFINITY;
    }
    const kv_side &K = p.K, &V = p.V;
    const int lo = p.kstart + sp * p.split_len, hi = min(p.n_past, lo + p.split_len);
    for (int t0 = lo + 32 * warp; t0 < hi; t0 += 32 * DW) {
        const int a = max(t0, p.klo), b = min(t0 + 32, hi); /* valid keys of the tile, a < b */
        float sc[GP];
        /* ---- scores: lane i <- token t0 + i ---- */
        bool direct = false;
        float part[LPT][GP];
#pragma unroll
        for (int i = 0; i < LPT; i++)
#pragma unroll
            for (int g = 0; g < GP; g++) part[i][g] = 0.0f;
        if (KF == 16) {
            k_rows<LPT, GP, 16>(K, h, SLOT_DENSE, t0, a, b, sg, li, qk, part);
        } else if (KF > 0) {
            constexpr int B = KF > 0 && KF < 16 ? KF : 2;
            const int m = min(b, K.nq);
            if (a < m) k_codes_i8<LPT, GP, B>(K, h, t0, a, m, sg, li, qi8, qs8, qsum, part);
            if (max(a, K.nq) < b) {
                float qf[GP][8];
#pragma unroll
                for (int g = 0; g < GP; g++)
#pragma unroll
                    for (int e = 0; e < 8; e++) qf[g][e] = qsm[g][chmap<KF>(li, e)];
                k_rows<LPT, GP, KF>(K, h, SLOT_RING, t0, max(a, K.nq), b, sg, li, qf, part);
            }
        } else if (b > K.nq) {
            /* KIVI block (f16): nq is a multiple of the flush block, so a tile is all codes or all block */
            k_rows<LPT, GP, KF>(K, h, SLOT_BLOCK, t0, a, b, sg, li, qk, part);
        } else {
            /* per-channel codes: lane = token, channel units shared by the warp */
            constexpr int B = KF < 0 ? -KF : 2;
            const int grp = t0 / K.g, u = (t0 % K.g) / 32, ustride = (K.g / 32) * 4 * B;
            const uint16_t *pp = K.params + h * K.params_head + grp * K.grp_halves;
            float *qs = wsm[warp];
            float qz[GP];
#pragma unroll
            for (int g = 0; g < GP; g++) qz[g] = 0.0f;
            __syncwarp();
            for (int c = lane; c < D; c += 32) {
                float s, z;
                q_decode_params(pp + (size_t)c * K.ppg, B, K.sym, &s, &z);
#pragma unroll
                for (int g = 0; g < GP; g++) {
                    qs[c * GP + g] = qsm[g][c] * s;
                    qz[g] = fmaf(qsm[g][c], z, qz[g]);
                }
            }
#pragma unroll
            for (int g = 0; g < GP; g++) sc[g] = wsum(qz[g]);
            __syncwarp();
            const int byte = B == 4 ? (lane & 15) : (lane & 7), shift = B == 4 ? (lane >> 4) * 4 : (lane >> 3) * 2;
            const uint8_t *ub = K.codes + h * K.codes_head + grp * K.grp_bytes + u * 4 * B + byte;
#pragma unroll 2
            for (int c0 = 0; c0 < D; c0 += 16) {
                uint32_t cb[16];
#pragma unroll
                for (int j = 0; j < 16; j++) cb[j] = ub[(size_t)(c0 + j) * ustride];
#pragma unroll
                for (int j = 0; j < 16; j++) {
                    const float x = __uint_as_float(0x4B000000u | ((cb[j] >> shift) & ((1u << B) - 1))) - 8388608.0f;
                    const float *qc = qs + (c0 + j) * GP;
#pragma unroll
                    for (int g = 0; g < GP; g++) sc[g] = fmaf(qc[g], x, sc[g]);
                }
            }
            direct = true;
        }
        if (!direct) {
            rscatter<LPT, GP>(part, li);
#pragma unroll
            for (int g = 0; g < GP; g++) sc[g] = part[0][g];
        }
        {
            const bool in = t0 + lane >= a && t0 + lane < b;
#pragma unroll
            for (int g = 0; g < GP; g++)
                if (!in) sc[g] = -INFINITY;
        }
        /* ---- online softmax over the tile (log2 domain) ---- */
#pragma unroll
        for (int g = 0; g < GP; g++) {
            const float mn = fmaxf(mrun[g], wmax(sc[g]));
            float pg = 0.0f, corr = 1.0f;
            if (mn != -INFINITY) {
                pg = exp2f(sc[g] - mn);
                corr = exp2f(mrun[g] - mn);
            }
            mrun[g] = mn;
            lsum[g] = fmaf(lsum[g], corr, pg);
            pz[g] *= corr;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] *= corr;
            psm[warp][lane][g] = pg;
        }
        __syncwarp();
        /* ---- values: token sg*LPT + i of the tile at iteration i ---- */
        if (VF == 16) {
            v_rows<LPT, GP, 16>(V, h, SLOT_DENSE, t0, a, b, sg, li, psm[warp], acc);
        } else {
            constexpr int B = VF > 0 && VF < 16 ? VF : 2;
            const int m = min(b, V.nq);
            if (a < m) v_codes<LPT, GP, B>(V, h, t0, a, m, sg, li, psm[warp], acc, pz);
            if (max(a, V.nq) < b) v_rows<LPT, GP, VF>(V, h, SLOT_RING, t0, max(a, V.nq), b, sg, li, psm[warp], acc);
        }
        __syncwarp(); /* psm (and the KIVI table) are rewritten by the next tile */
    }
    /* ---- the warp's state: sum the subgroups (same channels, other tokens) ---- */
#pragma unroll
    for (int g = 0; g < GP; g++) {
#pragma unroll
        for (int off = LPT; off < 32; off <<= 1) {
            pz[g] += __shfl_xor_sync(0xffffffffu, pz[g], off);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], off);
        }
        lsum[g] = wsum(lsum[g]);
    }
    __syncwarp();
    if (sg == 0)
#pragma unroll
        for (int g = 0; g < GP; g++)
#pragma unroll
            for (int e = 0; e < 8; e++) wsm[warp][g * D + chmap<VF>(li, e)] = acc[g][e] + pz[g];
    if (lane == 0)
#pragma unroll
        for (int g = 0; g < GP; g++) {
            msm[warp][g] = mrun[g];
            lsm[warp][g] = lsum[g];
        }
    if (p.n_split == 1) new_scores<D>(&qsm[0][0], D, p.knew, h, G, snew);
    __syncthreads();
    /* ---- merge the warps; write the output (with the new token) or this split's state ---- */
    for (int e = tid; e < G * D; e += DTHR) {
        const int g = e / D, c = e % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DW; w++) M = fmaxf(M, msm[w][g]);
        float L = 0.0f, O = 0.0f;
        if (M != -INFINITY)
#pragma unroll
            for (int w = 0; w < DW; w++) {
                if (msm[w][g] == -INFINITY) continue;
                const float wt = exp2f(msm[w][g] - M);
                L = fmaf(wt, lsm[w][g], L);
                O = fmaf(wt, wsm[w][g * D + c], O);
            }
        if (p.n_split == 1) {
            const float sn = snew[g], M2 = fmaxf(M, sn), wo = exp2f(M - M2), wn = exp2f(sn - M2);
            p.out[(size_t)(h * G + g) * D + c] = fmaf(O, wo, wn * p.vnew[(size_t)h * D + c]) / fmaf(L, wo, wn);
        } else {
            float *pp = p.part + ((size_t)h * p.n_split + sp) * G * (D + 2) + (size_t)g * (D + 2);
            if (c == 0) {
                pp[0] = M;
                pp[1] = L;
            }
            pp[2 + c] = O;
        }
    }
}

template <int D, int GP, int KF, int VF, int MINB>
__global__ void __launch_bounds__(DTHR, MINB) dec_k(dec_p p) {
    pdl_trigger();
    pdl_wait();
    dec_body<D, GP, KF, VF>(p, blockIdx.x, blockIdx.y);
}

/* Several sequences' one-token rows of one layer in one launch (the batched step; the same
 * variant, each sequence with the splits it gets alone, so the same bits): grid (Hkv,
 * largest n_split, sequences); a block past its sequence's splits has nothing to do. The
 * parameters travel as a kernel argument (read in place: __grid_constant__), DEC_SET at most. */
#define DEC_SET 12
struct dec_set {
    dec_p s[DEC_SET];
};
static_assert(sizeof(dec_set) <= 4000, "dec_set must fit the 4 KB of kernel parameters");

template <int D, int GP, int KF, int VF, int MINB>
__global__ void __launch_bounds__(DTHR, MINB) dec_many_k(const __grid_constant__ dec_set P) {
    pdl_trigger();
    pdl_wait();
    const dec_p &p = P.s[blockIdx.z];
    if ((int)blockIdx.y >= p.n_split) return;
    dec_body<D, GP, KF, VF>(p, blockIdx.x, blockIdx.y);
}

/* out[h*G + g][c]: the splits and the new token, weighted by 2^(m - M). Only Hkv blocks run
 * this, so it is latency-bound: a warp per query forms the split weights once (lanes over the
 * splits) into shared memory [G][n_split], then every thread sums its channel over the splits
 * with independent loads, instead of two dependent passes over the splits per channel. */
template <int D>
__device__ __forceinline__ void dec_merge_body(const dec_p &p, int h) {
    extern __shared__ float wsm[]; /* [G][n_split] */
    __shared__ float wnew[8], inv[8];
    const int G = p.G, n_split = p.n_split, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const size_t st = (size_t)G * (D + 2);
    for (int g = threadIdx.x >> 5; g < G; g += nw) {
        /* the new token's score, q scaled like the main kernel's */
        float s = 0.0f;
        for (int c = lane; c < D; c += 32) s = fmaf(p.q[(size_t)(h * G + g) * D + c] * p.scale, p.knew[(size_t)h * D + c], s);
        s = wsum(s);
        const float *b = p.part + (size_t)h * n_split * st + (size_t)g * (D + 2);
        float M = s;
        for (int i = lane; i < n_split; i += 32) M = fmaxf(M, b[i * st]);
        M = wmax(M);
        float L = 0.0f;
        for (int i = lane; i < n_split; i += 32) {
            const float m = b[i * st], w = m == -INFINITY ? 0.0f : exp2f(m - M); /* a split with no key: 0 */
            wsm[g * n_split + i] = w;
            L = fmaf(w, b[i * st + 1], L);
        }
        L = wsum(L);
        if (lane == 0) {
            const float w0 = exp2f(s - M);
            wnew[g] = w0;
            inv[g] = 1.0f / (L + w0);
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * D; e += blockDim.x) {
        const int g = e / D, c = e % D;
        const float *b = p.part + (size_t)h * n_split * st + (size_t)g * (D + 2) + 2 + c;
        const float *w = wsm + g * n_split;
        float O = wnew[g] * p.vnew[(size_t)h * D + c];
#pragma unroll 8
        for (int i = 0; i < n_split; i++) O = fmaf(w[i], w[i] != 0.0f ? b[i * st] : 0.0f, O);
        p.out[(size_t)(h * G + g) * D + c] = O * inv[g];
    }
}

/* The merge of the sequences of a dec_set: grid (Hkv, sequences). */
template <int D>
__global__ void dec_merge_many_k(const __grid_constant__ dec_set P) {
    pdl_trigger();
    pdl_wait();
    dec_merge_body<D>(P.s[blockIdx.y], blockIdx.x);
}

int tlc_dec_merge(tlc_ctx *cx, int D, int Hkv, int G, int n_split, const float *part, const float *q, float scale,
                  const float *knew, const float *vnew, float *out, tl_error *err) {
    const tlc_merge_row r = {part, q, knew, vnew, out, Hkv, G, n_split, scale};
    return tlc_dec_merge_many(cx, D, 1, &r, err);
}

int tlc_dec_merge_many(tlc_ctx *cx, int D, int n, const tlc_merge_row *rows, tl_error *err) {
    for (int a = 0; a < n;) {
        const int b = TL_MIN(n, a + DEC_SET);
        dec_set P;
        memset(&P, 0, sizeof P);
        int max_split = 1;
        for (int i = a; i < b; i++) {
            const tlc_merge_row &r = rows[i];
            dec_p &p = P.s[i - a];
            p.part = (float *)r.part;
            p.q = r.q;
            p.knew = r.knew;
            p.vnew = r.vnew;
            p.out = r.out;
            p.Hkv = r.Hkv;
            p.G = r.G;
            p.n_split = r.n_split;
            p.scale = r.scale;
            max_split = TL_MAX(max_split, r.n_split);
        }
        const int G = rows[a].G, Hkv = rows[a].Hkv;
        const size_t smem = sizeof(float) * (size_t)G * max_split;
        if (smem > 48 * 1024) return tl_fail(err, "decode attention merge: %d splits x %d queries", max_split, G);
        const cudaError_t e =
            D == 64 ? tlc_launch(!cx->no_pdl, dec_merge_many_k<64>, dim3(Hkv, b - a), dim3(TL_MIN(1024, G * D)), smem, cx->stream, P)
                    : tlc_launch(!cx->no_pdl, dec_merge_many_k<128>, dim3(Hkv, b - a), dim3(TL_MIN(1024, G * D)), smem, cx->stream, P);
        if (e != cudaSuccess) return tl_fail(err, "CUDA kernel decode attention merge (%d sequences): %s", b - a, cudaGetErrorString(e));
        a = b;
    }
    return 0;
}

static int side_fmt(const kv_side &S, bool is_k) {
    if (S.mode == KV_DENSE) return S.dt == DT_F16 ? 16 : 0;
    if (S.mode == KV_SLIDE) return S.g >= 32 && (S.bits == 8 || S.bits == 4 || S.bits == 2) ? S.bits : 0;
    if (is_k && (S.bits == 4 || S.bits == 2)) return -S.bits;
    return 0;
}

/* Keys per block (split_len) and blocks per KV head (n_split) of p: one full wave, Hkv *
 * n_split ~ SMs * resident blocks (occ: dec_k's, from the runtime), at least 4 tiles (128 keys)
 * per block. A sequence gets the same splits alone and in a dec_set. */
static void dec_split(const tlc_ctx *cx, int occ, dec_p &p) {
    const int span = p.n_past - p.kstart, tiles = (span + 31) / 32;
    const int want = TL_MAX(1, cx->n_sm * occ / p.Hkv);
    int per = (tiles + want - 1) / want;
    per = TL_MAX(4, (per + 3) / 4 * 4);
    p.split_len = per * 32;
    p.n_split = TL_MAX(1, (span + p.split_len - 1) / p.split_len);
}

/* Run ps[0..n) (the same variant): one sequence with dec_k (and tlc_dec_merge), several in sets of
 * DEC_SET with dec_many_k (and dec_merge_many_k), their partials side by side in the scratch. */
template <int D, int GP, int KF, int VF, int MINB>
static int dec_launch(tlc_ctx *cx, dec_p *ps, int n, tl_error *err) {
    int occ = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, dec_k<D, GP, KF, VF, MINB>, DTHR, 0) != cudaSuccess || occ < 1) occ = 1;
    for (int i = 0; i < n; i++) dec_split(cx, occ, ps[i]);
    const size_t unit = (size_t)ps[0].Hkv * ps[0].G * (D + 2) * sizeof(float); /* partials of one split */
    if (n == 1) {
        dec_p &p = ps[0];
        if (p.n_split > 1) {
            if (tlc_scratch(cx, unit * p.n_split, err)) return -1;
            p.part = (float *)cx->scratch;
        }
        cudaError_t e = tlc_launch(!cx->no_pdl, dec_k<D, GP, KF, VF, MINB>, dim3(p.Hkv, p.n_split), dim3(DTHR), 0, cx->stream, p);
        if (e != cudaSuccess) return tl_fail(err, "CUDA kernel decode attention: %s", cudaGetErrorString(e));
        if (p.n_split > 1) return tlc_dec_merge(cx, D, p.Hkv, p.G, p.n_split, p.part, p.q, p.scale, p.knew, p.vnew, p.out, err);
        return 0;
    }
    for (int a = 0; a < n;) {
        const int b = TL_MIN(n, a + DEC_SET);
        size_t need = 0;
        int max_split = 1;
        for (int i = a; i < b; i++) {
            if (ps[i].n_split > 1) need += unit * ps[i].n_split;
            max_split = TL_MAX(max_split, ps[i].n_split);
        }
        if (need && tlc_scratch(cx, need, err)) return -1; /* (a larger one waits for the stream first) */
        dec_set P;
        memset(&P, 0, sizeof P);
        size_t off = 0;
        for (int i = a; i < b; i++) {
            P.s[i - a] = ps[i];
            if (ps[i].n_split > 1) {
                P.s[i - a].part = (float *)((char *)cx->scratch + off);
                off += unit * ps[i].n_split;
            }
        }
        cudaError_t e = tlc_launch(!cx->no_pdl, dec_many_k<D, GP, KF, VF, MINB>, dim3(ps[0].Hkv, max_split, b - a),
                                   dim3(DTHR), 0, cx->stream, P);
        if (e != cudaSuccess) return tl_fail(err, "CUDA kernel decode attention (%d sequences): %s", b - a, cudaGetErrorString(e));
        /* the sequences of more than one split merge (the others wrote their output) */
        tlc_merge_row mr[DEC_SET];
        int nm = 0;
        for (int i = 0; i < b - a; i++) {
            const dec_p &p = P.s[i];
            if (p.n_split > 1) mr[nm++] = tlc_merge_row{p.part, p.q, p.knew, p.vnew, p.out, p.Hkv, p.G, p.n_split, p.scale};
        }
        if (nm && tlc_dec_merge_many(cx, D, nm, mr, err)) return -1;
        a = b;
    }
    return 0;
}

#define DEC_FORMATS(D, X)                                                                                       \
    X(D, 16, 16) X(D, 8, 8) X(D, 4, 4) X(D, 2, 2) X(D, -2, 2) X(D, -4, 2) X(D, -4, 4) X(D, 16, 4) X(D, 16, 2)

/* The dec_k variant of a layer: head size, query group, key and value formats, and (head_dim
 * 128) 3 resident blocks instead of 2. */
struct dec_var {
    int D, G, kf, vf;
    bool three;
};

/* L's variant, or false when decode.cu has none (the general kernel then runs). */
static bool dec_variant(const tlc_ctx *cx, const tlc_layer_kv *L, dec_var *v) {
    const int D = L->k.d, G = L->n_head / L->n_head_kv;
    if (L->v.d != D || (D != 64 && D != 128) || G > 8) return false;
    const int kf = side_fmt(L->k, true), vf = side_fmt(L->v, false);
    if (!kf || !vf || (G > 4 && !(kf == 16 && vf == 16))) return false;
    /* head_dim 128: 2 resident blocks (255 registers, no spills), except per-channel keys at 3
     * (168 registers, small spills), measured faster at 128k on an H100 (docs/cuda.md);
     * --cuda-opt dec-minb=2 or 3 forces one */
    *v = dec_var{D, G, kf, vf, cx->dec_minb == 3 || (cx->dec_minb != 2 && kf < 0)};
    return true;
}

static bool dec_var_eq(const dec_var &a, const dec_var &b) {
    return a.D == b.D && a.G == b.G && a.kf == b.kf && a.vf == b.vf && a.three == b.three;
}

static void dec_params(const tlc_layer_kv *L, int n_past, const float *q, const float *knew, const float *vnew, float *out,
                       dec_p *p) {
    memset(p, 0, sizeof *p);
    p->K = L->k;
    p->V = L->v;
    p->q = q;
    p->knew = knew;
    p->vnew = vnew;
    p->out = out;
    p->n_past = n_past;
    p->Hkv = L->n_head_kv;
    p->G = L->n_head / L->n_head_kv;
    p->klo = L->window > 0 ? TL_MAX(0, n_past - L->window + 1) : 0;
    p->kstart = p->klo & ~31;
    p->scale = L->scale * 1.4426950408889634f;
}

/* dec_launch of variant v (found by dec_variant). */
static int dec_dispatch(tlc_ctx *cx, const dec_var &v, dec_p *ps, int n, tl_error *err) {
    if (v.G > 4) return v.D == 64 ? dec_launch<64, 8, 16, 16, 1>(cx, ps, n, err) : dec_launch<128, 8, 16, 16, 1>(cx, ps, n, err);
#define X(DD, KF, VF)                                                                                             \
    if (v.D == DD && v.kf == KF && v.vf == VF)                                                                    \
        return DD == 64  ? dec_launch<DD, 4, KF, VF, 3>(cx, ps, n, err)                                           \
               : v.three ? dec_launch<DD, 4, KF, VF, 3>(cx, ps, n, err)                                           \
                         : dec_launch<DD, 4, KF, VF, 2>(cx, ps, n, err);
    DEC_FORMATS(64, X)
    DEC_FORMATS(128, X)
#undef X
    return tl_fail(err, "decode attention: no kernel for head size %d, formats %d/%d", v.D, v.kf, v.vf);
}

int tlc_attn_decode(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, const float *q, const float *knew, const float *vnew,
                    float *out, tl_error *err) {
    {
        const int rc = tlc_attn_decode_mma(cx, L, n_past, q, knew, vnew, out, err); /* per-token codes: decode_mma.cu */
        if (rc <= 0) return rc;
    }
    dec_var v;
    if (!dec_variant(cx, L, &v)) return 1;
    dec_p p;
    dec_params(L, n_past, q, knew, vnew, out, &p);
    return dec_dispatch(cx, v, &p, 1, err);
}

int tlc_attn_decode_many(tlc_ctx *cx, int n, const tlc_dec_row *rows, bool *done, tl_error *err) {
    for (; n > TLC_MANY; n -= TLC_MANY, rows += TLC_MANY, done += TLC_MANY)
        if (tlc_attn_decode_many(cx, TLC_MANY, rows, done, err)) return -1;
    dec_var var[TLC_MANY];
    bool ok[TLC_MANY];
    dec_p ps[TLC_MANY];
    /* what tlc_attention would run alone: the tensor-core decode from dec_tc_from keys on
     * (prefill_tc.cu; those rows are left to it), then decode_mma.cu (per-token codes), then
     * this kernel. done[] marks, for the moment, the rows neither may take. */
    for (int i = 0; i < n; i++) {
        const tlc_dec_row *r = &rows[i];
        ok[i] = !cx->safe && !cx->old_decode && !r->L->off && !(cx->dec_tc_from > 0 && r->n_past >= cx->dec_tc_from && !cx->no_tc);
        done[i] = !ok[i];
    }
    int rc = tlc_attn_decode_mma_many(cx, n, rows, done, err);
    for (int i = 0; i < n; i++) {
        if (!ok[i]) done[i] = false; /* (back to "not done") */
        ok[i] = ok[i] && !done[i] && !tlc_dec_mma_takes(cx, rows[i].L, rows[i].n_past) && dec_variant(cx, rows[i].L, &var[i]);
    }
    for (int i = 0; i < n && !rc; i++) {
        if (!ok[i] || done[i]) continue;
        int m = 0;
        for (int j = i; j < n; j++)
            if (ok[j] && !done[j] && dec_var_eq(var[i], var[j])) {
                dec_params(rows[j].L, rows[j].n_past, rows[j].q, rows[j].knew, rows[j].vnew, rows[j].out, &ps[m++]);
                done[j] = true;
            }
        rc = dec_dispatch(cx, var[i], ps, m, err);
    }
    return rc;
}
