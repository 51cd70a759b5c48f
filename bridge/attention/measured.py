"""``auto``'s speed rule: flash or fused, whichever the committed benchmark measured faster for these inputs.

The measurements live in :mod:`bridge.attention.speed_table`, which ``scripts/bench_attention.py
--speed-table`` writes on a GPU: one row per (GPU architecture, head dim, mask, length band) with the backend
that ran fwd+bwd faster and by how much. A layer's inputs are looked up by the running GPU's architecture,
their head dim, mask kind (``none`` or ``causal``) and length (the longer of the query and key lengths); the
row with the largest ``min_len`` not above that length applies. Inputs the table has no row for (another
GPU, padding masks, an unmeasured head dim) keep the fixed order flash > fused > local, and the debug log
says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from bridge.attention import speed_table
from bridge.attention.inputs import AttentionInputs
from bridge.attention.backend import AttnBackend

MEASURED_MASKS = ("none", "causal")


@dataclass(frozen=True)
class SpeedRow:
    """One measurement: ``faster`` ran fwd+bwd ``ratio`` times the TFLOP/s of the other backend."""

    arch: str
    head_dim: int
    mask: str
    min_len: int
    faster: str
    ratio: float

    @property
    def slower(self) -> str:
        return "fused" if self.faster == "flash" else "flash"


ROWS: Tuple[SpeedRow, ...] = tuple(SpeedRow(*row) for row in speed_table.ROWS)


def arch_name(capability: Tuple[int, int]) -> str:
    """(9, 0) -> "sm90"."""
    return f"sm{capability[0]}{capability[1]}"


@functools.lru_cache(maxsize=None)
def device_arch(index: int) -> str:
    """The architecture of CUDA device ``index`` (cached: asked once per device)."""
    return arch_name(torch.cuda.get_device_capability(index))


def current_arch(inputs: AttentionInputs) -> Optional[str]:
    """The architecture the inputs run on, or None off CUDA."""
    if inputs.device_type != "cuda" or not torch.cuda.is_available():
        return None
    return device_arch(torch.cuda.current_device())


def _length(inputs: AttentionInputs) -> Optional[int]:
    lengths = [s for s in (inputs.seqlen_q, inputs.seqlen_k) if s is not None]
    return max(lengths) if lengths else None


def lookup(arch: str, inputs: AttentionInputs, rows: Sequence[SpeedRow] = ROWS) -> Optional[SpeedRow]:
    """The measured row for these inputs on ``arch``, or None when nothing comparable was measured."""
    length = _length(inputs)
    if length is None or inputs.mask_kind not in MEASURED_MASKS:
        return None
    band = [r for r in rows if r.arch == arch and r.head_dim == inputs.head_dim and r.mask == inputs.mask_kind]
    below = [r for r in band if r.min_len <= length]
    return max(below, key=lambda r: r.min_len) if below else None


def _band_text(row: SpeedRow, rows: Sequence[SpeedRow]) -> str:
    upper = [r.min_len for r in rows if (r.arch, r.head_dim, r.mask) == (row.arch, row.head_dim, row.mask)
             and r.min_len > row.min_len]
    if upper:
        return f"length {row.min_len}-{min(upper) - 1}"
    return f"length >= {row.min_len}"


def explain(row: SpeedRow, rows: Sequence[SpeedRow] = ROWS) -> str:
    """The debug-log sentence for one row, e.g. 'fused: 1.20x faster than flash on sm90 for d=64 causal ...'."""
    mask = "causal" if row.mask == "causal" else "non-causal"
    return (f"{row.faster}: {row.ratio:.2f}x faster than {row.slower} on {row.arch} for d={row.head_dim} {mask}, "
            f"{_band_text(row, rows)} (fwd+bwd, per {speed_table.SOURCE})")


def auto_order(
    inputs: AttentionInputs, default: Tuple[AttnBackend, ...], arch: Optional[str] = None
) -> Tuple[Tuple[AttnBackend, ...], str]:
    """``auto``'s order of preference for these inputs and the sentence that says why.

    The measured faster of flash and fused goes first; everything else keeps ``default``'s order.
    ``arch`` defaults to the running GPU's.
    """
    arch = arch if arch is not None else current_arch(inputs)
    row = lookup(arch, inputs) if arch is not None else None
    if row is None:
        where = arch or inputs.device_type
        order = " > ".join(b.value for b in default)
        return default, f"fixed order {order} (no speed measurement for {where}, d={inputs.head_dim}, mask={inputs.mask_kind})"
    faster = AttnBackend(row.faster)
    return (faster,) + tuple(b for b in default if b != faster), explain(row)
