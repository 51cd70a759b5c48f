// Shared argument checks and parameter filling of the forward and backward bindings (flash_api_common.h).
#include "flash_api_common.h"

#include <ATen/cuda/CUDAContext.h>

#include <cmath>
#include <cstdint>

namespace bridge_flash {

std::string num(int64_t v) { return std::to_string(v); }

std::string list_str(at::IntArrayRef values) {
    std::string s = "[";
    for (size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + std::to_string(values[i]);
    return s + "]";
}

namespace {

std::string head_dims_text() {
    std::string s;
    for (int d : {BRIDGE_FLASH_HEAD_DIMS}) s += (s.empty() ? "" : ", ") + std::to_string(d);
    return s;
}

bool supported_head_dim(int64_t d) {
    for (int x : {BRIDGE_FLASH_HEAD_DIMS}) {
        if (d == x) return true;
    }
    return false;
}

void check_on_device(const at::Tensor& t, const char* name, const at::Tensor& q) {
    TORCH_CHECK(t.is_cuda(), kErrorPrefix, name, " must be a CUDA tensor, got one on ", t.device().str());
    TORCH_CHECK(t.device() == q.device(), kErrorPrefix, name, " is on ", t.device().str(), " but q is on ",
                q.device().str(), "; all inputs must be on one GPU");
}

// q-like tensors: q's dtype, contiguous head dim, strides that keep every row 16-byte aligned (TMA and
// cp.async move 16-byte chunks).
void check_layout(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t dims) {
    check_on_device(t, name, q);
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), kErrorPrefix, name, " has dtype ", t.scalar_type(),
                " but q has ", q.scalar_type(), "; all inputs must share one dtype");
    const char* layout = dims == 4 ? "[batch, seq, heads, head_dim]" : "[total_tokens, heads, head_dim] for varlen";
    TORCH_CHECK(t.dim() == dims, kErrorPrefix, name, " must have ", num(dims), " dimensions (", layout,
                "), got shape ", list_str(t.sizes()));
    TORCH_CHECK(t.stride(-1) == 1, kErrorPrefix, name, " must have a contiguous last (head) dimension, got strides ",
                list_str(t.strides()));
    for (int64_t i = 0; i < t.dim() - 1; ++i) {
        TORCH_CHECK(t.size(i) <= 1 || t.stride(i) % 8 == 0, kErrorPrefix, name, " stride ", num(t.stride(i)),
                    " of dimension ", num(i), " is not a multiple of 8 elements (16 bytes); pass a .contiguous() copy");
    }
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, kErrorPrefix, name,
                " data pointer must be 16-byte aligned (a view with an odd storage offset?)");
}

void check_cu_seqlens(const at::Tensor& cu, const char* name, const at::Tensor& q, int64_t entries) {
    check_on_device(cu, name, q);
    TORCH_CHECK(cu.scalar_type() == at::kInt, kErrorPrefix, name, " must be int32, got ", cu.scalar_type());
    TORCH_CHECK(cu.dim() == 1 && cu.is_contiguous() && cu.size(0) >= 2, kErrorPrefix, name,
                " must be a contiguous 1-D tensor of batch + 1 offsets, got shape ", list_str(cu.sizes()));
    TORCH_CHECK(cu.size(0) == entries, kErrorPrefix, name, " has ", num(cu.size(0)), " entries but cu_seqlens_q has ",
                num(entries), "; both need batch + 1");
}

}  // namespace

Geometry check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k,
                   int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale) {
    TORCH_CHECK(q.is_cuda(), kErrorPrefix, "q must be a CUDA tensor, got one on ", q.device().str());
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf, kErrorPrefix, "dtype ",
                q.scalar_type(), " is not supported; use bfloat16 or float16");
    TORCH_CHECK(cu_seqlens_q.has_value() == cu_seqlens_k.has_value(), kErrorPrefix,
                "pass both cu_seqlens_q and cu_seqlens_k (varlen) or neither (fixed length)");
    Geometry g{};
    g.varlen = cu_seqlens_q.has_value();
    const int64_t dims = g.varlen ? 3 : 4;
    check_layout(q, "q", q, dims);
    check_layout(k, "k", q, dims);
    check_layout(v, "v", q, dims);
    TORCH_CHECK(k.sizes() == v.sizes(), kErrorPrefix, "k ", list_str(k.sizes()), " and v ", list_str(v.sizes()),
                " must have the same shape");
    g.d = q.size(-1);
    TORCH_CHECK(supported_head_dim(g.d), kErrorPrefix, "head dim ", num(g.d), " is not supported; valid: ",
                head_dims_text());
    TORCH_CHECK(k.size(-1) == g.d, kErrorPrefix, "q has head dim ", num(g.d), " but k/v have ", num(k.size(-1)));
    g.h = q.size(-2);
    g.h_k = k.size(-2);
    TORCH_CHECK(g.h_k > 0 && g.h % g.h_k == 0, kErrorPrefix, "q has ", num(g.h), " heads and k has ", num(g.h_k),
                "; the query heads must be a multiple of the key/value heads (GQA/MQA)");
    TORCH_CHECK(std::isfinite(softmax_scale) && softmax_scale > 0, kErrorPrefix,
                "softmax_scale must be a positive finite number");
    if (g.varlen) {
        g.b = cu_seqlens_q->size(0) - 1;
        check_cu_seqlens(*cu_seqlens_q, "cu_seqlens_q", q, cu_seqlens_q->size(0));
        check_cu_seqlens(*cu_seqlens_k, "cu_seqlens_k", q, cu_seqlens_q->size(0));
        TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, kErrorPrefix, "max_seqlen_q and max_seqlen_k must be ",
                    ">= 0, got ", num(max_seqlen_q), " and ", num(max_seqlen_k));
        g.seqlen_q = max_seqlen_q;
        g.seqlen_k = max_seqlen_k;
    } else {
        g.b = q.size(0);
        TORCH_CHECK(k.size(0) == g.b, kErrorPrefix, "q has batch ", num(g.b), " but k/v have ", num(k.size(0)));
        g.seqlen_q = q.size(1);
        g.seqlen_k = k.size(1);
    }
    TORCH_CHECK(g.seqlen_q < (1LL << 30) && g.seqlen_k < (1LL << 30) && g.b < 65536 && g.h < 65536, kErrorPrefix,
                "sizes out of range (sequence lengths < 2^30, batch and heads < 65536)");
    return g;
}

void check_like_q(const at::Tensor& t, const char* name, const at::Tensor& q, const Geometry& g) {
    check_layout(t, name, q, g.varlen ? 3 : 4);
    TORCH_CHECK(t.sizes() == q.sizes(), kErrorPrefix, name, " ", list_str(t.sizes()), " must have q's shape ",
                list_str(q.sizes()));
}

void set_strides(const at::Tensor& t, bool varlen, int64_t& batch, int64_t& row, int64_t& head) {
    batch = varlen ? 0 : t.stride(0);
    row = t.stride(varlen ? 0 : 1);
    head = t.stride(varlen ? 1 : 2);
}

void check_modifiers(const Modifiers& m, const at::Tensor& q, const Geometry& g) {
    TORCH_CHECK(m.window_left >= -1 && m.window_right >= -1, kErrorPrefix, "window_size (", num(m.window_left), ", ",
                num(m.window_right), ") is not valid; each side is a number of keys >= 0, or -1 for unbounded");
    TORCH_CHECK(std::isfinite(m.softcap) && m.softcap >= 0, kErrorPrefix,
                "softcap must be a finite number >= 0 (0 = off)");
    if (m.alibi_slopes.has_value()) {
        const at::Tensor& a = *m.alibi_slopes;
        check_on_device(a, "alibi_slopes", q);
        TORCH_CHECK(a.scalar_type() == at::kFloat, kErrorPrefix, "alibi_slopes must be float32, got ", a.scalar_type());
        const bool per_head = a.dim() == 1 && a.size(0) == g.h;
        const bool per_batch = a.dim() == 2 && a.size(0) == g.b && a.size(1) == g.h;
        TORCH_CHECK(per_head || per_batch, kErrorPrefix, "alibi_slopes must have shape [", num(g.h), "] or [",
                    num(g.b), ", ", num(g.h), "] (heads, or batch x heads), got ", list_str(a.sizes()));
        TORCH_CHECK(a.is_contiguous(), kErrorPrefix, "alibi_slopes must be contiguous");
    }
}

void fill_qkv_params(QKVParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k,
                     const Geometry& g, double softmax_scale, const Modifiers& mods, const at::Tensor& lse) {
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    set_strides(q, g.varlen, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
    set_strides(k, g.varlen, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
    set_strides(v, g.varlen, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
    p.cu_seqlens_q = g.varlen ? cu_seqlens_q->data_ptr<int>() : nullptr;
    p.cu_seqlens_k = g.varlen ? cu_seqlens_k->data_ptr<int>() : nullptr;
    p.b = static_cast<int>(g.b);
    p.seqlen_q = static_cast<int>(g.seqlen_q);
    p.seqlen_k = static_cast<int>(g.seqlen_k);
    p.h = static_cast<int>(g.h);
    p.h_k = static_cast<int>(g.h_k);
    p.d = static_cast<int>(g.d);
    p.total_q = q.size(0);
    p.total_k = k.size(0);
    p.scale_softmax = static_cast<float>(softmax_scale);
    p.scale_softmax_log2 = static_cast<float>(softmax_scale * 1.4426950408889634);
    p.is_causal = mods.causal;
    // A side at least as wide as the longest sequence bounds nothing: store it as exactly that width (see
    // flash_params.h), which keeps the kernels' bound arithmetic within int and has_window false.
    const int64_t left_limit = g.seqlen_k, right_limit = g.seqlen_q;
    const int64_t left = (mods.window_left < 0 || mods.window_left > left_limit) ? left_limit : mods.window_left;
    int64_t right = (mods.window_right < 0 || mods.window_right > right_limit) ? right_limit : mods.window_right;
    const bool causal = mods.causal || (right == 0 && left == left_limit);  // window (-1, 0) is causal
    if (causal) right = 0;
    p.is_causal = causal;
    p.window_left = static_cast<int>(left);
    p.window_right = static_cast<int>(right);
    p.has_window = left < left_limit || (!causal && right < right_limit);
    p.softcap = static_cast<float>(mods.softcap);
    p.alibi_slopes = mods.alibi_slopes.has_value() ? mods.alibi_slopes->data_ptr<float>() : nullptr;
    p.alibi_batch_stride = mods.alibi_slopes.has_value() && mods.alibi_slopes->dim() == 2 ? g.h : 0;
    p.is_bf16 = q.scalar_type() == at::kBFloat16;
    // lse: fixed [b, h, s_q], varlen [h, total_q]
    p.lse_batch_stride = g.varlen ? 0 : lse.stride(0);
    p.lse_head_stride = g.varlen ? lse.stride(0) : lse.stride(1);
}

bool hopper_supports(const QKVParams& p) { return !p.has_window && p.softcap == 0.f && p.alibi_slopes == nullptr; }

bool use_hopper_kernels(const at::Tensor& q, const std::string& kernel_family) {
    TORCH_CHECK(kernel_family == "sm90" || kernel_family == "mma", kErrorPrefix, "kernel_family ", kernel_family,
                " is not valid; use sm90 or mma");
    const cudaDeviceProp* prop = at::cuda::getDeviceProperties(q.get_device());
    return kernel_family == "sm90" && prop->major == 9 && prop->minor == 0;
}

}  // namespace bridge_flash
