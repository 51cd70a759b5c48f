"""Reading and writing the files of a Hugging Face model directory (as ``save_pretrained`` writes it).

Weights are read lazily, one tensor at a time, from ``model.safetensors``, sharded safetensors with a
``model.safetensors.index.json``, or (older directories) ``pytorch_model.bin``; only safetensors are written.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional

import torch

from bridge.interop.hf.errors import HFConversionError, require

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "spiece.model", "added_tokens.json")
"""Files copied along on export when the run's tokenizer came from a Hugging Face directory."""


def read_config(directory: str) -> Dict:
    """``config.json`` of ``directory`` as a dict, with one clear error when it is missing or unreadable."""
    if not os.path.isdir(directory):
        raise HFConversionError(f"{directory} is not a directory; pass a Hugging Face model directory "
                                "(config.json + model.safetensors, as save_pretrained writes it)")
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise HFConversionError(f"{directory} has no {CONFIG}: not a Hugging Face model directory")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise HFConversionError(f"{path} is not readable JSON: {exc}") from exc


class WeightReader:
    """The tensors of a Hugging Face directory by name, loaded on first use."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._files: Dict[str, str] = {}  # tensor name -> file holding it
        self._bin: Optional[Dict[str, torch.Tensor]] = None
        self._handles: Dict[str, object] = {}  # safetensors file -> its open handle
        index = os.path.join(directory, SAFETENSORS_INDEX)
        single = os.path.join(directory, SAFETENSORS)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self._files = {name: os.path.join(directory, file) for name, file in weight_map.items()}
        elif os.path.isfile(single):
            self._files = {name: single for name in self._safe_open(single).keys()}
        elif os.path.isfile(os.path.join(directory, PYTORCH_BIN)):
            self._bin = torch.load(os.path.join(directory, PYTORCH_BIN), map_location="cpu", weights_only=True)
        else:
            raise HFConversionError(f"{directory} has no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN}")

    def _safe_open(self, path: str):
        if path not in self._handles:
            self._handles[path] = require("safetensors").safe_open(path, framework="pt", device="cpu")
        return self._handles[path]

    def names(self) -> List[str]:
        return sorted(self._bin) if self._bin is not None else sorted(self._files)

    def __contains__(self, name: str) -> bool:
        return name in (self._bin if self._bin is not None else self._files)

    def get(self, name: str, needed_for: str) -> torch.Tensor:
        if name not in self:
            raise HFConversionError(f"{self.directory} has no tensor {name!r} (needed for megatron tensor "
                                    f"{needed_for!r}): the checkpoint does not match its config.json")
        if self._bin is not None:
            return self._bin[name]
        return self._safe_open(self._files[name]).get_tensor(name)


def write_weights(directory: str, tensors: Dict[str, torch.Tensor], max_shard_bytes: int = 5 * 1024 ** 3) -> List[str]:
    """Write ``tensors`` as ``model.safetensors``, or as shards plus an index past ``max_shard_bytes``.

    Returns the files written. Tensors are made contiguous and unshared (safetensors rejects shared memory).
    """
    save_file = require("safetensors.torch").save_file
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().contiguous().clone()
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, SAFETENSORS), metadata=metadata)
        return [SAFETENSORS]
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, shard in zip(files, shards):
        save_file(shard, os.path.join(directory, file), metadata=metadata)
        weight_map.update({name: file for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(directory, SAFETENSORS_INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files + [SAFETENSORS_INDEX]


def copy_tokenizer_files(source: str, directory: str) -> List[str]:
    """Copy the tokenizer files of ``source`` (a tokenizer file or a directory holding them) into ``directory``."""
    if os.path.isfile(source):
        name = os.path.basename(source)
        if name.endswith(".model") and name not in TOKENIZER_FILES:
            name = "tokenizer.model"  # the name transformers' sentencepiece tokenizers look for
        elif name.endswith(".json") and name not in TOKENIZER_FILES:
            name = "tokenizer.json"
        shutil.copyfile(source, os.path.join(directory, name))
        return [name]
    copied = []
    for name in TOKENIZER_FILES:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(directory, name))
            copied.append(name)
    return copied
