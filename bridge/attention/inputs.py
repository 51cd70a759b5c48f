"""What a core-attention call must compute, reduced to the facts backends decide on.

megatron-core hands a core-attention module a mask in its own convention (bool, ``True`` = masked out,
``[b, 1, 1, sk]`` for key padding or ``[b, 1, sq, sk]`` for anything) plus an ``AttnMaskType``.
:class:`AttentionMask` turns that into what each backend needs: a causal flag, key/query padding vectors
(which the flash kernel runs through its variable-length path), or a dense mask when nothing simpler
describes it. :class:`AttentionInputs` is the summary the backend selection looks at.

Conventions shared by every backend, so that they agree element for element:
- causal masking is bottom-right aligned when the query and key lengths differ (as flash-attn >= 2.1);
- in self-attention with key padding, padded query rows are padding too and their output is zero;
- a query row that may attend to no key outputs zeros, never NaN.
"""

from __future__ import annotations

import weakref
import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from megatron.core.transformer.enums import AttnMaskType

MASK_KINDS = ("none", "causal", "padding", "padding_causal", "sliding_window", "arbitrary")


@dataclass
class AttentionMask:
    """The mask of one attention call.

    Exactly one description is used: ``dense`` when set (bool, True = may attend, broadcastable to
    ``[b, h, sq, sk]``), otherwise ``causal`` plus the optional padding vectors (``[b, s]`` bool, True = real)
    and the optional sliding ``window`` (``(left, right)``, see :func:`windowed`).
    """

    causal: bool = False
    key_padding: Optional[torch.Tensor] = None
    query_padding: Optional[torch.Tensor] = None
    dense: Optional[torch.Tensor] = None
    window: Optional[Tuple[int, int]] = None

    @property
    def kind(self) -> str:
        if self.dense is not None:
            return "arbitrary"
        if self.window is not None:
            return "sliding_window"
        return self.base_kind

    @property
    def base_kind(self) -> str:
        """The kind without the sliding window: what the flash kernel runs the window on top of."""
        padded = self.key_padding is not None or self.query_padding is not None
        if padded:
            return "padding_causal" if self.causal else "padding"
        return "causal" if self.causal else "none"

    def allowed(
        self, b: int, sq: int, sk: int, device: torch.device, with_query_padding: bool = True
    ) -> Optional[torch.Tensor]:
        """Dense bool mask broadcastable to ``[b, h, sq, sk]`` (True = may attend), or None for no mask.

        ``with_query_padding=False`` leaves padded query rows unmasked, for backends that zero those rows
        afterwards rather than feed fully masked rows to a kernel.
        """
        if self.dense is not None:
            return self.dense
        allowed = None
        if self.causal or self.window is not None:
            left, right = self.window if self.window is not None else (-1, 0)
            allowed = band(left, 0 if self.causal else right, sq, sk, device).view(1, 1, sq, sk)
        if self.key_padding is not None:
            keys = self.key_padding.view(b, 1, 1, sk)
            allowed = keys if allowed is None else allowed & keys
        if self.query_padding is not None and with_query_padding:
            queries = self.query_padding.view(b, 1, sq, 1)
            allowed = queries if allowed is None else allowed & queries
        return allowed

    @classmethod
    def from_megatron(
        cls,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: AttnMaskType,
        b: int,
        sq: int,
        sk: int,
        self_attention: bool,
    ) -> "AttentionMask":
        """Read megatron-core's (mask, mask type) pair; see the module docstring for the conventions."""
        causal = attn_mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        if attention_mask is None or attn_mask_type == AttnMaskType.no_mask:
            return cls(causal=causal)
        if attention_mask.dtype != torch.bool:
            raise ValueError(
                f"attention_mask must be a bool tensor (True = masked out, megatron-core's convention), "
                f"got dtype {attention_mask.dtype}"
            )
        mask = attention_mask
        if mask.dim() == 2:  # [b, sk]
            mask = mask.view(mask.shape[0], 1, 1, mask.shape[1])
        if mask.dim() != 4 or mask.shape[-1] != sk or mask.shape[-2] not in (1, sq):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected [b, 1, 1, {sk}] "
                f"or [b, 1, {sq}, {sk}] (True = masked out)"
            )
        mask = mask.expand(b, mask.shape[1], mask.shape[2], sk)
        if mask.shape[1] == 1:
            reduced = cls._reduce_to_padding(mask[:, 0], causal, sq, sk, self_attention)
            if reduced is not None:
                return reduced
        allowed = ~mask
        if causal:
            allowed = allowed & cls(causal=True).allowed(b, sq, sk, mask.device)
        return cls(dense=allowed)

    @classmethod
    def _reduce_to_padding(
        cls, masked: torch.Tensor, causal: bool, sq: int, sk: int, self_attention: bool
    ) -> Optional["AttentionMask"]:
        """``masked`` is [b, 1 or sq, sk]; return a padding description if it is exactly one, else None."""
        if masked.shape[1] == 1:
            key_padding = ~masked[:, 0]
            query_padding = None
        else:
            # An outer product of validity vectors: a key is valid iff some query may see it, and
            # vice versa. Check the whole mask against that description before trusting it.
            key_padding = ~masked.all(dim=1)
            query_padding = ~masked.all(dim=2)
            rebuilt = ~(query_padding.unsqueeze(2) & key_padding.unsqueeze(1))
            if causal:  # the causal part is applied separately; compare only the admissible region
                region = cls(causal=True).allowed(1, sq, sk, masked.device)[0]
                if not torch.equal(rebuilt & region, masked & region):
                    return None
            elif not torch.equal(rebuilt, masked):
                return None
            if bool(query_padding.all()):
                query_padding = None
        if self_attention and sq == sk and query_padding is None:
            query_padding = key_padding
        if key_padding is not None and bool(key_padding.all()):
            key_padding = None
        if query_padding is not None and bool(query_padding.all()):
            query_padding = None
        return cls(causal=causal, key_padding=key_padding, query_padding=query_padding)


_REDUCED: Dict[Tuple, Tuple["weakref.ref", AttentionMask]] = {}
_REDUCED_LIMIT = 32


def reduced_mask(
    attention_mask: Optional[torch.Tensor],
    attn_mask_type: AttnMaskType,
    b: int,
    sq: int,
    sk: int,
    self_attention: bool,
) -> AttentionMask:
    """:meth:`AttentionMask.from_megatron`, computed once per mask tensor rather than once per layer.

    Every layer of a model receives the same mask tensor; reducing it reads the whole mask and, on a GPU,
    waits for the device. The cache is keyed on the tensor's identity and in-place version, and holds it
    only weakly, so a new or modified mask is always reduced afresh.
    """
    if attention_mask is None:
        return AttentionMask.from_megatron(None, attn_mask_type, b, sq, sk, self_attention)
    key = (id(attention_mask), attention_mask._version, attn_mask_type, b, sq, sk, self_attention)
    hit = _REDUCED.get(key)
    if hit is not None and hit[0]() is attention_mask:
        return hit[1]
    mask = AttentionMask.from_megatron(attention_mask, attn_mask_type, b, sq, sk, self_attention)
    if len(_REDUCED) >= _REDUCED_LIMIT:
        _REDUCED.clear()
    _REDUCED[key] = (weakref.ref(attention_mask), mask)
    return mask


@dataclass(frozen=True)
class AttentionInputs:
    """The facts about one attention call (or, before any call, one layer) that decide which backend can run it.

    ``mask_kind`` is None when not known yet (checks made while the model is being built).
    """

    device_type: str
    dtype: torch.dtype
    head_dim: int
    num_heads: int
    num_kv_heads: int
    dropout_p: float
    mask_kind: Optional[str] = None
    seqlen_q: Optional[int] = None
    seqlen_k: Optional[int] = None

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        parts = [
            f"device={self.device_type}",
            f"dtype={dtype}",
            f"head_dim={self.head_dim}",
            f"heads={self.num_heads}/{self.num_kv_heads}",
            f"dropout={self.dropout_p:g}",
        ]
        if self.mask_kind is not None:
            parts.append(f"mask={self.mask_kind}")
        if self.seqlen_q is not None:
            parts.append(f"s_q={self.seqlen_q}, s_k={self.seqlen_k}")
        return ", ".join(parts)


def band(left: int, right: int, sq: int, sk: int, device) -> torch.Tensor:
    """``[sq, sk]`` bool: query ``i`` may see key ``j`` iff ``i + sk - sq - left <= j <= i + sk - sq + right``
    (bottom-right aligned like the causal mask; -1 = unbounded on that side)."""
    rows = torch.arange(sq, device=device).unsqueeze(1) + (sk - sq)
    cols = torch.arange(sk, device=device).unsqueeze(0)
    allowed = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if left >= 0:
        allowed &= cols >= rows - left
    if right >= 0:
        allowed &= cols <= rows + right
    return allowed


def windowed(mask: AttentionMask, window: Tuple[int, int], b: int, sq: int, sk: int, device) -> AttentionMask:
    """``mask`` restricted to a sliding window (megatron-core's ``window_size=(left, right)``, -1 = unlimited).

    Query ``i`` (aligned bottom-right, like the causal mask) may attend keys ``i - left .. i + right``. On a
    causal or padding mask the window stays a description (kind ``sliding_window``) that the flash kernel runs
    natively, skipping the tiles outside the band; the other backends build the dense mask from it. On a dense
    mask it is folded into that mask.
    """
    left, right = (int(x) for x in window)
    if left < 0 and right < 0:
        return mask
    if mask.dense is None:
        return dataclasses.replace(mask, window=(left, right))
    return AttentionMask(dense=mask.dense & band(left, right, sq, sk, device).view(1, 1, sq, sk))
