"""Our short fields and their megatron-core spellings, kept in agreement.

Two settings have two spellings each:

* ``activation`` (ours: ``'swiglu'``) ⇄ ``gated_linear_unit`` + ``activation_func`` (megatron-core:
  ``True`` + ``F.silu``);
* ``dtype`` (ours: ``'bf16'``) ⇄ ``bf16`` / ``fp16`` / ``params_dtype`` (megatron-core).

Either spelling works, and after validation both describe the same model. Megatron Bridge code changes
fields after construction (``provider.bf16 = True``), so resolution remembers what it settled last time:
the spelling the user changed since then wins; changing both spellings to values that disagree is an error.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core.activations import fast_gelu, quick_gelu, squared_relu

from bridge.models.fields import DTYPES, parse_dtype

ACTIVATION_FUNCTIONS: Dict[str, Tuple[bool, Callable]] = {
    "gelu": (False, F.gelu),
    "relu": (False, F.relu),
    "squared_relu": (False, squared_relu),
    "silu": (False, F.silu),
    "quick_gelu": (False, quick_gelu),
    "fast_gelu": (False, fast_gelu),
    "swiglu": (True, F.silu),
    "geglu": (True, F.gelu),
    "fast_geglu": (True, fast_gelu),
    "reglu": (True, F.relu),
}
"""Our activation names -> (megatron-core ``gated_linear_unit``, ``activation_func``)."""

ACTIVATION_ALIASES = {"squared-relu": "squared_relu", "fast-swiglu": "swiglu", "fast-geglu": "geglu",
                      "fast-reglu": "reglu", "swish": "silu"}
"""Other spellings (NeMo 1 writes ``squared-relu`` and ``fast-swiglu``)."""

CUSTOM_ACTIVATION = "custom"
"""``activation`` when ``activation_func`` is a function outside the table (it is then used as given)."""

_FUNCTION_NAMES = {id(fn): name for name, (_, fn) in ACTIVATION_FUNCTIONS.items() if name not in ("swiglu", "geglu", "reglu")}


def parse_activation_func(value: Any) -> Callable:
    """A callable, a short name (``'silu'``) or a dotted import path (``'torch.nn.functional.silu'``)."""
    if callable(value):
        return value
    if isinstance(value, str):
        key = value.strip()
        short = key.rsplit(".", 1)[-1].lower() if key.startswith(("F.", "torch.nn.functional.")) else key.lower()
        if short in ACTIVATION_FUNCTIONS and not ACTIVATION_FUNCTIONS[short][0]:
            return ACTIVATION_FUNCTIONS[short][1]
        module, _, attr = key.rpartition(".")
        if module:
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                fn = None
            if callable(fn):
                return fn
    raise ValueError(
        f"activation_func={value!r} is not a function; give a callable, one of "
        f"{', '.join(n for n in _FUNCTION_NAMES.values())}, or a dotted path such as torch.nn.functional.silu")


def activation_name(gated: bool, func: Callable) -> str:
    """Our activation name for a megatron-core (gated_linear_unit, activation_func) pair."""
    for name, (g, fn) in ACTIVATION_FUNCTIONS.items():
        if g == bool(gated) and fn is func:
            return name
    return CUSTOM_ACTIVATION


def function_path(func: Callable) -> str:
    """``module.name`` of a function (how a run-config snapshot stores ``activation_func``)."""
    return f"{func.__module__}.{func.__qualname__}"


def _dtype_from_flags(bf16: bool, fp16: bool, params_dtype: Optional[torch.dtype]) -> str:
    if bf16 and fp16:
        raise ValueError("bf16=True and fp16=True contradict each other; set one of them")
    if bf16:
        return "bf16"
    if fp16:
        return "fp16"
    return parse_dtype(params_dtype, "params_dtype") if params_dtype is not None else "fp32"


class _Group:
    """One setting with our spelling (``ours``) and megatron-core's (``theirs``)."""

    def __init__(self, ours: str, theirs: Tuple[str, ...], from_ours, from_theirs):
        self.ours, self.theirs = ours, theirs
        self.from_ours = from_ours        # our value -> {their field: value}
        self.from_theirs = from_theirs    # {their field: value} -> our value


def _activation_from_ours(activation: str) -> Dict[str, Any]:
    gated, func = ACTIVATION_FUNCTIONS[activation]
    return {"gated_linear_unit": gated, "activation_func": func}


def _activation_from_theirs(values: Dict[str, Any]) -> str:
    func = parse_activation_func(values["activation_func"]) if values["activation_func"] is not None else F.gelu
    return activation_name(bool(values["gated_linear_unit"]), func)


def _dtype_from_ours(dtype: str) -> Dict[str, Any]:
    return {"bf16": dtype == "bf16", "fp16": dtype == "fp16", "params_dtype": DTYPES[dtype]}


def _dtype_from_theirs(values: Dict[str, Any]) -> str:
    params = values["params_dtype"]
    params = DTYPES[parse_dtype(params, "params_dtype")] if params is not None else None
    return _dtype_from_flags(bool(values["bf16"]), bool(values["fp16"]), params)


GROUPS: List[_Group] = [
    _Group("activation", ("gated_linear_unit", "activation_func"), _activation_from_ours, _activation_from_theirs),
    _Group("dtype", ("bf16", "fp16", "params_dtype"), _dtype_from_ours, _dtype_from_theirs),
]


def _same(a: Any, b: Any) -> bool:
    if callable(a) or callable(b):
        return a is b
    return a == b


def _normalise_theirs(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "activation_func":
        return parse_activation_func(value)
    if name == "params_dtype":
        return DTYPES[parse_dtype(value, "params_dtype")]
    if name in ("bf16", "fp16", "gated_linear_unit"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def resolve_aliases(provider, previous: Optional[Dict[str, Any]], defaults: Dict[str, Any]) -> List[str]:
    """Make both spellings of each group agree on ``provider`` (in place); returns the problems found.

    ``previous`` holds every spelling as settled by the last resolution (None on the first one, when the
    class defaults stand in for it). Afterwards the settled values are stored on the provider for the next.
    """
    problems: List[str] = []
    before = previous if previous is not None else defaults
    explicit = provider.__dict__.pop("_explicit_fields", frozenset()) if previous is None else frozenset()
    settled: Dict[str, Any] = {}
    for group in GROUPS:
        try:
            theirs = {n: _normalise_theirs(n, getattr(provider, n)) for n in group.theirs}
            ours = getattr(provider, group.ours)
            changed = [n for n in group.theirs
                       if theirs[n] is not None and (n in explicit or not _same(theirs[n], before.get(n)))]
            ours_changed = group.ours in explicit or not _same(ours, before[group.ours])
            value = ours
            if changed:
                filled = before_theirs(group, before)
                if group.ours == "dtype" and "params_dtype" not in changed:
                    filled["params_dtype"] = None  # the bf16 / fp16 flags decide; neither = fp32
                filled.update({n: theirs[n] for n in changed})
                value = group.from_theirs(filled)
                if ours_changed and value != ours:
                    given = ", ".join(f"{n}={_show(theirs[n])}" for n in changed)
                    raise ValueError(
                        f"{group.ours}={ours!r} contradicts {given} (megatron-core's spelling of the same setting, "
                        f"meaning {group.ours}={value!r}); set only one of them")
        except ValueError as exc:
            problems.append(str(exc))
            continue
        object.__setattr__(provider, group.ours, value)
        if value == CUSTOM_ACTIVATION:
            object.__setattr__(provider, "gated_linear_unit", bool(filled["gated_linear_unit"]))
            object.__setattr__(provider, "activation_func", filled["activation_func"])
        else:
            for n, v in group.from_ours(value).items():
                object.__setattr__(provider, n, v)
        settled[group.ours] = value
        settled.update({n: getattr(provider, n) for n in group.theirs})
    provider.__dict__["_alias_state"] = settled
    return problems


def before_theirs(group: _Group, before: Dict[str, Any]) -> Dict[str, Any]:
    """megatron-core's spelling as last settled (a None there follows our spelling's value)."""
    derived = group.from_ours(before[group.ours]) if before[group.ours] != CUSTOM_ACTIVATION else {}
    return {n: before.get(n) if before.get(n) is not None else derived.get(n) for n in group.theirs}


def _show(value: Any) -> str:
    if callable(value):
        return function_path(value)
    return repr(value)

