"""GPT (decoder-only) model provider."""

from __future__ import annotations

from typing import Optional

from bridge.models.base import TransformerProvider
from bridge.models.fields import strict_dataclass


@strict_dataclass
class GPTModelProvider(TransformerProvider):
    """Everything needed to build a megatron-core ``GPTModel``; ``provide()`` builds it.

    Example::

        provider = GPTModelProvider(num_layers=24, hidden_size=2048, num_attention_heads=32,
                                    num_query_groups=8, attention_backend="flash", vocab_size=50257)
        model = provider.provide()
    """

    rope_scaling: bool = False
    """Llama 3.1-style RoPE frequency scaling (megatron-core's: low/high frequency factors 1 and 4, original
    context 8192); position_embedding_type must be rope."""
    rope_scaling_factor: float = 8.0
    """The factor of ``rope_scaling``."""

    def check(self, problems: list) -> None:
        super().check(problems)
        if self.position_embedding_type == "relative":
            problems.append("position_embedding_type=relative (bucketed relative position bias) is a T5 option; "
                            "a GPT takes learned_absolute, rope or none")
        if self.rope_scaling and self.position_embedding_type != "rope":
            problems.append(f"rope_scaling needs position_embedding_type=rope, got {self.position_embedding_type}")
        if self.rope_scaling_factor <= 0:
            problems.append(f"rope_scaling_factor must be positive, got {self.rope_scaling_factor}")

    def provide(self, pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
                vp_stage: Optional[int] = None):
        """Validate, set up parallel state if needed, and return a megatron-core ``GPTModel``.

        ``pre_process`` / ``post_process`` default to this rank's pipeline position (and, with virtual
        pipeline stages, to whether ``vp_stage`` is the first / last chunk), as in Megatron Bridge.
        """
        from bridge.models.gpt_builder import build_gpt_model

        return build_gpt_model(self, pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)
