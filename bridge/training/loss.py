"""One forward pass reduced to a masked mean loss.

The forward call itself differs per model family: each family's spec (``bridge.models.<family>_family``)
supplies ``per_token_loss(model, batch) -> [b, s]``; this module reduces it over ``loss_mask``.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from bridge.models import FamilySpec


def batch_to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def masked_mean(losses: torch.Tensor, loss_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(loss, tokens)``: the mean of per-token ``losses`` [b, s] where ``loss_mask`` is 1, and how many there were."""
    mask = loss_mask.float()
    tokens = mask.sum()
    return (losses.float() * mask).sum() / tokens.clamp(min=1.0), tokens


def masked_loss(model, batch: Dict[str, torch.Tensor], family: FamilySpec) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(loss, tokens)``: the family's forward pass reduced by :func:`masked_mean`."""
    return masked_mean(family.per_token_loss(model, batch), batch["loss_mask"])
