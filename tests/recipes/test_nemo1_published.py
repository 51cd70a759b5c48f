"""NeMo 1.23's own published YAML files (tests/recipes/fixtures/nemo1, see SOURCE.md there) load unchanged.

Each file composes through Hydra exactly as committed; the only overrides are what NeMo itself requires
the user to give (``model.data.data_prefix: ???``, the tokenizer's vocab files that NeMo would download)
and tiny sizes so a CPU can train a few steps.
"""

import json
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


@pytest.mark.slow
def test_weighted_blend_trains_in_its_proportions(tmp_path):
    """``data_prefix: [0.25, A, 0.75, B]`` mixes A and B 1:3 through megatron-core's blending, not pooled by size."""
    from bridge.data import build_tokenizer, write_indexed_dataset
    from bridge.training import train

    run = _load("megatron_gpt_config", GPT2_FILES + TINY_GPT, tmp_path)
    tokenizer = build_tokenizer(run.tokenizer)
    for name, word in (("a", "apple"), ("b", "banana")):
        write_indexed_dataset([f"{word} " * 40] * 30, tokenizer, str(tmp_path / name))
    overrides = [o for o in TINY_GPT if not o.startswith("model.data.data_prefix")]
    run = _load("megatron_gpt_config", GPT2_FILES + overrides + [
        f"model.data.data_prefix=[0.25,{tmp_path / 'a'},0.75,{tmp_path / 'b'}]"], tmp_path)
    assert run.data.weights == [0.25, 0.75]
    from bridge.models import family_spec

    train_ds, _ = family_spec("gpt").build_datasets(run.data, tokenizer, run.model)
    apple = tokenizer.encode(" apple")[0]
    firsts = [bool((train_ds[i]["tokens"] == apple).any()) for i in range(40)]
    assert sum(firsts) == 10  # a quarter of the samples come from A
    result = train(run)
    assert result.steps == [1, 2, 3] and all(math.isfinite(loss) for loss in result.losses)


def test_activation_checkpointing_becomes_recompute(tmp_path):
    run = _load("megatron_gpt_config", GPT2_FILES + TINY_GPT + [
        "model.activations_checkpoint_granularity=full", "model.activations_checkpoint_method=uniform",
        "model.activations_checkpoint_num_layers=1"], tmp_path)
    assert (run.model.recompute_granularity, run.model.recompute_method, run.model.recompute_num_layers) == ("full", "uniform", 1)


def test_nemo_activation_spellings(tmp_path):
    run = _load("megatron_gpt_config", GPT2_FILES + TINY_GPT + ["model.activation=squared-relu"], tmp_path)
    assert run.model.activation == "squared_relu"


def test_split_keeps_the_test_share_out_and_t5_masking_is_warned(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bridge.recipes"):
        run = _load("megatron_t5_config", BERT_FILES + TINY_T5, tmp_path)
    assert run.data.split == "949,45,5" and run.data.split_weights() == (949.0, 45.0, 5.0)
    assert "T5 masking settings" in caplog.text


def test_peft_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"NeMo-1 PEFT config \(model.peft.peft_scheme=adapter\) is not supported"):
        load_config("megatron_gpt_finetuning_config", [], config_dir=FIXTURES)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny GPT checkpoint of this project (what NeMo's restore_from_path names), written without training."""
    from bridge.distributed import ensure_model_parallel
    from bridge.models import GPTModelProvider
    from bridge.training.hf_checkpoints import save_imported

    provider = GPTModelProvider(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                                seq_length=64, vocab_size=359, hidden_dropout=0.1, attention_dropout=0.1,
                                attention_backend="local")
    ensure_model_parallel(1, 1)
    folder = tmp_path_factory.mktemp("pretrained")
    save_imported(provider.provide(), provider, str(folder / "no_hf_files"), str(folder / "checkpoints"))
    return str(folder / "checkpoints")


def _sft_overrides(pretrained, data_dir, extra=()):
    records = [{"question": f"what follows {i}?", "output": str(i + 1)} for i in range(12)]
    train = data_dir / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    return [f"model.restore_from_path={pretrained}", f"model.data.train_ds.file_names=[{train}]",
            f"model.data.validation_ds.file_names=[{train}]", "trainer.precision=32", "trainer.accelerator=cpu",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "+trainer.limit_val_batches=1",
            "model.global_batch_size=2", "model.micro_batch_size=2", "model.data.train_ds.max_seq_length=48",
            "model.data.train_ds.num_workers=0", "model.data.train_ds.prompt_template='Q: {question} A: {output}'",
            "model.data.train_ds.truncation_field=question", *extra]


def test_sft_file_translates_to_full_fine_tuning(pretrained, tmp_path):
    run = _load("megatron_gpt_sft", _sft_overrides(pretrained, tmp_path), tmp_path)
    assert run.data.kind.value == "finetune" and not run.data.packed
    assert run.data.prompt_template == "Q: {question} A: {output}" and run.data.response_key == "output"
    assert run.data.truncation_field == "question" and run.data.truncation_method == "right"
    assert run.data.answer_only_loss is False  # the file's own value
    assert run.checkpoint.pretrained_checkpoint == pretrained
    # the architecture comes from the checkpoint, the file's dropout and length override it
    assert (run.model.num_layers, run.model.hidden_size) == (2, 32)
    assert run.model.hidden_dropout == 0.0 and run.model.attention_dropout == 0.0 and run.model.seq_length == 48
    # NeMo runs without an LR scheduler when the file has no optim.sched: the LR stays at optim.lr
    assert run.scheduler.decay_style.value == "constant" and run.scheduler.warmup_steps == 0
    assert run.optimizer.lr == 3e-5


def test_sft_needs_what_nemo_needs(pretrained, tmp_path):
    with pytest.raises(ConfigError, match="model.restore_from_path"):
        load_config("megatron_gpt_sft", [], config_dir=FIXTURES)
    missing = [o for o in _sft_overrides(pretrained, tmp_path) if not o.startswith("model.restore_from_path")]
    with pytest.raises(ConfigError, match=r"restore_from_path='/nowhere' is not a readable checkpoint"):
        _load("megatron_gpt_sft", missing + ["model.restore_from_path=/nowhere"], tmp_path)
    with pytest.raises(ConfigError, match=r"\.nemo archives cannot be loaded"):
        _load("megatron_gpt_sft", missing + ["model.restore_from_path=/m/base.nemo"], tmp_path)
    with pytest.raises(ConfigError, match="model.data.chat=True is not supported"):
        _load("megatron_gpt_sft", _sft_overrides(pretrained, tmp_path, ["model.data.chat=true"]), tmp_path)
    with pytest.raises(ConfigError, match="validation_ds.max_seq_length=64 differs"):
        _load("megatron_gpt_sft", _sft_overrides(pretrained, tmp_path, ["model.data.validation_ds.max_seq_length=64"]),
              tmp_path)


@pytest.mark.slow
def test_sft_file_trains_a_few_cpu_steps(pretrained, tmp_path):
    from bridge.training import train

    run = _load("megatron_gpt_sft", _sft_overrides(pretrained, tmp_path), tmp_path)
    result = train(run)
    assert result.steps == [1, 2, 3]
    assert all(math.isfinite(loss) for loss in result.losses) and math.isfinite(result.valid_loss)


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


SFT_EXPECTED = {
    "model.restore_from_path": "translated", "model.data.train_ds.file_names": "translated",
    "model.data.train_ds.prompt_template": "translated", "model.data.train_ds.label_key": "translated",
    "model.data.train_ds.truncation_field": "translated", "model.answer_only_loss": "translated",
    "model.data.train_ds.max_seq_length": "translated", "model.hidden_dropout": "translated",
    "model.data.train_ds.add_eos": "default", "model.data.validation_ds.metric.name": "default",
    "model.data.validation_ds.write_predictions_to_file": "default",
    "model.data.train_ds.memmap_workers": "no effect", "model.data.validation_ds.tokens_to_generate": "no effect",
    "model.data.test_ds.file_names": "no effect", "inference.greedy": "no effect",
    "model.data.chat": "translated", "model.data.chat_prompt_tokens.turn_start": "off",
    "exp_manager.checkpoint_callback_params.save_top_k": "translated", "trainer.max_epochs": "translated",
}


def test_every_key_of_the_sft_file_is_handled(pretrained, tmp_path):
    from omegaconf import OmegaConf

    cfg = compose_config("megatron_gpt_sft", _sft_overrides(pretrained, tmp_path), config_dir=FIXTURES)
    handling = legacy.nemo1_key_handling(cfg)
    keys = set(_leaf_keys(OmegaConf.to_container(cfg, resolve=False)))
    assert keys == set(handling), sorted(keys ^ set(handling))
    for key, how in SFT_EXPECTED.items():
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
