"""Tiny GPT and T5 pretrain for a few steps on the CPU and the loss falls; NaN stops the run."""

from __future__ import annotations

import math

import pytest

from runs import tiny_run
from bridge.training import CheckpointConfig, TrainingDivergedError, resolve_checkpoint, train


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_tiny_pretraining_loss_falls(family, data_cache):
    result = train(tiny_run(family, steps=8, cache_dir=data_cache))
    assert result.steps == list(range(1, 9))
    assert all(math.isfinite(x) for x in result.losses)
    assert sum(result.losses[-2:]) / 2 < result.losses[0] - 0.5, result.losses
    assert result.valid_loss is not None and result.valid_loss < result.losses[0]
    assert result.attention_backends == ["local"]  # what the layers really ran on the CPU


def test_nan_loss_stops_and_keeps_last_checkpoint(data_cache, tmp_path, monkeypatch):
    import bridge.training.trainer as trainer

    real_loss = trainer.masked_loss
    calls = {"n": 0}

    def loss_turning_nan(model, batch, family):
        calls["n"] += 1
        loss, tokens = real_loss(model, batch, family)
        return (loss * float("nan") if calls["n"] > 4 else loss), tokens  # 2 micro-batches per step: step 3

    monkeypatch.setattr(trainer, "masked_loss", loss_turning_nan)
    run = tiny_run("gpt", steps=6, cache_dir=data_cache)
    run.checkpoint = CheckpointConfig(dir=str(tmp_path / "ckpt"), save_interval=2)
    with pytest.raises(TrainingDivergedError, match="loss is nan at step 3"):
        train(run)
    assert resolve_checkpoint(run.checkpoint.dir).endswith("step_0000002")


def test_global_batch_must_split_evenly(data_cache):
    from bridge.training.trainer import batch_plan

    run = tiny_run("gpt", micro_batch_size=3, global_batch_size=9)
    assert batch_plan(run.train, 1) == 3
    with pytest.raises(ValueError, match="not a multiple of train.micro_batch_size=3 × data-parallel size 2 = 6"):
        batch_plan(run.train, 2)
