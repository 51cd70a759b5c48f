// Hopper backward instantiation: bf16, head dim 64. One per file so instantiations compile in parallel.
#include "../flash_bwd_sm90.cuh"

namespace bridge_flash {
template bool run_flash_bwd_sm90<__nv_bfloat16, 64>(BwdParams& params, cudaStream_t stream);
}  // namespace bridge_flash
