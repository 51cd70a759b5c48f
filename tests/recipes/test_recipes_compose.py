"""Every YAML under conf/ composes against the schema and validates; the tiny ones build and run a forward."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bridge.models import GPTModelProvider, T5ModelProvider
from bridge.recipes import RunConfig, compose_config, default_config_dir, list_recipes, load_config
from bridge.models import family_of_provider
from bridge.training import CheckpointConfig, OptimizerConfig, TrainingConfig

CONF = default_config_dir()
RECIPES = list_recipes()
MODEL_FILES = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def test_recipe_list_covers_every_yaml_outside_model_group():
    on_disk = sorted(p.relative_to(CONF).with_suffix("").as_posix() for p in CONF.rglob("*.yaml")
                     if not p.relative_to(CONF).as_posix().startswith("model/"))
    assert RECIPES == on_disk
    for name in ("base", "gpt_pretrain", "gpt_finetune", "t5_pretrain", "t5_finetune",
                 "legacy/nemo1_gpt", "legacy/nemo1_t5"):
        assert name in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_and_validates(name):
    run = load_config(name)
    assert isinstance(run, RunConfig)
    assert run.family in ("gpt", "t5")
    assert isinstance(run.model, {"gpt": GPTModelProvider, "t5": T5ModelProvider}[run.family])
    assert isinstance(run.optimizer, OptimizerConfig) and isinstance(run.train, TrainingConfig)
    assert isinstance(run.checkpoint, CheckpointConfig)
    assert run.model.vocab_size == 359  # the byte tokenizer's vocabulary, filled in by the recipe
    assert not hasattr(run.data, "seq_length")  # the model owns the sample lengths


@pytest.mark.parametrize("name", RECIPES)
def test_tiny_recipe_builds_and_runs_forward(name):
    run = load_config(name, [] if name.startswith("legacy/") else ["model.attention_backend=local"])
    if run.model.hidden_size > 256:
        pytest.skip("not a tiny model")
    model = run.model.provide()
    b, s = 2, 16
    tokens = torch.randint(0, run.model.vocab_size, (b, s))
    if run.family == "gpt":
        loss = model(tokens, torch.arange(s).expand(b, s), None, labels=tokens)
    else:
        valid = torch.ones(b, s, dtype=torch.bool)
        mask = ~valid[:, None, None, :]
        loss = model(tokens, tokens, mask, mask, mask, lm_labels=tokens)
    assert loss.shape == (b, s) and torch.isfinite(loss).all()


@pytest.mark.parametrize("model_name", MODEL_FILES)
def test_user_model_yaml_composes(model_name):
    cfg = compose_config("gpt_pretrain", [f"model={model_name}"])
    family = family_of_provider(OmegaConf.get_type(cfg.model)).name
    run = load_config(f"{family}_pretrain", [f"model={model_name}"])
    assert run.family == family


def test_example_user_model_changes_only_its_fields():
    run = load_config("gpt_pretrain", ["model=gpt_tiny_gqa"])
    tiny = load_config("gpt_pretrain")
    assert run.model.num_query_groups == 2 and tiny.model.num_query_groups is None
    assert run.model.hidden_size == tiny.model.hidden_size


@pytest.mark.parametrize("preset", ["gpt_126m", "gpt_1p3b", "llama_1b", "t5_base", "t5_small"])
def test_every_preset_is_a_model_choice(preset):
    family = "t5" if preset.startswith("t5") else "gpt"
    run = load_config(f"{family}_pretrain", [f"model={preset}"])
    from bridge.models import get_preset

    expected = get_preset(preset, vocab_size=359)
    for field in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "seq_length"):
        assert getattr(run.model, field) == getattr(expected, field), field


def test_named_recipes_build_on_base():
    base = load_config("base")
    pre, fine = load_config("gpt_pretrain"), load_config("gpt_finetune")
    assert pre.optimizer == base.optimizer and pre.train == base.train
    assert fine.data.kind.value == "finetune" and fine.data.packed and not pre.data.packed
    assert fine.checkpoint.pretrained_checkpoint == pre.checkpoint.dir
    t5_fine = load_config("t5_finetune")
    assert t5_fine.checkpoint.pretrained_checkpoint == load_config("t5_pretrain").checkpoint.dir


def test_every_value_in_the_recipes_is_commented():
    """House rule: each user-facing key a recipe sets carries a comment saying what it does or why."""
    import re

    for path in [*CONF.glob("*.yaml"), *(CONF / "model").glob("*.yaml")]:
        text = path.read_text()
        assert text.lstrip().startswith("#"), f"{path.name} has no header comment"
        for number, line in enumerate(text.splitlines(), 1):
            if re.match(r"^\s*[A-Za-z_]+: [^#]+$", line):
                raise AssertionError(f"{path.name}:{number} sets a value without a comment: {line.strip()}")


def test_cpu_default_is_fp32_and_gpu_default_bf16(monkeypatch):
    assert load_config("gpt_pretrain", ["train.device=cpu"]).model.dtype == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    run = load_config("gpt_pretrain")
    assert run.model.dtype == "bf16" and run.train.precision.value == "bf16"
