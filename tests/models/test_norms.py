"""Sequence parallelism with bridge's torch norms: the norms are marked for megatron-core's gradient sum and
every spec builds them; the lengths must split. (The 2-process runs are tests/training/test_parallel_layouts.py.)"""

from __future__ import annotations


import pytest
import torch
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_config import TransformerConfig

from bridge.models import get_preset
from bridge.models.layer_specs import gpt_layer_spec, t5_block_specs
from bridge.models.norms import TorchNorm



def _config(**kwargs) -> TransformerConfig:
    return TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, **kwargs)


@pytest.mark.parametrize("normalization, cls", [("LayerNorm", torch.nn.LayerNorm), ("RMSNorm", torch.nn.RMSNorm)])
@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_torch_norm_marks_its_parameters_for_the_tensor_parallel_sum(normalization, cls, sequence_parallel):
    config = _config(normalization=normalization, sequence_parallel=sequence_parallel, tensor_model_parallel_size=2)
    norm = TorchNorm(config, 8, eps=1e-6)
    assert type(norm) is cls and norm.eps == 1e-6
    assert [getattr(p, "sequence_parallel") for p in norm.parameters()] == [sequence_parallel] * len(list(norm.parameters()))
    assert config.sequence_parallel == sequence_parallel  # the caller's config is left as it was


def _classes(spec, seen=None):
    """Every module class named anywhere in a spec tree."""
    import dataclasses

    from megatron.core.transformer.spec_utils import ModuleSpec

    seen = set() if seen is None else seen
    if isinstance(spec, type):
        seen.add(spec)
    elif isinstance(spec, ModuleSpec):
        _classes(spec.module, seen)
        _classes(spec.submodules, seen)
    elif isinstance(spec, (list, tuple)):
        for item in spec:
            _classes(item, seen)
    elif dataclasses.is_dataclass(spec):
        for field in dataclasses.fields(spec):
            _classes(getattr(spec, field.name), seen)
    return seen


def test_specs_build_every_norm_with_torch_norm():
    gpt = _classes(gpt_layer_spec("RMSNorm", "local", qk_layernorm=True))
    t5 = _classes(t5_block_specs(1, 1, "local", "local", qk_layernorm=True))
    assert TorchNorm in gpt and TorchNorm in t5
    assert WrappedTorchNorm not in gpt | t5


def test_sequence_parallel_needs_a_sequence_the_ranks_can_split():
    with pytest.raises(ValueError, match="splits seq_length=66 over tensor_model_parallel_size=4: use a seq_length "
                                         "divisible by 4"):
        get_preset("gpt_tiny", seq_length=66, num_attention_heads=4, tensor_model_parallel_size=4,
                   sequence_parallel=True)
    get_preset("gpt_tiny", seq_length=64, num_attention_heads=4, tensor_model_parallel_size=4, sequence_parallel=True)


def test_t5_sequence_parallel_needs_a_decoder_length_the_ranks_can_split():
    with pytest.raises(ValueError, match="splits decoder_seq_length=30 over tensor_model_parallel_size=4"):
        get_preset("t5_tiny", num_attention_heads=4, tensor_model_parallel_size=4, sequence_parallel=True,
                   decoder_seq_length=30)
