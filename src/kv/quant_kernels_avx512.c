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
 * tokens per dword; see the values section.
 *
 * Keys, channel layout (ch_scores: KIVI's per-channel keys, per-block keys): int8 weights q*s
 * per token group (one scale per group and query), vpdpbusd over 4 channels per dword after a
 * vpermt2b transposition of the codes; see the channel-layout section. Everything else: the
 * AVX2 table. */
#include "quant_kernels.h"

#include <math.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "../cpu/quants.h"

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

/* Lane L <- element idx[L] of the (up to 64-element) concatenation P (32-bit lanes: floats, or
 * integers through casts). */
K512_INLINE __m512 gather64(const __m512 P[4], int nh, __m512i idx, __mmask16 hi) {
    if (nh <= 16) return _mm512_permutexvar_ps(idx, P[0]);
    const __m512 lo = _mm512_permutex2var_ps(P[0], idx, P[1]);
    if (nh <= 32) return lo;
    return _mm512_mask_blend_ps(hi, lo, _mm512_permutex2var_ps(P[2], idx, P[3]));
}

/* q rounded to int8 per 32-channel block b: q8 = round(q / qd_b), qd_b = max|q_b| / 127; and the
 * block sums of q. */
K512_INLINE void q8_blocks(const float *q, int nb, int8_t *q8, float *qd, float *qsum) {
    for (int b = 0; b < nb; b++) {
        const __m512 x0 = _mm512_loadu_ps(q + 32 * b), x1 = _mm512_loadu_ps(q + 32 * b + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        qd[b] = amax / 127.0f, qsum[b] = _mm512_reduce_add_ps(_mm512_add_ps(x0, x1));
        const __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0);
        _mm_store_si128((__m128i *)(q8 + 32 * b), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(x0, inv))));
        _mm_store_si128((__m128i *)(q8 + 32 * b + 16), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(x1, inv))));
    }
}

/* Runs once per attention task (not per tile): vector work per query, the layout (code_map) once
 * per call. */
K512 static bool a512_tok_qprep(int bits, int d, const float *q, int nq, int qs, void *buf) {
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
    /* the 4 bytes of lane L of query vector e are 4 consecutive values of q8 (code_map's pos is
     * 4-aligned at b = 0 and grows with b): dword src[e][L] of q8; accumulator of e */
    _Alignas(64) int32_t src[16][16];
    int acc_of[16];
    for (int e = 0; e < h->nv; e++)
        for (int L = 0; L < 16; L++) {
            int unit, pos;
            code_map(bits, e, L, 0, &unit, &pos, &acc_of[e]);
            src[e][L] = ((unit % nb) * 32 + pos) / 4;
        }
    /* centred codes: lane sums of (code - 2^(b-1)) * q8, so the rounding error of q multiplies
     * x - (z + 2^(b-1) s), at most half the group's range, not code*s; off = 2^(b-1) * sum q8 */
    const __m512i mv = _mm512_set1_epi8((char)(1 << (bits - 1)));
    for (int k = 0; k < nq; k++) {
        _Alignas(64) int8_t q8[KVQ_MAX_DIM] = {0}; /* whole vectors are read at d 32 */
        float qd[8], qsum[8];
        q8_blocks(q + (size_t)k * qs, nb, q8, qd, qsum);
        __m512 Q[4];
        for (int j = 0; j < (d + 63) / 64; j++) Q[j] = _mm512_load_ps((const float *)(q8 + 64 * j));
        int8_t *qv = (int8_t *)buf + QP_HEAD + (size_t)k * QP_STRIDE;
        __m512i off[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
        for (int e = 0; e < h->nv; e++) {
            const __m512i idx = _mm512_load_si512(src[e]);
            const __m512i v = _mm512_castps_si512(gather64(Q, d / 4, idx, _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(32))));
            _mm512_store_si512(qv + e * 64, v);
            off[acc_of[e]] = _mm512_dpbusd_epi32(off[acc_of[e]], mv, v);
        }
        float *qf = (float *)(qv + h->nv * 64);
        int32_t *offs = (int32_t *)(qf + h->na * 32);
        for (int a = 0; a < h->na; a++) {
            for (int L = 0; L < 16; L++) {
                const int blk = h->ua[a][L] % nb;
                qf[a * 32 + L] = qd[blk];
                qf[a * 32 + 16 + L] = h->first[a][L] ? qsum[blk] : 0;
            }
            _mm512_storeu_si512(offs + a * 16, off[a]);
        }
    }
    return true;
}

/* ---------------- parameters ---------------- */

/* Mask of the first n of 16 lanes (n may be <= 0 or >= 16). */
static inline __mmask16 lanes16(int n) { return (__mmask16)(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1); }

/* Lanes 0, 2, .., 30: the even elements of two vectors for permutex2var (+ 1: the odd ones). */
K512_INLINE __m512i even_lanes(void) {
    return _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
}

/* Parameter sets 0 .. n-1 at par (n may exceed 16: the first 16; lanes past n are 0) as the
 * scales s and the centres z + m s of their codes (m = 2^(b-1); 0 for symmetric codes). */
K512_INLINE void params16(const uint16_t *par, int n, bool asym, int m, __m512 *s, __m512 *zc) {
    if (!asym) {
        *s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes16(n), par));
        *zc = _mm512_setzero_ps();
        return;
    }
    const __m512i ev = even_lanes(), od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    const __m512 a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes16(2 * n), par));
    const __m512 b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes16(2 * n - 16), par + 16));
    *s = _mm512_permutex2var_ps(a, ev, b);
    *zc = _mm512_fmadd_ps(*s, _mm512_set1_ps((float)m), _mm512_permutex2var_ps(a, od, b));
}

/* ---------------- key scores ---------------- */

/* Parameters of the batch's units f0 .. f0+nbu-1 as up to 64 floats (asym: s, z interleaved). */
K512_INLINE void batch_params(const kvq_run *r, int bits, int ppg, bool fast, int nb, int nbu, int64_t f0, __m512 P[4]) {
    const int nh = nbu * ppg;
    if (fast) { /* g 32, one parameter set per unit, contiguous */
        const uint16_t *p = r->params + f0 * ppg;
        for (int j = 0; j < 4; j++)
            if (j * 16 < nh) {
                const __mmask16 m = lanes16(nh - j * 16);
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
                const __mmask16 tm = lanes16(TL_MIN(tpv, tleft));
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
    for (int i = 0; i < ni; i += 16) {
        __m512 sv, zc;
        params16(r->params + (size_t)i * (asym ? 2 : 1), ni - i, asym, m, &sv, &zc);
        _mm512_store_ps(S + i, sv);
        if (asym) _mm512_store_ps(Zc + i, zc);
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

/* ---------------- keys, channel layout ----------------
 * Per-channel keys (KIVI, ce = 1: (s, z) per channel and group of g tokens) and per-block keys
 * (ce = g: one set per g channels). Within a token group, with m = 2^(b-1) and w_c = q_c s_c,
 *   score(t) = sum_c q_c (s_c code(t,c) + z_c) = sum_c w_c (code(t,c) - m) + sum_c q_c (z_c + m s_c).
 * Per group and query the weights are rounded to int8 once, w8 = round(w / D) with
 * D = max_c |w_c| / 127; the second sum is a float constant of the group; the first runs in
 * integers by vpdpbusd (u8 codes x s8 weights, 4 channels per dword, one token per int32 lane),
 * the sums starting at -m * sum_c w8_c so that the codes are centred exactly. Error (weight
 * rounding only):
 *   |score - exact fused score| <= D/2 * sum_c |code(t,c) - m|     (tested).
 * One scale for all channels of the group rather than one per 32 (as the token-layout kernel
 * has): another scale per 32 channels would flush the int32 sums d/32 times per group, which
 * at g 32 costs half as much again as the dot products themselves.
 * Codes: a group holds per channel a run of cb = g*bits/8 bytes. Each 128 bytes (16, 8 or 4
 * channels) are transposed by vpermt2b into vectors of dwords that each hold one byte position
 * of 4 channels; a shift by k*bits and a mask then leave the codes of one token per dword (the
 * token of position p and shift k is 32 (p / 4b) + 4b k + p % 4b, as packed). cb 8 (2-bit g32:
 * KIVI's keys): a vector holds 8 positions of two channel quads in alternate lanes, so its
 * weights are one 64-bit broadcast and adjacent lanes are added at the end; cb 16 and 32: 16
 * positions of one quad, a dword broadcast. Everything else (1 bit, cb 64 and 128) goes to AVX2.
 * The weights of a group cost about as much as its dot products at g 32 (d products per query
 * against g*d/64 vpdpbusd): still ~4x fewer instructions than f16 keys. */
enum { CK_Q = 4 }; /* queries per pass over a group: their int32 sums stay in registers */

typedef struct {
    _Alignas(64) int8_t w8[CK_Q][KVQ_MAX_DIM];
    float D[CK_Q], bias[CK_Q]; /* bias: sum_c q_c (z_c + m s_c) */
    int32_t start[CK_Q];       /* -m * sum_c w8_c */
} ck_weights;

static inline int32_t ld32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline int64_t ld64(const int8_t *p) {
    int64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Weights of queries q[0], q[qs], ... (kn <= CK_Q) for a group of scales S and centres Zc. */
K512_INLINE void ck_weights_prep(const float *S, const float *Zc, bool asym, int d, int m, const float *q, int kn, int qs,
                                 ck_weights *w) {
    _Alignas(64) float W[KVQ_MAX_DIM];
    for (int kk = 0; kk < kn; kk++) {
        const float *qk = q + (size_t)kk * qs;
        __m512 vmax = _mm512_setzero_ps(), bacc = vmax;
        for (int c = 0; c < d; c += 16) {
            const __m512 qv = _mm512_loadu_ps(qk + c), wv = _mm512_mul_ps(qv, _mm512_load_ps(S + c));
            _mm512_store_ps(W + c, wv);
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(wv));
            if (asym) bacc = _mm512_fmadd_ps(qv, _mm512_load_ps(Zc + c), bacc);
        }
        const float mx = _mm512_reduce_max_ps(vmax);
        const __m512 inv = _mm512_set1_ps(mx > 0 ? 127.0f / mx : 0.0f);
        __m512i isum = _mm512_setzero_si512();
        for (int c = 0; c < d; c += 16) {
            const __m512i wi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(W + c), inv));
            isum = _mm512_add_epi32(isum, wi);
            _mm_store_si128((__m128i *)(w->w8[kk] + c), _mm512_cvtsepi32_epi8(wi));
        }
        w->D[kk] = mx / 127.0f;
        w->bias[kk] = asym ? _mm512_reduce_add_ps(bacc) : 0.0f;
        w->start[kk] = -m * _mm512_reduce_add_epi32(isum);
    }
}

/* vpermt2b indices of output vector o of a 128-byte batch: byte i of dword lane L is channel
 * 4*quad + i of the batch, at position pos of its run of cb bytes. */
K512_INLINE __m512i ck_index(int cb, int o) {
    int32_t base[16];
    for (int L = 0; L < 16; L++) {
        const int quad = cb == 8 ? 2 * o + (L & 1) : cb == 16 ? o : 0;
        const int pos = cb == 8 ? L >> 1 : cb == 16 ? L : 16 * o + L;
        base[L] = 4 * quad * cb + pos; /* + i*cb for byte i: below 128, no carries */
    }
    return _mm512_add_epi32(_mm512_mullo_epi32(_mm512_loadu_si512(base), _mm512_set1_epi32(0x01010101)),
                            _mm512_set1_epi32(cb * 0x03020100));
}

/* Token (in its group) of dword lane L of output vector o shifted by k*bits (cb 16, 32). */
static inline int ck_token(int cb, int bits, int o, int L, int k) {
    const int ub = 4 * bits, p = (cb == 32 ? 16 * o : 0) + L;
    return 32 * (p / ub) + ub * k + p % ub;
}

/* Scores s[kk*ss + t], t < g, of KQ queries for the group of codes at `codes`. */
K512V_INLINE void ck_group(const uint8_t *codes, int d, int bits, int cb, int KQ, const ck_weights *w,
                           const __m512i idx[2], float *s, int ss) {
    const int nk = 8 / bits, npass = cb == 32 ? 2 : 1, nout = cb == 32 ? 1 : 2, nbatch = d * cb / 128;
    const __m512i mask = _mm512_set1_epi8((char)((1 << bits) - 1));
    for (int pass = 0; pass < npass; pass++) {
        __m512i A[CK_Q][4];
#pragma GCC unroll 4
        for (int kk = 0; kk < KQ; kk++)
#pragma GCC unroll 4
            for (int k = 0; k < nk; k++) /* cb 8: lanes 2j, 2j+1 are one token: start it once */
                A[kk][k] = cb == 8 ? _mm512_maskz_set1_epi32(0x5555, w->start[kk]) : _mm512_set1_epi32(w->start[kk]);
        for (int b = 0; b < nbatch; b++) {
            const __m512i R0 = _mm512_loadu_si512(codes + 128 * b), R1 = _mm512_loadu_si512(codes + 128 * b + 64);
#pragma GCC unroll 2
            for (int oo = 0; oo < nout; oo++) {
                const int o = pass + oo;
                const __m512i X = _mm512_permutex2var_epi8(R0, idx[o], R1);
                const int wo = cb == 8 ? 4 * (4 * b + 2 * o) : cb == 16 ? 4 * (2 * b + o) : 4 * b; /* first channel */
#pragma GCC unroll 4
                for (int k = 0; k < nk; k++) {
                    const __m512i C = bits == 8 ? X : _mm512_and_si512(_mm512_srli_epi16(X, k * bits), mask);
#pragma GCC unroll 4
                    for (int kk = 0; kk < KQ; kk++) {
                        const __m512i wv =
                            cb == 8 ? _mm512_set1_epi64(ld64(w->w8[kk] + wo)) : _mm512_set1_epi32(ld32(w->w8[kk] + wo));
                        A[kk][k] = _mm512_dpbusd_epi32(A[kk][k], C, wv);
                    }
                }
            }
        }
        const __m512i even = even_lanes(), odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
#pragma GCC unroll 4
        for (int kk = 0; kk < KQ; kk++) {
            const __m512 D = _mm512_set1_ps(w->D[kk]), B = _mm512_set1_ps(w->bias[kk]);
            float *sk = s + (size_t)kk * ss;
            if (cb == 8) { /* A[k] lane 2j, 2j+1: token 8k + j */
                for (int h = 0; h < 2; h++) {
                    const __m512i a = A[kk][2 * h], c = A[kk][2 * h + 1];
                    const __m512i P = _mm512_add_epi32(_mm512_permutex2var_epi32(a, even, c), _mm512_permutex2var_epi32(a, odd, c));
                    _mm512_storeu_ps(sk + 16 * h, _mm512_fmadd_ps(_mm512_cvtepi32_ps(P), D, B));
                }
                continue;
            }
#pragma GCC unroll 4
            for (int k = 0; k < nk; k++) { /* lanes 0-7 and 8-15: runs of 8 tokens */
                const __m512 F = _mm512_fmadd_ps(_mm512_cvtepi32_ps(A[kk][k]), D, B);
                const int t0 = ck_token(cb, bits, pass, 0, k), t1 = ck_token(cb, bits, pass, 8, k);
                if (t1 == t0 + 8) {
                    _mm512_storeu_ps(sk + t0, F);
                } else {
                    _mm256_storeu_ps(sk + t0, _mm512_castps512_ps256(F));
                    _mm256_storeu_ps(sk + t1, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(F), 1)));
                }
            }
        }
    }
}

K512V static void a512_ch_scores(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss) {
    const int bits = r->bits, d = r->d, g = r->g, cb = g * bits / 8, m = 1 << (bits - 1);
    const bool ok = (bits == 8 || bits == 4 || bits == 2) && (cb == 8 || cb == 16 || cb == 32) && d % 32 == 0 &&
                    d <= KVQ_MAX_DIM && (r->ce == 1 || r->ce == g) && d % r->ce == 0 && r->n % g == 0;
    if (!ok) {
        kvq_avx2_table.ch_scores(r, q, nq, qs, s, ss);
        return;
    }
    const bool asym = !r->sym;
    const int ppg = asym ? 2 : 1, nset = d / r->ce;
    const __m512i idx[2] = {ck_index(cb, 0), ck_index(cb, 1)};
    _Alignas(64) float S[KVQ_MAX_DIM], Zc[KVQ_MAX_DIM];
    ck_weights w;
    for (int tg = 0; tg < r->n / g; tg++) {
        const uint16_t *par = r->params + (size_t)tg * nset * ppg;
        for (int c = 0; c < d; c += 16) { /* per channel s and z + m s, for all queries */
            __m512 sv, zc;
            if (r->ce == 1) {
                params16(par + (size_t)c * ppg, 16, asym, m, &sv, &zc);
            } else { /* one set for these 16 channels (ce a multiple of 32) */
                params16(par + (size_t)(c / r->ce) * ppg, 1, asym, m, &sv, &zc);
                sv = _mm512_broadcastss_ps(_mm512_castps512_ps128(sv));
                zc = _mm512_broadcastss_ps(_mm512_castps512_ps128(zc));
            }
            _mm512_store_ps(S + c, sv);
            _mm512_store_ps(Zc + c, zc);
        }
        const uint8_t *codes = r->codes + (size_t)tg * d * cb;
        for (int k0 = 0; k0 < nq; k0 += CK_Q) {
            const int kn = TL_MIN(CK_Q, nq - k0);
            float *sk = s + (size_t)k0 * ss + (size_t)tg * g;
            ck_weights_prep(S, Zc, asym, d, m, q + (size_t)k0 * qs, kn, qs, &w);
#define CK_CASE(B, G, KN) \
    case (B) << 12 | (G) << 4 | (KN): ck_group(codes, d, B, (G) * (B) / 8, KN, &w, idx, sk, ss); break;
#define CK_CASES(B, G) CK_CASE(B, G, 1) CK_CASE(B, G, 2) CK_CASE(B, G, 3) CK_CASE(B, G, 4)
            switch (bits << 12 | g << 4 | kn) {
                CK_CASES(2, 32) CK_CASES(2, 64) CK_CASES(2, 128) CK_CASES(4, 32) CK_CASES(4, 64) CK_CASES(8, 32)
            default: break;
            }
#undef CK_CASES
#undef CK_CASE
        }
    }
}

/* ---------------- the rest: AVX2 ---------------- */

static void a512_tok_accum_avx2(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as) {
    kvq_avx2_table.tok_accum(r, p, nq, ps, acc, as);
}
static void a512_ch_scores_avx2(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss) {
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

/* vpermb / vpermt2b (the value kernel's weight placement, the channel-layout key kernel's
 * transposition) need AVX512-VBMI (Zen4, Ice Lake); without it both stay on AVX2 */
#define A512_TABLE(accum, chs)                                                                       \
    {                                                                                                \
        .name = "avx512", .tok_scores = a512_tok_scores, .tok_accum = accum, .ch_scores = chs,       \
        .ch_accum = a512_ch_accum, .f16_scores = a512_f16_scores, .f16_accum = a512_f16_accum,       \
        .f32_scores = a512_f32_scores, .f32_accum = a512_f32_accum, .tok_qprep = a512_tok_qprep,     \
        .tok_scores_q = a512_tok_scores_q,                                                           \
    }
static const kvq_kernels kernels_avx512 = A512_TABLE(a512_tok_accum, a512_ch_scores);
static const kvq_kernels kernels_avx512_novbmi = A512_TABLE(a512_tok_accum_avx2, a512_ch_scores_avx2);

const kvq_kernels *kvq_kernels_avx512(void) {
    const tl_cpu_features f = tl_cpu_detect();
    if (!(f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni)) return NULL;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") ? &kernels_avx512 : &kernels_avx512_novbmi;
}
#endif
