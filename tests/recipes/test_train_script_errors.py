"""scripts/train.py's failures end with one ``error:`` line and the right exit status: under ``python``, in the
launcher mode (``--nproc-per-node``), and quoted in torchrun's report (issue 9, items 10, 13, 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "scripts" / "train.py"
QUICK = ["train.train_steps=2", "train.device=cpu", "logging.progress_bar=false", "logging.tensorboard_dir=null",
         "train.generate_sample=false", "model.seq_length=64", "train.eval_steps=1"]


def _run(cmd, tmp_path, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_missing_data_path_is_one_line_exit_2(tmp_path):
    proc = _run([sys.executable, str(TRAIN), "--config-name", "gpt_pretrain", *QUICK,
                 f"data.paths=[{tmp_path}/nowhere/docs]"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _last_line(proc.stderr) == (f"error: indexed dataset '{tmp_path}/nowhere/docs' is incomplete: missing "
                                       f"{tmp_path}/nowhere/docs.bin, {tmp_path}/nowhere/docs.idx (data.paths lists "
                                       "prefixes without the .bin/.idx suffix; make them with "
                                       "scripts/preprocess_data.py)")
    assert "Traceback" not in proc.stderr


def test_unwritable_tensorboard_dir_is_one_line_exit_2(tmp_path):
    (tmp_path / "tb").write_text("a file where a folder should be")
    proc = _run([sys.executable, str(TRAIN), "--config-name", "gpt_pretrain", *QUICK[:-4],
                 f"logging.tensorboard_dir={tmp_path}/tb/run", "checkpoint.dir=null"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _last_line(proc.stderr).startswith(f"error: {tmp_path}/tb"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_cfg_with_flash_on_a_cpu_says_it_cannot_run(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present: flash may run here")
    proc = _run([sys.executable, str(TRAIN), "--config-name", "gpt_pretrain", "model.attention_backend=flash",
                 "--cfg"], tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert _last_line(proc.stderr).startswith("error: attention_backend=flash cannot run the GPT attention layers")
    assert "attention_backend: flash" in proc.stdout  # the config itself is valid and printed


def test_launcher_mode_checks_the_batch_before_starting_workers(tmp_path):
    proc = _run([sys.executable, str(TRAIN), "--nproc-per-node=2", "--config-name", "gpt_pretrain", *QUICK,
                 "train.global_batch_size=8", "train.micro_batch_size=8"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _last_line(proc.stderr) == ("error: train.global_batch_size=8 is not a multiple of train.micro_batch_size=8 "
                                       "× data-parallel size 2 = 16; use a multiple of 16")
    assert "OMP_NUM_THREADS" not in proc.stderr  # no worker was started (torch's launcher warns when it starts)


@pytest.mark.slow
def test_launcher_mode_ends_with_the_workers_one_line_and_exit_2(tmp_path):
    proc = _run([sys.executable, str(TRAIN), "--nproc-per-node=2", "--config-name", "gpt_pretrain", *QUICK,
                 f"data.paths=[{tmp_path}/nowhere/docs]"], tmp_path)  # found by the workers, not the launcher
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _last_line(proc.stderr)
    assert line.startswith(f"error: indexed dataset '{tmp_path}/nowhere/docs' is incomplete"), proc.stderr[-3000:]
    assert proc.stderr.count(line) == 1  # once, not once per rank
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_torchrun_prints_the_line_once_and_its_report_has_one_failure(tmp_path):
    """Plain torchrun always ends a failed launch with its own report and status 1 (README, Errors and data safety);
    what bridge controls: the line once, the report's single failure is it with status 2, no SIGTERMed rank."""
    line = "error: unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
                 str(TRAIN), "--config-name", "gpt_pretrain", *QUICK, "model.num_layer=2"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines().count(line) == 1, proc.stderr[-3000:]
    assert f"traceback : {line}" in proc.stderr and "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]
    assert "<NO_OTHER_FAILURES>" in proc.stderr and "SIGTERM" not in proc.stderr, proc.stderr[-3000:]
    assert "message format" not in proc.stderr
