"""The ``local`` backend: attention in plain PyTorch, computed in float32. Runs on CPU and GPU.

It is the numerical reference the other backends are tested against, so it favours clarity over speed:
it materialises the ``[b, h, sq, sk]`` score matrix and repeats K/V for grouped-query attention.
"""

from __future__ import annotations

from typing import Optional

import torch

from bridge.attention.inputs import AttentionInputs, AttentionMask


def unsupported_reason(inputs: AttentionInputs) -> Optional[str]:
    """``local`` runs every input: no device, dtype, head-dim or mask restrictions."""
    return None


def local_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AttentionMask,
    softmax_scale: float,
    dropout_p: float,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """query [sq, b, h, d], key/value [sk, b, g, d] with h % g == 0 -> [sq, b, h, d] in query's dtype.

    ``bias`` (broadcastable to [b, h, sq, sk]) is added to the scaled scores: T5's relative position bias.
    """
    sq, b, h, d = query.shape
    sk, g = key.shape[0], key.shape[2]
    q = query.permute(1, 2, 0, 3).float()  # (b, h, sq, d)
    k = key.permute(1, 2, 0, 3).float().repeat_interleave(h // g, dim=1)  # (b, h, sk, d)
    v = value.permute(1, 2, 0, 3).float().repeat_interleave(h // g, dim=1)  # (b, h, sk, d)

    scores = torch.matmul(q, k.transpose(-1, -2)) * softmax_scale  # (b, h, sq, sk)
    if bias is not None:
        scores = scores + bias.float()
    allowed = mask.allowed(b, sq, sk, query.device)
    if allowed is not None:
        # A finite fill keeps fully masked rows out of NaN; those rows are zeroed below.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    if allowed is not None:
        probs = probs * allowed.any(dim=-1, keepdim=True)
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    out = torch.matmul(probs, v)  # (b, h, sq, d)
    return out.permute(2, 0, 1, 3).to(query.dtype)  # (sq, b, h, d)
