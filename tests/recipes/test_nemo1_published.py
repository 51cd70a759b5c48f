"""NeMo 1.23's own published YAML files (tests/recipes/fixtures/nemo1, see SOURCE.md there) load unchanged.

Each file composes through Hydra exactly as committed; the only overrides are what NeMo itself requires
the user to give (``model.data.data_prefix: ???``, the tokenizer's vocab files that NeMo would download)
and tiny sizes so a CPU can train a few steps.
"""

import logging
import math
import os
from pathlib import Path

import pytest
import yaml

from bridge.recipes import ConfigError, compose_config, load_config
from bridge.recipes import legacy

FIXTURES = Path(__file__).parent / "fixtures" / "nemo1"
TOKENIZERS = FIXTURES / "tokenizers"
GPT2_FILES = [f"model.tokenizer.vocab_file={TOKENIZERS / 'gpt2_vocab.json'}",
              f"model.tokenizer.merge_file={TOKENIZERS / 'gpt2_merges.txt'}"]
BERT_FILES = [f"model.tokenizer.vocab_file={TOKENIZERS / 'bert_vocab.txt'}"]
TINY_GPT = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128", "model.num_attention_heads=4",
            "model.encoder_seq_length=32", "model.micro_batch_size=2", "model.global_batch_size=2",
            "trainer.precision=32", "trainer.accelerator=cpu", "trainer.max_steps=3", "trainer.val_check_interval=3",
            "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "model.optim.sched.warmup_steps=1",
            "model.data.data_prefix=[]", "model.data.num_workers=0"]
TINY_T5 = ["model.encoder.num_layers=1", "model.decoder.num_layers=1", "model.encoder.hidden_size=64",
           "model.decoder.hidden_size=64", "model.encoder.ffn_hidden_size=128", "model.decoder.ffn_hidden_size=128",
           "model.encoder.num_attention_heads=4", "model.decoder.num_attention_heads=4", "model.seq_length=32",
           "model.data.seq_length_dec=16", "model.micro_batch_size=2", "model.global_batch_size=2",
           "trainer.precision=32", "trainer.accelerator=cpu", "trainer.max_steps=3", "trainer.val_check_interval=3",
           "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "model.data.data_prefix=[]"]


def _load(name, overrides, tmp_path):
    return load_config(name, list(overrides) + [f"exp_manager.explicit_log_dir={tmp_path}"], config_dir=FIXTURES)


def _published(name):
    return yaml.safe_load((FIXTURES / f"{name}.yaml").read_text())


def test_fixtures_are_the_published_files():
    text = (FIXTURES / "megatron_gpt_config.yaml").read_text()
    assert "${multiply:${model.tensor_model_parallel_size}, ${model.pipeline_model_parallel_size}}" in text
    assert "cpu_offloading_num_layers: ${sum:${.num_layers},-1}" in text
    assert "v1.23.0" in (FIXTURES / "SOURCE.md").read_text()


def test_gpt_file_loads_unchanged(tmp_path):
    run = _load("megatron_gpt_config", GPT2_FILES + TINY_GPT, tmp_path)
    assert run.family == "gpt" and run.model.num_layers == 2 and run.model.hidden_size == 64
    assert run.tokenizer.type.value == "gpt2_bpe" and run.model.vocab_size >= 267
    assert run.model.should_pad_vocab and run.model.padded_vocab_size % 128 == 0
    assert run.model.attention_dropout == 0.1  # the file's own value
    assert run.checkpoint.save_interval == run.train.eval_interval  # NeMo saves at every validation


def test_t5_file_loads_unchanged(tmp_path):
    run = _load("megatron_t5_config", BERT_FILES + TINY_T5, tmp_path)
    assert run.family == "t5" and run.model.resolved_encoder_layers == 1
    assert run.tokenizer.type.value == "wordpiece" and run.tokenizer.lower_case is False
    assert run.model.decoder_seq_length == 16


def test_resolvers_are_registered():
    cfg = compose_config("megatron_gpt_config", ["model.tensor_model_parallel_size=2",
                                                 "model.pipeline_model_parallel_size=3"], config_dir=FIXTURES)
    assert cfg.exp_manager.checkpoint_callback_params.model_parallel_size == 6
    assert cfg.model.cpu_offloading_num_layers == cfg.model.num_layers - 1


def test_missing_tokenizer_files_are_one_error(tmp_path):
    with pytest.raises(ConfigError, match=r"GPT2BPETokenizer needs model.tokenizer.vocab_file \(a local file\)"):
        _load("megatron_gpt_config", TINY_GPT, tmp_path)
    with pytest.raises(ConfigError, match=r"BertWordPieceCase needs model.tokenizer.vocab_file"):
        _load("megatron_t5_config", TINY_T5, tmp_path)


@pytest.mark.parametrize("override,key", [
    ("model.fp8=true", "model.fp8=True"),
    ("model.transformer_engine=true", "model.transformer_engine=True"),
    ("model.fsdp=true", "model.fsdp=True"),
    ("model.cpu_offloading=true", "model.cpu_offloading=True"),
    ("model.ub_tp_comm_overlap=true", "model.ub_tp_comm_overlap=True"),
    ("model.nsys_profile.enabled=true", "model.nsys_profile.enabled=True"),
    ("exp_manager.create_wandb_logger=true", "exp_manager.create_wandb_logger=True"),
])
def test_switching_on_what_bridge_cannot_honour_is_one_error(override, key, tmp_path):
    with pytest.raises(ConfigError, match=rf"NeMo-1 key {key} is not supported: "):
        _load("megatron_gpt_config", GPT2_FILES + TINY_GPT + [override], tmp_path)


def test_fractional_validation_settings_are_an_error_not_one_step(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.val_check_interval=1.0 is a fraction"):
        _load("megatron_gpt_config", GPT2_FILES + TINY_GPT + ["trainer.val_check_interval=1.0"], tmp_path)


def test_weighted_blend_is_an_error_not_a_pooled_mix(tmp_path):
    with pytest.raises(ConfigError, match="is a weighted blend"):
        _load("megatron_gpt_config", GPT2_FILES + TINY_GPT + ["model.data.data_prefix=[0.5,a,0.5,b]"], tmp_path)


def test_activation_checkpointing_becomes_recompute(tmp_path):
    run = _load("megatron_gpt_config", GPT2_FILES + TINY_GPT + [
        "model.activations_checkpoint_granularity=full", "model.activations_checkpoint_method=uniform",
        "model.activations_checkpoint_num_layers=1"], tmp_path)
    assert (run.model.recompute_granularity, run.model.recompute_method, run.model.recompute_num_layers) == ("full", "uniform", 1)


def test_nemo_activation_spellings(tmp_path):
    run = _load("megatron_gpt_config", GPT2_FILES + TINY_GPT + ["model.activation=squared-relu"], tmp_path)
    assert run.model.activation == "squared_relu"


def test_split_test_share_and_t5_masking_are_warned(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bridge.recipes"):
        _load("megatron_t5_config", BERT_FILES + TINY_T5, tmp_path)
    text = caplog.text
    assert "bridge has no test set" in text and "T5 masking settings" in text


@pytest.mark.parametrize("name", ["megatron_gpt_sft", "megatron_gpt_finetuning_config"])
def test_sft_and_peft_files_are_one_clear_error(name, tmp_path):
    with pytest.raises(ConfigError, match=r"NeMo-1 (SFT|PEFT) configs"):
        load_config(name, [], config_dir=FIXTURES)


# How each key of the published files is handled: translated into bridge's run config, accepted because it
# sits at a value that changes nothing here, or rejected. Every leaf key of each file is in exactly one row.
def _leaf_keys(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path != "model.data.data_prefix":
            yield from _leaf_keys(value, path + ".")
        else:
            yield path


# How each key of the published files is handled: translated into bridge's run config, accepted because it
# sits at a value that changes nothing here (a switch that is off, or the only value bridge implements), or
# accepted as having no effect (kernel fusions, logger plumbing). Anything else would have raised.
EXPECTED = {
    "megatron_gpt_config": {
        "trainer.max_steps": "translated", "trainer.precision": "translated", "model.num_layers": "translated",
        "model.activation": "translated", "model.tokenizer.type": "translated", "model.optim.sched.name": "translated",
        "model.fp8": "off", "model.fp8_hybrid": "off", "model.fsdp": "off", "model.fsdp_sharding_strategy": "off",
        "model.cpu_offloading": "off", "model.cpu_offloading_num_layers": "off", "model.transformer_engine": "off",
        "model.ub_tp_comm_overlap_cfg": "off", "model.nsys_profile.start_step": "off", "model.data.mock_dataset": "off",
        "exp_manager.wandb_logger_kwargs.project": "off", "exp_manager.neptune_logger_kwargs.tags": "off",
        "model.megatron_timer_kwargs.log_mode": "off", "model.use_emha": "off",
        "model.headscale": "default", "model.transformer_block_type": "default", "model.rampup_batch_size": "default",
        "model.persist_layer_norm": "no effect", "model.masked_softmax_fusion": "no effect", "model.sharp": "no effect",
        "model.gc_interval": "no effect", "trainer.limit_test_batches": "no effect",
    },
    "megatron_t5_config": {
        "model.encoder.num_layers": "translated", "model.decoder.hidden_size": "translated",
        "model.tokenizer.type": "translated", "model.data.seq_length_dec": "translated",
        "model.encoder.arch": "default", "model.decoder.num_moe_experts": "default",
        "model.encoder.bias_activation_fusion": "no effect", "model.data.max_ngram_size": "no effect",
        "exp_manager.wandb_logger_kwargs.project": "off", "model.encoder.enable_megatron_timers": "no effect",
    },
}


@pytest.mark.parametrize("name,overrides", [("megatron_gpt_config", GPT2_FILES + TINY_GPT),
                                            ("megatron_t5_config", BERT_FILES + TINY_T5)])
def test_every_key_of_the_published_files_is_handled(name, overrides):
    cfg = compose_config(name, overrides, config_dir=FIXTURES)
    handling = legacy.nemo1_key_handling(cfg)
    from omegaconf import OmegaConf

    keys = set(_leaf_keys(OmegaConf.to_container(cfg, resolve=False)))
    assert keys == set(handling), sorted(keys ^ set(handling))
    for key, how in EXPECTED[name].items():
        assert handling[key] == how, (key, handling[key])


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", [("megatron_gpt_config", GPT2_FILES + TINY_GPT),
                                            ("megatron_t5_config", BERT_FILES + TINY_T5)])
def test_published_file_trains_a_few_cpu_steps(name, overrides, tmp_path):
    from bridge.training import train

    run = _load(name, overrides, tmp_path)
    result = train(run)
    assert result.steps == [1, 2, 3]
    assert all(math.isfinite(loss) for loss in result.losses) and math.isfinite(result.valid_loss)
    assert result.checkpoint is not None and os.path.isdir(result.checkpoint)
