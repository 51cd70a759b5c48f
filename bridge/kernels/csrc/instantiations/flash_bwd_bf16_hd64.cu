// Backward kernel instantiation: bf16, head dim 64. One per file so instantiations compile in parallel.
#include "../flash_bwd_launch.cuh"

namespace bridge_flash {
template void run_flash_bwd<__nv_bfloat16, 64>(BwdParams& params, cudaStream_t stream);
}  // namespace bridge_flash
