/* qpack_x512.h: the helpers the AVX-512 x16 kernels (qpack_avx512.c) and the AMX ones
 * (qpack_amx.c, whose target adds the tiles) share. Include after <immintrin.h>, on x86 only. */
#ifndef TL_QPACK_X512_H
#define TL_QPACK_X512_H

#include <stddef.h>
#include <stdint.h>

#define X512_INL static inline __attribute__((target("avx512f,avx512bw,avx512vl,f16c"), always_inline))

/* prefetch distance in bytes ahead of the tile a kernel reads (measured: 6 -> 10 GB/s from DRAM on
 * one core; this VM's hardware prefetch alone streams at half speed) */
#define X16_PF 4096

/* 16 fp16 scales (one per row of a group) as floats */
X512_INL __m512 ld_h16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
X512_INL void prefetch_tile(const uint8_t *t, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)t + X16_PF + o, _MM_HINT_T0);
}
/* a group's 16 outputs, or its first n_valid (the last group of a matrix) */
X512_INL void store16(float *y, int64_t n_valid, __m512 v) {
    if (n_valid >= 16) _mm512_storeu_ps(y, v);
    else _mm512_mask_storeu_ps(y, (__mmask16)((1u << n_valid) - 1), v);
}

#endif
