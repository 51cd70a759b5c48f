"""Numeric values that used to be accepted (and trained, or failed later far from the cause) are one line
naming the key (issue 9, item 11)."""

from __future__ import annotations

import pytest

from bridge.recipes import ConfigError, load_config


@pytest.mark.parametrize("override, message", [
    ("model.ffn_hidden_size=0", "ffn_hidden_size must be positive"),
    ("model.kv_channels=-2", "kv_channels must be positive"),
    ("model.rotary_percent=2.0", "rotary_percent must be in (0, 1]"),
    ("model.rotary_percent=0", "rotary_percent must be in (0, 1]"),
    ("model.make_vocab_size_divisible_by=0", "make_vocab_size_divisible_by must be positive"),
    ("model.make_vocab_size_divisible_by=-8", "make_vocab_size_divisible_by must be positive"),
    ("model.layernorm_epsilon=-1", "layernorm_epsilon must be positive"),
    ("model.rotary_base=0", "rotary_base must be positive"),
    ("train.seed=-1", "train.seed must be >= 0"),
    ("data.seed=-1", "data.seed must be >= 0"),
    ("train.global_batch_size=0", "train.global_batch_size must be positive"),
])
def test_impossible_number_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("gpt_pretrain", [override])
    assert "\n" not in str(info.value)
    assert message in str(info.value), str(info.value)


def test_t5_rejects_a_negative_vocab_multiple_before_building():
    with pytest.raises(ConfigError, match="make_vocab_size_divisible_by must be positive"):
        load_config("t5_pretrain", ["model.make_vocab_size_divisible_by=-1"])


def test_recipes_derive_global_batch_and_warmup():
    """Item 14: the global batch follows the number of processes and the warmup a short run's length."""
    from bridge.training.optimizer import build_scheduler
    from bridge.training.trainer import batch_plan

    run = load_config("t5_pretrain", ["train.train_steps=20"])
    assert run.train.global_batch_size is None and run.scheduler.warmup_steps is None
    assert batch_plan(run.train, 2) == 1 and run.train.global_batch_size == 2 * run.train.micro_batch_size

    class _Optimizer:  # the scheduler only sets the LR and weight decay of the param groups
        param_groups = [{"lr": 0.0, "weight_decay": 0.0}]

    scheduler = build_scheduler(_Optimizer(), run.optimizer, run.scheduler, run.train.train_steps)
    assert scheduler.lr_warmup_steps == 2  # a tenth of 20 steps; base.yaml's 500 steps keep 50
