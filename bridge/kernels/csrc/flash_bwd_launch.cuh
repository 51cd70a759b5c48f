// Definition of run_flash_bwd (declared in flash_launch.h): pre-pass, main kernel, post-pass on one stream.
// Included only by the csrc/instantiations/flash_bwd_*.cu translation units, one per (dtype, head dim).
#pragma once
#include <cuda_runtime.h>

#include "flash_bwd_kernel.cuh"
#include "flash_bwd_prepost.cuh"
#include "flash_launch.h"
#include "flash_params.h"

namespace bridge_flash {
namespace bwd {

template <typename T, int D, int kBlockM, bool kHeavyFirst>
void launch_main(BwdParams& params, cudaStream_t stream) {
    using Config = BwdConfig<T, D, kBlockM>;
    const bool mods = params.softcap > 0.f || params.alibi_slopes != nullptr;  // soft-cap / ALiBi
    auto kernel = mods ? flash_bwd_main_kernel<T, D, kBlockM, kHeavyFirst, true>
                       : flash_bwd_main_kernel<T, D, kBlockM, kHeavyFirst, false>;
    // Above 48 KB of dynamic shared memory a kernel must opt in; cheap enough to do on every call.
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Config::kSmemBytes);
    const int n_tiles = (params.seqlen_k + Config::kBlockN - 1) / Config::kBlockN;
    const dim3 grid = kHeavyFirst ? dim3(params.h_k * params.b, n_tiles, 1) : dim3(n_tiles, params.h_k, params.b);
    kernel<<<grid, Config::kThreads, Config::kSmemBytes, stream>>>(params);
}

/// Causal: heavy-first grid (H100: GQA b2 h32/4 d128 s8192 0.75x -> 0.88x of FA2's backward, others within
/// noise). grid.y holds at most 65535 K/V tiles (8M keys); longer sequences keep the default order.
template <typename T, int D, int kBlockM>
void launch_ordered(BwdParams& params, cudaStream_t stream) {
    const int n_tiles = (params.seqlen_k + BwdConfig<T, D, kBlockM>::kBlockN - 1) / BwdConfig<T, D, kBlockM>::kBlockN;
    if (params.is_causal && n_tiles <= 65535) {
        launch_main<T, D, kBlockM, true>(params, stream);
    } else {
        launch_main<T, D, kBlockM, false>(params, stream);
    }
}

}  // namespace bwd

/// Expects: dq_accum with room for [rows, h, D] fp32 (rows = b * seqlen_q, or total_q for varlen; the
/// pre-pass zeroes it), dsoftmax_sum laid out like lse, and, when deterministic, workspace pointing at
/// b * h * ceil(seqlen_q / 32) zeroed int32 counters. Launch errors are left for cudaGetLastError.
template <typename T, int D>
void run_flash_bwd(BwdParams& params, cudaStream_t stream) {
    if (params.b == 0 || params.h == 0) return;
    if (params.seqlen_q > 0) {
        const dim3 grid((params.seqlen_q + bwd::kPrepostRows - 1) / bwd::kPrepostRows, params.h, params.b);
        bwd::flash_bwd_preprocess_kernel<T, D><<<grid, bwd::kPrepostThreads, 0, stream>>>(params);
    }
    if (params.seqlen_k > 0) {
        // Q tile: d = 64 takes 128 rows (H100: ~10% faster than 64); d = 128 has the shared memory for 64
        // (K, V and double-buffered Q, dO, plus P, dS: 160 KB).
        constexpr int kBlockM = D == 64 ? 128 : 64;
        bwd::launch_ordered<T, D, kBlockM>(params, stream);
    }
    if (params.seqlen_q > 0) {
        const dim3 grid((params.seqlen_q + bwd::kPrepostRows - 1) / bwd::kPrepostRows, params.h, params.b);
        bwd::flash_bwd_postprocess_kernel<T, D><<<grid, bwd::kPrepostThreads, 0, stream>>>(params);
    }
}

}  // namespace bridge_flash
