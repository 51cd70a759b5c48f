"""Tensor / pipeline parallel sizes on the CPU: one clear error line (both need CUDA GPUs), through
``scripts/train.py`` (exit status 2, one ``error:`` line) and through ``init_distributed``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runs import tiny_run
from test_checkpoints import child_env
from bridge.distributed import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")


def _error_lines(stderr: str):
    """scripts/train.py's own error lines (torchrun adds its summary of the failed child after them)."""
    return [line for line in stderr.splitlines() if line.startswith("error:") or line.startswith("[rank")]


@pytest.mark.parametrize("nproc", [1, 2])
def test_pipeline_parallel_on_cpu_is_one_error_line(nproc, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           TRAIN, "--config-name", "gpt_pretrain", "train.device=cpu", "model.pipeline_model_parallel_size=2",
           "logging.progress_bar=false", "logging.tensorboard_dir=null", f"checkpoint.dir={tmp_path / 'ckpt'}"]
    proc = subprocess.run(cmd, env={**child_env(), "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    errors = _error_lines(proc.stderr)
    assert errors == ["error: model.pipeline_model_parallel_size=2 needs CUDA GPUs (megatron-core's pipeline "
                      "schedules and p2p communication allocate on CUDA); use model.pipeline_model_parallel_size=1 "
                      "and data parallel on the CPU"], proc.stderr[-3000:]
    assert not (tmp_path / "ckpt").exists()  # refused before anything was built


def test_plain_python_pipeline_on_cpu_exits_with_config_status(tmp_path):
    cmd = [sys.executable, TRAIN, "--config-name", "gpt_pretrain", "train.device=cpu",
           "model.pipeline_model_parallel_size=4", "logging.tensorboard_dir=null", "checkpoint.dir=null"]
    proc = subprocess.run(cmd, env={**child_env(), "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and "pipeline_model_parallel_size=4 needs CUDA GPUs" in errors[0], proc.stderr[-3000:]


@pytest.mark.parametrize("field, message", [
    ("tensor_model_parallel_size", "model.tensor_model_parallel_size=2 needs CUDA GPUs"),
    ("pipeline_model_parallel_size", "model.pipeline_model_parallel_size=2 needs CUDA GPUs"),
])
def test_init_distributed_refuses_model_parallel_on_cpu(field, message, data_cache):
    from bridge.training import init_distributed

    run = tiny_run("gpt", cache_dir=data_cache)
    setattr(run.model, field, 2)
    with pytest.raises(ValueError, match=message):
        init_distributed(run)


def _train_on_gpus(tmp_path, nproc: int, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           TRAIN, "--config-name", "gpt_pretrain", "train.train_steps=20", "scheduler.warmup_steps=2",
           "train.micro_batch_size=4", "train.global_batch_size=8", "train.log_interval=5",
           "logging.progress_bar=false", "logging.tensorboard_dir=null", "model.attention_backend=fused",
           *overrides]
    proc = subprocess.run(cmd, env={**child_env(), "PYTHONWARNINGS": "ignore", "NCCL_NVLS_ENABLE": "0"},
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _logged_losses(text: str):
    import re

    return {int(s): float(v) for s, v in re.findall(r"^step (\d+)/\d+ \| loss ([0-9.]+)", text, flags=re.M)}


two_gpus = pytest.mark.skipif(not __import__("torch").cuda.device_count() >= 2, reason="needs 2 CUDA GPUs")


@pytest.mark.gpu
@two_gpus
def test_tensor_parallel_two_gpus_trains(tmp_path):
    proc = _train_on_gpus(tmp_path, 2, "model.tensor_model_parallel_size=2", f"checkpoint.dir={tmp_path / 'ckpt'}")
    losses = _logged_losses(proc.stdout)
    assert losses[20] < losses[5] - 0.3, losses
    assert "tensor parallel 2" in proc.stdout and "sample: " in proc.stdout


@pytest.mark.gpu
@two_gpus
def test_sequence_parallel_two_gpus_follows_tensor_parallel(tmp_path):
    """TP=2 with sequence parallelism (bridge's torch norms) starts from the same weights as TP=2 without it
    and follows its losses within bf16 noise; the end-of-run sample (prompt filled up to the split) runs."""
    plain = _logged_losses(_train_on_gpus(tmp_path, 2, "model.tensor_model_parallel_size=2", "checkpoint.dir=null").stdout)
    proc = _train_on_gpus(tmp_path, 2, "model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                          "checkpoint.dir=null")
    split = _logged_losses(proc.stdout)
    assert sorted(split) == sorted(plain) == [5, 10, 15, 20]
    for step in split:
        assert abs(split[step] - plain[step]) < 0.05, (split, plain)
    assert "sample: " in proc.stdout


@pytest.mark.gpu
@two_gpus
def test_pipeline_parallel_two_gpus_trains_and_resumes(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = _train_on_gpus(tmp_path, 2, "model.pipeline_model_parallel_size=2", f"checkpoint.dir={ckpt}",
                          "checkpoint.save_interval=10", "checkpoint.keep_last=0")
    losses = _logged_losses(proc.stdout)
    assert losses[20] < losses[5] - 0.3, losses
    assert "pipeline parallel 2" in proc.stdout and "sample: " not in proc.stdout
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    os.symlink(ckpt / "step_0000010", resumed_dir / "step_0000010")
    (resumed_dir / "latest").write_text("step_0000010\n")
    resumed = _logged_losses(_train_on_gpus(tmp_path, 2, "model.pipeline_model_parallel_size=2",
                                            f"checkpoint.dir={resumed_dir}", "checkpoint.resume=true").stdout)
    assert sorted(resumed) == [15, 20]
    for step in (15, 20):  # same weights, optimizer state, data position: the same losses (bf16 noise aside)
        assert abs(resumed[step] - losses[step]) < 0.05, (resumed, losses)


def _resume_from(tmp_path, ckpt, step: int, name: str, nproc: int, *layout: str) -> dict:
    """Losses of a run resumed from ``ckpt``'s step ``step`` (a copy whose ``latest`` names it) at ``layout``."""
    resumed_dir = tmp_path / name
    resumed_dir.mkdir()
    os.symlink(ckpt / f"step_{step:07d}", resumed_dir / f"step_{step:07d}")
    (resumed_dir / "latest").write_text(f"step_{step:07d}\n")
    return _logged_losses(_train_on_gpus(tmp_path, nproc, *layout, f"checkpoint.dir={resumed_dir}",
                                         "checkpoint.resume=true", "train.eval_steps=2").stdout)


@pytest.mark.gpu
@two_gpus
def test_virtual_pipeline_two_gpus_trains_resumes_and_reshards(tmp_path):
    """PP=2 × VP=2 (4 layers: one per virtual stage, interleaved schedule) trains; its step-10 checkpoint
    resumes at the same layout, at TP=2 and at data parallel 2, and each continues the run's losses."""
    ckpt = tmp_path / "ckpt"
    # the vocabulary is padded to a multiple of make_vocab_size_divisible_by × TP: 256 × 1 and 128 × 2 give the
    # same rows, so the embedding reshards
    vp = ("model.pipeline_model_parallel_size=2", "model.virtual_pipeline_model_parallel_size=2",
          "model.make_vocab_size_divisible_by=256")
    proc = _train_on_gpus(tmp_path, 2, *vp, f"checkpoint.dir={ckpt}", "checkpoint.save_interval=10",
                          "checkpoint.keep_last=0", "train.eval_steps=2")
    losses = _logged_losses(proc.stdout)
    assert losses[20] < losses[5] - 0.3, losses
    tp2 = ("model.tensor_model_parallel_size=2", "model.make_vocab_size_divisible_by=128")
    for name, layout in (("same", vp), ("tp2", tp2), ("dp2", ("model.make_vocab_size_divisible_by=256",))):
        resumed = _resume_from(tmp_path, ckpt, 10, name, 2, *layout)
        assert sorted(resumed) == [15, 20], (name, resumed)
        for step in (15, 20):  # same weights, optimizer state and data position; TP=2 sums in another order
            assert abs(resumed[step] - losses[step]) < (0.05 if name == "same" else 0.1), (name, resumed, losses)
