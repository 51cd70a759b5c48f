// Backward kernel instantiation: fp16, head dim 128. One per file so instantiations compile in parallel.
#include "../flash_bwd_launch.cuh"

namespace bridge_flash {
template void run_flash_bwd<__half, 128>(BwdParams& params, cudaStream_t stream);
}  // namespace bridge_flash
