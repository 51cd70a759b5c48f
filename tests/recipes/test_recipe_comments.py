"""The numbers in the recipes' comments (conf/*.yaml) are what the recipes do (issue 9, "README and recipe
comments state only what a test checks")."""

from __future__ import annotations

import math

import pytest

from bridge.models import family_spec
from bridge.recipes import load_config
from bridge.training import finalize_run

NO_OUTPUTS = ["checkpoint.dir=null", "logging.tensorboard_dir=null", "logging.progress_bar=false",
              "train.generate_sample=false", "train.device=cpu"]


def test_base_derives_a_global_batch_of_8_and_a_warmup_of_50():
    """base.yaml: global_batch_size null = micro × processes (8 on one); warmup null = 50 of 500 steps."""
    from bridge.training.optimizer import build_scheduler
    from bridge.training.trainer import batch_plan

    run = load_config("gpt_pretrain", [])
    assert run.train.train_steps == 500 and run.train.micro_batch_size == 8
    assert batch_plan(run.train, 1) == 1 and run.train.global_batch_size == 8

    class _Optimizer:  # the scheduler only sets the LR and weight decay of the param groups
        param_groups = [{"lr": 0.0, "weight_decay": 0.0}]

    assert build_scheduler(_Optimizer(), run.optimizer, run.scheduler, 500).lr_warmup_steps == 50


def test_finetune_packing_holds_about_7_examples_per_sequence(tmp_path):
    """gpt_finetune.yaml: ``packed: true`` gives ~7x more examples per step than one padded example per sequence."""
    def train_sequences(packed: bool) -> int:
        run = load_config("gpt_finetune", [f"data.cache_dir={tmp_path}", f"data.packed={str(packed).lower()}"])
        family = finalize_run(run)
        return len(family.build_datasets(run.data, run.built_tokenizer, run.model)[0])

    ratio = train_sequences(False) / train_sequences(True)
    assert 6.5 <= ratio <= 7.5, ratio


@pytest.mark.slow
def test_gpt_pretrain_loss_falls_from_about_5_9_to_about_2(tmp_path):
    """base.yaml: the tiny GPT's 500 steps take the training loss from ~5.9 (step 1) to ~2 (the last steps)."""
    from bridge.training import train

    run = load_config("gpt_pretrain", [*NO_OUTPUTS, f"data.cache_dir={tmp_path}"])
    result = train(run)
    assert len(result.losses) == 500 and all(math.isfinite(x) for x in result.losses)
    assert 5.7 <= result.losses[0] <= 6.1, result.losses[0]
    last = sum(result.losses[-50:]) / 50
    assert 1.7 <= last <= 2.3, last
    assert result.valid_loss is not None and result.valid_loss <= 2.3, result.valid_loss
