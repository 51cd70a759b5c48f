"""megatron-core layer specs with our core-attention module plugged in, one backend per stack.

megatron-core's local specs give the layer structure (norms, linear layers, MLP); we swap each
``core_attention`` for :class:`bridge.attention.BridgeCoreAttention` with the backend in the spec's
params, so every layer carries its own backend instead of reading process-wide environment variables, and
each norm (final norms included) for :class:`bridge.models.norms.TorchNorm`, which also runs sequence parallel.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.models.T5.t5_spec import decoder_model_with_local_spec, encoder_model_with_local_spec
from megatron.core.transformer.attention import CrossAttention
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (TransformerBlock, TransformerBlockSubmodules,
                                                         get_num_layers_to_build)

from bridge.attention import BridgeCoreAttention
from bridge.attention.backend import AttnBackend
from bridge.models.norms import TorchNorm, use_torch_norm


class FullHeadCrossAttention(CrossAttention):
    """Cross-attention with every key/value head, whatever ``num_query_groups`` says.

    megatron-core's ``CrossAttention`` rejects grouped-query configs, so in T5 the query groups (GQA / MQA)
    apply to the encoder and decoder self-attention, and cross-attention keeps all heads.
    """

    def __init__(self, config, *args, **kwargs):
        if config.num_query_groups != config.num_attention_heads:
            config = dataclasses.replace(config, num_query_groups=config.num_attention_heads)
        super().__init__(config, *args, **kwargs)


def core_attention_spec(
    backend: AttnBackend, exclude: Iterable[AttnBackend] = (), deterministic: bool = False, stack: str = ""
) -> ModuleSpec:
    """The ``core_attention`` submodule spec for one backend (``stack`` names the layers in debug logs)."""
    return ModuleSpec(
        module=BridgeCoreAttention,
        params={"backend": backend, "exclude": tuple(exclude), "deterministic": deterministic, "stack": stack},
    )


def gpt_layer_spec(normalization: str, backend: AttnBackend, exclude=(), deterministic: bool = False,
                   qk_layernorm: bool = False) -> ModuleSpec:
    """A GPT decoder layer (causal self-attention + MLP) whose attention runs ``backend``."""
    spec = use_torch_norm(get_gpt_layer_local_spec(normalization=normalization, qk_layernorm=qk_layernorm))
    spec.submodules.self_attention.submodules.core_attention = core_attention_spec(backend, exclude, deterministic, "gpt")
    return spec


def gpt_block_spec(layer: ModuleSpec, config, vp_stage=None) -> ModuleSpec:
    """The decoder block of this pipeline rank (and virtual stage): its share of ``layer`` copies and the
    final norm (megatron-core would pick ``WrappedTorchNorm`` for it, which refuses sequence parallelism)."""
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(module=TransformerBlock,
                      submodules=TransformerBlockSubmodules([layer] * layers, layer_norm=TorchNorm))


def t5_block_specs(
    encoder_layers: int,
    decoder_layers: int,
    encoder_backend: AttnBackend,
    decoder_backend: AttnBackend,
    encoder_exclude=(),
    decoder_exclude=(),
    deterministic: bool = False,
    qk_layernorm: bool = False,
):
    """(encoder, decoder) block specs; the decoder's self- and cross-attention both use ``decoder_backend``.

    megatron-core's T5 local specs have no ``qk_layernorm`` switch; with it on, the query and key norms of
    every attention module are set here the way its GPT local spec sets them.
    """
    encoder = use_torch_norm(encoder_model_with_local_spec())
    encoder.submodules.self_attention.submodules.core_attention = core_attention_spec(encoder_backend, encoder_exclude, deterministic, "encoder")
    decoder = use_torch_norm(decoder_model_with_local_spec())
    decoder.submodules.self_attention.submodules.core_attention = core_attention_spec(decoder_backend, decoder_exclude, deterministic, "decoder")
    decoder.submodules.cross_attention.module = FullHeadCrossAttention
    decoder.submodules.cross_attention.submodules.core_attention = core_attention_spec(decoder_backend, decoder_exclude, deterministic, "decoder")
    if qk_layernorm:
        for attention in (encoder.submodules.self_attention, decoder.submodules.self_attention,
                          decoder.submodules.cross_attention):
            attention.submodules.q_layernorm = TorchNorm
            attention.submodules.k_layernorm = TorchNorm
    return (
        TransformerBlockSubmodules([encoder] * encoder_layers, layer_norm=TorchNorm),
        TransformerBlockSubmodules([decoder] * decoder_layers, layer_norm=TorchNorm),
    )
