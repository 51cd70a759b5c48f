"""``torchrun --nproc-per-node=2`` on the CPU (gloo, data parallel): GPT and T5 train and the loss falls."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_checkpoints import child_env
from bridge.distributed import free_port

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_two_process_data_parallel_training(family, data_cache, tmp_path):
    out = str(tmp_path / "result.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           os.path.join(HERE, "train_tiny.py"), "--family", family, "--steps", "6", "--micro", "2",
           "--global-batch", "8", "--cache-dir", data_cache, "--ckpt-dir", str(tmp_path / "ckpt"), "--out", out]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.load(open(out))
    assert result["world_size"] == 2
    assert "global batch 8 = 2 × 2 × 2" in proc.stdout + proc.stderr  # accumulation 2, data parallel 2
    losses = result["losses"]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.3, losses
    assert os.path.isfile(os.path.join(result["checkpoint"], "metadata.json"))
