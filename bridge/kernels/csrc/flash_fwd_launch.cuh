// Definition of run_flash_fwd (declared in flash_launch.h), the mma.sync forward's launcher (sm_80+, and the
// fallback on sm_90). Included only by the csrc/instantiations/flash_fwd_*.cu translation units.
#pragma once
#include <cuda_runtime.h>

#include "flash_fwd_kernel.cuh"
#include "flash_launch.h"
#include "flash_params.h"

namespace bridge_flash {

template <typename T, int D>
void run_flash_fwd(FwdParams& params, cudaStream_t stream) {
    using S = FwdShape<D>;
    constexpr int kSmemBytes = S::kSmemElems * static_cast<int>(sizeof(T));
    const dim3 grid((params.seqlen_q + S::kBlockM - 1) / S::kBlockM, params.h, params.b);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    const bool mods = params.softcap > 0.f || params.alibi_slopes != nullptr;
    auto kernel = mods ? flash_fwd_kernel<T, D, true> : flash_fwd_kernel<T, D, false>;
    if (kSmemBytes > 48 * 1024) {
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    }
    kernel<<<grid, S::kThreads, kSmemBytes, stream>>>(params);
}

}  // namespace bridge_flash
