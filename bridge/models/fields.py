"""Dataclass helpers shared by the providers: strict field names and one way to read dtype settings."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Dict, Iterable

import torch

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_ALIASES = {
    "float32": "fp32", "32": "fp32", "fp32": "fp32",
    "bfloat16": "bf16", "bf16": "bf16", "bf16-mixed": "bf16",
    "float16": "fp16", "half": "fp16", "16": "fp16", "fp16": "fp16", "16-mixed": "fp16",
}


def parse_dtype(value: Any, field_name: str = "dtype") -> str:
    """'fp32' / 'bf16' / 'fp16' from a string alias or a torch.dtype; anything else is a ValueError."""
    if isinstance(value, torch.dtype):
        for name, dtype in DTYPES.items():
            if dtype == value:
                return name
    elif isinstance(value, str) and value.strip().lower() in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[value.strip().lower()]
    raise ValueError(f"{field_name}={value!r} is not a supported dtype; valid values: fp32, bf16, fp16")


T5_ONLY_FIELDS = frozenset({
    "seq_length_dec", "decoder_seq_length", "encoder_num_layers", "decoder_num_layers",
    "encoder_attention_backend", "decoder_attention_backend", "encoder", "decoder",
})
"""Fields of the T5 provider that a GPT provider cannot have (they name an encoder or a decoder)."""


def unknown_field_message(cls: type, name: str, valid: Iterable[str]) -> str:
    """One line: what is wrong, and the closest valid name only when it is really close."""
    from bridge.models.mcore_fields import GENERATED

    valid = sorted(valid)
    if name in T5_ONLY_FIELDS:
        return f"{cls.__name__} has no field {name!r}: it is a T5ModelProvider field (a GPT model has no encoder/decoder split)"
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.8)
    if close:
        return f"{cls.__name__} has no field {name!r}; did you mean {close[0]!r}?"
    own = [n for n in valid if n not in GENERATED]
    more = " and every megatron-core TransformerConfig field" if len(own) < len(valid) else ""
    return f"{cls.__name__} has no field {name!r} (valid fields: {', '.join(own)}{more})"


def strict_dataclass(cls: type) -> type:
    """``@dataclass`` whose constructor and attribute writes reject unknown field names with a readable error."""
    cls = dataclasses.dataclass(cls)
    names = frozenset(f.name for f in dataclasses.fields(cls))
    init = cls.__init__

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        for key in kwargs:
            if key not in names:
                raise TypeError(unknown_field_message(cls, key, names))
        # Which fields the caller named: a field given at its default value still counts as set (the
        # providers use this to tell "activation='gelu' and gated_linear_unit=True" from a default).
        self.__dict__["_explicit_fields"] = frozenset(kwargs)
        init(self, *args, **kwargs)

    def checked_setattr(self, key, value):
        if key not in names and not key.startswith("_"):
            raise AttributeError(unknown_field_message(type(self), key, names))
        object.__setattr__(self, key, value)

    cls.__init__ = checked_init
    cls.__setattr__ = checked_setattr
    return cls
