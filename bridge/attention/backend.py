"""The attention-backend enum and the one function that turns what users write into it.

Users write backends in many ways: our enum, megatron-core's own ``AttnBackend``, plain strings, and the
``flash_attn`` / ``fused_attn`` aliases from Megatron Bridge's documentation. All of them go through
:func:`parse_attn_backend`, so a typo is an error that lists the valid spellings instead of a setting that
silently does nothing.
"""

from __future__ import annotations

import enum
from typing import Any


class AttnBackend(str, enum.Enum):
    """Which implementation runs the core attention (softmax(QKᵀ)V) of each layer.

    - ``flash``: this repository's CUDA flash-attention kernel.
    - ``fused``: cuDNN fused attention (Transformer Engine when installed, else PyTorch SDPA's cuDNN backend).
    - ``local``: plain PyTorch, runs anywhere; the numerical reference.
    - ``unfused``: megatron-core's name for the plain PyTorch path; the same module as ``local`` here.
    - ``auto``: the fastest backend that supports the layer's inputs, chosen per layer.
    """

    auto = "auto"
    flash = "flash"
    fused = "fused"
    local = "local"
    unfused = "unfused"

    def __str__(self) -> str:  # so f-strings and YAML dumps show "flash", not "AttnBackend.flash"
        return self.value


_ALIASES = {
    "flash_attn": AttnBackend.flash,
    "flash_attention": AttnBackend.flash,
    "fused_attn": AttnBackend.fused,
    "fused_attention": AttnBackend.fused,
}

VALID_SPELLINGS = tuple(b.value for b in AttnBackend) + tuple(_ALIASES)


def parse_attn_backend(value: Any, field_name: str = "attention_backend") -> AttnBackend:
    """Return the :class:`AttnBackend` that ``value`` names, or raise one readable ``ValueError``.

    Accepts our enum, megatron-core's ``AttnBackend`` (matched by member name), and case-insensitive strings
    including the aliases ``flash_attn`` and ``fused_attn``.
    """
    if isinstance(value, AttnBackend):
        return value
    if isinstance(value, enum.Enum):  # megatron-core's AttnBackend (or any enum with a matching name)
        value = value.name
    if isinstance(value, str):
        key = value.strip().lower()
        if key in AttnBackend.__members__:
            return AttnBackend[key]
        if key in _ALIASES:
            return _ALIASES[key]
    raise ValueError(
        f"{field_name}={value!r} is not a valid attention backend; "
        f"valid values: {', '.join(VALID_SPELLINGS)}"
    )
