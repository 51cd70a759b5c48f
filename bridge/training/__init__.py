"""Training for bridge: the loop, optimizer / LR schedule, checkpoints, logging, generation.

CONTRACT (for ``bridge/recipes`` and ``scripts/train.py``):

* :class:`RunConfig`: the whole run (``family``, ``model``, ``tokenizer``, ``data`` and the nodes below);
  ``finalize_run(run)`` settles its family, device, precision and vocabulary (the recipes call it; so does
  ``train``).
* Config dataclasses (schemas of the run's nodes): :class:`OptimizerConfig` (``optimizer``),
  :class:`SchedulerConfig` (``scheduler``), :class:`TrainingConfig` (``train``),
  :class:`CheckpointConfig` (``checkpoint``), :class:`LoggingConfig` (``logging``).
* ``init_distributed(run)`` — call once at the start of ``scripts/train.py`` (before building anything):
  initialises torch.distributed from the torchrun environment (NCCL on GPU, gloo on CPU; a 1-process
  group when not launched by torchrun) and megatron-core's parallel state with the model's tensor /
  pipeline sizes; the remaining ranks are data parallel. Safe to call twice.
* ``train(run) -> TrainResult`` — the whole run. ``run`` has the attributes ``family`` ('gpt' | 't5'),
  ``model`` (a provider), ``tokenizer``, ``data``, ``optimizer``, ``scheduler``, ``train``,
  ``checkpoint``, ``logging`` (a :class:`RunConfig`). Calls ``init_distributed`` itself
  if it has not run yet.
* ``shutdown_distributed()`` — tear down at the end of ``scripts/train.py``.
* ``generate(model, tokenizer, prompt, ...)`` — greedy / top-k text generation from a GPT model.
"""

from bridge.training.config import (
    CheckpointConfig, DecayStyle, Device, LoggingConfig, OptimizerConfig, OptimizerType, Precision, RunConfig,
    SchedulerConfig, TrainingConfig,
)
from bridge.training.checkpointing import load_run_config, load_weights, resolve_checkpoint
from bridge.training.errors import CheckpointError, TrainingDivergedError
from bridge.distributed import DistributedEnv, init_distributed, shutdown_distributed
from bridge.training.finalize import finalize_run
from bridge.training.generation import generate
from bridge.training.trainer import TrainResult, train

__all__ = [
    "CheckpointConfig", "CheckpointError", "DecayStyle", "Device", "DistributedEnv", "LoggingConfig",
    "OptimizerConfig", "OptimizerType", "Precision", "RunConfig", "SchedulerConfig", "TrainResult",
    "TrainingConfig", "TrainingDivergedError", "finalize_run", "generate", "init_distributed", "load_run_config",
    "load_weights", "resolve_checkpoint", "shutdown_distributed", "train",
]
