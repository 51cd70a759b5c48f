"""Checks made while a model is being built, before any tensor exists.

An explicit backend that cannot run on this machine (no GPU for ``fused``, fp32 or dropout for ``flash``,
an environment switch that disables it) is reported when ``provide()`` is called, not from deep inside the
first forward pass. The decision itself belongs to each layer's ``LayerBackend`` (bridge.attention.selection).
"""

from __future__ import annotations

from typing import Iterable

import torch

from bridge.attention.inputs import AttentionInputs
from bridge.attention.selection import LayerBackend
from bridge.attention.backend import AttnBackend
from bridge.models.base import TransformerProvider


def check_backend_for_this_machine(
    provider: TransformerProvider, backend: AttnBackend, stack: str, exclude: Iterable[AttnBackend] = ()
) -> None:
    """Raise a readable error if an explicit ``backend`` cannot run ``provider``'s attention here.

    The layers' own :class:`LayerBackend` makes the decision (per input signature, at the first forward);
    this asks it the same question for the signature known before any tensor exists."""
    tp = provider.tensor_model_parallel_size
    groups = provider.num_query_groups or provider.num_attention_heads
    inputs = AttentionInputs(
        device_type="cuda" if torch.cuda.is_available() else "cpu",
        dtype=provider.torch_dtype,
        head_dim=provider.head_dim,
        num_heads=provider.num_attention_heads // tp,
        num_kv_heads=max(1, groups // tp),
        dropout_p=provider.attention_dropout,
    )
    LayerBackend(backend, exclude).check_request(inputs, f"the {stack} attention layers")


def check_vp_stage(provider: TransformerProvider, vp_stage) -> None:
    """``vp_stage`` must name one of the provider's virtual pipeline stages (or be None without them)."""
    vp = provider.virtual_pipeline_model_parallel_size
    if vp_stage is None:
        if vp is not None and vp > 1:
            raise ValueError(f"virtual_pipeline_model_parallel_size={vp}: provide(vp_stage=...) needs the stage "
                             f"(0 .. {vp - 1}), or use provide_distributed_model() for all of this rank's chunks")
        return
    if not isinstance(vp_stage, int) or not 0 <= vp_stage < (vp or 1):
        raise ValueError(f"vp_stage={vp_stage!r} is not a virtual pipeline stage of this provider "
                         f"(virtual_pipeline_model_parallel_size={vp}; valid: 0 .. {(vp or 1) - 1})")


def check_recompute_support(provider: TransformerProvider) -> None:
    """Activation recomputation runs through megatron-core's checkpoint function, which saves and restores
    the CUDA RNG state unconditionally; without a GPU that is one clear error instead of a deep traceback."""
    if provider.recompute_granularity is not None and not torch.cuda.is_available():
        raise ValueError(
            f"recompute_granularity={provider.recompute_granularity} needs a CUDA GPU (megatron-core's activation "
            "checkpointing saves the CUDA RNG state); leave it None on a CPU-only machine")


def check_provider_for_this_machine(provider: TransformerProvider) -> None:
    """The checks made before a model is built: by the builders (``provide()``) and, without building anything,
    by ``scripts/train.py --cfg``. Every explicit attention backend of the model must be able to run here; the
    answer comes from :mod:`bridge.attention.selection`, which the layers ask again for their real inputs."""
    check_recompute_support(provider)
    if hasattr(provider, "encoder_attention_backend"):  # T5: one backend per stack
        for stack in ("encoder", "decoder"):
            check_backend_for_this_machine(provider, getattr(provider, f"{stack}_attention_backend"),
                                           f"T5 {stack}", provider.excluded_backends(stack))
    else:
        check_backend_for_this_machine(provider, provider.attention_backend, "GPT", provider.excluded_backends())
