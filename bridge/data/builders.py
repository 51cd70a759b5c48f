"""``build_datasets``: the one entry the trainer calls to get its train and validation datasets."""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

from bridge.data.cache import build_lock
from bridge.data.config import DataConfig, DatasetKind
from bridge.data.corpus import corpus_folder, corpus_jsonl_paths
from bridge.data.epoch_order import EpochShuffledDataset
from bridge.data.indexed import (TokenStream, document_split, indexed_dataset_exists, open_indexed_dataset,
                                 write_indexed_dataset)
from bridge.data.jsonl import read_jsonl_texts
from bridge.data.tokenizers import Tokenizer

FAMILIES = ("gpt", "t5")


def _family(family) -> str:
    name = getattr(family, "value", family)
    if name not in FAMILIES:
        raise ValueError(f"model family {family!r} is not valid; use one of: {', '.join(FAMILIES)}")
    return name


def _as_data_config(cfg) -> DataConfig:
    """Accept the dataclass itself or an OmegaConf node of it (what Hydra hands over)."""
    if isinstance(cfg, DataConfig):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        obj = OmegaConf.to_object(cfg)
        return obj if isinstance(obj, DataConfig) else DataConfig(**obj)
    raise TypeError(f"data config must be a DataConfig or an OmegaConf node of one, got {type(cfg).__name__}")


def embedded_corpus_prefixes(tokenizer: Tokenizer, cache_dir: str | None = None) -> Tuple[str, str]:
    """Indexed-dataset prefixes ``(train, valid)`` of the embedded corpus for ``tokenizer``.

    Built on first use (corpus JSONL, then the same writer as ``scripts/preprocess_data.py``) and
    cached per tokenizer fingerprint; concurrent ranks build it once.
    """
    jsonl = corpus_jsonl_paths(cache_dir)
    folder = os.path.join(corpus_folder(cache_dir), tokenizer.fingerprint)
    prefixes = (os.path.join(folder, "train"), os.path.join(folder, "valid"))
    if all(indexed_dataset_exists(p) for p in prefixes):
        return prefixes
    with build_lock(folder):
        for source, prefix in zip(jsonl, prefixes):
            if not indexed_dataset_exists(prefix):
                write_indexed_dataset(read_jsonl_texts(source, "text"), tokenizer, prefix)
    return prefixes


def _streams(cfg: DataConfig, tokenizer: Tokenizer) -> Tuple[TokenStream, TokenStream]:
    """Train and validation token streams for pretraining."""
    if not cfg.paths:
        train_prefix, valid_prefix = embedded_corpus_prefixes(tokenizer, cfg.cache_dir)
        return _whole(tokenizer, [train_prefix]), _whole(tokenizer, [valid_prefix])
    if cfg.valid_paths:
        return _whole(tokenizer, cfg.paths), _whole(tokenizer, cfg.valid_paths)
    train_parts, valid_parts = [], []
    for prefix in cfg.paths:
        dataset = open_indexed_dataset(prefix, tokenizer)
        num_docs = len(dataset.document_indices) - 1
        if num_docs < 2:
            raise ValueError(f"indexed dataset {prefix!r} has {num_docs} document(s); data.split needs at least 2 "
                             "(or give data.valid_paths)")
        (t0, t1), (v0, v1) = document_split(num_docs, cfg.split_weights())
        train_parts.append((dataset, t0, t1))
        valid_parts.append((dataset, v0, v1))
    return TokenStream(train_parts), TokenStream(valid_parts)


def _whole(tokenizer: Tokenizer, prefixes: Sequence[str]) -> TokenStream:
    parts = []
    for prefix in prefixes:
        dataset = open_indexed_dataset(prefix, tokenizer)
        parts.append((dataset, 0, len(dataset.document_indices) - 1))
    return TokenStream(parts)


def _pretraining(cfg: DataConfig, tokenizer: Tokenizer, family: str) -> Tuple[EpochShuffledDataset, ...]:
    train, valid = _streams(cfg, tokenizer)
    if family == "gpt":
        from bridge.data.gpt_dataset import GPTPretrainingDataset

        return (GPTPretrainingDataset(train, cfg.seq_length, cfg.seed, "train"),
                GPTPretrainingDataset(valid, cfg.seq_length, cfg.seed, "validation"))
    from bridge.data.t5_dataset import T5SpanCorruptionDataset

    def make(stream: TokenStream, name: str) -> T5SpanCorruptionDataset:
        return T5SpanCorruptionDataset(stream, tokenizer, cfg.seq_length, cfg.decoder_seq_length, cfg.seed,
                                       cfg.noise_density, cfg.mean_noise_span_length, name)

    return make(train, "train"), make(valid, "validation")


def _finetuning(cfg: DataConfig, tokenizer: Tokenizer, family: str) -> Tuple[EpochShuffledDataset, ...]:
    from bridge.data.finetune_task import embedded_task_paths
    from bridge.data.sft_dataset import GPTFinetuneDataset, T5FinetuneDataset, read_examples

    keys = (cfg.prompt_key, cfg.response_key) if family == "gpt" else (cfg.input_key, cfg.target_key)
    train_paths: List[str] = list(cfg.paths)
    valid_paths: List[str] = list(cfg.valid_paths)
    if not train_paths:
        train_path, valid_path = embedded_task_paths(cfg.cache_dir)
        train_paths, valid_paths = [train_path], [valid_path]
    train_examples = [e for p in train_paths for e in read_examples(p, *keys)]
    if valid_paths:
        valid_examples = [e for p in valid_paths for e in read_examples(p, *keys)]
    else:
        if len(train_examples) < 2:
            raise ValueError(f"fine-tuning data {train_paths} has {len(train_examples)} example(s); data.split "
                             "needs at least 2 (or give data.valid_paths)")
        (t0, t1), (v0, v1) = document_split(len(train_examples), cfg.split_weights())
        train_examples, valid_examples = train_examples[t0:t1], train_examples[v0:v1]

    def make(examples, name):
        if family == "gpt":
            return GPTFinetuneDataset(examples, tokenizer, cfg.seq_length, cfg.seed, cfg.packed, name)
        return T5FinetuneDataset(examples, tokenizer, cfg.seq_length, cfg.decoder_seq_length, cfg.seed, name)

    return make(train_examples, "train"), make(valid_examples, "validation")


def build_datasets(data_cfg: DataConfig, tokenizer: Tokenizer, family: str):
    """``(train_ds, valid_ds)`` for ``family`` ("gpt" or "t5") as ``data_cfg`` describes.

    Both are map-style datasets of dicts of tensors that accept any index >= 0 (later epochs
    reshuffle); feed them through :class:`bridge.data.samplers.PretrainingSampler`.
    GPT samples: ``tokens``, ``labels``, ``position_ids`` (int64 [s]) and ``loss_mask`` (float32 [s]).
    T5 samples: ``enc_tokens`` [s_enc], ``dec_tokens``/``labels`` [s_dec] (int64), ``loss_mask``
    (float32 [s_dec]), ``enc_mask`` [s_enc] / ``dec_mask`` [s_dec] (bool, True = real token).
    """
    family = _family(family)
    data_cfg = _as_data_config(data_cfg)
    if data_cfg.kind is DatasetKind.pretrain:
        return _pretraining(data_cfg, tokenizer, family)
    return _finetuning(data_cfg, tokenizer, family)
