"""How one megatron-core tensor corresponds to one or more Hugging Face tensors, in both directions.

A family module (``gpt2``, ``llama``, ``t5``) lists one :class:`TensorMap` per megatron tensor of the full
(unsharded) model; the importer and the exporter only walk those lists. Every map converts exactly: import
followed by export gives back bit-identical tensors.

Megatron-core layouts the maps produce:

* ``linear_qkv``: one matrix whose output rows are grouped per key/value head (query group):
  ``[q heads of group 0, k of group 0, v of group 0, q heads of group 1, ...]``, each head ``head_dim`` rows.
  Hugging Face keeps separate q/k/v projections (Llama, T5) or one ``[all q; all k; all v]`` matrix (GPT-2).
* ``linear_fc1`` of a gated MLP (SwiGLU, GeGLU): ``[gate; up]`` stacked on the output dimension.
* The word embedding (and an untied output layer) may have more rows than the vocabulary (megatron pads the
  vocabulary for tensor parallelism): padding rows are zero on import and dropped on export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch


@dataclass(frozen=True)
class TensorMap:
    """One megatron tensor == one Hugging Face tensor (optionally transposed: GPT-2's ``Conv1D`` stores
    its weights as ``[in, out]`` where megatron's linear layers hold ``[out, in]``)."""

    megatron: str
    hf: Tuple[str, ...]
    transpose: bool = False

    def to_megatron(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        (t,) = tensors
        return t.t() if self.transpose else t

    def to_hf(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        return [tensor.t() if self.transpose else tensor]


def same(megatron: str, hf: str, transpose: bool = False) -> TensorMap:
    return TensorMap(megatron, (hf,), transpose)


@dataclass(frozen=True)
class VocabMap(TensorMap):
    """The word embedding or the output layer: ``[vocab, hidden]`` in Hugging Face, possibly padded here.

    Import pads with zero rows up to the model's padded vocabulary (tensor-parallel padding, or ids a
    tokenizer adds past the checkpoint's vocabulary); export keeps the model's first ``vocab_size`` rows.
    """

    vocab_size: int = 0
    padded_vocab_size: int = 0

    def to_megatron(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        (t,) = tensors
        pad = self.padded_vocab_size - t.shape[0]
        return torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad > 0 else t

    def to_hf(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        return [tensor[: self.vocab_size]]


@dataclass(frozen=True)
class QKVMap(TensorMap):
    """megatron's grouped ``linear_qkv`` (weight or bias) == Hugging Face's q, k, v projections.

    ``hf`` names three tensors (q, k, v) or, with ``fused_hf``, one ``[q; k; v]`` tensor (GPT-2's
    ``c_attn``, which is also transposed).
    """

    num_heads: int = 0
    num_groups: int = 0
    head_dim: int = 0
    fused_hf: bool = False

    def _split_hf(self, tensors: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        if not self.fused_hf:
            return tuple(t.t() if self.transpose else t for t in tensors)
        (t,) = tensors
        t = t.t() if self.transpose else t
        q_rows, kv_rows = self.num_heads * self.head_dim, self.num_groups * self.head_dim
        return tuple(torch.split(t, [q_rows, kv_rows, kv_rows]))

    def to_megatron(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        q, k, v = self._split_hf(tensors)
        rest = q.shape[1:]
        per_group = self.num_heads // self.num_groups
        q = q.reshape(self.num_groups, per_group * self.head_dim, *rest)
        k = k.reshape(self.num_groups, self.head_dim, *rest)
        v = v.reshape(self.num_groups, self.head_dim, *rest)
        return torch.cat([q, k, v], dim=1).reshape(-1, *rest)

    def to_hf(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        rest = tensor.shape[1:]
        per_group = self.num_heads // self.num_groups
        grouped = tensor.reshape(self.num_groups, (per_group + 2) * self.head_dim, *rest)
        q, k, v = torch.split(grouped, [per_group * self.head_dim, self.head_dim, self.head_dim], dim=1)
        q, k, v = (x.reshape(-1, *rest) for x in (q, k, v))
        if self.fused_hf:
            fused = torch.cat([q, k, v])
            return [fused.t() if self.transpose else fused]
        return [x.t() if self.transpose else x for x in (q, k, v)]


@dataclass(frozen=True)
class GatedMLPMap(TensorMap):
    """megatron's gated ``linear_fc1`` == Hugging Face's (gate, up) projections stacked as ``[gate; up]``."""

    def to_megatron(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        gate, up = tensors
        return torch.cat([gate, up])

    def to_hf(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        return list(torch.chunk(tensor, 2))


@dataclass(frozen=True)
class KVMap(TensorMap):
    """megatron's cross-attention ``linear_kv`` == Hugging Face's k, v projections: rows ``[k; v]`` per head."""

    num_heads: int = 0
    head_dim: int = 0

    def to_megatron(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        k, v = (t.reshape(self.num_heads, self.head_dim, *t.shape[1:]) for t in tensors)
        return torch.cat([k, v], dim=1).reshape(-1, *k.shape[2:])

    def to_hf(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        rest = tensor.shape[1:]
        k, v = torch.chunk(tensor.reshape(self.num_heads, 2 * self.head_dim, *rest), 2, dim=1)
        return [k.reshape(-1, *rest), v.reshape(-1, *rest)]


@dataclass(frozen=True)
class ScaledMap(TensorMap):
    """megatron tensor == Hugging Face tensor × ``factor`` (a constant scale folded into a weight; exact in
    both directions when ``factor`` is a power of two)."""

    factor: float = 1.0

    def to_megatron(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        (t,) = tensors
        return t * self.factor

    def to_hf(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        return [tensor / self.factor]


@dataclass(frozen=True)
class AbsentMap(TensorMap):
    """A megatron tensor Hugging Face does not have (``hf`` is empty): the importer zeroes and freezes it,
    so fine-tuning leaves it at zero; a non-zero value cannot be exported."""

    def to_hf(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        if tensor.count_nonzero():
            from bridge.interop.hf.errors import HFConversionError

            raise HFConversionError(f"megatron tensor {self.megatron!r} is not zero, and Hugging Face has no "
                                    "place for it; it cannot be exported")
        return []
