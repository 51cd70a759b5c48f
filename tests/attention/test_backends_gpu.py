"""GPU checks of the backends inside real megatron-core models (run on the GPU machine).

Each fast backend is compared with ``local`` (the float32 reference) on the same weights and inputs.
"""

import pytest
import torch

from bridge.attention import BridgeCoreAttention, measured, selection
from bridge.attention.fused import fused_attention
from bridge.attention.inputs import AttentionInputs, AttentionMask
from bridge.attention.local import local_attention
from bridge.models import AttnBackend, GPTModelProvider, T5ModelProvider

pytestmark = pytest.mark.gpu
VOCAB = 512


def attention_modules(model):
    return [m for m in model.modules() if isinstance(m, BridgeCoreAttention)]


def build(provider_cls, backend, **fields):
    torch.manual_seed(0)
    torch.cuda.manual_seed(0)
    # Dropout off: the backends are compared on the same arithmetic (attention_dropout defaults to 0.1,
    # as in megatron-core, and each backend draws its own dropout mask).
    provider = provider_cls(vocab_size=VOCAB, dtype="bf16", hidden_dropout=0.0, attention_dropout=0.0,
                            attention_backend=backend, **fields)
    return provider.provide()


def reference_and_candidate(provider_cls, backend, **fields):
    """A local model and a ``backend`` model with the same weights."""
    local = build(provider_cls, "local", **fields)
    other = build(provider_cls, backend, **fields)
    other.load_state_dict(local.state_dict(), strict=False)
    return {"local": local, backend: other}


def first_qkv_grad(model):
    layers = model.decoder.layers
    return layers[0].self_attention.linear_qkv.weight.grad.float()


@pytest.mark.parametrize("backend", ["fused", "flash"])
@pytest.mark.parametrize("groups", [None, 1, 2])
def test_gpt_backend_matches_local_in_bf16_and_backward_runs(backend, groups):
    assert_gpt_matches_local(backend, num_query_groups=groups)


@pytest.mark.parametrize("backend", ["fused", "flash"])
def test_gpt_sliding_window_matches_local(backend):
    # Mistral-style: causal with window_size=(64, 0) on 256 tokens; flash runs it in the kernel (band tiles only).
    assert_gpt_matches_local(backend, num_query_groups=2, window_size=(64, 0))


def assert_gpt_matches_local(backend, **fields):
    models = reference_and_candidate(GPTModelProvider, backend, num_layers=2, hidden_size=256,
                                     num_attention_heads=4, seq_length=256, **fields)
    tokens = torch.randint(0, VOCAB, (2, 256), device="cuda")
    pos = torch.arange(256, device="cuda").expand(2, 256)
    losses, grads = {}, {}
    for name, model in models.items():
        loss = model(tokens, pos, None, labels=tokens).float()
        loss.mean().backward()
        losses[name], grads[name] = loss, first_qkv_grad(model)
        assert all(m.last_backend is AttnBackend(name) for m in attention_modules(model))
    torch.testing.assert_close(losses[backend], losses["local"], atol=3e-2, rtol=3e-2)
    assert torch.isfinite(grads[backend]).all()
    assert (grads[backend] - grads["local"]).norm() / grads["local"].norm() < 5e-2


@pytest.mark.parametrize("backend", ["fused", "flash"])
def test_t5_backend_matches_local_with_padding_and_cross_attention(backend):
    models = reference_and_candidate(T5ModelProvider, backend, num_layers=2, hidden_size=256,
                                     num_attention_heads=4, seq_length=96, decoder_seq_length=48)
    enc = torch.randint(0, VOCAB, (3, 96), device="cuda")
    dec = torch.randint(0, VOCAB, (3, 48), device="cuda")
    enc_valid = torch.ones(3, 96, dtype=torch.bool, device="cuda")
    enc_valid[0, 41:] = False
    enc_valid[2, 77:] = False
    dec_valid = torch.ones(3, 48, dtype=torch.bool, device="cuda")
    dec_valid[1, 19:] = False
    masks = (~enc_valid[:, None, None, :], ~dec_valid[:, None, None, :], ~enc_valid[:, None, None, :])
    losses = {}
    for name, model in models.items():
        loss = model(enc, dec, *masks, lm_labels=dec).float()
        (loss * dec_valid).sum().backward()
        losses[name] = loss * dec_valid
        assert {m.last_backend for m in attention_modules(model)} == {AttnBackend(name)}
    torch.testing.assert_close(losses[backend], losses["local"], atol=3e-2, rtol=3e-2)


def test_auto_runs_the_measured_faster_backend_on_gpu():
    model = build(GPTModelProvider, "auto", num_layers=1, hidden_size=256, num_attention_heads=4, seq_length=64)
    tokens = torch.randint(0, VOCAB, (1, 64), device="cuda")
    model(tokens, torch.arange(64, device="cuda")[None], None)
    (module,) = attention_modules(model)
    inputs = AttentionInputs("cuda", torch.bfloat16, 64, 4, 4, 0.0, "causal", 64, 64)
    order, _ = measured.auto_order(inputs, selection.AUTO_ORDER)  # the speed table's order for this GPU
    expected = next(b for b in order if selection.ruled_out_reason(b, inputs) is None)
    assert module.last_backend is expected


def test_auto_falls_back_to_fused_where_flash_cannot_run():
    # head dim 32 is outside the flash kernel's instantiations: auto must pick fused and say why in its choice
    model = build(GPTModelProvider, "auto", num_layers=1, hidden_size=128, num_attention_heads=4, seq_length=64)
    tokens = torch.randint(0, VOCAB, (1, 64), device="cuda")
    model(tokens, torch.arange(64, device="cuda")[None], None)
    (module,) = attention_modules(model)
    assert module.last_backend is AttnBackend.fused


def test_t5_mixed_backends_on_gpu():
    model = build(T5ModelProvider, "auto", num_layers=1, hidden_size=256, num_attention_heads=4, seq_length=64,
                  decoder_seq_length=32, encoder_attention_backend="fused", decoder_attention_backend="local")
    enc = torch.randint(0, VOCAB, (2, 64), device="cuda")
    dec = torch.randint(0, VOCAB, (2, 32), device="cuda")
    keep_e = torch.zeros(2, 1, 1, 64, dtype=torch.bool, device="cuda")
    keep_d = torch.zeros(2, 1, 1, 32, dtype=torch.bool, device="cuda")
    model(enc, dec, keep_e, keep_d, keep_e, lm_labels=dec)
    ran = {n.split(".")[0]: m.last_backend for n, m in model.named_modules() if isinstance(m, BridgeCoreAttention)}
    assert ran == {"encoder": AttnBackend.fused, "decoder": AttnBackend.local}


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
