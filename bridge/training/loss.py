"""One forward pass reduced to a masked mean loss.

The forward call itself differs per model family: each family's spec (``bridge.models.<family>_family``)
supplies ``per_token_loss(model, batch) -> [b, s]``; this module reduces it over ``loss_mask``.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.distributed as dist

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


def sum_over_data_parallel(value: torch.Tensor) -> float:
    """``value`` summed over the data-parallel group (itself when there is none)."""
    if dist.is_initialized():
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized() and parallel_state.get_data_parallel_world_size() > 1:
            value = value.clone()
            dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
    return float(value)


def global_batch_tokens(micro_batches: Sequence[Dict[str, torch.Tensor]]) -> float:
    """Loss tokens of a global batch: this rank's micro-batches, summed over the data-parallel group
    (megatron-core's ``calculate_per_token_loss`` divides the summed loss by it)."""
    local = torch.stack([b["loss_mask"].float().sum() for b in micro_batches]).sum()
    return max(sum_over_data_parallel(local), 1.0)
