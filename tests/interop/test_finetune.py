"""Import -> train a few steps (``checkpoint.pretrained_checkpoint=hf:<dir>``) -> export, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bridge.interop.hf import HFConversionError
from tests.interop.conftest import CAUSAL_LM_BUILDERS, _gpt2, save_hf_model

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import convert  # noqa: E402  (scripts/convert.py)


def _checkpoint_model(checkpoint):
    from bridge.training import load_run_config, load_weights
    from bridge.training.snapshot import provider_from_snapshot

    provider = provider_from_snapshot(load_run_config(checkpoint), attention_backend="local")
    model = provider.provide().eval()
    load_weights(checkpoint, model)
    return provider, model


def _logits_both_ways(family, exported_dir, checkpoint):
    """(transformers' logits of the exported directory, our logits of the checkpoint) on the same inputs."""
    provider, model = _checkpoint_model(checkpoint)
    g = torch.Generator().manual_seed(0)
    if family == "gpt":
        hf = transformers.AutoModelForCausalLM.from_pretrained(exported_dir, dtype=torch.float32).eval()
        ids = torch.randint(0, 359, (2, 16), generator=g)
        with torch.no_grad():
            ours = model(ids, torch.arange(16).unsqueeze(0).expand_as(ids), None)[..., : provider.vocab_size]
            return hf(ids).logits, ours
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(exported_dir, dtype=torch.float32).eval()
    enc, dec = torch.randint(0, 359, (2, 12), generator=g), torch.randint(0, 359, (2, 8), generator=g)
    none_blocked = torch.zeros(2, 1, 1, 12, dtype=torch.bool)
    with torch.no_grad():
        ours = model(enc, dec, none_blocked, torch.zeros(2, 1, 1, 8, dtype=torch.bool), none_blocked)
        return hf(input_ids=enc, decoder_input_ids=dec).logits, ours


@pytest.mark.parametrize("family, name", [("gpt", "gpt2"), ("gpt", "llama_gqa"), ("t5", "t5_relu_scaled")])
def test_finetune_from_hf_dir_then_export(family, name, tmp_path, data_cache):
    from bridge.training import CheckpointConfig, train
    from tests.interop.conftest import T5_BUILDERS
    from tests.training.runs import tiny_run

    hf_dir = save_hf_model({**CAUSAL_LM_BUILDERS, **T5_BUILDERS}[name], tmp_path / "hf")
    run = tiny_run(family, steps=4, cache_dir=data_cache, data_kind="finetune" if family == "gpt" else "pretrain",
                   task_accuracy_examples=0, model_overrides=dict(attention_backend="local"))
    run.checkpoint = CheckpointConfig(dir=str(tmp_path / "ckpt"), pretrained_checkpoint=f"hf:{hf_dir}")
    result = train(run)
    assert run.model.num_layers == 2 and run.model.hidden_size == 64  # the directory's architecture
    assert all(torch.isfinite(torch.tensor(result.losses)))

    out = str(tmp_path / "exported")
    assert convert.main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--hf-dir", out, "--no-progress"]) == 0
    theirs, ours = _logits_both_ways(family, out, str(tmp_path / "ckpt"))
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
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


def _save_tokenizer(directory) -> int:
    """A small byte-level BPE tokenizer trained here (no download), saved as transformers saves one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["reverse the letters of: abc\ncba", "the quick brown fox jumps"] * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(str(directory))
    return len(fast)


def test_finetune_with_the_directory_tokenizer_exports_it(tmp_path, data_cache):
    from bridge.data import TokenizerConfig
    from bridge.training import CheckpointConfig, train
    from tests.training.runs import tiny_run

    hf_dir = tmp_path / "hf"
    vocab = _save_tokenizer(hf_dir)
    save_hf_model(lambda: _gpt2(vocab_size=vocab), hf_dir)
    run = tiny_run("gpt", steps=3, cache_dir=data_cache, data_kind="finetune", task_accuracy_examples=0,
                   model_overrides=dict(attention_backend="local"))
    run.tokenizer = TokenizerConfig(type="huggingface", path=str(hf_dir / "tokenizer.json"))
    run.checkpoint = CheckpointConfig(dir=str(tmp_path / "ckpt"), pretrained_checkpoint=f"hf:{hf_dir}")
    train(run)
    assert run.model.vocab_size == vocab + 100  # bridge's tokenizer appends 100 sentinels: zero rows for them

    out = tmp_path / "exported"
    assert convert.main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--hf-dir", str(out)]) == 0
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("the fox")["input_ids"] == transformers.AutoTokenizer.from_pretrained(str(hf_dir))("the fox")["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == vocab + 100


def test_imported_checkpoint_generates_with_the_directory_tokenizer(tmp_path, capsys):
    import generate  # scripts/generate.py

    hf_dir = tmp_path / "hf"
    vocab = _save_tokenizer(hf_dir)
    save_hf_model(lambda: _gpt2(vocab_size=vocab), hf_dir)  # the exact vocabulary, no room for sentinels
    ckpt = str(tmp_path / "ckpt")
    assert convert.main(["import", "--hf-dir", str(hf_dir), "--output", ckpt, "--no-progress"]) == 0
    assert os.path.isfile(os.path.join(ckpt, "tokenizer", "tokenizer.json"))
    capsys.readouterr()
    assert generate.main(["--checkpoint", ckpt, "--prompt", "the", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("the")
