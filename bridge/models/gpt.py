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

    def provide(self, pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
                vp_stage: Optional[int] = None):
        """Validate, set up parallel state if needed, and return a megatron-core ``GPTModel``.

        ``pre_process`` / ``post_process`` default to this rank's pipeline position (and, with virtual
        pipeline stages, to whether ``vp_stage`` is the first / last chunk), as in Megatron Bridge.
        """
        from bridge.models.gpt_builder import build_gpt_model

        return build_gpt_model(self, pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)
