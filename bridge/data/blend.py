"""Weighted blends: samples drawn from several datasets in fixed proportions (``data.weights``).

This is Megatron's ``--data-path 0.3 A 0.7 B`` and NeMo's weighted ``data_prefix`` / SFT
``concat_sampling_probabilities``. The order comes from megatron-core's own blending routine
(``helpers.build_blending_indices``: each next sample goes to the dataset furthest behind its share), computed
once for a cycle as long as the datasets together; the cycle repeats with each dataset's samples counting on,
so a dataset whose share outgrows it wraps into its next epoch (reshuffled), as Megatron's oversampling does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import torch

from bridge.data.config import DataConfig


def blending_order(weights: Sequence[float], size: int) -> Tuple[np.ndarray, np.ndarray]:
    """megatron-core's blend of ``size`` samples: ``(dataset of each sample, its index within that dataset)``."""
    from megatron.core.datasets import helpers  # compiled with megatron-core; imported lazily (slow import)

    total = float(sum(weights))
    normalized = np.array([w / total for w in weights], dtype=np.float64)
    dataset_index = np.zeros(size, dtype=np.int16)
    sample_index = np.zeros(size, dtype=np.int64)
    helpers.build_blending_indices(dataset_index, sample_index, normalized, len(weights), size, False)
    return dataset_index, sample_index


class BlendedDataset(torch.utils.data.Dataset):
    """Sample ``i`` of the blend of ``datasets`` (each accepting any index >= 0) in proportion to ``weights``."""

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset], weights: Sequence[float]) -> None:
        if len(datasets) != len(weights) or not datasets or min(weights) <= 0:
            raise ValueError(f"a blend needs one positive weight per dataset, got {list(weights)} for "
                             f"{len(datasets)} dataset(s)")
        self.datasets = list(datasets)
        self.cycle = sum(len(d) for d in self.datasets)
        self._dataset, self._sample = blending_order(weights, self.cycle)
        self._per_cycle = np.bincount(self._dataset, minlength=len(self.datasets))

    def __len__(self) -> int:
        return self.cycle

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        index = int(index)
        if index < 0:
            raise IndexError(f"sample index {index} is negative")
        repeat, position = divmod(index, self.cycle)
        d = int(self._dataset[position])
        return self.datasets[d][repeat * int(self._per_cycle[d]) + int(self._sample[position])]


def blended_datasets(cfg: DataConfig, build: Callable[[DataConfig], Tuple]) -> Tuple:
    """``build(cfg) -> (train, valid)``; with ``cfg.weights``, one pair per path, blended by weight.

    Each path is split into train / validation on its own (``data.split``), and validation is blended with the
    same weights; ``data.valid_paths``, when given, is the validation set as it stands.
    """
    if not cfg.weights:
        return build(cfg)
    parts = [build(dataclasses.replace(cfg, paths=[path], weights=[])) for path in cfg.paths]
    train = BlendedDataset([p[0] for p in parts], cfg.weights)
    valid = parts[0][1] if cfg.valid_paths else BlendedDataset([p[1] for p in parts], cfg.weights)
    return train, valid
