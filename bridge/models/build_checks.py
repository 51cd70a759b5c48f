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


def check_layer_norm_support(provider: TransformerProvider) -> None:
    if provider.sequence_parallel:
        raise ValueError(
            "sequence_parallel=True needs Transformer Engine or Apex layer norms; bridge builds megatron-core's "
            "local (torch) layers, which do not support it. Set sequence_parallel=False."
        )


def check_provider_for_this_machine(provider: TransformerProvider) -> None:
    """The checks ``provide()`` makes before building, without building anything (``scripts/train.py --cfg``):
    every explicit attention backend of the model must be able to run here."""
    check_layer_norm_support(provider)
    if hasattr(provider, "encoder_attention_backend"):  # T5: one backend per stack
        for stack in ("encoder", "decoder"):
            check_backend_for_this_machine(provider, getattr(provider, f"{stack}_attention_backend"),
                                           f"T5 {stack}", provider.excluded_backends(stack))
    else:
        check_backend_for_this_machine(provider, provider.attention_backend, "GPT", provider.excluded_backends())
