"""Tensor, sequence and pipeline (virtual stages) parallelism on the CPU: one 2-process gloo run takes a few
SGD steps of a tiny GPT / T5 at each layout from the same weights (the 1-way model's initial weights, saved
as a megatron-core distributed checkpoint and resharded on load) and compares the losses.
What runs: bridge's specs and norms, megatron-core's tensor / sequence-parallel layers and gradient sums,
bridge's pipeline step (megatron-core's interleaved schedule, p2p over gloo), model chunks and their
checkpoint loading. See parallel_layout_child.py for the CPU stand-ins of megatron-core's CUDA allocations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bridge.distributed import free_port
from test_checkpoints import child_env

HERE = os.path.dirname(os.path.abspath(__file__))
LAYOUTS = "gpt:1,gpt:2,gpt:2sp,gpt:2sp-noreduce,gpt:pp2vp2,gpt:pp2vp1,t5:1,t5:2sp"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("layouts")
    out = folder / "losses.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           os.path.join(HERE, "parallel_layout_child.py"), "--layouts", LAYOUTS, "--dir", str(folder),
           "--out", str(out)]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=600, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_tensor_and_sequence_parallel_follow_the_one_way_losses(runs):
    reference = runs["gpt:1"]["losses"]
    assert len(reference) == 3
    for layout in ("gpt:2", "gpt:2sp"):
        assert runs[layout]["losses"] == pytest.approx(reference, abs=1e-4), (layout, runs)
    assert runs["t5:2sp"]["losses"] == pytest.approx(runs["t5:1"]["losses"], abs=1e-4), runs
    marked = runs["gpt:2sp"]["sequence_parallel_params"]  # every norm weight and bias, and megatron's own marks
    assert {"decoder.final_layernorm.weight", "decoder.layers.1.input_layernorm.weight",
            "decoder.layers.1.pre_mlp_layernorm.bias", "decoder.layers.0.self_attention.linear_proj.bias"} <= set(marked)
    assert runs["gpt:2"]["sequence_parallel_params"] == []
    # without the tensor-parallel sum of those gradients the run leaves the reference after the first step
    assert abs(runs["gpt:2sp-noreduce"]["losses"][2] - reference[2]) > 1e-3, runs


@pytest.mark.slow
def test_virtual_pipeline_chunks_hold_interleaved_layers_and_follow_the_one_way_losses(runs):
    reference = runs["gpt:1"]["losses"]
    for layout in ("gpt:pp2vp2", "gpt:pp2vp1"):
        assert runs[layout]["losses"] == pytest.approx(reference, abs=1e-4), (layout, runs)
    # 4 layers over 2 ranks × 2 virtual stages: rank 0 holds layers 1 and 3, rank 1 layers 2 and 4; the
    # embedding is in rank 0's first chunk, the output layer in rank 1's last
    assert runs["gpt:pp2vp2"]["layers"] == [[[1], [3]], [[2], [4]]]
    assert runs["gpt:pp2vp2"]["ends"] == [[[True, False], [False, False]], [[False, False], [False, True]]]
    assert runs["gpt:pp2vp1"]["layers"] == [[[1, 2]], [[3, 4]]]
