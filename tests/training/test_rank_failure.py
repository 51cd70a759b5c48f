"""A worker killed mid-run (2 CPU processes, launcher mode): the job stops within a minute with one line naming
the worker, the signal and the checkpoint to resume from; that checkpoint resumes in one process (data
parallel 2 -> 1, the same global batch) and the loss continues where the killed run left it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from test_checkpoints import child_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")
sys.path.insert(0, os.path.join(REPO, "scripts"))
from bench_scaling import worker_pid  # noqa: E402  (scripts/bench_scaling.py: its kill suite does the same)


def _losses(text: str) -> dict:
    return {int(s): float(v) for s, v in re.findall(r"^step (\d+)/\d+ \| loss ([0-9.]+)", text, flags=re.M)}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_killed_worker_stops_the_job_with_one_line_and_its_checkpoint_resumes(data_cache, tmp_path):
    ckpt = tmp_path / "ckpt"
    common = ["--config-name", "gpt_pretrain", "train.device=cpu", "model.num_layers=2", "model.seq_length=64",
              "train.micro_batch_size=4", "train.global_batch_size=8", "train.log_interval=1",
              "train.eval_steps=1", "train.generate_sample=false", "scheduler.warmup_steps=2",
              "logging.progress_bar=false", "logging.tensorboard_dir=null", f"data.cache_dir={data_cache}",
              f"checkpoint.dir={ckpt}", "checkpoint.keep_last=0"]
    launcher = subprocess.Popen(
        [sys.executable, TRAIN, "--nproc-per-node=2", *common, "train.train_steps=500", "checkpoint.save_interval=2"],
        env={**child_env(), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path)
    try:
        deadline = time.time() + 240
        while not (ckpt / "latest").exists() and launcher.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert (ckpt / "latest").exists(), "no checkpoint before the deadline"
        victim = worker_pid(launcher.pid, 1)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        out, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert time.time() - killed_at < 90
    assert launcher.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    saved = (ckpt / "latest").read_text().strip()
    assert re.fullmatch(rf"error: worker rank 1 \(pid {victim}\) was killed by SIGKILL; the other workers were "
                        rf"stopped; the last complete checkpoint is .*step_\d+: continue with checkpoint.resume=true",
                        last), err[-3000:]
    assert "Traceback" not in err
    step = int(last.rsplit("step_", 1)[1].split(":")[0])
    before = _losses(out)

    resumed = subprocess.run([sys.executable, TRAIN, *common, f"train.train_steps={step + 2}", "checkpoint.resume=true"],
                             env=child_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _losses(resumed.stdout)
    assert sorted(after) == [step + 1, step + 2], (saved, resumed.stdout[-2000:])
    assert "1 process(es) (data parallel 1" in resumed.stdout
    # the loss goes on from where it was (the killed run's later steps, if logged, are the same batches)
    reference = before.get(step + 1, before[step])
    assert abs(after[step + 1] - reference) < 0.3, (before, after)
