// Torch binding of the flash-attention backward: registers torch.ops.bridge_flash.bwd (see CONTRACT.md). The
// checks and parameter filling it shares with the forward are in flash_api_common.cpp; this file checks out,
// dout and lse, allocates the gradients and scratch buffers and dispatches on (dtype, head dim, kernel family).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "flash_api_common.h"

namespace bridge_flash {
namespace {

// Deterministic-mode counters: one per (batch, head, 32 query rows); the main kernel indexes them with this
// granularity whatever its Q tile (64 or 128 rows), so the count stays valid when tile sizes change.
constexpr int kBwdBlockM = 32;

std::tuple<at::Tensor, at::Tensor, at::Tensor> mha_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse_in, const std::optional<at::Tensor>& cu_seqlens_q,
    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale,
    bool causal, bool deterministic, const std::string& kernel_family, int64_t window_left, int64_t window_right,
    double softcap, const std::optional<at::Tensor>& alibi_slopes) {
    const Geometry g = check_qkv(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale);
    const Modifiers mods{causal, window_left, window_right, softcap, alibi_slopes};
    check_modifiers(mods, q, g);
    check_like_q(out, "out", q, g);
    check_like_q(dout, "dout", q, g);
    const bool hopper = use_hopper_kernels(q, kernel_family);
    const at::cuda::OptionalCUDAGuard guard(q.device());
    const bool varlen = g.varlen;
    const int64_t batch = g.b, seqlen_q = g.seqlen_q, h = g.h, d = g.d;

    TORCH_CHECK(lse_in.is_cuda() && lse_in.device() == q.device(), kErrorPrefix, "lse must be on ", q.device().str(),
                ", got ", lse_in.device().str());
    TORCH_CHECK(lse_in.scalar_type() == at::kFloat, kErrorPrefix, "lse must be float32, got ", lse_in.scalar_type());
    const std::vector<int64_t> lse_shape =
        varlen ? std::vector<int64_t>{h, q.size(0)} : std::vector<int64_t>{batch, h, seqlen_q};
    TORCH_CHECK(lse_in.sizes() == at::IntArrayRef(lse_shape), kErrorPrefix, "lse must have shape ",
                list_str(lse_shape), varlen ? " ([heads, total_q])" : " ([batch, heads, seq_q])", ", got ",
                list_str(lse_in.sizes()));
    const at::Tensor lse = lse_in.contiguous();  // D below is allocated with the same (contiguous) layout
    // Gradients keep their input's memory layout when it is dense (e.g. megatron's [s, b, h, d] views).
    // Varlen: packed rows past cu_seqlens[b] belong to no sequence, so start from zeros there.
    at::Tensor dq = varlen ? at::zeros_like(q) : at::empty_like(q);
    at::Tensor dk = varlen ? at::zeros_like(k) : at::empty_like(k);
    at::Tensor dv = varlen ? at::zeros_like(v) : at::empty_like(v);
    const int64_t accum_rows = varlen ? q.size(0) : batch * seqlen_q;
    at::Tensor dq_accum = at::empty({accum_rows, h, d}, q.options().dtype(at::kFloat));
    at::Tensor dsum = at::empty_like(lse);
    at::Tensor counters;
    if (deterministic) {
        counters = at::zeros({batch, h, (seqlen_q + kBwdBlockM - 1) / kBwdBlockM}, q.options().dtype(at::kInt));
    }
    if (batch == 0 || h == 0) return {dq, dk, dv};

    BwdParams params{};
    fill_qkv_params(params, q, k, v, cu_seqlens_q, cu_seqlens_k, g, softmax_scale, mods, lse);

    params.o = out.data_ptr();
    set_strides(out, varlen, params.o_batch_stride, params.o_row_stride, params.o_head_stride);
    params.lse = lse.data_ptr<float>();
    params.dout = dout.data_ptr();
    set_strides(dout, varlen, params.do_batch_stride, params.do_row_stride, params.do_head_stride);
    params.dq = dq.data_ptr();
    params.dk = dk.data_ptr();
    params.dv = dv.data_ptr();
    set_strides(dq, varlen, params.dq_batch_stride, params.dq_row_stride, params.dq_head_stride);
    set_strides(dk, varlen, params.dk_batch_stride, params.dk_row_stride, params.dk_head_stride);
    set_strides(dv, varlen, params.dv_batch_stride, params.dv_row_stride, params.dv_head_stride);
    params.dsoftmax_sum = dsum.data_ptr<float>();
    params.dq_accum = dq_accum.data_ptr<float>();
    params.workspace = deterministic ? counters.data_ptr() : nullptr;
    params.deterministic = deterministic;

    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    dispatch(params.is_bf16, params.d, [&](auto type, auto dim) {
        using T = typename decltype(type)::type;
        constexpr int D = decltype(dim)::value;
        // The Hopper kernel declines the deterministic mode (and tensors TMA cannot describe) and has no sliding
        // window, soft-cap or ALiBi: mma.sync then.
        if (!(hopper && hopper_supports(params) && run_flash_bwd_sm90<T, D>(params, stream)))
            run_flash_bwd<T, D>(params, stream);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bridge_flash, m) {
    m.def(
        "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? cu_seqlens_q, "
        "Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool causal, "
        "bool deterministic, str kernel_family=\"sm90\", int window_left=-1, int window_right=-1, "
        "float softcap=0.0, Tensor? alibi_slopes=None) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bridge_flash, CUDA, m) { m.impl("bwd", &mha_bwd); }

}  // namespace bridge_flash
