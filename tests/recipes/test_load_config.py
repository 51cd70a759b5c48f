"""The recipes from Python: load_config / compose_config / build_run_config, and a config folder of your own."""

from __future__ import annotations

import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from bridge.models import GPTModelProvider, T5ModelProvider, register_preset
from bridge.models import presets as model_presets
from bridge.recipes import ConfigError, RunConfig, build_run_config, compose_config, load_config
from bridge.recipes.cli import parse_args, run_to_yaml


def test_load_config_returns_built_objects():
    run = load_config("t5_pretrain", overrides=["model.encoder_num_layers=1", "train.train_steps=7"])
    assert isinstance(run, RunConfig) and isinstance(run.model, T5ModelProvider)
    assert run.model.resolved_encoder_layers == 1 and run.train.train_steps == 7
    model = run.model.provide()
    assert sum(p.numel() for p in model.parameters()) > 0


def test_build_run_config_from_a_hand_made_config():
    cfg = OmegaConf.structured(RunConfig)
    cfg.family = "gpt"
    cfg.model = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "seq_length": 64}
    run = build_run_config(cfg)
    assert isinstance(run.model, GPTModelProvider) and run.model.vocab_size == 359
    cfg.model.num_layerz = 3
    with pytest.raises(ConfigError, match=r"unknown config key 'model.num_layerz'; did you mean 'model.num_layers'\?"):
        build_run_config(cfg)


def test_build_run_config_does_not_change_its_input():
    cfg = compose_config("t5_pretrain", ["model.decoder_seq_length=null"])
    build_run_config(cfg)
    assert cfg.model.decoder_seq_length is None


def test_missing_family_and_model_are_errors():
    cfg = OmegaConf.structured(RunConfig)
    with pytest.raises(ConfigError, match="family is not set; use one of: gpt, t5"):
        build_run_config(cfg)
    cfg.family = "gpt"
    with pytest.raises(ConfigError, match="model is not set; pick a preset with model=<name>"):
        build_run_config(cfg)


def test_preset_registered_later_is_a_model_choice():
    name = "gpt_recipes_test_preset"
    if name not in model_presets.list_presets():
        register_preset(name, GPTModelProvider, "test preset", num_layers=1, hidden_size=64,
                        num_attention_heads=2, seq_length=32)
    run = load_config("gpt_pretrain", [f"model={name}"])
    assert (run.model.num_layers, run.model.hidden_size, run.model.seq_length) == (1, 64, 32)


def test_user_config_dir_with_own_recipe_and_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_plain.yaml").write_text(textwrap.dedent("""\
        # a model without a preset behind it: plain fields, checked by the provider
        num_layers: 2
        hidden_size: 64
        num_attention_heads: 2
        seq_length: 64
        """))
    (tmp_path / "mine.yaml").write_text(textwrap.dedent("""\
        defaults:
          - gpt_pretrain
          - override model: my_plain
          - _self_
        name: mine
        train:
          train_steps: 20
        """))
    run = load_config("mine", config_dir=tmp_path)
    assert (run.name, run.model.hidden_size, run.model.seq_length, run.train.train_steps) == ("mine", 64, 64, 20)
    assert run.checkpoint.dir == "outputs/mine/checkpoints"
    (tmp_path / "model" / "my_typo.yaml").write_text("num_layers: 2\nhiden_size: 64\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.hiden_size'; did you mean 'model.hidden_size'\?"):
        load_config("gpt_pretrain", ["model=my_typo"], config_dir=tmp_path)


def test_missing_config_dir_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("gpt_pretrain", config_dir=tmp_path / "nope")


def test_command_line_parsing():
    args = parse_args(["--config-name", "t5_pretrain", "model=t5_small", "train.train_steps=3", "--cfg"])
    assert (args.config_name, args.overrides, args.cfg) == ("t5_pretrain", ["model=t5_small", "train.train_steps=3"], True)
    args = parse_args(["-cn", "gpt_finetune", "-cd", "/tmp/x"])
    assert (args.config_name, args.config_dir, args.overrides, args.cfg) == ("gpt_finetune", "/tmp/x", [], False)
    assert parse_args([]).config_name == "gpt_pretrain"


def test_printed_run_round_trips_through_the_schema():
    run = load_config("gpt_pretrain", ["model.attention_backend=flash_attn"])
    text = run_to_yaml(run)
    again = OmegaConf.create(text)
    assert again.model.attention_backend == "flash" and again.model.vocab_size == 359
    assert again.train.precision == run.train.precision.value


def test_recipe_runs_on_the_gpu_in_bf16_when_there_is_one():
    run = load_config("gpt_pretrain")
    assert run.model.dtype == ("bf16" if torch.cuda.is_available() else "fp32")


def test_load_config_inside_an_app_that_initialised_hydra():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bridge.recipes import default_config_dir

    with initialize_config_dir(str(default_config_dir()), version_base=None):
        assert load_config("gpt_pretrain", ["train.train_steps=3"]).train.train_steps == 3
        assert GlobalHydra.instance().is_initialized()
        assert compose("gpt_pretrain").name == "gpt_pretrain"  # the app's Hydra still works
    assert not GlobalHydra.instance().is_initialized()
