"""The run config as plain data (saved with every checkpoint) and the objects rebuilt from it.

A checkpoint carries ``run_config``: the run's nodes as nested dicts of str / int / float / bool / None /
lists (enums by value), so a checkpoint is readable without the classes that wrote it and
``scripts/generate.py`` can rebuild the model and the tokenizer from the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Dict

import torch

RUN_NODES = ("family", "model", "tokenizer", "data", "optimizer", "scheduler", "train", "checkpoint", "logging")


def to_plain(value: Any) -> Any:
    """``value`` (dataclass, OmegaConf node, enum, dtype, containers) as plain YAML-able data."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return to_plain(OmegaConf.to_container(value, resolve=True, enum_to_str=True))
    except ImportError:  # pragma: no cover - omegaconf is a dependency, but snapshots do not need it
        pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if callable(value) and "<" not in getattr(value, "__qualname__", "<"):
        # A module-level function (a provider's activation_func): stored as its import path, which the
        # providers accept back.
        return f"{value.__module__}.{value.__qualname__}"
    raise TypeError(f"cannot store a {type(value).__name__} in the run config snapshot: {value!r}")


def run_snapshot(run) -> Dict[str, Any]:
    """The run's nodes (those present among :data:`RUN_NODES`) as plain data."""
    return {name: to_plain(getattr(run, name)) for name in RUN_NODES if hasattr(run, name)}


def provider_from_snapshot(snapshot: Dict[str, Any], **overrides: Any):
    """The model provider described by a checkpoint's ``run_config``, with ``overrides`` applied."""
    from bridge.models import family_names, family_spec

    family = snapshot.get("family", "gpt")
    try:
        cls = family_spec(family).provider_cls
    except ValueError:
        raise ValueError(f"checkpoint run_config has family={family!r}; expected one of: "
                         f"{', '.join(family_names())}") from None
    return cls(**{**snapshot["model"], **overrides})


def tokenizer_from_snapshot(snapshot: Dict[str, Any]):
    """The tokenizer a checkpoint's run was trained with."""
    from bridge.data import TokenizerConfig, build_tokenizer

    return build_tokenizer(TokenizerConfig(**snapshot.get("tokenizer", {})))
