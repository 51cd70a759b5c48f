"""Model providers: dataclasses that carry every model knob and build megatron-core models.

    from bridge.models import GPTModelProvider, AttnBackend
    provider = GPTModelProvider(num_layers=24, hidden_size=2048, num_attention_heads=32,
                                num_query_groups=8, attention_backend=AttnBackend.flash, vocab_size=50257)
    model = provider.provide()          # a megatron-core GPTModel

Each family (``gpt``, ``t5``) registers a :class:`FamilySpec` beside its provider (``gpt_family.py``,
``t5_family.py``): the loss, tokens per sample, FLOPs and datasets the trainer needs. ``family_spec("t5")``
looks one up.
"""

from bridge.attention.backend import AttnBackend, parse_attn_backend
from bridge.models import gpt_family, t5_family  # noqa: F401  (each registers its FamilySpec)
from bridge.models.family import FamilySpec, family_names, family_of_provider, family_spec, register_family
from bridge.models.gpt import GPTModelProvider
from bridge.models.presets import get_preset, list_presets, register_preset
from bridge.models.t5 import T5ModelProvider, T5StackFlags

__all__ = [
    "AttnBackend", "FamilySpec", "GPTModelProvider", "T5ModelProvider", "T5StackFlags", "family_names",
    "family_of_provider", "family_spec", "get_preset", "list_presets", "parse_attn_backend", "register_family",
    "register_preset",
]
