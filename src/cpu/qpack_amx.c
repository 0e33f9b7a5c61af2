/* qpack_amx.c: the x16 GEMM kernels (qpack.h) on AMX tiles (Sapphire Rapids and later), for
 * calls over many activation rows (prompt pieces, wide batched steps); fewer rows go to the
 * AVX-512 kernel, which streams the weights at the memory's pace.
 *
 * (TLQ_AMX_MIN_ROWS, below: fewer rows stay on AVX-512.)
 *
 * The x16 tile's chunks are already AMX's B layout: a 64-byte chunk holds 4 consecutive
 * quants of each of the 16 output rows, i.e. one B-tile row (K = 4, N = 16). So a block's
 * chunks (unpacked from nibbles into a small buffer where needed) are a B tile of K = 32
 * (a K-quant's sub-block; q6_K's 16-value sub-blocks K = 16), the activation rows' codes of
 * that block an A tile (M <= 16 rows of K bytes, x_stride apart), and one TDPBSSD / TDPBSUD
 * gives every (activation row, output row) integer sum of the block at once. The sums are
 * exact, so equal to the VNNI kernels' (which add the same products in another order, and an
 * offset they take back); then each row's float steps are qpack.h's, in its order, so every
 * kernel still gives the scalar reference's bits (tests/cpu/test_quants.c: check_packed).
 *
 * The process must ask Linux for the tile state once (arch_prctl ARCH_REQ_XCOMP_PERM); each
 * thread loads its tile configuration per call and releases the tiles after it. */
#include "qpack.h"
#include "quants_internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__linux__) && (defined(__GNUC__) && __GNUC__ >= 11 || defined(__clang__))
#include <immintrin.h>
#include "qpack_x512.h"
#include <sys/syscall.h>
#include <unistd.h>

#define TGT "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,amx-tile,amx-int8"
#define AMX __attribute__((target(TGT)))
#define INL static inline __attribute__((target(TGT), always_inline))

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

bool tlq_amx_ready(void) {
    static atomic_int state; /* 0 unknown, 1 yes, 2 no */
    int s = atomic_load(&state);
    if (s) return s == 1;
    const char *env = getenv("TAILOR_NO_AMX");
    const tl_cpu_features f = tl_cpu_detect();
    bool ok = f.amx_int8 && !(env && env[0] && strcmp(env, "0") != 0) && tl_simd_level_get() == TL_SIMD_AVX512;
    if (ok) ok = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    atomic_store(&state, ok ? 1 : 2);
    return ok;
}

/* tiles: 0 A (M x K bytes), 1 B (K/4 x 64), 2 C (M x 64: 16 int32); 3 A, 4 B, 5 C a second set */
typedef struct {
    uint8_t palette, start_row, pad[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_cfg;

INL void config(int M, int K) {
    tile_cfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 6; t += 3) {
        c.colsb[t] = (uint16_t)K, c.rows[t] = (uint8_t)M;
        c.colsb[t + 1] = 64, c.rows[t + 1] = (uint8_t)(K / 4);
        c.colsb[t + 2] = 64, c.rows[t + 2] = (uint8_t)M;
    }
    _tile_loadconfig(&c);
}

/* Fewer rows go to the AVX-512 kernel. Measured (Qwen2.5-1.5B Q4_K_M, bench_batch, 2 threads,
 * this session's Sapphire Rapids VM): 2 / 4 / 8 rows a step 80 / 89 / 105 ms on tiles against
 * 59 / 69 / 107 with VNNI (the weights stream more slowly: the tile path's short bursts of work
 * leave the prefetches to stall), 16 rows 152 against 171, a 256-token prompt 155 against 127
 * tokens/s. */
#define TLQ_AMX_MIN_ROWS 16


/* The products of n blocks, each an A tile (the rows' codes at ap[k], xs apart) by a B tile
 * (K / 4 rows of 64 bytes at bp[k]) into C[k] (M rows of 16 int32), two tile sets in turn
 * (0-2, 3-5) so that one block's load and product overlap the other's store. The B rows
 * come from memory written well before (no store-to-tile-load forwarding in the chain), and
 * C is read after every product of the batch is stored. ss: signed B (q8_0), else unsigned. */
#define TILE_STEP(ta, tb, tc, k)                                                                       \
    do {                                                                                               \
        _tile_zero(tc);                                                                                \
        _tile_loadd(ta, ap[k], (long)xs);                                                              \
        _tile_loadd(tb, bp[k], 64);                                                                    \
        if (ss) _tile_dpbssd(tc, ta, tb);                                                              \
        else _tile_dpbsud(tc, ta, tb);                                                                 \
        _tile_stored(tc, C[k], 64);                                                                    \
    } while (0)

INL void tile_products(int n, const uint8_t *const *ap, size_t xs, const uint8_t *const *bp, bool ss, int32_t (*C)[16][16]) {
    for (int k = 0; k < n; k += 2) {
        TILE_STEP(0, 1, 2, k);
        if (k + 1 < n) TILE_STEP(3, 4, 5, k + 1);
    }
}

/* ------------------------------------------------------------------ 32-wide formats */

enum { NBLK = 8 }; /* 32-wide blocks per batch of products */

/* M activation rows (codes at xp + j xs) against group g: q8_0 (signed codes as stored), q4_0 /
 * q4_1 (nibbles unpacked); q4_0's -8 comes back through the block sum, as in the VNNI kernel.
 * The rows' float steps go block after block, as qpack.h orders them. */
INL void gemm_a(tl_type t, int M, const tlq_packed *p, int64_t g, const uint8_t *xp, size_t xs, float *Y, int64_t ldy, bool pf) {
    const int64_t nc = p->n_cols, n = p->n_in;
    const size_t tb = p->tile;
    const uint8_t *tile = p->data + (size_t)g * (size_t)nc * tb;
    _Alignas(64) int32_t C[NBLK][16][16];
    _Alignas(64) uint8_t B[NBLK][8][64];
    const uint8_t *ap[NBLK], *bp[NBLK];
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 fa[16], ma[16];
    for (int j = 0; j < M; j++) fa[j] = ma[j] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < nc; c0 += NBLK) {
        const int nb = (int)(nc - c0 < NBLK ? nc - c0 : NBLK);
        for (int k = 0; k < nb; k++) {
            const uint8_t *tk = tile + (size_t)(c0 + k) * tb;
            if (pf) prefetch_tile(tk, tb);
            ap[k] = xp + QK * (c0 + k);
            if (t == TL_TYPE_Q8_0) {
                bp[k] = tk + 32;
                continue;
            }
            const uint8_t *ch = tk + (t == TL_TYPE_Q4_0 ? 32 : 64);
            for (int s = 0; s < 4; s++) {
                const __m512i q = _mm512_loadu_si512(ch + 64 * s);
                _mm512_store_si512(B[k][s], _mm512_and_si512(q, m4));
                _mm512_store_si512(B[k][4 + s], _mm512_and_si512(_mm512_srli_epi16(q, 4), m4));
            }
            bp[k] = B[k][0];
        }
        tile_products(nb, ap, xs, bp, t == TL_TYPE_Q8_0, C);
        for (int k = 0; k < nb; k++) {
            const uint8_t *tk = tile + (size_t)(c0 + k) * tb;
            const int64_t c = c0 + k;
            const __m512 dw = ld_h16(tk);
            const __m512 mw = t == TL_TYPE_Q4_1 ? ld_h16(tk + 32) : _mm512_setzero_ps();
            for (int j = 0; j < M; j++) {
                const tlq_xp_view v = tlq_xp_row(xp, xs, j, n, nc);
                __m512i isum = _mm512_load_si512(C[k][j]);
                if (t == TL_TYPE_Q4_0) isum = _mm512_add_epi32(isum, _mm512_set1_epi32(-8 * v.aux[c]));
                fa[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, _mm512_set1_ps(v.d[c])), fa[j]);
                if (t == TL_TYPE_Q4_1) {
                    float sx;
                    memcpy(&sx, &v.aux[nc + c], 4);
                    ma[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), ma[j]);
                }
            }
        }
    }
    const int64_t valid = p->n_out - g * TLQ_PACK_ROWS;
    for (int j = 0; j < M; j++)
        store16(Y + (size_t)j * ldy + g * TLQ_PACK_ROWS, valid, t == TL_TYPE_Q4_1 ? _mm512_add_ps(fa[j], ma[j]) : fa[j]);
}

/* ------------------------------------------------------------------ q4_K */

/* a super-block's 8 sub-blocks (32 values) per batch: sub-block 2jj from the low nibbles of
 * chunks (jj, s), 2jj + 1 from the high ones */
INL void gemm_q4k(int M, const tlq_packed *p, int64_t g, const uint8_t *xp, size_t xs, float *Y, int64_t ldy, bool pf) {
    const int64_t nc = p->n_cols, n = p->n_in;
    const size_t tb = p->tile;
    const uint8_t *tile = p->data + (size_t)g * (size_t)nc * tb;
    _Alignas(64) int32_t C[8][16][16];
    _Alignas(64) uint8_t B[8][8][64];
    const uint8_t *ap[8], *bp[8];
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 fa[16], ma[16];
    for (int j = 0; j < M; j++) fa[j] = ma[j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < nc; c++, tile += tb) {
        if (pf) prefetch_tile(tile, tb);
        for (int jj = 0; jj < 4; jj++) {
            const uint8_t *ch = tile + 320 + 64 * 8 * jj;
            for (int s = 0; s < 8; s++) {
                const __m512i q = _mm512_loadu_si512(ch + 64 * s);
                _mm512_store_si512(B[2 * jj][s], _mm512_and_si512(q, m4));
                _mm512_store_si512(B[2 * jj + 1][s], _mm512_and_si512(_mm512_srli_epi16(q, 4), m4));
            }
        }
        for (int sb = 0; sb < 8; sb++) ap[sb] = xp + QKK * c + 32 * sb, bp[sb] = B[sb][0];
        tile_products(8, ap, xs, bp, false, C);
        for (int j = 0; j < M; j++) {
            const tlq_xp_view v = tlq_xp_row(xp, xs, j, n, nc);
            __m512i tot = _mm512_setzero_si512(), mins = _mm512_setzero_si512();
            for (int jj = 0; jj < 4; jj++) {
                const __m512i sl = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(tile + 64 + 16 * (2 * jj))));
                const __m512i sh = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(tile + 64 + 16 * (2 * jj + 1))));
                const __m512i ml = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(tile + 192 + 16 * (2 * jj))));
                const __m512i mh = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(tile + 192 + 16 * (2 * jj + 1))));
                tot = _mm512_add_epi32(tot, _mm512_add_epi32(_mm512_mullo_epi32(_mm512_load_si512(C[2 * jj][j]), sl),
                                                             _mm512_mullo_epi32(_mm512_load_si512(C[2 * jj + 1][j]), sh)));
                mins = _mm512_dpwssd_epi32(mins, _mm512_or_si512(ml, _mm512_slli_epi32(mh, 16)),
                                           _mm512_set1_epi32(v.aux[16 * c + 8 + jj]));
            }
            const __m512 vdx = _mm512_set1_ps(v.d[c]);
            fa[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), _mm512_mul_ps(ld_h16(tile), vdx), fa[j]);
            ma[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_mul_ps(ld_h16(tile + 32), vdx), ma[j]);
        }
    }
    const int64_t valid = p->n_out - g * TLQ_PACK_ROWS;
    for (int j = 0; j < M; j++) store16(Y + (size_t)j * ldy + g * TLQ_PACK_ROWS, valid, _mm512_sub_ps(fa[j], ma[j]));
}

/* ------------------------------------------------------------------ q6_K */

/* 16 sub-blocks of 16 values (K = 16) per batch: sub-block sb = 8h + 2q + e holds inputs
 * 128h + 32q + 16e .., the codes of part q in chunks s = 4e .. 4e + 3 of half h */
INL void gemm_q6k(int M, const tlq_packed *p, int64_t g, const uint8_t *xp, size_t xs, float *Y, int64_t ldy, bool pf) {
    const int64_t nc = p->n_cols, n = p->n_in;
    const size_t tb = p->tile;
    const uint8_t *tile = p->data + (size_t)g * (size_t)nc * tb;
    _Alignas(64) int32_t C[16][16][16];
    _Alignas(64) uint8_t B[2][4][8][64]; /* half h, part q, chunk s */
    const uint8_t *ap[16], *bp[16];
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512 fa[16];
    for (int j = 0; j < M; j++) fa[j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < nc; c++, tile += tb) {
        if (pf) prefetch_tile(tile, tb);
        for (int h = 0; h < 2; h++)
            for (int s = 0; s < 8; s++) {
                const uint8_t *ch = tile + 288 + 192 * (8 * h + s);
                const __m512i l0 = _mm512_loadu_si512(ch), l1 = _mm512_loadu_si512(ch + 64), hb = _mm512_loadu_si512(ch + 128);
                _mm512_store_si512(B[h][0][s], _mm512_or_si512(_mm512_and_si512(l0, m4), _mm512_and_si512(_mm512_slli_epi16(hb, 4), m30)));
                _mm512_store_si512(B[h][1][s], _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_and_si512(_mm512_slli_epi16(hb, 2), m30)));
                _mm512_store_si512(B[h][2][s], _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m4), _mm512_and_si512(hb, m30)));
                _mm512_store_si512(B[h][3][s], _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4),
                                                               _mm512_and_si512(_mm512_srli_epi16(hb, 2), m30)));
            }
        for (int sb = 0; sb < 16; sb++) {
            const int h = sb >> 3, q = (sb >> 1) & 3, e = sb & 1;
            ap[sb] = xp + QKK * c + 128 * h + 32 * q + 16 * e;
            bp[sb] = B[h][q][4 * e];
        }
        tile_products(16, ap, xs, bp, false, C);
        for (int j = 0; j < M; j++) {
            const int16_t *bs = (const int16_t *)(tlq_xp_row(xp, xs, j, n, nc).aux + 16 * c);
            __m512i tot = _mm512_setzero_si512();
            for (int sb = 0; sb < 16; sb++) {
                const __m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(tile + 32 + 16 * sb)));
                const __m512i corr = _mm512_set1_epi32(32 * (int32_t)bs[sb]);
                tot = _mm512_add_epi32(tot, _mm512_mullo_epi32(_mm512_sub_epi32(_mm512_load_si512(C[sb][j]), corr), sc));
            }
            fa[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), _mm512_mul_ps(ld_h16(tile), _mm512_set1_ps(tlq_xp_row(xp, xs, j, n, nc).d[c])),
                                    fa[j]);
        }
    }
    const int64_t valid = p->n_out - g * TLQ_PACK_ROWS;
    for (int j = 0; j < M; j++) store16(Y + (size_t)j * ldy + g * TLQ_PACK_ROWS, valid, fa[j]);
}

/* ------------------------------------------------------------------ entry */

AMX void tlq_gemm_amx(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x,
                      float *Y, int64_t ldy) {
    if (n_x < TLQ_AMX_MIN_ROWS) {
        tlq_gemm_avx512(p, g0, g1, xp, x_stride, n_x, Y, ldy);
        return;
    }
    const tl_type t = p->type;
    const int K = t == TL_TYPE_Q6_K ? 16 : 32;
    int cfg_m = 0;
    for (int64_t g = g0; g < g1; g++) {
        for (int64_t i = 0; i < n_x; i += 16) {
            const int M = (int)(n_x - i < 16 ? n_x - i : 16);
            if (M != cfg_m) config(M, K), cfg_m = M;
            const uint8_t *xr = xp + (size_t)i * x_stride;
            float *y = Y + i * ldy;
            switch (t) {
            case TL_TYPE_Q4_0: case TL_TYPE_Q4_1: case TL_TYPE_Q8_0: gemm_a(t, M, p, g, xr, x_stride, y, ldy, i == 0); break;
            case TL_TYPE_Q4_K: gemm_q4k(M, p, g, xr, x_stride, y, ldy, i == 0); break;
            case TL_TYPE_Q6_K: gemm_q6k(M, p, g, xr, x_stride, y, ldy, i == 0); break;
            default: break;
            }
        }
    }
    _tile_release();
}

#else
bool tlq_amx_ready(void) { return false; }
void tlq_gemm_amx(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x, float *Y,
                  int64_t ldy) {
    (void)p; (void)g0; (void)g1; (void)xp; (void)x_stride; (void)n_x; (void)Y; (void)ldy;
    abort();
}
#endif
