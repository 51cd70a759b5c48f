// Definition of run_flash_bwd (declared in flash_launch.h): pre-pass, main kernel, post-pass on one stream.
// Included only by the csrc/instantiations/flash_bwd_*.cu translation units, one per (dtype, head dim).
#pragma once
#include <cuda_runtime.h>

#include "flash_bwd_kernel.cuh"
#include "flash_bwd_prepost.cuh"
#include "flash_launch.h"
#include "flash_params.h"

namespace bridge_flash {

/// Expects: dq_accum with room for [rows, h, D] fp32 (rows = b * seqlen_q, or total_q for varlen; the
/// pre-pass zeroes it), dsoftmax_sum laid out like lse, and, when deterministic, workspace pointing at
/// b * h * ceil(seqlen_q / 32) zeroed int32 counters. Launch errors are left for cudaGetLastError.
template <typename T, int D>
void run_flash_bwd(BwdParams& params, cudaStream_t stream) {
    using Config = bwd::BwdConfig<T, D>;
    if (params.b == 0 || params.h == 0) return;
    if (params.seqlen_q > 0) {
        const dim3 grid((params.seqlen_q + bwd::kPrepostRows - 1) / bwd::kPrepostRows, params.h, params.b);
        bwd::flash_bwd_preprocess_kernel<T, D><<<grid, bwd::kPrepostThreads, 0, stream>>>(params);
    }
    if (params.seqlen_k > 0) {
        auto kernel = bwd::flash_bwd_main_kernel<T, D>;
        // Above 48 KB of dynamic shared memory a kernel must opt in; cheap enough to do on every call.
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Config::kSmemBytes);
        const dim3 grid((params.seqlen_k + Config::kBlockN - 1) / Config::kBlockN, params.h_k, params.b);
        kernel<<<grid, Config::kThreads, Config::kSmemBytes, stream>>>(params);
    }
    if (params.seqlen_q > 0) {
        const dim3 grid((params.seqlen_q + bwd::kPrepostRows - 1) / bwd::kPrepostRows, params.h, params.b);
        bwd::flash_bwd_postprocess_kernel<T, D><<<grid, bwd::kPrepostThreads, 0, stream>>>(params);
    }
}

}  // namespace bridge_flash
