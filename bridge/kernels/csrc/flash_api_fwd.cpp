// Torch binding of the forward kernel: checks every argument, allocates out / lse, fills FwdParams and
// dispatches on (dtype, head dim). Registers torch.ops.bridge_flash.fwd (see CONTRACT.md).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>

#include "flash_launch.h"
#include "flash_params.h"

namespace bridge_flash {
namespace {

constexpr const char* kSupportedHeadDims = "64, 128";

void check_arch(const at::Tensor& q) {
    const cudaDeviceProp* prop = at::cuda::getDeviceProperties(q.get_device());
    const int cc = prop->major * 10 + prop->minor;
#ifdef BRIDGE_FLASH_SM80
    const bool ok = cc == 90 || prop->major == 8;
    constexpr const char* kBuilt = "sm_90a and sm_80";
#else
    const bool ok = cc == 90;
    constexpr const char* kBuilt = "sm_90a";
#endif
    TORCH_CHECK(ok, "bridge flash: GPU ", prop->name, " is sm_", cc, " but the kernel was built for ", kBuilt,
                " (set BRIDGE_FLASH_ARCHS=90a,80 to add Ampere/Ada)");
}

}  // namespace

// The Hopper (TMA + wgmma) kernels run on sm_90 unless BRIDGE_FLASH_IMPL=mma asks for the mma.sync ones
// (read on every call, so tests and benchmarks can compare both in one process).
bool use_hopper_kernels(const at::Tensor& q) {
    const cudaDeviceProp* prop = at::cuda::getDeviceProperties(q.get_device());
    if (prop->major != 9 || prop->minor != 0) return false;
    const char* impl = std::getenv("BRIDGE_FLASH_IMPL");
    if (impl == nullptr || impl[0] == '\0' || std::strcmp(impl, "auto") == 0 || std::strcmp(impl, "sm90") == 0) return true;
    TORCH_CHECK(std::strcmp(impl, "mma") == 0, "bridge flash: BRIDGE_FLASH_IMPL=", impl,
                " is not valid; use auto, sm90 or mma");
    return false;
}

namespace {

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t dims) {
    TORCH_CHECK(t.is_cuda(), "bridge flash: ", name, " must be a CUDA tensor, got device ", t.device());
    TORCH_CHECK(t.device() == q.device(), "bridge flash: ", name, " is on ", t.device(), " but q is on ", q.device());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), "bridge flash: ", name, " has dtype ", t.scalar_type(),
                " but q has ", q.scalar_type(), "; q, k and v must share one dtype");
    TORCH_CHECK(t.dim() == dims, "bridge flash: ", name, " must have ", dims, " dims (",
                dims == 4 ? "[batch, seq, heads, head_dim]" : "[total_tokens, heads, head_dim] for varlen",
                "), got shape ", t.sizes());
    TORCH_CHECK(t.stride(-1) == 1, "bridge flash: ", name, " must be contiguous in its last (head) dim, got strides ",
                t.strides());
    // cp.async moves 16-byte chunks: every row of every head must start on a 16-byte boundary.
    bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
    for (int64_t i = 0; i < t.dim() - 1; ++i) aligned = aligned && (t.size(i) <= 1 || t.stride(i) % 8 == 0);
    TORCH_CHECK(aligned, "bridge flash: ", name, " must be 16-byte aligned with strides that are multiples of 8 ",
                "elements (got strides ", t.strides(), "); pass a .contiguous() copy");
}

void check_cu_seqlens(const at::Tensor& cu, const char* name, const at::Tensor& q) {
    TORCH_CHECK(cu.is_cuda() && cu.device() == q.device(), "bridge flash: ", name, " must be on ", q.device(),
                ", got ", cu.device());
    TORCH_CHECK(cu.scalar_type() == at::kInt, "bridge flash: ", name, " must be int32, got ", cu.scalar_type());
    TORCH_CHECK(cu.dim() == 1 && cu.is_contiguous() && cu.size(0) >= 2, "bridge flash: ", name,
                " must be a contiguous 1-D tensor of batch + 1 offsets, got shape ", cu.sizes());
}

template <typename T>
void dispatch_head_dim(FwdParams& params, cudaStream_t stream, bool hopper) {
    switch (params.d) {
        case 64:
            if (!(hopper && run_flash_fwd_sm90<T, 64>(params, stream))) run_flash_fwd<T, 64>(params, stream);
            break;
        case 128:
            if (!(hopper && run_flash_fwd_sm90<T, 128>(params, stream))) run_flash_fwd<T, 128>(params, stream);
            break;
        default: TORCH_CHECK(false, "bridge flash: head dim ", params.d, " not supported (", kSupportedHeadDims, ")");
    }
}

std::tuple<at::Tensor, at::Tensor> mha_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const std::optional<at::Tensor>& cu_seqlens_q,
                                           const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                                           int64_t max_seqlen_k, double softmax_scale, bool causal) {
    const bool varlen = cu_seqlens_q.has_value();
    TORCH_CHECK(cu_seqlens_q.has_value() == cu_seqlens_k.has_value(),
                "bridge flash: pass both cu_seqlens_q and cu_seqlens_k (varlen) or neither (fixed length)");
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
                "bridge flash: dtype ", q.scalar_type(), " not supported; use bfloat16 or float16");
    const int64_t dims = varlen ? 3 : 4;
    check_tensor(q, "q", q, dims);
    check_tensor(k, "k", q, dims);
    check_tensor(v, "v", q, dims);
    check_arch(q);
    TORCH_CHECK(k.sizes() == v.sizes(), "bridge flash: k and v must have the same shape, got ", k.sizes(), " and ",
                v.sizes());
    const int64_t d = q.size(-1);
    TORCH_CHECK(d == 64 || d == 128, "bridge flash: head dim ", d, " not supported (", kSupportedHeadDims, ")");
    TORCH_CHECK(k.size(-1) == d, "bridge flash: q has head dim ", d, " but k/v have ", k.size(-1));
    const int64_t h = q.size(-2), h_k = k.size(-2);
    TORCH_CHECK(h_k > 0 && h % h_k == 0, "bridge flash: query heads (", h, ") must be a multiple of key/value heads (",
                h_k, ")");
    TORCH_CHECK(std::isfinite(softmax_scale) && softmax_scale > 0, "bridge flash: softmax_scale must be a positive ",
                "finite number, got ", softmax_scale);

    int64_t b, seqlen_q, seqlen_k;
    if (varlen) {
        check_cu_seqlens(*cu_seqlens_q, "cu_seqlens_q", q);
        check_cu_seqlens(*cu_seqlens_k, "cu_seqlens_k", q);
        TORCH_CHECK(cu_seqlens_q->size(0) == cu_seqlens_k->size(0), "bridge flash: cu_seqlens_q has ",
                    cu_seqlens_q->size(0), " entries but cu_seqlens_k has ", cu_seqlens_k->size(0));
        TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, "bridge flash: max_seqlen_q/k must be >= 0, got ",
                    max_seqlen_q, ", ", max_seqlen_k);
        b = cu_seqlens_q->size(0) - 1;
        seqlen_q = max_seqlen_q;
        seqlen_k = max_seqlen_k;
    } else {
        b = q.size(0);
        TORCH_CHECK(k.size(0) == b, "bridge flash: q has batch ", b, " but k/v have ", k.size(0));
        seqlen_q = q.size(1);
        seqlen_k = k.size(1);
    }
    TORCH_CHECK(seqlen_q < (1LL << 31) && seqlen_k < (1LL << 31) && b < 65536 && h < 65536,
                "bridge flash: sizes out of range (seq < 2^31, batch and heads < 65536)");

    at::cuda::CUDAGuard guard(q.device());
    at::Tensor out = at::empty_like(q);
    at::Tensor lse = varlen ? at::empty({h, q.size(0)}, q.options().dtype(at::kFloat))
                            : at::empty({b, h, seqlen_q}, q.options().dtype(at::kFloat));
    if (q.numel() == 0 || b == 0) return {out, lse};

    FwdParams p{};
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.o = out.data_ptr();
    p.lse = lse.data_ptr<float>();
    // Fixed length: [b, s, h, d]; varlen: [total, h, d] (no batch stride).
    const int64_t row_dim = varlen ? 0 : 1;
    p.q_batch_stride = varlen ? 0 : q.stride(0);
    p.k_batch_stride = varlen ? 0 : k.stride(0);
    p.v_batch_stride = varlen ? 0 : v.stride(0);
    p.o_batch_stride = varlen ? 0 : out.stride(0);
    p.q_row_stride = q.stride(row_dim);
    p.k_row_stride = k.stride(row_dim);
    p.v_row_stride = v.stride(row_dim);
    p.o_row_stride = out.stride(row_dim);
    p.q_head_stride = q.stride(-2);
    p.k_head_stride = k.stride(-2);
    p.v_head_stride = v.stride(-2);
    p.o_head_stride = out.stride(-2);
    p.cu_seqlens_q = varlen ? cu_seqlens_q->data_ptr<int>() : nullptr;
    p.cu_seqlens_k = varlen ? cu_seqlens_k->data_ptr<int>() : nullptr;
    p.b = static_cast<int>(b);
    p.seqlen_q = static_cast<int>(seqlen_q);
    p.seqlen_k = static_cast<int>(seqlen_k);
    p.h = static_cast<int>(h);
    p.h_k = static_cast<int>(h_k);
    p.d = static_cast<int>(d);
    p.total_q = q.size(0);
    p.total_k = k.size(0);
    p.scale_softmax = static_cast<float>(softmax_scale);
    p.scale_softmax_log2 = static_cast<float>(softmax_scale * M_LOG2E);
    p.is_causal = causal;
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    p.lse_batch_stride = varlen ? 0 : lse.stride(0);
    p.lse_head_stride = varlen ? lse.stride(0) : lse.stride(1);

    cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
    const bool hopper = use_hopper_kernels(q);
    if (p.is_bf16) {
        dispatch_head_dim<__nv_bfloat16>(p, stream, hopper);
    } else {
        dispatch_head_dim<__half>(p, stream, hopper);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {out, lse};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bridge_flash, m) {
    m.def(
        "fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, "
        "int max_seqlen_k, float softmax_scale, bool causal) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bridge_flash, CUDA, m) { m.impl("fwd", &mha_fwd); }

}  // namespace bridge_flash
