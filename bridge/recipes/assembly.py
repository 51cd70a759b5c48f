"""Turn a composed recipe (a DictConfig) into a validated :class:`RunConfig` of real objects.

Order matters and is fixed here: translate a NeMo-1 file if that is what was given; check the family
against the model; build each node's dataclass (whose own validation runs) and the provider (its
validation and legacy-flag translation, with one deprecation warning per flag); then
:func:`bridge.training.finalize_run` settles device, precision and vocabulary, the same step ``train``
runs for a config built in Python.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Dict, Type

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bridge.data import DataConfig, TokenizerConfig
from bridge.models import FamilySpec, family_names, family_of_provider, family_spec
from bridge.recipes import legacy
from bridge.recipes.errors import ConfigError, closest, config_error
from bridge.training.config import (
    CheckpointConfig, LoggingConfig, OptimizerConfig, RunConfig, SchedulerConfig, TrainingConfig,
)
from bridge.training.finalize import check_family, finalize_run

logger = logging.getLogger("bridge.recipes")

SECTIONS: Dict[str, Type] = {
    "tokenizer": TokenizerConfig,
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "train": TrainingConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
}
"""Run-config nodes other than ``model``, and the dataclass each becomes."""


def _plain(node: Any, name: str) -> Dict[str, Any]:
    """A node as a plain dict with interpolations resolved; OmegaConf errors become one line."""
    try:
        value = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise config_error(exc) from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of settings, got {value!r}")
    return value


def _check_fields(cls: Type, fields, name: str) -> None:
    """Unknown field names are one :class:`ConfigError` with the closest valid name."""
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        match = closest(unknown[0], valid)
        hint = f"; did you mean '{name}.{match}'?" if match else f" (valid keys of {name}: {', '.join(sorted(valid))})"
        raise ConfigError(f"unknown config key '{name}.{unknown[0]}'{hint}")


def _construct(cls: Type, fields: Dict[str, Any], name: str) -> Any:
    """``cls(**fields)``; unknown fields and failed validation become one :class:`ConfigError` line."""
    _check_fields(cls, fields, name)
    try:
        return cls(**fields)
    except (ValueError, TypeError, AttributeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        prefix = "" if message.startswith(f"{name}.") else f"{name}: "
        raise ConfigError(prefix + message) from exc


def _family(cfg: DictConfig) -> FamilySpec:
    """The recipe's family, checked against the type of the ``model`` node when it has one."""
    if OmegaConf.is_missing(cfg, "family"):
        raise ConfigError(f"family is not set; use one of: {', '.join(family_names())}")
    try:
        spec = family_spec(cfg.family)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if OmegaConf.is_missing(cfg, "model"):
        raise ConfigError("model is not set; pick a preset with model=<name> (see bridge.models.list_presets())")
    model_type = OmegaConf.get_type(cfg.model)
    if model_type is None or model_type is dict:
        # A plain model YAML (conf/model/<yours>.yaml without a preset behind it): give it the family's
        # provider as schema, so its defaults exist and a misspelled field is an error.
        _check_fields(spec.provider_cls, cfg.model.keys(), "model")
        with _writable(cfg):
            cfg.model = OmegaConf.merge(OmegaConf.structured(spec.provider_cls), cfg.model)
    else:
        try:
            check_family(spec, family_of_provider(model_type), model_type)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
    return spec


def build_run_config(cfg: DictConfig) -> RunConfig:
    """A validated :class:`RunConfig` from a composed recipe (or a NeMo-1 style config).

    ``model`` becomes a provider instance; the run is finalised (:func:`bridge.training.finalize_run`:
    ``vocab_size`` from the tokenizer, ``dtype`` equal to ``train.precision``, a concrete ``train.device``).
    Every problem is a :class:`ConfigError` with a one-line message.
    """
    try:
        return _build(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg))
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        raise config_error(exc) from exc
    except ValueError as exc:  # a validation rule outside the node constructors (dtype spellings, ...)
        raise ConfigError(str(exc).strip().splitlines()[0]) from exc


def _build(cfg: DictConfig) -> RunConfig:
    cfg = legacy.translate_nemo1(cfg) if legacy.is_nemo1(cfg) else copy.deepcopy(cfg)
    spec = _family(cfg)
    sections = {name: _construct(cls, _plain(cfg[name], name), name) for name, cls in SECTIONS.items()}
    provider = _construct(spec.provider_cls, _set_fields(spec.provider_cls, _plain(cfg.model, "model")), "model")
    run = RunConfig(name=str(cfg.get("name", "run")), family=spec.name, model=provider, **sections)
    finalize_run(run)
    return run


def _set_fields(cls: Type, fields: Dict[str, Any]) -> Dict[str, Any]:
    """The fields whose value differs from the class default: what the recipe (preset, YAML, overrides) set.

    A composed node carries every schema field; passing only the set ones lets the provider tell which
    spelling of a setting was chosen (``activation`` or ``gated_linear_unit`` + ``activation_func``).
    """
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    return {k: v for k, v in fields.items() if k not in defaults or not _equal(v, defaults[k])}


def _equal(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b) or (a is None and b is None)
    except Exception:
        return False


class _writable:
    """Lift struct / read-only flags of a config for a few internal writes."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self):
        self.flags = (OmegaConf.is_struct(self.cfg), OmegaConf.is_readonly(self.cfg))
        OmegaConf.set_struct(self.cfg, False)
        OmegaConf.set_readonly(self.cfg, False)
        return self.cfg

    def __exit__(self, *exc):
        OmegaConf.set_struct(self.cfg, self.flags[0])
        OmegaConf.set_readonly(self.cfg, self.flags[1])
        return False
