"""NVTE_DEBUG=1 logs each layer's backend once, in one format (issue 9, item 17)."""

from __future__ import annotations

import logging

import torch

from bridge.attention import selection
from bridge.models import GPTModelProvider


def test_each_layer_logs_once_whatever_the_input_shapes(monkeypatch, caplog):
    monkeypatch.setenv("NVTE_DEBUG", "1")
    model = GPTModelProvider(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=50, seq_length=16).provide()
    device = next(model.parameters()).device
    with caplog.at_level(logging.DEBUG, logger="bridge.attention"):
        for length in (16, 9, 5, 12):  # generation-like: a new sequence length per call
            model(torch.randint(0, 50, (1, length), device=device), torch.arange(length, device=device)[None], None)
    lines = [r.getMessage().split(":")[0] for r in caplog.records]
    assert lines == ["gpt layer 1 (self attention)", "gpt layer 2 (self attention)"]


def test_debug_lines_use_the_application_handler_only(monkeypatch):
    """scripts/train.py puts its handler on the ``bridge`` logger: no second, differently formatted copy."""
    monkeypatch.setenv("NVTE_DEBUG", "1")
    bridge_logger, attention_logger = logging.getLogger("bridge"), logging.getLogger("bridge.attention")
    handler = logging.StreamHandler()
    monkeypatch.setattr(bridge_logger, "handlers", [handler])
    monkeypatch.setattr(attention_logger, "handlers", [])
    selection._ensure_debug_handler()
    assert attention_logger.handlers == []
