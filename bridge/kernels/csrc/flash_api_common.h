// The checks and parameter filling that the forward and backward bindings share (one error prefix, one
// head-dim table, one place that turns tensors into QKVParams; the GPU architecture is checked in Python, by
// interface.kernel_family on every kernel call), in the spirit of
// flash-attention's set_params_fprop / set_params_dgrad. Defined in flash_api_common.cpp.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <utility>

#include "flash_launch.h"
#include "flash_params.h"

// The supported head dims come from one Python constant (bridge/kernels/build.py: HEAD_DIMS), passed in as
// -DBRIDGE_FLASH_HEAD_DIMS=64,128; each needs its csrc/instantiations/*_hd<D>.cu units.
#ifndef BRIDGE_FLASH_HEAD_DIMS
#error "BRIDGE_FLASH_HEAD_DIMS is set by bridge/kernels/build.py (the supported head dims)"
#endif

namespace bridge_flash {

// Every error of both bindings starts with this.
constexpr const char* kErrorPrefix = "bridge flash: ";

using HeadDims = std::integer_sequence<int, BRIDGE_FLASH_HEAD_DIMS>;

// Numbers and shapes are formatted with std::to_string, never streamed: streaming integers into an ostream
// inside the extension crashed on the GPU machine, whose compiler ships another libstdc++ than torch's.
std::string num(int64_t v);
std::string list_str(at::IntArrayRef values);

// What the checks established about one call.
struct Geometry {
    bool varlen;
    int64_t b, seqlen_q, seqlen_k, h, h_k, d;
};

// Checks q, k, v (dtype, layout, alignment, device, head dim, GQA heads, batch,
// cu_seqlens, softmax scale) and returns the call's geometry. `what` names the tensors' role in messages
// ("q, k and v" / "q, k, v, out and dout").
Geometry check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k,
                   int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale);

// The same layout and dtype checks as q gets, for another q-shaped tensor (out, dout).
void check_like_q(const at::Tensor& t, const char* name, const at::Tensor& q, const Geometry& g);

// The score modifiers of one call (masks beyond padding), as the ops receive them.
struct Modifiers {
    bool causal;
    int64_t window_left, window_right;  // flash-attn's window_size; -1 = unbounded
    double softcap;                     // 0 = off
    std::optional<at::Tensor> alibi_slopes;  // fp32 [h] or [b, h]
};

// Checks the modifiers (one error line each) against the call's geometry.
void check_modifiers(const Modifiers& m, const at::Tensor& q, const Geometry& g);

// Fills everything in QKVParams (pointers, strides, sizes, scale, flags and window bounds, LSE strides of `lse`).
void fill_qkv_params(QKVParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k,
                     const Geometry& g, double softmax_scale, const Modifiers& mods, const at::Tensor& lse);

// Whether the Hopper kernels implement everything this call asks for (else the mma.sync kernels run it).
bool hopper_supports(const QKVParams& p);

// Batch / row / head strides of a q-shaped tensor (varlen tensors have no batch stride).
void set_strides(const at::Tensor& t, bool varlen, int64_t& batch, int64_t& row, int64_t& head);

// The kernel family, chosen in Python: "sm90" runs the Hopper kernels on an sm_90 GPU (the mma.sync ones
// elsewhere, and where a Hopper kernel declines the call), "mma" always the mma.sync kernels.
bool use_hopper_kernels(const at::Tensor& q, const std::string& kernel_family);

template <typename T>
struct TypeTag {
    using type = T;
};

template <typename Fn, int... Ds>
bool for_head_dim(int d, Fn&& fn, std::integer_sequence<int, Ds...>) {
    return ((d == Ds ? (fn(std::integral_constant<int, Ds>{}), true) : false) || ...);
}

// Calls fn(TypeTag<T>{}, std::integral_constant<int, D>{}) for the call's element type and head dim.
template <typename Fn>
void dispatch(bool bf16, int d, Fn&& fn) {
    auto run = [&](auto type_tag) {
        const bool ran = for_head_dim(d, [&](auto dim) { fn(type_tag, dim); }, HeadDims{});
        TORCH_CHECK(ran, kErrorPrefix, "head dim ", num(d), " has no kernel");
    };
    if (bf16) {
        run(TypeTag<__nv_bfloat16>{});
    } else {
        run(TypeTag<__half>{});
    }
}

}  // namespace bridge_flash
