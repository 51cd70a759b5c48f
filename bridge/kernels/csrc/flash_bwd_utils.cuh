// Backward-only device helpers on top of the shared mma / ldmatrix / cp.async primitives
// (flash_primitives.cuh): unpacking, element-granular swizzled offsets and accumulator addressing.
#pragma once
#include <cstdint>

#include "flash_primitives.cuh"
#include "flash_seq.cuh"

namespace bridge_flash {
namespace bwd {

/// Unpacks one 32-bit register of two 16-bit elements into fp32 (x = low half).
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t v);

template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t v) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&v));
}

template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t v) {
    return __half22float2(*reinterpret_cast<__half2*>(&v));
}

/// Copies 4 bytes global -> shared (through L1; cp.async.cg takes only 16-byte copies). With pred false
/// nothing is read and the 4 bytes are zero-filled.
__device__ __forceinline__ void cp_async_4(uint32_t smem_addr, const void* gmem, bool pred) {
    const int src_bytes = pred ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr), "l"(gmem), "r"(src_bytes));
}

/// Element offset of (row, col) in a swizzled [rows][kCols] tile of 16-bit elements; col may point inside a
/// 16-byte chunk, as the accumulator-to-shared stores of dS do. Rows of 8+ chunks use the shared layout
/// (swizzled_offset: chunk ^ (row & 7)); 4-chunk rows (64 bytes, two rows per 128-byte bank line) xor the
/// chunk with (row / 2) & 3, so 8 consecutive rows of one logical chunk still hit 8 different bank groups.
template <int kCols>
__device__ __forceinline__ int swz(int row, int col) {
    static_assert(kCols == 32 || kCols % 64 == 0, "swizzled tiles have 4 or a multiple of 8 chunks per row");
    if constexpr (kCols == 32) {
        return row * kCols + ((((col >> 3) ^ ((row >> 1) & 3))) << 3) + (col & 7);
    } else {
        return swizzled_offset<kCols>(row, col >> 3) + (col & 7);
    }
}

/// Element offset of row 0 of sequence `bi`: varlen tensors ignore the batch stride and start at the
/// sequence's first packed row.
__device__ __forceinline__ int64_t seq_offset(bool varlen, int bi, int start, int64_t batch_stride,
                                              int64_t row_stride) {
    return varlen ? static_cast<int64_t>(start) * row_stride : static_cast<int64_t>(bi) * batch_stride;
}

/// Row of the fp32 dQ accumulator ([rows, h, D]) that holds row r of sequence bi.
__device__ __forceinline__ int64_t accum_row(bool varlen, int bi, int start, int seqlen_q, int r) {
    return varlen ? static_cast<int64_t>(start) + r : static_cast<int64_t>(bi) * seqlen_q + r;
}

}  // namespace bwd
}  // namespace bridge_flash
