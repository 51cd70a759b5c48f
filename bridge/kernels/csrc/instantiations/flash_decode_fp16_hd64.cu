// KV-cache decode kernel instantiation: fp16, head dim 64. One per file so instantiations compile in parallel.
#include "../flash_decode.cuh"

namespace bridge_flash {
template int flash_decode_num_splits<__half, 64>(const DecodeParams& p, int num_sms);
template void run_flash_decode<__half, 64>(const DecodeParams& p, cudaStream_t stream);
}  // namespace bridge_flash
