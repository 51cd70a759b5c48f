"""One forward pass per model family, reduced to a masked mean loss.

GPT: ``model(tokens, position_ids, None, labels=labels)`` returns per-token losses [b, s] (causal layers,
no mask needed). T5: ``model(enc, dec, enc_mask, dec_mask, enc_dec_mask, lm_labels=labels)`` returns
per-token losses [b, s_dec]; megatron's masks are True where attention is *blocked*, the datasets' masks
True where the token is real, hence the ``~``.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

FAMILIES = ("gpt", "t5")


def family_name(family) -> str:
    """'gpt' or 't5' from a string or an enum member; anything else is a ValueError."""
    name = str(getattr(family, "value", family)).lower()
    if name not in FAMILIES:
        raise ValueError(f"model family {family!r} is not valid; use one of: {', '.join(FAMILIES)}")
    return name


def batch_to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def per_token_loss(model, batch: Dict[str, torch.Tensor], family: str) -> torch.Tensor:
    """Per-token cross-entropy [b, s] (s = decoder length for T5), fp32."""
    if family == "gpt":
        return model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"]).float()
    enc_blocked = ~batch["enc_mask"][:, None, None, :]  # [b, 1, 1, s_enc]
    dec_blocked = ~batch["dec_mask"][:, None, None, :]  # [b, 1, 1, s_dec]
    return model(batch["enc_tokens"], batch["dec_tokens"], enc_blocked, dec_blocked, enc_blocked,
                 lm_labels=batch["labels"]).float()


def masked_mean(losses: torch.Tensor, loss_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(loss, tokens)``: the mean of per-token ``losses`` [b, s] where ``loss_mask`` is 1, and how many there were."""
    mask = loss_mask.float()
    tokens = mask.sum()
    return (losses.float() * mask).sum() / tokens.clamp(min=1.0), tokens


def masked_loss(model, batch: Dict[str, torch.Tensor], family: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(loss, tokens)``: one forward pass reduced by :func:`masked_mean`."""
    return masked_mean(per_token_loss(model, batch, family), batch["loss_mask"])


def tokens_per_sample(batch: Dict[str, torch.Tensor], family: str) -> int:
    """Tokens the model processes per sample (encoder + decoder for T5), for throughput numbers."""
    if family == "gpt":
        return int(batch["tokens"].shape[1])
    return int(batch["enc_tokens"].shape[1] + batch["dec_tokens"].shape[1])
