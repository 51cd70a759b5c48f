// Main flash-attention backward kernel (FA2-class: mma.sync m16n8k16 + ldmatrix + cp.async).
//
// One CTA per (K/V tile of kBlockN rows, kv head, batch). K and V stay in shared memory and dK, dV in fp32
// registers while the CTA loops over the r = h / h_k query heads of its group and over their Q tiles of
// kBlockM rows, so GQA/MQA reduce dK/dV with no atomics and no repeated K/V.
//
// Each warp owns 16 rows of the K/V tile and works in the transposed frame (kv rows x q columns):
//   S^T  = K_w Q^T                     P^T = exp(scale * S^T - lse)   (recomputed from the forward's lse)
//   dP^T = V_w dO^T                    dS^T = P^T * (dP^T - D)
//   dV  += P^T dO                      dK  += dS^T Q
// so P^T and dS^T leave the accumulators straight as A operands, with no shared-memory round trip.
// dQ needs a sum over all kv rows of the tile, so dS^T goes through shared memory once, every warp
// computes a 16-row slice of dQ_tile = dS K and adds it into the fp32 dq_accum buffer with vector
// reductions. In deterministic mode those adds are ordered by a per-(batch, head, Q tile) counter: K/V
// tile n adds only after tile n - 1 did, so the floating-point sum is the same every run.
#pragma once
#include <cmath>

#include "flash_bwd_prepost.cuh"
#include "flash_bwd_utils.cuh"
#include "flash_params.h"

namespace bridge_flash {
namespace bwd {

template <typename T, int D>
struct BwdConfig {
    static constexpr int kBlockN = 128;  // K/V rows per CTA
    // Q rows per inner iteration. 64 measured faster than 32 for hd128 too (H100: 0.71-0.78x vs 0.65-0.72x of
    // FA2's backward), despite ptxas spilling a few registers there; BRIDGE_FLASH_BWD_BLOCK_M overrides it.
#ifndef BRIDGE_FLASH_BWD_BLOCK_M
#define BRIDGE_FLASH_BWD_BLOCK_M 64
#endif
    static constexpr int kBlockM = BRIDGE_FLASH_BWD_BLOCK_M;
    static constexpr int kWarps = 8;
    static constexpr int kThreads = kWarps * 32;
    static_assert(kBlockN == 16 * kWarps, "each warp owns 16 K/V rows");
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    static_assert(kBlockM == 32 || kBlockM == 64, "Q tile of 32 or 64 rows");
    // dQ_tile [kBlockM x D] is split over the warps as kDqWarpsM row groups of 16 x kDqWarpsN column groups.
    static constexpr int kDqWarpsM = kBlockM / 16;
    static constexpr int kDqWarpsN = kWarps / kDqWarpsM;
    static constexpr int kDqCols = D / kDqWarpsN;
    static_assert(kDqCols % 16 == 0, "each warp's dQ slice is a whole number of 16-column blocks");

    // shared memory, in 16-bit elements; Q / dO tiles and their lse / D rows are double buffered
    static constexpr int kTileQ = kBlockM * D;
    static constexpr int kTileK = kBlockN * D;
    static constexpr int kOffK = 0;
    static constexpr int kOffV = kOffK + kTileK;
    static constexpr int kOffQ = kOffV + kTileK;
    static constexpr int kOffdO = kOffQ + 2 * kTileQ;
    static constexpr int kOffdS = kOffdO + 2 * kTileQ;
    static constexpr int kElems = kOffdS + kBlockN * kBlockM;
    static constexpr int kSmemBytes = kElems * 2 + 2 * 2 * kBlockM * static_cast<int>(sizeof(float));
};

/// A lane's row and 16-byte chunk inside a 16x16 block for ldmatrix x4 (lanes 8i..8i+7 address matrix i).
/// The two ways of tiling the block into four 8x8 matrices give two lane patterns:
///   rows first: (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15)
///               = A fragment order; with .trans, the B fragments of a [k][n]-stored operand
///   cols first: (rows 0-7, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 0-7), (rows 8-15, cols 8-15)
///               = B fragments of an [n][k]-stored operand; with .trans, the A fragment of a [k][m]-stored one
struct LaneAddr {
    int row;
    int chunk;
};

__device__ __forceinline__ LaneAddr lane_rows_first(int lane) {
    return {(lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4};
}

__device__ __forceinline__ LaneAddr lane_cols_first(int lane) {
    return {(lane & 7) + (lane >> 4) * 8, (lane >> 3) & 1};
}

/// Byte offset of the lane's 16-byte row piece of the 16x16 block at (row0, col0) of a [rows][kCols] tile.
template <int kCols>
__device__ __forceinline__ uint32_t ldm_off(LaneAddr l, int row0, int col0) {
    return static_cast<uint32_t>(swz<kCols>(row0 + l.row, col0 + l.chunk * 8) * 2);
}

/// acc[kNTiles][4] (16 rows x 8*kNTiles cols) += A_w (16 x D, rows a_row0.. of sA) * B^T, where B is
/// stored [n][D] in sB: the "both operands K-major" product used for S^T = K Q^T and dP^T = V dO^T.
template <typename T, int D, int kNTiles>
__device__ __forceinline__ void gemm_rows_x_rowsT(float (&acc)[kNTiles][4], uint32_t sA, int a_row0, uint32_t sB,
                                                  int lane) {
    const LaneAddr la = lane_rows_first(lane), lb = lane_cols_first(lane);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        ldmatrix_x4(a, sA + ldm_off<D>(la, a_row0, kk * 16));
#pragma unroll
        for (int nn = 0; nn < kNTiles / 2; ++nn) {
            uint32_t b[4];
            ldmatrix_x4(b, sB + ldm_off<D>(lb, nn * 16, kk * 16));
            mma_16x8x16<T>(acc[2 * nn], a, b[0], b[1]);
            mma_16x8x16<T>(acc[2 * nn + 1], a, b[2], b[3]);
        }
    }
}

/// acc[D/8][4] (16 x D) += A (16 x kBlockM, given as accumulator-layout fp32 registers) * B, where B is
/// stored [kBlockM][D] row-major in sB: dV += P^T dO and dK += dS^T Q.
template <typename T, int D, int kMTiles>
__device__ __forceinline__ void gemm_regs_x_rows(float (&acc)[D / 8][4], const float (&a_acc)[kMTiles][4],
                                                 uint32_t sB, int lane) {
    const LaneAddr lb = lane_rows_first(lane);
#pragma unroll
    for (int kq = 0; kq < kMTiles / 2; ++kq) {
        const uint32_t a[4] = {ElemTraits<T>::pack(a_acc[2 * kq][0], a_acc[2 * kq][1]),
                               ElemTraits<T>::pack(a_acc[2 * kq][2], a_acc[2 * kq][3]),
                               ElemTraits<T>::pack(a_acc[2 * kq + 1][0], a_acc[2 * kq + 1][1]),
                               ElemTraits<T>::pack(a_acc[2 * kq + 1][2], a_acc[2 * kq + 1][3])};
#pragma unroll
        for (int nd = 0; nd < D / 16; ++nd) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, sB + ldm_off<D>(lb, kq * 16, nd * 16));
            mma_16x8x16<T>(acc[2 * nd], a, b[0], b[1]);
            mma_16x8x16<T>(acc[2 * nd + 1], a, b[2], b[3]);
        }
    }
}

/// Two adjacent fp32 adds into global memory (one vector reduction on sm_90, two atomics before).
__device__ __forceinline__ void red_add_f32x2(float* addr, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(addr), "f"(a), "f"(b) : "memory");
#else
    atomicAdd(addr, a);
    atomicAdd(addr + 1, b);
#endif
}

__device__ __forceinline__ int ld_acquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_release(int* p, int v) {
    asm volatile("st.release.gpu.global.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

template <typename T, int D>
__global__ void __launch_bounds__(BwdConfig<T, D>::kThreads, 1) flash_bwd_main_kernel(const BwdParams p) {
    using C = BwdConfig<T, D>;
    constexpr int kBlockM = C::kBlockM, kBlockN = C::kBlockN, kThreads = C::kThreads;
    constexpr int kSTiles = kBlockM / 8;  // n8 tiles across the Q rows of S^T
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);
    T* sK = smem + C::kOffK;
    T* sV = smem + C::kOffV;
    T* sdS = smem + C::kOffdS;
    float* sLse2 = reinterpret_cast<float*>(smem + C::kElems);  // [2][kBlockM]: lse * log2(e), +inf if no row
    float* sDsum = sLse2 + 2 * kBlockM;                          // [2][kBlockM]

    // Grid (K/V tiles, h_k, b): CTAs running side by side share a (batch, head) and read the same Q / dO
    // tiles, which then come from L2 (putting the tile index last measured 10-15% slower). Deterministic
    // mode relies on tile n - 1 of a (batch, head) starting before tile n: it has the lower block index.
    const int n_block = blockIdx.x, kvh = blockIdx.y, bi = blockIdx.z;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane >> 2, t = lane & 3;
    const bool varlen_q = p.cu_seqlens_q != nullptr, varlen_k = p.cu_seqlens_k != nullptr;
    const SeqSpan qs = seq_span(p.cu_seqlens_q, bi, p.seqlen_q);
    const SeqSpan ks = seq_span(p.cu_seqlens_k, bi, p.seqlen_k);
    const int n0 = n_block * kBlockN;
    if (n0 >= ks.len) return;  // this K/V tile lies past the end of the sequence
    const int kv_rows = min(kBlockN, ks.len - n0);

    const int group = p.h / p.h_k;
    const int diag = ks.len - qs.len;  // bottom-right causal: q row r sees key c iff c <= r + diag
    const int m_begin = p.is_causal ? max(0, n0 - diag) / kBlockM : 0;
    const int m_end = (qs.len + kBlockM - 1) / kBlockM;
    const int m_count = max(0, m_end - m_begin);
    const int iters = group * m_count;

    const T* gK = static_cast<const T*>(p.k) + seq_offset(varlen_k, bi, ks.start, p.k_batch_stride, p.k_row_stride) +
                  static_cast<int64_t>(kvh) * p.k_head_stride + static_cast<int64_t>(n0) * p.k_row_stride;
    const T* gV = static_cast<const T*>(p.v) + seq_offset(varlen_k, bi, ks.start, p.v_batch_stride, p.v_row_stride) +
                  static_cast<int64_t>(kvh) * p.v_head_stride + static_cast<int64_t>(n0) * p.v_row_stride;
    const int64_t q_seq = seq_offset(varlen_q, bi, qs.start, p.q_batch_stride, p.q_row_stride);
    const int64_t do_seq = seq_offset(varlen_q, bi, qs.start, p.do_batch_stride, p.do_row_stride);
    const float* lse_seq = p.lse + static_cast<int64_t>(bi) * p.lse_batch_stride + qs.start;
    const float* dsum_seq = p.dsoftmax_sum + static_cast<int64_t>(bi) * p.lse_batch_stride + qs.start;

    // Issue the copies (and lse / D rows) of inner iteration `it` into buffer `buf`.
    auto prefetch = [&](int it, int buf) {
        const int hq = kvh * group + it / m_count;
        const int m0 = (m_begin + it % m_count) * kBlockM;
        const int rows = min(kBlockM, qs.len - m0);
        const T* gQ = static_cast<const T*>(p.q) + q_seq + static_cast<int64_t>(hq) * p.q_head_stride +
                      static_cast<int64_t>(m0) * p.q_row_stride;
        const T* gdO = static_cast<const T*>(p.dout) + do_seq + static_cast<int64_t>(hq) * p.do_head_stride +
                       static_cast<int64_t>(m0) * p.do_row_stride;
        load_tile_async<kBlockM, D, kThreads>(smem + C::kOffQ + buf * C::kTileQ, gQ, p.q_row_stride, rows, tid);
        load_tile_async<kBlockM, D, kThreads>(smem + C::kOffdO + buf * C::kTileQ, gdO, p.do_row_stride, rows, tid);
        if (tid < kBlockM) {
            float lse2 = INFINITY, dsum = 0.f;  // rows past the end: P = exp2(x - inf) = 0
            if (tid < rows) {
                const int64_t off = static_cast<int64_t>(hq) * p.lse_head_stride + m0 + tid;
                const float lse = lse_seq[off];
                // A row that saw no key has lse = -inf; its probabilities are all zero, not NaN.
                lse2 = lse == -INFINITY ? INFINITY : lse * static_cast<float>(M_LOG2E);
                dsum = dsum_seq[off];
            }
            sLse2[buf * kBlockM + tid] = lse2;
            sDsum[buf * kBlockM + tid] = dsum;
        }
    };

    load_tile_async<kBlockN, D, kThreads>(sK, gK, p.k_row_stride, kv_rows, tid);
    load_tile_async<kBlockN, D, kThreads>(sV, gV, p.v_row_stride, kv_rows, tid);
    if (iters > 0) prefetch(0, 0);
    cp_async_commit();

    float acc_dk[D / 8][4], acc_dv[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dk[j][e] = acc_dv[j][e] = 0.f;

    const int row_w = warp * 16;  // this warp's first K/V row inside the tile
    const float scale_log2 = p.scale_softmax_log2;

#pragma unroll 1
    for (int it = 0; it < iters; ++it) {
        const int buf = it & 1;
        const int hq = kvh * group + it / m_count;
        const int m_block = m_begin + it % m_count;
        const int m0 = m_block * kBlockM;
        cp_async_wait<0>();
        __syncthreads();  // tile `it` landed; every warp is done with iteration it - 1 (its buffers, sdS)
        if (it + 1 < iters) prefetch(it + 1, buf ^ 1);
        cp_async_commit();

        const T* sQ = smem + C::kOffQ + buf * C::kTileQ;
        const T* sdO = smem + C::kOffdO + buf * C::kTileQ;
        const float* lse2 = sLse2 + buf * kBlockM;
        const float* dsum = sDsum + buf * kBlockM;

        // S^T = K_w Q^T, then P^T in place.
        float acc_s[kSTiles][4];
#pragma unroll
        for (int j = 0; j < kSTiles; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_s[j][e] = 0.f;
        gemm_rows_x_rowsT<T, D, kSTiles>(acc_s, smem_u32(sK), row_w, smem_u32(sQ), lane);

        const bool need_mask = n0 + kBlockN > ks.len || (p.is_causal && n0 + kBlockN - 1 > m0 + diag);
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int qc = j * 8 + 2 * t + (e & 1);
                float x = acc_s[j][e] * scale_log2 - lse2[qc];
                if (need_mask) {
                    const int kr = n0 + row_w + g + (e >> 1) * 8;
                    if (kr >= ks.len || (p.is_causal && kr > m0 + qc + diag)) x = -INFINITY;
                }
                acc_s[j][e] = exp2f(x);
            }
        }

        // dP^T = V_w dO^T, then dS^T = P^T (dP^T - D) in place.
        float acc_dp[kSTiles][4];
#pragma unroll
        for (int j = 0; j < kSTiles; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_dp[j][e] = 0.f;
        gemm_rows_x_rowsT<T, D, kSTiles>(acc_dp, smem_u32(sV), row_w, smem_u32(sdO), lane);
#pragma unroll
        for (int j = 0; j < kSTiles; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_dp[j][e] = acc_s[j][e] * (acc_dp[j][e] - dsum[j * 8 + 2 * t + (e & 1)]);

        gemm_regs_x_rows<T, D, kSTiles>(acc_dv, acc_s, smem_u32(sdO), lane);
        gemm_regs_x_rows<T, D, kSTiles>(acc_dk, acc_dp, smem_u32(sQ), lane);

        // dS^T to shared memory for dQ = dS K.
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
            const int col = j * 8 + 2 * t;
            *reinterpret_cast<uint32_t*>(sdS + swz<kBlockM>(row_w + g, col)) =
                ElemTraits<T>::pack(acc_dp[j][0], acc_dp[j][1]);
            *reinterpret_cast<uint32_t*>(sdS + swz<kBlockM>(row_w + g + 8, col)) =
                ElemTraits<T>::pack(acc_dp[j][2], acc_dp[j][3]);
        }
        __syncthreads();

        // dQ_tile[16 x D/2 per warp] = dS[q rows][all kv rows] K[kv rows][cols]
        const int wm = warp % C::kDqWarpsM, wn = warp / C::kDqWarpsM;
        float acc_dq[C::kDqCols / 8][4];
#pragma unroll
        for (int j = 0; j < C::kDqCols / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_dq[j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
            uint32_t a[4];
            ldmatrix_x4_trans(a, smem_u32(sdS) + ldm_off<kBlockM>(lane_cols_first(lane), kk * 16, wm * 16));
#pragma unroll
            for (int nd = 0; nd < C::kDqCols / 16; ++nd) {
                uint32_t b[4];
                ldmatrix_x4_trans(
                    b, smem_u32(sK) + ldm_off<D>(lane_rows_first(lane), kk * 16, wn * C::kDqCols + nd * 16));
                mma_16x8x16<T>(acc_dq[2 * nd], a, b[0], b[1]);
                mma_16x8x16<T>(acc_dq[2 * nd + 1], a, b[2], b[3]);
            }
        }

        int* sem = nullptr;
        if (p.deterministic) {
            sem = static_cast<int*>(p.workspace) +
                  (static_cast<int64_t>(bi) * p.h + hq) * ((p.seqlen_q + kBlockM - 1) / kBlockM) + m_block;
            if (tid == 0)
                while (ld_acquire(sem) != n_block) {
                }
            __syncthreads();
        }
        float* accum = p.dq_accum + (accum_row(varlen_q, bi, qs.start, p.seqlen_q, m0) * p.h + hq) * D;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = wm * 16 + g + half * 8;
            if (m0 + r < qs.len) {
                float* row = accum + static_cast<int64_t>(r) * p.h * D + wn * C::kDqCols + 2 * t;
#pragma unroll
                for (int j = 0; j < C::kDqCols / 8; ++j)
                    red_add_f32x2(row + j * 8, acc_dq[j][half * 2], acc_dq[j][half * 2 + 1]);
            }
        }
        if (p.deterministic) {
            __threadfence();
            __syncthreads();
            if (tid == 0) st_release(sem, n_block + 1);
        }
    }

    // Epilogue: dK is w.r.t. the scaled logits, so it takes the softmax scale here (dQ in the post-pass).
    T* gdK = static_cast<T*>(p.dk) + seq_offset(varlen_k, bi, ks.start, p.dk_batch_stride, p.dk_row_stride) +
             static_cast<int64_t>(kvh) * p.dk_head_stride;
    T* gdV = static_cast<T*>(p.dv) + seq_offset(varlen_k, bi, ks.start, p.dv_batch_stride, p.dv_row_stride) +
             static_cast<int64_t>(kvh) * p.dv_head_stride;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int kr = n0 + row_w + g + half * 8;
        if (kr >= ks.len) continue;
        T* dk_row = gdK + static_cast<int64_t>(kr) * p.dk_row_stride + 2 * t;
        T* dv_row = gdV + static_cast<int64_t>(kr) * p.dv_row_stride + 2 * t;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            *reinterpret_cast<uint32_t*>(dk_row + j * 8) =
                ElemTraits<T>::pack(acc_dk[j][half * 2] * p.scale_softmax, acc_dk[j][half * 2 + 1] * p.scale_softmax);
            *reinterpret_cast<uint32_t*>(dv_row + j * 8) =
                ElemTraits<T>::pack(acc_dv[j][half * 2], acc_dv[j][half * 2 + 1]);
        }
    }
}

}  // namespace bwd
}  // namespace bridge_flash
