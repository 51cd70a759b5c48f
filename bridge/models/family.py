"""Model families: what the rest of the package needs to know about a family, registered once per family.

A :class:`FamilySpec` gathers everything that differs between GPT and T5 outside the model itself: the
provider class, how a batch becomes per-token losses, how many tokens a sample holds, the model FLOPs of a
sample, which datasets to build, and whether the family generates text. The trainer, the recipes and the
checkpoint snapshot look the family up here instead of comparing strings, so a new family is one new module
(``<name>_family.py`` with its spec, next to its provider) imported by ``bridge/models/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import torch


@dataclass(frozen=True)
class FamilySpec:
    """One model family (``family=<name>`` in the recipes)."""

    name: str
    """The recipe's ``family`` value (lower case)."""

    provider_cls: type
    """The provider dataclass; its fields are the schema of ``model.*``."""

    per_token_loss: Callable[[torch.nn.Module, Dict[str, torch.Tensor]], torch.Tensor]
    """``(model, batch) -> [b, s]`` fp32 cross-entropy per (target) token: the family's forward call."""

    tokens_per_sample: Callable[[Dict[str, torch.Tensor]], int]
    """Tokens the model processes per sample of a batch (for tokens/s)."""

    flops_per_sample: Callable[[Any, int], float]
    """``(provider, num_params) -> float``: training (forward + backward) FLOPs of one sample."""

    build_datasets: Callable[[Any, Any, Any], Tuple[Any, Any]]
    """``(data_cfg, tokenizer, provider) -> (train, valid)``; sequence lengths come from the provider."""

    generates_text: bool
    """Whether the trainer can sample from it (end-of-run sample, embedded-task accuracy)."""


_FAMILIES: Dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add ``spec`` (replacing a family of the same name); returns it."""
    _FAMILIES[spec.name] = spec
    return spec


def family_names() -> Tuple[str, ...]:
    """The registered family names, in registration order."""
    return tuple(_FAMILIES)


def family_spec(family: Any) -> FamilySpec:
    """The spec named by ``family`` (a name in any case, an enum member, or a spec); else one ValueError."""
    if isinstance(family, FamilySpec):
        return family
    name = str(getattr(family, "value", family)).strip().lower()
    if name not in _FAMILIES:
        raise ValueError(f"family={family!r} is not valid; use one of: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def family_of_provider(provider: Any) -> FamilySpec:
    """The spec whose provider class ``provider`` (a class or an instance) is, or derives from."""
    cls = provider if isinstance(provider, type) else type(provider)
    for spec in _FAMILIES.values():
        if issubclass(cls, spec.provider_cls):
            return spec
    known = ", ".join(s.provider_cls.__name__ for s in _FAMILIES.values())
    raise TypeError(f"{cls.__name__} is not a model provider class ({known})")


def training_flops(tokens: int, num_params: int, attention: float) -> float:
    """Forward + backward FLOPs: 6·N per token through N parameters, plus ``attention``.

    ``attention`` is the sum of :func:`attention_flops` over the family's attention kinds (the PaLM appendix
    formula: it counts what the model needs, not what a kernel happens to compute).
    """
    return tokens * 6.0 * num_params + attention


def attention_flops(queries: int, keys: int, layers: int, width: int) -> float:
    """Score and value products, forward + backward, of ``queries`` tokens over ``keys`` keys in ``layers``
    layers of attention width ``width`` (heads × head dim): 12·L·w·s_q·s_k, without causal skipping."""
    return 12.0 * layers * width * queries * keys
