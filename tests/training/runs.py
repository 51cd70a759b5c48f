"""A small run for the training tests: the tiny GPT / T5 on the embedded data."""

from __future__ import annotations

from bridge.data import DataConfig, TokenizerConfig
from bridge.models import get_preset
from bridge.training import LoggingConfig, OptimizerConfig, RunConfig, SchedulerConfig, TrainingConfig


def tiny_run(family: str = "gpt", steps: int = 8, cache_dir: str = None, data_kind: str = "pretrain",
             model_overrides=None, **train_overrides) -> RunConfig:
    """A few steps of the tiny GPT / T5 on the embedded data, small enough for a 2-core CPU."""
    model_overrides = dict(model_overrides or {})
    if family == "gpt":
        model = get_preset("gpt_tiny", seq_length=64, num_layers=2, **model_overrides)
    else:
        model = get_preset("t5_tiny", seq_length=64, decoder_seq_length=32, num_layers=2, **model_overrides)
    train = dict(train_steps=steps, micro_batch_size=4, global_batch_size=8, eval_interval=0, eval_steps=2,
                 log_interval=4, device="cpu", generate_sample=False)
    train.update(train_overrides)
    return RunConfig(
        family=family, model=model, tokenizer=TokenizerConfig(), data=DataConfig(kind=data_kind, cache_dir=cache_dir),
        logging=LoggingConfig(progress_bar=False),
        optimizer=OptimizerConfig(lr=3e-3, min_lr=3e-4, weight_decay=0.01),
        scheduler=SchedulerConfig(warmup_steps=2), train=TrainingConfig(**train),
    )
