"""Model providers: dataclasses that carry every model knob and build megatron-core models.

    from bridge.models import GPTModelProvider, AttnBackend
    provider = GPTModelProvider(num_layers=24, hidden_size=2048, num_attention_heads=32,
                                num_query_groups=8, attention_backend=AttnBackend.flash, vocab_size=50257)
    model = provider.provide()          # a megatron-core GPTModel
"""

from bridge.attention.backend import AttnBackend, parse_attn_backend
from bridge.models.gpt import GPTModelProvider
from bridge.models.presets import get_preset, list_presets, register_preset
from bridge.models.t5 import T5ModelProvider, T5StackFlags

__all__ = [
    "AttnBackend", "parse_attn_backend", "GPTModelProvider", "T5ModelProvider", "T5StackFlags",
    "get_preset", "list_presets", "register_preset",
]
