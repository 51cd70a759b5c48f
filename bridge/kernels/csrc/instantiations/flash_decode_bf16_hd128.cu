// KV-cache decode kernel instantiation: bf16, head dim 128. One per file so instantiations compile in parallel.
#include "../flash_decode.cuh"

namespace bridge_flash {
template int flash_decode_num_splits<__nv_bfloat16, 128>(const DecodeParams& p, int num_sms);
template void run_flash_decode<__nv_bfloat16, 128>(const DecodeParams& p, cudaStream_t stream);
}  // namespace bridge_flash
