"""The ``fused`` backend: cuDNN fused attention.

Transformer Engine's ``DotProductAttention`` runs it when TE is importable; otherwise PyTorch's
``scaled_dot_product_attention`` restricted to its cuDNN backend does (GQA through ``enable_gqa``).
Both need a CUDA GPU and half-precision inputs.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from bridge.attention.inputs import AttentionInputs, AttentionMask

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256


@functools.lru_cache(maxsize=1)
def transformer_engine_available() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or a TE build that does not match this torch / CUDA
        return False
    return True


def unsupported_reason(inputs: AttentionInputs) -> Optional[str]:
    """None when cuDNN fused attention can run these inputs, else why not."""
    if inputs.device_type != "cuda":
        return f"fused (cuDNN) attention needs a CUDA GPU; this layer runs on {inputs.device_type}"
    if inputs.dtype not in SUPPORTED_DTYPES:
        dtype = str(inputs.dtype).replace("torch.", "")
        return f"fused (cuDNN) attention supports bf16 and fp16, not {dtype}"
    if inputs.head_dim % 8 != 0 or inputs.head_dim > MAX_HEAD_DIM:
        return f"fused (cuDNN) attention needs a head dim that is a multiple of 8 and at most {MAX_HEAD_DIM}, got {inputs.head_dim}"
    if not transformer_engine_available() and not torch.backends.cuda.cudnn_sdp_enabled():
        return "fused (cuDNN) attention: Transformer Engine is not installed and PyTorch's cuDNN SDPA backend is disabled"
    return None


def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AttentionMask,
    softmax_scale: float,
    dropout_p: float,
) -> torch.Tensor:
    """query [sq, b, h, d], key/value [sk, b, g, d] -> [sq, b, h, d], through PyTorch SDPA's cuDNN backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sq, b, h, _ = query.shape
    sk, g = key.shape[0], key.shape[2]
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # (b, h|g, s, d) views
    # SDPA's is_causal is top-left aligned; pass it only where that equals our bottom-right convention.
    simple_causal = mask.kind == "causal" and sq == sk
    attn_mask = None
    if mask.kind != "none" and not simple_causal:
        # Padded query rows are zeroed below rather than handed to cuDNN as fully masked rows.
        attn_mask = mask.allowed(b, sq, sk, query.device, with_query_padding=False)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=simple_causal,
            scale=softmax_scale, enable_gqa=h != g,
        )
    out = out.permute(2, 0, 1, 3)  # (sq, b, h, d)
    if mask.query_padding is not None:
        out = out * mask.query_padding.t().reshape(sq, b, 1, 1).to(out.dtype)
    return out


_TE_MASK_TYPES = {
    "none": "no_mask",
    "causal": "causal_bottom_right",
    "padding": "padding",
    "padding_causal": "padding_causal_bottom_right",
    "sliding_window": "arbitrary",  # the band as a dense mask
    "arbitrary": "arbitrary",
}


@functools.lru_cache(maxsize=64)
def _te_module(num_heads: int, num_kv_heads: int, head_dim: int, dropout_p: float, softmax_scale: float):
    import transformer_engine.pytorch as te

    return te.DotProductAttention(
        num_attention_heads=num_heads,
        kv_channels=head_dim,
        num_gqa_groups=num_kv_heads,
        attention_dropout=dropout_p,
        qkv_format="sbhd",
        softmax_scale=softmax_scale,
    )


def te_fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AttentionMask,
    softmax_scale: float,
    dropout_p: float,
) -> torch.Tensor:
    """The same contract as :func:`fused_attention`, through Transformer Engine's ``DotProductAttention``."""
    sq, b, h, d = query.shape
    sk, g = key.shape[0], key.shape[2]
    module = _te_module(h, g, d, float(dropout_p), float(softmax_scale))
    te_mask = None
    kind = mask.kind
    if kind in ("padding", "padding_causal"):
        keys = mask.key_padding if mask.key_padding is not None else query.new_ones(b, sk, dtype=torch.bool)
        queries = mask.query_padding if mask.query_padding is not None else query.new_ones(b, sq, dtype=torch.bool)
        te_mask = (~queries.view(b, 1, 1, sq), ~keys.view(b, 1, 1, sk))  # TE: True = masked out
    elif kind in ("sliding_window", "arbitrary"):
        # Padded query rows (sliding window over padding) are zeroed below, not handed over fully masked.
        te_mask = ~mask.allowed(b, sq, sk, query.device, with_query_padding=False).expand(b, -1, sq, sk)
    out = module(query, key, value, attention_mask=te_mask, attn_mask_type=_TE_MASK_TYPES[kind]).view(sq, b, h, d)
    if kind == "sliding_window" and mask.query_padding is not None:
        out = out * mask.query_padding.t().reshape(sq, b, 1, 1).to(out.dtype)
    return out


def run(query, key, value, mask, softmax_scale, dropout_p):
    """Run fused attention with Transformer Engine when it is installed, else PyTorch SDPA's cuDNN backend."""
    impl = te_fused_attention if transformer_engine_available() else fused_attention
    return impl(query, key, value, mask, softmax_scale, dropout_p)
