// Hopper backward instantiation: fp16, head dim 128. One per file so instantiations compile in parallel.
#include "../flash_bwd_sm90.cuh"

namespace bridge_flash {
template bool run_flash_bwd_sm90<__half, 128>(BwdParams& params, cudaStream_t stream);
}  // namespace bridge_flash
