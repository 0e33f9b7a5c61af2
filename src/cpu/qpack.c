/* qpack.c: the x16 weight form (qpack.h): packing, the activation layout, the scalar
 * reference kernels and the run-time choice. The SIMD kernels are in qpack_avx2.c and
 * qpack_avx512.c; all three give the same bits (see qpack.h).
 *
 * Tiles (offsets in bytes; chunk k = 64 bytes, int32 lane r = 4 quant bytes of row r):
 *   q4_0  288: d[16] fp16 @0, chunks s = 0..3 @32 + 64s: row bytes qs[4s, 4s+4): low nibbles
 *              are inputs 4s.., high nibbles inputs 16 + 4s..
 *   q4_1  320: d[16] @0, m[16] @32, chunks @64 + 64s as q4_0
 *   q8_0  544: d[16] @0, chunks s = 0..7 @32 + 64s: row bytes qs[4s, 4s+4) (inputs 4s..)
 *   q4_K 2368: d[16] @0, dmin[16] @32, sc[8][16] u8 @64, mn[8][16] u8 @192 (the 6-bit scales
 *              and mins of sub-block j, row r, unpacked), chunks (j = 0..3, s = 0..7)
 *              @320 + 64 (8j + s): row bytes qs[32j + 4s, +4): low nibbles are sub-block 2j
 *              inputs 4s.., high nibbles sub-block 2j + 1 inputs 4s..
 *   q6_K 3360: d[16] @0, sc[16][16] i8 @32 (sub-block s, row r), then for h = 0..1, s = 0..7
 *              three chunks @288 + 192 (8h + s): L0 = ql[64h + 4s, +4), L1 = ql[64h + 32 + 4s, +4),
 *              H = qh[32h + 4s, +4); inputs 128h + 32q + 4s.. for q = 0..3 are
 *              (L0 lo, H bits 0-1), (L1 lo, bits 2-3), (L0 hi, bits 4-5), (L1 hi, bits 6-7)
 * The last group's missing rows are zeros (their outputs are never stored).
 *
 * Activation row (tlq_xp_row_bytes), one layout per family, so that matrices of one family
 * and input size share the rows: int8 qs[n] @0 (the q8 values), then at the next 64-byte
 * boundary float dx[cols], then 4-byte aux:
 *   32-wide (q4_0, q4_1, q8_0; from q8_1 blocks, or q8_0 ones for q4_0 / q8_0):
 *       int32 sum[cols] (of the block's qs: the SIMD kernels make signed weights unsigned by
 *       an offset o, 8 or 128, and start the block's sum at -o * sum), float sx[cols] (q8_1's
 *       s, fp16 of d * sum; 0 from q8_0 blocks)
 *   K (q4_K, q6_K; from q8_K blocks): int32 aux[16 * cols]: j < 8: int16 pair (bsums[2j],
 *       bsums[2j + 1]); 8 + j, j < 4: int16 pair (sum of sub-block 2j, of 2j + 1) */
#include "qpack.h"
#include "quants_internal.h"
#include "../base/common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define R16 TLQ_PACK_ROWS

bool tlq_pack_supported(tl_type t, int64_t n_in) {
    switch (t) {
    case TL_TYPE_Q4_0: case TL_TYPE_Q4_1: case TL_TYPE_Q8_0: return n_in > 0 && n_in % QK == 0;
    case TL_TYPE_Q4_K: case TL_TYPE_Q6_K: return n_in > 0 && n_in % QKK == 0;
    default: return false;
    }
}

size_t tlq_pack_tile_bytes(tl_type t) {
    switch (t) {
    case TL_TYPE_Q4_0: return 288;
    case TL_TYPE_Q4_1: return 320;
    case TL_TYPE_Q8_0: return 544;
    case TL_TYPE_Q4_K: return 2368;
    case TL_TYPE_Q6_K: return 3360;
    default: return 0;
    }
}

static int64_t block_of(tl_type t) { return t == TL_TYPE_Q4_K || t == TL_TYPE_Q6_K ? QKK : QK; }

bool tlq_pack_applies(tl_type t, int64_t n_in) { return tlq_pack_supported(t, n_in) && tlq_gemm_kernel(t) != NULL; }

size_t tlq_pack_bytes(tl_type t, int64_t n_in, int64_t n_out) {
    if (!tlq_pack_supported(t, n_in) || n_out < 1) return 0;
    const size_t groups = (size_t)((n_out + R16 - 1) / R16), cols = (size_t)(n_in / block_of(t));
    return groups * cols * tlq_pack_tile_bytes(t);
}

static size_t page_size(void) {
    const long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (size_t)p : 4096;
}

tlq_packed *tlq_pack_alloc(tl_type t, int64_t n_in, int64_t n_out) {
    if (!tlq_pack_supported(t, n_in) || n_out < 1) return NULL;
    tlq_packed *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->type = t;
    p->n_in = n_in;
    p->n_out = n_out;
    p->n_groups = (n_out + R16 - 1) / R16;
    p->n_cols = n_in / block_of(t);
    p->tile = tlq_pack_tile_bytes(t);
    p->bytes = tlq_pack_bytes(t, n_in, n_out);
    /* large matrices in transparent huge pages where the kernel allows (fewer TLB misses
     * while the decode streams them): a whole number of huge pages is mapped so that the start
     * is aligned to one (Linux aligns anonymous mappings of such lengths), then the tail past
     * the data's last page is given back, so the copy holds its bytes and no more (up to 2 MiB
     * a matrix otherwise, resident once its last huge page is touched; the planner counts
     * tlq_pack_bytes) */
    const size_t huge = (size_t)2 << 20, page = page_size();
    if (p->bytes >= huge) {
        const size_t hlen = (p->bytes + huge - 1) & ~(huge - 1), len = (p->bytes + page - 1) & ~(page - 1);
        void *m = mmap(NULL, hlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m != MAP_FAILED) {
            if (hlen > len) munmap((uint8_t *)m + len, hlen - len);
#ifdef MADV_HUGEPAGE
            madvise(m, len, MADV_HUGEPAGE);
#endif
            p->data = m;
            p->huge = true;
        }
    }
    if (!p->data) p->data = tl_amalloc(p->bytes);
    if (!p->data) {
        free(p);
        return NULL;
    }
    return p;
}

void tlq_pack_free(tlq_packed *p) {
    if (!p) return;
    if (p->huge) {
        const size_t page = page_size();
        munmap(p->data, (p->bytes + page - 1) & ~(page - 1));
    } else {
        tl_afree(p->data);
    }
    free(p);
}

static inline uint8_t *tile_at(const tlq_packed *p, int64_t g, int64_t c) {
    return p->data + ((size_t)g * (size_t)p->n_cols + (size_t)c) * p->tile;
}

/* the 4 quant bytes [4k, 4k+4) of row r into chunk k of a tile region */
static inline void put4(uint8_t *chunks, int k, int r, const uint8_t *src) { memcpy(chunks + 64 * k + 4 * r, src, 4); }
static inline void get4(const uint8_t *chunks, int k, int r, uint8_t *dst) { memcpy(dst, chunks + 64 * k + 4 * r, 4); }

void tlq_pack_groups(tlq_packed *p, const void *W, int64_t g0, int64_t g1) {
    const size_t rs = tl_row_size(p->type, p->n_in);
    static const uint8_t zero[sizeof(blk_q6_K)];
    for (int64_t g = g0; g < g1; g++) {
        for (int64_t c = 0; c < p->n_cols; c++) {
            uint8_t *t = tile_at(p, g, c);
            memset(t, 0, p->tile);
            for (int r = 0; r < R16; r++) {
                const int64_t row = g * R16 + r;
                const uint8_t *b = row < p->n_out ? (const uint8_t *)W + (size_t)row * rs : NULL;
                switch (p->type) {
                case TL_TYPE_Q4_0: {
                    const blk_q4_0 *x = b ? (const blk_q4_0 *)b + c : (const blk_q4_0 *)zero;
                    memcpy(t + 2 * r, &x->d, 2);
                    for (int s = 0; s < 4; s++) put4(t + 32, s, r, x->qs + 4 * s);
                    break;
                }
                case TL_TYPE_Q4_1: {
                    const blk_q4_1 *x = b ? (const blk_q4_1 *)b + c : (const blk_q4_1 *)zero;
                    memcpy(t + 2 * r, &x->d, 2);
                    memcpy(t + 32 + 2 * r, &x->m, 2);
                    for (int s = 0; s < 4; s++) put4(t + 64, s, r, x->qs + 4 * s);
                    break;
                }
                case TL_TYPE_Q8_0: {
                    const blk_q8_0 *x = b ? (const blk_q8_0 *)b + c : (const blk_q8_0 *)zero;
                    memcpy(t + 2 * r, &x->d, 2);
                    for (int s = 0; s < 8; s++) put4(t + 32, s, r, (const uint8_t *)x->qs + 4 * s);
                    break;
                }
                case TL_TYPE_Q4_K: {
                    const blk_q4_K *x = b ? (const blk_q4_K *)b + c : (const blk_q4_K *)zero;
                    memcpy(t + 2 * r, &x->d, 2);
                    memcpy(t + 32 + 2 * r, &x->dmin, 2);
                    for (int j = 0; j < 8; j++) tlq_scale_min_k4(j, x->scales, t + 64 + 16 * j + r, t + 192 + 16 * j + r);
                    for (int j = 0; j < 4; j++)
                        for (int s = 0; s < 8; s++) put4(t + 320, 8 * j + s, r, x->qs + 32 * j + 4 * s);
                    break;
                }
                case TL_TYPE_Q6_K: {
                    const blk_q6_K *x = b ? (const blk_q6_K *)b + c : (const blk_q6_K *)zero;
                    memcpy(t + 2 * r, &x->d, 2);
                    for (int s = 0; s < 16; s++) t[32 + 16 * s + r] = (uint8_t)x->scales[s];
                    for (int h = 0; h < 2; h++)
                        for (int s = 0; s < 8; s++) {
                            uint8_t *ch = t + 288 + 192 * (8 * h + s);
                            put4(ch, 0, r, x->ql + 64 * h + 4 * s);
                            put4(ch, 1, r, x->ql + 64 * h + 32 + 4 * s);
                            put4(ch, 2, r, x->qh + 32 * h + 4 * s);
                        }
                    break;
                }
                default: break;
                }
            }
        }
    }
}

/* q4_K's 6-bit scales and mins back into the 12-byte form (inverse of tlq_scale_min_k4) */
static void k4_scales_pack(const uint8_t sc[8], const uint8_t mn[8], uint8_t q[12]) {
    memset(q, 0, 12);
    for (int j = 0; j < 4; j++) {
        q[j] = sc[j] & 63;
        q[j + 4] = mn[j] & 63;
    }
    for (int j = 4; j < 8; j++) {
        q[j + 4] = (uint8_t)((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
        q[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
        q[j] |= (uint8_t)((mn[j] >> 4) << 6);
    }
}

void tlq_pack_get_row(const tlq_packed *p, int64_t row, void *dst) {
    const int64_t g = row / R16;
    const int r = (int)(row % R16);
    for (int64_t c = 0; c < p->n_cols; c++) {
        const uint8_t *t = tile_at(p, g, c);
        switch (p->type) {
        case TL_TYPE_Q4_0: {
            blk_q4_0 *x = (blk_q4_0 *)dst + c;
            memcpy(&x->d, t + 2 * r, 2);
            for (int s = 0; s < 4; s++) get4(t + 32, s, r, x->qs + 4 * s);
            break;
        }
        case TL_TYPE_Q4_1: {
            blk_q4_1 *x = (blk_q4_1 *)dst + c;
            memcpy(&x->d, t + 2 * r, 2);
            memcpy(&x->m, t + 32 + 2 * r, 2);
            for (int s = 0; s < 4; s++) get4(t + 64, s, r, x->qs + 4 * s);
            break;
        }
        case TL_TYPE_Q8_0: {
            blk_q8_0 *x = (blk_q8_0 *)dst + c;
            memcpy(&x->d, t + 2 * r, 2);
            for (int s = 0; s < 8; s++) get4(t + 32, s, r, (uint8_t *)x->qs + 4 * s);
            break;
        }
        case TL_TYPE_Q4_K: {
            blk_q4_K *x = (blk_q4_K *)dst + c;
            memcpy(&x->d, t + 2 * r, 2);
            memcpy(&x->dmin, t + 32 + 2 * r, 2);
            uint8_t sc[8], mn[8];
            for (int j = 0; j < 8; j++) sc[j] = t[64 + 16 * j + r], mn[j] = t[192 + 16 * j + r];
            k4_scales_pack(sc, mn, x->scales);
            for (int j = 0; j < 4; j++)
                for (int s = 0; s < 8; s++) get4(t + 320, 8 * j + s, r, x->qs + 32 * j + 4 * s);
            break;
        }
        case TL_TYPE_Q6_K: {
            blk_q6_K *x = (blk_q6_K *)dst + c;
            memcpy(&x->d, t + 2 * r, 2);
            for (int s = 0; s < 16; s++) x->scales[s] = (int8_t)t[32 + 16 * s + r];
            for (int h = 0; h < 2; h++)
                for (int s = 0; s < 8; s++) {
                    const uint8_t *ch = t + 288 + 192 * (8 * h + s);
                    get4(ch, 0, r, x->ql + 64 * h + 4 * s);
                    get4(ch, 1, r, x->ql + 64 * h + 32 + 4 * s);
                    get4(ch, 2, r, x->qh + 32 * h + 4 * s);
                }
            break;
        }
        default: break;
        }
    }
}

/* ------------------------------------------------------------------ activations */

static size_t a64(size_t n) { return (n + 63) & ~(size_t)63; }

int tlq_xp_family(tl_type t) {
    switch (t) {
    case TL_TYPE_Q4_0: case TL_TYPE_Q4_1: case TL_TYPE_Q8_0: return 1;
    case TL_TYPE_Q4_K: case TL_TYPE_Q6_K: return 2;
    default: return 0;
    }
}

size_t tlq_xp_row_bytes(tl_type t, int64_t n) {
    if (!tlq_pack_supported(t, n)) return 0;
    const size_t nc = (size_t)(n / block_of(t));
    return tlq_xp_scales_at(n) + a64(nc * 4 * (tlq_xp_family(t) == 2 ? 17 : 3));
}

void tlq_xp_from_q8(tl_type t, const void *xq, void *vxp, int64_t n) {
    uint8_t *xp = vxp;
    const int64_t nc = n / block_of(t);
    float *dx = (float *)(xp + tlq_xp_scales_at(n));
    int32_t *aux = (int32_t *)(dx + nc);
    const tl_type vt = tl_type_info(t)->vec_dot_type;
    for (int64_t c = 0; c < nc; c++) {
        if (tlq_xp_family(t) == 1) {
            const int8_t *qs;
            uint16_t d, s = 0;
            if (vt == TL_TYPE_Q8_1) {
                const blk_q8_1 *b = (const blk_q8_1 *)xq + c;
                qs = b->qs, d = b->d, s = b->s;
            } else {
                const blk_q8_0 *b = (const blk_q8_0 *)xq + c;
                qs = b->qs, d = b->d;
            }
            memcpy(xp + QK * c, qs, QK);
            int sum = 0;
            for (int j = 0; j < QK; j++) sum += qs[j];
            dx[c] = tl_fp16_to_fp32(d);
            aux[c] = sum;
            const float sx = tl_fp16_to_fp32(s);
            memcpy(&aux[nc + c], &sx, 4);
        } else {
            const blk_q8_K *b = (const blk_q8_K *)xq + c;
            memcpy(xp + QKK * c, b->qs, QKK);
            dx[c] = b->d;
            int16_t pr[32] = {0};
            memcpy(pr, b->bsums, 32);
            for (int j = 0; j < 8; j++) pr[16 + j] = (int16_t)(b->bsums[2 * j] + b->bsums[2 * j + 1]);
            memcpy(aux + 16 * c, pr, 64);
        }
    }
}

/* ------------------------------------------------------------------ scalar reference */

static inline int32_t rd32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* the exact integer sums of the tile against activation row xp for the 16 rows (see the
 * layouts above), and the float steps of qpack.h */
void tlq_gemm_ref(const tlq_packed *p, int64_t g0, int64_t g1, const uint8_t *xp, size_t x_stride, int64_t n_x,
                  float *Y, int64_t ldy) {
    const tl_type t = p->type;
    const int64_t nc = p->n_cols, n = p->n_in;
    for (int64_t i = 0; i < n_x; i++) {
        const uint8_t *xr = xp + (size_t)i * x_stride;
        const int8_t *xq = (const int8_t *)xr;
        const float *dx = (const float *)(xr + tlq_xp_scales_at(n));
        const uint8_t *aux = (const uint8_t *)(dx + nc);
        for (int64_t g = g0; g < g1; g++) {
            for (int r = 0; r < R16; r++) {
                float f = 0.0f, m = 0.0f;
                for (int64_t c = 0; c < nc; c++) {
                    const uint8_t *tl = tile_at(p, g, c);
                    uint16_t h;
                    memcpy(&h, tl + 2 * r, 2);
                    const float dw = tl_fp16_to_fp32(h);
                    if (t == TL_TYPE_Q4_0 || t == TL_TYPE_Q4_1) {
                        const uint8_t *ch = tl + (t == TL_TYPE_Q4_0 ? 32 : 64);
                        const int8_t *xb = xq + QK * c;
                        int32_t isum = t == TL_TYPE_Q4_0 ? -8 * rd32(aux + 4 * c) : 0;
                        for (int s = 0; s < 4; s++)
                            for (int k = 0; k < 4; k++) {
                                const uint8_t q = ch[64 * s + 4 * r + k];
                                isum += (q & 0xF) * xb[4 * s + k] + (q >> 4) * xb[16 + 4 * s + k];
                            }
                        const float sc = dw * dx[c];
                        f = fmaf((float)isum, sc, f);
                        if (t == TL_TYPE_Q4_1) {
                            memcpy(&h, tl + 32 + 2 * r, 2);
                            float sx;
                            memcpy(&sx, aux + 4 * (nc + c), 4);
                            m = fmaf(tl_fp16_to_fp32(h), sx, m);
                        }
                    } else if (t == TL_TYPE_Q8_0) {
                        const int8_t *ch = (const int8_t *)tl + 32;
                        const int8_t *xb = xq + QK * c;
                        int32_t isum = 0;
                        for (int s = 0; s < 8; s++)
                            for (int k = 0; k < 4; k++) isum += ch[64 * s + 4 * r + k] * xb[4 * s + k];
                        const float sc = dw * dx[c];
                        f = fmaf((float)isum, sc, f);
                    } else if (t == TL_TYPE_Q4_K) {
                        const uint8_t *ch = tl + 320;
                        const int8_t *xb = xq + QKK * c;
                        const int16_t *bs = (const int16_t *)(aux + 64 * c + 32);
                        int32_t isum = 0, mins = 0;
                        for (int j = 0; j < 4; j++) {
                            int32_t lo = 0, hi = 0;
                            for (int s = 0; s < 8; s++)
                                for (int k = 0; k < 4; k++) {
                                    const uint8_t q = ch[64 * (8 * j + s) + 4 * r + k];
                                    lo += (q & 0xF) * xb[64 * j + 4 * s + k];
                                    hi += (q >> 4) * xb[64 * j + 32 + 4 * s + k];
                                }
                            isum += tl[64 + 16 * (2 * j) + r] * lo + tl[64 + 16 * (2 * j + 1) + r] * hi;
                        }
                        for (int j = 0; j < 8; j++) mins += tl[192 + 16 * j + r] * bs[j];
                        memcpy(&h, tl + 32 + 2 * r, 2);
                        const float dmin = tl_fp16_to_fp32(h);
                        const float sc = dw * dx[c], sm = dmin * dx[c];
                        f = fmaf((float)isum, sc, f);
                        m = fmaf((float)mins, sm, m);
                    } else { /* q6_K */
                        const int8_t *xb = xq + QKK * c;
                        const int16_t *bs = (const int16_t *)(aux + 64 * c);
                        int32_t sub[16] = {0};
                        for (int hh = 0; hh < 2; hh++)
                            for (int s = 0; s < 8; s++) {
                                const uint8_t *ch = tl + 288 + 192 * (8 * hh + s);
                                for (int k = 0; k < 4; k++) {
                                    const uint8_t l0 = ch[4 * r + k], l1 = ch[64 + 4 * r + k], hb = ch[128 + 4 * r + k];
                                    const int v[4] = {(l0 & 0xF) | ((hb & 3) << 4), (l1 & 0xF) | (((hb >> 2) & 3) << 4),
                                                      (l0 >> 4) | (((hb >> 4) & 3) << 4), (l1 >> 4) | (((hb >> 6) & 3) << 4)};
                                    for (int q = 0; q < 4; q++) {
                                        const int idx = 128 * hh + 32 * q + 4 * s + k;
                                        sub[idx / 16] += v[q] * xb[idx];
                                    }
                                }
                            }
                        int32_t isum = 0;
                        for (int s = 0; s < 16; s++) isum += (int8_t)tl[32 + 16 * s + r] * (sub[s] - 32 * bs[s]);
                        const float sc = dw * dx[c];
                        f = fmaf((float)isum, sc, f);
                    }
                }
                const int64_t o = g * R16 + r;
                if (o < p->n_out)
                    Y[i * ldy + o] = t == TL_TYPE_Q4_1 ? f + m : t == TL_TYPE_Q4_K ? f - m : f;
            }
        }
    }
}

tlq_gemm_fn tlq_gemm_kernel(tl_type t) {
    if (!tlq_pack_supported(t, t == TL_TYPE_Q4_K || t == TL_TYPE_Q6_K ? QKK : QK)) return NULL;
    switch (tl_simd_level_get()) {
    case TL_SIMD_AVX512: return tlq_amx_ready() ? tlq_gemm_amx : tlq_gemm_avx512;
    case TL_SIMD_AVX2: return tlq_gemm_avx2;
    default: return NULL;
    }
}
