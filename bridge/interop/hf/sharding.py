"""This rank's piece of a full megatron tensor, as megatron-core's tensor-parallel layers hold it.

Column-parallel layers (``linear_qkv``, ``linear_fc1``, the embedding and output layer) split dimension 0,
row-parallel ones (``linear_proj``, ``linear_fc2``) dimension 1; megatron marks each parameter with
``tensor_model_parallel`` / ``partition_dim`` / ``partition_stride``. A gated ``linear_fc1`` has stride 2:
each rank holds ``[its part of gate; its part of up]``, so gate and up are split separately. ``linear_qkv``
needs nothing special: its rows are grouped per query group (see ``mapping``) and megatron-core gives each
rank ``num_query_groups / tensor_parallel_size`` whole groups, which is what contiguous chunks are.
"""

from __future__ import annotations

import torch


def shard_for_rank(full: torch.Tensor, param: torch.nn.Parameter, rank: int, size: int) -> torch.Tensor:
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    parts = torch.chunk(full, stride, dim=dim)
    return torch.cat([torch.chunk(part, size, dim=dim)[rank] for part in parts], dim=dim)
