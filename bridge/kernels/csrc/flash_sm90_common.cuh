// Hopper (sm_90a) building blocks shared by the wgmma forward and backward kernels:
// mbarriers, TMA tile loads, wgmma matrix descriptors and fences, register reallocation, and the host-side
// tensor-map construction.
//
// Shared-memory tile layout ("SW128 tile"): a [rows x D] tile of 16-bit elements is stored as D/64 column
// blocks of [rows x 64]; each block row is 128 bytes and 16-byte chunk c of row r sits at chunk c ^ (r & 7).
// This is exactly what a TMA load with CU_TENSOR_MAP_SWIZZLE_128B and a {64, rows} box writes, and exactly
// the canonical 128-byte-swizzle layout wgmma reads, both K-major (rows = M or N, 64 K-elements per row)
// and MN-major (rows = K, 64 M/N-elements per row). Blocks must start on 1024-byte boundaries.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>
#include <cstdint>

#include "flash_sm90_wgmma.cuh"

namespace bridge_flash {
namespace sm90 {

// ---- shared-memory addresses ---------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Byte offset of element (row, col) inside an SW128 tile with `rows` rows (col in [0, D)).
__device__ __forceinline__ uint32_t sw128_offset(int rows, int row, int col) {
    const int blk = col >> 6, c = col & 63;
    return static_cast<uint32_t>(blk * rows * 128 + row * 128 + ((((c >> 3) ^ (row & 7))) << 4) + (c & 7) * 2);
}

// ---- mbarrier --------------------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void fence_mbar_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Blocks until the phase with parity `phase` of the barrier has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t phase) {
    const uint32_t addr = smem_addr(bar);
    uint32_t done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(addr), "r"(phase)
            : "memory");
    } while (!done);
}

// ---- TMA -------------------------------------------------------------------------------------------
// Loads the box at coordinates (c0 = head-dim column, c1 = row, c2 = head, c3 = batch) of a 4-D tensor map
// into shared memory; completion is counted in bytes on `bar`. Out-of-range elements are zero-filled.
__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1, int c2,
                                            int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, "
        "%6}], [%2];\n" ::"r"(smem_addr(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
        : "memory");
}
__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---- wgmma -----------------------------------------------------------------------------------------
// Matrix descriptor of an SW128 operand starting at `addr` (1024-byte aligned atom, plus K offsets inside
// the 128-byte row for K-major operands). lbo: byte distance between 64-element column blocks (MN-major
// operands wider than 64); sbo: byte distance between 8-row groups (1024 for dense SW128 tiles).
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    uint64_t d = static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
    d |= static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16;
    d |= static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32;
    d |= static_cast<uint64_t>(1) << 62;  // 128-byte swizzle
    return d;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// acc[64 x N] = A[64 x D] * B[N x D]^T with both operands SW128 tiles in shared memory, K-major (the head
// dim is the reduction): a_addr / b_addr point at the first row used; a_rows / b_rows are the row counts of
// the tiles they sit in (the distance between their 64-column blocks is rows * 128 bytes). Issues D/16
// wgmmas; the caller fences, commits and waits.
template <typename T, int N, int D>
__device__ __forceinline__ void gemm_ss_k_major(float (&acc)[N / 2], uint32_t a_addr, int a_rows, uint32_t b_addr,
                                                int b_rows);

// Keeps the compiler from moving accumulator reads/writes across wgmma issue/wait points.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
// Ordinary shared-memory stores that the tensor cores (async proxy) read next.
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

template <typename T, int N, int D>
__device__ __forceinline__ void gemm_ss_k_major(float (&acc)[N / 2], uint32_t a_addr, int a_rows, uint32_t b_addr,
                                                int b_rows) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const uint64_t da = make_desc(a_addr + (kk / 4) * a_rows * 128 + (kk % 4) * 32, 16, 1024);
        const uint64_t db = make_desc(b_addr + (kk / 4) * b_rows * 128 + (kk % 4) * 32, 16, 1024);
        Wgmma<T, N, 0>::ss(acc, da, db, kk > 0 ? 1 : 0);
    }
}

// ---- warp specialisation -----------------------------------------------------------------------------
template <int R>
__device__ __forceinline__ void reg_alloc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void reg_dealloc() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}
// Named barrier among `threads` threads (multiple of 32); id 0 is __syncthreads'.
__device__ __forceinline__ void named_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// stmatrix: lanes 8i..8i+7 give the row addresses of 8x8 matrix i; register i holds matrix i in the mma
// accumulator/A fragment layout. .trans stores each 8x8 matrix transposed.
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
                 "r"(r2), "r"(r3)
                 : "memory");
}

// ---- TMA reduce-add (shared -> global), bulk async-groups ----------------------------------------------
// Adds the box at (c0 = column, c1 = row, c2 = head) of a 3-D fp32 tensor map to global memory, element by
// element atomically; `src` holds the box in the map's (swizzled) layout. Completion is tracked per thread
// with bulk async-groups: commit after issuing, wait_read before the source is overwritten.
__device__ __forceinline__ void tma_reduce_add_3d(const CUtensorMap* map, const void* src, int c0, int c1, int c2) {
    asm volatile(
        "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
            reinterpret_cast<uint64_t>(map)),
        "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2)
        : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// The shared-memory sources of every committed bulk operation have been read.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// Every committed bulk operation has completed (its global writes are done).
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// ---- host: tensor maps -------------------------------------------------------------------------------
// Encodes a tiled tensor map with 128-byte swizzle (dims, strides in bytes for dims 1.., box in elements).
// Returns false if the driver entry point is missing or rejects the layout.
inline bool encode_tiled_map(CUtensorMap* map, CUtensorMapDataType dtype, int rank, const void* base,
                             const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box) {
    using EncodeFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                  const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
    static EncodeFn encode = []() -> EncodeFn {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult status;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &status) !=
                cudaSuccess ||
            status != cudaDriverEntryPointSuccess) {
            return nullptr;
        }
        return reinterpret_cast<EncodeFn>(fn);
    }();
    if (encode == nullptr) return false;
    const cuuint32_t elem_strides[5] = {1, 1, 1, 1, 1};
    const CUresult r = encode(map, dtype, rank, const_cast<void*>(base), dims, strides, box, elem_strides,
                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS;
}

// A 4-D map over a 16-bit tensor addressed as (head-dim column, row, head, batch) with element strides
// row/head/batch, box {64, box_rows, 1, 1}, 128-byte swizzle. Returns false if the driver rejects the layout
// (e.g. a stride that is not a multiple of 16 bytes); callers then take the mma.sync kernels instead.
inline bool make_tensor_map(CUtensorMap* map, const void* base, int d, int64_t rows, int heads, int batch,
                            int64_t row_stride, int64_t head_stride, int64_t batch_stride, int box_rows) {
    if (rows <= 0) return false;
    // A dimension of extent 1 is never stepped over; give it a harmless legal stride.
    auto stride_bytes = [](int64_t extent, int64_t stride) -> cuuint64_t {
        return static_cast<cuuint64_t>(extent <= 1 && stride <= 0 ? 16 : stride * 2);
    };
    const cuuint64_t dims[4] = {static_cast<cuuint64_t>(d), static_cast<cuuint64_t>(rows),
                                static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
    const cuuint64_t strides[3] = {stride_bytes(rows, row_stride), stride_bytes(heads, head_stride),
                                   stride_bytes(batch, batch_stride)};
    const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
    return encode_tiled_map(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, base, dims, strides, box);
}

// The backward's fp32 dQ accumulator [rows, heads, d] (contiguous) as a 3-D map (column, row, head) with a
// {32, box_rows, 1} box: 128-byte rows, the widest box a 128-byte swizzle allows for 4-byte elements.
inline bool make_dq_accum_map(CUtensorMap* map, float* base, int d, int64_t rows, int heads, int box_rows) {
    if (rows <= 0) return false;
    const cuuint64_t dims[3] = {static_cast<cuuint64_t>(d), static_cast<cuuint64_t>(rows),
                                static_cast<cuuint64_t>(heads)};
    const cuuint64_t strides[2] = {static_cast<cuuint64_t>(heads) * d * 4, static_cast<cuuint64_t>(d) * 4};
    const cuuint32_t box[3] = {32, static_cast<cuuint32_t>(box_rows), 1};
    return encode_tiled_map(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, base, dims, strides, box);
}

}  // namespace sm90
}  // namespace bridge_flash
