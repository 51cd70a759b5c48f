"""Hugging Face directories <-> checkpoints of this project (``scripts/convert.py``, ``hf:`` fine-tuning).

* :func:`export_checkpoint`: a training checkpoint -> a Hugging Face directory (the model is rebuilt from the
  checkpoint's run config in one process, whatever tensor / pipeline layout the run had).
* :func:`save_imported`: an imported model -> a weights-only checkpoint (``step_0000000/`` + ``latest`` and
  a run config with ``family``, ``model``, ``tokenizer``) that ``scripts/generate.py``, ``export_checkpoint``
  and ``checkpoint.pretrained_checkpoint`` read; it holds no optimizer state, so it cannot be resumed.
* :func:`load_pretrained`: ``checkpoint.pretrained_checkpoint`` of a run, ``hf:<dir>`` or a checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Any, Dict, List, Optional

from megatron.core import dist_checkpointing

from bridge.interop.hf import HFConversionError, load_hf_weights, save_hf
from bridge.interop.hf.families import family_for_provider
from bridge.interop.hf.finetune import hf_directory
from bridge.distributed import ensure_model_parallel
from bridge.models import family_spec
from bridge.training.checkpoint_manifest import write_manifest
from bridge.training.checkpointing import (LATEST, SyncTorchDistSaveStrategy, load_run_config, load_weights,
                                          step_dir_name)
from bridge.training.snapshot import provider_from_snapshot, to_plain, tokenizer_from_snapshot

logger = logging.getLogger("bridge.training")


def load_pretrained(reference: str, model, provider, run_config: Optional[Dict[str, Any]] = None) -> str:
    """Load ``reference`` (``hf:<dir>`` or a checkpoint of this project) into ``model``; returns what was loaded.
    Given the run's ``run_config``, a checkpoint of this project must come from a model of the same architecture."""
    directory = hf_directory(reference)
    if directory is None:
        return load_weights(reference, model, run_config)
    load_hf_weights(model, provider, directory)
    return directory


def _tokenizer_source(tokenizer_cfg: Dict[str, Any]) -> Optional[str]:
    """The files to copy for a run's ``tokenizer`` node: its file, or the Hugging Face directory it sits in."""
    path = tokenizer_cfg.get("path")
    if str(tokenizer_cfg.get("type", "byte")) == "byte" or not path:
        return None
    if os.path.isfile(path) and os.path.isfile(os.path.join(os.path.dirname(path), "tokenizer_config.json")):
        return os.path.dirname(path)
    return path


def export_checkpoint(checkpoint: str, directory: str, progress: bool = False) -> List[str]:
    """Export a checkpoint written by ``scripts/train.py`` (a ``checkpoint.dir`` or one ``step_<N>`` folder).

    The model is rebuilt from the run config saved with the checkpoint, in one process (whatever tensor /
    pipeline layout the run had: megatron-core's checkpoint loader reassembles it).
    """
    snapshot = load_run_config(checkpoint)
    # Built here in one process and never run: the plain attention backend, no parallelism.
    overrides = dict(attention_backend="local", use_flash_attention=None, tensor_model_parallel_size=1,
                     pipeline_model_parallel_size=1, sequence_parallel=False, use_cpu_initialization=True,
                     encoder_attention_backend="local", decoder_attention_backend="local", encoder={}, decoder={})
    fields = {f.name for f in dataclasses.fields(family_spec(snapshot.get("family", "gpt")).provider_cls)}
    # per-stack backends and legacy flags exist on encoder-decoder providers only
    provider = provider_from_snapshot(snapshot, **{k: v for k, v in overrides.items() if k in fields})
    family_for_provider(provider)  # an unsupported architecture fails before any work
    ensure_model_parallel(1, 1)
    model = provider.provide()
    load_weights(checkpoint, model)
    tokenizer_cfg = snapshot.get("tokenizer") or {}
    tokenizer = tokenizer_from_snapshot(snapshot)
    source = _tokenizer_source(tokenizer_cfg)
    if source is None:
        logger.warning("the run used the built-in byte tokenizer, which has no Hugging Face equivalent: "
                       "%s gets no tokenizer files", directory)
    return save_hf(model, provider, directory, tokenizer_source=source, tokenizer=tokenizer, progress=progress)


_TOKENIZER_KINDS = (("tokenizer.json", "huggingface"), ("tokenizer.model", "sentencepiece"),
                    ("spiece.model", "sentencepiece"))


def tokenizer_node(hf_dir: str, target: str) -> Optional[Dict[str, Any]]:
    """Copy ``hf_dir``'s tokenizer file into ``target`` and return the run-config node that reads it."""
    for name, kind in _TOKENIZER_KINDS:
        source = os.path.join(hf_dir, name)
        if os.path.isfile(source):
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(source, os.path.join(target, name))
            return {"type": kind, "path": os.path.abspath(os.path.join(target, name))}
    return None


def save_imported(model, provider, hf_dir: str, output: str) -> str:
    """Write ``model`` (imported from ``hf_dir``) under ``output``; returns the checkpoint folder."""
    if os.path.exists(output) and os.listdir(output):
        raise HFConversionError(f"{output} exists and is not empty; pass a new directory (nothing was written)")
    os.makedirs(output, exist_ok=True)
    name = step_dir_name(0)
    tmp = os.path.join(output, f".tmp_{name}")
    family = "t5" if type(provider).__name__.startswith("T5") else "gpt"
    run_config: Dict[str, Any] = {"family": family, "model": to_plain(provider)}
    tokenizer = tokenizer_node(hf_dir, os.path.join(output, "tokenizer"))
    if tokenizer is not None:
        run_config["tokenizer"] = tokenizer
    state = {"model": model.sharded_state_dict(), "step": 0, "consumed_samples": 0, "world_size": 1,
             "run_config": run_config}
    os.makedirs(tmp)
    dist_checkpointing.save(state, tmp, sharded_strategy=SyncTorchDistSaveStrategy())
    write_manifest(tmp, 0, run_config, loss=None)  # loading checks its files and architecture like any checkpoint
    os.replace(tmp, os.path.join(output, name))
    with open(os.path.join(output, LATEST + ".tmp"), "w") as f:
        f.write(name + "\n")
    os.replace(os.path.join(output, LATEST + ".tmp"), os.path.join(output, LATEST))
    return os.path.join(output, name)
