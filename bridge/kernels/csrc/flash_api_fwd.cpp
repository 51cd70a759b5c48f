// Torch binding of the forward kernel: registers torch.ops.bridge_flash.fwd (see CONTRACT.md). The checks
// and parameter filling it shares with the backward are in flash_api_common.cpp; this file allocates out and
// lse and dispatches on (dtype, head dim, kernel family).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "flash_api_common.h"

namespace bridge_flash {
namespace {

std::tuple<at::Tensor, at::Tensor> mha_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const std::optional<at::Tensor>& cu_seqlens_q,
                                           const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                                           int64_t max_seqlen_k, double softmax_scale, bool causal,
                                           const std::string& kernel_family, int64_t window_left,
                                           int64_t window_right, double softcap,
                                           const std::optional<at::Tensor>& alibi_slopes) {
    const Geometry g = check_qkv(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale);
    const Modifiers mods{causal, window_left, window_right, softcap, alibi_slopes};
    check_modifiers(mods, q, g);
    const bool hopper = use_hopper_kernels(q, kernel_family);

    at::cuda::CUDAGuard guard(q.device());
    at::Tensor out = at::empty_like(q);
    at::Tensor lse = g.varlen ? at::empty({g.h, q.size(0)}, q.options().dtype(at::kFloat))
                              : at::empty({g.b, g.h, g.seqlen_q}, q.options().dtype(at::kFloat));
    if (q.numel() == 0 || g.b == 0) return {out, lse};

    FwdParams p{};
    fill_qkv_params(p, q, k, v, cu_seqlens_q, cu_seqlens_k, g, softmax_scale, mods, lse);
    p.o = out.data_ptr();
    set_strides(out, g.varlen, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
    p.lse = lse.data_ptr<float>();

    cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
    dispatch(p.is_bf16, p.d, [&](auto type, auto dim) {
        using T = typename decltype(type)::type;
        constexpr int D = decltype(dim)::value;
        // The Hopper kernel declines tensors a TMA descriptor cannot describe, and has no sliding window,
        // soft-cap or ALiBi: mma.sync then.
        if (!(hopper && hopper_supports(p) && run_flash_fwd_sm90<T, D>(p, stream))) run_flash_fwd<T, D>(p, stream);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {out, lse};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bridge_flash, m) {
    m.def(
        "fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, "
        "int max_seqlen_k, float softmax_scale, bool causal, str kernel_family=\"sm90\", int window_left=-1, "
        "int window_right=-1, float softcap=0.0, Tensor? alibi_slopes=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bridge_flash, CUDA, m) { m.impl("fwd", &mha_fwd); }

}  // namespace bridge_flash
