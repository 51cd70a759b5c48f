// Hopper forward instantiation: bf16, head dim 64. One per file so instantiations compile in parallel.
#include "../flash_fwd_sm90.cuh"

namespace bridge_flash {
template bool run_flash_fwd_sm90<__nv_bfloat16, 64>(const FwdParams& params, cudaStream_t stream);
}  // namespace bridge_flash
