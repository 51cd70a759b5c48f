"""Hugging Face directory -> bridge provider + megatron-core model with the directory's weights.

    from bridge.interop.hf import import_hf
    provider, model = import_hf("path/to/hf_model", attention_backend="local")

Loading works on any tensor-/pipeline-parallel layout: each rank builds the full megatron tensor of each of
its parameters from the Hugging Face tensors and keeps its own shard (``sharding``); pipeline stages map
their local layer numbers to global ones.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

import torch

from bridge.interop.hf.errors import HFConversionError
from bridge.interop.hf.families import family_for_config
from bridge.interop.hf.family import Family
from bridge.interop.hf.files import WeightReader, read_config
from bridge.interop.hf.mapping import AbsentMap, VocabMap
from bridge.interop.hf.sharding import shard_for_rank

_LAYER = re.compile(r"^(.*?)layers\.(\d+)\.(.*)$")


def provider_from_hf(directory: str, **overrides: Any):
    """The bridge provider (``GPTModelProvider`` / ``T5ModelProvider``) equivalent to ``directory``'s config.json.

    ``overrides`` set provider fields that config.json does not decide (attention_backend, dtype, parallel
    sizes, ...) or replace ones it does.
    """
    config = read_config(directory)
    provider_cls, fields = family_for_config(config, f"{directory}/config.json").provider_fields(config)
    return provider_cls(**{**fields, **overrides})


def _global_name(model: torch.nn.Module, name: str) -> str:
    """``decoder.layers.<local>.x`` -> ``decoder.layers.<global>.x`` (pipeline stages number layers from 0)."""
    match = _LAYER.match(name)
    if not match:
        return name
    prefix, local, rest = match.groups()
    layers = model.get_submodule(prefix + "layers")
    return f"{prefix}layers.{layers[int(local)].layer_number - 1}.{rest}"


def _parallel_ranks() -> Tuple[int, int, int]:
    """(tensor-parallel rank, tensor-parallel size, pipeline-parallel size)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1, 1
    return (parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size())


def load_hf_weights(model: torch.nn.Module, provider, directory: str, progress: bool = False,
                    family: Optional[Family] = None) -> None:
    """Copy the weights of the Hugging Face ``directory`` into ``model`` (built from ``provider``).

    Every model parameter must come from the directory and every directory tensor must land in the model
    (pipeline stages excepted); a missing tensor, a left-over one or a shape that differs is one
    :class:`HFConversionError` naming the tensor.
    """
    config = read_config(directory)
    if family is None:
        family = family_for_config(config, f"{directory}/config.json")
    maps = {m.megatron: m for m in family.tensor_maps(provider, config)}
    reader = WeightReader(directory)
    tp_rank, tp_size, pp_size = _parallel_ranks()
    params = [(name, p) for name, p in model.named_parameters()]
    used = set()
    bar = _progress(params, progress, f"import {directory}")
    with torch.no_grad():
        for name, param in bar:
            key = _global_name(model, name)
            mapping = maps.get(key)
            if mapping is None:
                raise HFConversionError(f"megatron tensor {key!r} has no {family.name} counterpart: this model "
                                        f"was not built from {directory}'s config")
            if isinstance(mapping, AbsentMap):
                param.zero_()
                param.requires_grad_(False)  # Hugging Face has no such tensor: it stays zero (see AbsentMap)
                continue
            tensors = [reader.get(n, key) for n in mapping.hf]
            used.update(mapping.hf)
            if isinstance(mapping, VocabMap) and tensors[0].shape[0] != config.get("vocab_size"):
                raise HFConversionError(f"{directory}: tensor {mapping.hf[0]} has {tensors[0].shape[0]} rows but "
                                        f"config.json says vocab_size={config.get('vocab_size')}")
            full = mapping.to_megatron(tensors)
            local = shard_for_rank(full, param, tp_rank, tp_size)
            if tuple(local.shape) != tuple(param.shape):
                shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(mapping.hf, tensors))
                raise HFConversionError(f"{directory}: tensor {shapes} does not fit megatron tensor {key!r} of "
                                        f"shape {tuple(param.shape)}: the weights do not match config.json")
            param.copy_(local.to(param.dtype))
    if pp_size == 1:
        ignored = [re.compile(p) for p in family.ignored(provider)]
        left = [n for n in reader.names() if n not in used and not any(p.search(n) for p in ignored)]
        if left:
            raise HFConversionError(f"{directory} has tensor {left[0]!r} (and {len(left) - 1} more unused) that no "
                                    f"part of the {family.name} model takes: the weights do not match config.json")


def import_hf(directory: str, progress: bool = False, **overrides: Any):
    """``(provider, model)``: the provider from ``directory``'s config.json (plus ``overrides``) and its
    megatron-core model holding the directory's weights."""
    provider = provider_from_hf(directory, **overrides)
    model = provider.provide()
    load_hf_weights(model, provider, directory, progress=progress)
    return provider, model


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tensor")
