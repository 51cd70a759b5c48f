"""T5 (encoder-decoder) model provider, with an attention backend per stack."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from bridge.attention.backend import AttnBackend, parse_attn_backend
from bridge.models.base import TransformerProvider
from bridge.models.fields import strict_dataclass


@strict_dataclass
class T5StackFlags:
    """Per-stack legacy flags, kept so NeMo-1 configs (``model.encoder.use_flash_attention``) still work."""

    use_flash_attention: Optional[bool] = None
    """Deprecated: True = this stack's backend is flash; False = auto without flash."""


@strict_dataclass
class T5ModelProvider(TransformerProvider):
    """Everything needed to build a megatron-core ``T5Model``; ``provide()`` builds it.

    The encoder and decoder may run different attention backends: ``encoder_attention_backend`` and
    ``decoder_attention_backend`` default to ``attention_backend``. ``num_query_groups`` (GQA / MQA)
    applies to the self-attention of both stacks; cross-attention keeps every head, as megatron-core's
    ``CrossAttention`` supports no grouped-query attention.
    """

    encoder_num_layers: Optional[int] = None
    """Encoder layers; None = num_layers."""
    decoder_num_layers: Optional[int] = None
    """Decoder layers; None = num_layers."""
    decoder_seq_length: Optional[int] = None
    """Maximum decoder (target) length; None = seq_length."""
    seq_length_dec: Optional[int] = None
    """Megatron Bridge's / NeMo's name for decoder_seq_length (set either; both read the same value)."""
    encoder_attention_backend: Any = None
    """Backend of the encoder's self-attention; None = attention_backend."""
    decoder_attention_backend: Any = None
    """Backend of the decoder's self- and cross-attention; None = attention_backend."""
    relative_attention_num_buckets: int = 32
    """Buckets of the relative position bias (position_embedding_type=relative, as Hugging Face's T5)."""
    relative_attention_max_distance: int = 128
    """Distance from which relative positions share the last bucket (position_embedding_type=relative)."""
    encoder: T5StackFlags = dataclasses.field(default_factory=T5StackFlags)
    """Legacy per-stack flags of the encoder."""
    decoder: T5StackFlags = dataclasses.field(default_factory=T5StackFlags)
    """Legacy per-stack flags of the decoder."""

    def check(self, problems: list) -> None:
        super().check(problems)
        self._settle_decoder_length(problems)
        if self.relative_attention_num_buckets < 4 or self.relative_attention_max_distance <= 0:
            problems.append("relative_attention_num_buckets must be >= 4 and relative_attention_max_distance positive, "
                            f"got {self.relative_attention_num_buckets} and {self.relative_attention_max_distance}")
        for name in ("encoder_num_layers", "decoder_num_layers", "decoder_seq_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} must be positive, got {value}")
        tp, decoder_length = self.tensor_model_parallel_size, self.decoder_seq_length
        if self.sequence_parallel and tp > 1 and decoder_length and decoder_length % tp:
            problems.append(f"sequence_parallel=True splits decoder_seq_length={decoder_length} over "
                            f"tensor_model_parallel_size={tp}: use a decoder_seq_length divisible by {tp}")
        try:
            self._resolve_stack_backends()
        except ValueError as exc:
            problems.append(str(exc))

    def _settle_decoder_length(self, problems: list) -> None:
        """``seq_length_dec`` and ``decoder_seq_length`` are one setting: the one changed last wins."""
        last = self.__dict__.get("_decoder_length_state", (None, None))
        ours, theirs = self.decoder_seq_length, self.seq_length_dec
        if ours != theirs:
            ours_changed, theirs_changed = ours != last[0], theirs != last[1]
            if ours_changed and theirs_changed and ours is not None and theirs is not None:
                problems.append(f"decoder_seq_length={ours} contradicts seq_length_dec={theirs} (two names of the "
                                "decoder length); set only one of them")
                return
            value = theirs if theirs_changed and theirs is not None else ours
            object.__setattr__(self, "decoder_seq_length", value)
            object.__setattr__(self, "seq_length_dec", value)
        self.__dict__["_decoder_length_state"] = (self.decoder_seq_length, self.seq_length_dec)

    def _resolve_stack_backends(self) -> None:
        for stack in ("encoder", "decoder"):
            flags = getattr(self, stack)
            if isinstance(flags, dict):  # a plain mapping from YAML / Python
                flags = T5StackFlags(**flags)
                setattr(self, stack, flags)
            field_name = f"{stack}_attention_backend"
            explicit = getattr(self, field_name)
            backend = self.attention_backend if explicit is None else parse_attn_backend(explicit, field_name)
            setattr(
                self, field_name,
                self._resolve_legacy_flag(field_name, backend, flags.use_flash_attention, f"{stack}.use_flash_attention"),
            )
            chosen = getattr(self, field_name)
            if self.position_embedding_type == "relative" and chosen not in (AttnBackend.auto, AttnBackend.local):
                raise ValueError(f"{field_name}={chosen.value} cannot add the relative position bias of "
                                 "position_embedding_type=relative; use local or auto (which runs local for it)")

    def excluded_backends(self, stack: Optional[str] = None):
        """Backends a legacy ``use_flash_attention=False`` (model-wide or for ``stack``) takes out of auto."""
        if stack is not None and getattr(self, stack).use_flash_attention is False:
            return (AttnBackend.flash,)
        return super().excluded_backends()

    @property
    def resolved_encoder_layers(self) -> int:
        return self.encoder_num_layers or self.num_layers

    @property
    def resolved_decoder_layers(self) -> int:
        return self.decoder_num_layers or self.num_layers

    @property
    def resolved_decoder_seq_length(self) -> int:
        return self.decoder_seq_length or self.seq_length

    def provide(self, pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
                vp_stage: Optional[int] = None):
        """Validate, set up parallel state if needed, and return a megatron-core ``T5Model``.

        ``vp_stage`` is accepted for Megatron Bridge's signature; T5 has no virtual pipeline stages, so it
        must be None or 0.
        """
        from bridge.models.t5_builder import build_t5_model

        return build_t5_model(self, pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)
