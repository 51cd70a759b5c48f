"""Deterministic per-epoch sample order, shared by every dataset in this package.

A dataset with ``n`` distinct samples accepts any index ``i >= 0``: ``epoch = i // n`` and the
sample is ``permutation(seed, epoch)[i % n]``. The permutation depends only on ``(seed, epoch)``,
so the order is the same in every process and after a resume, and the trainer may draw more
samples than one epoch holds (the sampler simply counts on). ``len(dataset)`` is ``n``.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch


class EpochShuffledDataset(torch.utils.data.Dataset):
    """Base class: subclasses set ``num_distinct_samples`` and implement ``sample(j, epoch)``."""

    num_distinct_samples: int
    seed: int
    shuffle: bool = True

    _cached_epoch: Optional[int] = None
    _cached_order: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.num_distinct_samples

    def order(self, epoch: int) -> np.ndarray:
        """Permutation of the distinct samples used in ``epoch``."""
        if self._cached_epoch != epoch:
            n = self.num_distinct_samples
            self._cached_order = (np.random.default_rng([self.seed, epoch]).permutation(n)
                                  if self.shuffle else np.arange(n))
            self._cached_epoch = epoch
        return self._cached_order

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        index = int(index)
        if index < 0:
            raise IndexError(f"sample index {index} is negative")
        epoch, position = divmod(index, self.num_distinct_samples)
        return self.sample(int(self.order(epoch)[position]), epoch)

    def sample(self, j: int, epoch: int) -> Dict[str, torch.Tensor]:
        """Distinct sample ``j`` (``epoch`` seeds any randomness beyond the order, e.g. T5 noise)."""
        raise NotImplementedError
