"""Named model presets: one registry for both families, each preset a few fields over its provider's defaults.

``get_preset("llama_1b", num_query_groups=4)`` returns a provider; ``list_presets()`` names them all;
``register_preset`` adds one. The Hydra recipes expose every preset as ``model=<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Type, Union

from bridge.models.family import family_of_provider
from bridge.models.gpt import GPTModelProvider
from bridge.models.t5 import T5ModelProvider

Provider = Union[GPTModelProvider, T5ModelProvider]


@dataclass(frozen=True)
class Preset:
    name: str
    provider_cls: Type
    fields: Dict[str, Any]
    description: str

    @property
    def family(self) -> str:
        return family_of_provider(self.provider_cls).name


_REGISTRY: Dict[str, Preset] = {}

# Every preset pads its vocabulary (should_pad_vocab) as Megatron-LM does, and sets attention_dropout
# explicitly (0.0, which the flash kernel needs; megatron-core's default is 0.1).
_PADDED = dict(should_pad_vocab=True)
_GPT3 = dict(position_embedding_type="learned_absolute", normalization="LayerNorm", activation="gelu",
             hidden_dropout=0.1, attention_dropout=0.0, seq_length=2048, **_PADDED)
_LLAMA = dict(position_embedding_type="rope", normalization="RMSNorm", activation="swiglu", add_bias_linear=False,
              hidden_dropout=0.0, attention_dropout=0.0, share_embeddings_and_output_weights=False,
              rotary_base=500000, layernorm_epsilon=1e-5, **_PADDED)
_T5 = dict(position_embedding_type="learned_absolute", normalization="LayerNorm", activation="gelu",
           hidden_dropout=0.1, attention_dropout=0.0, seq_length=512, decoder_seq_length=128, **_PADDED)


def register_preset(name: str, provider_cls: Type, description: str, **fields: Any) -> None:
    """Add a preset; its fields are checked by building the provider once."""
    if name in _REGISTRY:
        raise ValueError(f"preset {name!r} is already registered")
    provider_cls(**fields)
    _REGISTRY[name] = Preset(name, provider_cls, dict(fields), description)


def list_presets(family: Optional[str] = None) -> List[str]:
    """Preset names, optionally only those of ``family`` ('gpt' or 't5')."""
    return sorted(n for n, p in _REGISTRY.items() if family is None or p.family == family)


def preset(name: str) -> Preset:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model preset {name!r}; available: {', '.join(list_presets())}")
    return _REGISTRY[name]


def get_preset(name: str, **overrides: Any) -> Provider:
    """A new provider for preset ``name`` with ``overrides`` applied on top."""
    p = preset(name)
    return p.provider_cls(**{**p.fields, **overrides})


register_preset("gpt_tiny", GPTModelProvider, "4-layer, 128-wide GPT (head dim 64) for tests and the CPU quick start",
                num_layers=4, hidden_size=128, num_attention_heads=2, seq_length=256, hidden_dropout=0.0,
                attention_dropout=0.0, position_embedding_type="rope", **_PADDED)
register_preset("gpt_126m", GPTModelProvider, "GPT-3 Small (125M) shape", num_layers=12, hidden_size=768,
                num_attention_heads=12, **_GPT3)
register_preset("gpt_350m", GPTModelProvider, "GPT-3 Medium (350M) shape", num_layers=24, hidden_size=1024,
                num_attention_heads=16, **_GPT3)
register_preset("gpt_1p3b", GPTModelProvider, "GPT-3 XL (1.3B) shape", num_layers=24, hidden_size=2048,
                num_attention_heads=16, **_GPT3)
register_preset("llama_1b", GPTModelProvider, "Llama-3.2-1B-style: RMSNorm, SwiGLU, RoPE, GQA 32/8",
                num_layers=16, hidden_size=2048, ffn_hidden_size=8192, num_attention_heads=32,
                num_query_groups=8, seq_length=2048, **_LLAMA)
register_preset("t5_tiny", T5ModelProvider, "2+2-layer, 128-wide T5 (head dim 64) for tests", num_layers=2,
                hidden_size=128, num_attention_heads=2, **{**_T5, "seq_length": 128, "decoder_seq_length": 64, "hidden_dropout": 0.0})
register_preset("t5_small", T5ModelProvider, "T5 small (60M) shape", num_layers=6, hidden_size=512,
                ffn_hidden_size=2048, num_attention_heads=8, kv_channels=64, **_T5)
register_preset("t5_base", T5ModelProvider, "T5 base (220M) shape", num_layers=12, hidden_size=768,
                ffn_hidden_size=3072, num_attention_heads=12, kv_channels=64, **_T5)
