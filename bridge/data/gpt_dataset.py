"""GPT pretraining samples: fixed windows over a token stream.

Why not megatron-core's ``GPTDataset``: it needs the number of samples of the whole run up front
(the data config does not know the training length), a megatron tokenizer class, and it writes
its own index caches keyed by a hash. Windows over a stream with a per-epoch permutation
(:mod:`bridge.data.epoch_order`) give the same kind of samples in a few lines and resume
exactly; the tokens still come from megatron-core's ``IndexedDataset``.

Sample ``j`` covers stream tokens ``[j * s, j * s + s + 1)`` (``s`` = ``seq_length``): consecutive
samples share one token so that every token is predicted once, and documents are concatenated
with their EOD tokens between them, crossing boundaries as Megatron does.
"""

from __future__ import annotations

from typing import Dict

import torch

from bridge.data.epoch_order import EpochShuffledDataset
from bridge.data.indexed import TokenStream


class GPTPretrainingDataset(EpochShuffledDataset):
    """Map-style dataset of ``{"tokens", "labels", "loss_mask", "position_ids"}``, each ``[s]``.

    ``tokens``/``labels``/``position_ids`` are int64, ``loss_mask`` float32 (all ones: every
    position of pretraining data is a real token).
    """

    def __init__(self, stream: TokenStream, seq_length: int, seed: int, name: str = "gpt") -> None:
        if seq_length < 1:
            raise ValueError(f"seq_length must be >= 1, got {seq_length}")
        self.stream, self.seq_length, self.seed = stream, seq_length, seed
        self.num_distinct_samples = (stream.num_tokens - 1) // seq_length
        if self.num_distinct_samples < 1:
            raise ValueError(
                f"{name} data has {stream.num_tokens} tokens in {stream.num_documents} documents, fewer than "
                f"seq_length + 1 = {seq_length + 1}; use more data or a shorter seq_length")
        self._positions = torch.arange(seq_length, dtype=torch.int64)

    def sample(self, j: int, epoch: int) -> Dict[str, torch.Tensor]:
        window = torch.from_numpy(self.stream.read(j * self.seq_length, self.seq_length + 1))
        return {
            "tokens": window[:-1].clone(),  # [s]
            "labels": window[1:].clone(),  # [s]: the next token at each position
            "loss_mask": torch.ones(self.seq_length, dtype=torch.float32),
            "position_ids": self._positions.clone(),
        }

