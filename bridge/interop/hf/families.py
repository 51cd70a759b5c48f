"""The families the interop knows, found by config.json's ``model_type`` (import) or by provider (export)."""

from __future__ import annotations

from typing import Dict, Tuple

from bridge.interop.hf import gpt2, llama, t5
from bridge.interop.hf.errors import HFConversionError
from bridge.interop.hf.family import Family

FAMILIES: Tuple[Family, ...] = (gpt2.FAMILY, llama.FAMILY, t5.FAMILY)


def family_for_config(config: Dict, source: str = "config.json") -> Family:
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise HFConversionError(f"{source}: model_type={model_type!r} is not supported; supported: {known}")


def family_for_provider(provider) -> Family:
    for family in FAMILIES:
        if family.exports(provider):
            return family
    raise HFConversionError(
        f"no Hugging Face architecture matches this {type(provider).__name__} (position_embedding_type="
        f"{provider.position_embedding_type}, normalization={provider.normalization}, activation="
        f"{provider.activation}, add_bias_linear={provider.add_bias_linear}): GPT-2 needs learned_absolute + "
        "LayerNorm + gelu/fast_gelu/relu with biases and no GQA; Llama needs rope + RMSNorm + swiglu")
