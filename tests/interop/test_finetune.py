"""Import -> train a few steps (``checkpoint.pretrained_checkpoint=hf:<dir>``) -> export, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bridge.interop.hf import HFConversionError
from tests.interop.conftest import CAUSAL_LM_BUILDERS, save_hf_model

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import convert  # noqa: E402  (scripts/convert.py)


def _checkpoint_logits(checkpoint, ids):
    from bridge.training import load_run_config, load_weights
    from bridge.training.snapshot import provider_from_snapshot

    provider = provider_from_snapshot(load_run_config(checkpoint), attention_backend="local")
    model = provider.provide().eval()
    load_weights(checkpoint, model)
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        return model(ids, positions, None)[..., : provider.vocab_size]


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_finetune_from_hf_dir_then_export(name, tmp_path, data_cache):
    from bridge.training import CheckpointConfig, train
    from tests.training.runs import tiny_run

    hf_dir = save_hf_model(CAUSAL_LM_BUILDERS[name], tmp_path / "hf")
    run = tiny_run("gpt", steps=4, cache_dir=data_cache, data_kind="finetune", task_accuracy_examples=0,
                   model_overrides=dict(attention_backend="local"))
    run.checkpoint = CheckpointConfig(dir=str(tmp_path / "ckpt"), pretrained_checkpoint=f"hf:{hf_dir}")
    result = train(run)
    assert run.model.num_query_groups == (2 if name == "llama_gqa" else None)  # the directory's architecture
    assert all(torch.isfinite(torch.tensor(result.losses)))

    out = str(tmp_path / "exported")
    assert convert.main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--hf-dir", out, "--no-progress"]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, 359, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = exported(ids).logits
    torch.testing.assert_close(theirs, _checkpoint_logits(str(tmp_path / "ckpt"), ids), rtol=1e-5, atol=1e-5)
    before = safetensors_torch.load_file(os.path.join(hf_dir, "model.safetensors"))
    after = safetensors_torch.load_file(os.path.join(out, "model.safetensors"))
    assert sorted(before) == sorted(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # training changed the weights


def test_hf_reference_errors(tmp_path, data_cache):
    from bridge.interop.hf.finetune import adopt_hf_architecture
    from bridge.training import CheckpointConfig
    from tests.training.runs import tiny_run

    from bridge.data.tokenizers import ByteTokenizer

    run, tokenizer = tiny_run("gpt", cache_dir=data_cache), ByteTokenizer()
    run.checkpoint = CheckpointConfig(pretrained_checkpoint="hf:")
    with pytest.raises(HFConversionError, match="needs a directory"):
        adopt_hf_architecture(run, tokenizer)
    run.checkpoint = CheckpointConfig(pretrained_checkpoint=f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(HFConversionError, match="is not a directory"):
        adopt_hf_architecture(run, tokenizer)
    hf_dir = save_hf_model(lambda: CAUSAL_LM_BUILDERS["gpt2"](), tmp_path / "short")
    run.model.seq_length = 128  # longer than its 64 learned positions
    run.checkpoint = CheckpointConfig(pretrained_checkpoint=f"hf:{hf_dir}")
    with pytest.raises(HFConversionError, match="model.seq_length=128 is longer than .* 64 learned positions"):
        adopt_hf_architecture(run, tokenizer)
    run.model.seq_length = 32
    adopt_hf_architecture(run, tokenizer)
    assert (run.model.seq_length, run.model.max_position_embeddings) == (32, 64)  # samples of 32, 64 positions


def test_convert_import_then_export_is_bit_identical(tmp_path, capsys):
    hf_dir = save_hf_model(CAUSAL_LM_BUILDERS["llama_gqa"], tmp_path / "hf")
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "back")
    assert convert.main(["import", "--hf-dir", hf_dir, "--output", ckpt, "--no-progress"]) == 0
    assert convert.main(["export", "--checkpoint", ckpt, "--hf-dir", out, "--no-progress"]) == 0
    before = safetensors_torch.load_file(os.path.join(hf_dir, "model.safetensors"))
    after = safetensors_torch.load_file(os.path.join(out, "model.safetensors"))
    assert sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before)

    assert convert.main(["import", "--hf-dir", hf_dir, "--output", ckpt, "--no-progress"]) == 2  # not empty
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_recipe_starts_from_hf_dir(tmp_path):
    hf_dir = save_hf_model(CAUSAL_LM_BUILDERS["gpt2"], tmp_path / "hf")
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--config-name", "gpt_finetune",
           f"checkpoint.pretrained_checkpoint=hf:{hf_dir}", f"checkpoint.dir={tmp_path / 'ckpt'}",
           "model.seq_length=64", "train.train_steps=3", "scheduler.warmup_steps=1", "train.eval_interval=0",
           "train.eval_steps=1", "train.micro_batch_size=4", "train.global_batch_size=4",
           "train.task_accuracy_examples=0", "train.generate_sample=false", "train.device=cpu",
           "logging.progress_bar=false", "logging.tensorboard_dir=null", "model.attention_backend=local"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert f"loaded pretrained weights from {hf_dir}" in proc.stderr
    assert "model: gpt 0." in proc.stdout  # the directory's 2-layer, 64-wide GPT-2, not the recipe's preset
