// Flash-attention backward for Hopper (sm_90a): TMA loads on an mbarrier pipeline, wgmma tensor cores,
// producer/consumer warp specialisation. Runs between the shared pre-pass (D = rowsum(dO * O), zeroed fp32
// dQ accumulator) and post-pass (dQ = scale * accumulator, cast) of flash_bwd_prepost.cuh.
//
// One CTA owns one tile of kBlockN = 128 keys of one K/V head and loops over every query tile of every query
// head in its GQA group, so dK and dV are complete in registers at the end (no atomics, no repeated K/V).
//   warpgroup 0 (producer): warp 0 streams Q and dO tiles (TMA) plus their LSE and D rows into a two-stage
//     ring; K and V are loaded once.
//   warpgroups 1, 2 (consumers): 64 keys each. The scores are computed transposed, S^T = K Q^T, so the
//     probabilities P^T and dS^T come out of the accumulators already in the A-operand layout of
//     dV += P^T dO and dK += dS^T Q (wgmma with A from registers). dS is written to shared memory
//     (stmatrix, transposed back) for dQ = dS K. Each warp parks its dQ fragment in shared memory and one
//     lane hands it to the copy engine as TMA reduce-adds into the fp32 accumulator in global memory, so
//     the reductions cost the math warps two instructions per tile instead of a stream of atomics.
// dQ's product: d = 128 splits dQ's columns between the two consumers (each sums over all 128 keys, so they
// meet at a named barrier once both halves of dS are in shared memory); d = 64 gives each consumer its own
// 64 keys and the two partial sums both go to the accumulator.
#pragma once
#include <cmath>
#include <cstdint>

#include "flash_bwd_prepost.cuh"
#include "flash_params.h"
#include "flash_primitives.cuh"
#include "flash_sm90_common.cuh"
#include "flash_sm90_wgmma.cuh"

namespace bridge_flash {
namespace sm90 {

// Tuning knobs for experiments only (build.py passes $BRIDGE_FLASH_EXTRA_CFLAGS through).
#ifndef BRIDGE_BWD_SM90_BLOCKM_D64
#define BRIDGE_BWD_SM90_BLOCKM_D64 64
#endif
#ifndef BRIDGE_BWD_SM90_STAGES_D64  // depth of the Q/dO ring at d = 64 (d = 128 has shared memory for 2)
#define BRIDGE_BWD_SM90_STAGES_D64 2
#endif

template <typename T, int D>
struct BwdConfig {
    static constexpr int kConsumers = 2;
    static constexpr int kBlockN = 64 * kConsumers;  // keys per CTA
    // queries per step: d = 128 has the registers for 64 only (dK and dV alone take 128 per thread); at d = 64,
    // 128 queries (no dQ split between the consumers) measured 7-20% slower than 64 on the H100.
    static constexpr int kBlockM = D == 64 ? BRIDGE_BWD_SM90_BLOCKM_D64 : 64;
    static constexpr int kDqRowBlocks = kBlockM / 64;  // m64 wgmma row blocks of dQ
    static constexpr int kStages = D == 64 ? BRIDGE_BWD_SM90_STAGES_D64 : 2;
    static constexpr int kThreads = 128 * (kConsumers + 1);
    static constexpr bool kSplitDqCols = D == 128;   // else each consumer sums dQ over its own keys
    static constexpr int kDqKeys = kSplitDqCols ? kBlockN : 64;
    static constexpr int kKVBytes = kBlockN * D * 2;
    static constexpr int kQBytes = kBlockM * D * 2;
    static constexpr int kDSBytes = kBlockM * kBlockN * 2;
    // shared memory: K, V, Q[stages], dO[stages], dS[2], lse[stages], D[stages], barriers
    static constexpr int kOffV = kKVBytes;
    static constexpr int kOffQ = 2 * kKVBytes;
    static constexpr int kOffDO = kOffQ + kStages * kQBytes;
    static constexpr int kOffDS = kOffDO + kStages * kQBytes;
    // dQ parking: per consumer warp, its 16 rows of each m64 row block of dQ, 64 fp32 columns, as two TMA
    // boxes of 16 rows x 32 columns (2 KB each, 128-byte swizzle)
    static constexpr int kOffDq = kOffDS + 2 * kDSBytes;
    static constexpr int kDqWarpFloats = kDqRowBlocks * 16 * 64;
    static constexpr int kOffLse = kOffDq + 4 * kConsumers * kDqWarpFloats * 4;
    static constexpr int kOffDsum = kOffLse + kStages * kBlockM * 4;
    static constexpr int kOffBar = kOffDsum + kStages * kBlockM * 4;
    static constexpr int kSmemBytes = kOffBar + 128 + 1024;
    static constexpr int kProducerRegs = 40;
    static constexpr int kConsumerRegs = 232;
    static_assert(kOffDq % 1024 == 0, "parked dQ boxes must sit on 1024-byte boundaries (128-byte swizzle)");
};

struct BwdKernelParams {
    BwdParams p;
    CUtensorMap tma_q, tma_k, tma_v, tma_do;
    CUtensorMap tma_dq;  // the fp32 dQ accumulator, target of the parked tiles' reduce-adds
};

// A warp's parked dQ tile, rows r = 0..15 (+ 16 * row block) of 64 floats, as two boxes of 32 columns with
// 128-byte rows: 16-byte chunk k (of 16) of row r sits in box k / 8 at chunk position (k % 8) ^ (r & 7), the
// 128-byte swizzle of the dQ tensor map; the 8 rows of a fragment store land in distinct banks.
__device__ __forceinline__ int dq_park_offset(int r, int k) { return (k >> 3) * 512 + r * 32 + (((k & 7) ^ (r & 7)) << 2); }

template <typename T, int D>
__global__ void __launch_bounds__(BwdConfig<T, D>::kThreads, 1)
    flash_bwd_sm90_kernel(const __grid_constant__ BwdKernelParams kp) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using C = BwdConfig<T, D>;
    const BwdParams& p = kp.p;
    extern __shared__ unsigned char smem_raw[];
    unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
    T* sK = reinterpret_cast<T*>(smem);
    T* sV = reinterpret_cast<T*>(smem + C::kOffV);
    auto sQ = [&](int s) { return reinterpret_cast<T*>(smem + C::kOffQ + s * C::kQBytes); };
    auto sDO = [&](int s) { return reinterpret_cast<T*>(smem + C::kOffDO + s * C::kQBytes); };
    float* s_lse = reinterpret_cast<float*>(smem + C::kOffLse);    // [stages][kBlockM], lse * log2(e)
    float* s_dsum = reinterpret_cast<float*>(smem + C::kOffDsum);  // [stages][kBlockM]
    uint64_t* bars = reinterpret_cast<uint64_t*>(smem + C::kOffBar);
    uint64_t* bar_kv = bars;
    uint64_t* bar_q_full = bars + 1;
    uint64_t* bar_do_full = bars + 1 + C::kStages;
    uint64_t* bar_empty = bars + 1 + 2 * C::kStages;

    // Grid (key tiles, h_k, b): neighbouring CTAs share a head, so its Q and dO tiles are read from L2. (A
    // heavy-first causal order, (h_k * b, key tiles), measured 10-20% slower on the H100: more heads' Q/dO
    // streams at once.)
    const int n_block = blockIdx.x, hk = blockIdx.y, bi = blockIdx.z;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const SeqSpan q_span = seq_span(p.cu_seqlens_q, bi, p.seqlen_q);
    const SeqSpan k_span = seq_span(p.cu_seqlens_k, bi, p.seqlen_k);
    const int q_start = q_span.start, sq = q_span.len, k_start = k_span.start, sk = k_span.len;
    const int n0 = n_block * C::kBlockN;
    if (n0 >= sk) return;  // varlen: this sequence is shorter than max_seqlen_k
    const int group = p.h / p.h_k;
    const int causal_offset = sk - sq;
    // Query tiles that see these keys: all, or (causal) those with a row r >= n0 - (sk - sq).
    const int m_begin = p.is_causal ? max(0, n0 - causal_offset) / C::kBlockM : 0;
    const int m_end = (sq + C::kBlockM - 1) / C::kBlockM;
    const int n_m = max(0, m_end - m_begin);
    const int n_iters = group * n_m;

    if (threadIdx.x == 0) {
        mbar_init(bar_kv, 1);
        for (int s = 0; s < C::kStages; ++s) {
            mbar_init(bar_q_full + s, 1);
            mbar_init(bar_do_full + s, 1 + 32);  // the TMA thread's expect_tx + every producer lane's lse/D rows
            mbar_init(bar_empty + s, 4 * C::kConsumers);
        }
        fence_mbar_init();
    }
    __syncthreads();

    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        // ---- producer (warp 0) ----
        reg_dealloc<C::kProducerRegs>();
        if (threadIdx.x >= 32 || n_iters == 0) return;
        const int lane = threadIdx.x;
        const int batch = varlen ? 0 : bi;
        const int k_row = (varlen ? k_start : 0) + n0;
        if (lane == 0) {
            prefetch_tensormap(&kp.tma_q);
            prefetch_tensormap(&kp.tma_do);
            mbar_arrive_expect_tx(bar_kv, 2 * C::kKVBytes);
#pragma unroll
            for (int blk = 0; blk < D / 64; ++blk) {
                tma_load_4d(sK + blk * C::kBlockN * 64, &kp.tma_k, bar_kv, blk * 64, k_row, hk, batch);
                tma_load_4d(sV + blk * C::kBlockN * 64, &kp.tma_v, bar_kv, blk * 64, k_row, hk, batch);
            }
        }
        for (int it = 0; it < n_iters; ++it) {
            const int hq = hk * group + it / n_m;
            const int m = m_begin + it % n_m;
            const int s = it % C::kStages;
            const uint32_t phase = (it / C::kStages) & 1;
            if (it >= C::kStages) mbar_wait(bar_empty + s, phase ^ 1);
            const int q_row = (varlen ? q_start : 0) + m * C::kBlockM;
            if (lane == 0) {
                mbar_arrive_expect_tx(bar_q_full + s, C::kQBytes);
#pragma unroll
                for (int blk = 0; blk < D / 64; ++blk)
                    tma_load_4d(sQ(s) + blk * C::kBlockM * 64, &kp.tma_q, bar_q_full + s, blk * 64, q_row, hq, batch);
                mbar_arrive_expect_tx(bar_do_full + s, C::kQBytes);
#pragma unroll
                for (int blk = 0; blk < D / 64; ++blk)
                    tma_load_4d(sDO(s) + blk * C::kBlockM * 64, &kp.tma_do, bar_do_full + s, blk * 64, q_row, hq,
                                batch);
            }
            // LSE (as log2) and D rows. Rows past the sequence, and rows that saw no key (lse = -inf), get
            // +inf so their probabilities are exactly 0.
            const int64_t row_base = static_cast<int64_t>(bi) * p.lse_batch_stride + hq * p.lse_head_stride + q_start;
#pragma unroll
            for (int i = 0; i < C::kBlockM / 32; ++i) {
                const int r = i * 32 + lane, row = m * C::kBlockM + r;
                float l = INFINITY, dd = 0.f;
                if (row < sq) {
                    const float v = p.lse[row_base + row];
                    l = v == -INFINITY ? INFINITY : v * 1.4426950408889634f;
                    dd = p.dsoftmax_sum[row_base + row];
                }
                s_lse[s * C::kBlockM + r] = l;
                s_dsum[s * C::kBlockM + r] = dd;
            }
            mbar_arrive(bar_do_full + s);
        }
        return;
    }

    // ---- consumers ----
    reg_alloc<C::kConsumerRegs>();
    const int c = wg - 1;
    const int tid = threadIdx.x % 128;
    const int warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int key_base = n0 + 64 * c + 16 * warp + g;  // this thread's keys: key_base and key_base + 8
    const float scale_log2 = p.scale_softmax_log2;

    float dv[D / 2], dk[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dv[i] = dk[i] = 0.f;

    const uint32_t k_addr = smem_addr(sK) + 64 * c * 128;  // this consumer's 64 key rows (K-major A operand)
    const uint32_t v_addr = smem_addr(sV) + 64 * c * 128;
    // dQ partials go to the fp32 accumulator [rows, h, D]: each warp parks its fragment in shared memory and
    // lane 0 issues TMA reduce-adds of it (asynchronous: the parking buffer is reused only once they have read
    // it). Rows past the sequence hold exact zeros (their P and dS are 0), so adding them is harmless, and the
    // map's bounds clip rows past the accumulator.
    const int dq_col0 = C::kSplitDqCols ? 64 * c : 0;
    float* dq_park = reinterpret_cast<float*>(smem + C::kOffDq) + (4 * c + warp) * C::kDqWarpFloats;
    float dq[C::kDqRowBlocks][32];
    auto park_and_reduce_dq = [&](int tile_m0, int head) {
        if (lane == 0) bulk_wait_read();  // the previous reduce has read the parking buffer
        __syncwarp();
#pragma unroll
        for (int rb = 0; rb < C::kDqRowBlocks; ++rb)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int r = g + 8 * hh;
                    *reinterpret_cast<float2*>(dq_park + rb * 16 * 64 + dq_park_offset(r, 2 * j + t / 2) + 2 * (t & 1)) =
                        make_float2(dq[rb][4 * j + 2 * hh], dq[rb][4 * j + 2 * hh + 1]);
                }
        fence_proxy_async();  // the copy engine reads what the generic proxy wrote
        __syncwarp();
        if (lane == 0) {
            const int row0 = static_cast<int>(bwd::accum_row(varlen, bi, q_start, p.seqlen_q, tile_m0 + 16 * warp));
#pragma unroll
            for (int rb = 0; rb < C::kDqRowBlocks; ++rb)
#pragma unroll
                for (int box = 0; box < 2; ++box)
                    tma_reduce_add_3d(&kp.tma_dq, dq_park + rb * 16 * 64 + box * 512, dq_col0 + 32 * box,
                                      row0 + 64 * rb, head);
            bulk_commit();
        }
    };
    if (n_iters > 0) mbar_wait(bar_kv, 0);
    for (int it = 0; it < n_iters; ++it) {
        const int hq = hk * group + it / n_m;
        const int m = m_begin + it % n_m;
        const int m0 = m * C::kBlockM;
        const int s = it % C::kStages;
        const uint32_t phase = (it / C::kStages) & 1;
        const uint32_t q_addr = smem_addr(sQ(s)), do_addr = smem_addr(sDO(s));

        // S^T = K Q^T and dP^T = V dO^T, both [64 keys x kBlockM queries].
        float sacc[C::kBlockM / 2], dpacc[C::kBlockM / 2];
        mbar_wait(bar_q_full + s, phase);
        mbar_wait(bar_do_full + s, phase);
        wgmma_fence();
        gemm_ss_k_major<T, C::kBlockM, D>(sacc, k_addr, C::kBlockN, q_addr, C::kBlockM);
        wgmma_commit();
        gemm_ss_k_major<T, C::kBlockM, D>(dpacc, v_addr, C::kBlockN, do_addr, C::kBlockM);
        wgmma_commit();
        wgmma_wait<1>();
        fence_regs(sacc);

        // P^T = exp2(S^T * scale * log2(e) - lse * log2(e)); masked entries are 0.
        const float* lse_s = s_lse + s * C::kBlockM;
        const float* dsum_s = s_dsum + s * C::kBlockM;
        const bool crosses_end = n0 + C::kBlockN > sk;
        const bool crosses_diag = p.is_causal && m0 + causal_offset < n0 + C::kBlockN - 1;
#pragma unroll
        for (int j = 0; j < C::kBlockM / 8; ++j) {
            const float2 l = *reinterpret_cast<const float2*>(lse_s + 8 * j + 2 * t);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = exp2f(fmaf(sacc[4 * j + e], scale_log2, -((e & 1) ? l.y : l.x)));
                if (crosses_end || crosses_diag) {
                    const int key = key_base + (e / 2) * 8;
                    const int q = m0 + 8 * j + 2 * t + (e & 1);
                    if (key >= sk || (p.is_causal && key > q + causal_offset)) x = 0.f;
                }
                sacc[4 * j + e] = x;
            }
        }
        wgmma_wait<0>();
        fence_regs(dpacc);
        // dS^T = P^T * (dP^T - D)
        uint32_t pa[C::kBlockM / 16][4], dsa[C::kBlockM / 16][4];
#pragma unroll
        for (int j = 0; j < C::kBlockM / 8; ++j) {
            const float2 dd = *reinterpret_cast<const float2*>(dsum_s + 8 * j + 2 * t);
#pragma unroll
            for (int e = 0; e < 4; ++e) dpacc[4 * j + e] = sacc[4 * j + e] * (dpacc[4 * j + e] - ((e & 1) ? dd.y : dd.x));
        }
#pragma unroll
        for (int ks = 0; ks < C::kBlockM / 16; ++ks)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                pa[ks][i] = ElemTraits<T>::pack(sacc[8 * ks + 2 * i], sacc[8 * ks + 2 * i + 1]);
                dsa[ks][i] = ElemTraits<T>::pack(dpacc[8 * ks + 2 * i], dpacc[8 * ks + 2 * i + 1]);
            }

        // dV += P^T dO, dK += dS^T Q (dO, Q are N-major B operands: rows are queries).
        wgmma_fence();
        fence_regs(dv);
        fence_regs(dk);
#pragma unroll
        for (int ks = 0; ks < C::kBlockM / 16; ++ks) {
            Wgmma<T, D, 1>::rs(dv, pa[ks], make_desc(do_addr + ks * 16 * 128, C::kBlockM * 128, 1024), 1);
        }
#pragma unroll
        for (int ks = 0; ks < C::kBlockM / 16; ++ks) {
            Wgmma<T, D, 1>::rs(dk, dsa[ks], make_desc(q_addr + ks * 16 * 128, C::kBlockM * 128, 1024), 1);
        }
        wgmma_commit();

        // dS (queries x keys) into shared memory: stmatrix.trans turns each 8x8 block of dS^T around.
        // Layout: SW128 tile [kBlockM rows][kBlockN keys], this consumer's keys in column block c.
        unsigned char* sDS = smem + C::kOffDS + (it & 1) * C::kDSBytes;
        {
            const int mat = lane / 8, rr = lane % 8;
            const int chunk = 2 * warp + (mat & 1);
#pragma unroll
            for (int j = 0; j < C::kBlockM / 8; j += 2) {
                const int q = 8 * (j + mat / 2) + rr;
                const uint32_t addr = smem_addr(sDS) + c * C::kBlockM * 128 + q * 128 + ((chunk ^ (q & 7)) << 4);
                // registers: (q block j, keys g) (q block j, keys g+8) (q block j+1, keys g) (j+1, g+8)
                stmatrix_x4_trans(addr, dsa[j / 2][0], dsa[j / 2][1], dsa[j / 2][2], dsa[j / 2][3]);
            }
        }
        fence_proxy_async();
        if constexpr (C::kSplitDqCols) {
            named_sync(1, 128 * C::kConsumers);  // both halves of dS are in shared memory
        } else {
            named_sync(1 + c, 128);
        }

        // dQ (partial) = dS K: [kBlockM x 64] per consumer, in m64 row blocks.
#pragma unroll
        for (int rb = 0; rb < C::kDqRowBlocks; ++rb) {
            const int key0 = C::kSplitDqCols ? 0 : 64 * c;        // keys summed by this consumer
            const int col_blk = C::kSplitDqCols ? c : 0;          // head-dim column block of dQ
            const uint32_t ds_addr = smem_addr(sDS);
            const uint32_t kb_addr = smem_addr(sK) + col_blk * C::kBlockN * 128;
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < C::kDqKeys / 16; ++kk) {
                const int key = key0 + 16 * kk;
                const uint64_t da = make_desc(
                    ds_addr + (key / 64) * C::kBlockM * 128 + rb * 64 * 128 + ((key % 64) / 16) * 32, 16, 1024);
                const uint64_t db = make_desc(kb_addr + key * 128, C::kBlockN * 128, 1024);
                Wgmma<T, 64, 1>::ss(dq[rb], da, db, kk > 0 ? 1 : 0);
            }
        }
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int rb = 0; rb < C::kDqRowBlocks; ++rb) fence_regs(dq[rb]);
        fence_regs(dv);
        fence_regs(dk);
        __syncwarp();
        if (lane == 0) mbar_arrive(bar_empty + s);

        park_and_reduce_dq(m0, hq);
    }
    if (lane == 0) bulk_wait_all();  // the reduce-adds have read shared memory before the CTA exits

    // ---- epilogue: dK = scale * dS^T Q, dV; this consumer's 64 keys ----
    T* dk_out = static_cast<T*>(p.dk) + (varlen ? k_start * p.dk_row_stride : bi * p.dk_batch_stride) + hk * p.dk_head_stride;
    T* dv_out = static_cast<T*>(p.dv) + (varlen ? k_start * p.dv_row_stride : bi * p.dv_batch_stride) + hk * p.dv_head_stride;
    const float scale = p.scale_softmax;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        const int key = key_base + 8 * hh;
        if (key < sk) {
#pragma unroll
            for (int j = 0; j < D / 8; ++j) {
                const int col = 8 * j + 2 * t;
                *reinterpret_cast<uint32_t*>(dv_out + static_cast<int64_t>(key) * p.dv_row_stride + col) =
                    ElemTraits<T>::pack(dv[4 * j + 2 * hh], dv[4 * j + 2 * hh + 1]);
                *reinterpret_cast<uint32_t*>(dk_out + static_cast<int64_t>(key) * p.dk_row_stride + col) =
                    ElemTraits<T>::pack(dk[4 * j + 2 * hh] * scale, dk[4 * j + 2 * hh + 1] * scale);
            }
        }
    }
#endif
}

}  // namespace sm90

/// The Hopper backward: pre-pass, main kernel, post-pass on one stream (same buffers as run_flash_bwd;
/// the deterministic mode stays on the mma.sync kernel). Returns false, launching nothing, when the tensors
/// do not fit a TMA descriptor.
template <typename T, int D>
bool run_flash_bwd_sm90(BwdParams& params, cudaStream_t stream) {
    using namespace sm90;
    using C = BwdConfig<T, D>;
    if (params.deterministic) return false;
    BwdKernelParams kp;
    const bool varlen = params.cu_seqlens_q != nullptr;
    const int64_t rows_q = varlen ? params.total_q : params.seqlen_q;
    const int64_t rows_k = varlen ? params.total_k : params.seqlen_k;
    const int batch = varlen ? 1 : params.b;
    if (params.b == 0 || params.h == 0) return true;
    if (rows_q <= 0 || rows_k <= 0) return false;  // nothing to map; the mma.sync path handles empty inputs
    if (!make_tensor_map(&kp.tma_q, params.q, D, rows_q, params.h, batch, params.q_row_stride, params.q_head_stride,
                         params.q_batch_stride, C::kBlockM) ||
        !make_tensor_map(&kp.tma_do, params.dout, D, rows_q, params.h, batch, params.do_row_stride,
                         params.do_head_stride, params.do_batch_stride, C::kBlockM) ||
        !make_tensor_map(&kp.tma_k, params.k, D, rows_k, params.h_k, batch, params.k_row_stride,
                         params.k_head_stride, params.k_batch_stride, C::kBlockN) ||
        !make_tensor_map(&kp.tma_v, params.v, D, rows_k, params.h_k, batch, params.v_row_stride,
                         params.v_head_stride, params.v_batch_stride, C::kBlockN)) {
        return false;
    }
    const int64_t rows_accum = varlen ? params.total_q : static_cast<int64_t>(params.b) * params.seqlen_q;
    if (!make_dq_accum_map(&kp.tma_dq, params.dq_accum, D, rows_accum, params.h, 16)) return false;
    kp.p = params;
    if (params.seqlen_q > 0) {
        const dim3 grid((params.seqlen_q + bwd::kPrepostRows - 1) / bwd::kPrepostRows, params.h, params.b);
        bwd::flash_bwd_preprocess_kernel<T, D><<<grid, bwd::kPrepostThreads, 0, stream>>>(params);
    }
    if (params.seqlen_k > 0) {
        auto kernel = flash_bwd_sm90_kernel<T, D>;
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes);
        const dim3 grid((params.seqlen_k + C::kBlockN - 1) / C::kBlockN, params.h_k, params.b);
        kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(kp);
    }
    if (params.seqlen_q > 0) {
        const dim3 grid((params.seqlen_q + bwd::kPrepostRows - 1) / bwd::kPrepostRows, params.h, params.b);
        bwd::flash_bwd_postprocess_kernel<T, D><<<grid, bwd::kPrepostThreads, 0, stream>>>(params);
    }
    return true;
}

}  // namespace bridge_flash
