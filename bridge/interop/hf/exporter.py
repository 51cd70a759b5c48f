"""megatron-core model or bridge checkpoint -> a Hugging Face directory ``from_pretrained`` loads.

    from bridge.interop.hf import export_checkpoint, save_hf
    export_checkpoint("outputs/gpt_finetune/checkpoints", "my_model_hf")   # a checkpoint of scripts/train.py
    save_hf(model, provider, "my_model_hf")                                # a model in memory (one process)

The directory gets ``config.json``, ``model.safetensors`` (sharded past 5 GB) and, when the run's tokenizer
came from files (``tokenizer.type`` huggingface / sentencepiece), those tokenizer files. It is written next
to its final place and renamed into it, and an existing non-empty directory is never overwritten.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

import torch

from bridge.interop.hf.errors import HFConversionError
from bridge.interop.hf.families import family_for_provider
from bridge.interop.hf.files import copy_tokenizer_files, write_weights
from bridge.interop.hf.importer import _parallel_ranks, _progress

logger = logging.getLogger("bridge.interop")


def hf_state_dict(model: torch.nn.Module, provider, progress: bool = False) -> Dict[str, torch.Tensor]:
    """The Hugging Face tensors of ``model`` (a whole, unsharded megatron-core model built from ``provider``)."""
    _, tp_size, pp_size = _parallel_ranks()
    if tp_size * pp_size != 1:
        raise HFConversionError(
            f"exporting a model split over tensor/pipeline parallel ranks ({tp_size} x {pp_size}) in memory is not "
            "supported: save a checkpoint and run `python scripts/convert.py export` (it re-assembles the model)")
    family = family_for_provider(provider)
    maps = {m.megatron: m for m in family.tensor_maps(provider)}
    out: Dict[str, torch.Tensor] = {}
    params = list(model.named_parameters())
    for name, param in _progress(params, progress, "export"):
        mapping = maps.get(name)
        if mapping is None:
            raise HFConversionError(f"megatron tensor {name!r} has no {family.name} counterpart in Hugging Face")
        tensors = mapping.to_hf(param.detach())
        for hf_name, tensor in zip(mapping.hf, tensors):
            if hf_name in out and not torch.equal(out[hf_name], tensor):  # a tied tensor reached twice
                raise HFConversionError(f"megatron tensor {name!r} and another one both give {hf_name!r} but "
                                        "differ: the model's tied weights were untied")
            out[hf_name] = tensor
    return out


def _special_token_ids(tokenizer) -> Dict[str, Optional[int]]:
    if tokenizer is None:
        return {}
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}


def save_hf(model: torch.nn.Module, provider, directory: str, tokenizer_source: Optional[str] = None,
            tokenizer=None, progress: bool = False) -> List[str]:
    """Write ``model`` as a Hugging Face directory; returns the files written.

    ``tokenizer_source``: a tokenizer file or a directory of tokenizer files to copy along; ``tokenizer``
    (a ``bridge.data`` tokenizer) supplies the bos/eos/pad ids of config.json.
    """
    if os.path.isdir(directory) and os.listdir(directory):
        raise HFConversionError(f"{directory} exists and is not empty; pass a new directory (nothing was written)")
    family = family_for_provider(provider)
    tensors = hf_state_dict(model, provider, progress)
    config = family.hf_config(provider, _special_token_ids(tokenizer))
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(directory))}.", dir=parent)
    try:
        config.save_pretrained(tmp)
        files = ["config.json"] + write_weights(tmp, tensors)
        if tokenizer_source:
            files += copy_tokenizer_files(tokenizer_source, tmp)
        if os.path.isdir(directory):
            os.rmdir(directory)  # empty, checked above
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


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
    from bridge.models.parallel import ensure_model_parallel
    from bridge.training.checkpointing import load_run_config, load_weights
    from bridge.training.snapshot import provider_from_snapshot, tokenizer_from_snapshot

    snapshot = load_run_config(checkpoint)
    # Built here in one process and never run: the plain attention backend, no parallelism.
    overrides = dict(attention_backend="local", use_flash_attention=None, tensor_model_parallel_size=1,
                     pipeline_model_parallel_size=1, sequence_parallel=False, use_cpu_initialization=True)
    if str(snapshot.get("family", "gpt")).lower() == "t5":  # its per-stack backends and legacy flags
        overrides.update(encoder_attention_backend="local", decoder_attention_backend="local", encoder={}, decoder={})
    provider = provider_from_snapshot(snapshot, **overrides)
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
