"""Override grammar: strings become backends that really reach the built layers, legacy flags for GPT and
T5 (command line and YAML) with one deprecation warning each, and sequence lengths kept consistent."""

from __future__ import annotations

import logging
import textwrap

import pytest
import torch
from bridge.models import family_spec
from bridge.recipes import ConfigError, build_run_config, compose_config, load_config
from tests.recipes.conftest import attention_modules, backends_by_stack


def _deprecations(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "bridge.models" and "deprecated" in r.getMessage()]


# -- backend strings reach the layers ------------------------------------------------------------------------
@pytest.mark.parametrize("spelling, expected", [
    ("flash", "flash"), ("flash_attn", "flash"), ("FLASH", "flash"), ("fused", "fused"), ("fused_attn", "fused"),
    ("local", "local"), ("unfused", "local"), ("auto", "auto"),
])
def test_gpt_backend_string_reaches_built_layers(spelling, expected, build_anywhere):
    run = load_config("gpt_pretrain", [f"model.attention_backend={spelling}"])
    assert backends_by_stack(run.model.provide()) == {"gpt": {expected}}


def test_gpt_local_backend_is_what_the_forward_runs():
    run = load_config("gpt_pretrain", ["model.attention_backend=local", "model.seq_length=32"])
    model = run.model.provide()
    tokens = torch.randint(0, run.model.vocab_size, (2, 32))
    model(tokens, torch.arange(32).expand(2, 32), None, labels=tokens)
    assert {m.last_backend.value for m in attention_modules(model)} == {"local"}


def test_explicit_flash_on_cpu_is_a_clear_error_not_a_silent_switch():
    if torch.cuda.is_available():
        pytest.skip("flash can run here")
    run = load_config("gpt_pretrain", ["model.attention_backend=flash"])
    with pytest.raises(Exception, match="flash"):
        run.model.provide()


def test_t5_per_stack_backends_reach_the_layers(build_anywhere):
    run = load_config("t5_pretrain", ["model.encoder_attention_backend=flash", "model.decoder_attention_backend=fused"])
    assert backends_by_stack(run.model.provide()) == {"encoder": {"flash"}, "decoder": {"fused"}}


def test_t5_model_wide_backend_applies_to_both_stacks(build_anywhere):
    run = load_config("t5_pretrain", ["model.attention_backend=flash_attn"])
    assert backends_by_stack(run.model.provide()) == {"encoder": {"flash"}, "decoder": {"flash"}}


def test_bad_backend_lists_valid_values():
    with pytest.raises(ConfigError, match=r"model: attention_backend='flsh' is not a valid attention backend; valid values: auto, flash"):
        load_config("gpt_pretrain", ["model.attention_backend=flsh"])


# -- legacy flags -----------------------------------------------------------------------------------------------
def test_gpt_legacy_flag_true_selects_flash_with_one_warning(caplog, build_anywhere):
    caplog.set_level(logging.WARNING, logger="bridge.models")
    run = load_config("gpt_pretrain", ["model.use_flash_attention=true"])
    model = run.model.provide()  # validates again: still one warning
    assert backends_by_stack(model) == {"gpt": {"flash"}}
    assert _deprecations(caplog) == ["use_flash_attention is deprecated; use attention_backend=flash instead"]


def test_gpt_legacy_flag_false_excludes_flash_and_runs_local_on_cpu(caplog):
    caplog.set_level(logging.WARNING, logger="bridge.models")
    run = load_config("gpt_pretrain", ["model.use_flash_attention=false", "model.seq_length=32"])
    model = run.model.provide()
    mods = attention_modules(model)
    assert {m.backend.value for m in mods} == {"auto"}
    assert all(any(e.value == "flash" for e in m.exclude) for m in mods)
    tokens = torch.randint(0, run.model.vocab_size, (1, 32))
    model(tokens, torch.arange(32)[None], None, labels=tokens)
    if not torch.cuda.is_available():
        assert {m.last_backend.value for m in mods} == {"local"}
    assert len(_deprecations(caplog)) == 1


def test_t5_legacy_stack_flags_reach_their_stacks(caplog, build_anywhere):
    caplog.set_level(logging.WARNING, logger="bridge.models")
    run = load_config("t5_pretrain", ["model.encoder.use_flash_attention=true", "model.decoder.use_flash_attention=false"])
    model = run.model.provide()
    stacks = backends_by_stack(model)
    assert stacks == {"encoder": {"flash"}, "decoder": {"auto"}}
    decoder = [m for m in attention_modules(model) if m.stack == "decoder"]
    assert all(any(e.value == "flash" for e in m.exclude) for m in decoder)
    messages = _deprecations(caplog)
    assert len(messages) == 2
    assert any(m.startswith("encoder.use_flash_attention is deprecated") for m in messages)
    assert any(m.startswith("decoder.use_flash_attention is deprecated") for m in messages)


def test_t5_legacy_flag_with_explicit_other_stack_backend(build_anywhere):
    run = load_config("t5_pretrain", ["model.encoder.use_flash_attention=true", "model.decoder_attention_backend=local"])
    assert backends_by_stack(run.model.provide()) == {"encoder": {"flash"}, "decoder": {"local"}}


@pytest.mark.parametrize("recipe, overrides, message", [
    ("gpt_pretrain", ["model.use_flash_attention=true", "model.attention_backend=fused"],
     "use_flash_attention=True contradicts attention_backend=fused"),
    ("gpt_pretrain", ["model.use_flash_attention=false", "model.attention_backend=flash"],
     "use_flash_attention=False contradicts attention_backend=flash"),
    ("t5_pretrain", ["model.encoder.use_flash_attention=true", "model.encoder_attention_backend=local"],
     "encoder.use_flash_attention=True contradicts encoder_attention_backend=local"),
    ("t5_pretrain", ["model.decoder.use_flash_attention=false", "model.decoder_attention_backend=flash"],
     "decoder.use_flash_attention=False contradicts decoder_attention_backend=flash"),
])
def test_contradicting_legacy_flag_is_an_error(recipe, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(recipe, overrides)


def test_t5_flag_on_gpt_recipe_names_the_family():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.encoder'; 'encoder' is a T5 setting"):
        load_config("gpt_pretrain", ["model.encoder.use_flash_attention=true"])


def test_legacy_flags_in_a_yaml_recipe(tmp_path, caplog, build_anywhere):
    caplog.set_level(logging.WARNING, logger="bridge.models")
    (tmp_path / "old_gpt.yaml").write_text(textwrap.dedent("""\
        defaults:
          - gpt_pretrain
          - _self_
        model:
          use_flash_attention: true
        """))
    (tmp_path / "old_t5.yaml").write_text(textwrap.dedent("""\
        defaults:
          - t5_pretrain
          - _self_
        model:
          encoder:
            use_flash_attention: false
          decoder:
            use_flash_attention: true
        """))
    gpt = load_config("old_gpt", config_dir=tmp_path)
    assert backends_by_stack(gpt.model.provide()) == {"gpt": {"flash"}}
    t5 = load_config("old_t5", config_dir=tmp_path)
    assert backends_by_stack(t5.model.provide()) == {"encoder": {"auto"}, "decoder": {"flash"}}
    assert len(_deprecations(caplog)) == 3


# -- sequence lengths -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, expected", [
    (["model.seq_length=128"], 128),
    (["data.seq_length=64"], 64),
    (["model.seq_length=96", "data.seq_length=96"], 96),
    (["model=gpt_126m"], 2048),
    (["model=gpt_126m", "data.seq_length=512"], 512),
])
def test_gpt_seq_length_has_one_owner(overrides, expected):
    """``data.seq_length`` is an alias of ``model.seq_length``, the one owner of the sample length."""
    run = load_config("gpt_pretrain", overrides)
    assert run.model.seq_length == expected


@pytest.mark.parametrize("overrides, enc, dec", [
    (["model.seq_length=64"], 64, 64),
    (["data.decoder_seq_length=32"], 128, 32),
    (["model.decoder_seq_length=16", "data.seq_length=48"], 48, 16),
    (["model=t5_base"], 512, 128),
])
def test_t5_seq_lengths_have_one_owner(overrides, enc, dec):
    run = load_config("t5_pretrain", overrides)
    assert (run.model.seq_length, run.model.resolved_decoder_seq_length) == (enc, dec)


def test_t5_decoder_length_none_means_encoder_length():
    run = load_config("t5_pretrain", ["model.decoder_seq_length=null"])
    assert run.model.decoder_seq_length is None and run.model.resolved_decoder_seq_length == run.model.seq_length


def test_datasets_take_their_lengths_from_the_model(tmp_path):
    run = load_config("t5_finetune", ["data.seq_length=48", "data.decoder_seq_length=16",
                                      f"data.cache_dir={tmp_path}"])
    train, _ = family_spec("t5").build_datasets(run.data, run.built_tokenizer, run.model)
    sample = train[0]
    assert (sample["enc_tokens"].shape[0], sample["dec_tokens"].shape[0]) == (48, 16)


def test_disagreeing_seq_length_overrides_are_an_error():
    with pytest.raises(ConfigError, match=r"model.seq_length=64 and data.seq_length=32 disagree"):
        load_config("gpt_pretrain", ["model.seq_length=64", "data.seq_length=32"])


def test_the_old_data_length_key_in_a_yaml_names_the_new_one(tmp_path):
    (tmp_path / "old.yaml").write_text("defaults:\n  - gpt_pretrain\n  - _self_\ndata:\n  seq_length: 64\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'data.seq_length'; it moved to 'model.seq_length'"):
        load_config("old", config_dir=tmp_path)


def test_a_length_restated_by_interpolation_is_accepted():
    run = load_config("gpt_pretrain", ["model.seq_length=96", "data.seq_length=${model.seq_length}"])
    assert run.model.seq_length == 96


# -- other values -------------------------------------------------------------------------------------------------
def test_enum_strings_of_other_nodes():
    run = load_config("gpt_pretrain", ["optimizer.optimizer=sgd", "scheduler.decay_style=linear",
                                       "train.device=cpu", "data.kind=finetune"])
    assert (run.optimizer.optimizer.value, run.scheduler.decay_style.value) == ("sgd", "linear")
    assert (run.train.device.value, run.data.kind.value) == ("cpu", "finetune")


def test_vocab_size_from_the_tokenizer_and_too_small_is_an_error():
    assert load_config("gpt_pretrain").model.vocab_size == 359
    assert load_config("gpt_pretrain", ["model.vocab_size=512"]).model.vocab_size == 512
    with pytest.raises(ConfigError, match=r"model.vocab_size=100 is smaller than the tokenizer's vocabulary \(359 ids\)"):
        load_config("gpt_pretrain", ["model.vocab_size=100"])


def test_precision_sets_the_model_dtype():
    run = load_config("gpt_pretrain", ["train.precision=bf16"])
    assert run.model.dtype == "bf16" and run.train.precision.value == "bf16"
    with pytest.raises(ConfigError, match="train.precision=bf16 contradicts model.dtype=fp16"):
        load_config("gpt_pretrain", ["train.precision=bf16", "model.dtype=fp16"])


def test_group_and_structure_overrides():
    run = load_config("gpt_pretrain", ["model=llama_1b", "model.num_query_groups=4", "optimizer.betas=[0.9,0.99]"])
    assert (run.model.num_query_groups, run.model.normalization) == (4, "RMSNorm")
    assert run.optimizer.betas == [0.9, 0.99]
