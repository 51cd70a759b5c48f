"""Build a megatron-core ``T5Model`` from a :class:`T5ModelProvider`.

The provider calls in here (``provide()``); this module takes it by its base class (reading the T5
fields), so the import runs one way only (``t5`` -> ``t5_builder``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from megatron.core import parallel_state
from megatron.core.models.T5 import T5Model
from megatron.core.transformer.transformer_config import TransformerConfig

from bridge.models.base import TransformerProvider
from bridge.models.build_checks import check_provider_for_this_machine, check_vp_stage
from bridge.models.layer_specs import t5_block_specs
from bridge.distributed import ensure_model_parallel
from bridge.models.placement import place_model
from bridge.models.rope import make_rope_host_compatible


def build_t5_model(
    provider: TransformerProvider, pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
    vp_stage: Optional[int] = None,
) -> T5Model:
    provider.validate()
    if provider.pipeline_model_parallel_size != 1:
        raise ValueError("T5 with pipeline_model_parallel_size > 1 is not supported by megatron-core 0.16's T5Model; use 1")
    check_vp_stage(provider, vp_stage)
    check_provider_for_this_machine(provider)
    enc_exclude, dec_exclude = provider.excluded_backends("encoder"), provider.excluded_backends("decoder")
    vocab = provider.padded_vocab_size
    ensure_model_parallel(provider.tensor_model_parallel_size, provider.pipeline_model_parallel_size)
    kwargs = provider.transformer_config_kwargs()
    decoder_config = TransformerConfig(**{**kwargs, "num_layers": provider.resolved_decoder_layers})
    encoder_config = dataclasses.replace(decoder_config, num_layers=provider.resolved_encoder_layers)
    encoder_spec, decoder_spec = t5_block_specs(
        provider.resolved_encoder_layers,
        provider.resolved_decoder_layers,
        provider.encoder_attention_backend,
        provider.decoder_attention_backend,
        enc_exclude,
        dec_exclude,
        provider.deterministic_attention,
        qk_layernorm=provider.qk_layernorm,
    )
    model = T5Model(
        config=decoder_config,
        encoder_config=encoder_config,
        transformer_encoder_layer_spec=encoder_spec,
        transformer_decoder_layer_spec=decoder_spec,
        vocab_size=vocab,
        max_sequence_length=max(provider.resolved_max_positions, provider.resolved_decoder_seq_length),
        pre_process=parallel_state.is_pipeline_first_stage() if pre_process is None else pre_process,
        post_process=parallel_state.is_pipeline_last_stage() if post_process is None else post_process,
        share_embeddings_and_output_weights=provider.share_embeddings_and_output_weights,
        position_embedding_type=provider.position_embedding_type,
        rotary_percent=provider.rotary_percent,
        seq_len_interpolation_factor=provider.seq_len_interpolation_factor,
        fp16_lm_cross_entropy=provider.fp16_lm_cross_entropy,
        parallel_output=provider.parallel_output,
        relative_attention_num_buckets=provider.relative_attention_num_buckets,
        relative_attention_max_distance=provider.relative_attention_max_distance,
    )
    use_rotary_base(model, provider)
    make_rope_host_compatible(model)
    return place_model(model, model.config)


def use_rotary_base(model: T5Model, provider: TransformerProvider) -> None:
    """megatron-core 0.16's ``T5Model`` builds its RoPE with the default base 10000 and takes no
    ``rotary_base``; rebuild the module with the provider's base so the setting takes effect."""
    if provider.position_embedding_type != "rope" or getattr(model, "rotary_pos_emb", None) is None:
        return
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    model.rotary_pos_emb = RotaryEmbedding(
        kv_channels=provider.head_dim,
        rotary_percent=provider.rotary_percent,
        rotary_interleaved=bool(provider.rotary_interleaved),
        seq_len_interpolation_factor=provider.seq_len_interpolation_factor,
        rotary_base=provider.rotary_base,
        use_cpu_initialization=model.config.use_cpu_initialization,
        cp_group=model.rotary_pos_emb.cp_group,
    )
