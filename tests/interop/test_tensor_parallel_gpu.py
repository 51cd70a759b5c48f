"""Import with tensor parallelism 2 (each rank keeps its shard of every fused tensor) matches transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.interop.conftest import CAUSAL_LM_BUILDERS, save_hf_model

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama_gqa", "gpt2_untied"])
def test_tensor_parallel_import_matches_transformers(name, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    directory = save_hf_model(CAUSAL_LM_BUILDERS[name], tmp_path / name)
    out = tmp_path / "logits.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
           str(REPO / "tests" / "interop" / "tensor_parallel_logits.py"), directory, str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = hf(saved["ids"]).logits
    torch.testing.assert_close(saved["logits"][..., : reference.shape[-1]], reference, rtol=1e-4, atol=1e-4)
