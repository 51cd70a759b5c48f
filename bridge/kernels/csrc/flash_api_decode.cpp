// Torch binding of the KV-cache decode kernel: registers torch.ops.bridge_flash.decode (see CONTRACT.md).
// Checks every tensor the kernel dereferences (the Python layer, bridge/kernels/decode.py, checks first with
// friendlier messages), appends k/v into the caches in place, picks the split count and allocates the fp32
// partials when the cache is split over several CTAs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "flash_api_common.h"
#include "flash_decode_params.h"

namespace bridge_flash {
namespace {

constexpr int kMaxSplits = 128;

void check_kv_layout(const at::Tensor& t, const char* name, const at::Tensor& q) {
    TORCH_CHECK(t.is_cuda() && t.device() == q.device(), kErrorPrefix, name, " must be on q's device ",
                q.device().str(), ", got ", t.device().str());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), kErrorPrefix, name, " has dtype ", t.scalar_type(),
                " but q has ", q.scalar_type());
    TORCH_CHECK(t.dim() == 4, kErrorPrefix, name, " must have 4 dimensions, got shape ", list_str(t.sizes()));
    TORCH_CHECK(t.stride(-1) == 1, kErrorPrefix, name, " must have a contiguous head dimension, got strides ",
                list_str(t.strides()));
    for (int64_t i = 0; i < 3; ++i) {
        TORCH_CHECK(t.size(i) <= 1 || t.stride(i) % 8 == 0, kErrorPrefix, name, " stride ", num(t.stride(i)),
                    " of dimension ", num(i), " is not a multiple of 8 elements (16 bytes)");
    }
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, kErrorPrefix, name,
                " data pointer must be 16-byte aligned");
}

void check_index(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t dims, int64_t rows) {
    TORCH_CHECK(t.is_cuda() && t.device() == q.device(), kErrorPrefix, name, " must be on q's device");
    TORCH_CHECK(t.scalar_type() == at::kInt, kErrorPrefix, name, " must be int32, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == dims && t.size(0) == rows && t.stride(-1) == 1, kErrorPrefix, name, " must have ",
                num(dims), " dimension(s), ", num(rows), " rows and a contiguous last dimension, got shape ",
                list_str(t.sizes()));
}

void set_strides4(const at::Tensor& t, int64_t& batch, int64_t& row, int64_t& head) {
    batch = t.stride(0);
    row = t.stride(1);
    head = t.stride(2);
}

std::tuple<at::Tensor, at::Tensor> decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                          const std::optional<at::Tensor>& k_new,
                                          const std::optional<at::Tensor>& v_new,
                                          const std::optional<at::Tensor>& cache_seqlens, int64_t cache_seqlen,
                                          const std::optional<at::Tensor>& cache_batch_idx,
                                          const std::optional<at::Tensor>& block_table, double softmax_scale,
                                          bool causal, int64_t window_left, int64_t window_right,
                                          int64_t num_splits) {
    TORCH_CHECK(q.is_cuda(), kErrorPrefix, "q must be a CUDA tensor");
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf, kErrorPrefix, "dtype ",
                q.scalar_type(), " is not supported; use bfloat16 or float16");
    check_kv_layout(q, "q", q);
    check_kv_layout(k_cache, "k_cache", q);
    check_kv_layout(v_cache, "v_cache", q);
    TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), kErrorPrefix, "k_cache ", list_str(k_cache.sizes()),
                " and v_cache ", list_str(v_cache.sizes()), " must have the same shape");
    const int64_t b = q.size(0), seqlen_q = q.size(1), h = q.size(2), d = q.size(3);
    const int64_t h_k = k_cache.size(2);
    TORCH_CHECK(k_cache.size(3) == d, kErrorPrefix, "q has head dim ", num(d), " but the cache has ",
                num(k_cache.size(3)));
    TORCH_CHECK(h_k > 0 && h % h_k == 0, kErrorPrefix, "q has ", num(h), " heads and the cache ", num(h_k),
                "; the query heads must be a multiple of the key/value heads");
    TORCH_CHECK(k_new.has_value() == v_new.has_value(), kErrorPrefix, "pass both k and v to append, or neither");
    int64_t seqlen_new = 0;
    if (k_new.has_value()) {
        check_kv_layout(*k_new, "k", q);
        check_kv_layout(*v_new, "v", q);
        TORCH_CHECK(k_new->sizes() == v_new->sizes() && k_new->size(0) == b && k_new->size(2) == h_k &&
                        k_new->size(3) == d,
                    kErrorPrefix, "k and v must be [", num(b), ", seqlen_new, ", num(h_k), ", ", num(d), "], got ",
                    list_str(k_new->sizes()), " and ", list_str(v_new->sizes()));
        seqlen_new = k_new->size(1);
    }
    const bool paged = block_table.has_value();
    int64_t capacity = k_cache.size(1);
    if (paged) {
        check_index(*block_table, "block_table", q, 2, b);
        TORCH_CHECK(!cache_batch_idx.has_value(), kErrorPrefix, "cache_batch_idx and block_table exclude each other");
        capacity = block_table->size(1) * k_cache.size(1);  // pages per sequence x page size
    } else if (cache_batch_idx.has_value()) {
        check_index(*cache_batch_idx, "cache_batch_idx", q, 1, b);
    } else {
        TORCH_CHECK(k_cache.size(0) >= b, kErrorPrefix, "the cache holds ", num(k_cache.size(0)),
                    " sequences but q has batch ", num(b));
    }
    if (cache_seqlens.has_value()) check_index(*cache_seqlens, "cache_seqlens", q, 1, b);
    TORCH_CHECK(cache_seqlen >= 0 && cache_seqlen + seqlen_new <= capacity, kErrorPrefix, "cache length ",
                num(cache_seqlen), " + ", num(seqlen_new), " new tokens exceed the cache capacity ", num(capacity));
    TORCH_CHECK(capacity < (1LL << 30) && b < 65536 && h_k < 65536 && seqlen_q * h < (1LL << 30), kErrorPrefix,
                "sizes out of range");
    TORCH_CHECK(num_splits >= 0 && num_splits <= kMaxSplits, kErrorPrefix, "num_splits must be in 0..",
                num(kMaxSplits), " (0 = heuristic), got ", num(num_splits));

    at::cuda::CUDAGuard guard(q.device());
    at::Tensor out = at::empty({b, seqlen_q, h, d}, q.options());
    at::Tensor lse = at::empty({b, h, seqlen_q}, q.options().dtype(at::kFloat));

    DecodeParams p{};
    p.q = q.data_ptr();
    p.k_cache = k_cache.data_ptr();
    p.v_cache = v_cache.data_ptr();
    p.k_new = k_new.has_value() ? k_new->data_ptr() : nullptr;
    p.v_new = v_new.has_value() ? v_new->data_ptr() : nullptr;
    p.out = out.data_ptr();
    p.lse = lse.data_ptr<float>();
    set_strides4(q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
    set_strides4(k_cache, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
    set_strides4(v_cache, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
    if (k_new.has_value()) {
        set_strides4(*k_new, p.kn_batch_stride, p.kn_row_stride, p.kn_head_stride);
        set_strides4(*v_new, p.vn_batch_stride, p.vn_row_stride, p.vn_head_stride);
    }
    set_strides4(out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
    p.cache_seqlens = cache_seqlens.has_value() ? cache_seqlens->data_ptr<int>() : nullptr;
    p.cache_seqlen_fixed = static_cast<int>(cache_seqlen);
    p.cache_batch_idx = cache_batch_idx.has_value() ? cache_batch_idx->data_ptr<int>() : nullptr;
    p.block_table = paged ? block_table->data_ptr<int>() : nullptr;
    p.block_table_stride = paged ? block_table->stride(0) : 0;
    p.page_size = static_cast<int>(k_cache.size(1));
    p.b = static_cast<int>(b);
    p.seqlen_q = static_cast<int>(seqlen_q);
    p.seqlen_new = static_cast<int>(seqlen_new);
    p.h = static_cast<int>(h);
    p.h_k = static_cast<int>(h_k);
    p.d = static_cast<int>(d);
    p.seqlen_k_bound = static_cast<int>(capacity);
    p.scale_softmax = static_cast<float>(softmax_scale);
    p.scale_softmax_log2 = static_cast<float>(softmax_scale * 1.4426950408889634);
    p.is_causal = causal;
    p.window_left = static_cast<int>(window_left < 0 ? -1 : window_left);
    p.window_right = static_cast<int>(window_right < 0 ? -1 : window_right);
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    if (b == 0 || seqlen_q == 0 || h == 0) return {out, lse};

    const int num_sms = at::cuda::getDeviceProperties(q.get_device())->multiProcessorCount;
    at::Tensor out_accum, lse_accum;
    cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
    dispatch(p.is_bf16, p.d, [&](auto type, auto dim) {
        using T = typename decltype(type)::type;
        constexpr int D = decltype(dim)::value;
        p.num_splits = num_splits > 0 ? static_cast<int>(num_splits) : flash_decode_num_splits<T, D>(p, num_sms);
        if (p.num_splits > 1) {
            out_accum = at::empty({p.num_splits, b, h, seqlen_q, d}, q.options().dtype(at::kFloat));
            lse_accum = at::empty({p.num_splits, b, h, seqlen_q}, q.options().dtype(at::kFloat));
            p.out_accum = out_accum.data_ptr<float>();
            p.lse_accum = lse_accum.data_ptr<float>();
        }
        run_flash_decode<T, D>(p, stream);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {out, lse};
}

// The split count num_splits = 0 would choose for these sizes (benchmarks and tests report it).
int64_t decode_num_splits(const at::Tensor& q, int64_t h_k, int64_t seqlen_k_bound) {
    TORCH_CHECK(q.is_cuda() && q.dim() == 4, kErrorPrefix, "q must be a 4-D CUDA tensor");
    TORCH_CHECK(h_k > 0 && q.size(2) % h_k == 0, kErrorPrefix, "q's heads must be a multiple of h_k");
    DecodeParams p{};
    p.b = static_cast<int>(q.size(0));
    p.seqlen_q = static_cast<int>(q.size(1));
    p.h = static_cast<int>(q.size(2));
    p.h_k = static_cast<int>(h_k);
    p.seqlen_k_bound = static_cast<int>(seqlen_k_bound);
    at::cuda::CUDAGuard guard(q.device());
    const int num_sms = at::cuda::getDeviceProperties(q.get_device())->multiProcessorCount;
    int splits = 1;
    dispatch(q.scalar_type() == at::kBFloat16, static_cast<int>(q.size(3)), [&](auto type, auto dim) {
        using T = typename decltype(type)::type;
        constexpr int D = decltype(dim)::value;
        splits = flash_decode_num_splits<T, D>(p, num_sms);
    });
    return splits;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bridge_flash, m) {
    m.def(
        "decode(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor? k, Tensor? v, Tensor? cache_seqlens, "
        "int cache_seqlen, Tensor? cache_batch_idx, Tensor? block_table, float softmax_scale, bool causal, "
        "int window_left, int window_right, int num_splits) -> (Tensor, Tensor)");
    m.def("decode_num_splits(Tensor q, int h_k, int seqlen_k_bound) -> int");
}

TORCH_LIBRARY_IMPL(bridge_flash, CUDA, m) {
    m.impl("decode", &decode);
    m.impl("decode_num_splits", &decode_num_splits);
}

}  // namespace bridge_flash
