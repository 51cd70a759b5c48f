"""The parts of dataset building every model family shares: token streams for pretraining, examples for fine-tuning.

Each family's spec (``bridge.models.<family>_family``) turns them into its own datasets with the sequence
lengths of its model; ``as_data_config`` accepts the dataclass or the OmegaConf node Hydra hands over.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

from bridge.data.cache import build_lock
from bridge.data.config import DataConfig
from bridge.data.corpus import corpus_folder, corpus_jsonl_paths
from bridge.data.indexed import (TokenStream, document_split, indexed_dataset_exists, open_indexed_dataset,
                                 write_indexed_dataset)
from bridge.data.jsonl import read_jsonl_texts
from bridge.data.sft_dataset import Example, read_examples
from bridge.data.tokenizers import Tokenizer

def as_data_config(cfg) -> DataConfig:
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


def pretraining_streams(cfg: DataConfig, tokenizer: Tokenizer) -> Tuple[TokenStream, TokenStream]:
    """Train and validation token streams of a pretraining run."""
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
        (t0, t1), (v0, v1) = document_split(num_docs, cfg.split_weights())[:2]  # a test share stays unread
        train_parts.append((dataset, t0, t1))
        valid_parts.append((dataset, v0, v1))
    return TokenStream(train_parts), TokenStream(valid_parts)


def _whole(tokenizer: Tokenizer, prefixes: Sequence[str]) -> TokenStream:
    parts = []
    for prefix in prefixes:
        dataset = open_indexed_dataset(prefix, tokenizer)
        parts.append((dataset, 0, len(dataset.document_indices) - 1))
    return TokenStream(parts)


def finetuning_examples(cfg: DataConfig, keys: Tuple[str, str], template: bool = False
                        ) -> Tuple[List[Example], List[Example]]:
    """Train and validation examples of a fine-tuning run; ``keys`` name the JSONL input and target fields.
    ``template``: the family reads ``cfg.prompt_template`` (GPT), when one is set."""
    from bridge.data.finetune_task import embedded_task_paths

    train_paths: List[str] = list(cfg.paths)
    valid_paths: List[str] = list(cfg.valid_paths)
    if not train_paths:
        train_path, valid_path = embedded_task_paths(cfg.cache_dir)
        train_paths, valid_paths = [train_path], [valid_path]
    def read(path: str) -> List[Example]:
        if template and cfg.prompt_template is not None:
            return read_examples(path, *keys, template=cfg.prompt_template, truncation_field=cfg.truncation_field)
        return read_examples(path, *keys)

    train_examples = [e for p in train_paths for e in read(p)]
    if valid_paths:
        return train_examples, [e for p in valid_paths for e in read(p)]
    if len(train_examples) < 2:
        raise ValueError(f"fine-tuning data {train_paths} has {len(train_examples)} example(s); data.split "
                         "needs at least 2 (or give data.valid_paths)")
    (t0, t1), (v0, v1) = document_split(len(train_examples), cfg.split_weights())[:2]
    return train_examples[t0:t1], train_examples[v0:v1]
