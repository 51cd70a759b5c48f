// Forward kernel instantiation: fp16, head dim 64. One per file so instantiations compile in parallel.
#include "../flash_fwd_launch.cuh"

namespace bridge_flash {
template void run_flash_fwd<__half, 64>(FwdParams& params, cudaStream_t stream);
}  // namespace bridge_flash
