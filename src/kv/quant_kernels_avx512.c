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
 * m_c = z + 2^(b-1) s (0 for symmetric codes); tested. */
#include "quant_kernels.h"

#include <math.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "../quants.h"

#define K512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define K512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"), always_inline)) static inline

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

/* ---------------- the rest: AVX2 ----------------
 * (Values stay on the AVX2 float kernels: an int8-weight vpdpbusd version was correct but its
 * per-call weight preparation, p*s quantized per token and unit, cost more than it saved.) */

static void a512_tok_accum(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as) {
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

static const kvq_kernels kernels_avx512 = {
    .name = "avx512",
    .tok_scores = a512_tok_scores,
    .tok_accum = a512_tok_accum,
    .ch_scores = a512_ch_scores,
    .ch_accum = a512_ch_accum,
    .f16_scores = a512_f16_scores,
    .f16_accum = a512_f16_accum,
    .f32_scores = a512_f32_scores,
    .f32_accum = a512_f32_accum,
    .tok_qprep = a512_tok_qprep,
    .tok_scores_q = a512_tok_scores_q,
};

const kvq_kernels *kvq_kernels_avx512(void) {
    const tl_cpu_features f = tl_cpu_detect();
    return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni ? &kernels_avx512 : NULL;
}
#endif
