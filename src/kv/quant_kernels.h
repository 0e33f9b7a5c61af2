/* quant_kernels.h: packing and fused kernels of the quantized KV store (internal to src/kv).
 *
 * Packing unit: 32 consecutive values (of one token's channels in the token layout, of one
 * channel's tokens in the channel layout) take 4*bits bytes:
 *   8 bits: byte i = code i
 *   4 bits: byte j (0..15) = code j | code j+16 << 4
 *   2 bits: byte j (0..7)  = code j | code j+8 << 2 | code j+16 << 4 | code j+24 << 6
 *   1 bit:  byte j (0..3)  bit k = code 8j+k
 * so that any 8 consecutive codes come out of one 8-byte load, a shift and a mask (AVX2).
 *
 * Group parameters are IEEE halves: asymmetric (s, z) pairs, x ~ code*s + z; symmetric
 * s only, codes stored offset by 2^(b-1) so x ~ code*s + z with z = -2^(b-1)*s.
 *
 * Two layouts (see quant.c):
 *   TOK: per token a row of d codes (d/32 units), params per token (d/g groups, pstride
 *        halves per token; pstride 0 = one shared set, per-tensor).
 *   CH:  per group of g tokens, per channel c the g codes of that channel (g/32 units),
 *        params per (token group, channel group of ce channels): ce = 1 per-channel
 *        (KIVI keys), ce = g per-block. */
#ifndef TL_KV_QUANT_KERNELS_H
#define TL_KV_QUANT_KERNELS_H

#include "../base/common.h"

#define KVQ_MAX_DIM 256 /* largest head_dim the kernels accept */

typedef struct {
    const uint8_t *codes;
    const uint16_t *params;
    int n;       /* tokens in the run (CH: a multiple of g) */
    int d;       /* channels */
    int g;       /* group size: channels per group (TOK) or tokens per group (CH) */
    int ce;      /* CH: channels sharing one parameter set (1 or g) */
    int pstride; /* TOK: halves of params per token (0: one set for all tokens) */
    int bits;
    bool sym;
} kvq_run;

/* All kernels serve nq queries at once (the GQA group, times query rows):
 *   scores: s[i*ss + t]   = sum_c q[i*qs + c] * x(t, c)           for t < n
 *   accum:  acc[i*as + c] += sum_t p[i*ps + t] * x(t, c)           for c < d */
typedef struct {
    const char *name;
    void (*tok_scores)(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss);
    void (*tok_accum)(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as);
    void (*ch_scores)(const kvq_run *r, const float *q, int nq, int qs, float *s, int ss);
    void (*ch_accum)(const kvq_run *r, const float *p, int nq, int ps, float *acc, int as);
    /* dense rows: f16 (row stride d) and f32 (row stride rs floats) */
    void (*f16_scores)(const uint16_t *x, int n, int d, const float *q, int nq, int qs, float *s, int ss);
    void (*f16_accum)(const uint16_t *x, int n, int d, const float *p, int nq, int ps, float *acc, int as);
    void (*f32_scores)(const float *x, int rs, int n, int d, const float *q, int nq, int qs, float *s, int ss);
    void (*f32_accum)(const float *x, int rs, int n, int d, const float *p, int nq, int ps, float *acc, int as);
    /* Optional (NULL when absent): TOK key scores from queries prepared once per attention task
     * (int8 per 32-channel block, for integer dot products). tok_qprep fills qp (at least
     * KVQ_QPREP_BYTES(nq) bytes, 64-byte aligned) and returns false when (bits, d) has no such
     * path; tok_scores_q then computes what tok_scores does (q, qs are kept for fallbacks). */
    bool (*tok_qprep)(int bits, int d, const float *q, int nq, int qs, void *qp);
    void (*tok_scores_q)(const kvq_run *r, const void *qp, const float *q, int nq, int qs, float *s, int ss);
} kvq_kernels;

#define KVQ_QPREP_BYTES(nq) (512 + (size_t)(nq) * 1408)

const kvq_kernels *kvq_kernels_ref(void);
/* The table of the SIMD level tl_simd_level_get gives (cpu/quants.h): AVX-512, AVX2 or the
 * reference. */
const kvq_kernels *kvq_kernels_best(void);
/* The AVX2 table (the reference where the CPU lacks AVX2/FMA/F16C), and the AVX-512 VNNI table
 * (NULL where the CPU lacks AVX-512 F/BW/VL/VNNI): for tests and benchmarks. */
const kvq_kernels *kvq_kernels_avx2(void);
const kvq_kernels *kvq_kernels_avx512(void);
#if defined(__x86_64__) || defined(__i386__)
extern const kvq_kernels kvq_avx2_table; /* the AVX-512 table falls back to it (no CPU check) */
#endif

/* ---- quantization (scalar; runs once per token, not in the attention loop) ---- */
static inline int kvq_unit_bytes(int bits) { return 4 * bits; }
/* Parameters for values x[0], x[stride], ... (n of them); writes 1 (sym) or 2 halves. */
void kvq_params(const float *x, int n, int stride, int bits, bool sym, uint16_t *par);
/* Parameters from a known range (per-tensor). */
void kvq_params_range(float mn, float mx, int bits, bool sym, uint16_t *par);
/* The (s, z) floats a parameter set stands for. */
void kvq_decode_params(const uint16_t *par, int bits, bool sym, float *s, float *z);
/* Code of x under (s, z) (round to nearest, clamped). */
int kvq_encode(float x, float s, float z, int bits);
void kvq_pack32(const uint8_t codes[32], int bits, uint8_t *dst);

/* Normalized fast Walsh-Hadamard transform in place (n a power of two); its own inverse. */
void kvq_hadamard(float *x, int n);

/* Testing hook (quant.c): token t of KV head h as the store holds it, dequantized, in the
 * store's transformed space (keys rotated and smoothed when the policy says so). */
struct tl_kv_layer;
int kvq_debug_row(const struct tl_kv_layer *l, int h, int64_t t, bool is_v, float *out);

#endif
