"""One checkpoint on disk: megatron-core distributed checkpointing, saved so that a complete copy always exists.

Layout of ``checkpoint.dir``::

    step_0000100/      one megatron-core distributed checkpoint (model, optimizer, scheduler, step,
                       consumed samples, RNG states per rank, the run config) + run_config.yaml
                       + manifest.json (every file's size and SHA-256, the run config; written last)
    latest             the name of the newest complete checkpoint, written last
    .lock              the run writing here (:mod:`bridge.training.checkpoint_lock`)

A save writes into ``.tmp_step_<N>/``. Once every rank has finished, rank 0 adds ``run_config.yaml`` and the
manifest, renames the folder to ``step_<N>/`` (``os.replace``), then replaces ``latest`` (itself written to a
temporary file and renamed). Re-saving a step that exists keeps the old copy until the new one is complete:
the old folder is renamed to ``.old_step_<N>/`` and the new one into place right after it, and a kill between
the two renames leaves both complete copies on disk, which :func:`recover_interrupted_saves` puts back at the
next start. A crash at any other point leaves ``latest`` naming a complete checkpoint; a failed save removes
its partial folder.

Save strategy: megatron-core's default ``torch_dist`` strategy stages tensors with a CUDA synchronize and
writes through a spawned process pool, which fails on CPU-only machines (and needs a ``__main__`` guard).
:class:`SyncTorchDistSaveStrategy` writes the same ``torch_dist`` format synchronously from the training
process through ``torch.distributed.checkpoint``, on CPU and GPU alike; megatron-core's default loader
reads it.

When to save, what to keep and whether a folder may be written at all is :class:`bridge.training.checkpointer.
Checkpointer`'s business; this module only reads and writes one checkpoint.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

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
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.utils import extract_sharded_tensors_and_factories

from bridge.distributed import barrier, is_main_process
from bridge.training.checkpoint_manifest import (check_architecture, read_manifest, verified, verify_files,
                                                 write_manifest)
from bridge.training.errors import CheckpointError

logger = logging.getLogger("bridge.training")

LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP, _OLD, _TRASH = ".tmp_", ".old_", ".trash_"
T = TypeVar("T")


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
    run_config: Optional[Dict[str, Any]] = None
    """The run config the checkpoint was saved with."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def step_of(name: str) -> Optional[int]:
    """The step of a ``step_<N>`` folder name (None for anything else)."""
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def list_steps(root: str) -> List[Tuple[int, str]]:
    """``(step, folder name)`` of the ``step_<N>`` folders in ``root``, oldest first."""
    if not os.path.isdir(root):
        return []
    return sorted((step, d) for d in os.listdir(root)
                  if (step := step_of(d)) is not None and os.path.isdir(os.path.join(root, d)))


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, its result (or its CheckpointError / OSError as a CheckpointError) on every rank.

    Checks that read or change shared files run once; every rank then stops with the same one-line message
    instead of the other ranks waiting forever in the next collective."""
    value, error = None, None
    if is_main_process():
        try:
            value = fn()
        except CheckpointError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"{exc.filename or 'checkpoint.dir'}: {exc.strerror or exc}"
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [(value, error)]
        dist.broadcast_object_list(box, src=0)
        value, error = box[0]
    if error:
        raise CheckpointError(error)
    return value


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_latest(root: str) -> Optional[str]:
    """The folder name in ``root/latest`` (None without the file); a garbled file is one error naming it."""
    marker = os.path.join(root, LATEST)
    if not os.path.isfile(marker):
        return None
    with open(marker, "rb") as f:
        raw = f.read(256)
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = None
    if name is None or step_of(name) is None:
        raise CheckpointError(
            f"{marker} is not a checkpoint name (it holds {raw[:40]!r}; expected one line like step_0000100): "
            f"write the step folder to use into it, or delete it")
    return name


def resolve_checkpoint(path: str) -> Optional[str]:
    """The checkpoint folder ``path`` names: a ``step_<N>`` folder itself, or the one a ``latest`` marker
    in ``path`` names. None when ``path`` holds no checkpoint yet."""
    name = read_latest(path)
    if name is not None:
        target = os.path.join(path, name)
        if not os.path.isdir(target):
            spare = [p for p in (os.path.join(path, _TMP + name), os.path.join(path, _OLD + name)) if verified(p)]
            hint = (f"; a complete copy is in {spare[0]} (a save was interrupted while swapping copies): run "
                    "again with checkpoint.resume=true to put it back") if spare else ""
            raise CheckpointError(f"{os.path.join(path, LATEST)} names {name!r}, which does not exist in {path}{hint}")
        return target
    if os.path.isfile(os.path.join(path, "metadata.json")):
        return path
    return None


def recover_interrupted_saves(root: str) -> List[str]:
    """Put back the complete copy of a step whose swap was interrupted; then remove every leftover ``.tmp_*`` /
    ``.old_*`` / ``.trash_*`` folder. Returns what was put back. Rank 0, with the folder's lock held."""
    restored = []
    if not os.path.isdir(root):
        return restored
    for prefix in (_TMP, _OLD):  # the new copy first: it is the later state
        for leftover in sorted(Path(root).glob(prefix + "step_*")):
            final = os.path.join(root, leftover.name[len(prefix):])
            if step_of(os.path.basename(final)) is not None and not os.path.exists(final) and verified(str(leftover)):
                os.replace(leftover, final)
                restored.append(final)
                logger.warning("put back %s from %s (a save was interrupted while swapping copies)", final, leftover)
    for prefix in (_TMP, _OLD, _TRASH):
        for leftover in Path(root).glob(prefix + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return restored


def remove_checkpoint(root: str, name: str) -> None:
    """Delete the step folder ``name``: renamed out of the ``step_<N>`` namespace first (one atomic rename), so a
    crash half-way through the deletion never leaves a damaged folder that looks like a checkpoint."""
    trash = os.path.join(root, _TRASH + name)
    try:
        os.replace(os.path.join(root, name), trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def newest_verified(root: str) -> Optional[str]:
    """The newest ``step_<N>`` folder of ``root`` whose files match its manifest."""
    for _, name in reversed(list_steps(root)):
        if verified(os.path.join(root, name)):
            return os.path.join(root, name)
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


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block without consuming the training RNG (validation builds a data loader, which draws from it):
    a run's dropout masks then do not depend on when it evaluated, and a checkpoint saved after an
    evaluation records the same RNG state as one saved before it."""
    state = _rng_state()
    try:
        yield
    finally:
        restore_rng(state)


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
    try:
        saved = dist_checkpointing.load_tensors_metadata(checkpoint)
    except Exception as exc:  # garbled metadata.json / .metadata of a checkpoint without a manifest
        raise CheckpointError(f"{checkpoint} cannot be read ({_root_cause(exc)}); it is damaged or not a bridge "
                              "checkpoint") from exc
    tensors, _ = extract_sharded_tensors_and_factories(module.sharded_state_dict())
    for tensor in nested_values(tensors):  # nested: virtual pipeline chunks (bridge.training.model_chunks)
        if not isinstance(tensor, ShardedTensor):
            continue
        if tensor.key not in saved:
            raise CheckpointError(f"checkpoint {checkpoint} has no tensor {tensor.key!r} (the model expects shape "
                                  f"{tuple(tensor.global_shape)}): it was saved from a different model")
        have = tuple(saved[tensor.key].global_shape)
        if have != tuple(tensor.global_shape) and _vocabulary_rows_differ(tensor.key, have, tuple(tensor.global_shape)):
            raise CheckpointError(
                f"checkpoint {checkpoint} has {have[0]} vocabulary rows in {tensor.key!r}, this model "
                f"{tensor.global_shape[0]}: the padded vocabulary is a multiple of make_vocab_size_divisible_by × "
                "tensor_model_parallel_size, so a new tensor-parallel size pads it differently; set "
                f"model.make_vocab_size_divisible_by so that this run pads to {have[0]} rows as well")
        if have != tuple(tensor.global_shape):
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit the model: tensor {tensor.key!r} has shape {have} in the "
                f"checkpoint but {tuple(tensor.global_shape)} in the model; build the model the checkpoint "
                "was saved from (see its run_config.yaml)")


def _vocabulary_rows_differ(key: str, saved: tuple, model: tuple) -> bool:
    """An embedding / output-layer tensor whose shapes differ only in the (padded) vocabulary rows."""
    return (("word_embeddings" in key or "output_layer" in key) and len(saved) == len(model)
            and saved[1:] == model[1:] and saved[0] != model[0])


def save_checkpoint(root: str, step: int, module, optimizer, scheduler, consumed_samples: int,
                    run_config: Dict[str, Any], loss: Optional[float] = None) -> str:
    """Save a complete checkpoint of ``step`` under ``root`` and point ``latest`` at it (see the module
    docstring); returns its folder. ``loss`` (the step's training loss) goes into the manifest."""
    name = step_dir_name(step)
    final, tmp, old = (os.path.join(root, prefix + name) for prefix in ("", _TMP, _OLD))

    def prepare() -> None:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # from a save of this step that failed
        os.makedirs(tmp)

    on_main(prepare)
    state = _training_state_dict(module, optimizer, scheduler, is_loading=False)
    world = dist.get_world_size() if dist.is_initialized() else 1
    state.update(step=step, consumed_samples=consumed_samples, world_size=world, run_config=run_config,
                 rng_state=_rng_sharded_object(_rng_state()))
    try:
        dist_checkpointing.save(state, tmp, sharded_strategy=SyncTorchDistSaveStrategy())
    except (Exception, dcp.api.CheckpointException) as exc:  # the latter is a BaseException
        raise _save_failed(root, tmp, step, exc) from exc
    barrier()

    def complete_and_swap() -> None:
        import yaml

        try:
            _write_atomically(os.path.join(tmp, "run_config.yaml"), yaml.safe_dump(run_config, sort_keys=False))
            write_manifest(tmp, step, run_config, loss)
        except OSError as exc:
            raise _save_failed(root, tmp, step, exc) from exc
        if os.path.exists(final):  # re-saving a step: the old copy stays complete until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _write_atomically(os.path.join(root, LATEST), name + "\n")

    on_main(complete_and_swap)
    return final


def _save_failed(root: str, tmp: str, step: int, exc: BaseException) -> CheckpointError:
    """The one-line error of a failed save; the partial folder is removed (a full disk stays usable)."""
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    cause = _root_cause(exc)
    if _disk_full(cause):
        free = shutil.disk_usage(root).free / 2**20 if os.path.isdir(root) else 0.0
        cause = f"the disk holding {root} is full ({free:.0f} MiB free)"
    try:
        previous = resolve_checkpoint(root)
    except CheckpointError:
        previous = None
    return CheckpointError(
        f"saving checkpoint step {step} to {tmp} failed: {cause}; the partial copy was removed and the last "
        f"complete checkpoint ({previous or 'none yet'}) is untouched")


def _disk_full(cause: str) -> bool:
    # torch's zip writer reports a short write on a full disk as "unexpected pos N vs M"
    return "No space left" in cause or f"[Errno {errno.ENOSPC}]" in cause or "unexpected pos" in cause


def _root_cause(exc: BaseException) -> str:
    """The innermost error's message (torch.distributed.checkpoint wraps per-rank failures)."""
    if isinstance(exc, dcp.api.CheckpointException) and exc.failures:
        exc = next(iter(exc.failures.values()))[0]  # (exception, stack summary) of the first failing rank
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def verify_checkpoint(checkpoint: str, run_config: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """Check ``checkpoint``'s files against its manifest and, given this run's config, that it was saved from a
    model whose weights mean the same; returns the manifest (None for a checkpoint without one, with a
    warning). Rank 0 checks, every rank raises."""

    def check() -> Optional[Dict[str, Any]]:
        manifest = read_manifest(checkpoint)
        if manifest is None:
            logger.warning("%s has no manifest.json (saved by an older bridge): its files cannot be verified",
                           checkpoint)
            return None
        verify_files(checkpoint, manifest)
        if run_config is not None:
            check_architecture(checkpoint, manifest.get("run_config") or {}, run_config)
        return manifest

    return on_main(check)


def _load_common(checkpoint: str) -> Dict[str, Any]:
    try:
        return dist_checkpointing.load_common_state_dict(checkpoint)
    except CheckpointError:
        raise
    except Exception as exc:  # garbled metadata.json / common.pt of a checkpoint without a manifest
        raise CheckpointError(f"{checkpoint} cannot be read ({_root_cause(exc)}); it is damaged or not a bridge "
                              "checkpoint") from exc


def _resolve_existing(path: str) -> str:
    checkpoint = resolve_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"no checkpoint in {path} (no 'latest' marker and no checkpoint metadata)")
    return checkpoint


def load_checkpoint(path: str, module, optimizer, scheduler,
                    run_config: Optional[Dict[str, Any]] = None) -> LoadedState:
    """Restore weights, optimizer, scheduler and RNG states from ``path`` (a folder or ``checkpoint.dir``),
    after checking its files and, given ``run_config``, that its model means the same."""
    checkpoint = _resolve_existing(path)
    verify_checkpoint(checkpoint, run_config)
    check_model_fits(module, checkpoint)
    common = _load_common(checkpoint)
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
                       rng_state=loaded["rng_state"] if same_world else None, run_config=common.get("run_config"))


def load_weights(path: str, module, run_config: Optional[Dict[str, Any]] = None) -> str:
    """Load only the model weights of the checkpoint at ``path`` (fine-tuning, generation); returns its folder."""
    checkpoint = _resolve_existing(path)
    verify_checkpoint(checkpoint, run_config)
    check_model_fits(module, checkpoint)
    loaded = dist_checkpointing.load({"model": module.sharded_state_dict()}, checkpoint)
    module.load_state_dict(loaded["model"])
    return checkpoint


def load_run_config(path: str) -> Dict[str, Any]:
    """The run config saved with the checkpoint at ``path``."""
    return _load_common(_resolve_existing(path))["run_config"]
