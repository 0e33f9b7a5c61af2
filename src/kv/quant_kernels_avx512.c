/* quant_kernels_avx512.c: AVX-512 VNNI kernels of the quantized KV store (Zen4, Ice Lake and
 * later); chosen at run time by kvq_kernels_best, everything it does not cover goes to the
 * AVX2 table.
 *
 * Why integers: at long context the AVX2 float kernels are compute-bound; widening packed codes
 * to f32 costs more instructions than widening f16, so fewer bytes did not mean less time.
 *
 * Keys, token layout (tok_scores_q): the queries are quantized to int8 per 32-channel block
 * once per attention task (qd = max|q|/127, like int8 activations of a q8 matmul), and
 *   score(t) = sum_units s(unit) * qd(block) * sum_{c in unit} q8_c*code_c  +  z(unit) * sum q
 * with the integer sums done by vpdpbusd (u8 codes x s8 queries, 64 products per instruction).
 * The codes of a run are a sequence of 32-code units (one per token and 32-channel block, row
 * after row). A batch is 256 bytes of codes (4 loads of 64 bytes: 8, 16 or 32 units for 8, 4,
 * 2 bits); the 4 loads are 4x4-transposed by dwords inside each 128-bit lane, so that after
 * the dot products every int32 lane holds the sum of one unit (or half a unit at 8 bits)
 * without any horizontal reduction per query. The queries are stored permuted the same way
 * (tok_qprep), so any packing order costs nothing at run time. Per lane: one multiply by
 * s*qd and one FMA for z*sum(q); lanes of one token are then added by a fixed permutation
 * and 1-3 halvings, and the scores stored with a mask.
 *
 * Codes are centred in the integer sums (code - 2^(b-1), by a per-lane integer offset from the
 * prepared queries), so the query rounding error multiplies x - centre of its group:
 *   |score - exact fused score| <= sum_blocks qd_b/2 * sum_{c in b} |x_c - m_c|,
 * m_c = z + 2^(b-1) s (0 for symmetric codes); tested.
 *
 * Values, token layout (tok_accum): int8 weights p*s per 32-token sub-block, vpdpbusd over 4
 * tokens per dword; see the values section. Everything else: the AVX2 table. */
#include "quant_kernels.h"

#include <math.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "../quants.h"

#define K512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define K512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"), always_inline)) static inline
/* the value kernel also needs VBMI (vpermb); only it is compiled for it */
#define K512V __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")))
#define K512V_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c"), always_inline)) static inline

/* ---------------- prepared queries ---------------- */

enum { QP_HEAD = 512, QP_STRIDE = 1408 };

typedef struct {
    int bits, d, nb, na, nbu, T, nv;
    int32_t perm[16];     /* lane j*T + t of the reduced vector <- lane perm[...] of the unit vector */
    int32_t ua[2][16];    /* unit (in the batch) of each lane, per int accumulator */
    int32_t first[2][16]; /* the lane that carries the unit's z term */
} qp_head;
_Static_assert(sizeof(qp_head) <= QP_HEAD && KVQ_QPREP_BYTES(1) >= QP_HEAD + QP_STRIDE, "prepared-query layout");

/* Which unit and which code of it byte b of lane L of code vector e holds (see the batch
 * decode in tok_scores_body); the accumulator e feeds. */
static void code_map(int bits, int e, int L, int b, int *unit, int *pos, int *acc) {
    const int u = L / 4, i = L % 4;
    if (bits == 8) {
        *unit = 2 * i + u / 2, *pos = 16 * (u % 2) + 4 * e + b, *acc = 0;
    } else if (bits == 4) {
        const int m = e / 2, k = e % 2;
        *unit = 4 * i + u, *pos = 4 * m + b + 16 * k, *acc = 0;
    } else {
        const int m = e / 4, k = e % 4, B = 4 * m + b;
        *unit = 8 * i + 2 * u + B / 8, *pos = B % 8 + 8 * k, *acc = m / 2;
    }
}

static bool a512_tok_qprep(int bits, int d, const float *q, int nq, int qs, void *buf) {
    if ((bits != 8 && bits != 4 && bits != 2) || d % 32 || d > KVQ_MAX_DIM || nq < 1) return false;
    const int nb = d / 32, ub = 4 * bits, nbu = 256 / ub;
    if (nb & (nb - 1) || nbu % nb || nbu / nb > 16) return false; /* nb 1, 2, 4, 8; not 2 bits at d 32 */
    qp_head *h = buf;
    memset(h, 0, sizeof *h);
    h->bits = bits, h->d = d, h->nb = nb, h->nbu = nbu, h->T = nbu / nb;
    h->na = bits == 2 ? 2 : 1;
    h->nv = bits == 8 ? 4 : bits == 4 ? 8 : 16;
    for (int L = 0; L < 16; L++) {
        const int u = L / 4, i = L % 4;
        if (bits == 8) h->ua[0][L] = 2 * i + u / 2, h->first[0][L] = u % 2 == 0;
        else if (bits == 4) h->ua[0][L] = 4 * i + u, h->first[0][L] = 1;
        else h->ua[0][L] = 8 * i + 2 * u, h->ua[1][L] = 8 * i + 2 * u + 1, h->first[0][L] = h->first[1][L] = 1;
    }
    int cnt[16] = {0};
    for (int L = 0; L < 16; L++) { /* lanes of one token (nb >= 2 at 2 bits: both accumulators agree) */
        const int t = h->ua[0][L] / nb;
        h->perm[cnt[t]++ * h->T + t] = L;
    }
    for (int k = 0; k < nq; k++) {
        const float *qk = q + (size_t)k * qs;
        int8_t q8[KVQ_MAX_DIM];
        float qd[8], qsum[8];
        for (int b = 0; b < nb; b++) {
            float amax = 0, sum = 0;
            for (int c = 0; c < 32; c++) amax = fmaxf(amax, fabsf(qk[b * 32 + c])), sum += qk[b * 32 + c];
            qd[b] = amax / 127.0f, qsum[b] = sum;
            const float inv = amax > 0 ? 127.0f / amax : 0;
            for (int c = 0; c < 32; c++) q8[b * 32 + c] = (int8_t)lrintf(qk[b * 32 + c] * inv);
        }
        int8_t *qv = (int8_t *)buf + QP_HEAD + (size_t)k * QP_STRIDE;
        for (int e = 0; e < h->nv; e++)
            for (int L = 0; L < 16; L++)
                for (int b = 0; b < 4; b++) {
                    int unit, pos, acc;
                    code_map(bits, e, L, b, &unit, &pos, &acc);
                    qv[e * 64 + L * 4 + b] = q8[(unit % nb) * 32 + pos];
                }
        float *qf = (float *)(qv + h->nv * 64);
        int32_t *off = (int32_t *)(qf + h->na * 32);
        for (int a = 0; a < h->na; a++)
            for (int L = 0; L < 16; L++) {
                const int blk = h->ua[a][L] % nb;
                qf[a * 32 + L] = qd[blk];
                qf[a * 32 + 16 + L] = h->first[a][L] ? qsum[blk] : 0;
                off[a * 16 + L] = 0;
            }
        /* centred codes: lane sums of (code - 2^(b-1)) * q8, so the rounding error of q multiplies
         * x - (z + 2^(b-1) s), at most half the group's range, not code*s */
        for (int e = 0; e < h->nv; e++)
            for (int L = 0; L < 16; L++)
                for (int b = 0; b < 4; b++) {
                    int unit, pos, acc;
                    code_map(bits, e, L, b, &unit, &pos, &acc);
                    off[acc * 16 + L] += (1 << (bits - 1)) * qv[e * 64 + L * 4 + b];
                }
    }
    return true;
}

/* ---------------- key scores ---------------- */

/* Parameters of the batch's units f0 .. f0+nbu-1 as up to 64 floats (asym: s, z interleaved). */
K512_INLINE void batch_params(const kvq_run *r, int bits, int ppg, bool fast, int nb, int nbu, int64_t f0, __m512 P[4]) {
    const int nh = nbu * ppg;
    if (fast) { /* g 32, one parameter set per unit, contiguous */
        const uint16_t *p = r->params + f0 * ppg;
        for (int j = 0; j < 4; j++)
            if (j * 16 < nh) {
                const __mmask16 m = nh - j * 16 >= 16 ? 0xFFFF : (__mmask16)((1u << (nh - j * 16)) - 1);
                P[j] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p + j * 16));
            }
        return;
    }
    float tmp[64] __attribute__((aligned(64)));
    const int upg = r->g / 32;
    for (int f = 0; f < nbu; f++) {
        const int64_t ff = f0 + f, t = ff / nb;
        const uint16_t *par = r->params + t * r->pstride + (ff % nb) / upg * ppg;
        tmp[f * ppg] = _cvtsh_ss(par[0]);
        if (ppg == 2) tmp[f * ppg + 1] = _cvtsh_ss(par[1]);
    }
    (void)bits;
    for (int j = 0; j < 4; j++)
        if (j * 16 < nh) P[j] = _mm512_load_ps(tmp + 16 * j);
}

/* Lane L <- element idx[L] of the (up to 64-float) concatenation P. */
K512_INLINE __m512 gather64(const __m512 P[4], int nh, __m512i idx, __mmask16 hi) {
    if (nh <= 16) return _mm512_permutexvar_ps(idx, P[0]);
    const __m512 lo = _mm512_permutex2var_ps(P[0], idx, P[1]);
    if (nh <= 32) return lo;
    return _mm512_mask_blend_ps(hi, lo, _mm512_permutex2var_ps(P[2], idx, P[3]));
}

K512_INLINE void tok_scores_body(const kvq_run *r, int bits, const qp_head *h, const uint8_t *qbase, int nq, float *s,
                                 int ss, int nbatch) {
    const int nb = h->nb, nbu = h->nbu, T = h->T, na = h->na, ppg = r->sym ? 1 : 2, nh = nbu * ppg;
    const bool fast = r->g == 32 && r->pstride == nb * ppg;
    const __m512i perm = _mm512_loadu_si512(h->perm);
    __m512i idxs[2], idxz[2];
    __mmask16 his[2], hiz[2];
    for (int a = 0; a < na; a++) {
        const __m512i u = _mm512_loadu_si512(h->ua[a]);
        idxs[a] = _mm512_mullo_epi32(u, _mm512_set1_epi32(ppg));
        idxz[a] = _mm512_add_epi32(idxs[a], _mm512_set1_epi32(1));
        his[a] = _mm512_cmpge_epi32_mask(idxs[a], _mm512_set1_epi32(32));
        hiz[a] = _mm512_cmpge_epi32_mask(idxz[a], _mm512_set1_epi32(32));
    }
    const __m512 zmul = _mm512_set1_ps((float)(1 << (bits - 1)));
    const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(3);
    const __mmask16 smask = (__mmask16)((1u << T) - 1);
    for (int bt = 0; bt < nbatch; bt++) {
        const uint8_t *cb = r->codes + (size_t)bt * 256;
        const __m512i R0 = _mm512_loadu_si512(cb), R1 = _mm512_loadu_si512(cb + 64);
        const __m512i R2 = _mm512_loadu_si512(cb + 128), R3 = _mm512_loadu_si512(cb + 192);
        const __m512i t0 = _mm512_unpacklo_epi32(R0, R1), t1 = _mm512_unpackhi_epi32(R0, R1);
        const __m512i t2 = _mm512_unpacklo_epi32(R2, R3), t3 = _mm512_unpackhi_epi32(R2, R3);
        __m512i V[4];
        V[0] = _mm512_unpacklo_epi64(t0, t2), V[1] = _mm512_unpackhi_epi64(t0, t2);
        V[2] = _mm512_unpacklo_epi64(t1, t3), V[3] = _mm512_unpackhi_epi64(t1, t3);
        __m512i C[16];
        if (bits == 8) {
            for (int m = 0; m < 4; m++) C[m] = V[m];
        } else if (bits == 4) {
            for (int m = 0; m < 4; m++) {
                C[2 * m] = _mm512_and_si512(V[m], m4);
                C[2 * m + 1] = _mm512_and_si512(_mm512_srli_epi16(V[m], 4), m4);
            }
        } else {
            for (int m = 0; m < 4; m++) {
                C[4 * m] = _mm512_and_si512(V[m], m2);
                C[4 * m + 1] = _mm512_and_si512(_mm512_srli_epi16(V[m], 2), m2);
                C[4 * m + 2] = _mm512_and_si512(_mm512_srli_epi16(V[m], 4), m2);
                C[4 * m + 3] = _mm512_and_si512(_mm512_srli_epi16(V[m], 6), m2);
            }
        }
        __m512 P[4];
        batch_params(r, bits, ppg, fast, nb, nbu, (int64_t)bt * nbu, P);
        __m512 S[2], Z[2];
        for (int a = 0; a < na; a++) { /* Z: z + 2^(b-1) s, the centre of the codes */
            S[a] = gather64(P, nh, idxs[a], his[a]);
            Z[a] = r->sym ? _mm512_setzero_ps() : _mm512_fmadd_ps(S[a], zmul, gather64(P, nh, idxz[a], hiz[a]));
        }
        for (int k = 0; k < nq; k++) {
            const uint8_t *qk = qbase + (size_t)k * QP_STRIDE;
            const float *qf = (const float *)(qk + h->nv * 64);
            __m512i I0 = _mm512_setzero_si512(), I1 = I0;
            if (bits == 2) {
                for (int e = 0; e < 8; e++) I0 = _mm512_dpbusd_epi32(I0, C[e], _mm512_load_si512(qk + 64 * e));
                for (int e = 8; e < 16; e++) I1 = _mm512_dpbusd_epi32(I1, C[e], _mm512_load_si512(qk + 64 * e));
            } else {
                const int nv = bits == 8 ? 4 : 8;
                for (int e = 0; e < nv; e++) I0 = _mm512_dpbusd_epi32(I0, C[e], _mm512_load_si512(qk + 64 * e));
            }
            const __m512i *off = (const __m512i *)(qf + na * 32);
            I0 = _mm512_sub_epi32(I0, _mm512_load_si512(off));
            __m512 F = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I0), _mm512_mul_ps(S[0], _mm512_load_ps(qf)),
                                       _mm512_mul_ps(Z[0], _mm512_load_ps(qf + 16)));
            if (bits == 2) {
                I1 = _mm512_sub_epi32(I1, _mm512_load_si512(off + 1));
                F = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I1), _mm512_mul_ps(S[1], _mm512_load_ps(qf + 32)),
                                    _mm512_fmadd_ps(Z[1], _mm512_load_ps(qf + 48), F));
            }
            F = _mm512_permutexvar_ps(perm, F);
            if (T <= 8) F = _mm512_add_ps(F, _mm512_shuffle_f32x4(F, F, 0x4E));
            if (T <= 4) F = _mm512_add_ps(F, _mm512_shuffle_f32x4(F, F, 0xB1));
            if (T <= 2) F = _mm512_add_ps(F, _mm512_permute_ps(F, 0x4E));
            if (T <= 1) F = _mm512_add_ps(F, _mm512_permute_ps(F, 0xB1));
            _mm512_mask_storeu_ps(s + (size_t)k * ss + (size_t)bt * T, smask, F);
        }
    }
}

K512 static void a512_tok_scores_q(const kvq_run *r, const void *qp, const float *q, int nq, int qs, float *s, int ss) {
    const qp_head *h = qp;
    if (h->bits != r->bits || h->d != r->d) {
        kvq_avx2_table.tok_scores(r, q, nq, qs, s, ss);
        return;
    }
    const int nbatch = r->n / h->T;
    const uint8_t *qbase = (const uint8_t *)qp + QP_HEAD;
    switch (r->bits) {
    case 8: tok_scores_body(r, 8, h, qbase, nq, s, ss, nbatch); break;
    case 4: tok_scores_body(r, 4, h, qbase, nq, s, ss, nbatch); break;
    default: tok_scores_body(r, 2, h, qbase, nq, s, ss, nbatch); break;
    }
    const int done = nbatch * h->T;
    if (done < r->n) { /* the last tokens of a run that does not fill a batch */
        kvq_run rr = *r;
        rr.n = r->n - done;
        rr.codes = r->codes + (size_t)done * (r->d / 32) * 4 * r->bits;
        rr.params = r->params + (size_t)done * r->pstride;
        kvq_avx2_table.tok_scores(&rr, q, nq, qs, s + done, ss);
    }
}

static void a512_tok_scores(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss) {
    _Alignas(64) uint8_t buf[KVQ_QPREP_BYTES(8)];
    for (int k = 0; k < nq; k += 8) { /* 8 queries at a time: bounded stack */
        const int m = TL_MIN(8, nq - k);
        if (!a512_tok_qprep(r->bits, r->d, q + (size_t)k * qs, m, qs, buf)) {
            kvq_avx2_table.tok_scores(r, q + (size_t)k * qs, nq - k, qs, s + (size_t)k * ss, ss);
            return;
        }
        a512_tok_scores_q(r, buf, q + (size_t)k * qs, m, qs, s + (size_t)k * ss, ss);
    }
}

/* ---------------- values, token layout ----------------
 * acc[k][c] += sum_t p_k(t) * x(t,c),  x = s*(code - m) + (z + m s),  m = 2^(b-1):
 *   = sum_sub D_k * sum_t w8_k(t,j) * (code - m)  +  sum_t p_k(t) * (z + m s)    (j = group of c)
 * with w8 = round(p*s / D_k) in 0..255 (u8), D_k = max_{t,j} p*s / 255 per query and sub-block
 * of 32 tokens (a block is one call's run, <= 128 tokens: one attention tile). Why 32: one
 * scale per 128 tokens cost the attention test 2x its error (the few large probabilities set
 * the scale for all); flushing the int32 sums to floats every 32 tokens costs ~5%.
 * The weights are formed 16 (token, group) items at a time (params converted once per block
 * for all queries); the integer sums run over 4 tokens per dword by vpdpbusd (u8 weights x s8
 * centred codes): 4 code loads of 64 bytes (4 tokens at one row offset, or 256/row_bytes
 * consecutive tokens for short rows) are interleaved by bytes so that each dword holds one code
 * byte of 4 tokens, and each 128-bit lane gets the weights of its 4 tokens and group by one
 * vpermb of a 64-byte weight window. A 4x4 transpose of 128-bit blocks at the end of the block
 * puts the sums in channel order. Symmetric codes have z + m s = 0: no z term.
 * Error (weight rounding only; w >= 0 since p >= 0 and s >= 0, else the block goes to AVX2):
 *   |acc - exact fused acc| <= sum_sub D_k/2 * sum_{t in sub} |code(t,c) - m|    (tested),
 * about the codes' own rounding at 8 bits (the attention test's k8v8 error vs the original
 * rows: 0.0049 -> 0.0056), well under it at 4 and 2 bits. */
enum { VA_SEG = 128, VA_SUB = 32, VA_NSUB = VA_SEG / VA_SUB };

/* Weights of up to 4 queries for one block: w8[kk][t*ng + j] (padded with zeros), scale per
 * sub-block D[kk][sb], z term per group zs[kk][j]. False when a weight is negative. */
K512V_INLINE bool va_weights(const float *S, const float *Zc, bool asym, int n, int ng, const float *p, int kn, int ps,
                             uint8_t (*w8)[VA_SEG * 8 + 64], float (*D)[VA_NSUB], float (*zs)[8]) {
    const int ni = n * ng, tpv = 16 / ng, nis = VA_SUB * ng;
    _Alignas(64) float W[VA_SEG * 8];
    const __m512i pidx = _mm512_srlv_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(__builtin_ctz(ng)));
    for (int kk = 0; kk < kn; kk++) {
        const float *pk = p + (size_t)kk * ps;
        __m512 vmin = _mm512_setzero_ps(), zacc = vmin;
        for (int i0 = 0, sb = 0; i0 < ni; i0 += nis, sb++) {
            __m512 vmax = _mm512_setzero_ps();
            const int i1 = TL_MIN(ni, i0 + nis);
            for (int i = i0; i < i1; i += 16) {
                const int tleft = n - i / ng;
                const __mmask16 tm = (__mmask16)((1u << TL_MIN(tpv, tleft)) - 1);
                const __m512 P = _mm512_permutexvar_ps(pidx, _mm512_maskz_loadu_ps(tm, pk + i / ng));
                const __m512 w = _mm512_mul_ps(P, _mm512_load_ps(S + i));
                _mm512_store_ps(W + i, w);
                vmax = _mm512_max_ps(vmax, w), vmin = _mm512_min_ps(vmin, w);
                if (asym) zacc = _mm512_fmadd_ps(P, _mm512_load_ps(Zc + i), zacc);
            }
            const float mx = _mm512_reduce_max_ps(vmax);
            D[kk][sb] = mx / 255.0f;
            const __m512 inv = _mm512_set1_ps(mx > 0 ? 255.0f / mx : 0.0f);
            for (int i = i0; i < i1; i += 16)
                _mm_store_si128((__m128i *)(w8[kk] + i),
                                _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(W + i), inv))));
        }
        if (_mm512_reduce_min_ps(vmin) < 0) return false;
        memset(w8[kk] + ni, 0, 64);
        float zl[16];
        _mm512_storeu_ps(zl, zacc);
        for (int j = 0; j < ng; j++) zs[kk][j] = 0;
        if (asym)
            for (int l = 0; l < 16; l++) zs[kk][l & (ng - 1)] += zl[l]; /* ng: a power of two */
    }
    return true;
}

/* a[0..15] += v */
K512V_INLINE void va_add16(float *a, __m512 v) { _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), v)); }

K512V_INLINE void tok_accum_body(const kvq_run *r, int bits, int KN, const float *p, int ps, float *acc, int as, int n) {
    const int d = r->d, ub = 4 * bits, rb = d / 32 * ub, ng = d / r->g, upg = r->g / 32, m = 1 << (bits - 1);
    const bool asym = !r->sym, caseA = rb % 64 == 0;
    const int H = caseA ? rb / 64 : 1, TI = caseA ? 4 : 256 / rb, NE = 8 / bits, ni = n * ng;
    /* (s, z + m s) per (token, group), converted once for all queries */
    _Alignas(64) float S[VA_SEG * 8], Zc[VA_SEG * 8];
    if (!asym) {
        for (int i = 0; i < ni; i += 16) {
            const __mmask16 km = (__mmask16)(ni - i >= 16 ? 0xFFFF : (1u << (ni - i)) - 1);
            _mm512_store_ps(S + i, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, r->params + i)));
        }
    } else {
        const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
        const __m512 mv = _mm512_set1_ps((float)m);
        for (int i = 0; i < ni; i += 16) {
            const int h0 = 2 * i, left = 2 * ni - h0;
            const __mmask16 k0 = (__mmask16)(left >= 16 ? 0xFFFF : (1u << left) - 1);
            const __mmask16 k1 = (__mmask16)(left >= 32 ? 0xFFFF : left <= 16 ? 0 : (1u << (left - 16)) - 1);
            const __m512 a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k0, r->params + h0));
            const __m512 b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k1, r->params + h0 + 16));
            const __m512 s = _mm512_permutex2var_ps(a, ev, b), z = _mm512_permutex2var_ps(a, od, b);
            _mm512_store_ps(S + i, s);
            _mm512_store_ps(Zc + i, _mm512_fmadd_ps(s, mv, z));
        }
    }
    const __m512i mlo = _mm512_set1_epi8((char)((1 << bits) - 1)), cen = _mm512_set1_epi8((char)m);
    { /* KN (1..4) queries, a constant after inlining: the int accumulators stay in registers */
        const int k0 = 0, kn = KN;
        _Alignas(64) uint8_t w8[4][VA_SEG * 8 + 64];
        float D[4][VA_NSUB], zs[4][8];
        if (!va_weights(S, Zc, asym, n, ng, p + (size_t)k0 * ps, kn, ps, w8, D, zs)) {
            kvq_run rr = *r;
            rr.n = n;
            kvq_avx2_table.tok_accum(&rr, p + (size_t)k0 * ps, kn, ps, acc + (size_t)k0 * as, as);
            return;
        }
        for (int h = 0; h < H; h++) {
            /* weight byte i of every dword of lane L: token tau(L, i) of the iteration, group of
             * the lane's unit (two halves ph at 2 bits: a 16-byte piece spans 2 units) */
            __m512i ctl[2];
            for (int ph = 0; ph < 2; ph++) {
                int32_t cw[4];
                for (int L = 0; L < 4; L++) {
                    const int off = caseA ? 64 * h + 16 * L : (16 * L) % rb;
                    const int j = (off + (bits == 2 ? 8 * ph : 0)) / ub / upg;
                    uint32_t v = 0;
                    for (int i = 0; i < 4; i++) v |= (uint32_t)((caseA ? i : (64 * i + 16 * L) / rb) * ng + j) << (8 * i);
                    cw[L] = (int32_t)v;
                }
                ctl[ph] = _mm512_setr_epi32(cw[0], cw[0], cw[0], cw[0], cw[1], cw[1], cw[1], cw[1], cw[2], cw[2], cw[2], cw[2],
                                            cw[3], cw[3], cw[3], cw[3]);
            }
            for (int e = 0; e < NE; e++) {
                _Alignas(64) float F[4][4][16];
                memset(F, 0, sizeof F);
                for (int sb = 0; sb * VA_SUB < n; sb++) {
                    __m512i A[4][4];
#pragma GCC unroll 4
                    for (int kk = 0; kk < 4; kk++)
#pragma GCC unroll 4
                        for (int pp = 0; pp < 4; pp++) A[kk][pp] = _mm512_setzero_si512();
                    const int tend = TL_MIN(n, (sb + 1) * VA_SUB);
                    for (int t0 = sb * VA_SUB; t0 + TI <= tend; t0 += TI) {
                        const uint8_t *base = r->codes + (size_t)t0 * rb;
                        __m512i X[4];
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++) {
                            const __m512i x = _mm512_loadu_si512(caseA ? base + (size_t)i * rb + 64 * h : base + 64 * i);
                            X[i] = bits == 8 ? _mm512_xor_si512(x, cen)
                                             : _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(x, e * bits), mlo), cen);
                        }
                        const __m512i a0 = _mm512_unpacklo_epi8(X[0], X[1]), a1 = _mm512_unpackhi_epi8(X[0], X[1]);
                        const __m512i b0 = _mm512_unpacklo_epi8(X[2], X[3]), b1 = _mm512_unpackhi_epi8(X[2], X[3]);
                        const __m512i W0 = _mm512_unpacklo_epi16(a0, b0), W1 = _mm512_unpackhi_epi16(a0, b0);
                        const __m512i W2 = _mm512_unpacklo_epi16(a1, b1), W3 = _mm512_unpackhi_epi16(a1, b1);
#pragma GCC unroll 4
                        for (int kk = 0; kk < kn; kk++) {
                            const __m512i win = _mm512_loadu_si512(w8[kk] + (size_t)t0 * ng);
                            const __m512i wa = _mm512_permutexvar_epi8(ctl[0], win);
                            const __m512i wb = bits == 2 ? _mm512_permutexvar_epi8(ctl[1], win) : wa;
                            A[kk][0] = _mm512_dpbusd_epi32(A[kk][0], wa, W0);
                            A[kk][1] = _mm512_dpbusd_epi32(A[kk][1], wa, W1);
                            A[kk][2] = _mm512_dpbusd_epi32(A[kk][2], wb, W2);
                            A[kk][3] = _mm512_dpbusd_epi32(A[kk][3], wb, W3);
                        }
                    }
#pragma GCC unroll 4
                    for (int kk = 0; kk < kn; kk++) { /* the sub-block's scale */
                        const __m512 Dk = _mm512_set1_ps(D[kk][sb]);
#pragma GCC unroll 4
                        for (int pp = 0; pp < 4; pp++)
                            _mm512_store_ps(F[kk][pp], _mm512_fmadd_ps(_mm512_cvtepi32_ps(A[kk][pp]), Dk, _mm512_load_ps(F[kk][pp])));
                    }
                }
                for (int kk = 0; kk < kn; kk++) {
                    /* lane L, dword 4p+mm of O_L = byte 4p+mm of the lane's 16-byte piece */
                    const __m512 F0 = _mm512_load_ps(F[kk][0]), F1 = _mm512_load_ps(F[kk][1]);
                    const __m512 F2 = _mm512_load_ps(F[kk][2]), F3 = _mm512_load_ps(F[kk][3]);
                    const __m512 T0 = _mm512_shuffle_f32x4(F0, F1, 0x44), T1 = _mm512_shuffle_f32x4(F0, F1, 0xEE);
                    const __m512 T2 = _mm512_shuffle_f32x4(F2, F3, 0x44), T3 = _mm512_shuffle_f32x4(F2, F3, 0xEE);
                    const __m512 O[4] = {_mm512_shuffle_f32x4(T0, T2, 0x88), _mm512_shuffle_f32x4(T0, T2, 0xDD),
                                         _mm512_shuffle_f32x4(T1, T3, 0x88), _mm512_shuffle_f32x4(T1, T3, 0xDD)};
                    float *ak = acc + (size_t)(k0 + kk) * as;
                    for (int L = 0; L < 4; L++) {
                        const int off = caseA ? 64 * h + 16 * L : (16 * L) % rb;
                        const __m512 v = O[L];
                        if (bits == 8) {
                            va_add16(ak + off, v);
                        } else if (bits == 4) {
                            va_add16(ak + off * 2 + 16 * e, v);
                        } else {
                            float *c0 = ak + off / 8 * 32 + 8 * e, *c1 = c0 + 32;
                            _mm256_storeu_ps(c0, _mm256_add_ps(_mm256_loadu_ps(c0), _mm512_castps512_ps256(v)));
                            _mm256_storeu_ps(c1, _mm256_add_ps(_mm256_loadu_ps(c1), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
                        }
                    }
                }
            }
        }
        if (asym)
            for (int kk = 0; kk < kn; kk++) {
                float *ak = acc + (size_t)(k0 + kk) * as;
                for (int c = 0; c < d; c += 16) va_add16(ak + c, _mm512_set1_ps(zs[kk][c / r->g]));
            }
    }
}

K512V static void a512_tok_accum(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as) {
    const int d = r->d, bits = r->bits, ppg = r->sym ? 1 : 2;
    const int rb = d / 32 * 4 * bits, ng = r->g > 0 ? d / r->g : 0;
    const bool ok = (bits == 8 || bits == 4 || bits == 2) && d % 32 == 0 && d <= KVQ_MAX_DIM && r->g % 32 == 0 &&
                    d % r->g == 0 && 16 % ng == 0 && r->pstride == ng * ppg && (rb % 64 == 0 || rb == 32 || rb == 16);
    if (!ok) {
        kvq_avx2_table.tok_accum(r, p, nq, ps, acc, as);
        return;
    }
    const int TI = rb % 64 == 0 ? 4 : 256 / rb;
    for (int t0 = 0; t0 < r->n; t0 += VA_SEG) {
        const int n = TL_MIN(VA_SEG, r->n - t0), nfull = n / TI * TI;
        kvq_run rr = *r;
        rr.codes = r->codes + (size_t)t0 * rb;
        rr.params = r->params + (size_t)t0 * r->pstride;
        for (int k0 = 0; nfull > 0 && k0 < nq; k0 += 4) {
            const float *pk = p + t0 + (size_t)k0 * ps;
            float *ak = acc + (size_t)k0 * as;
#define VA_CASE(B, KN) \
    case (B) * 8 + (KN): tok_accum_body(&rr, B, KN, pk, ps, ak, as, nfull); break;
            switch (bits * 8 + TL_MIN(4, nq - k0)) {
                VA_CASE(8, 1) VA_CASE(8, 2) VA_CASE(8, 3) VA_CASE(8, 4)
                VA_CASE(4, 1) VA_CASE(4, 2) VA_CASE(4, 3) VA_CASE(4, 4)
                VA_CASE(2, 1) VA_CASE(2, 2) VA_CASE(2, 3) VA_CASE(2, 4)
            default: break;
            }
#undef VA_CASE
        }
        if (nfull < n) { /* tokens that do not fill an iteration */
            rr.n = n - nfull;
            rr.codes += (size_t)nfull * rb;
            rr.params += (size_t)nfull * r->pstride;
            kvq_avx2_table.tok_accum(&rr, p + t0 + nfull, nq, ps, acc, as);
        }
    }
}

/* ---------------- the rest: AVX2 ---------------- */

static void a512_tok_accum_avx2(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as) {
    kvq_avx2_table.tok_accum(r, p, nq, ps, acc, as);
}
static void a512_ch_scores(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss) {
    kvq_avx2_table.ch_scores(r, q, nq, qs, s, ss);
}
static void a512_ch_accum(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as) {
    kvq_avx2_table.ch_accum(r, p, nq, ps, acc, as);
}
static void a512_f16_scores(const uint16_t *x, int n, int d, const float *q, int nq, int qs, float *s, int ss) {
    kvq_avx2_table.f16_scores(x, n, d, q, nq, qs, s, ss);
}
static void a512_f16_accum(const uint16_t *x, int n, int d, const float *p, int nq, int ps, float *acc, int as) {
    kvq_avx2_table.f16_accum(x, n, d, p, nq, ps, acc, as);
}
static void a512_f32_scores(const float *x, int rs, int n, int d, const float *q, int nq, int qs, float *s, int ss) {
    kvq_avx2_table.f32_scores(x, rs, n, d, q, nq, qs, s, ss);
}
static void a512_f32_accum(const float *x, int rs, int n, int d, const float *p, int nq, int ps, float *acc, int as) {
    kvq_avx2_table.f32_accum(x, rs, n, d, p, nq, ps, acc, as);
}

/* vpermb (the value kernel's weight placement) needs AVX512-VBMI (Zen4, Ice Lake); without it
 * values stay on AVX2 */
#define A512_TABLE(accum)                                                                            \
    {                                                                                                \
        .name = "avx512", .tok_scores = a512_tok_scores, .tok_accum = accum, .ch_scores = a512_ch_scores, \
        .ch_accum = a512_ch_accum, .f16_scores = a512_f16_scores, .f16_accum = a512_f16_accum,       \
        .f32_scores = a512_f32_scores, .f32_accum = a512_f32_accum, .tok_qprep = a512_tok_qprep,     \
        .tok_scores_q = a512_tok_scores_q,                                                           \
    }
static const kvq_kernels kernels_avx512 = A512_TABLE(a512_tok_accum);
static const kvq_kernels kernels_avx512_novbmi = A512_TABLE(a512_tok_accum_avx2);

const kvq_kernels *kvq_kernels_avx512(void) {
    const tl_cpu_features f = tl_cpu_detect();
    if (!(f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni)) return NULL;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") ? &kernels_avx512 : &kernels_avx512_novbmi;
}
#endif
