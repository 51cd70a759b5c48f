"""What a model family (GPT-2, Llama, T5) tells the importer and exporter, and reading its config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from bridge.interop.hf.errors import HFConversionError
from bridge.interop.hf.mapping import TensorMap


@dataclass(frozen=True)
class Family:
    """One Hugging Face architecture family and how it maps onto a bridge provider."""

    name: str
    model_types: Tuple[str, ...]
    """``model_type`` values of config.json this family imports."""
    provider_fields: Callable[[Dict[str, Any]], Tuple[Type, Dict[str, Any]]]
    """config.json -> (provider class, provider fields); unsupported settings raise HFConversionError."""
    tensor_maps: Callable[[Any, Optional[Dict[str, Any]]], List[TensorMap]]
    """(provider, config.json or None on export) -> the maps of every tensor of the full (unsharded,
    unstaged) megatron model."""
    hf_config: Callable[[Any, Dict[str, Optional[int]]], Any]
    """(provider, special token ids) -> a ``transformers`` config object for export."""
    exports: Callable[[Any], bool]
    """Whether this family is the export target for a provider (the first family that says yes wins)."""
    ignored: Callable[[Any], Tuple[str, ...]] = lambda provider: ()
    """Regexes of Hugging Face tensors that hold nothing the megatron model needs (buffers, a tied head)."""


class ConfigReader:
    """Read config.json keys with one clear error for a missing required key or an unsupported value."""

    def __init__(self, config: Dict[str, Any], source: str = "config.json") -> None:
        self.config, self.source = config, source

    def need(self, key: str) -> Any:
        if self.config.get(key) is None:
            raise HFConversionError(f"{self.source} has no {key!r}, which a {self.config.get('model_type')} "
                                    "model needs")
        return self.config[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.config.get(key)
        return default if value is None else value

    def unsupported(self, key: str, value: Any, why: str) -> HFConversionError:
        return HFConversionError(f"{self.source}: {key}={value!r} is not supported: {why}")

    def choice(self, key: str, default: Any, mapping: Dict[Any, Any]) -> Any:
        value = self.get(key, default)
        if value not in mapping:
            raise self.unsupported(key, value, f"supported values: {', '.join(map(str, mapping))}")
        return mapping[value]


def integral(reader: ConfigReader, key: str, value: float) -> int:
    """A float config value that megatron-core takes as an int (``rope_theta`` -> ``rotary_base``)."""
    if float(value) != int(value):
        raise reader.unsupported(key, value, "megatron-core takes an integer here")
    return int(value)
