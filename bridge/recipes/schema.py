"""The run config: one dataclass per node, registered in Hydra's ConfigStore as the schema of every recipe.

A recipe YAML (``conf/*.yaml``) names the schema in its defaults list (through ``conf/base.yaml``) and
supplies values; Hydra composes it in struct mode, so a key the schema does not have is an error. The
``model`` node is one of the model presets (``model=gpt_126m``), each stored here from
``bridge.models.presets`` as a structured config of its provider class, so the presets have one source of
truth and the provider's field names are the schema of ``model.*``.

``RunConfig`` is also the object :func:`bridge.recipes.build_run_config` returns, with every node built:
``model`` is then a provider instance, the others their config dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from bridge.data import DataConfig, TokenizerConfig
from bridge.models import GPTModelProvider, T5ModelProvider
from bridge.models import presets as model_presets
from bridge.training.config import (
    CheckpointConfig, LoggingConfig, OptimizerConfig, SchedulerConfig, TrainingConfig,
)

FAMILIES = {"gpt": GPTModelProvider, "t5": T5ModelProvider}
"""Model family name -> provider class."""

SCHEMA_NAME = "run_config"
"""Name of :class:`RunConfig` in the ConfigStore (``defaults: [run_config, ...]`` in ``conf/base.yaml``)."""


@dataclass
class RunConfig:
    """Everything one training run needs; each field is a node of the recipe YAML."""

    name: str = "run"
    """Name of the run; the recipes put their outputs (checkpoints, TensorBoard) under ``outputs/<name>/``."""

    family: str = MISSING
    """gpt | t5: which model family the recipe trains (the ``model`` preset must be of this family)."""

    model: Any = MISSING
    """The model provider (``GPTModelProvider`` / ``T5ModelProvider`` fields); pick a preset with
    ``model=<name>`` and change any field with ``model.<field>=<value>``. ``vocab_size`` comes from the
    tokenizer; ``seq_length`` is kept equal to ``data.seq_length``."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The tokenizer (byte-level by default, no files needed)."""

    data: DataConfig = field(default_factory=DataConfig)
    """What to train on (the embedded corpus / fine-tuning task when no paths are given)."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer (megatron-core)."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """Learning-rate schedule."""

    train: TrainingConfig = field(default_factory=TrainingConfig)
    """The training loop: steps, batch sizes, evaluation, seed, device, precision."""

    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint folder, interval, resume, pretrained weights for fine-tuning."""

    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Progress bar, log file, TensorBoard."""


def register_configs() -> None:
    """Store the run schema and every model preset in Hydra's ConfigStore.

    Called before each composition, so presets added with ``bridge.models.register_preset`` after import
    are available as ``model=<name>`` too (storing again replaces the previous entry).
    """
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=RunConfig)
    for name in model_presets.list_presets():
        entry = model_presets.preset(name)
        # The class defaults plus the preset's own fields, not a validated instance: validation fills in
        # derived fields (T5's per-stack backends), which would then no longer follow later overrides.
        node = OmegaConf.merge(OmegaConf.structured(entry.provider_cls), entry.fields)
        store.store(group="model", name=name, node=node)


def family_of_provider_class(cls: type) -> str:
    """'gpt' or 't5' for a provider class (or a subclass of one)."""
    for family, provider_cls in FAMILIES.items():
        if isinstance(cls, type) and issubclass(cls, provider_cls):
            return family
    raise TypeError(f"{cls!r} is not a model provider class ({', '.join(c.__name__ for c in FAMILIES.values())})")
