// Torch binding of the flash-attention backward: registers torch.ops.bridge_flash.bwd, checks every
// argument with a one-line error naming what is wrong and what would be valid, allocates the gradients and
// scratch buffers, fills BwdParams and dispatches on (dtype, head dim). Layouts: see CONTRACT.md.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "flash_launch.h"
#include "flash_params.h"

namespace bridge_flash {

bool use_hopper_kernels(const at::Tensor& q);  // flash_api_fwd.cpp

namespace {

// Deterministic-mode counters: one per (batch, head, 32 query rows); the main kernel indexes them with this
// granularity whatever its Q tile (64 or 128 rows), so the count stays valid when tile sizes change.
constexpr int kBwdBlockM = 32;

// Numbers, shapes and devices are formatted here with std::to_string rather than streamed into the message:
// streaming integers into an ostream inside the extension crashed (segfault) on the GPU machine, where the
// extension's compiler ships another libstdc++ than torch's.
std::string num(int64_t v) { return std::to_string(v); }

std::string list_str(at::IntArrayRef values) {
    std::string s = "[";
    for (size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + std::to_string(values[i]);
    return s + "]";
}

std::string shape_str(const at::Tensor& t) { return list_str(t.sizes()); }

void check_on_device(const at::Tensor& t, const char* name, const at::Device& device) {
    TORCH_CHECK(t.is_cuda(), "bridge_flash.bwd: ", name, " must be a CUDA tensor, got one on ", t.device().str());
    TORCH_CHECK(t.device() == device, "bridge_flash.bwd: ", name, " is on ", t.device().str(), " but q is on ",
                device.str(),
                "; all inputs must be on one GPU");
}

// q-like tensors: 16-bit, contiguous head dim, strides that keep every row 16-byte aligned for cp.async.
void check_qkv_like(const at::Tensor& t, const char* name, const at::Tensor& q, int expected_dim) {
    check_on_device(t, name, q.device());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), "bridge_flash.bwd: ", name, " has dtype ", t.scalar_type(),
                " but q has ", q.scalar_type(), "; q, k, v, out and dout must share one dtype");
    const char* layout = expected_dim == 4 ? "[batch, seq, heads, head_dim]" : "[total_tokens, heads, head_dim]";
    TORCH_CHECK(t.dim() == expected_dim, "bridge_flash.bwd: ", name, " must have ", num(expected_dim),
                " dimensions (", layout, "), got shape ", shape_str(t));
    TORCH_CHECK(t.stride(-1) == 1, "bridge_flash.bwd: ", name,
                " must have a contiguous last (head) dimension, got strides ", list_str(t.strides()));
    for (int i = 0; i < t.dim() - 1; ++i) {
        TORCH_CHECK(t.size(i) == 1 || t.stride(i) % 8 == 0, "bridge_flash.bwd: ", name, " stride ",
                    num(t.stride(i)), " of dimension ", num(i),
                    " is not a multiple of 8 elements (16 bytes); the kernel loads rows with 16-byte copies");
    }
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, "bridge_flash.bwd: ", name,
                " data pointer must be 16-byte aligned (a view with an odd storage offset?)");
}

void check_cu_seqlens(const at::Tensor& cu, const char* name, const at::Tensor& q, int64_t batch) {
    check_on_device(cu, name, q.device());
    TORCH_CHECK(cu.scalar_type() == at::kInt, "bridge_flash.bwd: ", name, " must be int32, got ", cu.scalar_type());
    TORCH_CHECK(cu.dim() == 1 && cu.is_contiguous(), "bridge_flash.bwd: ", name,
                " must be a contiguous 1-D tensor [batch + 1], got shape ", shape_str(cu));
    TORCH_CHECK(cu.size(0) == batch + 1, "bridge_flash.bwd: ", name, " has ", num(cu.size(0)),
                " entries but cu_seqlens_q has ", num(batch + 1), "; both need batch + 1");
}

template <typename T>
void dispatch_head_dim(BwdParams& params, cudaStream_t stream, bool hopper) {
    // The Hopper kernel declines the deterministic mode (and tensors TMA cannot describe): mma.sync then.
    if (params.d == 64) {
        if (!(hopper && run_flash_bwd_sm90<T, 64>(params, stream))) run_flash_bwd<T, 64>(params, stream);
    } else {
        if (!(hopper && run_flash_bwd_sm90<T, 128>(params, stream))) run_flash_bwd<T, 128>(params, stream);
    }
}

void set_strides(const at::Tensor& t, bool varlen, int64_t& batch, int64_t& row, int64_t& head) {
    batch = varlen ? 0 : t.stride(0);
    row = t.stride(varlen ? 0 : 1);
    head = t.stride(varlen ? 1 : 2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mha_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse_in, const std::optional<at::Tensor>& cu_seqlens_q,
    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale,
    bool causal, bool deterministic) {
    TORCH_CHECK(q.is_cuda(), "bridge_flash.bwd: q must be a CUDA tensor, got one on ", q.device().str());
    const at::cuda::OptionalCUDAGuard guard(q.device());
    const cudaDeviceProp* prop = at::cuda::getDeviceProperties(q.get_device());
#ifdef BRIDGE_FLASH_SM80
    const bool arch_ok = (prop->major == 9 && prop->minor == 0) || prop->major == 8;
    constexpr const char* kBuiltFor = "sm_90a and sm_80";
#else
    const bool arch_ok = prop->major == 9 && prop->minor == 0;
    constexpr const char* kBuiltFor = "sm_90a";
#endif
    TORCH_CHECK(arch_ok, "bridge_flash.bwd: GPU ", prop->name, " has compute capability ", num(prop->major), ".",
                num(prop->minor), " but the kernel was built for ", kBuiltFor,
                " (set BRIDGE_FLASH_ARCHS=90a,80 to add Ampere/Ada)");
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
                "bridge_flash.bwd: q must be bfloat16 or float16, got ", q.scalar_type());
    TORCH_CHECK(cu_seqlens_q.has_value() == cu_seqlens_k.has_value(),
                "bridge_flash.bwd: pass both cu_seqlens_q and cu_seqlens_k (varlen) or neither (fixed length)");
    const bool varlen = cu_seqlens_q.has_value();
    const int dims = varlen ? 3 : 4;
    check_qkv_like(q, "q", q, dims);
    check_qkv_like(k, "k", q, dims);
    check_qkv_like(v, "v", q, dims);
    check_qkv_like(out, "out", q, dims);
    check_qkv_like(dout, "dout", q, dims);

    const int64_t batch = varlen ? cu_seqlens_q->size(0) - 1 : q.size(0);
    const int64_t seqlen_q = varlen ? max_seqlen_q : q.size(1);
    const int64_t seqlen_k = varlen ? max_seqlen_k : k.size(1);
    const int64_t h = q.size(-2), h_k = k.size(-2), d = q.size(-1);
    TORCH_CHECK(d == 64 || d == 128, "bridge_flash.bwd: head dim ", num(d), " is not supported; valid: 64, 128");
    TORCH_CHECK(h_k > 0 && h % h_k == 0, "bridge_flash.bwd: q has ", num(h), " heads and k has ", num(h_k),
                "; the query heads must be a multiple of the key/value heads (GQA/MQA)");
    TORCH_CHECK(k.sizes() == v.sizes(), "bridge_flash.bwd: k ", shape_str(k), " and v ", shape_str(v),
                " must have the same shape");
    TORCH_CHECK(k.size(-1) == d, "bridge_flash.bwd: k head dim ", num(k.size(-1)), " differs from q head dim ", num(d));
    TORCH_CHECK(out.sizes() == q.sizes() && dout.sizes() == q.sizes(), "bridge_flash.bwd: out ", shape_str(out),
                " and dout ", shape_str(dout), " must have q's shape ", shape_str(q));
    if (varlen) {
        check_cu_seqlens(*cu_seqlens_q, "cu_seqlens_q", q, batch);
        check_cu_seqlens(*cu_seqlens_k, "cu_seqlens_k", q, batch);
        TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, "bridge_flash.bwd: max_seqlen_q and max_seqlen_k must be ",
                    ">= 0, got ", num(max_seqlen_q), " and ", num(max_seqlen_k));
    } else {
        TORCH_CHECK(k.size(0) == batch, "bridge_flash.bwd: k batch ", num(k.size(0)), " differs from q batch ",
                    num(batch));
    }
    TORCH_CHECK(seqlen_q < (1 << 30) && seqlen_k < (1 << 30), "bridge_flash.bwd: sequence lengths must be < 2^30");

    check_on_device(lse_in, "lse", q.device());
    TORCH_CHECK(lse_in.scalar_type() == at::kFloat, "bridge_flash.bwd: lse must be float32, got ",
                lse_in.scalar_type());
    const std::vector<int64_t> lse_shape =
        varlen ? std::vector<int64_t>{h, q.size(0)} : std::vector<int64_t>{batch, h, seqlen_q};
    TORCH_CHECK(lse_in.sizes() == at::IntArrayRef(lse_shape), "bridge_flash.bwd: lse must have shape ",
                list_str(lse_shape), varlen ? " ([heads, total_q])" : " ([batch, heads, seq_q])",
                ", got ", shape_str(lse_in));
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
    params.q = q.data_ptr();
    params.k = k.data_ptr();
    params.v = v.data_ptr();
    set_strides(q, varlen, params.q_batch_stride, params.q_row_stride, params.q_head_stride);
    set_strides(k, varlen, params.k_batch_stride, params.k_row_stride, params.k_head_stride);
    set_strides(v, varlen, params.v_batch_stride, params.v_row_stride, params.v_head_stride);
    params.cu_seqlens_q = varlen ? cu_seqlens_q->data_ptr<int>() : nullptr;
    params.cu_seqlens_k = varlen ? cu_seqlens_k->data_ptr<int>() : nullptr;
    params.b = static_cast<int>(batch);
    params.seqlen_q = static_cast<int>(seqlen_q);
    params.seqlen_k = static_cast<int>(seqlen_k);
    params.h = static_cast<int>(h);
    params.h_k = static_cast<int>(h_k);
    params.d = static_cast<int>(d);
    params.total_q = q.size(0);
    params.total_k = k.size(0);
    params.scale_softmax = static_cast<float>(softmax_scale);
    params.scale_softmax_log2 = static_cast<float>(softmax_scale * 1.4426950408889634);
    params.is_causal = causal;
    params.is_bf16 = q.scalar_type() == at::kBFloat16;
    params.lse_batch_stride = varlen ? 0 : lse.stride(0);
    params.lse_head_stride = varlen ? lse.stride(0) : lse.stride(1);

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
    const bool hopper = use_hopper_kernels(q);
    if (params.is_bf16) {
        dispatch_head_dim<__nv_bfloat16>(params, stream, hopper);
    } else {
        dispatch_head_dim<__half>(params, stream, hopper);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bridge_flash, m) {
    m.def(
        "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? cu_seqlens_q, "
        "Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool causal, "
        "bool deterministic) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bridge_flash, CUDA, m) { m.impl("bwd", &mha_bwd); }

}  // namespace bridge_flash
