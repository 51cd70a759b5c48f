"""Checkpoints with megatron-core distributed checkpointing, saved so a crash never damages the last good one.

Layout of ``checkpoint.dir``::

    step_0000100/      one megatron-core distributed checkpoint (model, optimizer, scheduler, step,
                       consumed samples, RNG states per rank, the run config) + run_config.yaml
    latest             the name of the newest complete checkpoint, written last

A save writes into ``.tmp_step_<N>/``, renames it to ``step_<N>/`` with ``os.replace`` once every rank has
finished, then replaces ``latest`` (itself written to a temporary file and renamed). A crash at any point
leaves ``latest`` naming a complete checkpoint; leftover ``.tmp_*`` folders are removed by the next save.

Save strategy: megatron-core's default ``torch_dist`` strategy stages tensors with a CUDA synchronize and
writes through a spawned process pool, which fails on CPU-only machines (and needs a ``__main__`` guard).
:class:`SyncTorchDistSaveStrategy` writes the same ``torch_dist`` format synchronously from the training
process through ``torch.distributed.checkpoint``, on CPU and GPU alike; megatron-core's default loader
reads it.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
from megatron.core.dist_checkpointing.strategies.base import SaveShardedStrategy
from megatron.core.dist_checkpointing.strategies.torch import (MCoreSavePlanner,
                                                               _replace_state_dict_keys_with_sharded_keys,
                                                               mcore_to_pyt_state_dict)
from megatron.core.dist_checkpointing.utils import extract_sharded_tensors_and_factories

logger = logging.getLogger("bridge.training")

LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, or does not fit the model."""


class SyncTorchDistSaveStrategy(SaveShardedStrategy):
    """megatron-core's ``torch_dist`` format, written synchronously by this process (CPU and GPU)."""

    def __init__(self) -> None:
        super().__init__("torch_dist", 1)

    def make_writer(self, checkpoint_dir: Path) -> dcp.FileSystemWriter:
        return dcp.FileSystemWriter(str(checkpoint_dir), thread_count=1)

    def save(self, sharded_state_dict, checkpoint_dir: Path) -> None:
        state_dict, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, True)
        dcp.save(mcore_to_pyt_state_dict(state_dict, False), storage_writer=self.make_writer(checkpoint_dir),
                 planner=MCoreSavePlanner(dedup_replicated_tensors=False, flatten_state_dict=False))

    def can_handle_sharded_objects(self) -> bool:
        return True


@dataclass
class LoadedState:
    """What a resume restores besides the weights and the optimizer."""

    step: int
    consumed_samples: int
    path: str
    rng_state: Optional[Dict[str, Any]] = None
    """This rank's saved RNG states; apply with :func:`restore_rng` right before the first step (building
    the data loader draws from torch's RNG, so restoring earlier would shift dropout masks)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolve_checkpoint(path: str) -> Optional[str]:
    """The checkpoint folder ``path`` names: a ``step_<N>`` folder itself, or the one a ``latest`` marker
    in ``path`` names. None when ``path`` holds no checkpoint yet."""
    marker = os.path.join(path, LATEST)
    if os.path.isfile(marker):
        with open(marker) as f:
            name = f.read().strip()
        target = os.path.join(path, name)
        if not os.path.isdir(target):
            raise CheckpointError(f"{marker} names {name!r}, which does not exist in {path}")
        return target
    if os.path.isfile(os.path.join(path, "metadata.json")):
        return path
    return None


def _rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
        state["tracker"] = tensor_parallel.get_cuda_rng_tracker().get_states()
    return state


def restore_rng(state: Optional[Dict[str, Any]]) -> None:
    """Put back the RNG states a checkpoint saved (no-op for None)."""
    if state is None:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
        tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(data: Any) -> ShardedObject:
    """RNG states differ per rank: one object per global rank."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return ShardedObject("rng_state", data, (world,), (rank,), replica_id=0)


def _training_state_dict(module, optimizer, scheduler, is_loading: bool) -> Dict[str, Any]:
    model_sd = module.sharded_state_dict()
    return {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading),
        "scheduler": scheduler.state_dict(),
    }


def check_model_fits(module, checkpoint: str) -> None:
    """One clear error when a model tensor is missing from ``checkpoint`` or has another shape there."""
    saved = dist_checkpointing.load_tensors_metadata(checkpoint)
    tensors, _ = extract_sharded_tensors_and_factories(module.sharded_state_dict())
    for tensor in tensors.values() if isinstance(tensors, dict) else []:
        if not isinstance(tensor, ShardedTensor):
            continue
        if tensor.key not in saved:
            raise CheckpointError(f"checkpoint {checkpoint} has no tensor {tensor.key!r} (the model expects shape "
                                  f"{tuple(tensor.global_shape)}): it was saved from a different model")
        have = tuple(saved[tensor.key].global_shape)
        if have != tuple(tensor.global_shape):
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit the model: tensor {tensor.key!r} has shape {have} in the "
                f"checkpoint but {tuple(tensor.global_shape)} in the model; build the model the checkpoint "
                "was saved from (see its run_config.yaml)")


def save_checkpoint(root: str, step: int, module, optimizer, scheduler, consumed_samples: int,
                    run_config: Dict[str, Any], keep_last: int = 0) -> str:
    """Save a complete checkpoint of ``step`` under ``root`` (see the module docstring); returns its folder."""
    name = step_dir_name(step)
    final, tmp = os.path.join(root, name), os.path.join(root, f".tmp_{name}")
    if _is_main():
        os.makedirs(root, exist_ok=True)
        for leftover in Path(root).glob(".tmp_*"):  # from a save that crashed: never complete, never named
            shutil.rmtree(leftover, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    state = _training_state_dict(module, optimizer, scheduler, is_loading=False)
    world = dist.get_world_size() if dist.is_initialized() else 1
    state.update(step=step, consumed_samples=consumed_samples, world_size=world, run_config=run_config,
                 rng_state=_rng_sharded_object(_rng_state()))
    try:
        dist_checkpointing.save(state, tmp, sharded_strategy=SyncTorchDistSaveStrategy())
    except (Exception, dcp.api.CheckpointException) as exc:  # the latter is a BaseException
        previous = resolve_checkpoint(root)
        raise CheckpointError(
            f"saving checkpoint step {step} to {tmp} failed: {_root_cause(exc)}; the last complete checkpoint "
            f"({previous or 'none yet'}) is untouched") from exc
    _barrier()
    if _is_main():
        import yaml

        _write_atomically(os.path.join(tmp, "run_config.yaml"), yaml.safe_dump(run_config, sort_keys=False))
        if os.path.exists(final):  # re-saving a step (e.g. after a resume): move the old copy out of the way
            stale = os.path.join(root, f".tmp_old_{name}")
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomically(os.path.join(root, LATEST), name + "\n")
        _prune(root, keep_last, keep=name)
    _barrier()
    return final


def _root_cause(exc: BaseException) -> str:
    """The innermost error's message (torch.distributed.checkpoint wraps per-rank failures)."""
    if isinstance(exc, dcp.api.CheckpointException) and exc.failures:
        exc = next(iter(exc.failures.values()))[0]  # (exception, stack summary) of the first failing rank
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def _prune(root: str, keep_last: int, keep: str) -> None:
    if keep_last <= 0:
        return
    steps = sorted((int(m.group(1)), d) for d in os.listdir(root) if (m := _STEP_DIR.match(d)))
    for _, d in steps[:-keep_last]:
        if d != keep:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def load_checkpoint(path: str, module, optimizer, scheduler) -> LoadedState:
    """Restore weights, optimizer, scheduler and RNG states from ``path`` (a folder or ``checkpoint.dir``)."""
    checkpoint = resolve_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"no checkpoint in {path} (no 'latest' marker and no checkpoint metadata)")
    check_model_fits(module, checkpoint)
    common = dist_checkpointing.load_common_state_dict(checkpoint)
    state = _training_state_dict(module, optimizer, scheduler, is_loading=True)
    world = dist.get_world_size() if dist.is_initialized() else 1
    same_world = common.get("world_size") == world
    if same_world:
        state["rng_state"] = _rng_sharded_object(None)
    loaded = dist_checkpointing.load(state, checkpoint)
    module.load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    if not same_world:
        logger.warning("checkpoint was saved by %s processes, this run has %s: RNG states start fresh",
                       common.get("world_size"), world)
    return LoadedState(step=int(loaded["step"]), consumed_samples=int(loaded["consumed_samples"]), path=checkpoint,
                       rng_state=loaded["rng_state"] if same_world else None)


def load_weights(path: str, module) -> str:
    """Load only the model weights of the checkpoint at ``path`` (fine-tuning, generation); returns its folder."""
    checkpoint = resolve_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"no checkpoint in {path} (no 'latest' marker and no checkpoint metadata)")
    check_model_fits(module, checkpoint)
    loaded = dist_checkpointing.load({"model": module.sharded_state_dict()}, checkpoint)
    module.load_state_dict(loaded["model"])
    return checkpoint


def load_run_config(path: str) -> Dict[str, Any]:
    """The run config saved with the checkpoint at ``path``."""
    checkpoint = resolve_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"no checkpoint in {path} (no 'latest' marker and no checkpoint metadata)")
    return dist_checkpointing.load_common_state_dict(checkpoint)["run_config"]
