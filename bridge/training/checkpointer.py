"""``Checkpointer``: what a run does with its ``checkpoint.dir`` (like torchtitan's ``CheckpointManager``).

It owns the folder for the run's lifetime and every policy decision about it; :mod:`bridge.training.
checkpointing` only reads and writes one checkpoint.

* **Start**: lock the folder (one run writes it at a time), put back a copy whose swap a crash interrupted,
  and refuse to start fresh over checkpoints of an earlier run unless ``checkpoint.resume=true`` (continue it)
  or ``checkpoint.overwrite=true`` (replace it: its checkpoints are removed once this run's first one is
  complete, so a crash before that loses nothing).
* **Resume**: from ``latest``; without ``latest`` but with step folders, from the newest step whose files match
  its manifest (logged). The checkpoint must come from a model whose weights mean the same; a step beyond
  ``train.train_steps`` is an error (``latest`` never moves back). Changed optimizer / schedule / step values
  take effect and are logged.
* **Saves**: every ``save_interval`` steps and at the end (not again when nothing was trained since the loaded
  checkpoint). **Retention**: the ``keep_last`` newest plus the one with the lowest recorded loss, so a run
  that diverges slowly keeps a healthy checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional

from bridge.interop.hf.finetune import hf_directory
from bridge.training.checkpoint_lock import DirectoryLock
from bridge.training.checkpoint_manifest import read_manifest, resume_changes
from bridge.training.checkpointing import (LATEST, LoadedState, list_steps, load_checkpoint,
                                          newest_verified, on_main, read_latest, recover_interrupted_saves,
                                          remove_checkpoint, resolve_checkpoint, save_checkpoint, step_dir_name,
                                          step_of)
from bridge.training.errors import CheckpointError

logger = logging.getLogger("bridge.training")


class Checkpointer:
    """The checkpoint policy of one run: ``open`` → ``restore`` → ``maybe_save`` per step → ``save_final`` →
    ``close``. Every rank calls every method; files are changed by rank 0 only."""

    def __init__(self, cfg, run_config: Dict[str, Any], train_steps: int) -> None:
        self.cfg = cfg
        self.root: Optional[str] = cfg.dir
        self.run_config = run_config
        self.train_steps = train_steps
        self.lock = DirectoryLock(self.root) if self.root else None
        self.loaded: Optional[LoadedState] = None
        self._earlier_run: List[str] = []  # step folders replaced once this run's first save is complete

    # -- start ----------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Claim ``checkpoint.dir`` (before anything is built, so a bad folder fails in the first second)."""
        if self.root:
            on_main(self._claim_folder)
        if self.cfg.pretrained_checkpoint and not hf_directory(self.cfg.pretrained_checkpoint):
            on_main(lambda: self._pretrained_exists(self.cfg.pretrained_checkpoint))

    def _claim_folder(self) -> None:
        root = self.root
        if os.path.exists(root) and not os.path.isdir(root):
            raise CheckpointError(f"checkpoint.dir={root} is a file, not a folder; give a folder path")
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"checkpoint.dir={root} cannot be created ({exc.strerror}); give a folder this "
                                  "user can write") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise CheckpointError(f"checkpoint.dir={root} is not writable by this user; give a folder it can write")
        self.lock.acquire()
        try:
            recover_interrupted_saves(root)
            steps, latest = list_steps(root), read_latest(root)
            if self.cfg.resume or not (steps or latest):
                return
            if not self.cfg.overwrite:
                newest = latest or steps[-1][1]
                raise CheckpointError(
                    f"checkpoint.dir={root} already holds checkpoints of another run (newest: {newest}); continue "
                    f"that run with checkpoint.resume=true, start a new one with another name=... or "
                    f"checkpoint.dir=..., or replace them with checkpoint.overwrite=true")
            self._earlier_run = [name for _, name in steps]
            logger.warning("checkpoint.overwrite=true: the %d checkpoint(s) in %s are removed once this run's "
                           "first checkpoint is complete", len(steps), root)
        except BaseException:
            self.lock.release()
            raise

    @staticmethod
    def _pretrained_exists(path: str) -> None:
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint.pretrained_checkpoint={path} does not exist; give a checkpoint.dir "
                                  "of an earlier run or one of its step_<N> folders (or null to start from scratch)")
        if resolve_checkpoint(path) is None:
            raise CheckpointError(f"checkpoint.pretrained_checkpoint={path} holds no checkpoint (no 'latest' marker "
                                  "and no checkpoint metadata)")

    # -- resume -----------------------------------------------------------------------------------------------
    def restore(self, core, optimizer, scheduler, load_pretrained: Callable[[str], str]) -> Optional[LoadedState]:
        """Resume (``checkpoint.resume`` and a checkpoint to resume), else load ``checkpoint.pretrained_checkpoint``
        with ``load_pretrained(reference)``; None when the run starts at step 0."""
        target = on_main(self._resume_target) if self.cfg.resume else None
        if target is not None:
            state = load_checkpoint(target, core, optimizer, scheduler, self.run_config)
            if state.step > self.train_steps:
                raise CheckpointError(
                    f"{state.path} is at step {state.step}, beyond train.train_steps={self.train_steps}; set "
                    f"train.train_steps={state.step} or more (saving fewer steps would move 'latest' back)")
            changes = resume_changes(state.run_config or {}, self.run_config)
            if changes:
                logger.warning("resuming with changed settings, which take effect from step %d: %s", state.step + 1,
                               "; ".join(changes))
            logger.info("resumed from %s at step %d", state.path, state.step)
            self.loaded = state
            return state
        if self.cfg.pretrained_checkpoint:
            path = load_pretrained(self.cfg.pretrained_checkpoint)
            logger.info("loaded pretrained weights from %s", path)
        return None

    def _resume_target(self) -> Optional[str]:
        root = self.root
        if read_latest(root) is not None:
            return resolve_checkpoint(root)
        steps = list_steps(root)
        if not steps:
            logger.info("checkpoint.resume=true but %s holds no checkpoint yet: starting at step 0", root)
            return None
        newest = newest_verified(root)
        if newest is None:
            raise CheckpointError(
                f"{root} has step folders ({steps[0][1]} ... {steps[-1][1]}) but no '{LATEST}' marker and none of "
                f"them is complete (manifest.json verified); write the name of the folder to resume into "
                f"{os.path.join(root, LATEST)}, or start a new run in another checkpoint.dir")
        logger.warning("%s has no '%s' marker: resuming from its newest complete checkpoint %s", root, LATEST,
                       os.path.basename(newest))
        return newest

    # -- saves ------------------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether the loop saves after ``step`` (the final step is :meth:`save_final`'s)."""
        interval = self.cfg.save_interval
        return bool(self.root and interval and step % interval == 0 and step < self.train_steps)

    def save(self, step: int, consumed_samples: int, loss: Optional[float], core, optimizer, scheduler) -> str:
        on_main(lambda: self._check_forward(step))
        path = save_checkpoint(self.root, step, core, optimizer, scheduler, consumed_samples, self.run_config,
                               loss=loss if loss is None or math.isfinite(loss) else None)
        on_main(lambda: self._retain(step_dir_name(step)))
        return path

    def save_final(self, step: int, consumed_samples: int, loss: Optional[float], core, optimizer,
                   scheduler) -> Optional[str]:
        """The end-of-run checkpoint; the loaded one when nothing was trained since (it holds this state)."""
        if not self.root:
            return None
        if self.loaded is not None and self.loaded.step == step:
            return self.loaded.path
        return self.save(step, consumed_samples, loss, core, optimizer, scheduler)

    def _check_forward(self, step: int) -> None:
        latest = read_latest(self.root)
        if latest is not None and not self._earlier_run and step_of(latest) > step:
            raise CheckpointError(f"refusing to save step {step} into {self.root}: its latest checkpoint is "
                                  f"{latest}, and 'latest' never moves back")

    def _retain(self, just_saved: str) -> None:
        if self._earlier_run:
            for name in self._earlier_run:
                if name != just_saved:
                    remove_checkpoint(self.root, name)
            logger.warning("removed the earlier run's checkpoints from %s (checkpoint.overwrite=true)", self.root)
            self._earlier_run = []
        keep_last = self.cfg.keep_last
        steps = [name for _, name in list_steps(self.root)]
        if keep_last <= 0 or len(steps) <= keep_last:
            return
        keep = set(steps[-keep_last:]) | {just_saved}
        healthy = self.lowest_loss()
        if healthy:
            keep.add(os.path.basename(healthy[0]))
        for name in steps:
            if name not in keep:
                remove_checkpoint(self.root, name)

    def lowest_loss(self) -> Optional[tuple]:
        """``(folder, loss)`` of the checkpoint in ``checkpoint.dir`` with the lowest recorded training loss."""
        best = None
        for _, name in list_steps(self.root) if self.root else []:
            try:
                manifest = read_manifest(os.path.join(self.root, name))
            except CheckpointError:
                continue
            loss = (manifest or {}).get("loss")
            if isinstance(loss, (int, float)) and math.isfinite(loss) and (best is None or loss < best[1]):
                best = (os.path.join(self.root, name), float(loss))
        return best

    def divergence_note(self) -> str:
        """What the divergence error says about the checkpoints (rank 0's view of the folder)."""
        if not self.root:
            return ""
        try:
            latest = read_latest(self.root)
        except CheckpointError:
            latest = None
        if latest is None:
            return f" No checkpoint was saved in {self.root} yet."
        note = f" The checkpoints in {self.root} are kept (latest: {latest}"
        healthy = self.lowest_loss()
        if healthy and os.path.basename(healthy[0]) != latest:
            note += (f"; lowest training loss: {os.path.basename(healthy[0])}, loss {healthy[1]:.4f}, usable as "
                     f"checkpoint.pretrained_checkpoint={healthy[0]}")
        return note + ")."

    def close(self) -> None:
        """Release the folder (rank 0)."""
        if self.lock is not None:
            self.lock.release()
