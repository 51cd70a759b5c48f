"""One readable line for every way a recipe can be wrong.

Hydra and OmegaConf report an unknown key, a value of the wrong type or a missing config as a multi-line
message (often with a traceback); :func:`explain` turns each into one line that names the key, what is
wrong and, for a typo, the closest valid key ("did you mean ...").
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Iterable, List, Optional

from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError,
)

from bridge.recipes.moved_keys import moved_key_hint


class ConfigError(ValueError):
    """A recipe, override or config value that cannot make a valid run; the message is one line."""


def closest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate closest to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or an empty string."""
    match = closest(name, candidates)
    return f"; did you mean {match!r}?" if match else ""


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else type(text).__name__


def _all_keys(node: DictConfig, prefix: str = "") -> List[str]:
    """Dotted paths of every key under ``node`` (without resolving interpolations)."""
    keys = []
    for key in node.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            keys.extend(_all_keys(child, path + "."))
    return keys


def _other_family_hint(full_key: str, object_type: Optional[type]) -> str:
    """Name the family a model key belongs to when it is given to the other family's provider."""
    from bridge.models import family_names, family_spec

    parts = full_key.split(".")
    specs = [family_spec(name) for name in family_names()]
    mine = [s for s in specs if s.provider_cls is object_type]
    if len(parts) < 2 or parts[0] != "model" or not mine:
        return ""
    for spec in specs:
        cls = spec.provider_cls
        if cls is not object_type and parts[1] in {f.name for f in dataclasses.fields(cls)}:
            return (f"; {parts[1]!r} is a {spec.name.upper()} setting ({cls.__name__}), but this recipe builds a "
                    f"{mine[0].name.upper()} model ({object_type.__name__})")
    return ""


def unknown_key_message(full_key: str, parent: Optional[DictConfig]) -> str:
    """``unknown config key 'model.num_layer'; did you mean 'model.num_layers'?`` (searching the whole run)."""
    leaf = full_key.rsplit(".", 1)[-1]
    prefix = full_key[: -len(leaf)]
    hint = moved_key_hint(full_key) or ""
    object_type = OmegaConf.get_type(parent) if parent is not None else None
    if parent is not None and not hint:
        hint = _other_family_hint(full_key, object_type)
        siblings = [str(k) for k in parent.keys()]
        match = closest(leaf, siblings)
        if not hint and match:
            hint = f"; did you mean {prefix + match!r}?"
        if not hint:  # the right name in another node (train.lr -> optimizer.lr)?
            root = parent._get_root()
            everywhere = _all_keys(root) if isinstance(root, DictConfig) else []
            by_leaf = {k.rsplit(".", 1)[-1]: k for k in everywhere}
            match = closest(leaf, by_leaf)
            if match:
                hint = f"; did you mean {by_leaf[match]!r}?"
        if not hint and siblings:
            where = prefix.rstrip(".") or "the run config"
            hint = f" (valid keys of {where}: {', '.join(sorted(siblings))})"
    return f"unknown config key {full_key!r}{hint}"


def _explain_omegaconf(exc: OmegaConfBaseException) -> str:
    full_key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, (ConfigAttributeError, ConfigKeyError)) and full_key:
        return unknown_key_message(full_key, getattr(exc, "parent_node", None))
    if isinstance(exc, MissingMandatoryValue):
        return f"config key {full_key!r} has no value; set it (e.g. {full_key}=...)"
    if isinstance(exc, ValidationError) and full_key:
        value = getattr(exc, "value", None)
        return f"{full_key}={value!r} is not valid: {_first_line(exc.msg if hasattr(exc, 'msg') else exc)}"
    where = f"{full_key}: " if full_key else ""
    return f"{where}{_first_line(exc.msg if hasattr(exc, 'msg') else exc)}"


def _explain_missing_config(exc: MissingConfigException) -> str:
    missing = exc.missing_cfg_file or ""
    options = list(exc.options or [])
    if "/" in missing and options:  # a config-group choice: model=gpt_tny
        group, choice = missing.rsplit("/", 1)
        hint = did_you_mean(choice, options) or ""
        return f"{group}={choice} does not exist{hint} (available: {', '.join(sorted(options))})"
    return _first_line(exc)


def explain(exc: BaseException) -> str:
    """One line describing ``exc`` (a Hydra / OmegaConf / validation error) for a person to act on."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, MissingConfigException):
        return _explain_missing_config(exc)
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override: {_first_line(exc)}"
    if isinstance(exc, (ConfigCompositionException, HydraException)):
        cause = exc.__cause__ or exc.__context__  # Hydra re-raises a YAML's own key error without ``from``
        if isinstance(cause, OmegaConfBaseException):
            return _explain_omegaconf(cause)
        if cause is not None:
            return explain(cause)
        return _first_line(exc)
    if isinstance(exc, OmegaConfBaseException):
        return _explain_omegaconf(exc)
    return _first_line(exc)


def config_error(exc: BaseException) -> ConfigError:
    """``exc`` as a :class:`ConfigError` with the one-line explanation (raise it ``from exc``)."""
    return ConfigError(explain(exc))
