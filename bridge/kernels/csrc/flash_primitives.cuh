// Warp-level building blocks for the mma.sync flash kernels (sm_80 and newer):
// cp.async tile loads, the XOR-swizzled shared-memory layout, ldmatrix and the m16n8k16 tensor-core MMA.
//
// Fragment layouts of mma.m16n8k16 (lane = 4 * g + t, g in 0..7, t in 0..3):
//   A 16x16 (row major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 8+2t..), a3 = (g+8, 8+2t..)
//   B 16x8  (k x n)    : b0 = (k 2t..2t+1, n g), b1 = (k 8+2t.., n g)
//   C 16x8  (fp32)     : c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace bridge_flash {

// ---- element type traits -------------------------------------------------------------------------
template <typename T> struct ElemTraits;
template <> struct ElemTraits<__nv_bfloat16> {
    // Packs two fp32 values (round to nearest) into the 32-bit register layout the MMA expects.
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};
template <> struct ElemTraits<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};

// D[16x8] += A[16x16] * B[16x8], fp32 accumulate.
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16x8x16<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                           uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16x8x16<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- ldmatrix ------------------------------------------------------------------------------------
// Lanes 8i..8i+7 give the row addresses of matrix i; register i receives matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t smem_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t smem_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr));
}

// ---- cp.async ------------------------------------------------------------------------------------
// Copies 16 bytes global -> shared, bypassing L1. With pred false nothing is read and the 16 bytes are
// zero-filled: out-of-range rows become zeros, so garbage (possibly NaN) never meets a zero probability.
__device__ __forceinline__ void cp_async_16(uint32_t smem_addr, const void* gmem, bool pred) {
    const int src_bytes = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- swizzled tile layout ------------------------------------------------------------------------
// A [rows x D] tile of 16-bit elements, stored as rows of D/8 16-byte chunks; chunk c of row r sits at
// position c ^ (r & 7). Eight consecutive rows of the same logical chunk (one ldmatrix 8x8) then fall in
// eight different bank groups: no bank conflicts for ldmatrix, .trans included, nor for the cp.async fill.
template <int D>
__device__ __forceinline__ int swizzled_offset(int row, int chunk) {  // in elements
    return row * D + ((chunk ^ (row & 7)) << 3);
}

// Fills a [ROWS x D] swizzled tile from global rows base + r * row_stride, zero-filling rows >= valid_rows.
// Each thread copies one fixed chunk column of rows row0, row0 + kRowsPerPass, ...: since kRowsPerPass is a
// multiple of 8 the swizzle is the same for all of them, so the shared address is one base plus constants
// and the global address one pointer bumped by a fixed stride (few live registers in the main loop).
template <int ROWS, int D, int THREADS, typename T>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, int64_t row_stride, int valid_rows,
                                                int tid) {
    constexpr int kChunksPerRow = D / 8;
    constexpr int kRowsPerPass = THREADS / kChunksPerRow;
    static_assert(THREADS % kChunksPerRow == 0 && kRowsPerPass % 8 == 0, "rows per pass must be a multiple of 8");
    static_assert(ROWS % kRowsPerPass == 0, "tile rows must divide evenly over the passes");
    const int row0 = tid / kChunksPerRow;
    const int chunk = tid % kChunksPerRow;
    const uint32_t dst = smem_u32(smem + swizzled_offset<D>(row0, chunk));
    const T* src = gmem + row0 * row_stride + chunk * 8;
#pragma unroll
    for (int i = 0; i < ROWS / kRowsPerPass; ++i) {
        const bool in_range = row0 + i * kRowsPerPass < valid_rows;
        cp_async_16(dst + i * kRowsPerPass * D * static_cast<int>(sizeof(T)), in_range ? src : gmem, in_range);
        src += kRowsPerPass * row_stride;
    }
}

// Quad reductions: the four lanes 4g..4g+3 hold the same accumulator rows.
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace bridge_flash
