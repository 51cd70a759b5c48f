"""Turn a composed recipe (a DictConfig) into a validated :class:`RunConfig` of real objects.

Order matters and is fixed here: translate a NeMo-1 file if that is what was given; check the family
against the model; keep sequence lengths consistent; build each node's dataclass (whose own validation
runs); size the model's vocabulary from the tokenizer; settle the precision; build the provider last,
so its validation (and its legacy-flag translation, with one deprecation warning per flag) sees the
final values.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Dict, Type

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bridge.data import DataConfig, TokenizerConfig, build_tokenizer
from bridge.recipes import legacy, seq_lengths
from bridge.recipes.errors import ConfigError, closest, config_error
from bridge.recipes.schema import FAMILIES, RunConfig, family_of_provider_class
from bridge.training.config import (
    CheckpointConfig, Device, LoggingConfig, OptimizerConfig, Precision, SchedulerConfig, TrainingConfig,
)

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


def _family(cfg: DictConfig) -> str:
    """The recipe's family, checked against the type of the ``model`` node when it has one."""
    if OmegaConf.is_missing(cfg, "family"):
        raise ConfigError(f"family is not set; use one of: {', '.join(FAMILIES)}")
    family = str(cfg.family).strip().lower()
    if family not in FAMILIES:
        raise ConfigError(f"family={cfg.family!r} is not valid; use one of: {', '.join(FAMILIES)}")
    if OmegaConf.is_missing(cfg, "model"):
        raise ConfigError("model is not set; pick a preset with model=<name> (see bridge.models.list_presets())")
    model_type = OmegaConf.get_type(cfg.model)
    if model_type is None or model_type is dict:
        # A plain model YAML (conf/model/<yours>.yaml without a preset behind it): give it the family's
        # provider as schema, so its defaults exist and a misspelled field is an error.
        _check_fields(FAMILIES[family], cfg.model.keys(), "model")
        with _writable(cfg):
            cfg.model = OmegaConf.merge(OmegaConf.structured(FAMILIES[family]), cfg.model)
    else:
        model_family = family_of_provider_class(model_type)
        if model_family != family:
            from bridge.models import list_presets

            raise ConfigError(
                f"the model is a {model_family.upper()} model ({model_type.__name__}) but this recipe trains "
                f"family={family}; use a {family} preset ({', '.join(list_presets(family))}) or a {model_family}_* recipe"
            )
    return family


def _resolve_precision(train: TrainingConfig, model_fields: Dict[str, Any]) -> None:
    """Settle ``train.precision`` and ``model.dtype`` to one concrete value (in place).

    ``auto`` means bf16 when the run computes on a GPU and fp32 on the CPU, unless ``model.dtype`` was set
    to something other than the fp32 default (then that choice stands). An explicit ``train.precision``
    sets the model's dtype; an explicit, different ``model.dtype`` next to it is a contradiction.
    """
    from bridge.models.aliases import dtype_from_mcore_fields
    from bridge.models.fields import parse_dtype

    dtype = parse_dtype(model_fields.get("dtype", "fp32"), "model.dtype")
    implied = dtype_from_mcore_fields(model_fields)  # megatron-core's spelling: model.bf16=true, ...
    if implied is not None:
        if dtype not in ("fp32", implied):
            raise ConfigError(f"model.dtype={dtype} contradicts megatron-core's spelling of it (model.{implied}=true "
                              "/ model.params_dtype); set only one")
        dtype = implied
        for name in ("bf16", "fp16", "params_dtype"):
            model_fields.pop(name, None)
    if train.precision == Precision.auto:
        on_gpu = train.device == Device.cuda or (train.device == Device.auto and torch.cuda.is_available())
        resolved = dtype if dtype != "fp32" else ("bf16" if on_gpu else "fp32")
    else:
        resolved = train.precision.value
        if dtype not in ("fp32", resolved):
            raise ConfigError(
                f"train.precision={resolved} contradicts model.dtype={dtype}; set only train.precision")
    train.precision = Precision(resolved)
    model_fields["dtype"] = resolved


def _fill_vocab_size(tokenizer_cfg: TokenizerConfig, model_fields: Dict[str, Any]) -> None:
    """``model.vocab_size`` from the tokenizer; an explicit size too small for it is an error."""
    try:
        vocab = build_tokenizer(tokenizer_cfg).vocab_size
    except (ValueError, OSError, RuntimeError) as exc:
        raise ConfigError(f"tokenizer: {str(exc).strip().splitlines()[0]}") from exc
    given = model_fields.get("vocab_size")
    if given is None:
        model_fields["vocab_size"] = vocab
    elif given < vocab:
        raise ConfigError(
            f"model.vocab_size={given} is smaller than the tokenizer's vocabulary ({vocab} ids); "
            "leave model.vocab_size unset (null) to take it from the tokenizer")


def build_run_config(cfg: DictConfig) -> RunConfig:
    """A validated :class:`RunConfig` from a composed recipe (or a NeMo-1 style config).

    ``model`` becomes a provider instance with ``vocab_size`` from the tokenizer, its ``seq_length``
    (and T5 ``decoder_seq_length``) equal to the data's, its ``dtype`` equal to ``train.precision``.
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
    family = _family(cfg)
    if family == "t5" and cfg.model.get("decoder_seq_length") is None:
        with _writable(cfg):
            cfg.model.decoder_seq_length = cfg.model.seq_length
    seq_lengths.check_equal(cfg, family)

    sections = {name: _construct(cls, _plain(cfg[name], name), name) for name, cls in SECTIONS.items()}
    model_fields = _plain(cfg.model, "model")
    _fill_vocab_size(sections["tokenizer"], model_fields)
    _resolve_precision(sections["train"], model_fields)
    provider = _construct(FAMILIES[family], _set_fields(FAMILIES[family], model_fields), "model")
    return RunConfig(name=str(cfg.get("name", "run")), family=family, model=provider, **sections)


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
