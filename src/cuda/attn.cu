/* attn.cu: the GPU KV cache: append (quantize-on-append in the CPU store's layouts) and
 * flash attention over it.
 *
 * Attention follows kv.h's semantics: the new block is attended exactly (f32, causal), the
 * history through the store's representation, then the block is appended. One kernel serves
 * prefill chunks and decode: a thread block takes (a block of query rows x the GQA group of
 * one KV head, a range of keys), walks the keys in tiles of 32 tokens that it decodes into
 * shared memory (f16/bf16/f32 rows, per-token codes, per-channel KIVI codes, f16 residual
 * rows, or the new block's f32 rows), and keeps an online softmax (running max, sum,
 * accumulator) per query. Long histories are split over many blocks (flash-decoding) and the
 * partial states merged by their log-sum-exp weights in a second kernel. */
#include "backend.cuh"

#include <math.h>

#define TT 32   /* tokens per tile (a warp's width; also the code unit) */
#define ATHR 128 /* threads per attention block */

/* ---------------- tile loading ---------------- */

/* Decode tokens [t0, t0+32) of head h into sm[tt*ss + c]. Tokens outside [vlo, vhi) become 0
 * (they are masked; zero keeps garbage from unwritten slots out of 0 * x products). Tokens
 * >= n_past come from the new block xnew (row stride xs floats). */
__device__ void load_tile(const kv_side &S, int h, int t0, int n_past, int vlo, int vhi, const float *xnew, int xs,
                          float *sm, int ss) {
    const int d = S.d, tid = threadIdx.x;
    const bool full = t0 >= vlo && t0 + TT <= vhi;
    if (full && t0 + TT <= n_past) {
        if (S.mode == KV_FLUSH && t0 + TT <= S.nq) {
            /* per-channel codes: thread per channel decodes the 32 tokens of its unit */
            const int ub = 4 * S.bits, grp = t0 / S.g, u = (t0 % S.g) / 32;
            for (int c = tid; c < d; c += ATHR) {
                const uint8_t *un = S.codes + h * S.codes_head + grp * S.grp_bytes + ((size_t)c * (S.g / 32) + u) * ub;
                float s, z;
                q_decode_params(S.params + h * S.params_head + grp * S.grp_halves + (size_t)c * S.ppg, S.bits, S.sym, &s, &z);
                q_unit_decode_any(S.bits, un, s, z, sm + c, ss);
            }
            return;
        }
        if (S.mode == KV_SLIDE && t0 + TT <= S.nq && (d % 32) == 0) {
            /* per-token codes: item = (token, unit of 32 channels) */
            const int units = d / 32, ub = 4 * S.bits;
            for (int it = tid; it < TT * units; it += ATHR) {
                const int tt = it / units, un_i = it % units, t = t0 + tt;
                const uint8_t *un = S.codes + h * S.codes_head + (size_t)t * S.row_bytes + (size_t)un_i * ub;
                const uint16_t *pr = S.params + h * S.params_head + (size_t)t * S.pstride;
                float s, z;
                q_decode_params(pr + (un_i * 32 / S.g) * S.ppg, S.bits, S.sym, &s, &z);
                q_unit_decode_any(S.bits, un, s, z, sm + tt * ss + un_i * 32, 1);
            }
            return;
        }
        if (S.mode == KV_DENSE && S.dt == DT_F16 && (d % 8) == 0) {
            const int v8 = d / 8;
            for (int it = tid; it < TT * v8; it += ATHR) {
                const int tt = it / v8, c8 = it % v8, t = t0 + tt;
                const uint4 w = *(const uint4 *)((const uint16_t *)S.fp + h * S.fp_head + (size_t)(t % S.cap) * d + c8 * 8);
                const __half2 *hp = (const __half2 *)&w;
                float *o = sm + tt * ss + c8 * 8;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const float2 f = __half22float2(hp[k]);
                    o[2 * k] = f.x;
                    o[2 * k + 1] = f.y;
                }
            }
            return;
        }
    }
    /* general path: element by element */
    for (int e = tid; e < TT * d; e += ATHR) {
        const int tt = e / d, c = e % d, t = t0 + tt;
        float x = 0.0f;
        if (t >= vlo && t < vhi) {
            if (t >= n_past) {
                x = xnew[(size_t)(t - n_past) * xs + (size_t)h * d + c];
            } else if (S.mode == KV_DENSE) {
                const size_t off = h * S.fp_head + (size_t)(t % S.cap) * d + c;
                x = S.dt == DT_F32 ? ((const float *)S.fp)[off] : S.dt == DT_F16 ? h2f(((const uint16_t *)S.fp)[off])
                                                                                  : bf2f(((const uint16_t *)S.fp)[off]);
            } else if (t >= S.nq) {
                const int slot = S.mode == KV_FLUSH ? t - S.nq : t % S.R;
                x = h2f(((const uint16_t *)S.fp)[h * S.fp_head + (size_t)slot * d + c]);
            } else if (S.mode == KV_SLIDE) {
                const uint8_t *row = S.codes + h * S.codes_head + (size_t)t * S.row_bytes + (size_t)(c / 32) * 4 * S.bits;
                float s, z;
                q_decode_params(S.params + h * S.params_head + (size_t)t * S.pstride + (c / S.g) * S.ppg, S.bits, S.sym, &s, &z);
                x = (float)q_code_mem(row, S.bits, c % 32) * s + z;
            } else { /* FLUSH quantized */
                const int grp = t / S.g, u = (t % S.g) / 32;
                const uint8_t *un = S.codes + h * S.codes_head + grp * S.grp_bytes + ((size_t)c * (S.g / 32) + u) * 4 * S.bits;
                float s, z;
                q_decode_params(S.params + h * S.params_head + grp * S.grp_halves + (size_t)c * S.ppg, S.bits, S.sym, &s, &z);
                x = (float)q_code_mem(un, S.bits, t % 32) * s + z;
            }
        }
        sm[tt * ss + c] = x;
    }
}

/* ---------------- register prefetch of whole tiles ----------------
 * The common tiles (all 32 tokens in the history, in one format region) are fetched into
 * registers one tile ahead, so each block has the next tile's loads in flight while it
 * computes the current one (decode at long context is latency-bound otherwise). */

struct tile_regs {
    uint4 u[4];
    uint16_t p0[2], p1[2];
};

/* 0: use load_tile; 1: per-channel codes; 2: per-token codes; 3: dense f16 rows. */
__device__ __forceinline__ int tile_kind(const kv_side &S, int t0, int n_past, int vlo, int vhi) {
    if (!(t0 >= vlo && t0 + TT <= vhi && t0 + TT <= n_past)) return 0;
    if (S.mode == KV_FLUSH && t0 + TT <= S.nq && S.d <= 2 * ATHR) return 1;
    if (S.mode == KV_SLIDE && t0 + TT <= S.nq && S.d % 32 == 0 && S.d <= 2 * ATHR && S.g >= 32) return 2;
    if (S.mode == KV_DENSE && S.dt == DT_F16 && S.d % 8 == 0 && S.d <= 128) return 3;
    return 0;
}

__device__ __forceinline__ void ld_unit(const uint8_t *p, int bits, uint4 *a, uint4 *b) {
    if (bits == 8) {
        *a = ((const uint4 *)p)[0];
        *b = ((const uint4 *)p)[1];
    } else if (bits == 4) {
        *a = *(const uint4 *)p;
    } else if (bits == 2) {
        const uint2 v = *(const uint2 *)p;
        a->x = v.x;
        a->y = v.y;
    } else {
        a->x = *(const uint32_t *)p;
    }
}

__device__ __forceinline__ void tile_fetch(const kv_side &S, int kind, int h, int t0, tile_regs &r) {
    const int tid = threadIdx.x, d = S.d;
    if (kind == 3) {
        const int v8 = d / 8;
        const uint16_t *base = (const uint16_t *)S.fp + h * S.fp_head;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int it = tid + j * ATHR;
            if (it < TT * v8) r.u[j] = *(const uint4 *)(base + (size_t)((t0 + it / v8) % S.cap) * d + (it % v8) * 8);
        }
    } else if (kind == 2) {
        const int units = d / 32, ub = 4 * S.bits;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int it = tid + j * ATHR;
            if (it < TT * units) {
                const int t = t0 + it / units, un = it % units;
                ld_unit(S.codes + h * S.codes_head + (size_t)t * S.row_bytes + (size_t)un * ub, S.bits, &r.u[2 * j], &r.u[2 * j + 1]);
                const uint16_t *pr = S.params + h * S.params_head + (size_t)t * S.pstride + (un * 32 / S.g) * S.ppg;
                r.p0[j] = pr[0];
                if (!S.sym) r.p1[j] = pr[1];
            }
        }
    } else if (kind == 1) {
        const int ub = 4 * S.bits, grp = t0 / S.g, u = (t0 % S.g) / 32;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int c = tid + j * ATHR;
            if (c < d) {
                ld_unit(S.codes + h * S.codes_head + grp * S.grp_bytes + ((size_t)c * (S.g / 32) + u) * ub, S.bits, &r.u[2 * j],
                        &r.u[2 * j + 1]);
                const uint16_t *pr = S.params + h * S.params_head + grp * S.grp_halves + (size_t)c * S.ppg;
                r.p0[j] = pr[0];
                if (!S.sym) r.p1[j] = pr[1];
            }
        }
    }
}

template <int B>
__device__ __forceinline__ void dec_regs(uint4 a, uint4 b, float s, float z, float *out, int os) {
    const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
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

__device__ __forceinline__ void dec_regs_any(int bits, uint4 a, uint4 b, float s, float z, float *out, int os) {
    switch (bits) {
    case 8: dec_regs<8>(a, b, s, z, out, os); break;
    case 4: dec_regs<4>(a, b, s, z, out, os); break;
    case 2: dec_regs<2>(a, b, s, z, out, os); break;
    default: dec_regs<1>(a, b, s, z, out, os); break;
    }
}

__device__ __forceinline__ void sz_of(const kv_side &S, uint16_t p0, uint16_t p1, float *s, float *z) {
    *s = h2f(p0);
    *z = S.sym ? -(float)(1 << (S.bits - 1)) * *s : h2f(p1);
}

__device__ __forceinline__ void tile_commit(const kv_side &S, int kind, const tile_regs &r, float *sm, int ss) {
    const int tid = threadIdx.x, d = S.d;
    if (kind == 3) {
        const int v8 = d / 8;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int it = tid + j * ATHR;
            if (it < TT * v8) {
                const __half2 *hp = (const __half2 *)&r.u[j];
                const float2 f0 = __half22float2(hp[0]), f1 = __half22float2(hp[1]), f2 = __half22float2(hp[2]),
                             f3 = __half22float2(hp[3]);
                float4 *o = (float4 *)(sm + (it / v8) * ss + (it % v8) * 8);
                o[0] = make_float4(f0.x, f0.y, f1.x, f1.y);
                o[1] = make_float4(f2.x, f2.y, f3.x, f3.y);
            }
        }
    } else if (kind == 2) {
        const int units = d / 32;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int it = tid + j * ATHR;
            if (it < TT * units) {
                float s, z;
                sz_of(S, r.p0[j], r.p1[j], &s, &z);
                dec_regs_any(S.bits, r.u[2 * j], r.u[2 * j + 1], s, z, sm + (it / units) * ss + (it % units) * 32, 1);
            }
        }
    } else if (kind == 1) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int c = tid + j * ATHR;
            if (c < d) {
                float s, z;
                sz_of(S, r.p0[j], r.p1[j], &s, &z);
                dec_regs_any(S.bits, r.u[2 * j], r.u[2 * j + 1], s, z, sm + c, ss);
            }
        }
    }
}

/* ---------------- attention ---------------- */

struct attn_p {
    kv_side K, V;
    const float *q, *knew, *vnew;
    float *out, *part;
    int n_past, m, Hq, Hkv, G, dk, dv, window, rows_blk, nqmax, n_split, split_len;
    int prefetch; /* 0: load every tile synchronously (--cuda-opt safe) */
    float scale;
};


template <bool BLK>
__global__ void __launch_bounds__(ATHR) attn_k(attn_p p) {
    extern __shared__ float4 sm4[];
    float *sm = (float *)sm4;
    const int qb = blockIdx.x, h = blockIdx.y, sp = blockIdx.z, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int G = p.G, dk = p.dk, dv = p.dv, KS = dk + 4, VS = dv + 4, NQ = p.nqmax;
    const int r0 = qb * p.rows_blk, r1 = min(p.m, r0 + p.rows_blk), nq = (r1 - r0) * G;
    float *qs = sm, *acc = qs + NQ * dk, *Ks = acc + NQ * dv, *Vs = Ks + TT * KS, *S = Vs + TT * VS;
    float *mrow = S + NQ * TT, *lrow = mrow + NQ, *crow = lrow + NQ;

    for (int e = tid; e < nq * dk; e += ATHR) {
        const int i = e / dk, c = e % dk, r = r0 + i / G, hq = h * G + i % G;
        qs[e] = p.q[((size_t)r * p.Hq + hq) * dk + c] * p.scale;
    }
    for (int e = tid; e < nq * dv; e += ATHR) acc[e] = 0.0f;
    for (int i = tid; i < nq; i += ATHR) mrow[i] = -INFINITY, lrow[i] = 0.0f, crow[i] = 1.0f;

    const int klo = p.window > 0 ? max(0, p.n_past + r0 - p.window + 1) : 0, khi = p.n_past + r1;
    const int lo = max(klo & ~(TT - 1), sp * p.split_len), hi = min(khi, (sp + 1) * p.split_len);
    const int ks = p.Hkv * dk, vs = p.Hkv * dv;
    /* register-blocked score and PV loops for prefill blocks (16 groups of 4 queries) */
    const bool blocked = BLK; /* host: nqmax > 16, dv % 32 == 0, dv <= 128 */
    __syncthreads();
    tile_regs rk, rv;
    int kk = 0, kvk = 0;
    if (lo < hi && p.prefetch) {
        kk = tile_kind(p.K, lo, p.n_past, klo, hi);
        kvk = tile_kind(p.V, lo, p.n_past, klo, hi);
        if (kk) tile_fetch(p.K, kk, h, lo, rk);
        if (kvk) tile_fetch(p.V, kvk, h, lo, rv);
    }
    for (int t0 = lo; t0 < hi; t0 += TT) {
        if (kk) tile_commit(p.K, kk, rk, Ks, KS);
        else load_tile(p.K, h, t0, p.n_past, klo, hi, p.knew, ks, Ks, KS);
        if (kvk) tile_commit(p.V, kvk, rv, Vs, VS);
        else load_tile(p.V, h, t0, p.n_past, klo, hi, p.vnew, vs, Vs, VS);
        __syncthreads();
        /* the next tile's loads go out now and land while this one is computed */
        kk = kvk = 0;
        if (t0 + TT < hi && p.prefetch) {
            kk = tile_kind(p.K, t0 + TT, p.n_past, klo, hi);
            kvk = tile_kind(p.V, t0 + TT, p.n_past, klo, hi);
            if (kk) tile_fetch(p.K, kk, h, t0 + TT, rk);
            if (kvk) tile_fetch(p.V, kvk, h, t0 + TT, rv);
        }
        if (blocked) {
            /* prefill: a thread computes 4 queries x 4 tokens (tokens tg, tg+8, tg+16, tg+24) */
            const int qg = tid >> 3, tg = tid & 7;
            float a4[4][4];
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < 4; b++) a4[a][b] = 0.0f;
            const float4 *q4 = (const float4 *)qs, *k4 = (const float4 *)Ks;
            for (int c4 = 0; c4 < dk / 4; c4++) {
                float4 qv[4], kv4[4];
#pragma unroll
                for (int a = 0; a < 4; a++) qv[a] = q4[(qg * 4 + a) * (dk / 4) + c4];
#pragma unroll
                for (int b = 0; b < 4; b++) kv4[b] = k4[(tg + 8 * b) * (KS / 4) + c4];
#pragma unroll
                for (int a = 0; a < 4; a++)
#pragma unroll
                    for (int b = 0; b < 4; b++) {
                        a4[a][b] = fmaf(qv[a].x, kv4[b].x, a4[a][b]);
                        a4[a][b] = fmaf(qv[a].y, kv4[b].y, a4[a][b]);
                        a4[a][b] = fmaf(qv[a].z, kv4[b].z, a4[a][b]);
                        a4[a][b] = fmaf(qv[a].w, kv4[b].w, a4[a][b]);
                    }
            }
#pragma unroll
            for (int a = 0; a < 4; a++) {
                const int i = qg * 4 + a;
                if (i < nq) {
                    const int pos = p.n_past + r0 + i / G;
#pragma unroll
                    for (int b = 0; b < 4; b++) {
                        const int tt = tg + 8 * b, t = t0 + tt;
                        const bool ok = t < hi && t >= klo && t <= pos && (p.window == 0 || t > pos - p.window);
                        S[i * TT + tt] = ok ? a4[a][b] : -INFINITY;
                    }
                }
            }
        } else
        for (int pi = tid; pi < nq * TT; pi += ATHR) {
            const int i = pi >> 5, tt = pi & 31, t = t0 + tt, pos = p.n_past + r0 + i / G;
            const bool ok = t < hi && t >= klo && t <= pos && (p.window == 0 || t > pos - p.window);
            float s = -INFINITY;
            if (ok) {
                const float4 *a = (const float4 *)(qs + i * dk), *b = (const float4 *)(Ks + tt * KS);
                float x0 = 0.0f, x1 = 0.0f, x2 = 0.0f, x3 = 0.0f;
#pragma unroll 4
                for (int c = 0; c < dk / 4; c++) {
                    const float4 u = a[c], v = b[c];
                    x0 = fmaf(u.x, v.x, x0);
                    x1 = fmaf(u.y, v.y, x1);
                    x2 = fmaf(u.z, v.z, x2);
                    x3 = fmaf(u.w, v.w, x3);
                }
                s = (x0 + x1) + (x2 + x3);
            }
            S[pi] = s;
        }
        __syncthreads();
        for (int i = warp; i < nq; i += ATHR / 32) {
            const float s = S[i * TT + lane], mo = mrow[i];
            const float mn = fmaxf(mo, wmax(s));
            float pv = 0.0f, corr = 1.0f;
            if (mn != -INFINITY) {
                pv = expf(s - mn);
                corr = expf(mo - mn);
            }
            const float sum = wsum(pv);
            S[i * TT + lane] = pv;
            if (lane == 0) {
                lrow[i] = lrow[i] * corr + sum;
                mrow[i] = mn;
                crow[i] = corr;
            }
        }
        __syncthreads();
        if (blocked) {
            /* prefill: a thread owns 4 queries x float4 columns 4*cg + 32*j (j < dv/32) */
            const int qg = tid >> 3, cg = tid & 7, nj = dv / 32;
            float4 o[4][4];
            float cr[4];
#pragma unroll
            for (int a = 0; a < 4; a++) {
                const int i = min(qg * 4 + a, nq - 1);
                cr[a] = crow[i];
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (j < nj) {
                        const float4 v = *(const float4 *)(acc + i * dv + 4 * cg + 32 * j);
                        o[a][j] = make_float4(v.x * cr[a], v.y * cr[a], v.z * cr[a], v.w * cr[a]);
                    }
            }
            for (int tt = 0; tt < TT; tt++) {
                float pw[4];
#pragma unroll
                for (int a = 0; a < 4; a++) pw[a] = S[min(qg * 4 + a, nq - 1) * TT + tt];
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (j < nj) {
                        const float4 v = *(const float4 *)(Vs + tt * VS + 4 * cg + 32 * j);
#pragma unroll
                        for (int a = 0; a < 4; a++) {
                            o[a][j].x = fmaf(pw[a], v.x, o[a][j].x);
                            o[a][j].y = fmaf(pw[a], v.y, o[a][j].y);
                            o[a][j].z = fmaf(pw[a], v.z, o[a][j].z);
                            o[a][j].w = fmaf(pw[a], v.w, o[a][j].w);
                        }
                    }
            }
#pragma unroll
            for (int a = 0; a < 4; a++) {
                const int i = qg * 4 + a;
                if (i < nq)
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        if (j < nj) *(float4 *)(acc + i * dv + 4 * cg + 32 * j) = o[a][j];
            }
        } else
        for (int e = tid; e < nq * dv; e += ATHR) {
            const int i = e / dv, c = e % dv;
            const float4 *pr4 = (const float4 *)(S + i * TT);
            const float *vc = Vs + c;
            float a0 = acc[e] * crow[i], a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma unroll
            for (int t4 = 0; t4 < TT / 4; t4++) {
                const float4 pw = pr4[t4];
                a0 = fmaf(pw.x, vc[(4 * t4) * VS], a0);
                a1 = fmaf(pw.y, vc[(4 * t4 + 1) * VS], a1);
                a2 = fmaf(pw.z, vc[(4 * t4 + 2) * VS], a2);
                a3 = fmaf(pw.w, vc[(4 * t4 + 3) * VS], a3);
            }
            acc[e] = (a0 + a1) + (a2 + a3);
        }
        __syncthreads();
    }
    if (p.n_split == 1) {
        for (int e = tid; e < nq * dv; e += ATHR) {
            const int i = e / dv, c = e % dv, r = r0 + i / G, hq = h * G + i % G;
            p.out[((size_t)r * p.Hq + hq) * dv + c] = acc[e] / lrow[i];
        }
    } else {
        float *pp = p.part + (((size_t)qb * p.Hkv + h) * p.n_split + sp) * NQ * (dv + 2);
        for (int i = tid; i < nq; i += ATHR) {
            pp[(size_t)i * (dv + 2)] = mrow[i];
            pp[(size_t)i * (dv + 2) + 1] = lrow[i];
        }
        for (int e = tid; e < nq * dv; e += ATHR) {
            const int i = e / dv, c = e % dv;
            pp[(size_t)i * (dv + 2) + 2 + c] = acc[e];
        }
    }
}

/* Merge the split partial states: out = sum_s w_s acc_s / sum_s w_s l_s, w_s = exp(m_s - M). */
__global__ void attn_merge_k(attn_p p) {
    const int qb = blockIdx.x, h = blockIdx.y, G = p.G, dv = p.dv, NQ = p.nqmax;
    const int r0 = qb * p.rows_blk, r1 = min(p.m, r0 + p.rows_blk), nq = (r1 - r0) * G;
    const float *base = p.part + ((size_t)qb * p.Hkv + h) * p.n_split * NQ * (dv + 2);
    for (int e = threadIdx.x; e < nq * dv; e += blockDim.x) {
        const int i = e / dv, c = e % dv;
        float M = -INFINITY;
#pragma unroll 4
        for (int s = 0; s < p.n_split; s++) M = fmaxf(M, base[((size_t)s * NQ + i) * (dv + 2)]);
        float L = 0.0f, o = 0.0f;
#pragma unroll 4
        for (int s = 0; s < p.n_split; s++) {
            const float *ps = base + ((size_t)s * NQ + i) * (dv + 2);
            if (ps[0] == -INFINITY) continue;
            const float w = expf(ps[0] - M);
            L += w * ps[1];
            o += w * ps[2 + c];
        }
        const int r = r0 + i / G, hq = h * G + i % G;
        p.out[((size_t)r * p.Hq + hq) * dv + c] = o / L;
    }
}

size_t tlc_attn_smem(int nqmax, int dk, int dv) {
    return sizeof(float) * ((size_t)nqmax * dk + (size_t)nqmax * dv + TT * (dk + 4) + TT * (dv + 4) + (size_t)nqmax * TT + 3 * (size_t)nqmax);
}

int tlc_attention(tlc_ctx *cx, const tlc_layer_kv *L, int n_past, int m, const float *q, const float *knew,
                  const float *vnew, float *out, tl_error *err) {
    if (m == 1 && cx->dec_tc_from > 0 && n_past >= cx->dec_tc_from && !cx->no_tc) {
        const int rc = tlc_attn_prefill_tc(cx, L, n_past, m, q, knew, vnew, out, err);
        if (rc <= 0) return rc;
    }
    if (m == 1 && !cx->safe && !cx->old_decode) {
        const int rc = tlc_attn_decode(cx, L, n_past, q, knew, vnew, out, err);
        if (rc <= 0) return rc;
    }
    if (m > 1 && !cx->no_tc) {
        const int rc = tlc_attn_prefill_tc(cx, L, n_past, m, q, knew, vnew, out, err);
        if (rc <= 0) return rc;
    }
    attn_p p;
    memset(&p, 0, sizeof p);
    p.K = L->k;
    p.V = L->v;
    p.q = q;
    p.knew = knew;
    p.vnew = vnew;
    p.out = out;
    p.n_past = n_past;
    p.m = m;
    p.Hq = L->n_head;
    p.Hkv = L->n_head_kv;
    p.G = L->n_head / L->n_head_kv;
    p.dk = L->k.d;
    p.dv = L->v.d;
    p.window = L->window;
    p.scale = L->scale;
    p.rows_blk = TL_MAX(1, TLC_QMAX / p.G);
    if (p.rows_blk > m) p.rows_blk = m;
    p.nqmax = p.rows_blk * p.G;
    const int n_qblk = (m + p.rows_blk - 1) / p.rows_blk;
    const int total = n_past + m;
    const int base = n_qblk * p.Hkv;
    int n_split = 1;
    if (base < 2 * cx->n_sm) {
        const int want = (4 * cx->n_sm + base - 1) / base;
        const int by_len = (total + 255) / 256; /* at least 256 keys per block */
        n_split = TL_MAX(1, TL_MIN(want, by_len));
    }
    int split_len = (total + n_split - 1) / n_split;
    split_len = (split_len + TT - 1) / TT * TT;
    n_split = (total + split_len - 1) / split_len;
    p.n_split = n_split;
    p.split_len = split_len;
    if (n_split > 1) {
        const size_t need = (size_t)base * n_split * p.nqmax * (p.dv + 2) * sizeof(float);
        if (tlc_scratch(cx, need, err)) return -1;
        p.part = (float *)cx->scratch;
    }
    const size_t smem = tlc_attn_smem(p.nqmax, p.dk, p.dv);
    if (smem > cx->smem_optin) return tl_fail(err, "attention: %zu bytes of shared memory needed (head dims %d/%d), device allows %zu", smem, p.dk, p.dv, cx->smem_optin);
    const bool blk = !cx->safe && p.nqmax > 16 && p.dv % 32 == 0 && p.dv <= 128;
    /* register prefetch only in the prefill (blocked) kernel: measured on an H100, it made
     * decode 0-10% slower (more registers, fewer resident blocks) -- docs/cuda.md */
    p.prefetch = blk;
    if (smem > 48 * 1024) {
        cudaError_t e = blk ? cudaFuncSetAttribute(attn_k<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)
                            : cudaFuncSetAttribute(attn_k<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return tl_fail(err, "cudaFuncSetAttribute(attention, %zu bytes): %s", smem, cudaGetErrorString(e));
    }
    if (blk) attn_k<true><<<dim3(n_qblk, p.Hkv, n_split), ATHR, smem, cx->stream>>>(p);
    else attn_k<false><<<dim3(n_qblk, p.Hkv, n_split), ATHR, smem, cx->stream>>>(p);
    TLC_LAUNCH_CHECK("attention");
    if (n_split > 1) {
        attn_merge_k<<<dim3(n_qblk, p.Hkv), 128, 0, cx->stream>>>(p);
        TLC_LAUNCH_CHECK("attention merge");
    }
    return 0;
}

/* ---------------- append ---------------- */

/* Value of token t (channel c of head h) as the store's f16 residual holds it: old tokens
 * from the ring/block, new ones from x rounded to f16 (CPU: tokens pass through the f16 window
 * before being quantized). */
__device__ __forceinline__ float resid_src(const kv_side &S, int h, int t, int c, int n_past, int old_base,
                                           const float *x, int xs, bool round) {
    if (t >= n_past) {
        const float v = x[(size_t)(t - n_past) * xs + (size_t)h * S.d + c];
        return round ? f16r(v) : v;
    }
    const int slot = S.mode == KV_FLUSH ? t - old_base : t % S.R;
    return h2f(((const uint16_t *)S.fp)[h * S.fp_head + (size_t)slot * S.d + c]);
}

/* SLIDE: quantize tokens [ta, tb) (warp per (token, head)). */
__global__ void slide_quant_k(kv_side S, int ta, int tb, int n_heads, int n_past, const float *x, int xs) {
    pdl_trigger();
    pdl_wait();
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int n_items = (tb - ta) * n_heads;
    if (w >= n_items) return;
    const int t = ta + w / n_heads, h = w % n_heads, d = S.d, g = S.g;
    const bool round = S.R > 0;
    uint8_t *row = S.codes + h * S.codes_head + (size_t)t * S.row_bytes;
    uint16_t *par = S.params + h * S.params_head + (size_t)t * S.pstride;
    for (int j = 0; j < d / g; j++) {
        float v[8];
        float mn = INFINITY, mx = -INFINITY;
        for (int u = 0; u < g / 32; u++) {
            v[u] = resid_src(S, h, t, j * g + u * 32 + lane, n_past, 0, x, xs, round);
            mn = fminf(mn, v[u]);
            mx = fmaxf(mx, v[u]);
        }
        for (int o = 16; o; o >>= 1) {
            mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        }
        uint16_t p0, p1 = 0;
        float s, z;
        q_params(mn, mx, S.bits, S.sym, &p0, &p1, &s, &z);
        if (lane == 0) {
            par[j * S.ppg] = p0;
            if (!S.sym) par[j * S.ppg + 1] = p1;
        }
        for (int u = 0; u < g / 32; u++) q_pack_warp(q_encode(v[u], s, z, S.bits), S.bits, row + (size_t)(j * g / 32 + u) * 4 * S.bits);
    }
}

/* FLUSH: quantize token groups [ga, gb) (warp per (head, group, channel)); old tokens come
 * from the f16 block whose first token is old_base. */
__global__ void flush_quant_k(kv_side S, int ga, int gb, int n_heads, int n_past, int old_base, const float *x, int xs) {
    pdl_trigger();
    pdl_wait();
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int d = S.d, g = S.g;
    const int n_items = (gb - ga) * n_heads * d;
    if (w >= n_items) return;
    const int c = w % d, grp = ga + (w / d) % (gb - ga), h = w / d / (gb - ga);
    float v[4];
    float mn = INFINITY, mx = -INFINITY;
    for (int u = 0; u < g / 32; u++) {
        v[u] = resid_src(S, h, grp * g + u * 32 + lane, c, n_past, old_base, x, xs, true);
        mn = fminf(mn, v[u]);
        mx = fmaxf(mx, v[u]);
    }
    for (int o = 16; o; o >>= 1) {
        mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    uint16_t p0, p1 = 0;
    float s, z;
    q_params(mn, mx, S.bits, S.sym, &p0, &p1, &s, &z);
    uint16_t *par = S.params + h * S.params_head + grp * S.grp_halves + (size_t)c * S.ppg;
    if (lane == 0) {
        par[0] = p0;
        if (!S.sym) par[1] = p1;
    }
    uint8_t *codes = S.codes + h * S.codes_head + grp * S.grp_bytes;
    for (int u = 0; u < g / 32; u++) q_pack_warp(q_encode(v[u], s, z, S.bits), S.bits, codes + ((size_t)c * (g / 32) + u) * 4 * S.bits);
}

/* Write new tokens [ta, tb) into rows: slot = mode DENSE: t % cap; SLIDE ring: t % R;
 * FLUSH block: t - base. Type dt (f16 for residual rows). */
__global__ void write_rows_k(kv_side S, int ta, int tb, int n_heads, int n_past, int base, const float *x, int xs) {
    pdl_trigger();
    pdl_wait();
    const size_t n = (size_t)(tb - ta) * n_heads * S.d;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(e % S.d), h = (int)(e / S.d % n_heads), t = ta + (int)(e / S.d / n_heads);
        const float v = x[(size_t)(t - n_past) * xs + (size_t)h * S.d + c];
        int slot;
        if (S.mode == KV_DENSE) slot = t % S.cap;
        else if (S.mode == KV_SLIDE) slot = t % S.R;
        else slot = t - base;
        const size_t off = h * S.fp_head + (size_t)slot * S.d + c;
        if (S.mode == KV_DENSE && S.dt == DT_F32) ((float *)S.fp)[off] = v;
        else if (S.mode == KV_DENSE && S.dt == DT_BF16) ((__nv_bfloat16 *)S.fp)[off] = __float2bfloat16_rn(v);
        else ((__half *)S.fp)[off] = __float2half_rn(v);
    }
}

static int grid_for(size_t n, int thr) {
    size_t b = (n + thr - 1) / thr;
    return (int)(b > 65535 * 16 ? 65535 * 16 : b);
}

/* append kernels go out with programmatic dependent launch (they wait for their inputs) */
#define LAUNCH_APPEND(kern, grid, thr, ...)                                                                  \
    do {                                                                                                     \
        cudaError_t e_ = tlc_launch(!cx->no_pdl, kern, dim3(grid), dim3(thr), 0, cx->stream, __VA_ARGS__);  \
        if (e_ != cudaSuccess) return tl_fail(err, "CUDA kernel %s: %s", #kern, cudaGetErrorString(e_));      \
    } while (0)

static int side_append(tlc_ctx *cx, kv_side *S, int n_heads, int n_past, int m, const float *x, int xs, tl_error *err) {
    const int n_total = n_past + m;
    if (S->mode == KV_DENSE) {
        const int ta = TL_MAX(n_past, n_total - S->cap);
        const size_t n = (size_t)(n_total - ta) * n_heads * S->d;
        if (n) {
            LAUNCH_APPEND(write_rows_k, grid_for(n, 256), 256, *S, ta, n_total, n_heads, n_past, 0, x, xs);
            TLC_LAUNCH_CHECK("kv append");
        }
        return 0;
    }
    if (S->mode == KV_SLIDE) {
        const int nq_new = TL_MAX(0, n_total - S->R);
        if (nq_new > S->nq) {
            const int items = (nq_new - S->nq) * n_heads;
            LAUNCH_APPEND(slide_quant_k, (items + 3) / 4, 128, *S, S->nq, nq_new, n_heads, n_past, x, xs);
            TLC_LAUNCH_CHECK("kv quantize (per-token)");
        }
        if (S->R > 0) {
            const int ta = TL_MAX(n_past, n_total - S->R);
            const size_t n = (size_t)(n_total - ta) * n_heads * S->d;
            if (n) {
                LAUNCH_APPEND(write_rows_k, grid_for(n, 256), 256, *S, ta, n_total, n_heads, n_past, 0, x, xs);
                TLC_LAUNCH_CHECK("kv residual append");
            }
        }
        S->nq = nq_new;
        return 0;
    }
    /* FLUSH */
    const int nq_new = n_total / S->R * S->R;
    if (nq_new > S->nq) {
        const int ga = S->nq / S->g, gb = nq_new / S->g;
        const int items = (gb - ga) * n_heads * S->d;
        LAUNCH_APPEND(flush_quant_k, (items + 3) / 4, 128, *S, ga, gb, n_heads, n_past, S->nq, x, xs);
        TLC_LAUNCH_CHECK("kv quantize (per-channel)");
    }
    const int ta = TL_MAX(n_past, nq_new);
    const size_t n = (size_t)(n_total - ta) * n_heads * S->d;
    if (n) {
        LAUNCH_APPEND(write_rows_k, grid_for(n, 256), 256, *S, ta, n_total, n_heads, n_past, nq_new, x, xs);
        TLC_LAUNCH_CHECK("kv residual append");
    }
    S->nq = nq_new;
    return 0;
}

int tlc_kv_append(tlc_ctx *cx, tlc_layer_kv *L, int n_past, int m, const float *k, const float *v, tl_error *err) {
    if (side_append(cx, &L->k, L->n_head_kv, n_past, m, k, L->n_head_kv * L->k.d, err)) return -1;
    return side_append(cx, &L->v, L->n_head_kv, n_past, m, v, L->n_head_kv * L->v.d, err);
}

/* One sequence's one-token append into dense f16 K and V stores: token n_past into slot
 * n_past % cap of each head (write_rows_k's DENSE case with m = 1). */
struct app_row {
    __half *kf, *vf;
    size_t k_head, v_head; /* halves per head (fp_head) */
    int k_slot, v_slot;
    const float *k, *v;    /* [Hkv * dk], [Hkv * dv] */
};
#define APP_SET 64
struct app_set {
    app_row r[APP_SET];
    int Hkv, dk, dv;
};
static_assert(sizeof(app_set) <= 4000, "app_set must fit the 4 KB of kernel parameters");

/* grid (blocks over Hkv * (dk + dv) values, rows) */
__global__ void append_many_k(const __grid_constant__ app_set P) {
    pdl_trigger();
    pdl_wait();
    const app_row &r = P.r[blockIdx.y];
    const int nk = P.Hkv * P.dk, nv = P.Hkv * P.dv;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < nk + nv; e += gridDim.x * blockDim.x) {
        if (e < nk) {
            const int h = e / P.dk, c = e % P.dk;
            r.kf[h * r.k_head + (size_t)r.k_slot * P.dk + c] = __float2half_rn(r.k[e]);
        } else {
            const int e2 = e - nk, h = e2 / P.dv, c = e2 % P.dv;
            r.vf[h * r.v_head + (size_t)r.v_slot * P.dv + c] = __float2half_rn(r.v[e2]);
        }
    }
}

static bool dense_f16(const kv_side &S) { return S.mode == KV_DENSE && S.dt == DT_F16; }

int tlc_kv_append_many(tlc_ctx *cx, int n, tlc_layer_kv *const *L, const int *n_past, const float *const *k,
                       const float *const *v, bool *done, tl_error *err) {
    for (int i = 0; i < n; i++) done[i] = false;
    int first = -1;
    for (int i = 0; i < n && first < 0; i++)
        if (!L[i]->off && dense_f16(L[i]->k) && dense_f16(L[i]->v)) first = i;
    if (first < 0) return 0;
    const tlc_layer_kv *F = L[first];
    app_set P;
    memset(&P, 0, sizeof P);
    P.Hkv = F->n_head_kv;
    P.dk = F->k.d;
    P.dv = F->v.d;
    int m = 0;
    for (int i = first; i <= n; i++) {
        if (i < n) {
            const tlc_layer_kv *Li = L[i];
            if (Li->off || !dense_f16(Li->k) || !dense_f16(Li->v) || Li->n_head_kv != P.Hkv || Li->k.d != P.dk || Li->v.d != P.dv)
                continue;
            app_row *r = &P.r[m++];
            r->kf = (__half *)Li->k.fp;
            r->vf = (__half *)Li->v.fp;
            r->k_head = Li->k.fp_head;
            r->v_head = Li->v.fp_head;
            r->k_slot = n_past[i] % Li->k.cap;
            r->v_slot = n_past[i] % Li->v.cap;
            r->k = k[i];
            r->v = v[i];
            done[i] = true;
        }
        if (m == APP_SET || (i == n && m > 0)) {
            const int per = P.Hkv * (P.dk + P.dv);
            cudaError_t e = tlc_launch(!cx->no_pdl, append_many_k, dim3((per + 255) / 256, m), dim3(256), 0, cx->stream, P);
            if (e != cudaSuccess) return tl_fail(err, "CUDA kernel kv append (%d sequences): %s", m, cudaGetErrorString(e));
            m = 0;
        }
    }
    return 0;
}
