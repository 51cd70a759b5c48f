"""Sampler determinism and resume; dataset order fixed by (seed, epoch)."""

import numpy as np
import pytest
import torch

from bridge.data.epoch_order import EpochShuffledDataset
from bridge.data.samplers import PretrainingSampler


class Numbered(EpochShuffledDataset):
    """Sample j is the tensor [j, epoch]: enough to see which sample came when."""

    def __init__(self, n, seed):
        self.num_distinct_samples, self.seed = n, seed

    def sample(self, j, epoch):
        return {"tokens": torch.tensor([j, epoch])}


def _all_batches(total, consumed, mbs, dp):
    return [list(PretrainingSampler(total, consumed, mbs, rank, dp)) for rank in range(dp)]


def test_ranks_split_each_global_batch():
    per_rank = _all_batches(total=50, consumed=0, mbs=3, dp=2)
    assert len(per_rank[0]) == len(per_rank[1]) == 50 // 6
    for step, (a, b) in enumerate(zip(*per_rank)):
        assert a + b == list(range(step * 6, step * 6 + 6))


def test_resume_continues_where_the_run_stopped():
    full = _all_batches(total=100, consumed=0, mbs=2, dp=2)
    consumed_steps = 7
    resumed = _all_batches(total=100, consumed=consumed_steps * 4, mbs=2, dp=2)
    for rank in range(2):
        assert resumed[rank] == full[rank][consumed_steps:]
    assert len(PretrainingSampler(100, 28, 2, 0, 2)) == len(resumed[0])


def test_dataset_order_is_deterministic_and_reshuffled_per_epoch():
    a, b, other = Numbered(20, seed=3), Numbered(20, seed=3), Numbered(20, seed=4)
    first = [a[i]["tokens"].tolist() for i in range(60)]
    assert first == [b[i]["tokens"].tolist() for i in range(60)]
    assert first != [other[i]["tokens"].tolist() for i in range(60)]
    epochs = [sorted(x[0] for x in first[e * 20:(e + 1) * 20]) for e in range(3)]
    assert all(e == list(range(20)) for e in epochs)  # each epoch sees every sample once
    assert [x[0] for x in first[:20]] != [x[0] for x in first[20:40]]  # in a new order
    assert [x[1] for x in first[20:40]] == [1] * 20
    # Random access (a fresh process resuming mid-epoch) gives the same sample.
    assert Numbered(20, seed=3)[45]["tokens"].tolist() == first[45]


def test_loader_with_sampler_resumes_bit_exactly():
    ds = Numbered(13, seed=0)
    full = [b["tokens"] for b in torch.utils.data.DataLoader(ds, batch_sampler=PretrainingSampler(40, 0, 4, 0, 1))]
    tail = [b["tokens"] for b in torch.utils.data.DataLoader(ds, batch_sampler=PretrainingSampler(40, 16, 4, 0, 1))]
    assert len(full) == 10 and len(tail) == 6
    assert all(torch.equal(x, y) for x, y in zip(full[4:], tail))


@pytest.mark.parametrize("args, message", [
    ((0, 0, 1, 0, 1), "total_samples"),
    ((10, 10, 1, 0, 1), "consumed_samples"),
    ((10, 0, 0, 0, 1), "micro_batch_size"),
    ((10, 0, 1, 2, 2), "data_parallel_rank"),
])
def test_bad_sampler_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        PretrainingSampler(*args)


def test_negative_index_is_an_error():
    with pytest.raises(IndexError):
        Numbered(5, 0)[-1]
    assert np.array_equal(Numbered(5, 0).order(2), Numbered(5, 0).order(2))
