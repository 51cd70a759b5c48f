"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling."""

from __future__ import annotations

from typing import Sequence

import torch


def check_sampling(top_k: int, top_p: float, temperature: float) -> None:
    """One ValueError naming the bad setting and the valid range."""
    if top_k < 0 or not 0.0 < top_p <= 1.0 or not temperature > 0.0:
        raise ValueError(f"sampling needs top_k >= 0, 0 < top_p <= 1 and temperature > 0; got top_k={top_k}, "
                         f"top_p={top_p}, temperature={temperature}")


def pick_next(logits: torch.Tensor, top_k: int, top_p: float, temperature: float,
              generators: Sequence[torch.Generator]) -> torch.Tensor:
    """logits ``[batch, vocab]`` -> token ids ``[batch]``.

    ``top_k=1`` is greedy (argmax; temperature and top_p are then irrelevant). Otherwise the logits are divided
    by ``temperature``, restricted to the ``top_k`` likeliest tokens (0 = all) and to the smallest set whose
    probability reaches ``top_p``, and row i draws one token with ``generators[i]`` (one generator per
    sequence: its draws then do not depend on which other sequences are in the batch or still running).
    """
    if top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 1:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p (the likeliest one always stays).
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.cat([torch.multinomial(row, 1, generator=gen) for row, gen in zip(probs, generators)])
