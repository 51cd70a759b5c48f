"""Process groups for a run: torch.distributed from the torchrun environment, then megatron-core's parallel state.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; a plain
``python`` launch has none of them and becomes a 1-process group. NCCL runs on GPUs, gloo on the CPU. The
model's tensor × pipeline sizes split the world; the remaining factor is data parallel.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from bridge.models.parallel import ensure_model_parallel
from bridge.training.config import Device, TrainingConfig, parse_choice
from bridge.training.finalize import settled_device


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


def resolve_device(train_cfg: TrainingConfig) -> torch.device:
    """The device ``train.device`` asks for; ``cuda`` without a GPU is an error, ``auto`` falls back to the CPU."""
    if parse_choice(Device, train_cfg.device, "train.device") is Device.cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu or auto")
    if settled_device(train_cfg.device) is Device.cpu:
        return torch.device("cpu")
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
    device = resolve_device(run.train)
    check_parallel_sizes_for_device(run.model, device)
    if not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if "RANK" in os.environ:  # launched by torchrun: the env:// rendezvous has everything
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        elif world == 1:  # a private rendezvous: no MASTER_* variables left behind for child processes
            from bridge.models.parallel import _free_port  # one helper for a free port, shared with provide()

            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                    init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        else:
            raise RuntimeError(f"WORLD_SIZE={world} but RANK is not set: launch multi-process runs with torchrun")
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    tp, pp = run.model.tensor_model_parallel_size, run.model.pipeline_model_parallel_size
    world = dist.get_world_size()
    if world % (tp * pp) != 0:
        raise RuntimeError(
            f"{world} processes cannot be split into tensor_model_parallel_size={tp} × "
            f"pipeline_model_parallel_size={pp}; launch a multiple of {tp * pp} processes")
    ensure_model_parallel(tp, pp, seed=run.train.seed)
    return DistributedEnv(
        rank=dist.get_rank(),
        world_size=world,
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


def shutdown_distributed() -> None:
    """Destroy megatron's parallel state and the process group (end of ``scripts/train.py``)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
