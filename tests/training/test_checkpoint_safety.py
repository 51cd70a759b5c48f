"""Nothing in a checkpoint folder is lost or silently replaced, and resume is what it says (issue 9, items 1-9).

One test (or a small group) per item: resume without ``latest``, a fresh run into a used folder, re-saving a
step, ``train_steps`` below the checkpoint's step, two runs in one folder, divergence retention, the manifest
(checksums, architecture fields), changed settings on resume, exact resume with dropout after a clean stop.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from runs import tiny_run
from bridge.models import get_preset
from bridge.training import (CheckpointConfig, CheckpointError, OptimizerConfig, SchedulerConfig, TrainingDivergedError,
                             resolve_checkpoint, train)
from bridge.training.checkpoint_lock import DirectoryLock
from bridge.training.checkpoint_manifest import MANIFEST, read_manifest
from bridge.training.checkpointer import Checkpointer
from bridge.training.checkpointing import LATEST, list_steps, save_checkpoint
from bridge.training.optimizer import build_optimizer, build_scheduler

DROPOUT = {"hidden_dropout": 0.1}


def _run(data_cache, root, steps, **ckpt):
    run = tiny_run("gpt", steps=steps, cache_dir=data_cache, model_overrides=DROPOUT)
    run.scheduler.decay_steps = 8  # the same LR curve whatever train_steps a test resumes with
    run.checkpoint = CheckpointConfig(dir=str(root), **{"save_interval": 2, "keep_last": 0, **ckpt})
    return run


@pytest.fixture(scope="module")
def four_steps(data_cache, tmp_path_factory):
    """A finished 4-step run (checkpoints at steps 2 and 4; a clean stop): ``(dir, losses)``."""
    root = tmp_path_factory.mktemp("four") / "ckpt"
    return str(root), train(_run(data_cache, root, 4)).losses


@pytest.fixture
def copy_of(tmp_path):
    def copy(root):
        target = str(tmp_path / "copy")
        shutil.copytree(root, target)
        return target
    return copy


def _snapshot(root):
    return {name: sorted(os.listdir(os.path.join(root, name))) if os.path.isdir(os.path.join(root, name))
            else open(os.path.join(root, name)).read() for name in sorted(os.listdir(root))}


# -- item 9: exact resume with dropout after a clean stop (and item 8: a longer train_steps takes effect) --------
def test_resume_after_a_clean_stop_is_exact_with_dropout(four_steps, data_cache, tmp_path, copy_of, caplog):
    root, first = four_steps
    uninterrupted = train(_run(data_cache, tmp_path / "whole", 8)).losses
    assert first == uninterrupted[:4]
    with caplog.at_level(logging.WARNING, logger="bridge.training"):
        resumed = train(_run(data_cache, copy_of(root), 8, resume=True))
    assert resumed.steps == [5, 6, 7, 8]
    assert resumed.losses == uninterrupted[4:]  # bit for bit, although the 4-step run validated at its end
    assert "train.train_steps: 4 -> 8" in caplog.text


# -- item 1: resume=true with step folders but no latest ------------------------------------------------------
def test_resume_without_latest_continues_from_the_newest_complete_step(four_steps, data_cache, copy_of, caplog):
    root = copy_of(four_steps[0])
    os.remove(os.path.join(root, LATEST))
    with caplog.at_level(logging.WARNING, logger="bridge.training"):
        resumed = train(_run(data_cache, root, 6, resume=True))
    assert resumed.steps == [5, 6]  # not a silent restart at step 1
    assert "no 'latest' marker: resuming from its newest complete checkpoint step_0000004" in caplog.text
    assert [name for _, name in list_steps(root)] == ["step_0000002", "step_0000004", "step_0000006"]


def test_resume_without_latest_and_no_complete_step_is_one_error(four_steps, data_cache, copy_of):
    root = copy_of(four_steps[0])
    os.remove(os.path.join(root, LATEST))
    for _, name in list_steps(root):
        os.remove(os.path.join(root, name, MANIFEST))
    before = _snapshot(root)
    with pytest.raises(CheckpointError, match="no 'latest' marker and none of them is complete"):
        train(_run(data_cache, root, 6, resume=True))
    assert _snapshot(root) == before


# -- item 2: a fresh run into a folder holding another run's checkpoints -------------------------------------
def test_fresh_run_into_a_used_folder_is_refused(four_steps, data_cache, copy_of):
    root = copy_of(four_steps[0])
    before = _snapshot(root)
    with pytest.raises(CheckpointError, match=r"already holds checkpoints of another run \(newest: step_0000004\); "
                                              r"continue that run with checkpoint.resume=true.*checkpoint.overwrite=true"):
        train(_run(data_cache, root, 2))
    assert _snapshot(root) == before


def test_overwrite_replaces_the_earlier_run_after_its_first_save(four_steps, data_cache, copy_of):
    root = copy_of(four_steps[0])
    result = train(_run(data_cache, root, 2, save_interval=0, overwrite=True))
    assert result.checkpoint.endswith("step_0000002")
    assert [name for _, name in list_steps(root)] == ["step_0000002"]
    assert read_manifest(result.checkpoint)["run_config"]["train"]["train_steps"] == 2


# -- item 4: train_steps below the checkpoint's step -----------------------------------------------------------
def test_train_steps_below_the_checkpoint_step_is_an_error(four_steps, data_cache, copy_of):
    root = copy_of(four_steps[0])
    before = _snapshot(root)
    with pytest.raises(CheckpointError, match=r"step_0000004 is at step 4, beyond train.train_steps=2; set "
                                              r"train.train_steps=4 or more"):
        train(_run(data_cache, root, 2, resume=True))
    assert _snapshot(root) == before


def test_resuming_a_finished_run_does_not_rewrite_its_checkpoint(four_steps, data_cache, copy_of):
    root = copy_of(four_steps[0])
    digest = read_manifest(os.path.join(root, "step_0000004"))["files"]
    result = train(_run(data_cache, root, 4, resume=True))
    assert result.steps == [] and result.checkpoint.endswith("step_0000004")
    assert read_manifest(result.checkpoint)["files"] == digest


# -- item 3: re-saving a step keeps a complete copy on disk ------------------------------------------------------
def _tiny_parts():
    model = get_preset("gpt_tiny", seq_length=64, num_layers=2, vocab_size=359).provide()
    run = tiny_run("gpt")
    optimizer = build_optimizer(model, run.optimizer, model.config.params_dtype, model.embedding.word_embeddings
                                .weight.device)
    return model, optimizer, build_scheduler(optimizer, run.optimizer, run.scheduler, 8)


def test_a_kill_between_the_swap_renames_keeps_a_complete_copy(tmp_path, monkeypatch):
    root = str(tmp_path / "ckpt")
    model, optimizer, scheduler = _tiny_parts()
    save_checkpoint(root, 4, model, optimizer, scheduler, 32, {"family": "gpt"})
    real_replace, calls = os.replace, []

    def killed_after_the_first_rename(src, dst):
        calls.append((src, dst))
        real_replace(src, dst)
        if os.path.basename(str(dst)) == ".old_step_0000004":
            raise KeyboardInterrupt("killed between the two renames")

    monkeypatch.setattr(os, "replace", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, 4, model, optimizer, scheduler, 32, {"family": "gpt"})
    monkeypatch.setattr(os, "replace", real_replace)
    assert not os.path.exists(os.path.join(root, "step_0000004"))  # the window the issue describes ...
    with pytest.raises(CheckpointError, match="a complete copy is in .*run again with checkpoint.resume=true"):
        resolve_checkpoint(root)
    checkpointer = Checkpointer(CheckpointConfig(dir=root, resume=True), {"family": "gpt"}, 8)
    checkpointer.open()  # ... and the next run puts the complete copy back before anything else
    checkpointer.close()
    assert resolve_checkpoint(root).endswith("step_0000004")
    assert sorted(os.listdir(root)) == [LATEST, "step_0000004"]


# -- item 5: one run per checkpoint folder -----------------------------------------------------------------------
def test_a_second_run_on_a_locked_folder_is_refused(four_steps, data_cache, copy_of):
    root = copy_of(four_steps[0])
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(os.path.join(root, ".lock"), "w") as f:
            json.dump({"pid": holder.pid, "host": os.uname().nodename, "start": None, "since": "earlier"}, f)
        with pytest.raises(CheckpointError, match=rf"checkpoint.dir {root} is in use by pid {holder.pid}"):
            train(_run(data_cache, root, 6, resume=True))
    finally:
        holder.kill()
        holder.wait()
    resumed = train(_run(data_cache, root, 6, resume=True))  # the holder is gone: its lock is stale
    assert resumed.steps == [5, 6]
    assert not os.path.exists(os.path.join(root, ".lock"))  # released at the end


def test_lock_is_exclusive_within_a_host(tmp_path):
    first, second = DirectoryLock(str(tmp_path)), DirectoryLock(str(tmp_path))
    first.acquire()
    with pytest.raises(CheckpointError, match=f"is in use by pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()
    assert not os.path.exists(tmp_path / ".lock")


# -- item 6: divergence keeps the healthy checkpoint -------------------------------------------------------------
def test_divergence_keeps_the_lowest_loss_checkpoint(data_cache, tmp_path, monkeypatch):
    import bridge.training.trainer as trainer

    real_loss, calls = trainer.masked_loss, {"n": 0}

    def loss_blowing_up(model, batch, family):  # 2 micro-batches per step: climbs from step 3, NaN at step 7
        calls["n"] += 1
        loss, tokens = real_loss(model, batch, family)
        step = (calls["n"] + 1) // 2
        factor = float("nan") if step >= 7 else (10.0 ** (step - 2) if step > 2 else 1.0)
        return loss * factor, tokens

    monkeypatch.setattr(trainer, "masked_loss", loss_blowing_up)
    root = tmp_path / "ckpt"
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 7.*lowest training loss: step_0000002"):
        train(_run(data_cache, root, 8, save_interval=1, keep_last=2))
    assert [name for _, name in list_steps(str(root))] == ["step_0000002", "step_0000005", "step_0000006"]


# -- item 7: the manifest: checksums and the fields that give the weights their meaning -------------------------
def test_a_flipped_byte_is_one_error_naming_the_file(four_steps, data_cache, copy_of):
    root = copy_of(four_steps[0])
    shard = os.path.join(root, "step_0000004", "__0_0.distcp")
    with open(shard, "r+b") as f:
        f.seek(os.path.getsize(shard) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match=r"__0_0.distcp does not match its checksum in manifest.json"):
        train(_run(data_cache, root, 6, resume=True))


def test_resuming_into_another_head_count_names_the_field(four_steps, data_cache, copy_of):
    root = copy_of(four_steps[0])
    run = _run(data_cache, root, 6, resume=True)
    run.model.num_attention_heads = 4  # the same tensor shapes as 2 heads: only the manifest can tell
    with pytest.raises(CheckpointError, match=r"saved with model.num_attention_heads=2 but this run has "
                                              r"model.num_attention_heads=4"):
        train(run)


# -- item 8: changed optimizer / schedule values take effect on resume ------------------------------------------
def test_changed_lr_and_decay_style_take_effect_on_resume():
    model, optimizer, scheduler = _tiny_parts()
    for _ in range(4):
        scheduler.step(increment=1)
    resumed = build_scheduler(optimizer, OptimizerConfig(lr=1e-4, min_lr=1e-5),
                              SchedulerConfig(warmup_steps=2, decay_style="constant"), 8)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.num_steps == 4
    assert resumed.get_lr(optimizer.param_groups[0]) == pytest.approx(1e-4)  # not the checkpoint's 3e-3 curve


def test_changed_settings_are_logged_on_resume(four_steps, data_cache, copy_of, caplog):
    run = _run(data_cache, copy_of(four_steps[0]), 6, resume=True)
    run.optimizer.lr = 1e-3
    with caplog.at_level(logging.WARNING, logger="bridge.training"):
        train(run)
    assert "resuming with changed settings, which take effect from step 5: optimizer.lr: 0.003 -> 0.001" in caplog.text
