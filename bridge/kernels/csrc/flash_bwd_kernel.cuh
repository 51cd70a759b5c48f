// Main flash-attention backward kernel (FA2-class: mma.sync m16n8k16 + ldmatrix + cp.async).
//
// One CTA of 8 warps per (K/V tile of kBlockN = 128 rows, kv head, batch). K and V stay in shared memory and
// dK, dV in fp32 registers while the CTA loops over the r = h / h_k query heads of its group and over their
// Q tiles of kBlockM rows (Q, dO, lse and D double buffered with cp.async), so GQA/MQA reduce dK/dV with no
// atomics and no repeated K/V. Per Q tile:
//   S  = Q K^T,  dP = dO V^T        warps tiled 2 (Q rows) x 4 (K/V rows): each warp a (kBlockM/2) x 32 block
//   P  = exp(scale * S - lse),  dS = P * (dP - D)    in registers; P and dS go to shared memory in 16 bits
//   dV += P^T dO  (warps 0-3),  dK += dS^T Q  (warps 4-7)      each warp 32 K/V rows x all D columns
//   dQ_tile = dS K                  warps tiled over (Q rows, head dim) in 32 x 32 blocks, added into the fp32
//                                   dq_accum buffer with 16-byte vector reductions
// Splitting the warps differently per product lets every loaded fragment feed 4-16 MMAs (the first version
// gave each warp 16 K/V rows for all five products: ~35% more ldmatrix traffic and 188 B of spills at d=128).
// Measured designs and the ones that lost (S / dP split between warp halves) are in NOTES.md, "backward".
// In deterministic mode the dQ adds are ordered by a per-(batch, head, Q tile) counter: K/V tile n adds only
// after tile n - 1 did, so the floating-point sum is the same every run.
#pragma once
#include <cmath>
#include <type_traits>

#include "flash_band.cuh"
#include "flash_bwd_prepost.cuh"
#include "flash_bwd_utils.cuh"
#include "flash_params.h"
#include "flash_score_mods.cuh"

namespace bridge_flash {
namespace bwd {

template <typename T, int D, int kBlockM_>
struct BwdConfig {
    static constexpr int kBlockN = 128;  // K/V rows per CTA
    static constexpr int kBlockM = kBlockM_;  // Q rows per inner iteration
    static constexpr int kWarps = 8;
    static constexpr int kThreads = kWarps * 32;
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    static_assert(kBlockM == 64 || kBlockM == 128, "Q tile of 64 or 128 rows");

    // S / dP: 2 x 4 warps, each (kBlockM / 2) Q rows x 32 K/V columns
    static constexpr int kSWarpsN = 4;
    static constexpr int kSRows = kBlockM / 2;
    static constexpr int kSMTiles = kSRows / 16;
    static constexpr int kSCols = kBlockN / kSWarpsN;
    static constexpr int kSNTiles = kSCols / 8;
    // dK / dV: warps 0-3 own dV and warps 4-7 dK, each 32 K/V rows x D (one B fragment feeds 4 MMAs)
    static constexpr int kKVWarpsN = 4;
    static constexpr int kKVMTiles = kBlockN / kKVWarpsN / 16;
    static constexpr int kKVNTiles = D / 8;
    // dQ: (kBlockM / 32) x (rest) warps, each 32 Q rows x kQCols columns
    static constexpr int kQWarpsM = kBlockM / 32;
    static constexpr int kQWarpsD = kWarps / kQWarpsM;
    static constexpr int kQCols = D / kQWarpsD;
    static constexpr int kQNTiles = kQCols / 8;
    static_assert(kQCols % 16 == 0, "each warp's dQ slice is a whole number of 16-column blocks");

    // shared memory, in 16-bit elements; Q / dO tiles and their lse / D rows are double buffered
    static constexpr int kTileQ = kBlockM * D;
    static constexpr int kTileK = kBlockN * D;
    static constexpr int kOffK = 0;
    static constexpr int kOffV = kOffK + kTileK;
    static constexpr int kOffQ = kOffV + kTileK;
    static constexpr int kOffdO = kOffQ + 2 * kTileQ;
    static constexpr int kOffP = kOffdO + 2 * kTileQ;
    static constexpr int kOffdS = kOffP + kBlockM * kBlockN;
    static constexpr int kElems = kOffdS + kBlockM * kBlockN;
    static constexpr int kSmemBytes = kElems * 2 + 2 * 2 * kBlockM * static_cast<int>(sizeof(float));
    static_assert(kSmemBytes <= 227 * 1024, "shared memory over the sm_90 per-block limit");
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

/// A lane's byte offsets into a swizzled [rows][kCols] tile for ldmatrix x4 on the 16x16 blocks whose first
/// 16-byte chunk is w + 2j (w: an even run-time chunk offset, j: compile time) and first row row0 (a multiple
/// of 8, so the swizzle term row & 7 is the lane's own): the swizzle only permutes chunks inside aligned
/// groups of 8, so four per-lane values cover every j and the rest is an immediate (row0, j / 4).
/// Built inside the main loop from a value the compiler cannot hoist: hoisting one address per (operand,
/// k step) out of the loop took ~80 registers and made ptxas spill.
template <int kCols>
struct SwzLane {
    uint32_t v[4];
    __device__ __forceinline__ SwzLane(LaneAddr l, int lane, int w) {
#pragma unroll
        for (int lo = 0; lo < 4; ++lo)
            v[lo] = static_cast<uint32_t>((l.row * kCols + (((w + 2 * lo + l.chunk) ^ (lane & 7)) << 3)) * 2);
    }
    __device__ __forceinline__ uint32_t at(int row0, int j) const {
        return v[j & 3] + static_cast<uint32_t>(row0 * kCols * 2 + (j >> 2) * 128);
    }
};

/// One warp's acc[MT][NT][4] (MT*16 x NT*8) += A * B over a k extent of kK, both operands in swizzled
/// shared memory. A: a row-major [m][k] tile (a_base at the warp's first row, lane pattern rows-first, w = 0),
/// or (kATrans) a [k][m] tile (a_base at row 0, cols-first pattern, w = the warp's first column / 8).
/// B: an [n][k] tile (b_base at the warp's first row, cols-first, w = 0), or (kBKN) a [k][n] tile
/// (b_base at row 0, rows-first, w = the warp's first column / 8).
template <typename T, int MT, int NT, int kK, int kACols, int kBCols, bool kATrans, bool kBKN>
__device__ __forceinline__ void warp_gemm(float (&acc)[MT][NT][4], uint32_t a_base, const SwzLane<kACols>& al,
                                          uint32_t b_base, const SwzLane<kBCols>& bl) {
    static_assert(NT % 2 == 0, "B fragments come in pairs of n8 tiles");
#pragma unroll
    for (int kk = 0; kk < kK / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if constexpr (kATrans) {
                ldmatrix_x4_trans(a[mt], a_base + al.at(kk * 16, mt));
            } else {
                ldmatrix_x4(a[mt], a_base + al.at(mt * 16, kk));
            }
        }
        uint32_t b[NT][2];
#pragma unroll
        for (int j = 0; j < NT / 2; ++j) {
            uint32_t r[4];
            if constexpr (kBKN) {
                ldmatrix_x4_trans(r, b_base + bl.at(kk * 16, j));
            } else {
                ldmatrix_x4(r, b_base + bl.at(j * 16, kk));
            }
            b[2 * j][0] = r[0];
            b[2 * j][1] = r[1];
            b[2 * j + 1][0] = r[2];
            b[2 * j + 1][1] = r[3];
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma_16x8x16<T>(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
    }
}

/// Returns x through an opaque move, so values derived from it are computed where they are used instead of
/// being hoisted out of the loop and held in registers.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
    uint32_t y;
    asm volatile("mov.b32 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}

template <int MT, int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
}

/// Four adjacent fp32 adds into global memory (one vector reduction on sm_90, four atomics before);
/// addr is 16-byte aligned.
__device__ __forceinline__ void red_add_f32x4(float* addr, float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(addr), "f"(a), "f"(b), "f"(c), "f"(d)
                 : "memory");
#else
    atomicAdd(addr, a);
    atomicAdd(addr + 1, b);
    atomicAdd(addr + 2, c);
    atomicAdd(addr + 3, d);
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

/// kHeavyFirst: grid (h_k * b, K/V tiles) instead of (K/V tiles, h_k, b). Under a causal mask K/V tile 0 has
/// the most Q tiles to visit; numbering every head's tile 0 first starts the longest CTAs first, so the last
/// wave is short ones (GQA loops r heads per CTA, which makes the spread larger).
/// kMods: soft-cap / ALiBi present (flash_score_mods.cuh); a separate instantiation, so the plain kernel carries
/// none of their code.
template <typename T, int D, int kBlockM_, bool kHeavyFirst, bool kMods>
__global__ void __launch_bounds__(256, 1) flash_bwd_main_kernel(const BwdParams p) {
    using C = BwdConfig<T, D, kBlockM_>;
    constexpr int kBlockM = C::kBlockM, kBlockN = C::kBlockN, kThreads = C::kThreads;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);
    T* sK = smem + C::kOffK;
    T* sV = smem + C::kOffV;
    T* sP = smem + C::kOffP;
    T* sdS = smem + C::kOffdS;
    float* sLse = reinterpret_cast<float*>(smem + C::kElems);  // [2][kBlockM], the forward's lse as is
    float* sDsum = sLse + 2 * kBlockM;                         // [2][kBlockM]

    // Default grid (K/V tiles, h_k, b): CTAs running side by side share a (batch, head) and read the same
    // Q / dO tiles from L2. Deterministic mode relies on tile n - 1 of a (batch, head) starting before
    // tile n: in both orders it has the lower linear block index.
    int n_block, kvh, bi;
    if constexpr (kHeavyFirst) {
        kvh = blockIdx.x % p.h_k;
        bi = blockIdx.x / p.h_k;
        n_block = blockIdx.y;
    } else {
        n_block = blockIdx.x;
        kvh = blockIdx.y;
        bi = blockIdx.z;
    }
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane >> 2, t = lane & 3;
    const bool varlen_q = p.cu_seqlens_q != nullptr, varlen_k = p.cu_seqlens_k != nullptr;
    const SeqSpan qs = seq_span(p.cu_seqlens_q, bi, p.seqlen_q);
    const SeqSpan ks = seq_span(p.cu_seqlens_k, bi, p.seqlen_k);
    const int n0 = n_block * kBlockN;
    if (n0 >= ks.len) return;  // this K/V tile lies past the end of the sequence
    const int kv_rows = min(kBlockN, ks.len - n0);

    const int group = p.h / p.h_k;
    // Causal / sliding-window band. Only diag lives in a register: the bounds are read from the parameter
    // bank where used (a Band held across the loop cost 8-24 bytes more spills).
    const int diag = ks.len - qs.len;
    auto band = [&] { return Band{diag, p.window_left, p.window_right}; };
    const bool banded = p.is_causal || p.has_window;
    // The Q tiles holding a score inside the band for these keys (all of them without a mask).
    int m_begin, m_end;
    band().query_tiles(n0, kBlockN, kBlockM, (qs.len + kBlockM - 1) / kBlockM, m_begin, m_end);
    const int m_count = max(0, m_end - m_begin);
    const int iters = group * m_count;
    // Without a mask every K/V tile of a head visits the same Q tiles; starting each at a different one keeps
    // the CTAs running side by side from adding into the same dQ rows at the same time. Deterministic mode
    // keeps the plain order (tile n waits for tile n - 1 at every Q tile).
    const int m_rot = (banded || p.deterministic || m_count == 0) ? 0 : n_block % m_count;
    auto m_block_of = [&](int it) {
        int j = it % m_count + m_rot;
        if (j >= m_count) j -= m_count;
        return m_begin + j;
    };

    const T* gK = static_cast<const T*>(p.k) + seq_offset(varlen_k, bi, ks.start, p.k_batch_stride, p.k_row_stride) +
                  static_cast<int64_t>(kvh) * p.k_head_stride + static_cast<int64_t>(n0) * p.k_row_stride;
    const T* gV = static_cast<const T*>(p.v) + seq_offset(varlen_k, bi, ks.start, p.v_batch_stride, p.v_row_stride) +
                  static_cast<int64_t>(kvh) * p.v_head_stride + static_cast<int64_t>(n0) * p.v_row_stride;
    const int64_t q_seq = seq_offset(varlen_q, bi, qs.start, p.q_batch_stride, p.q_row_stride);
    const int64_t do_seq = seq_offset(varlen_q, bi, qs.start, p.do_batch_stride, p.do_row_stride);
    const float* lse_seq = p.lse + static_cast<int64_t>(bi) * p.lse_batch_stride + qs.start;
    const float* dsum_seq = p.dsoftmax_sum + static_cast<int64_t>(bi) * p.lse_batch_stride + qs.start;

    // Issue the copies of inner iteration `it` (Q, dO tiles and their lse / D rows) into buffer `buf`.
    auto prefetch = [&](int it, int buf) {
        const int hq = kvh * group + it / m_count;
        const int m0 = m_block_of(it) * kBlockM;
        const int rows = min(kBlockM, qs.len - m0);
        const T* gQ = static_cast<const T*>(p.q) + q_seq + static_cast<int64_t>(hq) * p.q_head_stride +
                      static_cast<int64_t>(m0) * p.q_row_stride;
        const T* gdO = static_cast<const T*>(p.dout) + do_seq + static_cast<int64_t>(hq) * p.do_head_stride +
                       static_cast<int64_t>(m0) * p.do_row_stride;
        load_tile_async<kBlockM, D, kThreads>(smem + C::kOffQ + buf * C::kTileQ, gQ, p.q_row_stride, rows, tid);
        load_tile_async<kBlockM, D, kThreads>(smem + C::kOffdO + buf * C::kTileQ, gdO, p.do_row_stride, rows, tid);
        if (tid < kBlockM) {
            const bool in_range = tid < rows;  // rows past the end are zero-filled and masked where used
            const int64_t off = static_cast<int64_t>(hq) * p.lse_head_stride + m0 + (in_range ? tid : 0);
            cp_async_4(smem_u32(sLse + buf * kBlockM + tid), lse_seq + off, in_range);
        } else if (tid >= kThreads - kBlockM) {
            const int r = tid - (kThreads - kBlockM);
            const bool in_range = r < rows;
            const int64_t off = static_cast<int64_t>(hq) * p.lse_head_stride + m0 + (in_range ? r : 0);
            cp_async_4(smem_u32(sDsum + buf * kBlockM + r), dsum_seq + off, in_range);
        }
    };

    load_tile_async<kBlockN, D, kThreads>(sK, gK, p.k_row_stride, kv_rows, tid);
    load_tile_async<kBlockN, D, kThreads>(sV, gV, p.v_row_stride, kv_rows, tid);
    if (iters > 0) prefetch(0, 0);
    cp_async_commit();

    // warp roles per product (see the file comment)
    const int s_row0 = (warp / C::kSWarpsN) * C::kSRows;  // Q rows of this warp's S / dP block
    const int s_col0 = (warp % C::kSWarpsN) * C::kSCols;  // K/V rows (columns of S)
    const int kv_row0 = (warp % C::kKVWarpsN) * (C::kKVMTiles * 16);  // dK / dV rows
    const bool kv_is_dk = warp >= C::kKVWarpsN;  // this warp accumulates dK, else dV
    const int q_row0 = (warp % C::kQWarpsM) * 32;                     // dQ rows
    const int q_col0 = (warp / C::kQWarpsM) * C::kQCols;              // dQ columns

    float acc_kv[C::kKVMTiles][C::kKVNTiles][4];  // dV (warps 0-3) or dK (warps 4-7)
    zero_acc(acc_kv);

    const float scale_log2 = p.scale_softmax_log2;
    const uint32_t smem_u = smem_u32(smem);

#pragma unroll 1
    for (int it = 0; it < iters; ++it) {
        const int buf = it & 1;
        const int hq = kvh * group + it / m_count;
        const int m_block = m_block_of(it);
        const int m0 = m_block * kBlockM;
        cp_async_wait<0>();
        __syncthreads();  // tile `it` landed; every warp is done with iteration it - 1 (its buffers, sP, sdS)
        if (it + 1 < iters) prefetch(it + 1, buf ^ 1);
        cp_async_commit();

        const uint32_t base = opaque(smem_u);
        const int ln = static_cast<int>(opaque(lane));
        const uint32_t sK_u = base + C::kOffK * 2, sV_u = base + C::kOffV * 2;
        const uint32_t sP_u = base + C::kOffP * 2, sdS_u = base + C::kOffdS * 2;
        const uint32_t sQ_u = base + (C::kOffQ + buf * C::kTileQ) * 2;
        const uint32_t sdO_u = base + (C::kOffdO + buf * C::kTileQ) * 2;
        const float* lse = sLse + buf * kBlockM;
        const float* dsum = sDsum + buf * kBlockM;

        const bool need_mask = n0 + kBlockN > ks.len || band().crosses(m0, m0 + kBlockM - 1, n0, n0 + kBlockN - 1);
        // S = Q K^T
        float acc_s[C::kSMTiles][C::kSNTiles][4];
        zero_acc(acc_s);
        warp_gemm<T, C::kSMTiles, C::kSNTiles, D, D, D, false, false>(
            acc_s, sQ_u + s_row0 * D * 2, SwzLane<D>(lane_rows_first(ln), ln, 0), sK_u + s_col0 * D * 2,
            SwzLane<D>(lane_cols_first(ln), ln, 0));

        // P = exp2(scale * log2(e) * S - lse * log2(e)), kept as packed 16-bit pairs: P is rounded to 16 bits
        // for dV = P^T dO anyway, and using the same rounded P in dS = P (dP - D) frees 16-32 registers
        // (the fp32 copy made ptxas spill at d = 128); its rounding is of the size of dS's own.
        // The mask test is hoisted out of the element loop (two copies) rather than a branch per element;
        // measured equal on the H100, kept because unmasked tiles then run no mask code at all.
        uint32_t p16[C::kSMTiles][C::kSNTiles][2];
        ScoreMods mods{};
        if constexpr (kMods) mods = score_mods(p, bi, hq);
        auto compute_p = [&](auto mask_tag) {
            constexpr bool kMask = decltype(mask_tag)::value;
#pragma unroll
            for (int mt = 0; mt < C::kSMTiles; ++mt) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int qr = s_row0 + mt * 16 + g + h * 8;  // row inside the Q tile
                    const float l = lse[qr];
                    // Rows past the end and rows that saw no key (lse = -inf) get P = 0, never NaN.
                    const float lse2 =
                        (m0 + qr < qs.len && l != -INFINITY) ? l * static_cast<float>(M_LOG2E) : INFINITY;
#pragma unroll
                    for (int nt = 0; nt < C::kSNTiles; ++nt) {
                        float pe[2], th[2];
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            float sv = acc_s[mt][nt][2 * h + e];
                            if constexpr (kMods) {
                                const int kc = n0 + s_col0 + nt * 8 + 2 * t + e;
                                sv = mods.apply(sv, band_distance(m0 + qr, kc, diag), th[e]);
                            }
                            float x = fmaf(sv, scale_log2, -lse2);
                            if constexpr (kMask) {
                                const int kc = n0 + s_col0 + nt * 8 + 2 * t + e;
                                if (kc >= ks.len || band().masked(m0 + qr, kc)) x = -INFINITY;
                            }
                            pe[e] = exp2f(x);
                        }
                        p16[mt][nt][h] = ElemTraits<T>::pack(pe[0], pe[1]);
                        *reinterpret_cast<uint32_t*>(sP + swz<kBlockN>(qr, s_col0 + nt * 8 + 2 * t)) = p16[mt][nt][h];
                        if constexpr (kMods) {
                            // The soft-cap derivative waits in this thread's own dS slots until dS is formed.
                            if (mods.cap_raw != 0.f)
                                *reinterpret_cast<uint32_t*>(sdS + swz<kBlockN>(qr, s_col0 + nt * 8 + 2 * t)) =
                                    pack_dtanh(th[0], th[1]);
                        }
                    }
                }
            }
        };
        if (need_mask) {
            compute_p(std::true_type{});
        } else {
            compute_p(std::false_type{});
        }

        // dP = dO V^T, then dS = P (dP - D) to shared memory.
        float acc_dp[C::kSMTiles][C::kSNTiles][4];
        zero_acc(acc_dp);
        warp_gemm<T, C::kSMTiles, C::kSNTiles, D, D, D, false, false>(
            acc_dp, sdO_u + s_row0 * D * 2, SwzLane<D>(lane_rows_first(ln), ln, 0), sV_u + s_col0 * D * 2,
            SwzLane<D>(lane_cols_first(ln), ln, 0));
#pragma unroll
        for (int mt = 0; mt < C::kSMTiles; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int qr = s_row0 + mt * 16 + g + h * 8;
                const float ds = dsum[qr];
#pragma unroll
                for (int nt = 0; nt < C::kSNTiles; ++nt) {
                    float2 pf = unpack2<T>(p16[mt][nt][h]);
                    uint32_t* slot = reinterpret_cast<uint32_t*>(sdS + swz<kBlockN>(qr, s_col0 + nt * 8 + 2 * t));
                    if constexpr (kMods) {
                        if (mods.cap_raw != 0.f) {  // chain rule through the soft-cap
                            const float2 f = unpack_dtanh(*slot);
                            pf.x *= f.x;
                            pf.y *= f.y;
                        }
                    }
                    *slot = ElemTraits<T>::pack(pf.x * (acc_dp[mt][nt][2 * h] - ds), pf.y * (acc_dp[mt][nt][2 * h + 1] - ds));
                }
            }
        }
        __syncthreads();

        // dV += P^T dO (warps 0-3), dK += dS^T Q (warps 4-7); A read transposed from the [q][kv] tiles.
        warp_gemm<T, C::kKVMTiles, C::kKVNTiles, kBlockM, kBlockN, D, true, true>(
            acc_kv, kv_is_dk ? sdS_u : sP_u, SwzLane<kBlockN>(lane_cols_first(ln), ln, kv_row0 / 8),
            kv_is_dk ? sQ_u : sdO_u, SwzLane<D>(lane_rows_first(ln), ln, 0));

        // dQ_tile = dS K, this warp's 32 x kQCols block.
        float acc_dq[2][C::kQNTiles][4];
        zero_acc(acc_dq);
        warp_gemm<T, 2, C::kQNTiles, kBlockN, kBlockN, D, false, true>(
            acc_dq, sdS_u + q_row0 * kBlockN * 2, SwzLane<kBlockN>(lane_rows_first(ln), ln, 0), sK_u,
            SwzLane<D>(lane_rows_first(ln), ln, q_col0 / 8));

        int* sem = nullptr;
        // The K/V tiles adding into this Q tile are a contiguous run starting at first_key_tile (tile 0 without
        // a window): in deterministic mode tile n waits until the n - first before it have added.
        int turn = 0;
        if (p.deterministic) {
            sem = static_cast<int*>(p.workspace) +
                  (static_cast<int64_t>(bi) * p.h + hq) * ((p.seqlen_q + 31) / 32) + m_block;
            turn = n_block - band().first_key_tile(m0, kBlockN);
            if (tid == 0)
                while (ld_acquire(sem) != turn) {
                }
            __syncthreads();
        }
        float* accum = p.dq_accum + (accum_row(varlen_q, bi, qs.start, p.seqlen_q, m0) * p.h + hq) * D;
        // Lanes t and t ^ 1 hold adjacent column pairs of rows g and g + 8: trading one pair each gives the
        // even lane four columns of row g and the odd lane four of row g + 8, one 16-byte reduction apiece
        // (half the reduction instructions of pairwise adds).
        const bool odd = t & 1;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
            const int r = q_row0 + mt * 16 + g + (odd ? 8 : 0);
            float* row = accum + static_cast<int64_t>(r) * p.h * D + q_col0 + 2 * (t & ~1);
            const bool in_range = m0 + r < qs.len;
#pragma unroll
            for (int nt = 0; nt < C::kQNTiles; ++nt) {
                const float* c = acc_dq[mt][nt];
                const float s0 = __shfl_xor_sync(0xffffffffu, odd ? c[0] : c[2], 1);
                const float s1 = __shfl_xor_sync(0xffffffffu, odd ? c[1] : c[3], 1);
                if (in_range) {
                    if (odd) {
                        red_add_f32x4(row + nt * 8, s0, s1, c[2], c[3]);
                    } else {
                        red_add_f32x4(row + nt * 8, c[0], c[1], s0, s1);
                    }
                }
            }
        }
        if (p.deterministic) {
            __threadfence();
            __syncthreads();
            if (tid == 0) st_release(sem, turn + 1);
        }
    }

    // Epilogue: dK is w.r.t. the scaled logits, so it takes the softmax scale here (dQ in the post-pass).
    T* gdK = static_cast<T*>(p.dk) + seq_offset(varlen_k, bi, ks.start, p.dk_batch_stride, p.dk_row_stride) +
             static_cast<int64_t>(kvh) * p.dk_head_stride;
    T* gdV = static_cast<T*>(p.dv) + seq_offset(varlen_k, bi, ks.start, p.dv_batch_stride, p.dv_row_stride) +
             static_cast<int64_t>(kvh) * p.dv_head_stride;
    {
        T* out = kv_is_dk ? gdK : gdV;
        const int64_t row_stride = kv_is_dk ? p.dk_row_stride : p.dv_row_stride;
        const float scale = kv_is_dk ? p.scale_softmax : 1.f;
#pragma unroll
        for (int mt = 0; mt < C::kKVMTiles; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int kr = n0 + kv_row0 + mt * 16 + g + h * 8;
                if (kr >= ks.len) continue;
                T* row = out + static_cast<int64_t>(kr) * row_stride + 2 * t;
#pragma unroll
                for (int nt = 0; nt < C::kKVNTiles; ++nt) {
                    *reinterpret_cast<uint32_t*>(row + nt * 8) =
                        ElemTraits<T>::pack(acc_kv[mt][nt][2 * h] * scale, acc_kv[mt][nt][2 * h + 1] * scale);
                }
            }
        }
    }
}

}  // namespace bwd
}  // namespace bridge_flash
