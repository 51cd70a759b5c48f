"""Bring up megatron-core's parallel state when a provider is used outside a launched training run.

Training (``scripts/train.py``) initialises torch.distributed and megatron's parallel state itself. A user
who calls ``provider.provide()`` in a plain Python session has neither, and megatron-core layers need both,
so ``provide()`` sets up a one-process group (gloo on CPU, NCCL on GPU) when nothing is initialised yet.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_model_parallel(
    tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, seed: int = 1234,
    virtual_pipeline_parallel_size=None,
) -> None:
    """Make sure torch.distributed and megatron's parallel state exist and match the requested sizes."""
    if not dist.is_initialized():
        if tensor_parallel_size * pipeline_parallel_size > 1:
            raise RuntimeError(
                f"tensor_model_parallel_size={tensor_parallel_size} × pipeline_model_parallel_size="
                f"{pipeline_parallel_size} needs that many processes: launch with torchrun "
                f"(e.g. torchrun --nproc-per-node={tensor_parallel_size * pipeline_parallel_size} scripts/train.py ...)"
            )
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        world = dist.get_world_size()
        if world % (tensor_parallel_size * pipeline_parallel_size) != 0:
            raise RuntimeError(
                f"world size {world} is not divisible by tensor_model_parallel_size={tensor_parallel_size} × "
                f"pipeline_model_parallel_size={pipeline_parallel_size}"
            )
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_parallel_size,
            pipeline_model_parallel_size=pipeline_parallel_size,
            virtual_pipeline_model_parallel_size=virtual_pipeline_parallel_size,
        )
    else:
        have = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
        )
        if have != (tensor_parallel_size, pipeline_parallel_size):
            raise RuntimeError(
                f"megatron parallel state is initialised with tensor/pipeline sizes {have}, but the provider asks "
                f"for ({tensor_parallel_size}, {pipeline_parallel_size})"
            )
    if torch.cuda.is_available() and not tensor_parallel.get_cuda_rng_tracker().get_states():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
