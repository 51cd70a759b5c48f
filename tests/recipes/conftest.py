"""Helpers for the recipe tests: build a model from a run config and list its core-attention modules."""

from __future__ import annotations

from typing import Dict, List

import pytest

from bridge.attention import BridgeCoreAttention


def attention_modules(model) -> List[BridgeCoreAttention]:
    mods = [m for m in model.modules() if isinstance(m, BridgeCoreAttention)]
    assert mods, "the built model has no BridgeCoreAttention modules"
    return mods


def backends_by_stack(model) -> Dict[str, set]:
    """stack name ('gpt' / 'encoder' / 'decoder') -> the set of requested backends of its layers."""
    out: Dict[str, set] = {}
    for module in attention_modules(model):
        out.setdefault(module.stack, set()).add(module.backend.value)
    return out


@pytest.fixture
def build_anywhere(monkeypatch):
    """Build models whose explicit backend cannot run on this machine (flash / fused on a CPU).

    The machine check in the builders raises for them; these tests are about which backend the config
    puts into the layers, so the check is switched off and ``.backend`` is inspected instead.
    """
    import bridge.models.build_checks as build_checks

    monkeypatch.setattr(build_checks, "check_backend_for_this_machine", lambda *a, **k: None)
