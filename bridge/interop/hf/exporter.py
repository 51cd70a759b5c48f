"""megatron-core model or bridge checkpoint -> a Hugging Face directory ``from_pretrained`` loads.

    from bridge.interop.hf import save_hf
    save_hf(model, provider, "my_model_hf")      # a whole model in memory (one process)

(``bridge.training.hf_checkpoints.export_checkpoint`` exports a training checkpoint.)

The directory gets ``config.json``, ``model.safetensors`` (sharded past 5 GB) and, when the run's tokenizer
came from files (``tokenizer.type`` huggingface / sentencepiece), those tokenizer files. It is written next
to its final place and renamed into it, and an existing non-empty directory is never overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, List, Optional

import torch

from bridge.interop.hf.errors import HFConversionError
from bridge.interop.hf.families import family_for_provider
from bridge.interop.hf.files import copy_tokenizer_files, write_weights
from bridge.interop.hf.importer import _parallel_ranks, _progress


def hf_state_dict(model: torch.nn.Module, provider, progress: bool = False) -> Dict[str, torch.Tensor]:
    """The Hugging Face tensors of ``model`` (a whole, unsharded megatron-core model built from ``provider``)."""
    _, tp_size, pp_size = _parallel_ranks()
    if tp_size * pp_size != 1:
        raise HFConversionError(
            f"exporting a model split over tensor/pipeline parallel ranks ({tp_size} x {pp_size}) in memory is not "
            "supported: save a checkpoint and run `python scripts/convert.py export` (it re-assembles the model)")
    family = family_for_provider(provider)
    maps = {m.megatron: m for m in family.tensor_maps(provider, None)}
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
