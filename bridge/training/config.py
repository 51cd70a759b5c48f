"""The run config: :class:`RunConfig` and the config dataclasses of the training components (``optimizer``,
``scheduler``, ``train``, ``checkpoint``, ``logging`` nodes of a run).

``RunConfig`` gathers them with the model provider (``bridge.models``) and the tokenizer / data configs
(``bridge.data``); ``bridge.recipes`` registers it in Hydra's ConfigStore as the schema of every recipe, and
:func:`bridge.training.finalize.finalize_run` settles what it leaves open (device, precision, vocabulary).

Field types stay within what OmegaConf stores (int, float, bool, str, Optional, List, Enum), so the recipes
can register these dataclasses in Hydra's ConfigStore as schemas. Each field has a docstring (the reference
for users); ``__post_init__`` normalises strings into enums and rejects impossible values with one line
naming the field and what would be valid.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, List, Optional, Type, TypeVar

from omegaconf import MISSING

from bridge.data import DataConfig, Tokenizer, TokenizerConfig, build_tokenizer

E = TypeVar("E", bound=enum.Enum)


def parse_choice(enum_cls: Type[E], value, field_name: str) -> E:
    """``value`` (an enum member or its string value, any case) as a member of ``enum_cls``, or a ValueError."""
    if isinstance(value, enum_cls):
        return value
    key = str(getattr(value, "value", value)).strip().lower()
    for member in enum_cls:
        if member.value == key:
            return member
    valid = ", ".join(m.value for m in enum_cls)
    raise ValueError(f"{field_name}={value!r} is not valid; use one of: {valid}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class OptimizerType(enum.Enum):
    """Optimizers megatron-core's ``get_megatron_optimizer`` builds."""

    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class DecayStyle(enum.Enum):
    """Shape of the learning rate after warmup."""

    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class Device(enum.Enum):
    """Where the run computes; ``auto`` = CUDA when a GPU is visible, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(enum.Enum):
    """Parameter / compute precision; ``auto`` = bf16 on GPU, fp32 on CPU."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@dataclass
class OptimizerConfig:
    """The optimizer (megatron-core ``get_megatron_optimizer``); ``optimizer.*`` in the recipes."""

    optimizer: OptimizerType = OptimizerType.adamw
    """adam | adamw | sgd. adamw decouples the weight decay from the gradient (the usual choice);
    adam adds it to the gradient (L2)."""

    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""

    min_lr: float = 3e-5
    """Learning rate at the end of the decay (cosine / linear)."""

    weight_decay: float = 0.1
    """Decoupled weight decay (biases and norm weights are excluded by megatron-core)."""

    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    """Adam beta1, beta2."""

    eps: float = 1e-8
    """Adam epsilon."""

    sgd_momentum: float = 0.9
    """Momentum of SGD (ignored by Adam)."""

    clip_grad: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""

    use_distributed_optimizer: bool = False
    """Shard the optimizer state over the data-parallel ranks (megatron-core distributed optimizer, ZeRO-1)."""

    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient reduction with the backward pass (megatron-core DDP's bucketed
    all-reduce / reduce-scatter starts as each bucket's gradients are ready); CUDA only."""

    def __post_init__(self) -> None:
        self.optimizer = parse_choice(OptimizerType, self.optimizer, "optimizer.optimizer")
        _require(self.lr > 0, f"optimizer.lr must be positive, got {self.lr}")
        _require(0 <= self.min_lr <= self.lr, f"optimizer.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        _require(self.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        betas = list(self.betas)
        _require(len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas),
                 f"optimizer.betas must be two numbers in [0, 1), got {betas}")
        _require(self.eps > 0, f"optimizer.eps must be positive, got {self.eps}")
        _require(0.0 <= self.sgd_momentum < 1.0, f"optimizer.sgd_momentum must be in [0, 1), got {self.sgd_momentum}")
        _require(self.clip_grad >= 0, f"optimizer.clip_grad must be >= 0 (0 = off), got {self.clip_grad}")


@dataclass
class SchedulerConfig:
    """Learning-rate schedule (megatron-core ``OptimizerParamScheduler``); ``scheduler.*`` in the recipes."""

    warmup_steps: Optional[int] = 100
    """Steps of linear warmup from 0 to ``optimizer.lr``; None = a tenth of the decay steps (so a short run
    keeps a warmup that fits it)."""

    decay_style: DecayStyle = DecayStyle.cosine
    """cosine | linear | constant: the learning rate after warmup, down to ``optimizer.min_lr``."""

    decay_steps: Optional[int] = None
    """Steps from the start to the end of the decay (warmup included); None = ``train.train_steps``."""

    def __post_init__(self) -> None:
        self.decay_style = parse_choice(DecayStyle, self.decay_style, "scheduler.decay_style")
        _require(self.warmup_steps is None or self.warmup_steps >= 0,
                 f"scheduler.warmup_steps must be >= 0 (or null for a tenth of the decay), got {self.warmup_steps}")
        if self.decay_steps is not None and self.warmup_steps is not None:
            _require(self.decay_steps > self.warmup_steps,
                     f"scheduler.decay_steps={self.decay_steps} must exceed warmup_steps={self.warmup_steps} "
                     "(or be null for train.train_steps)")


@dataclass
class TrainingConfig:
    """The training loop; ``train.*`` in the recipes."""

    train_steps: int = 1000
    """Optimizer steps of the whole run (a resumed run continues up to this number)."""

    micro_batch_size: int = 8
    """Samples per forward/backward on one data-parallel rank."""

    global_batch_size: Optional[int] = 8
    """Samples per optimizer step over all ranks = micro_batch_size × accumulation steps × data-parallel size;
    None = micro_batch_size × data-parallel size (no accumulation, fits any number of processes)."""

    eval_interval: int = 100
    """Compute the validation loss every this many steps (and at the end); 0 = only at the end."""

    eval_steps: int = 10
    """Validation micro-batches per evaluation (per rank)."""

    log_interval: int = 10
    """Write a log line (and TensorBoard scalars) every this many steps."""

    seed: int = 1234
    """Seeds the weights, dropout and sampling (the data order has its own ``data.seed``)."""

    device: Device = Device.auto
    """auto | cpu | cuda. auto = CUDA when a GPU is visible."""

    precision: Precision = Precision.auto
    """auto | fp32 | bf16 | fp16 for parameters and compute; auto = bf16 on GPU, fp32 on CPU."""

    exit_on_nan: bool = True
    """Stop with an error when the loss becomes NaN or inf (the last checkpoint is kept as it is)."""

    generate_sample: bool = True
    """GPT: print a short greedy continuation from the trained model at the end of the run."""

    task_accuracy_examples: int = 50
    """GPT fine-tuning on the embedded task: at the end, score exact-match accuracy of greedy answers on
    this many validation examples; 0 = off."""

    def __post_init__(self) -> None:
        self.device = parse_choice(Device, self.device, "train.device")
        self.precision = parse_choice(Precision, self.precision, "train.precision")
        for name in ("train_steps", "micro_batch_size", "eval_steps", "log_interval"):
            _require(getattr(self, name) > 0, f"train.{name} must be positive, got {getattr(self, name)}")
        _require(self.global_batch_size is None or self.global_batch_size > 0,
                 f"train.global_batch_size must be positive (or null for micro × data parallel), got "
                 f"{self.global_batch_size}")
        _require(self.seed >= 0, f"train.seed must be >= 0 (numpy seeds are unsigned), got {self.seed}")
        _require(self.task_accuracy_examples >= 0,
                 f"train.task_accuracy_examples must be >= 0, got {self.task_accuracy_examples}")
        _require(self.eval_interval >= 0, f"train.eval_interval must be >= 0 (0 = only at the end), got {self.eval_interval}")
        _require(self.global_batch_size is None or self.global_batch_size % self.micro_batch_size == 0,
                 f"train.global_batch_size={self.global_batch_size} must be a multiple of "
                 f"train.micro_batch_size={self.micro_batch_size}")


@dataclass
class CheckpointConfig:
    """Checkpoints (megatron-core distributed checkpointing); ``checkpoint.*`` in the recipes."""

    dir: Optional[str] = None
    """Folder holding ``step_<N>/`` checkpoints and the ``latest`` marker; None = no checkpoints."""

    save_interval: int = 0
    """Save every this many steps (and always at the end when ``dir`` is set); 0 = only at the end."""

    resume: bool = False
    """Continue from the checkpoint named by ``dir/latest``: same step, same data order, same losses.
    Without ``latest`` but with step folders, from the newest step whose files match its manifest (logged).
    Starts from scratch when ``dir`` has no checkpoint yet. Changed optimizer / scheduler / train values take
    effect (and are logged); changed model architecture fields are an error."""

    overwrite: bool = False
    """Start fresh in a ``dir`` that holds another run's checkpoints and replace them (they are deleted once
    this run's first checkpoint is complete). Without it (and without ``resume``) such a ``dir`` is an error."""

    pretrained_checkpoint: Optional[str] = None
    """Fine-tuning: load model weights only (no optimizer, step or data position) from this checkpoint
    folder (a ``step_<N>`` folder or a checkpoint ``dir`` with a ``latest`` marker)."""

    keep_last: int = 2
    """Keep this many most recent checkpoints in ``dir`` (older ones are deleted), plus the one with the lowest
    training loss (a run that diverges slowly keeps a healthy checkpoint); 0 = keep all."""

    def __post_init__(self) -> None:
        _require(self.save_interval >= 0, f"checkpoint.save_interval must be >= 0, got {self.save_interval}")
        _require(self.keep_last >= 0, f"checkpoint.keep_last must be >= 0 (0 = keep all), got {self.keep_last}")
        _require(not (self.resume and not self.dir), "checkpoint.resume=true needs checkpoint.dir")
        _require(not (self.resume and self.overwrite),
                 "checkpoint.resume=true continues the run in checkpoint.dir, checkpoint.overwrite=true replaces it; "
                 "set one of them")


@dataclass
class LoggingConfig:
    """Progress bar, log file, TensorBoard; ``logging.*`` in the recipes."""

    tensorboard_dir: Optional[str] = None
    """Write TensorBoard scalars (loss, lr, grad norm, throughput, validation loss) here; None = off."""

    progress_bar: bool = True
    """Show a tqdm progress bar on rank 0."""

    log_file: Optional[str] = None
    """Also append the log lines to this file (rank 0); None = console only."""


@dataclass
class RunConfig:
    """Everything one training run needs; each field is a node of the recipe YAML.

    :func:`bridge.recipes.build_run_config` returns one with every node built (``model`` a provider
    instance) and finalised; build one in Python and :func:`bridge.training.train` finalises it.
    """

    name: str = "run"
    """Name of the run; the recipes put their outputs (checkpoints, TensorBoard) under ``outputs/<name>/``."""

    family: str = MISSING
    """gpt | t5: which model family the recipe trains (the ``model`` preset must be of this family)."""

    model: Any = MISSING
    """The model provider (``GPTModelProvider`` / ``T5ModelProvider`` fields); pick a preset with
    ``model=<name>`` and change any field with ``model.<field>=<value>``. ``vocab_size`` comes from the
    tokenizer; ``seq_length`` (and T5's ``decoder_seq_length``) set the length of every sample."""

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

    @cached_property
    def built_tokenizer(self) -> Tokenizer:
        """The tokenizer ``tokenizer`` describes, built once per run (finalising and training share it)."""
        return build_tokenizer(self.tokenizer)
