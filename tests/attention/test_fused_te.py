"""The Transformer Engine path of the fused backend, checked against a stand-in TE module (TE's CUDA wheel
cannot be installed on the machines here): the arguments and masks it receives, and that SDPA is used without it."""

import sys
import types

import pytest
import torch

from bridge.attention import fused
from bridge.attention.inputs import AttentionMask


class FakeDotProductAttention(torch.nn.Module):
    instances = []

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs
        self.calls = []
        FakeDotProductAttention.instances.append(self)

    def forward(self, q, k, v, attention_mask=None, attn_mask_type=None):
        self.calls.append((attention_mask, attn_mask_type))
        sq, b, h, d = q.shape
        return torch.zeros(sq, b, h * d)  # TE returns [sq, b, h*d] for qkv_format="sbhd"


@pytest.fixture
def fake_te(monkeypatch):
    te = types.ModuleType("transformer_engine")
    te_pytorch = types.ModuleType("transformer_engine.pytorch")
    te_pytorch.DotProductAttention = FakeDotProductAttention
    te.pytorch = te_pytorch
    monkeypatch.setitem(sys.modules, "transformer_engine", te)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", te_pytorch)
    fused.transformer_engine_available.cache_clear()
    fused._te_module.cache_clear()
    FakeDotProductAttention.instances.clear()
    yield
    fused.transformer_engine_available.cache_clear()
    fused._te_module.cache_clear()


def test_te_is_used_when_importable_with_gqa_and_bottom_right_causal(fake_te):
    q, k, v = torch.randn(8, 2, 4, 16), torch.randn(8, 2, 2, 16), torch.randn(8, 2, 2, 16)
    out = fused.run(q, k, v, AttentionMask(causal=True), 0.25, 0.1)
    assert out.shape == (8, 2, 4, 16)
    (module,) = FakeDotProductAttention.instances
    assert module.kwargs == dict(num_attention_heads=4, kv_channels=16, num_gqa_groups=2, attention_dropout=0.1,
                                 qkv_format="sbhd", softmax_scale=0.25)
    assert module.calls == [(None, "causal_bottom_right")]


def test_te_padding_masks_are_q_and_kv_pairs_true_masked(fake_te):
    q, k, v = torch.randn(6, 2, 2, 8), torch.randn(6, 2, 2, 8), torch.randn(6, 2, 2, 8)
    valid = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    fused.run(q, k, v, AttentionMask(causal=True, key_padding=valid, query_padding=valid), 0.3, 0.0)
    (mask, mask_type), = FakeDotProductAttention.instances[0].calls
    assert mask_type == "padding_causal_bottom_right"
    q_mask, kv_mask = mask
    assert torch.equal(q_mask, ~valid.view(2, 1, 1, 6)) and torch.equal(kv_mask, ~valid.view(2, 1, 1, 6))


def test_without_te_the_sdpa_path_is_chosen(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_engine", None)  # import fails
    fused.transformer_engine_available.cache_clear()
    try:
        assert fused.transformer_engine_available() is False
    finally:
        fused.transformer_engine_available.cache_clear()
