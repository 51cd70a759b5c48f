"""Bad input: one readable line naming the problem (and the closest valid key), a non-zero exit from
scripts/train.py, never a Hydra traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.recipes import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "scripts" / "train.py"


@pytest.mark.parametrize("recipe, overrides, message", [
    ("gpt_pretrain", ["model.num_layer=3"], "unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"),
    ("gpt_pretrain", ["data.num_worker=3"], "unknown config key 'data.num_worker'; did you mean 'data.num_workers'?"),
    ("gpt_pretrain", ["train.lr=3"], "unknown config key 'train.lr'; did you mean 'optimizer.lr'?"),
    ("t5_pretrain", ["model.encoder.use_flash_atention=true"],
     "unknown config key 'model.encoder.use_flash_atention'; did you mean 'model.encoder.use_flash_attention'?"),
    ("gpt_pretrain", ["+model.num_layerz=1"], "unknown config key 'model.num_layerz'; did you mean 'model.num_layers'?"),
    ("gpt_pretrain", ["model=gpt_tny"], "model=gpt_tny does not exist; did you mean 'gpt_tiny'?"),
    ("gpt_pretrian", [], "no recipe named 'gpt_pretrian'; did you mean 'gpt_pretrain'?"),
    ("gpt_pretrain", ["model.num_layers=abc"], "model.num_layers='abc' is not valid: Value 'abc' of type 'str' could not be converted to Integer"),
    ("gpt_pretrain", ["model=t5_tiny"], "the model is a T5 model (T5ModelProvider) but this recipe trains family=gpt"),
    ("gpt_pretrain", ["model.num_query_groups=3"], "model: num_query_groups=3 does not divide num_attention_heads=2"),
    ("gpt_pretrain", ["train.global_batch_size=12"], "train.global_batch_size=12 must be a multiple of train.micro_batch_size=8"),
    ("gpt_pretrain", ["family=bert"], "family='bert' is not valid; use one of: gpt, t5"),
    ("gpt_pretrain", ["tokenizer.type=tiktoken"], "tokenizer.type='tiktoken' is not valid"),
])
def test_error_is_one_line_with_the_fix(recipe, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(recipe, overrides)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(message), text


def _train(*args, timeout=120):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("BRIDGE_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("args, message", [
    (["--config-name", "gpt_pretrain", "model.num_layer=3"],
     "error: unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"),
    (["--config-name", "gpt_pretrain", "model.use_flash_attention=true", "model.attention_backend=fused"],
     "error: model: use_flash_attention=True contradicts attention_backend=fused; remove one of them"),
    (["--config-name", "t5_pretrain", "model.decoder.use_flash_attention=false", "model.decoder_attention_backend=flash"],
     "error: model: decoder.use_flash_attention=False contradicts decoder_attention_backend=flash; remove one of them"),
    (["--config-name", "legacy/nemo1_gpt", "+model.megatron_foo=1"],
     "error: NeMo-1 config keys without a bridge translation: model.megatron_foo"),
])
def test_train_script_exits_2_with_one_error_line(args, message):
    proc = _train(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), proc.stderr[-2000:]


def test_train_script_cfg_prints_the_validated_run_without_training():
    proc = _train("--config-name", "t5_pretrain", "model.encoder.use_flash_attention=true", "--cfg")
    assert "family: t5" in proc.stdout and "encoder_attention_backend: flash" in proc.stdout
    assert "vocab_size: 359" in proc.stdout
    assert "encoder.use_flash_attention is deprecated" in proc.stderr
    import torch

    if not torch.cuda.is_available():  # valid, but not on this machine: said, with exit status 2
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
            "error: attention_backend=flash cannot run the T5 encoder attention layers"), proc.stderr[-2000:]


@pytest.mark.parametrize("overrides, message", [
    (["model.dtype=fp64"], "model: dtype='fp64' is not a supported dtype; valid values: fp32, bf16, fp16"),
    (["data.seed=${model.seq_len}"], "data.seed: Interpolation key 'model.seq_len' not found"),
    (["model.seq_length"], "cannot parse override"),
])
def test_other_bad_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config("gpt_pretrain", overrides)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
