// Plain-data parameters of the KV-cache decode kernel (flash_decode.cuh) and its launcher declarations:
// the only link between the decode binding (flash_api_decode.cpp, built against torch) and the torch-free
// kernel translation units (instantiations/flash_decode_*.cu).
//
// Layouts (strides in elements, head dim contiguous):
//   q        [b, seqlen_q, h, d]                 the new queries
//   k_new    [b, seqlen_new, h_k, d] or nullptr  keys/values appended into the cache before attending
//   cache    contiguous-batch: [b_cache, capacity, h_k, d] (any batch/row/head strides, e.g. megatron's
//            [s, b, g, d] transposed); batch bi reads cache row cache_batch_idx[bi] (or bi)
//            paged: [num_pages, page_size, h_k, d]; key j of batch bi lives in page
//            block_table[bi * block_table_stride + j / page_size], row j % page_size
//   out      [b, seqlen_q, h, d], lse fp32 [b, h, seqlen_q]
// Sequence bi attends over keys [0, seqlen_k(bi)), seqlen_k(bi) = cache_seqlens[bi] (or the fixed value) +
// seqlen_new. Query i sits at position i + seqlen_k(bi) - seqlen_q (bottom-right aligned): with causal it sees
// keys <= its position, a window (left, right) keeps keys in [pos - left, pos + right] (-1 = unbounded).
// GQA: query head hq reads K/V head hq / (h / h_k). The h / h_k query heads of one K/V head and the
// seqlen_q new tokens form the rows of one tile ("row" r = token (r / group), head (r % group)), so each
// K/V byte is read once per tile of rows, not once per query head.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace bridge_flash {

struct DecodeParams {
    const void* __restrict__ q;
    void* __restrict__ k_cache;
    void* __restrict__ v_cache;
    const void* __restrict__ k_new;  // nullptr: nothing to append
    const void* __restrict__ v_new;
    void* __restrict__ out;
    float* __restrict__ lse;

    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;  // paged: batch stride = page stride
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t kn_batch_stride, kn_row_stride, kn_head_stride;
    int64_t vn_batch_stride, vn_row_stride, vn_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;

    const int* __restrict__ cache_seqlens;    // [b] or nullptr (then every sequence has cache_seqlen_fixed)
    int cache_seqlen_fixed;
    const int* __restrict__ cache_batch_idx;  // [b] or nullptr
    const int* __restrict__ block_table;      // [b, max_pages] or nullptr (contiguous cache)
    int64_t block_table_stride;
    int page_size;

    int b, seqlen_q, seqlen_new, h, h_k, d;
    int seqlen_k_bound;  // an upper bound of seqlen_k(bi) (the cache capacity): sizes the split heuristic
    float scale_softmax, scale_softmax_log2;
    bool is_causal;
    int window_left, window_right;  // -1: unbounded
    bool is_bf16;

    // Split-KV: num_splits CTAs share one tile of rows; each writes fp32 partials (normalised by its own sum)
    // and their LSE, merged by the combine kernel. Partial row index: ((split * b + bi) * h + hq) * seqlen_q + i.
    int num_splits;
    float* __restrict__ out_accum;  // [num_splits, b, h, seqlen_q, d] (only when num_splits > 1)
    float* __restrict__ lse_accum;  // [num_splits, b, h, seqlen_q]
};

// T is __nv_bfloat16 or __half, D the head dim. The split count the launcher would pick for num_splits = 0
// (fills the GPU's SMs from the batch, K/V heads, row tiles and cache bound of p).
template <typename T, int D>
int flash_decode_num_splits(const DecodeParams& p, int num_sms);

// Appends k_new / v_new (if any), runs the attention (and the combine when num_splits > 1) on `stream`.
// Launch errors are left for the caller (cudaGetLastError).
template <typename T, int D>
void run_flash_decode(const DecodeParams& p, cudaStream_t stream);

}  // namespace bridge_flash
