"""Process groups, in one place: torch.distributed, megatron-core's parallel state, per-rank seeds.

Two callers need them. ``scripts/train.py`` / ``bridge.training.train`` call :func:`init_distributed` with the
run (tensor / pipeline sizes from ``run.model``, the device from ``run.train``); a user who calls
``provider.provide()`` in a plain Python session gets a one-process group from :func:`ensure_model_parallel`
(megatron-core layers need the parallel state even on one CPU). Both go through :func:`init_process_group`.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; a plain
``python`` launch has none of them and becomes a 1-process group on a private TCP rendezvous (no ``MASTER_*``
variables are left behind for child processes). NCCL runs on GPUs, gloo on the CPU. The model's
tensor × pipeline sizes split the world; the remaining factor is data parallel.

This module sits below ``models`` and ``training`` and imports neither.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in the run."""

    rank: int
    world_size: int
    data_parallel_rank: int
    data_parallel_size: int
    device: torch.device
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1

    @property
    def loads_data(self) -> bool:
        """Whether this rank reads batches: with pipeline stages only the first (tokens) and last (labels)."""
        return self.pipeline_parallel_size == 1 or (parallel_state.is_pipeline_first_stage()
                                                    or parallel_state.is_pipeline_last_stage())

    @property
    def is_main(self) -> bool:
        """The process that logs, prints and writes shared files."""
        return self.rank == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(use_cuda: bool) -> None:
    """torch.distributed for this process (no-op when it exists): torchrun's env:// rendezvous, or one process."""
    if dist.is_initialized():
        return
    backend = "nccl" if use_cuda else "gloo"
    if "RANK" in os.environ:  # launched by torchrun: the env:// rendezvous has everything
        dist.init_process_group(backend=backend)
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != 1:
        raise RuntimeError(f"WORLD_SIZE={world} but RANK is not set: launch multi-process runs with torchrun")
    dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)


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
        init_process_group(torch.cuda.is_available())
    if not parallel_state.model_parallel_is_initialized():
        world = dist.get_world_size()
        if world % (tensor_parallel_size * pipeline_parallel_size) != 0:
            raise RuntimeError(
                f"{world} processes cannot be split into tensor_model_parallel_size={tensor_parallel_size} × "
                f"pipeline_model_parallel_size={pipeline_parallel_size}; launch a multiple of "
                f"{tensor_parallel_size * pipeline_parallel_size} processes")
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


def resolve_device(choice) -> torch.device:
    """This process's device for a settled ``train.device`` (cpu | cuda; ``auto`` is settled by
    ``bridge.training.finalize_run``, the one place that decides it); cuda without a GPU is an error."""
    name = str(getattr(choice, "value", choice)).lower()
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise ValueError(f"train.device={name!r} is not settled to cpu or cuda: finalize the run first "
                         "(bridge.training.finalize_run)")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu or auto")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def check_parallel_sizes_for_device(model_cfg, device: torch.device) -> None:
    """Tensor and pipeline parallelism run on CUDA only; on the CPU either is one clear error."""
    if device.type == "cuda":
        return
    if model_cfg.pipeline_model_parallel_size > 1:
        raise ValueError(
            f"model.pipeline_model_parallel_size={model_cfg.pipeline_model_parallel_size} needs CUDA GPUs "
            "(megatron-core's pipeline schedules and p2p communication allocate on CUDA); use "
            "model.pipeline_model_parallel_size=1 and data parallel on the CPU")
    if model_cfg.tensor_model_parallel_size > 1:
        raise ValueError(
            f"model.tensor_model_parallel_size={model_cfg.tensor_model_parallel_size} needs CUDA GPUs; use "
            "model.tensor_model_parallel_size=1 and data parallel on the CPU")


def init_distributed(run) -> DistributedEnv:
    """Initialise torch.distributed and megatron-core's parallel state for ``run``; safe to call twice.

    ``run.model`` supplies the tensor / pipeline sizes, ``run.train.device`` the backend (NCCL on
    CUDA, gloo on the CPU). Returns this process's :class:`DistributedEnv`.
    """
    device = resolve_device(run.train.device)
    check_parallel_sizes_for_device(run.model, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_process_group(device.type == "cuda")
    tp, pp = run.model.tensor_model_parallel_size, run.model.pipeline_model_parallel_size
    ensure_model_parallel(tp, pp, seed=run.train.seed,
                          virtual_pipeline_parallel_size=run.model.virtual_pipeline_model_parallel_size)
    return DistributedEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        data_parallel_rank=parallel_state.get_data_parallel_rank(),
        data_parallel_size=parallel_state.get_data_parallel_world_size(),
        device=device,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
    )


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed Python, NumPy and torch; on GPU also megatron's tensor-parallel RNG tracker (dropout per TP rank).

    Pipeline stages get different seeds (+100 per stage, as Megatron-LM does) so that their layers do not start
    as copies of each other; data-parallel replicas share the seed and so start identical.
    """
    if parallel_state.model_parallel_is_initialized():
        seed += 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def barrier() -> None:
    """Wait for every rank (no-op in a process without a group)."""
    if dist.is_initialized():
        dist.barrier()


def is_main_process() -> bool:
    """Rank 0, or a process without a group: the one that writes shared files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def shutdown_distributed() -> None:
    """Destroy megatron's parallel state and the process group (end of ``scripts/train.py``)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
