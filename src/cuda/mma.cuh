/* mma.cuh: the warp-level tensor-core and async-copy primitives the attention kernels share
 * (prefill_tc.cu, decode_mma.cu), as thin PTX wrappers (sm_80+; built for sm_90). */
#ifndef TL_CUDA_MMA_CUH
#define TL_CUDA_MMA_CUH

#include <cuda_fp16.h>
#include <stdint.h>

/* cp.async of 16 bytes global -> shared (L2 only: streamed data) */
__device__ __forceinline__ void cp16(void *sdst, const void *gsrc) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gsrc) : "memory");
}
/* the same, reading only the first n (0..16) bytes and zero-filling the rest */
__device__ __forceinline__ void cp16z(void *sdst, const void *gsrc, int n) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gsrc), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/* wait until at most N of this thread's committed groups are still in flight */
template <int N>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* ldmatrix .x4: lanes 8j..8j+7 give the row addresses of matrix j (8 rows of 16 bytes); register
 * j of lane l = matrix j [l/4][2(l%4), 2(l%4)+1]; with .trans, [2(l%4)][l/4] and [2(l%4)+1][l/4]. */
__device__ __forceinline__ void ldsm4(uint32_t r[4], const void *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}
__device__ __forceinline__ void ldsm4t(uint32_t r[4], const void *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}

/* d += a * b (16x8x16, f16 in, f32 accumulate) */
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* The 8x8 b16 matrix the warp holds (lane 4r + c: row r, columns 2c, 2c+1), transposed. */
__device__ __forceinline__ uint32_t movtrans(uint32_t x) {
    uint32_t y;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}

__device__ __forceinline__ float ex2(float x) { /* 2^x; -inf -> +0 */
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi); /* .x (low 16 bits) = lo */
    return *(const uint32_t *)&h;
}

#endif
