"""The normalisation layers of bridge's megatron-core specs: torch LayerNorm / RMSNorm, sequence parallel too.

megatron-core's local specs build their norms with ``WrappedTorchNorm``, which refuses
``sequence_parallel=True`` (its fused Apex / Transformer Engine norms are the ones that support it). Nothing in
a torch norm itself stands in the way: under sequence parallelism each tensor-parallel rank normalises its own
slice of the sequence with a full copy of the weights, so each rank's weight gradient covers only its tokens.
megatron-core's ``finalize_model_grads`` sums the gradients of every parameter that carries
``sequence_parallel=True`` over the tensor-parallel group (``_allreduce_non_tensor_model_parallel_grads``), so
the norm built here is megatron's own with that attribute set (the way Transformer Engine's norms set it).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm


class TorchNorm:
    """Builds megatron-core's torch norm for ``config`` (same arguments as ``WrappedTorchNorm``); with
    sequence parallelism on, its weight (and bias) are marked ``sequence_parallel`` for the gradient sum."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **kwargs: Any) -> torch.nn.Module:
        sequence_parallel = bool(config.sequence_parallel)
        if sequence_parallel:  # WrappedTorchNorm asserts it is off; the norm it builds does not depend on it
            config = copy.copy(config)
            config.sequence_parallel = False
        norm = WrappedTorchNorm(config, hidden_size, eps, **kwargs)
        for param in norm.parameters():
            param.sequence_parallel = sequence_parallel
        return norm


def use_torch_norm(spec: Any) -> Any:
    """``spec`` (a ModuleSpec, a submodules dataclass or a module class) with every ``WrappedTorchNorm``
    replaced by :class:`TorchNorm`; specs are changed in place and returned."""
    if spec is WrappedTorchNorm:
        return TorchNorm
    if isinstance(spec, ModuleSpec):
        spec.module = use_torch_norm(spec.module)
        if spec.submodules is not None:
            spec.submodules = use_torch_norm(spec.submodules)
        return spec
    if isinstance(spec, (list, tuple)):
        return type(spec)(use_torch_norm(item) for item in spec)
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        for field in dataclasses.fields(spec):
            setattr(spec, field.name, use_torch_norm(getattr(spec, field.name)))
    return spec
