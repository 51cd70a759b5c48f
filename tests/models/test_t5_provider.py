import logging

import pytest
import torch
from megatron.core.models.T5 import T5Model

from bridge.attention import BridgeCoreAttention
from bridge.models import AttnBackend, T5ModelProvider, get_preset

VOCAB = 101


def tiny_t5(**overrides):
    fields = dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=24, decoder_seq_length=12,
                  vocab_size=VOCAB, hidden_dropout=0.0)
    fields.update(overrides)
    return T5ModelProvider(**fields)


def backends_by_stack(model):
    """{'encoder': {...requested backends}, 'decoder': {...}} read off the built layers."""
    found = {"encoder": set(), "decoder": set()}
    for name, module in model.named_modules():
        if isinstance(module, BridgeCoreAttention):
            found[name.split(".")[0]].add(module.backend)
    return found


def run_t5(model, batch=2, enc_len=24, dec_len=12):
    device = next(model.parameters()).device
    enc = torch.randint(0, VOCAB, (batch, enc_len), device=device)
    dec = torch.randint(0, VOCAB, (batch, dec_len), device=device)
    enc_valid = torch.ones(batch, enc_len, dtype=torch.bool, device=device)
    enc_valid[0, enc_len // 2:] = False  # one padded sequence
    dec_valid = torch.ones(batch, dec_len, dtype=torch.bool, device=device)
    loss = model(enc, dec, ~enc_valid[:, None, None, :], ~dec_valid[:, None, None, :], ~enc_valid[:, None, None, :],
                 lm_labels=dec)
    return loss


def test_t5_builds_runs_forward_and_backward_on_cpu():
    model = tiny_t5(num_query_groups=2, attention_backend="local").provide()
    assert isinstance(model, T5Model)
    loss = run_t5(model)
    assert loss.shape == (2, 12) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_encoder_and_decoder_backends_differ_in_built_layers():
    model = tiny_t5(encoder_attention_backend="local", decoder_attention_backend="auto").provide()
    assert backends_by_stack(model) == {"encoder": {AttnBackend.local}, "decoder": {AttnBackend.auto}}
    run_t5(model)
    ran = {n.split(".")[0] + "." + n.split(".")[-2]: m.last_backend for n, m in model.named_modules()
           if isinstance(m, BridgeCoreAttention)}
    if not torch.cuda.is_available():
        assert set(ran.values()) == {AttnBackend.local}  # auto resolves to local on the CPU
    assert len(ran) == 3  # encoder self, decoder self, decoder cross


def test_stack_backends_default_to_attention_backend():
    p = tiny_t5(attention_backend="unfused")
    assert p.encoder_attention_backend is AttnBackend.unfused and p.decoder_attention_backend is AttnBackend.unfused
    p = tiny_t5(attention_backend="local", decoder_attention_backend="fused_attn")
    assert p.encoder_attention_backend is AttnBackend.local and p.decoder_attention_backend is AttnBackend.fused


def test_per_stack_layer_counts():
    model = tiny_t5(encoder_num_layers=3, decoder_num_layers=1, attention_backend="local").provide()
    assert len(model.encoder.layers) == 3 and len(model.decoder.layers) == 1


def test_legacy_stack_flags_map_onto_stack_backends(caplog):
    with caplog.at_level(logging.WARNING, logger="bridge.models"):
        p = tiny_t5(encoder={"use_flash_attention": True}, decoder={"use_flash_attention": False})
    assert p.encoder_attention_backend is AttnBackend.flash
    assert p.decoder_attention_backend is AttnBackend.auto
    assert p.excluded_backends("decoder") == (AttnBackend.flash,)
    assert p.excluded_backends("encoder") == ()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("encoder.use_flash_attention is deprecated" in m for m in messages) == 1
    assert sum("decoder.use_flash_attention is deprecated" in m for m in messages) == 1


def test_legacy_decoder_flag_false_reaches_layers():
    model = tiny_t5(decoder={"use_flash_attention": False}, attention_backend="auto").provide()
    for name, module in model.named_modules():
        if isinstance(module, BridgeCoreAttention):
            expected = (AttnBackend.flash,) if name.startswith("decoder") else ()
            assert module.exclude == expected, name


def test_legacy_stack_flag_conflict():
    with pytest.raises(ValueError, match="encoder.use_flash_attention=True contradicts encoder_attention_backend=fused"):
        tiny_t5(encoder_attention_backend="fused", encoder={"use_flash_attention": True})
    with pytest.raises(ValueError, match="decoder.use_flash_attention=False contradicts decoder_attention_backend=flash"):
        tiny_t5(attention_backend="flash", decoder={"use_flash_attention": False})


def test_unknown_fields_rejected_including_nested():
    with pytest.raises(TypeError, match="T5ModelProvider has no field 'encoder_layers'"):
        T5ModelProvider(encoder_layers=2)
    with pytest.raises(TypeError, match="T5StackFlags has no field 'use_flash_attn'"):
        tiny_t5(encoder={"use_flash_attn": True})


def test_explicit_fused_encoder_on_cpu_names_the_stack():
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    with pytest.raises(RuntimeError, match="attention_backend=fused cannot run the T5 encoder attention layers: fused"):
        tiny_t5(encoder_attention_backend="fused", decoder_attention_backend="local").provide()


@pytest.mark.parametrize("name", ["t5_tiny", "t5_small", "t5_base"])
def test_t5_presets(name):
    p = get_preset(name, vocab_size=VOCAB)
    assert isinstance(p, T5ModelProvider) and p.resolved_decoder_seq_length <= p.seq_length
