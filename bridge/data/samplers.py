"""Megatron-style batch sampler: consecutive global indices, split over data-parallel ranks.

The sampler itself never shuffles: the datasets of this package map any index ``i >= 0`` to a
sample through a permutation fixed by ``(seed, epoch)`` (see :mod:`bridge.data.epoch_order`).
Resuming therefore only needs ``consumed_samples``: the run continues with exactly the samples
it would have drawn next.

Use it as a DataLoader ``batch_sampler``::

    sampler = PretrainingSampler(total_samples, consumed_samples, micro_batch_size, dp_rank, dp_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=...)
"""

from __future__ import annotations

from typing import Iterator, List


class PretrainingSampler:
    """Yields this rank's micro-batch of indices for each global step of ``micro_batch_size * dp``.

    Global indices run from ``consumed_samples`` up to ``total_samples`` (exclusive); a last
    incomplete group is dropped, so every rank yields the same number of micro-batches.
    ``total_samples`` may exceed ``len(dataset)``: the datasets wrap into the next epoch.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int) -> None:
        if total_samples <= 0:
            raise ValueError(f"total_samples must be positive, got {total_samples}")
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
        if data_parallel_size <= 0:
            raise ValueError(f"data_parallel_size must be positive, got {data_parallel_size}")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank must be in [0, {data_parallel_size}), got {data_parallel_rank}")
        if not 0 <= consumed_samples < total_samples:
            raise ValueError(f"consumed_samples must be in [0, total_samples={total_samples}), got {consumed_samples}")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size

    @property
    def _group(self) -> int:
        return self.micro_batch_size * self.data_parallel_size

    def __len__(self) -> int:
        """Micro-batches this rank will yield."""
        return (self.total_samples - self.consumed_samples) // self._group

    def __iter__(self) -> Iterator[List[int]]:
        first = self.data_parallel_rank * self.micro_batch_size
        for group_start in range(self.consumed_samples, self.total_samples - self._group + 1, self._group):
            start = group_start + first
            yield list(range(start, start + self.micro_batch_size))
