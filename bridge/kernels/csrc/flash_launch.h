// Launcher declarations: the only link between the binding (.cpp, built against torch) and the kernel
// translation units (csrc/instantiations/*.cu, torch-free). Each .cu explicitly instantiates one of these
// for one (element type, head dim) pair.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "flash_params.h"

namespace bridge_flash {

// T is __nv_bfloat16 or __half, D the head dim (64 or 128). Launches on `stream`; launch errors are left
// for the caller to read with cudaGetLastError (the binding does, through C10_CUDA_KERNEL_LAUNCH_CHECK).
template <typename T, int D>
void run_flash_fwd(FwdParams& params, cudaStream_t stream);

template <typename T, int D>
void run_flash_bwd(BwdParams& params, cudaStream_t stream);

// Hopper (sm_90a) kernels: TMA + wgmma + warp specialisation. They return false, launching nothing, when the
// tensors do not fit a TMA descriptor; the binding then runs the mma.sync kernels above.
template <typename T, int D>
bool run_flash_fwd_sm90(const FwdParams& params, cudaStream_t stream);

template <typename T, int D>
bool run_flash_bwd_sm90(BwdParams& params, cudaStream_t stream);

}  // namespace bridge_flash
