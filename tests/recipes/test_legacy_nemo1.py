"""NeMo-1 style configs: the shipped files load; each common key lands where it should; unknown keys and
settings bridge cannot honour are errors naming them."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from bridge.recipes import ConfigError, build_run_config, compose_config, load_config
from bridge.recipes.legacy import is_nemo1, translate_nemo1


def _nemo1_gpt():
    return OmegaConf.to_container(compose_config("legacy/nemo1_gpt"), resolve=True)


def test_shipped_nemo1_gpt_translates_key_by_key():
    run = load_config("legacy/nemo1_gpt")
    assert (run.family, run.name) == ("gpt", "megatron_gpt")
    assert (run.model.num_layers, run.model.hidden_size, run.model.ffn_hidden_size) == (4, 128, 512)
    assert run.model.seq_length == 256
    assert run.model.position_embedding_type == "rope" and run.model.normalization == "LayerNorm"
    assert run.model.use_flash_attention is False and run.model.attention_backend.value == "auto"
    assert (run.train.train_steps, run.train.micro_batch_size, run.train.global_batch_size) == (300, 8, 8)
    assert (run.train.eval_interval, run.train.eval_steps, run.train.log_interval) == (100, 4, 10)
    assert run.train.precision.value == "fp32" and run.optimizer.clip_grad == 1.0
    assert run.optimizer.optimizer.value == "adamw" and run.optimizer.lr == 1e-3 and run.optimizer.min_lr == 1e-4
    assert run.optimizer.betas == [0.9, 0.95] and run.scheduler.warmup_steps == 30
    assert run.scheduler.decay_style.value == "cosine"
    assert run.checkpoint.dir == "outputs/megatron_gpt/checkpoints" and run.checkpoint.save_interval == 150
    assert run.checkpoint.keep_last == 2 and run.logging.tensorboard_dir == "outputs/megatron_gpt/tensorboard"
    assert run.tokenizer.type.value == "byte" and run.data.paths == [] and run.data.split == "95,5,0"


def test_shipped_nemo1_t5_translates_per_stack_keys():
    run = load_config("legacy/nemo1_t5")
    assert run.family == "t5"
    assert (run.model.encoder_num_layers, run.model.decoder_num_layers, run.model.hidden_size) == (2, 2, 128)
    assert (run.model.seq_length, run.model.decoder_seq_length) == (128, 64)
    assert run.model.encoder.use_flash_attention is False and run.model.decoder.use_flash_attention is False
    assert run.scheduler.decay_style.value == "linear" and run.scheduler.warmup_steps == 20  # 0.1 × 200
    assert run.data.noise_density == 0.15 and run.optimizer.betas == [0.9, 0.999]


def test_nemo1_overrides_use_nemo1_names():
    run = load_config("legacy/nemo1_gpt", ["trainer.max_steps=50", "model.encoder_seq_length=128",
                                           "model.use_flash_attention=true", "trainer.precision=bf16-mixed"])
    assert run.train.train_steps == 50 and run.model.seq_length == 128
    assert run.model.attention_backend.value == "flash" and run.model.dtype == "bf16"
    run = load_config("legacy/nemo1_t5", ["model.decoder.use_flash_attention=true"])
    assert run.model.decoder_attention_backend.value == "flash"
    assert run.model.encoder_attention_backend.value == "auto"


def test_nemo1_legacy_flag_contradiction_is_an_error():
    raw = _nemo1_gpt()
    raw["model"]["use_flash_attention"] = True
    raw["model"]["attention_backend"] = "fused"  # not a NeMo-1 key at all
    with pytest.raises(ConfigError, match="model.attention_backend"):
        build_run_config(OmegaConf.create(raw))


@pytest.mark.parametrize("path, value, message", [
    ("model.megatron_foo", 1, "NeMo-1 config keys without a bridge translation: model.megatron_foo"),
    ("trainer.accumulate_grad_batches", 4, "NeMo-1 key trainer.accumulate_grad_batches=4 is not supported by bridge (only 1 or None)"),
    ("model.tokenizer.library", "megatron", "NeMo-1 model.tokenizer.type='None' (library megatron) is not supported"),
    ("model.tokenizer.library", "regex", "NeMo-1 model.tokenizer.library='regex'"),
    ("model.optim.name", "lamb", "NeMo-1 model.optim.name='lamb' is not supported"),
    ("model.max_position_embeddings", 512, "NeMo-1 model.max_position_embeddings=512 differs from model.encoder_seq_length=256"),
    ("restore_from_path", "model.nemo", "NeMo-1 restore_from_path='model.nemo': .nemo archives cannot be loaded"),
    ("trainer.precision", "64", "NeMo-1 trainer.precision='64' is not supported"),
    ("model.activation", "reglu", "NeMo-1 activation='reglu' is not supported"),
])
def test_nemo1_errors_name_the_key(path, value, message):
    raw = _nemo1_gpt()
    OmegaConf.update(cfg := OmegaConf.create(raw), path, value, force_add=True)
    with pytest.raises(ConfigError) as info:
        build_run_config(cfg)
    assert str(info.value).startswith(message), str(info.value)


def test_nemo1_t5_stacks_must_share_width():
    raw = OmegaConf.to_container(compose_config("legacy/nemo1_t5"), resolve=True)
    raw["model"]["decoder"]["hidden_size"] = 256
    with pytest.raises(ConfigError, match=r"model.encoder.hidden_size=128 differs from model.decoder.hidden_size=256"):
        build_run_config(OmegaConf.create(raw))


def test_nemo1_data_prefix_forms():
    raw = _nemo1_gpt()
    raw["model"]["data"]["data_prefix"] = ["/data/a", "/data/b"]  # no weights: pooled by size
    run = build_run_config(OmegaConf.create(copy.deepcopy(raw)))
    assert run.data.paths == ["/data/a", "/data/b"]
    raw["model"]["data"]["data_prefix"] = [1.0, "/data/a"]  # one weighted prefix is just that dataset
    run = build_run_config(OmegaConf.create(copy.deepcopy(raw)))
    assert run.data.paths == ["/data/a"]
    raw["model"]["data"]["data_prefix"] = {"train": ["/data/a"], "validation": ["/data/v"], "test": ["/data/t"]}
    run = build_run_config(OmegaConf.create(copy.deepcopy(raw)))
    assert (run.data.paths, run.data.valid_paths) == (["/data/a"], ["/data/v"])
    raw["model"]["data"]["data_prefix"] = [0.3, "/data/a", 0.7, "/data/b"]  # mixed 30/70, as NeMo does
    run = build_run_config(OmegaConf.create(copy.deepcopy(raw)))
    assert (run.data.paths, run.data.weights) == (["/data/a", "/data/b"], [0.3, 0.7])
    raw["model"]["data"]["data_prefix"] = [0.3, "/data/a", "/data/b"]
    with pytest.raises(ConfigError, match="is neither a list of prefixes nor a weighted blend"):
        build_run_config(OmegaConf.create(raw))


def test_nemo1_schedule_lengths():
    raw = _nemo1_gpt()
    raw["model"]["optim"]["sched"]["constant_steps"] = 100
    run = build_run_config(OmegaConf.create(raw))
    assert run.scheduler.decay_steps == 200  # 300 max_steps - 100 held at min_lr


def test_detection_and_translation_is_a_structured_run():
    cfg = compose_config("legacy/nemo1_t5")
    assert is_nemo1(cfg) and not is_nemo1(compose_config("t5_pretrain"))
    translated = translate_nemo1(cfg)
    assert OmegaConf.get_type(translated.model).__name__ == "T5ModelProvider"
