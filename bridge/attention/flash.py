"""The ``flash`` backend: this repository's CUDA flash-attention kernel (``bridge.kernels``).

No mask and causal run through the fixed-length kernel directly on megatron-core's ``[s, b, h, d]``
tensors (strided views, no copies). Padding masks run through the variable-length path: the real tokens
are packed, attended with ``cu_seqlens``, and scattered back, padded rows staying zero. A sliding window
(megatron-core's ``window_size``) on any of these is the kernel's own ``window_size``. Inference steps with a
few queries over a longer key range (decoding with megatron-core's KV cache, whose keys arrive as a view of
the cache) run the split-KV decode kernel.
"""

from __future__ import annotations

from typing import Optional

import torch

from bridge.attention.inputs import AttentionInputs, AttentionMask

DECODE_MAX_QUERIES = 16
"""Inference calls with at most this many queries and more keys than queries use the decode kernel."""


def _kernel_module():
    import bridge.kernels

    return bridge.kernels


def unsupported_reason(inputs: AttentionInputs) -> Optional[str]:
    """None when the flash kernel can run these inputs, else which constraint fails."""
    try:
        kernel_reason = _kernel_module().unavailable_reason
    except (ImportError, AttributeError) as exc:  # absent or broken package: say so, not fail mid-model
        return f"the flash kernel package bridge.kernels is not usable ({exc})"
    if inputs.dropout_p > 0.0:
        return (
            f"the flash kernel has no attention dropout (attention_dropout={inputs.dropout_p:g}); "
            "set attention_dropout=0.0 or use the fused or local backend"
        )
    if inputs.mask_kind == "arbitrary":
        return "the flash kernel supports no mask, causal and padding masks, not an arbitrary dense mask"
    device = torch.device(inputs.device_type)
    return kernel_reason(device=device, dtype=inputs.dtype, head_dim=inputs.head_dim)


def _packed(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x [s, b, n, d], valid [b, s] bool -> the valid rows in batch-major order, [total, n, d]."""
    return x.transpose(0, 1)[valid]


def _cu_seqlens(valid: torch.Tensor) -> torch.Tensor:
    lengths = valid.sum(dim=1, dtype=torch.int32)
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AttentionMask,
    softmax_scale: float,
    dropout_p: float,
    deterministic: bool = False,
) -> torch.Tensor:
    """query [sq, b, h, d], key/value [sk, b, g, d] -> [sq, b, h, d]."""
    kernels = _kernel_module()
    sq, b, h, d = query.shape
    sk = key.shape[0]
    if mask.kind == "arbitrary":
        raise ValueError("the flash backend cannot run an arbitrary dense mask")
    kind = mask.base_kind  # none, causal, padding or padding_causal; the window is an argument of the kernel
    window = mask.window if mask.window is not None else (-1, -1)
    if kind in ("none", "causal") and _is_decode_step(query, sq, sk, dropout_p):
        out = kernels.flash_attn_with_kvcache(
            query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), cache_seqlens=sk,
            softmax_scale=softmax_scale, causal=mask.causal, window_size=window,
        )  # (b, sq, h, d)
        return out.transpose(0, 1)
    if kind in ("none", "causal"):
        out = kernels.flash_attn_func(
            query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1),
            dropout_p=dropout_p, softmax_scale=softmax_scale, causal=mask.causal, window_size=window,
            deterministic=deterministic,
        )  # (b, sq, h, d)
        return out.transpose(0, 1)
    q_valid = mask.query_padding if mask.query_padding is not None else query.new_ones(b, sq, dtype=torch.bool)
    k_valid = mask.key_padding if mask.key_padding is not None else query.new_ones(b, sk, dtype=torch.bool)
    out_packed = kernels.flash_attn_varlen_func(
        _packed(query, q_valid), _packed(key, k_valid), _packed(value, k_valid),
        _cu_seqlens(q_valid), _cu_seqlens(k_valid), sq, sk,
        dropout_p=dropout_p, softmax_scale=softmax_scale, causal=mask.causal, window_size=window,
        deterministic=deterministic,
    )  # (total_q, h, d)
    out = query.new_zeros(b, sq, h, d)
    out[q_valid] = out_packed
    return out.transpose(0, 1)


def _is_decode_step(query: torch.Tensor, sq: int, sk: int, dropout_p: float) -> bool:
    """A generation step: no gradient wanted, a few new queries attending a longer cache."""
    return (sq <= DECODE_MAX_QUERIES and sk > sq and dropout_p == 0.0 and not torch.is_grad_enabled()
            and not query.requires_grad)
