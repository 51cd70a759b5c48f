"""The one error type of the Hugging Face interop, and the lazy import of its optional packages."""

from __future__ import annotations

import importlib


class HFConversionError(ValueError):
    """A Hugging Face directory or a checkpoint that cannot be converted; the message names the tensor or
    config key at fault and what would be valid."""


_INSTALL_HINT = "pip install 'bridge[hf]' (or: pip install transformers safetensors)"


def require(module: str):
    """Import ``module`` (``safetensors.torch``, ``transformers``), or raise one line saying how to install it.

    The interop's packages are an optional extra: the core of bridge never imports them.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HFConversionError(
            f"Hugging Face conversion needs the '{module.split('.')[0]}' package, which is not installed: "
            f"{_INSTALL_HINT}") from exc
