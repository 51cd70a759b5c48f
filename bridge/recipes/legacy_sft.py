"""NeMo-1 SFT files (``megatron_gpt_sft.yaml`` style) translated into bridge's GPT fine-tuning run.

An SFT file has ``model.data.train_ds`` / ``validation_ds`` sections instead of ``data_prefix``, and no
architecture: NeMo takes it, and the tokenizer, from the model in ``restore_from_path``. Here that is a
checkpoint of this project (its saved run config supplies the architecture and tokenizer; the file's own
model keys, such as dropout, override them) or ``hf:<dir>``. JSONL records become examples through the
file's ``prompt_template``; ``label_key`` is the response, ``answer_only_loss`` and ``truncation_field`` /
``truncation_method`` keep their meaning. PEFT sections (``model.peft``) are one error: only full
fine-tuning exists here.

The functions take the translation object of :mod:`bridge.recipes.legacy` (``take`` / ``put`` / ``has``).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Tuple

from omegaconf import DictConfig, OmegaConf, open_dict

from bridge.recipes.errors import ConfigError

logger = logging.getLogger("bridge.recipes")

_TRAIN, _VALID, _TEST = "model.data.train_ds.", "model.data.validation_ds.", "model.data.test_ds"

_DATASET_MUST_BE: Dict[str, Tuple[Any, ...]] = {
    "add_eos": (True,), "add_sep": (False,), "add_bos": (False,), "min_seq_length": (1, None),
    "write_predictions_to_file": (False,), "metric.name": ("loss",),
}
"""Dataset keys bridge implements at one value only (eos always ends the response; the validation metric is
the loss)."""

_DATASET_NO_EFFECT = frozenset({
    "memmap_workers", "pin_memory", "index_mapping_dir", "hf_dataset", "names", "output_file_path_prefix",
    "tokens_to_generate", "metric.average", "metric.num_classes", "shuffle", "drop_last",
})
"""Loader plumbing and generation-metric settings (the training shuffles and drops the last partial batch;
validation always reads the same examples)."""

_SAME_IN_BOTH = ("label_key", "prompt_template", "truncation_field", "truncation_method", "max_seq_length",
                 "add_eos", "add_sep", "add_bos")
"""Settings the validation set must share with the training set (bridge has one of each)."""

# NeMo's model-level batch sizes, which the datasets' own batch sizes must equal.
_BATCH = {"global_batch_size": "model.global_batch_size", "micro_batch_size": "model.micro_batch_size"}


def is_sft_file(keys: Dict[str, Any]) -> bool:
    """An SFT file describes its data with ``model.data.train_ds`` (a pretraining file uses data_prefix)."""
    return any(k.startswith(_TRAIN) for k in keys)


def reject_peft(keys: Dict[str, Any]) -> None:
    """PEFT files (adapters, LoRA, p-tuning, IA3) are one error: bridge fine-tunes all weights."""
    schemes = sorted({k.split(".")[2] for k in keys if k.startswith("model.peft.") and k.count(".") >= 2})
    if schemes:
        scheme = keys.get("model.peft.peft_scheme", "?")
        raise ConfigError(f"NeMo-1 PEFT config (model.peft.peft_scheme={scheme}) is not supported: bridge fine-tunes "
                          "all weights; remove the model.peft section to run it as full SFT (megatron_gpt_sft.yaml)")


def without_test_section(cfg: DictConfig) -> Tuple[DictConfig, List[str]]:
    """``cfg`` without ``model.data.test_ds`` and the keys removed: NeMo reads the test set only in its
    evaluation script, so a training run leaves it unread (its ``file_names: ???`` included)."""
    node = OmegaConf.select(cfg, _TEST)
    if node is None:
        return cfg, []
    removed = [f"{_TEST}.{k}" for k in _leaf_keys(OmegaConf.to_container(node, resolve=False))]
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg.model.data["test_ds"]
    return cfg, removed


def _leaf_keys(node: Dict[str, Any], prefix: str = "") -> List[str]:
    out: List[str] = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out += _leaf_keys(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def _file_list(key: str, value: Any) -> List[str]:
    files = [value] if isinstance(value, str) else list(value or [])
    if not files or not all(isinstance(f, str) for f in files):
        raise ConfigError(f"NeMo-1 {key}={value!r}: give the JSONL file(s) as a path or a list of paths")
    return files


def translate_sft_data(t) -> None:
    """``model.data`` of an SFT file into bridge's fine-tuning data (``data.kind=finetune``)."""
    chat = t.take("model.data.chat", False)
    if chat:
        raise ConfigError("NeMo-1 model.data.chat=True is not supported: bridge reads prompt/response records "
                          "(prompt_template), not NeMo's chat conversations")
    for key in [k for k in t.keys if k.startswith("model.data.chat_prompt_tokens.")]:
        t.take(key)
        t.how[key] = "off"
    for key in [k for k in t.keys if k.startswith("inference.")]:
        t.take(key)  # sampling settings of NeMo's generation script; a training run does not generate
        t.ignored.append(key)
        t.how[key] = "no effect"
    t.put("data.kind", "finetune")
    t.put("data.packed", False)  # NeMo pads one example per sequence
    t.put("data.paths", _file_list(_TRAIN + "file_names", t.take(_TRAIN + "file_names")))
    if t.has(_VALID + "file_names"):
        t.put("data.valid_paths", _file_list(_VALID + "file_names", t.take(_VALID + "file_names")))
    for key in _SAME_IN_BOTH:
        if t.has(_VALID + key) and t.has(_TRAIN + key) and t.keys[_VALID + key] != t.keys[_TRAIN + key]:
            raise ConfigError(f"NeMo-1 {_VALID}{key}={t.keys[_VALID + key]!r} differs from {_TRAIN}{key}="
                              f"{t.keys[_TRAIN + key]!r}; bridge uses one setting for both, make them equal")
        t.take(_VALID + key)
    label = t.take(_TRAIN + "label_key", "output")
    t.put("data.response_key", label)
    template = t.take(_TRAIN + "prompt_template", f"{{input}} {{{label}}}")
    t.put("data.prompt_template", template)
    field = t.take(_TRAIN + "truncation_field")
    if field:
        if "," in str(field):
            raise ConfigError(f"NeMo-1 {_TRAIN}truncation_field={field!r}: bridge truncates one field; name one")
        t.put("data.truncation_field", str(field))
    t.move(_TRAIN + "truncation_method", "data.truncation_method")
    t.move(_TRAIN + "num_workers", "data.num_workers")
    t.take(_VALID + "num_workers")
    length = t.take(_TRAIN + "max_seq_length")
    if length is not None:
        t.put("model.seq_length", int(length))
    weights = t.take(_TRAIN + "concat_sampling_probabilities")
    _translate_probabilities(t, weights)
    for prefix in (_TRAIN, _VALID):
        _check_batch_sizes(t, prefix)
        _finish_dataset_keys(t, prefix)


def _translate_probabilities(t, weights: Any) -> None:
    paths = t.out["data.paths"]
    if weights is None:
        if len(paths) > 1:
            raise ConfigError(f"NeMo-1 {_TRAIN}file_names has {len(paths)} files; NeMo needs "
                              f"{_TRAIN}concat_sampling_probabilities (one weight per file) to mix them")
        return
    weights = [float(w) for w in weights]
    if len(weights) != len(paths) or min(weights) <= 0:
        raise ConfigError(f"NeMo-1 {_TRAIN}concat_sampling_probabilities={weights} needs one positive weight per "
                          f"file of file_names ({len(paths)})")
    t.put("data.weights", weights)


def _check_batch_sizes(t, prefix: str) -> None:
    for key, model_key in _BATCH.items():
        value = t.take(prefix + key)
        wanted = t.out.get("train." + key, t.keys.get(model_key))
        if value is not None and wanted is not None and int(value) != int(wanted):
            raise ConfigError(f"NeMo-1 {prefix}{key}={value} differs from {model_key}={wanted}; bridge uses the "
                              "model's batch sizes for every dataset, make them equal")


def _finish_dataset_keys(t, prefix: str) -> None:
    for key in [k for k in t.keys if k.startswith(prefix)]:
        if not t.settle(key, key[len(prefix):], _DATASET_MUST_BE, _DATASET_NO_EFFECT):
            raise ConfigError(f"NeMo-1 config key without a bridge translation: {key}")


def translate_answer_only_loss(t) -> None:
    t.move("model.answer_only_loss", "data.answer_only_loss", bool)


def adopt_base_model(t, restore: str) -> None:
    """Architecture and tokenizer of the model fine-tuned: a checkpoint's saved run config (the file's own
    model keys win), or, for ``hf:<dir>``, the directory's (bridge's fine-tuning reads its config.json)."""
    if str(restore).startswith("hf:"):
        return
    from bridge.training.checkpointing import load_run_config

    try:
        snapshot = load_run_config(str(restore))
    except Exception as exc:  # a missing folder, a folder without 'latest', a damaged checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"NeMo-1 restore_from_path={restore!r} is not a readable checkpoint of this project "
                          f"({first}); give a checkpoint.dir written by scripts/train.py, or hf:<directory>") from None
    if snapshot.get("family", "gpt") != "gpt":
        raise ConfigError(f"NeMo-1 restore_from_path={restore!r} holds a {snapshot.get('family')} model; "
                          "megatron_gpt_sft files fine-tune a GPT")
    base = snapshot.get("model", {})
    for name, value in base.items():
        if name not in _PRECISION_FIELDS and f"model.{name}" not in t.out:
            t.put(f"model.{name}", value)
    _keep_learned_positions(t, base)
    if not any(k.startswith("model.tokenizer.") for k in t.keys):
        for name, value in (snapshot.get("tokenizer") or {}).items():
            t.put(f"tokenizer.{name}", value)


def _keep_learned_positions(t, base: Dict[str, Any]) -> None:
    """The base model's table of learned positions stays as it is: fine-tuning at another length addresses
    its first ``seq_length`` rows. NeMo pads each batch to its longest example, so its ``max_seq_length`` is a cap
    that the base model's positions bound; here the samples are that long, so the cap becomes the table size."""
    if base.get("position_embedding_type") != "learned_absolute":
        return
    positions = base.get("max_position_embeddings") or base.get("seq_length")
    t.put("model.max_position_embeddings", positions)
    length = t.out.get("model.seq_length")
    if positions and length and int(length) > int(positions):
        logger.info("NeMo-1 %smax_seq_length=%s: the base model has %s learned positions, so examples are cut to "
                    "%s tokens", _TRAIN, length, positions, positions)
        t.put("model.seq_length", int(positions))


_PRECISION_FIELDS = frozenset({"dtype", "params_dtype", "bf16", "fp16", "pipeline_dtype"})
"""Taken from the fine-tuning file's ``trainer.precision``, not from the pretraining run."""
