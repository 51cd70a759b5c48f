"""Provider fields that imported Hugging Face models need: tanh-GELU MLPs, qkv biases, RoPE scaling, T5's
relative position bias and unscaled attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bridge.models import GPTModelProvider, T5ModelProvider


def _gpt(**fields):
    base = dict(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=40, attention_backend="local")
    return GPTModelProvider(**{**base, **fields})


def test_fast_gelu_and_qkv_bias_reach_megatron():
    model = _gpt(activation="fast_gelu", add_bias_linear=False, add_qkv_bias=True).provide()
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(model.config.activation_func(x), F.gelu(x, approximate="tanh"), atol=1e-6)
    names = {n for n, _ in model.named_parameters()}
    assert "decoder.layers.0.self_attention.linear_qkv.bias" in names
    assert "decoder.layers.0.self_attention.linear_proj.bias" not in names


def test_rope_scaling_fields_reach_the_rotary_embedding():
    model = _gpt(position_embedding_type="rope", rope_scaling=True, rope_scaling_factor=8.0,
                 seq_len_interpolation_factor=2.0).provide()
    plain = _gpt(position_embedding_type="rope").provide()
    assert model.rotary_pos_emb.seq_len_interpolation_factor == 2.0
    assert not torch.equal(model.rotary_pos_emb.inv_freq, plain.rotary_pos_emb.inv_freq)
    with pytest.raises(ValueError, match="needs? position_embedding_type=rope"):
        _gpt(rope_scaling=True)


def test_relative_positions_are_t5_only_and_run_local():
    with pytest.raises(ValueError, match="relative .* is a T5 option"):
        _gpt(position_embedding_type="relative")
    fields = dict(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=40, softmax_scale=1.0,
                  position_embedding_type="relative", relative_attention_num_buckets=8)
    with pytest.raises(ValueError, match="decoder_attention_backend=fused cannot add the relative position bias"):
        T5ModelProvider(**fields, encoder_attention_backend="local", decoder_attention_backend="fused")
    with pytest.raises(ValueError, match="relative_attention_num_buckets must be >= 4"):
        T5ModelProvider(**{**fields, "relative_attention_num_buckets": 2})
    model = T5ModelProvider(**fields, activation="fast_geglu").provide().eval()
    assert model.encoder_relative_pos_emb.relative_attention_bias.weight.shape == (8, 2)
    assert model.config.gated_linear_unit and model.config.softmax_scale == 1.0
    enc, dec = torch.randint(0, 40, (1, 5)), torch.randint(0, 40, (1, 4))
    with torch.no_grad():
        out = model(enc, dec, None, None, None)
    assert out.shape == (1, 4, 40) and torch.isfinite(out).all()
    assert {m.last_backend.value for m in model.modules() if getattr(m, "last_backend", None)} == {"local"}
