"""``DataConfig``: what to train on (``data.*`` in the recipes).

Field types stay within what OmegaConf stores (int, float, bool, str, Optional, List[str], Enum),
so Hydra keeps this dataclass in its ConfigStore as the schema of the ``data`` node.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional, Tuple


class DatasetKind(enum.Enum):
    """Pretraining (indexed token data) or fine-tuning (JSONL examples)."""

    pretrain = "pretrain"
    finetune = "finetune"


@dataclass
class DataConfig:
    """Data for a run; the model family (gpt / t5) comes from the recipe, and the sequence lengths from the
    model (``model.seq_length``, T5's ``model.decoder_seq_length``): the datasets cut samples to them."""

    kind: DatasetKind = DatasetKind.pretrain
    """``pretrain``: fixed-length samples from indexed datasets (GPT: next token; T5: span
    corruption). ``finetune``: examples from JSONL (GPT: prompt/response; T5: input/target)."""

    paths: List[str] = field(default_factory=list)
    """pretrain: indexed-dataset prefixes (``/data/wiki`` for ``/data/wiki.bin`` + ``.idx``), their
    documents pooled. finetune: JSONL files. Empty: the embedded default (stdlib corpus for
    pretrain, the letter-reversal task for finetune), generated into ``cache_dir``."""

    weights: List[float] = field(default_factory=list)
    """One positive weight per entry of ``paths``: training samples are drawn from them in these proportions
    (megatron-core's blending, as ``--data-path 0.3 A 0.7 B`` / NeMo's weighted ``data_prefix``), each path
    split into train / validation by ``split`` on its own. Empty: the paths' documents are pooled by size."""

    valid_paths: List[str] = field(default_factory=list)
    """Validation data, same kind as ``paths``. Empty: ``split`` carves validation out of ``paths``."""

    split: str = "95,5"
    """``"train,valid"`` weights splitting ``paths`` into contiguous document (or example) ranges
    when ``valid_paths`` is empty; a third weight (``"949,50,1"``, Megatron's and NeMo's train,valid,test)
    holds the last share out of both. Ignored by the embedded default, whose split is fixed."""

    seed: int = 1234
    """Seeds the sample order of each epoch and T5's noise; same seed, same data, any resume."""

    num_workers: int = 0
    """DataLoader worker processes per rank (0 = load in the training process)."""

    packed: bool = False
    """GPT fine-tuning: pack several examples into each sequence (fewer pad tokens) instead of one
    padded example per sequence."""

    prompt_key: str = "prompt"
    """GPT fine-tuning JSONL key of the prompt (no loss on it)."""

    response_key: str = "response"
    """GPT fine-tuning JSONL key of the response (the loss covers it and the eos after it)."""

    prompt_template: Optional[str] = None
    """GPT fine-tuning: the prompt built from each record, e.g. ``"Q: {question}\nA: {answer}"``; it ends with
    the ``{response_key}`` placeholder and everything before it is the prompt (NeMo's ``prompt_template``).
    None: the prompt is the record's ``prompt_key``."""

    truncation_field: Optional[str] = None
    """GPT fine-tuning with a ``prompt_template``: a template field whose tokens a too-long example loses first,
    so the response survives (NeMo's ``truncation_field``). None: too-long examples are cut at the end."""

    truncation_method: str = "right"
    """Which end of ``truncation_field`` loses tokens: ``right`` | ``left``."""

    answer_only_loss: bool = True
    """GPT fine-tuning: the loss covers the response only; False: the prompt's tokens too."""

    input_key: str = "input"
    """T5 fine-tuning JSONL key of the encoder input."""

    target_key: str = "target"
    """T5 fine-tuning JSONL key of the decoder target."""

    noise_density: float = 0.15
    """T5 span corruption: share of tokens replaced by sentinels."""

    mean_noise_span_length: float = 3.0
    """T5 span corruption: mean length of a corrupted span."""

    cache_dir: Optional[str] = None
    """Folder for generated data (embedded corpus, its indexed datasets, the fine-tuning task).
    None: ``$BRIDGE_CACHE_DIR``, else ``~/.cache/bridge``."""

    def __post_init__(self) -> None:
        if isinstance(self.kind, str):
            try:
                self.kind = DatasetKind(self.kind)
            except ValueError:
                valid = ", ".join(k.value for k in DatasetKind)
                raise ValueError(f"data.kind={self.kind!r} is not valid; use one of: {valid}") from None
        self.split_weights()
        if self.weights and (len(self.weights) != len(self.paths) or min(self.weights) <= 0):
            raise ValueError(f"data.weights={list(self.weights)} needs one positive weight per entry of data.paths "
                             f"({len(self.paths)}), or none to pool the paths by size")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.seed < 0:
            raise ValueError(f"data.seed must be >= 0 (numpy seeds are unsigned), got {self.seed}")
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"data.noise_density must be in (0, 1), got {self.noise_density}")
        if self.truncation_method not in ("right", "left"):
            raise ValueError(f"data.truncation_method={self.truncation_method!r} is not valid; use right or left")
        if self.mean_noise_span_length < 1.0:
            raise ValueError(f"data.mean_noise_span_length must be >= 1, got {self.mean_noise_span_length}")

    def split_weights(self) -> Tuple[float, ...]:
        """``(train, valid)`` or ``(train, valid, test)`` weights parsed from ``split``."""
        try:
            weights = tuple(float(w) for w in str(self.split).replace("/", ",").split(","))
        except ValueError:
            weights = ()
        if len(weights) not in (2, 3) or min(weights[:2]) <= 0 or min(weights) < 0:
            raise ValueError(f"data.split={self.split!r} is not valid; give two positive weights 'train,valid' "
                             "(e.g. '95,5'), optionally a third for a held-out test share ('949,50,1')")
        return weights
