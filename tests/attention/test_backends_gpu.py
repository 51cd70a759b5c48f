"""GPU checks of the backends inside real megatron-core models (run on the GPU machine)."""

import pytest
import torch

from bridge.attention import BridgeCoreAttention
from bridge.attention.inputs import AttentionMask
from bridge.attention.fused import fused_attention
from bridge.attention.local import local_attention
from bridge.models import AttnBackend, GPTModelProvider, T5ModelProvider

pytestmark = pytest.mark.gpu
VOCAB = 512


def attention_modules(model):
    return [m for m in model.modules() if isinstance(m, BridgeCoreAttention)]


def build(provider_cls, backend, seed=0, **fields):
    torch.manual_seed(seed)
    torch.cuda.manual_seed(seed)
    provider = provider_cls(vocab_size=VOCAB, dtype="bf16", hidden_dropout=0.0, attention_backend=backend, **fields)
    return provider.provide().cuda()


def same_weights(dst, src):
    dst.load_state_dict(src.state_dict(), strict=False)


@pytest.mark.parametrize("groups", [None, 2])
def test_gpt_fused_matches_local_in_bf16_and_backward_runs(groups):
    fields = dict(num_layers=2, hidden_size=256, num_attention_heads=4, num_query_groups=groups, seq_length=128)
    local = build(GPTModelProvider, "local", **fields)
    fused = build(GPTModelProvider, "fused", **fields)
    same_weights(fused, local)
    tokens = torch.randint(0, VOCAB, (2, 128), device="cuda")
    pos = torch.arange(128, device="cuda").expand(2, 128)
    losses = {}
    for name, model in (("local", local), ("fused", fused)):
        loss = model(tokens, pos, None, labels=tokens)
        loss.float().mean().backward()
        losses[name] = loss.float()
        assert all(m.last_backend is AttnBackend(name) for m in attention_modules(model))
    torch.testing.assert_close(losses["fused"], losses["local"], atol=3e-2, rtol=3e-2)
    g_local = local.decoder.layers[0].self_attention.linear_qkv.weight.grad.float()
    g_fused = fused.decoder.layers[0].self_attention.linear_qkv.weight.grad.float()
    assert torch.isfinite(g_fused).all()
    assert (g_fused - g_local).norm() / g_local.norm() < 5e-2


def test_t5_fused_matches_local_with_padding():
    fields = dict(num_layers=2, hidden_size=256, num_attention_heads=4, seq_length=64, decoder_seq_length=32)
    local = build(T5ModelProvider, "local", **fields)
    fused = build(T5ModelProvider, "fused", **fields)
    same_weights(fused, local)
    enc = torch.randint(0, VOCAB, (2, 64), device="cuda")
    dec = torch.randint(0, VOCAB, (2, 32), device="cuda")
    enc_valid = torch.ones(2, 64, dtype=torch.bool, device="cuda")
    enc_valid[0, 40:] = False
    dec_valid = torch.ones(2, 32, dtype=torch.bool, device="cuda")
    dec_valid[1, 20:] = False
    masks = (~enc_valid[:, None, None, :], ~dec_valid[:, None, None, :], ~enc_valid[:, None, None, :])
    losses = {}
    for name, model in (("local", local), ("fused", fused)):
        loss = model(enc, dec, *masks, lm_labels=dec).float()
        (loss * dec_valid).sum().backward()
        losses[name] = loss * dec_valid
    torch.testing.assert_close(losses["fused"], losses["local"], atol=3e-2, rtol=3e-2)


def test_auto_prefers_flash_then_fused_on_gpu():
    from bridge.attention import flash

    model = build(GPTModelProvider, "auto", num_layers=1, hidden_size=256, num_attention_heads=4, seq_length=64)
    tokens = torch.randint(0, VOCAB, (1, 64), device="cuda")
    model(tokens, torch.arange(64, device="cuda")[None], None)
    (module,) = attention_modules(model)
    from bridge.attention.inputs import AttentionInputs

    inputs = AttentionInputs("cuda", torch.bfloat16, 64, 4, 4, 0.0, "causal", 64, 64)
    expected = AttnBackend.flash if flash.unsupported_reason(inputs) is None else AttnBackend.fused
    assert module.last_backend is expected


@pytest.mark.parametrize("causal", [False, True])
def test_fused_function_matches_local_with_gqa_and_padding(causal):
    torch.manual_seed(0)
    q = torch.randn(96, 2, 8, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(96, 2, 2, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(96, 2, 2, 64, device="cuda", dtype=torch.bfloat16)
    valid = torch.ones(2, 96, dtype=torch.bool, device="cuda")
    valid[1, 50:] = False
    mask = AttentionMask(causal=causal, key_padding=valid, query_padding=valid)
    out = fused_attention(q, k, v, mask, 0.125, 0.0)
    ref = local_attention(q, k, v, mask, 0.125, 0.0)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("groups", [None, 1, 2])
def test_gpt_flash_matches_local_in_bf16(groups):
    fields = dict(num_layers=2, hidden_size=256, num_attention_heads=4, num_query_groups=groups, seq_length=256)
    local = build(GPTModelProvider, "local", **fields)
    flash = build(GPTModelProvider, "flash", **fields)
    same_weights(flash, local)
    tokens = torch.randint(0, VOCAB, (2, 256), device="cuda")
    pos = torch.arange(256, device="cuda").expand(2, 256)
    losses, grads = {}, {}
    for name, model in (("local", local), ("flash", flash)):
        loss = model(tokens, pos, None, labels=tokens).float()
        loss.mean().backward()
        losses[name] = loss
        grads[name] = model.decoder.layers[0].self_attention.linear_qkv.weight.grad.float()
        assert all(m.last_backend is AttnBackend(name) for m in attention_modules(model))
    torch.testing.assert_close(losses["flash"], losses["local"], atol=3e-2, rtol=3e-2)
    assert (grads["flash"] - grads["local"]).norm() / grads["local"].norm() < 5e-2


def test_t5_flash_varlen_matches_local_with_padding_and_cross_attention():
    fields = dict(num_layers=2, hidden_size=256, num_attention_heads=4, seq_length=96, decoder_seq_length=48)
    local = build(T5ModelProvider, "local", **fields)
    flash = build(T5ModelProvider, "flash", **fields)
    same_weights(flash, local)
    enc = torch.randint(0, VOCAB, (3, 96), device="cuda")
    dec = torch.randint(0, VOCAB, (3, 48), device="cuda")
    enc_valid = torch.ones(3, 96, dtype=torch.bool, device="cuda")
    enc_valid[0, 41:] = False
    enc_valid[2, 77:] = False
    dec_valid = torch.ones(3, 48, dtype=torch.bool, device="cuda")
    dec_valid[1, 19:] = False
    masks = (~enc_valid[:, None, None, :], ~dec_valid[:, None, None, :], ~enc_valid[:, None, None, :])
    losses = {}
    for name, model in (("local", local), ("flash", flash)):
        loss = model(enc, dec, *masks, lm_labels=dec).float()
        (loss * dec_valid).sum().backward()
        losses[name] = loss * dec_valid
        assert {m.last_backend for m in attention_modules(model)} == {AttnBackend(name)}
    torch.testing.assert_close(losses["flash"], losses["local"], atol=3e-2, rtol=3e-2)


def test_t5_mixed_backends_on_gpu():
    model = build(T5ModelProvider, "auto", num_layers=1, hidden_size=256, num_attention_heads=4, seq_length=64,
                  decoder_seq_length=32, encoder_attention_backend="fused", decoder_attention_backend="local")
    enc = torch.randint(0, VOCAB, (2, 64), device="cuda")
    dec = torch.randint(0, VOCAB, (2, 32), device="cuda")
    ones_e = torch.zeros(2, 1, 1, 64, dtype=torch.bool, device="cuda")
    ones_d = torch.zeros(2, 1, 1, 32, dtype=torch.bool, device="cuda")
    model(enc, dec, ones_e, ones_d, ones_e, lm_labels=dec)
    ran = {n.split(".")[0]: m.last_backend for n, m in model.named_modules() if isinstance(m, BridgeCoreAttention)}
    assert ran == {"encoder": AttnBackend.fused, "decoder": AttnBackend.local}
