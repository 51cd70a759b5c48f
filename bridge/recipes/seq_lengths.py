"""Keep the sequence lengths of ``model`` and ``data`` equal, whichever side an override changes.

The recipes make ``data.seq_length`` follow ``model.seq_length`` by interpolation, so changing the model
(``model=gpt_126m`` or ``model.seq_length=512``) changes the data too. An override of the data side alone
(``data.seq_length=128``) is mirrored onto the model here; if both sides end up different, that is an error
naming both, never a silent pick. T5's decoder length (``model.decoder_seq_length`` /
``data.decoder_seq_length``) follows the same rule.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bridge.recipes.errors import ConfigError

PAIRS: Tuple[Tuple[str, str], ...] = (
    ("model.seq_length", "data.seq_length"),
    ("model.decoder_seq_length", "data.decoder_seq_length"),
)
"""(model key, data key) pairs that must hold the same value."""


def _overridden_values(overrides: Iterable[str]) -> Dict[str, object]:
    """key -> value of each plain ``key=value`` override (group choices and deletions left out)."""
    values: Dict[str, object] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.is_delete():
            continue
        values[override.key_or_group] = override.value()
    return values


def _has_key(cfg: DictConfig, dotted: str) -> bool:
    parent, _, leaf = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def mirror_overrides(cfg: DictConfig, overrides: Iterable[str]) -> None:
    """Copy a command-line override of one side of a pair onto the other side of ``cfg`` (in place)."""
    values = _overridden_values(overrides)
    for model_key, data_key in PAIRS:
        if not (_has_key(cfg, model_key) and _has_key(cfg, data_key)):
            continue
        # An interpolation (data.seq_length=${model.seq_length}) links the pair by itself: not a value to copy.
        given = {k: values[k] for k in (model_key, data_key)
                 if k in values and not (isinstance(values[k], str) and "${" in values[k])}
        if len(given) == 2 and given[model_key] != given[data_key]:
            raise ConfigError(
                f"{model_key}={given[model_key]} and {data_key}={given[data_key]} disagree; "
                f"set only {model_key} (the data follows it)"
            )
        if len(given) == 1:
            (source, value), = given.items()
            if value is None:  # model.decoder_seq_length=null: "same as the encoder", settled when building
                continue
            target = data_key if source == model_key else model_key
            OmegaConf.update(cfg, target, value, merge=False)


def model_decoder_length(model: DictConfig) -> Optional[int]:
    """T5's effective decoder length: ``decoder_seq_length``, or ``seq_length`` when that is None."""
    value = model.get("decoder_seq_length")
    return model.seq_length if value is None else value


def check_equal(cfg: DictConfig, family: str) -> None:
    """Raise :class:`ConfigError` if the (resolved) model and data lengths differ."""
    pairs = [("model.seq_length", cfg.model.seq_length, "data.seq_length", cfg.data.seq_length)]
    if family == "t5":
        pairs.append(("model.decoder_seq_length", model_decoder_length(cfg.model),
                      "data.decoder_seq_length", cfg.data.decoder_seq_length))
    for model_key, model_value, data_key, data_value in pairs:
        if model_value != data_value:
            raise ConfigError(
                f"{model_key}={model_value} but {data_key}={data_value}: they must be equal; set {model_key} "
                f"and let {data_key} follow it (the recipes write {data_key}: ${{{model_key}}})"
            )
