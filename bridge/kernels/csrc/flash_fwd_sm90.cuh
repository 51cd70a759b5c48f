// Flash-attention forward for Hopper (sm_90a): TMA loads on an mbarrier pipeline, wgmma tensor cores,
// producer/consumer warp specialisation.
//
// One CTA computes one [kBlockM x D] tile of O for one (query tile, head, batch) with three warpgroups:
//   warpgroup 0 (producer): one thread issues the TMA loads of Q once and of K/V tiles into a two-stage
//     ring; it waits on the "empty" barrier of a stage before refilling it. It gives most of its registers
//     away (setmaxnreg) to the consumers.
//   warpgroups 1, 2 (consumers): 64 query rows each. Per key tile: S = Q K^T (wgmma, both operands in
//     shared memory), online softmax in registers, O += P V (wgmma with P straight from registers), then
//     release the stage. Within a warpgroup the tiles are pipelined: S_{j+1} is issued together with
//     P_j V_j, and the softmax of tile j+1 runs while P_j V_j is still on the tensor cores (only the O
//     rescale waits for it). The consumers are not kept in lock step either, so one's softmax also overlaps
//     the other's GEMMs.
// Key tiles are walked from the last one down: with a causal mask the tiles that need masking come first
// and the rest run without mask checks.
#pragma once
#include <cmath>
#include <cstdint>

#include "flash_params.h"
#include "flash_primitives.cuh"
#include "flash_seq.cuh"
#include "flash_sm90_common.cuh"
#include "flash_sm90_wgmma.cuh"

namespace bridge_flash {
namespace sm90 {

// Tuning knob for experiments only (build.py passes $BRIDGE_FLASH_EXTRA_CFLAGS through).
#ifndef BRIDGE_FWD_SM90_CONSUMERS_D64
#define BRIDGE_FWD_SM90_CONSUMERS_D64 3
#endif
#ifndef BRIDGE_FWD_SM90_STAGES  // depth of the K/V ring
#define BRIDGE_FWD_SM90_STAGES 2
#endif

template <typename T, int D>
struct FwdConfig {
    // Consumer warpgroups (64 query rows each). d = 128 holds O (64 floats) and S (64) per thread and needs
    // ~240 registers: two consumers. d = 64 fits in 160 registers, so three share the register file.
    static constexpr int kConsumers = D == 64 ? BRIDGE_FWD_SM90_CONSUMERS_D64 : 2;
    static constexpr int kBlockM = 64 * kConsumers;      // query rows per CTA
    static constexpr int kBlockN = 128;                  // keys per tile
    static constexpr int kStages = BRIDGE_FWD_SM90_STAGES;
    static constexpr int kThreads = 128 * (kConsumers + 1);
    static constexpr int kQBytes = kBlockM * D * 2;
    static constexpr int kKVBytes = kBlockN * D * 2;
    static constexpr int kBarOffset = kQBytes + 2 * kStages * kKVBytes;
    static constexpr int kSmemBytes = kBarOffset + 8 * (1 + 4 * kStages) + 1024;  // barriers, slack to align the base
    static constexpr int kProducerRegs = 24;
    // 65536 registers per SM: 128 * 24 + kConsumers * 128 * kConsumerRegs must fit.
    static constexpr int kConsumerRegs = kConsumers == 3 ? 160 : 240;
    static_assert(D % 64 == 0, "head dim must be a multiple of 64 (one SW128 column block)");
};

struct FwdKernelParams {
    FwdParams p;
    CUtensorMap tma_q, tma_k, tma_v;
};

template <typename T, int D>
__global__ void __launch_bounds__(FwdConfig<T, D>::kThreads, 1)
    flash_fwd_sm90_kernel(const __grid_constant__ FwdKernelParams kp) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using C = FwdConfig<T, D>;
    const FwdParams& p = kp.p;
    extern __shared__ unsigned char smem_raw[];
    // TMA with 128-byte swizzle and the wgmma descriptors both want 1024-byte aligned tiles.
    unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
    T* sQ = reinterpret_cast<T*>(smem);
    auto sK = [&](int s) { return reinterpret_cast<T*>(smem + C::kQBytes + s * C::kKVBytes); };
    auto sV = [&](int s) { return reinterpret_cast<T*>(smem + C::kQBytes + (C::kStages + s) * C::kKVBytes); };
    uint64_t* bars = reinterpret_cast<uint64_t*>(smem + C::kBarOffset);
    uint64_t* bar_q = bars;
    uint64_t* bar_k_full = bars + 1;
    uint64_t* bar_v_full = bars + 1 + C::kStages;
    uint64_t* bar_k_empty = bars + 1 + 2 * C::kStages;
    uint64_t* bar_v_empty = bars + 1 + 3 * C::kStages;

    const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest causal tiles first
    const int hi = blockIdx.y, bi = blockIdx.z;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const SeqSpan q_span = seq_span(p.cu_seqlens_q, bi, p.seqlen_q);
    const SeqSpan k_span = seq_span(p.cu_seqlens_k, bi, p.seqlen_k);
    const int q_start = q_span.start, sq = q_span.len, k_start = k_span.start, sk = k_span.len;
    const int m0 = m_block * C::kBlockM;
    if (m0 >= sq) return;  // varlen: this sequence is shorter than max_seqlen_q
    const int hk = hi / (p.h / p.h_k);
    const int causal_offset = sk - sq;  // bottom-right alignment: row r sees columns <= r + sk - sq
    const int rows_here = min(C::kBlockM, sq - m0);
    int n_blocks = (sk + C::kBlockN - 1) / C::kBlockN;
    if (p.is_causal) n_blocks = min(n_blocks, max(0, m0 + rows_here + causal_offset + C::kBlockN - 1) / C::kBlockN);

    if (threadIdx.x == 0) {
        mbar_init(bar_q, 1);
        for (int s = 0; s < C::kStages; ++s) {
            mbar_init(bar_k_full + s, 1);
            mbar_init(bar_v_full + s, 1);
            mbar_init(bar_k_empty + s, 4 * C::kConsumers);  // one arrive per consumer warp
            mbar_init(bar_v_empty + s, 4 * C::kConsumers);
        }
        fence_mbar_init();
    }
    __syncthreads();

    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        // ---- producer ----
        reg_dealloc<C::kProducerRegs>();
        if (threadIdx.x == 0 && n_blocks > 0) {
            prefetch_tensormap(&kp.tma_q);
            prefetch_tensormap(&kp.tma_k);
            prefetch_tensormap(&kp.tma_v);
            const int q_row = (varlen ? q_start : 0) + m0, k_row0 = varlen ? k_start : 0;
            const int batch = varlen ? 0 : bi;
            mbar_arrive_expect_tx(bar_q, C::kQBytes);
#pragma unroll
            for (int blk = 0; blk < D / 64; ++blk)
                tma_load_4d(sQ + blk * C::kBlockM * 64, &kp.tma_q, bar_q, blk * 64, q_row, hi, batch);
            for (int it = 0; it < n_blocks; ++it) {
                const int n = n_blocks - 1 - it, s = it % C::kStages;
                const uint32_t phase = (it / C::kStages) & 1;
                if (it >= C::kStages) mbar_wait(bar_k_empty + s, phase ^ 1);
                mbar_arrive_expect_tx(bar_k_full + s, C::kKVBytes);
#pragma unroll
                for (int blk = 0; blk < D / 64; ++blk)
                    tma_load_4d(sK(s) + blk * C::kBlockN * 64, &kp.tma_k, bar_k_full + s, blk * 64,
                                k_row0 + n * C::kBlockN, hk, batch);
                if (it >= C::kStages) mbar_wait(bar_v_empty + s, phase ^ 1);
                mbar_arrive_expect_tx(bar_v_full + s, C::kKVBytes);
#pragma unroll
                for (int blk = 0; blk < D / 64; ++blk)
                    tma_load_4d(sV(s) + blk * C::kBlockN * 64, &kp.tma_v, bar_v_full + s, blk * 64,
                                k_row0 + n * C::kBlockN, hk, batch);
            }
        }
        return;
    }

    // ---- consumers ----
    reg_alloc<C::kConsumerRegs>();
    const int c = wg - 1;                 // consumer index: rows 64c .. 64c + 63 of the tile
    const int tid = threadIdx.x % 128;
    const int warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int row_base = m0 + 64 * c + 16 * warp + g;  // this thread's rows: row_base and row_base + 8

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
    const float scale_log2 = p.scale_softmax_log2;

    const uint32_t q_addr = smem_addr(sQ) + 64 * c * 128;
    if (n_blocks > 0) mbar_wait(bar_q, 0);
    float sacc[C::kBlockN / 2];
    uint32_t pa[C::kBlockN / 16][4];
    float corr[2];
    // Mask (tiles crossing the end or the diagonal), then the online softmax of tile n held in sacc: new row
    // maxima, corr = the factor O must be rescaled by, P = exp in place, running sums.
    auto softmax_tile = [&](int n) {
        const int col0 = n * C::kBlockN;
        const bool crosses_end = col0 + C::kBlockN > sk;
        const bool crosses_diag = p.is_causal && col0 + C::kBlockN - 1 > m0 + causal_offset;
        if (crosses_end || crosses_diag) {
#pragma unroll
            for (int j = 0; j < C::kBlockN / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int row = row_base + (e / 2) * 8;
                    const int col = col0 + 8 * j + 2 * t + (e & 1);
                    if (col >= sk || (p.is_causal && col > row + causal_offset)) sacc[4 * j + e] = -INFINITY;
                }
        }
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            float mx = row_max[hh];
#pragma unroll
            for (int j = 0; j < C::kBlockN / 8; ++j) mx = fmaxf(mx, fmaxf(sacc[4 * j + 2 * hh], sacc[4 * j + 2 * hh + 1]));
            mx = quad_max(mx);
            const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
            corr[hh] = exp2f(row_max[hh] * scale_log2 - m_scaled);
            row_max[hh] = mx;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < C::kBlockN / 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float x = exp2f(fmaf(sacc[4 * j + 2 * hh + e], scale_log2, -m_scaled));
                    sacc[4 * j + 2 * hh + e] = x;
                    sum += x;
                }
            row_sum[hh] = row_sum[hh] * corr[hh] + sum;
        }
    };
    // O *= corr, and P into wgmma A fragments (only once the previous O += P V has finished with both).
    auto rescale_and_pack = [&]() {
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[4 * j + e] *= corr[e / 2];
#pragma unroll
        for (int ks = 0; ks < C::kBlockN / 16; ++ks)
#pragma unroll
            for (int i = 0; i < 4; ++i) pa[ks][i] = ElemTraits<T>::pack(sacc[8 * ks + 2 * i], sacc[8 * ks + 2 * i + 1]);
    };
    auto issue_s = [&](int stage) {
        fence_regs(o);
        wgmma_fence();
        gemm_ss_k_major<T, C::kBlockN, D>(sacc, q_addr, C::kBlockM, smem_addr(sK(stage)), C::kBlockN);
        wgmma_commit();
    };
    auto issue_pv = [&](int stage) {
#pragma unroll
        for (int ks = 0; ks < C::kBlockN / 16; ++ks) {
            const uint64_t db = make_desc(smem_addr(sV(stage)) + ks * 16 * 128, C::kBlockN * 128, 1024);
            Wgmma<T, D, 1>::rs(o, pa[ks], db, 1);
        }
        wgmma_commit();
    };
    if (n_blocks > 0) {
        mbar_wait(bar_k_full, 0);
        issue_s(0);
        wgmma_wait<0>();
        fence_regs(sacc);
        __syncwarp();
        if (lane == 0) mbar_arrive(bar_k_empty);
        softmax_tile(n_blocks - 1);
        rescale_and_pack();
    }
    for (int it = 1; it < n_blocks; ++it) {
        const int s = it % C::kStages, prev = (it - 1) % C::kStages;
        const uint32_t phase = (it / C::kStages) & 1, prev_phase = ((it - 1) / C::kStages) & 1;
        mbar_wait(bar_k_full + s, phase);
        issue_s(s);
        mbar_wait(bar_v_full + prev, prev_phase);
        issue_pv(prev);  // O and P were last written before issue_s's wgmma fence
        wgmma_wait<1>();  // S of this tile; P V of the previous one still runs
        fence_regs(sacc);
        __syncwarp();
        if (lane == 0) mbar_arrive(bar_k_empty + s);
        softmax_tile(n_blocks - 1 - it);
        wgmma_wait<0>();
        fence_regs(o);
#pragma unroll
        for (int ks = 0; ks < C::kBlockN / 16; ++ks) fence_regs(pa[ks]);
        __syncwarp();
        if (lane == 0) mbar_arrive(bar_v_empty + prev);
        rescale_and_pack();
    }
    if (n_blocks > 0) {
        const int last = (n_blocks - 1) % C::kStages;
        mbar_wait(bar_v_full + last, ((n_blocks - 1) / C::kStages) & 1);
        fence_regs(o);
        wgmma_fence();
        issue_pv(last);
        wgmma_wait<0>();
        fence_regs(o);
        __syncwarp();
        if (lane == 0) mbar_arrive(bar_v_empty + last);
    }

    // ---- epilogue: normalise, LSE, stage O in this warpgroup's rows of the Q buffer, 16-byte stores ----
    T* out = static_cast<T*>(p.o) + (varlen ? q_start * p.o_row_stride : bi * p.o_batch_stride) +
             hi * p.o_head_stride;
    float* lse = p.lse + bi * p.lse_batch_stride + hi * p.lse_head_stride + q_start;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        const float total = quad_sum(row_sum[hh]);
        const bool empty = !(total > 0.f);  // no admissible key: zeros and lse = -inf
        const float inv = empty ? 0.f : 1.f / total;
        const int row = row_base + 8 * hh;
        if (t == 0 && row < sq) lse[row] = empty ? -INFINITY : row_max[hh] * p.scale_softmax + logf(total);
        const int local = row - m0;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            *reinterpret_cast<uint32_t*>(smem + sw128_offset(C::kBlockM, local, 8 * j + 2 * t)) =
                ElemTraits<T>::pack(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
        }
    }
    named_sync(1 + c, 128);  // this warpgroup's 64 staged rows are complete
    constexpr int kChunks = 64 * D / 8;
#pragma unroll
    for (int i = 0; i < kChunks / 128; ++i) {
        const int idx = i * 128 + tid;
        const int local = 64 * c + idx / (D / 8);
        const int chunk = idx % (D / 8);
        if (m0 + local < sq) {
            *reinterpret_cast<uint4*>(out + static_cast<int64_t>(m0 + local) * p.o_row_stride + chunk * 8) =
                *reinterpret_cast<const uint4*>(smem + sw128_offset(C::kBlockM, local, chunk * 8));
        }
    }
#endif
}

}  // namespace sm90

// Returns false when a TMA descriptor cannot be made for these tensors (the caller then runs the mma.sync
// kernel instead).
template <typename T, int D>
bool run_flash_fwd_sm90(const FwdParams& params, cudaStream_t stream) {
    using namespace sm90;
    using C = FwdConfig<T, D>;
    FwdKernelParams kp;
    kp.p = params;
    const bool varlen = params.cu_seqlens_q != nullptr;
    const int64_t rows_q = varlen ? params.total_q : params.seqlen_q;
    const int64_t rows_k = varlen ? params.total_k : params.seqlen_k;
    const int batch = varlen ? 1 : params.b;
    if (!make_tensor_map(&kp.tma_q, params.q, D, rows_q, params.h, batch, params.q_row_stride, params.q_head_stride,
                         params.q_batch_stride, C::kBlockM) ||
        !make_tensor_map(&kp.tma_k, params.k, D, rows_k, params.h_k, batch, params.k_row_stride,
                         params.k_head_stride, params.k_batch_stride, C::kBlockN) ||
        !make_tensor_map(&kp.tma_v, params.v, D, rows_k, params.h_k, batch, params.v_row_stride,
                         params.v_head_stride, params.v_batch_stride, C::kBlockN)) {
        return false;
    }
    const dim3 grid((params.seqlen_q + C::kBlockM - 1) / C::kBlockM, params.h, params.b);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return true;
    auto kernel = flash_fwd_sm90_kernel<T, D>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes);
    kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(kp);
    return true;
}

}  // namespace bridge_flash
