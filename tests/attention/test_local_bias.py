"""The local backend adds an attention bias (T5's relative position bias) to the scaled scores."""

from __future__ import annotations

import torch

from bridge.attention.inputs import reduced_mask
from bridge.attention.local import local_attention
from megatron.core.transformer.enums import AttnMaskType


def test_bias_is_added_before_the_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 1, 2, 4, generator=g) for _ in range(3))  # [s, b, h, d]
    bias = torch.randn(1, 2, 3, 3, generator=g)
    mask = reduced_mask(None, AttnMaskType.no_mask, 1, 3, 3, True)
    out = local_attention(q, k, v, mask, 1.0, 0.0, bias=bias)
    scores = torch.einsum("qbhd,kbhd->bhqk", q, k) + bias
    expected = torch.einsum("bhqk,kbhd->qbhd", scores.softmax(-1), v)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, local_attention(q, k, v, mask, 1.0, 0.0))
