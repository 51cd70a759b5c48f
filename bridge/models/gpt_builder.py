"""Build a megatron-core ``GPTModel`` from a :class:`GPTModelProvider`.

The provider calls in here (``provide()``); this module takes it by its base class, so the import runs one
way only (``gpt`` -> ``gpt_builder``).
"""

from __future__ import annotations

from typing import Optional

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from bridge.models.base import TransformerProvider
from bridge.models.build_checks import check_provider_for_this_machine, check_vp_stage
from bridge.models.layer_specs import gpt_block_spec, gpt_layer_spec
from bridge.distributed import ensure_model_parallel
from bridge.models.placement import place_model
from bridge.models.rope import make_rope_host_compatible


def gpt_transformer_config(provider: TransformerProvider) -> TransformerConfig:
    return TransformerConfig(**provider.transformer_config_kwargs())


def build_gpt_model(
    provider: TransformerProvider, pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
    vp_stage: Optional[int] = None,
) -> GPTModel:
    provider.validate()
    check_provider_for_this_machine(provider)
    exclude = provider.excluded_backends()
    vocab = provider.padded_vocab_size
    ensure_model_parallel(provider.tensor_model_parallel_size, provider.pipeline_model_parallel_size,
                          virtual_pipeline_parallel_size=provider.virtual_pipeline_model_parallel_size)
    check_vp_stage(provider, vp_stage)
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    config = gpt_transformer_config(provider)
    layer = gpt_layer_spec(provider.normalization, provider.attention_backend, exclude,
                           provider.deterministic_attention, qk_layernorm=provider.qk_layernorm)
    model = GPTModel(
        config=config,
        transformer_layer_spec=gpt_block_spec(layer, config, vp_stage),
        vocab_size=vocab,
        max_sequence_length=provider.resolved_max_positions,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=provider.share_embeddings_and_output_weights,
        position_embedding_type=provider.position_embedding_type,
        rotary_percent=provider.rotary_percent,
        rotary_base=provider.rotary_base,
        rope_scaling=provider.rope_scaling,
        rope_scaling_factor=provider.rope_scaling_factor,
        seq_len_interpolation_factor=provider.seq_len_interpolation_factor,
        fp16_lm_cross_entropy=provider.fp16_lm_cross_entropy,
        parallel_output=provider.parallel_output,
        vp_stage=vp_stage,
    )
    make_rope_host_compatible(model)
    return place_model(model, model.config)
