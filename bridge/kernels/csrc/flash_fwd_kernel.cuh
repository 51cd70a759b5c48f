// Flash-attention forward kernel (FA2-style, mma.sync tensor cores, sm_80+).
//
// One CTA computes one [kBlockM x D] tile of O for one (query tile, head, batch). Each of its warps owns
// kMTiles * 16 query rows. The CTA walks the key/value tiles left to right, keeping an online softmax per
// row (running max and sum, accumulator rescaled when the max grows), so the S x S score matrix never
// leaves registers. K and V each have one shared-memory buffer; their loads are interleaved with the two
// GEMMs (V_j streams in during Q K_j^T, K_{j+1} during the softmax and P V_j).
//
// Reads top to bottom: shape constants, the per-tile pieces (two GEMMs, mask, softmax), the kernel. The
// launcher is in flash_fwd_launch.cuh.
#pragma once
#include <cmath>
#include <cstdint>

#include "flash_band.cuh"
#include "flash_launch.h"
#include "flash_params.h"
#include "flash_primitives.cuh"
#include "flash_score_mods.cuh"

namespace bridge_flash {

// ---- shapes --------------------------------------------------------------------------------------
template <int D> struct FwdTileConfig;
// The BRIDGE_FWD_* macros exist for tuning experiments only (build.py passes $BRIDGE_FLASH_EXTRA_CFLAGS
// through); the defaults are the measured best on the H100 (NOTES.md, v3).
#ifndef BRIDGE_FWD_BLOCKN_D64
#define BRIDGE_FWD_BLOCKN_D64 128
#endif
#ifndef BRIDGE_FWD_BLOCKN_D128
#define BRIDGE_FWD_BLOCKN_D128 128
#endif
#ifndef BRIDGE_FWD_WARPS_D64
#define BRIDGE_FWD_WARPS_D64 4
#endif
#ifndef BRIDGE_FWD_MTILES_D64
#define BRIDGE_FWD_MTILES_D64 2
#endif
#ifndef BRIDGE_FWD_PREFETCH_Q_D64
#define BRIDGE_FWD_PREFETCH_Q_D64 0
#endif
#ifndef BRIDGE_FWD_WARPS_D128
#define BRIDGE_FWD_WARPS_D128 8
#endif
#ifndef BRIDGE_FWD_MTILES_D128
#define BRIDGE_FWD_MTILES_D128 1
#endif
#ifndef BRIDGE_FWD_PREFETCH_Q_D128
#define BRIDGE_FWD_PREFETCH_Q_D128 1
#endif
#ifndef BRIDGE_FWD_QK_UNROLL
#define BRIDGE_FWD_QK_UNROLL 1
#endif
// Unrolling the k-steps of Q K^T further only adds live registers (spills at d=128).
constexpr int kFwdQKUnroll = BRIDGE_FWD_QK_UNROLL;

// d = 64: 4 warps x 2 m-tiles (two 16-row MMA tiles per warp halve the shared-memory reads of K and V per
// MMA: each B fragment feeds two MMAs), 128 keys per tile; 255 registers with a 12-byte spill, 2 CTAs/SM.
// d = 128: O alone is 64 floats per 16 rows, so 8 warps x 1 m-tile, 128 keys per tile, with the Q fragments
// of the next k-step prefetched during the current MMAs; 216 registers, no spills, 1 CTA (8 warps) per SM.
template <> struct FwdTileConfig<64> {
    static constexpr int kWarps = BRIDGE_FWD_WARPS_D64, kMTiles = BRIDGE_FWD_MTILES_D64;
    static constexpr int kBlockN = BRIDGE_FWD_BLOCKN_D64;
    static constexpr bool kPrefetchQ = BRIDGE_FWD_PREFETCH_Q_D64 != 0;  // measured 1-3% slower in this layout
};
template <> struct FwdTileConfig<128> {
    static constexpr int kWarps = BRIDGE_FWD_WARPS_D128, kMTiles = BRIDGE_FWD_MTILES_D128;
    static constexpr int kBlockN = BRIDGE_FWD_BLOCKN_D128;
    static constexpr bool kPrefetchQ = BRIDGE_FWD_PREFETCH_Q_D128 != 0;
};

template <int D>
struct FwdShape {
    static constexpr int kWarps = FwdTileConfig<D>::kWarps;
    static constexpr int kMTiles = FwdTileConfig<D>::kMTiles;     // 16-row MMA tiles per warp
    static constexpr int kBlockN = FwdTileConfig<D>::kBlockN;     // keys per K/V tile
    static constexpr int kThreads = kWarps * 32;
    static constexpr int kMinBlocks = kThreads <= 128 ? 2 : 1;  // keeps the 255-register budget per thread
    static constexpr int kRowsPerWarp = kMTiles * 16;
    static constexpr int kBlockM = kWarps * kRowsPerWarp;         // query rows per CTA
    static constexpr int kNTiles = kBlockN / 8;                   // 8-key column tiles of S
    static constexpr int kDTiles = D / 8;                         // 8-wide column tiles of O
    static constexpr int kKStepsQK = D / 16;                      // k-steps of Q K^T
    static constexpr int kKStepsPV = kBlockN / 16;                // k-steps of P V
    static constexpr int kSmemElems = (kBlockM + 2 * kBlockN) * D;  // Q, K, V tiles
    static_assert(D % 64 == 0, "head dim must be a multiple of 64 (swizzle period is 8 chunks)");
    static_assert(kBlockN % 16 == 0, "key tile must be a multiple of 16");
};

// ---- per-tile pieces -----------------------------------------------------------------------------
// S[mt][nt] += Q[warp rows] K[tile]^T, Q and K read from swizzled shared memory.
template <typename T, int D>
__device__ __forceinline__ void gemm_qk(float (&s)[FwdShape<D>::kMTiles][FwdShape<D>::kNTiles][4], const T* sQ,
                                        const T* sK, int warp_row0, int lane) {
    using S = FwdShape<D>;
    // Every row a lane addresses is congruent to lane & 7 (mod 8), so the swizzled chunk of logical chunk
    // 2*kk + c is (2*kk) ^ (c ^ (lane & 7)): one XOR per use instead of a hoisted address per (kk, tile).
    const int q_row = warp_row0 + (lane & 7) + ((lane >> 3) & 1) * 8;
    const int q_x = (lane >> 4) ^ (lane & 7);
    const uint32_t q_base = smem_u32(sQ + q_row * D);
    const int k_row = (lane & 7) + (lane >> 4) * 8;
    const int k_x = ((lane >> 3) & 1) ^ (lane & 7);
    const uint32_t k_base = smem_u32(sK + k_row * D);
    auto load_q = [&](uint32_t (&a)[S::kMTiles][4], int kk) {
#pragma unroll
        for (int mt = 0; mt < S::kMTiles; ++mt)
            ldmatrix_x4(a[mt], q_base + (mt * 16 * D + (((2 * kk) ^ q_x) << 3)) * 2);
    };
    uint32_t a[S::kMTiles][4];
    uint32_t a_next[S::kMTiles][4];  // only used with kPrefetchQ
    if constexpr (FwdTileConfig<D>::kPrefetchQ) load_q(a, 0);
#pragma unroll kFwdQKUnroll
    for (int kk = 0; kk < S::kKStepsQK; ++kk) {
        if constexpr (FwdTileConfig<D>::kPrefetchQ) {
            // Q fragments of k-step kk + 1 are read while the MMAs of k-step kk run (hides ldmatrix latency).
            if (kk + 1 < S::kKStepsQK) load_q(a_next, kk + 1);
        } else {
            load_q(a, kk);
        }
#pragma unroll
        for (int np = 0; np < S::kNTiles / 2; ++np) {
            uint32_t b[4];  // b[0..1]: key tile 2np, b[2..3]: key tile 2np+1
            ldmatrix_x4(b, k_base + (np * 16 * D + (((2 * kk) ^ k_x) << 3)) * 2);
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt) {
                mma_16x8x16<T>(s[mt][2 * np], a[mt], b[0], b[1]);
                mma_16x8x16<T>(s[mt][2 * np + 1], a[mt], b[2], b[3]);
            }
        }
        if constexpr (FwdTileConfig<D>::kPrefetchQ) {
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt)
#pragma unroll
                for (int i = 0; i < 4; ++i) a[mt][i] = a_next[mt][i];
        }
    }
}

// O[mt][dt] += P V[tile]; P comes straight from registers (the S accumulator layout is the A layout).
template <typename T, int D>
__device__ __forceinline__ void gemm_pv(float (&o)[FwdShape<D>::kMTiles][FwdShape<D>::kDTiles][4],
                                        const uint32_t (&p)[FwdShape<D>::kMTiles][FwdShape<D>::kKStepsPV][4],
                                        const T* sV, int lane) {
    using S = FwdShape<D>;
    const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int v_x = (lane >> 4) ^ (lane & 7);  // same XOR trick as in gemm_qk
    const uint32_t v_base = smem_u32(sV + v_row * D);
#pragma unroll
    for (int ks = 0; ks < S::kKStepsPV; ++ks) {
#pragma unroll
        for (int dp = 0; dp < S::kDTiles / 2; ++dp) {
            uint32_t b[4];  // b[0..1]: d tile 2dp, b[2..3]: d tile 2dp+1
            ldmatrix_x4_trans(b, v_base + (ks * 16 * D + (((2 * dp) ^ v_x) << 3)) * 2);
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt) {
                mma_16x8x16<T>(o[mt][2 * dp], p[mt][ks], b[0], b[1]);
                mma_16x8x16<T>(o[mt][2 * dp + 1], p[mt][ks], b[2], b[3]);
            }
        }
    }
}

// Sets scores outside the sequence (col >= sk) or outside the band (causal diagonal, sliding window) to -inf.
// Only called for the few tiles that cross a boundary.
template <int D>
__device__ __forceinline__ void apply_mask(float (&s)[FwdShape<D>::kMTiles][FwdShape<D>::kNTiles][4], int row0,
                                           int col0, int sk, const Band& band, int lane) {
    using S = FwdShape<D>;
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < S::kNTiles; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = row0 + mt * 16 + (lane >> 2) + (i >> 1) * 8;
                const int col = col0 + nt * 8 + (lane & 3) * 2 + (i & 1);
                const bool masked = col >= sk || band.masked_2cmp(row, col);
                if (masked) s[mt][nt][i] = -INFINITY;
            }
        }
    }
}

// Soft-cap and ALiBi (flash_score_mods.cuh) on every score of the tile, before the mask.
template <int D>
__device__ __forceinline__ void apply_score_mods(float (&s)[FwdShape<D>::kMTiles][FwdShape<D>::kNTiles][4], int row0,
                                                 int col0, int diag, const ScoreMods& mods, int lane) {
    using S = FwdShape<D>;
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < S::kNTiles; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = row0 + mt * 16 + (lane >> 2) + (i >> 1) * 8;
                const int col = col0 + nt * 8 + (lane & 3) * 2 + (i & 1);
                float t;
                s[mt][nt][i] = mods.apply(s[mt][nt][i], band_distance(row, col, diag), t);
            }
        }
    }
}

// Online softmax over one tile: updates the running max / (thread-partial) sum, rescales O, and packs the
// probabilities into A fragments for P V. Lanes of a quad share rows, so row maxima are quad-reduced;
// row sums stay per-lane until the epilogue.
template <typename T, int D>
__device__ __forceinline__ void softmax_tile(float (&s)[FwdShape<D>::kMTiles][FwdShape<D>::kNTiles][4],
                                             float (&o)[FwdShape<D>::kMTiles][FwdShape<D>::kDTiles][4],
                                             float (&row_max)[FwdShape<D>::kMTiles][2],
                                             float (&row_sum)[FwdShape<D>::kMTiles][2],
                                             uint32_t (&p)[FwdShape<D>::kMTiles][FwdShape<D>::kKStepsPV][4],
                                             float scale_log2) {
    using S = FwdShape<D>;
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {  // hh: row g or row g + 8 of the m-tile
            float mx = row_max[mt][hh];
#pragma unroll
            for (int nt = 0; nt < S::kNTiles; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hh], s[mt][nt][2 * hh + 1]));
            mx = quad_max(mx);
            // A row with every key masked so far keeps max -inf; subtracting 0 instead keeps exp2 at 0, not NaN.
            const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
            const float corr = exp2f(row_max[mt][hh] * scale_log2 - m_scaled);
            row_max[mt][hh] = mx;
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < S::kNTiles; ++nt) {
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const float e = exp2f(fmaf(s[mt][nt][2 * hh + j], scale_log2, -m_scaled));
                    s[mt][nt][2 * hh + j] = e;
                    sum += e;
                }
            }
            row_sum[mt][hh] = row_sum[mt][hh] * corr + sum;
#pragma unroll
            for (int dt = 0; dt < S::kDTiles; ++dt) {
                o[mt][dt][2 * hh] *= corr;
                o[mt][dt][2 * hh + 1] *= corr;
            }
        }
#pragma unroll
        for (int ks = 0; ks < S::kKStepsPV; ++ks) {
            p[mt][ks][0] = ElemTraits<T>::pack(s[mt][2 * ks][0], s[mt][2 * ks][1]);
            p[mt][ks][1] = ElemTraits<T>::pack(s[mt][2 * ks][2], s[mt][2 * ks][3]);
            p[mt][ks][2] = ElemTraits<T>::pack(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
            p[mt][ks][3] = ElemTraits<T>::pack(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
        }
    }
}

// ---- the kernel ----------------------------------------------------------------------------------
// kMods: soft-cap / ALiBi present (a separate instantiation, so the plain kernel carries none of their code).
template <typename T, int D, bool kMods>
__global__ void __launch_bounds__(FwdShape<D>::kThreads, FwdShape<D>::kMinBlocks) flash_fwd_kernel(const __grid_constant__ FwdParams p) {
    using S = FwdShape<D>;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T* sQ = reinterpret_cast<T*>(smem_raw);  // [kBlockM x D], reused to stage O in the epilogue
    T* sK = sQ + S::kBlockM * D;             // [kBlockN x D]
    T* sV = sK + S::kBlockN * D;             // [kBlockN x D]

    // Heaviest causal tiles (largest row index) are launched first so the tail of the grid is short.
    const int m_block = gridDim.x - 1 - blockIdx.x;
    const int hi = blockIdx.y;
    const int bi = blockIdx.z;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const int q_start = varlen ? p.cu_seqlens_q[bi] : 0;
    const int k_start = varlen ? p.cu_seqlens_k[bi] : 0;
    const int sq = varlen ? p.cu_seqlens_q[bi + 1] - q_start : p.seqlen_q;
    const int sk = varlen ? p.cu_seqlens_k[bi + 1] - k_start : p.seqlen_k;
    const int m0 = m_block * S::kBlockM;
    if (m0 >= sq) return;  // varlen: this sequence is shorter than max_seqlen_q
    const int hk = hi / (p.h / p.h_k);  // GQA/MQA: K/V head shared by h / h_k query heads

    const T* q = static_cast<const T*>(p.q) + (varlen ? q_start * p.q_row_stride : bi * p.q_batch_stride) +
                 hi * p.q_head_stride + m0 * p.q_row_stride;
    const T* k = static_cast<const T*>(p.k) + (varlen ? k_start * p.k_row_stride : bi * p.k_batch_stride) +
                 hk * p.k_head_stride;
    const T* v = static_cast<const T*>(p.v) + (varlen ? k_start * p.v_row_stride : bi * p.v_batch_stride) +
                 hk * p.v_head_stride;
    T* o = static_cast<T*>(p.o) + (varlen ? q_start * p.o_row_stride : bi * p.o_batch_stride) +
           hi * p.o_head_stride + m0 * p.o_row_stride;
    float* lse = p.lse + bi * p.lse_batch_stride + hi * p.lse_head_stride + q_start + m0;

    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int warp_row0 = warp * S::kRowsPerWarp;
    // The bounds are read from the parameter bank where used (a Band held in registers cost d = 64 spills).
    auto band = [&] { return Band{sk - sq, p.window_left, p.window_right}; };

    // Key tiles this query tile needs: those holding a score inside the band (all of them without a mask).
    const int rows_here = min(S::kBlockM, sq - m0);
    const int m_last = m0 + rows_here - 1;
    int n_first, n_end;
    band().key_tiles(m0, m_last, S::kBlockN, (sk + S::kBlockN - 1) / S::kBlockN, n_first, n_end);

    float acc_o[S::kMTiles][S::kDTiles][4];
    float row_max[S::kMTiles][2], row_sum[S::kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
        for (int dt = 0; dt < S::kDTiles; ++dt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc_o[mt][dt][i] = 0.f;
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        row_sum[mt][0] = row_sum[mt][1] = 0.f;
    }

    if (n_first < n_end) {
        const int first = n_first * S::kBlockN;
        load_tile_async<S::kBlockM, D, S::kThreads>(sQ, q, p.q_row_stride, rows_here, tid);
        load_tile_async<S::kBlockN, D, S::kThreads>(sK, k + first * p.k_row_stride, p.k_row_stride, sk - first, tid);
        cp_async_commit();
    }

    for (int n = n_first; n < n_end; ++n) {
        const int col0 = n * S::kBlockN;
        cp_async_wait<0>();  // K_n (and Q) have landed ...
        __syncthreads();     // ... for every thread, and every warp is done with V_{n-1}
        load_tile_async<S::kBlockN, D, S::kThreads>(sV, v + col0 * p.v_row_stride, p.v_row_stride, sk - col0, tid);
        cp_async_commit();

        float acc_s[S::kMTiles][S::kNTiles][4];
#pragma unroll
        for (int mt = 0; mt < S::kMTiles; ++mt)
#pragma unroll
            for (int nt = 0; nt < S::kNTiles; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc_s[mt][nt][i] = 0.f;
        gemm_qk<T, D>(acc_s, sQ, sK, warp_row0, lane);

        __syncthreads();  // every warp is done reading K_n: its buffer can take K_{n+1}
        if (n + 1 < n_end) {
            const int next = col0 + S::kBlockN;
            load_tile_async<S::kBlockN, D, S::kThreads>(sK, k + next * p.k_row_stride, p.k_row_stride, sk - next, tid);
        }
        cp_async_commit();  // possibly empty: keeps the group count fixed for wait<1> below

        if constexpr (kMods) {
            apply_score_mods<D>(acc_s, m0 + warp_row0, col0, sk - sq, score_mods(p, bi, hi), lane);
        }
        // Only tiles crossing the sequence end or an edge of the band need the mask.
        const bool crosses_end = col0 + S::kBlockN > sk;
        if (crosses_end || band().crosses(m0, m_last, col0, col0 + S::kBlockN - 1))
            apply_mask<D>(acc_s, m0 + warp_row0, col0, sk, band(), lane);

        uint32_t p_frag[S::kMTiles][S::kKStepsPV][4];
        softmax_tile<T, D>(acc_s, acc_o, row_max, row_sum, p_frag, p.scale_softmax_log2);

        cp_async_wait<1>();  // V_n has landed (K_{n+1} may still be in flight)
        __syncthreads();
        gemm_pv<T, D>(acc_o, p_frag, sV, lane);
    }
    cp_async_wait<0>();
    __syncthreads();  // the Q buffer is about to hold O

    // Epilogue: normalise, write LSE, stage O through shared memory for 16-byte coalesced stores.
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const float total = quad_sum(row_sum[mt][hh]);
            // A row with no admissible key (causal with sk < sq, a window past the keys, or sk == 0) outputs
            // zeros and lse = -inf.
            const bool empty = !(total > 0.f);
            const float inv = empty ? 0.f : 1.f / total;
            const int row = warp_row0 + mt * 16 + g + hh * 8;
            if (t == 0 && row < rows_here)
                lse[row] = empty ? -INFINITY : row_max[mt][hh] * p.scale_softmax + logf(total);
#pragma unroll
            for (int dt = 0; dt < S::kDTiles; ++dt) {
                *reinterpret_cast<uint32_t*>(sQ + swizzled_offset<D>(row, dt) + 2 * t) =
                    ElemTraits<T>::pack(acc_o[mt][dt][2 * hh] * inv, acc_o[mt][dt][2 * hh + 1] * inv);
            }
        }
    }
    __syncwarp();  // each warp stages and stores only its own rows
    constexpr int kChunksPerWarp = S::kRowsPerWarp * S::kDTiles;
#pragma unroll
    for (int i = 0; i < kChunksPerWarp / 32; ++i) {
        const int idx = i * 32 + lane;
        const int row = warp_row0 + idx / S::kDTiles;
        const int chunk = idx % S::kDTiles;
        if (row < rows_here) {
            *reinterpret_cast<uint4*>(o + row * p.o_row_stride + chunk * 8) =
                *reinterpret_cast<const uint4*>(sQ + swizzled_offset<D>(row, chunk));
        }
    }
}

}  // namespace bridge_flash
