// Backward kernel instantiation: fp16, head dim 64. One per file so instantiations compile in parallel.
#include "../flash_bwd_launch.cuh"

namespace bridge_flash {
template void run_flash_bwd<__half, 64>(BwdParams& params, cudaStream_t stream);
}  // namespace bridge_flash
