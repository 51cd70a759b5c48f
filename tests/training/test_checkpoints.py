"""Checkpoints: resume reproduces the uninterrupted losses, fine-tuning starts from pretrained weights,
a crashed or killed save leaves the previous checkpoint loadable, a different model shape is one clear error."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch.distributed.checkpoint as dcp

from runs import tiny_run
from bridge.models import get_preset
from bridge.training import CheckpointConfig, CheckpointError, load_run_config, load_weights, resolve_checkpoint, train
from bridge.training.checkpointing import LATEST

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def pretrained(data_cache, tmp_path_factory):
    """An uninterrupted 8-step GPT run with checkpoints at steps 4 and 8: ``(dir, losses)``."""
    root = str(tmp_path_factory.mktemp("pretrain") / "ckpt")
    run = tiny_run("gpt", steps=8, cache_dir=data_cache, model_overrides={"hidden_dropout": 0.1})
    run.checkpoint = CheckpointConfig(dir=root, save_interval=4, keep_last=0)
    return root, train(run).losses


def test_resume_reproduces_the_uninterrupted_losses(pretrained, data_cache, tmp_path):
    root, losses = pretrained
    interrupted = str(tmp_path / "ckpt")
    os.makedirs(interrupted)
    shutil.copytree(os.path.join(root, "step_0000004"), os.path.join(interrupted, "step_0000004"))
    with open(os.path.join(interrupted, LATEST), "w") as f:
        f.write("step_0000004\n")
    run = tiny_run("gpt", steps=8, cache_dir=data_cache, model_overrides={"hidden_dropout": 0.1})
    run.checkpoint = CheckpointConfig(dir=interrupted, resume=True)
    resumed = train(run)
    assert resumed.steps == [5, 6, 7, 8]
    assert resumed.losses == losses[4:]  # bit for bit: same data, weights, optimizer, schedule, dropout RNG


def test_checkpoint_carries_the_run_config(pretrained):
    config = load_run_config(pretrained[0])
    assert config["family"] == "gpt" and config["model"]["hidden_size"] == 128
    assert config["train"]["train_steps"] == 8 and config["optimizer"]["optimizer"] == "adamw"
    assert os.path.isfile(os.path.join(resolve_checkpoint(pretrained[0]), "run_config.yaml"))


def test_finetune_starts_from_the_pretrained_weights(pretrained, data_cache, capsys):
    def finetune(pretrained_dir):
        run = tiny_run("gpt", steps=4, cache_dir=data_cache, data_kind="finetune",
                       task_accuracy_examples=10 if pretrained_dir else 0)
        run.checkpoint = CheckpointConfig(pretrained_checkpoint=pretrained_dir)
        return train(run)

    scratch, tuned = finetune(None), finetune(pretrained[0])
    assert tuned.losses[0] < scratch.losses[0] - 0.5  # the pretrained model already knows the bytes
    assert tuned.losses[-1] < tuned.losses[0]
    assert tuned.accuracy is not None and 0.0 <= tuned.accuracy <= 1.0
    out = capsys.readouterr().out  # what conf/gpt_finetune.yaml says the run prints
    assert "embedded task accuracy before fine-tuning: " in out and "embedded task accuracy: " in out


def test_loading_into_a_different_shape_is_one_clear_error(pretrained):
    model = get_preset("gpt_tiny", seq_length=64, num_layers=2, hidden_size=64, vocab_size=359).provide()
    with pytest.raises(CheckpointError, match=r"tensor '.*' has shape \(.*128.*\) in the checkpoint but \(.*64.*\) "
                                              r"in the model"):
        load_weights(pretrained[0], model)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    model = get_preset("gpt_tiny", seq_length=64, num_layers=2, vocab_size=359).provide()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_weights(str(tmp_path), model)


def test_a_save_that_crashes_leaves_the_previous_checkpoint(data_cache, tmp_path, monkeypatch):
    original = dcp.FileSystemWriter.write_data
    calls = {"n": 0}

    def failing_write(self, plan, planner):
        calls["n"] += 1
        result = original(self, plan, planner)  # the data files are written ...
        if calls["n"] == 2:
            raise OSError("disk full (injected)")  # ... but the save never completes
        return result

    monkeypatch.setattr(dcp.FileSystemWriter, "write_data", failing_write)
    run = tiny_run("gpt", steps=4, cache_dir=data_cache)
    run.checkpoint = CheckpointConfig(dir=str(tmp_path / "ckpt"), save_interval=2)
    with pytest.raises(CheckpointError, match="(?s)saving checkpoint step 4 .* failed: OSError: disk full .*untouched"):
        train(run)
    assert resolve_checkpoint(run.checkpoint.dir).endswith("step_0000002")
    assert not os.path.exists(tmp_path / "ckpt" / "step_0000004")
    model = get_preset("gpt_tiny", seq_length=64, num_layers=2, vocab_size=359).provide()
    load_weights(run.checkpoint.dir, model)


def test_kill_9_during_save_leaves_the_previous_checkpoint(data_cache, tmp_path):
    ckpt, out, log = str(tmp_path / "ckpt"), str(tmp_path / "result.json"), tmp_path / "train.log"
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "train_tiny.py"), "--steps", "4", "--save-interval", "2",
         "--ckpt-dir", ckpt, "--cache-dir", data_cache, "--out", out, "--hang-in-save", "2"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=child_env())
    try:
        deadline = time.time() + 120
        while not os.path.exists(out + ".saving"):
            assert proc.poll() is None, f"the training subprocess ended before its second save: {log.read_text()[-3000:]}"
            assert time.time() < deadline, "the training subprocess never reached its second save"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # mid-save: data written, metadata and rename not done
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(name.startswith(".tmp_step_0000004") for name in os.listdir(ckpt))
    assert resolve_checkpoint(ckpt).endswith("step_0000002")
    model = get_preset("gpt_tiny", seq_length=64, num_layers=2, vocab_size=359).provide()
    load_weights(ckpt, model)


def child_env() -> dict:
    """This environment for a child run: the repo importable, no rendezvous variables of this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASTER_")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(HERE)), os.environ.get("PYTHONPATH", "")])
    return env


def test_a_differently_padded_vocabulary_names_the_rows_to_pad_to(pretrained):
    """A new tensor-parallel size pads the vocabulary differently: the error says which row count to keep."""
    model = get_preset("gpt_tiny", seq_length=64, num_layers=2, vocab_size=359, make_vocab_size_divisible_by=256).provide()
    with pytest.raises(CheckpointError, match=r"has 384 vocabulary rows in '.*', this model 512: .* set "
                                              r"model.make_vocab_size_divisible_by so that this run pads to 384 rows"):
        load_weights(pretrained[0], model)
