import logging

import pytest
import torch

from bridge.attention import AttentionInputs, BackendUnavailableError, select_backend
from bridge.attention.selection import env_disabled_reason
from bridge.models import AttnBackend, GPTModelProvider

CPU_INPUTS = AttentionInputs(device_type="cpu", dtype=torch.float32, head_dim=64, num_heads=8, num_kv_heads=2,
                             dropout_p=0.0, mask_kind="causal", seqlen_q=128, seqlen_k=128)
GPU_BF16 = AttentionInputs(device_type="cuda", dtype=torch.bfloat16, head_dim=64, num_heads=8, num_kv_heads=8,
                           dropout_p=0.0, mask_kind="causal", seqlen_q=128, seqlen_k=128)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN", "NVTE_DEBUG", "NVTE_DEBUG_LEVEL"):
        monkeypatch.delenv(var, raising=False)


def test_auto_resolves_to_local_on_cpu():
    assert select_backend(AttnBackend.auto, CPU_INPUTS) is AttnBackend.local


@pytest.mark.parametrize("level", ["1", "2"])
def test_debug_log_names_choice_and_reasons(monkeypatch, caplog, level):
    monkeypatch.setenv("NVTE_DEBUG", "1")
    monkeypatch.setenv("NVTE_DEBUG_LEVEL", level)
    with caplog.at_level(logging.DEBUG, logger="bridge.attention"):
        select_backend(AttnBackend.auto, CPU_INPUTS, "gpt layer 3 (self attention)")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("gpt layer 3 (self attention): running local (auto)")
    assert "flash ruled out:" in line
    assert "fused ruled out: fused (cuDNN) attention needs a CUDA GPU; this layer runs on cpu" in line
    assert ("[inputs: device=cpu, dtype=float32, head_dim=64" in line) == (level == "2")


def test_no_debug_log_without_nvte_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="bridge.attention"):
        select_backend(AttnBackend.auto, CPU_INPUTS)
    assert not caplog.records


def test_model_layers_log_their_backend(monkeypatch, caplog):
    monkeypatch.setenv("NVTE_DEBUG", "1")
    model = GPTModelProvider(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=50, seq_length=8).provide()
    device = next(model.parameters()).device
    with caplog.at_level(logging.DEBUG, logger="bridge.attention"):
        model(torch.randint(0, 50, (1, 8), device=device), torch.arange(8, device=device)[None], None)
    lines = [r.getMessage() for r in caplog.records]
    expected = "running local (auto)"  # fp32 model: on a GPU too, flash and fused need bf16/fp16
    assert [l.split(":")[0] for l in lines] == ["gpt layer 1 (self attention)", "gpt layer 2 (self attention)"]
    assert all(expected in l for l in lines)


@pytest.mark.parametrize("var, backend", [("NVTE_FLASH_ATTN", AttnBackend.flash), ("NVTE_FUSED_ATTN", AttnBackend.fused),
                                          ("NVTE_UNFUSED_ATTN", AttnBackend.local)])
def test_env_switch_disables_backend(monkeypatch, var, backend):
    monkeypatch.setenv(var, "0")
    assert env_disabled_reason(backend) == f"disabled by {var}=0"


def test_explicit_backend_disabled_by_env_is_an_error(monkeypatch):
    monkeypatch.setenv("NVTE_UNFUSED_ATTN", "0")
    with pytest.raises(BackendUnavailableError, match=r"attention_backend=local cannot run layer 1: disabled by NVTE_UNFUSED_ATTN=0"):
        select_backend(AttnBackend.local, CPU_INPUTS, "layer 1")
    with pytest.raises(BackendUnavailableError, match="NVTE_UNFUSED_ATTN=0"):
        select_backend(AttnBackend.unfused, CPU_INPUTS, "layer 1")


def test_explicit_disabled_backend_fails_at_provide(monkeypatch):
    monkeypatch.setenv("NVTE_UNFUSED_ATTN", "0")
    with pytest.raises(BackendUnavailableError, match="attention_backend=local cannot run the GPT attention layers: disabled by NVTE_UNFUSED_ATTN=0"):
        GPTModelProvider(attention_backend="local", vocab_size=10, num_layers=1, hidden_size=16, num_attention_heads=2).provide()


def test_auto_with_everything_ruled_out_lists_all_reasons(monkeypatch):
    monkeypatch.setenv("NVTE_UNFUSED_ATTN", "0")
    with pytest.raises(BackendUnavailableError) as err:
        select_backend(AttnBackend.auto, CPU_INPUTS, "layer 2")
    message = str(err.value)
    assert message.startswith("no attention backend can run layer 2: flash: ")
    assert "fused: fused (cuDNN) attention needs a CUDA GPU" in message and "local: disabled by NVTE_UNFUSED_ATTN=0" in message


def test_exclude_removes_flash_from_auto(monkeypatch, caplog):
    monkeypatch.setenv("NVTE_DEBUG", "1")
    with caplog.at_level(logging.DEBUG, logger="bridge.attention"):
        select_backend(AttnBackend.auto, CPU_INPUTS, "layer 1", exclude=(AttnBackend.flash,))
    assert "flash ruled out: excluded by use_flash_attention=False" in caplog.records[0].getMessage()


def test_flash_rules_name_the_constraint():
    from bridge.attention import flash

    dropout = AttentionInputs("cuda", torch.bfloat16, 64, 8, 8, dropout_p=0.1, mask_kind="causal")
    assert "no attention dropout (attention_dropout=0.1)" in flash.unsupported_reason(dropout)
    arbitrary = AttentionInputs("cuda", torch.bfloat16, 64, 8, 8, dropout_p=0.0, mask_kind="arbitrary")
    assert "not an arbitrary dense mask" in flash.unsupported_reason(arbitrary)


def test_fused_rules_name_the_constraint():
    from bridge.attention import fused

    fp32 = AttentionInputs("cuda", torch.float32, 64, 8, 8, 0.0)
    assert fused.unsupported_reason(fp32) == "fused (cuDNN) attention supports bf16 and fp16, not float32"
    odd = AttentionInputs("cuda", torch.bfloat16, 60, 8, 8, 0.0)
    assert "multiple of 8" in fused.unsupported_reason(odd)


def test_a_layer_decides_once_per_input_signature(monkeypatch):
    from bridge.attention import selection

    calls = []
    real = selection.select_backend
    monkeypatch.setattr(selection, "select_backend", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    choice = selection.LayerBackend(AttnBackend.auto, layer="gpt layer 1 (self attention)")
    longer = AttentionInputs(**{**CPU_INPUTS.__dict__, "seqlen_q": 256, "seqlen_k": 256})
    assert [choice.choose(x) for x in (CPU_INPUTS, CPU_INPUTS, longer, CPU_INPUTS)] == [AttnBackend.local] * 4
    assert calls == [CPU_INPUTS, longer] and choice.last is AttnBackend.local


def test_flash_runs_sliding_window_layers(monkeypatch):
    # The window is the kernel's own argument now: flash is not ruled out for it and auto may pick it.
    import bridge.kernels
    from bridge.attention import flash

    monkeypatch.setattr(bridge.kernels, "unavailable_reason", lambda **kwargs: None)
    windowed_inputs = AttentionInputs(**{**GPU_BF16.__dict__, "mask_kind": "sliding_window"})
    assert flash.unsupported_reason(windowed_inputs) is None
    assert select_backend(AttnBackend.auto, windowed_inputs, "layer 1") == AttnBackend.flash


def test_flash_backend_passes_the_window_to_the_kernel(monkeypatch):
    from bridge.attention import flash
    from bridge.attention.inputs import AttentionMask, windowed

    calls = []

    class FakeKernels:
        @staticmethod
        def flash_attn_func(q, k, v, **kwargs):
            calls.append(("fixed", kwargs))
            return torch.zeros_like(q)

        @staticmethod
        def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs):
            calls.append(("varlen", kwargs))
            return torch.zeros_like(q)

    monkeypatch.setattr(flash, "_kernel_module", lambda: FakeKernels)
    q = torch.zeros(4, 2, 2, 8)
    flash.flash_attention(q, q, q, windowed(AttentionMask(causal=True), (3, 0), 2, 4, 4, "cpu"), 0.3, 0.0)
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    padded = AttentionMask(key_padding=valid, query_padding=valid)
    flash.flash_attention(q, q, q, windowed(padded, (1, 2), 2, 4, 4, "cpu"), 0.3, 0.0)
    assert calls[0][0] == "fixed" and calls[0][1]["window_size"] == (3, 0) and calls[0][1]["causal"]
    assert calls[1][0] == "varlen" and calls[1][1]["window_size"] == (1, 2) and not calls[1][1]["causal"]
