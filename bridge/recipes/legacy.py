"""Legacy configs: NeMo-1 style YAML files translated into bridge's run config.

The legacy attention flags need nothing here: ``model.use_flash_attention`` (GPT and T5) and
``model.encoder.use_flash_attention`` / ``model.decoder.use_flash_attention`` (T5) are fields of the
providers, so they work in YAML files and as plain command-line overrides, and the provider translates
each into a backend with one deprecation warning (a contradiction with an explicit backend is an error).

A NeMo-1 file (``trainer:``, ``exp_manager:``, ``model:`` with ``micro_batch_size``, ``encoder_seq_length``,
``model.encoder.num_layers``, ``model.optim.sched``, ...) is recognised by its ``trainer`` node and
translated key by key. Each NeMo-1 key is either translated (the table below), accepted only at the value
that means what bridge does (``trainer.accumulate_grad_batches: 1``), or known to have no effect here
(kernel fusions, logger plumbing: listed once in an info line). Any other key is an error naming it, so
no setting is silently dropped.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bridge.recipes.errors import ConfigError, config_error
from bridge.recipes import legacy_sft
from bridge.models import family_spec
from bridge.training.config import RunConfig

logger = logging.getLogger("bridge.recipes")


def _register_nemo_resolvers() -> None:
    """The interpolation resolvers NeMo 1 registers and its published files use (``${multiply:a,b}``, ...)."""
    import functools
    import operator

    resolvers = {
        "multiply": lambda *xs: functools.reduce(operator.mul, xs, 1),
        "sum": lambda *xs: sum(xs),
        "subtract": lambda x, y: x - y,
        "int_div": lambda x, y: x // y,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


_register_nemo_resolvers()

# Settings of one transformer stack; T5 files have them under model.encoder / model.decoder, GPT under model.
_ARCH_SAME_NAME = (
    "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "init_method_std", "hidden_dropout", "attention_dropout", "layernorm_epsilon", "position_embedding_type",
    "normalization", "rotary_base",
)
_ARCH_RENAMED = {"rotary_percentage": "rotary_percent", "bias": "add_bias_linear"}
_ACTIVATIONS = {"fast-swiglu": "swiglu", "fast-geglu": None, "geglu": None, "reglu": None, "fast-reglu": None}

# Keys whose value must be the one bridge implements; anything else is an error naming the key.
_MUST_BE: Dict[str, Tuple[Any, ...]] = {
    "apply_query_key_layer_scaling": (False,), "use_scaled_init_method": (True,),
    "fp32_residual_connection": (False,), "fp16_lm_cross_entropy": (False,), "headscale": (False,),
    "transformer_block_type": ("pre_ln",), "openai_gelu": (False,), "normalize_attention_scores": (True,),
    "attention_type": ("multihead",), "ffn_dropout": (0.0, 0),
    "rampup_batch_size": (None,), "activations_checkpoint_granularity": (None,),
    "activations_checkpoint_method": (None,), "resume_from_checkpoint": (None,), "megatron_legacy": (False,),
    "arch": ("transformer",), "num_moe_experts": (1,), "num_self_attention_per_cross_attention": (1,),
    "do_layer_norm_weight_decay": (False,), "pipeline_model_parallel_split_rank": (0, None),
    "reset_position_ids": (False,), "reset_attention_mask": (False,), "eod_mask_loss": (False,),
    "dataset_type": ("t5",), "accumulate_grad_batches": (1, None),
    "create_wandb_logger": (False,), "short_seq_prob": (0.0, 0),
    "num_micro_batches_with_partial_activation_checkpoints": (None,),
    "activations_checkpoint_layers_per_pipeline": (None,),
}

# Keys with no effect in bridge (kernel fusions, logger and launcher plumbing, dataset-index details).
_NO_EFFECT = frozenset({
    "mcore_gpt", "pre_process", "post_process", "persist_layer_norm", "bias_activation_fusion",
    "bias_dropout_add_fusion", "masked_softmax_fusion", "gradient_accumulation_fusion", "apply_rope_fusion",
    "get_attention_mask_from_fusion", "grad_div_ar_fusion", "grad_allreduce_chunk_size_mb",
    "gradient_as_bucket_view", "megatron_amp_O2", "native_amp_init_scale", "native_amp_growth_interval",
    "hysteresis", "apex_transformer_log_level", "sync_batch_comm", "nccl_communicator_config_path", "onnx_safe",
    "overlap_p2p_comm", "batch_p2p_comm", "activations_checkpoint_num_layers", "relative_attention_num_buckets",
    "relative_attention_max_distance", "relative_position_bias_self_attention_only", "hidden_steps",
    "moe_frequency", "moe_dropout", "data_impl", "skip_warmup", "index_mapping_dir", "dataloader_type",
    "validation_drop_last", "pad_samples_to_global_batch_size", "shuffle_documents",
    "exchange_indices_distributed", "no_seqlen_plus_one_input_tokens", "max_ngram_size", "geometric_dist",
    "permutation", "whole_word_masking", "favor_longer_ngrams", "respect_document_boundaries", "devices",
    "num_nodes", "logger", "enable_checkpointing", "use_distributed_sampler", "benchmark",
    "enable_model_summary", "limit_test_batches", "num_sanity_val_steps", "resume_ignore_no_checkpoint",
    "create_checkpoint_callback", "monitor", "mode", "filename", "always_save_nemo", "save_nemo_on_train_end",
    "model_parallel_size", "save_last", "last_epoch", "sentencepiece_legacy", "delimiter",
    "embedding_init_method_std", "tokens_head_bias", "sharp", "gc_interval", "overlap_p2p_comm",
    "mock_dataset", "save_best_model", "enable_megatron_timers", "save_nemo_on_validation_end",
})


_SWITCHES: Dict[str, Tuple[Tuple[Any, ...], str, Tuple[str, ...]]] = {
    # switch key: (its "off" values, why another value cannot be honoured, keys that only matter when it is on)
    "model.transformer_engine": ((False,), "bridge builds megatron-core's local layers, not Transformer Engine's", ()),
    "model.fp8": ((False, None), "fp8 training needs Transformer Engine layers",
                  ("model.fp8_", "model.reduce_amax")),
    "model.fsdp": ((False,), "torch FSDP is not supported (use tensor / pipeline / data parallelism)", ("model.fsdp_",)),
    "model.cpu_offloading": ((False,), "activation / weight offloading needs Transformer Engine",
                             ("model.cpu_offloading_",)),
    "model.ub_tp_comm_overlap": ((False,), "userbuffer communication overlap needs Transformer Engine",
                                 ("model.ub_tp_comm_overlap_cfg",)),
    "model.use_emha": ((False,), "NeMo's fused multi-head attention is not available; use model.attention_backend", ()),
    "model.nsys_profile.enabled": ((False,), "bridge has no built-in nsys ranges; run the job under nsys instead",
                                   ("model.nsys_profile.",)),
    "model.data.mock_dataset": ((False,), "mock datasets are not supported; an empty data_prefix trains on the "
                                "embedded corpus", ()),
    "exp_manager.create_wandb_logger": ((False,), "bridge logs to TensorBoard only", ("exp_manager.wandb_logger_kwargs.",)),
    "exp_manager.create_neptune_logger": ((False,), "bridge logs to TensorBoard only",
                                          ("exp_manager.neptune_logger_kwargs.",)),
    "model.enable_megatron_timers": ((False, True), "", ("model.megatron_timer_kwargs.",)),
}
"""NeMo-1 switches that are off by default, with the keys that only matter when they are on. At its off
value a switch and its dependent keys change nothing and are accepted; on, the switch is one error."""


def _translate_switches(t: "_Translation") -> None:
    for switch, (off, reason, dependents) in _SWITCHES.items():
        if not t.has(switch):
            continue
        t.how[switch] = "off"
        value = t.take(switch)
        if value not in off:
            raise ConfigError(f"NeMo-1 key {switch}={value!r} is not supported: {reason} (set it to {off[0]!r})")
        for key in [k for k in t.keys if k.startswith(dependents)] if dependents else ():
            t.ignored.append(key)
            t.how[key] = "off"
            t.take(key)


def is_nemo1(cfg: DictConfig) -> bool:
    """A NeMo-1 file has a ``trainer`` node at the top; bridge's run config has none."""
    return isinstance(cfg, DictConfig) and "trainer" in cfg


_MAPPING_VALUES = frozenset({"model.data.data_prefix"})
"""Keys whose value may be a mapping as a whole (``data_prefix: {train: [...], validation: [...]}``)."""


def _flatten(node: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Dotted leaf keys of a nested dict (lists, empty dicts and _MAPPING_VALUES are leaves)."""
    out: Dict[str, Any] = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in _MAPPING_VALUES:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _nemo1_family(keys: Dict[str, Any]) -> str:
    name = str(keys.get("name", "")).lower()
    if "t5" in name or any(k.startswith(("model.encoder.", "model.decoder.")) for k in keys):
        return "t5"
    return "gpt"


class _Translation:
    """Consumes NeMo-1 keys and writes bridge keys; whatever is not consumed at the end is an error."""

    def __init__(self, keys: Dict[str, Any], family: str):
        self.keys = dict(keys)
        self.family = family
        self.out: Dict[str, Any] = {}
        self.ignored: List[str] = []
        self.how: Dict[str, str] = {}  # NeMo-1 key -> translated | off | default | no effect
        self.sft = legacy_sft.is_sft_file(keys)

    def take(self, key: str, default: Any = None) -> Any:
        if key in self.keys:
            self.how.setdefault(key, "translated")
        return self.keys.pop(key, default)

    def has(self, key: str) -> bool:
        return key in self.keys

    def put(self, target: str, value: Any) -> None:
        self.out[target] = value

    def move(self, key: str, target: str, convert: Callable[[Any], Any] = lambda v: v) -> None:
        if key in self.keys:
            self.put(target, convert(self.take(key)))

    def settle(self, key: str, name: str, must_be: Dict[str, Tuple[Any, ...]], no_effect: frozenset) -> bool:
        """Consume ``key`` when ``name`` is in ``must_be`` (at an allowed value, else one error) or in
        ``no_effect``; False (nothing consumed) for any other name."""
        if name in must_be:
            value = self.keys.pop(key)
            if value not in must_be[name]:
                allowed = " or ".join(repr(v) for v in must_be[name])
                raise ConfigError(f"NeMo-1 key {key}={value!r} is not supported by bridge (only {allowed})")
            self.how[key] = "default"
            return True
        if name in no_effect:
            self.keys.pop(key)
            self.ignored.append(key)
            self.how[key] = "no effect"
            return True
        return False

    def finish(self) -> None:
        """Handle _MUST_BE / _NO_EFFECT keys; raise for anything left."""
        unknown = [key for key in sorted(self.keys)
                   if not self.settle(key, key.rsplit(".", 1)[-1], _MUST_BE, _NO_EFFECT)]
        if unknown:
            raise ConfigError(
                f"NeMo-1 config keys without a bridge translation: {', '.join(unknown)} "
                "(remove them, or use bridge's own recipes: conf/gpt_pretrain.yaml, conf/t5_pretrain.yaml)")
        if self.ignored:
            logger.info("NeMo-1 keys with no effect in bridge, ignored: %s", ", ".join(self.ignored))


def _precision(value: Any) -> str:
    table = {"32": "fp32", "fp32": "fp32", "16": "fp16", "16-mixed": "fp16", "fp16": "fp16",
             "bf16": "bf16", "bf16-mixed": "bf16"}
    key = str(value).strip().lower()
    if key not in table:
        raise ConfigError(f"NeMo-1 trainer.precision={value!r} is not supported; use 32, 16, bf16 or bf16-mixed")
    return table[key]


def _accelerator(value: Any) -> str:
    table = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu", "auto": "auto"}
    if str(value).lower() not in table:
        raise ConfigError(f"NeMo-1 trainer.accelerator={value!r} is not supported; use gpu, cpu or auto")
    return table[str(value).lower()]


def _whole_number(key: str) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, float):
            raise ConfigError(
                f"NeMo-1 {key}={value!r} is a fraction (of an epoch / of the validation set) in NeMo; bridge counts "
                "steps and batches, give a whole number (an integer)")
        if isinstance(value, bool) or value is None or not isinstance(value, int):
            raise ConfigError(f"NeMo-1 {key}={value!r}: bridge counts in steps / batches, give a whole number")
        return int(value)
    return convert


def _activation(value: Any) -> str:
    key = str(value).lower()
    if key in _ACTIVATIONS:
        if _ACTIVATIONS[key] is None:
            raise ConfigError(f"NeMo-1 activation={value!r} is not supported; bridge has gelu, swiglu, relu, squared_relu")
        return _ACTIVATIONS[key]
    return key


def _translate_trainer(t: _Translation) -> None:
    t.move("trainer.max_steps", "train.train_steps", _whole_number("trainer.max_steps"))
    epochs = t.take("trainer.max_epochs")
    if epochs not in (-1, None):
        # Lightning stops at whichever limit comes first; bridge counts steps only.
        if "train.train_steps" not in t.out or t.out["train.train_steps"] < 0:
            raise ConfigError(f"NeMo-1 trainer.max_epochs={epochs} without trainer.max_steps: bridge counts steps, "
                              "set trainer.max_steps")
        logger.warning("NeMo-1 trainer.max_epochs=%s: bridge stops after trainer.max_steps=%s and does not count "
                       "epochs (data repeats, reshuffled, when an epoch ends first)", epochs, t.out["train.train_steps"])
    t.move("trainer.val_check_interval", "train.eval_interval", _whole_number("trainer.val_check_interval"))
    t.move("trainer.limit_val_batches", "train.eval_steps", _whole_number("trainer.limit_val_batches"))
    t.move("trainer.log_every_n_steps", "train.log_interval", _whole_number("trainer.log_every_n_steps"))
    t.move("trainer.precision", "train.precision", _precision)
    t.move("trainer.accelerator", "train.device", _accelerator)
    t.move("trainer.gradient_clip_val", "optimizer.clip_grad", lambda v: 0.0 if v is None else float(v))


def _translate_exp_manager(t: _Translation, run_name: str) -> None:
    base = t.take("exp_manager.explicit_log_dir")
    exp_dir = t.take("exp_manager.exp_dir")
    name = t.take("exp_manager.name") or run_name
    if base is None:
        base = os.path.join(exp_dir or "outputs", name)
    if t.take("exp_manager.create_checkpoint_callback", True):
        t.put("checkpoint.dir", os.path.join(base, "checkpoints"))
        t.move("exp_manager.resume_if_exists", "checkpoint.resume", bool)
    else:
        t.take("exp_manager.resume_if_exists")
    if t.take("exp_manager.create_tensorboard_logger", True):
        t.put("logging.tensorboard_dir", os.path.join(base, "tensorboard"))
    params = "exp_manager.checkpoint_callback_params."
    t.move(params + "every_n_train_steps", "checkpoint.save_interval", _whole_number(params + "every_n_train_steps"))
    if "checkpoint.dir" in t.out and "checkpoint.save_interval" not in t.out and "train.eval_interval" in t.out:
        # NeMo's checkpoint callback saves after every validation run
        t.put("checkpoint.save_interval", t.out["train.eval_interval"])
    top_k = t.take(params + "save_top_k")
    if top_k is not None:
        t.put("checkpoint.keep_last", max(0, int(top_k)))


def _stack_settings(t: _Translation, source: str) -> Dict[str, Any]:
    """Architecture keys of one stack (``model`` for GPT, ``model.encoder`` / ``model.decoder`` for T5),
    consumed and returned as provider field -> value."""
    settings = {}
    for name in _ARCH_SAME_NAME:
        if t.has(f"{source}.{name}"):
            settings[name] = t.take(f"{source}.{name}")
    for name, ours in _ARCH_RENAMED.items():
        if t.has(f"{source}.{name}"):
            settings[ours] = t.take(f"{source}.{name}")
    if t.has(f"{source}.activation"):
        settings["activation"] = _activation(t.take(f"{source}.activation"))
    return settings


def _translate_t5_stacks(t: _Translation) -> None:
    """T5's encoder/decoder settings: layer counts and legacy flags per stack, the rest shared by both."""
    for stack in ("encoder", "decoder"):
        t.move(f"model.{stack}.num_layers", f"model.{stack}_num_layers")
        t.move(f"model.{stack}.use_flash_attention", f"model.{stack}.use_flash_attention")
    encoder, decoder = _stack_settings(t, "model.encoder"), _stack_settings(t, "model.decoder")
    for name in sorted(set(encoder) | set(decoder)):
        if name in encoder and name in decoder and encoder[name] != decoder[name]:
            raise ConfigError(
                f"NeMo-1 model.encoder.{name}={encoder[name]!r} differs from model.decoder.{name}={decoder[name]!r}; "
                "bridge's T5 shares this setting between the stacks, make them equal")
        t.put(f"model.{name}", encoder.get(name, decoder.get(name)))
    if "model.encoder_num_layers" in t.out:
        t.put("model.num_layers", t.out["model.encoder_num_layers"])
    embedding_dropout = t.take("model.embedding_dropout")
    hidden_dropout = t.out.get("model.hidden_dropout")
    if embedding_dropout is not None and hidden_dropout is not None and embedding_dropout != hidden_dropout:
        raise ConfigError(f"NeMo-1 model.embedding_dropout={embedding_dropout} differs from hidden_dropout="
                          f"{hidden_dropout}; megatron-core's T5 uses hidden_dropout for both, make them equal")


def _translate_tokenizer(t: _Translation) -> None:
    library = str(t.take("model.tokenizer.library", "byte-level")).lower()
    kind = t.take("model.tokenizer.type")
    model_file = t.take("model.tokenizer.model")
    vocab_file, merge_file = t.take("model.tokenizer.vocab_file"), t.take("model.tokenizer.merge_file")
    sentinels = t.take("model.tokenizer.num_sentinel_tokens", 100)
    if sentinels is not None and int(sentinels) > 100:
        raise ConfigError(f"NeMo-1 model.tokenizer.num_sentinel_tokens={sentinels}: bridge's tokenizers have 100")
    if library in ("byte-level", "byte"):
        t.put("tokenizer.type", "byte")
    elif library == "sentencepiece":
        t.put("tokenizer.type", "sentencepiece")
        t.put("tokenizer.path", model_file)
    elif library == "megatron":
        _megatron_tokenizer(t, str(kind), vocab_file, merge_file)
    elif library == "huggingface":
        path = model_file or kind
        if not path or not os.path.exists(str(path)):
            raise ConfigError(
                f"NeMo-1 huggingface tokenizer {path!r} is not a local file; bridge reads a local tokenizer.json "
                "(set model.tokenizer.model to its path)")
        t.put("tokenizer.type", "huggingface")
        t.put("tokenizer.path", path)
    else:
        raise ConfigError(
            f"NeMo-1 model.tokenizer.library={library!r} (type={kind}, vocab_file={vocab_file}, merge_file={merge_file}) "
            "is not supported; use byte-level, sentencepiece (model: <file.model>) or huggingface (model: <tokenizer.json>)")


_MEGATRON_TOKENIZERS = {
    "gpt2bpetokenizer": ("gpt2_bpe", False), "bertwordpiececase": ("wordpiece", False),
    "bertwordpiecelowercase": ("wordpiece", True),
}


def _megatron_tokenizer(t: _Translation, kind: str, vocab_file: Any, merge_file: Any) -> None:
    """NeMo's ``library: megatron`` tokenizers, read from their local vocab (and merges) files."""
    if kind.lower() not in _MEGATRON_TOKENIZERS:
        raise ConfigError(f"NeMo-1 model.tokenizer.type={kind!r} (library megatron) is not supported; use "
                          "GPT2BPETokenizer, BertWordPieceCase or BertWordPieceLowerCase")
    ours, lower = _MEGATRON_TOKENIZERS[kind.lower()]
    needed = [("model.tokenizer.vocab_file", vocab_file)] + ([("model.tokenizer.merge_file", merge_file)] if ours == "gpt2_bpe" else [])
    for key, path in needed:
        if not path or not os.path.isfile(os.path.expanduser(str(path))):
            raise ConfigError(f"NeMo-1 tokenizer {kind} needs {key} (a local file), got {path!r}; NeMo downloads "
                              "it, bridge does not: set it to the file's path")
    t.put("tokenizer.type", ours)
    t.put("tokenizer.path", str(vocab_file))
    if ours == "gpt2_bpe":
        t.put("tokenizer.merges_path", str(merge_file))
    else:
        t.put("tokenizer.lower_case", lower)


def _data_paths(value: Any, part: str = "model.data.data_prefix") -> Tuple[List[str], List[float]]:
    """Prefixes and weights (empty: pooled by size) of a NeMo-1 ``data_prefix`` list: ``[A, B]`` or the
    weighted ``[0.3, A, 0.7, B]``."""
    if value in (None, [], {}):
        return [], []
    items = value if isinstance(value, list) else [value]
    if all(isinstance(v, str) for v in items):
        return [str(v) for v in items], []
    weights, paths = items[0::2], items[1::2]
    numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights)
    if len(items) % 2 or not numbers or not all(isinstance(p, str) for p in paths):
        raise ConfigError(f"NeMo-1 {part}={items!r} is neither a list of prefixes nor a weighted blend "
                          "[weight, prefix, weight, prefix, ...] with positive weights")
    return [str(p) for p in paths], [float(w) for w in weights]


def _translate_data_prefix(t: _Translation) -> None:
    value = t.take("model.data.data_prefix")
    if isinstance(value, dict):
        extra = sorted(set(value) - {"train", "validation", "test"})
        if extra:
            raise ConfigError(f"NeMo-1 model.data.data_prefix has unknown parts {extra}; use train / validation")
        paths, weights = _data_paths(value.get("train"), "model.data.data_prefix.train")
        valid, valid_weights = _data_paths(value.get("validation"), "model.data.data_prefix.validation")
        if len(valid) > 1 and valid_weights:
            raise ConfigError("NeMo-1 model.data.data_prefix.validation is a weighted blend; bridge validates on "
                              "its prefixes pooled: list them without weights")
    else:
        (paths, weights), valid = _data_paths(value), []
    t.put("data.paths", paths)
    t.put("data.valid_paths", valid)
    if len(paths) > 1 and weights:
        t.put("data.weights", weights)  # megatron-core's blend, as NeMo mixes them


_T5_NEMO_MASKING = ("max_ngram_size", "geometric_dist", "whole_word_masking", "permutation", "favor_longer_ngrams")


def _translate_data(t: _Translation, seq_length: Optional[int]) -> None:
    _translate_data_prefix(t)
    split = t.take("model.data.splits_string")
    if split is not None:  # NeMo's train,valid,test shares; the test documents stay out of training
        t.put("data.split", str(split))
    t.move("model.data.num_workers", "data.num_workers")
    data_length = t.take("model.data.seq_length", seq_length)
    if seq_length is None and data_length is not None:
        t.put("model.seq_length", data_length)
    elif data_length != seq_length:
        raise ConfigError(f"NeMo-1 model.data.seq_length={data_length} differs from the model's length {seq_length}; "
                          "bridge cuts samples to the model's length: drop model.data.seq_length or make them equal")
    if t.family == "t5":
        masking = [k for k in _T5_NEMO_MASKING if t.has(f"model.data.{k}")]
        if masking:
            logger.warning("NeMo-1 T5 masking settings %s are not implemented: bridge corrupts T5-style spans "
                           "(data.noise_density, data.mean_noise_span_length)", ", ".join(masking))
        t.move("model.data.seq_length_dec", "model.decoder_seq_length")
        t.move("model.data.masked_lm_prob", "data.noise_density")
        mean_span = t.take("model.data.mean_ngram_size")
        if mean_span is not None:
            t.put("data.mean_noise_span_length", float(mean_span))


def _translate_optim(t: _Translation, max_steps: Optional[int]) -> None:
    name = str(t.take("model.optim.name", "fused_adam")).lower()
    optimizers = {"adam": "adamw", "adamw": "adamw", "fused_adam": "adamw", "distributed_fused_adam": "adamw",
                  "mcore_distributed_optim": "adamw", "sgd": "sgd"}
    if name not in optimizers:
        raise ConfigError(f"NeMo-1 model.optim.name={name!r} is not supported; use one of: {', '.join(optimizers)}")
    t.put("optimizer.optimizer", optimizers[name])
    if name in ("distributed_fused_adam", "mcore_distributed_optim"):
        t.put("optimizer.use_distributed_optimizer", True)
    for key in ("lr", "weight_decay", "eps"):
        t.move(f"model.optim.{key}", f"optimizer.{key}", float)
    t.move("model.optim.betas", "optimizer.betas", lambda v: [float(b) for b in v])
    t.move("model.optim.momentum", "optimizer.sgd_momentum", float)
    if not any(k.startswith("model.optim.sched.") for k in t.keys):
        # NeMo runs without a scheduler when the file has none (SFT files): the LR stays at optim.lr
        t.put("scheduler.decay_style", "constant")
        t.put("scheduler.warmup_steps", 0)
        return
    sched = str(t.take("model.optim.sched.name", "CosineAnnealing"))
    styles = {"cosineannealing": "cosine", "warmupannealing": "linear", "linearannealing": "linear",
              "constantlr": "constant", "warmupholdpolicy": "constant"}
    if sched.lower() not in styles:
        raise ConfigError(f"NeMo-1 model.optim.sched.name={sched!r} is not supported; use CosineAnnealing, "
                          "WarmupAnnealing, LinearAnnealing or ConstantLR")
    t.put("scheduler.decay_style", styles[sched.lower()])
    t.move("model.optim.sched.min_lr", "optimizer.min_lr", float)
    # NeMo-1's schedule length is sched.max_steps (default: trainer.max_steps); its CosineAnnealing then
    # holds min_lr for the last constant_steps, which is a decay over the steps before them.
    sched_steps = t.take("model.optim.sched.max_steps")
    total = sched_steps if sched_steps is not None else max_steps
    constant = int(t.take("model.optim.sched.constant_steps") or 0)
    t.move("model.optim.sched.warmup_steps", "scheduler.warmup_steps", _whole_number("model.optim.sched.warmup_steps"))
    warmup_ratio = t.take("model.optim.sched.warmup_ratio")
    if warmup_ratio is not None:
        if not total:
            raise ConfigError("NeMo-1 model.optim.sched.warmup_ratio needs trainer.max_steps or sched.max_steps")
        t.put("scheduler.warmup_steps", int(round(float(warmup_ratio) * int(total))))
    if total and (sched_steps is not None or constant):
        t.put("scheduler.decay_steps", int(total) - constant)


def _translate_model(t: _Translation) -> Optional[int]:
    """Model-level keys; returns the sequence length."""
    seq_key = "model.encoder_seq_length" if t.family == "gpt" else "model.seq_length"
    seq_length = t.take(seq_key)
    if seq_length is not None:
        t.put("model.seq_length", seq_length)
    max_pos = t.take("model.max_position_embeddings")
    if max_pos is not None and seq_length is not None and max_pos != seq_length:
        raise ConfigError(f"NeMo-1 model.max_position_embeddings={max_pos} differs from {seq_key}={seq_length}; "
                          "bridge sizes position embeddings by the sequence length, make them equal")
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "sequence_parallel",
                "make_vocab_size_divisible_by", "use_flash_attention", "virtual_pipeline_model_parallel_size",
                "fp16_lm_cross_entropy"):
        t.move(f"model.{key}", f"model.{key}")
    if not t.sft:  # an SFT file keeps the padding of the model it fine-tunes
        t.put("model.should_pad_vocab", True)  # NeMo 1 always pads the vocabulary (make_vocab_size_divisible_by)
    t.move("model.micro_batch_size", "train.micro_batch_size")
    t.move("model.global_batch_size", "train.global_batch_size")
    if t.has("model.seed"):
        seed = t.take("model.seed")
        t.put("train.seed", seed)
        t.put("data.seed", seed)
    t.move("model.use_cpu_initialization", "model.use_cpu_initialization", lambda v: True if v else None)
    if t.family == "gpt":
        t.move("model.seq_len_interpolation_factor", "model.seq_len_interpolation_factor")
        _translate_recompute(t)
        t.move("model.num_layers", "model.num_layers")
        t.move("model.share_embeddings_and_output_weights", "model.share_embeddings_and_output_weights")
        for name, value in _stack_settings(t, "model").items():
            t.put(f"model.{name}", value)
    else:
        tie = [t.take(k) for k in ("model.share_token_embeddings", "model.share_decoder_tokens_head_embeddings")]
        tie = [v for v in tie if v is not None]
        if tie:
            t.put("model.share_embeddings_and_output_weights", all(tie))
        _translate_t5_stacks(t)
    return seq_length


def _translate_recompute(t: _Translation) -> None:
    """NeMo's activations_checkpoint_* are megatron-core's recompute_* (GPT; the T5 stacks must leave them off)."""
    granularity = t.take("model.activations_checkpoint_granularity")
    method = t.take("model.activations_checkpoint_method")
    layers = t.take("model.activations_checkpoint_num_layers")
    if granularity is None:
        if method is not None:
            raise ConfigError(f"NeMo-1 model.activations_checkpoint_method={method!r} needs "
                              "model.activations_checkpoint_granularity (full or selective)")
        return
    t.put("model.recompute_granularity", granularity)
    if granularity == "full":
        t.put("model.recompute_method", method)
        t.put("model.recompute_num_layers", layers)


def _nest(flat: Dict[str, Any]) -> Dict[str, Any]:
    nested: Dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def translate_nemo1(cfg: DictConfig) -> DictConfig:
    """bridge's run config (structured, struct mode) for a NeMo-1 style config; unknown keys are an error."""
    return _translate(cfg)[0]


def nemo1_key_handling(cfg: DictConfig) -> Dict[str, str]:
    """How the translation treats each key of a NeMo-1 config: ``translated`` (into bridge's run config),
    ``off`` (a switch at its off value, or a key that only matters when its switch is on), ``default`` (at the
    only value bridge implements) or ``no effect`` (kernel fusions, logger plumbing). A key bridge cannot
    honour raises :class:`ConfigError` instead."""
    return _translate(cfg)[1]


def _translate(cfg: DictConfig) -> Tuple[DictConfig, Dict[str, str]]:
    legacy_sft.reject_peft(_flatten(OmegaConf.to_container(cfg, resolve=False)))
    cfg, unread = legacy_sft.without_test_section(cfg)
    try:
        keys = _flatten(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except OmegaConfBaseException as exc:
        raise config_error(exc) from exc
    family = _nemo1_family(keys)
    t = _Translation(keys, family)
    for key in unread:
        t.ignored.append(key)
        t.how[key] = "no effect"
    name = str(t.take("name") or f"nemo1_{family}")
    t.put("name", name)
    t.put("family", family)
    restore = t.take("restore_from_path")
    if t.has("model.restore_from_path"):  # where SFT files keep it
        restore = t.take("model.restore_from_path")
    if restore is not None:
        if str(restore).endswith(".nemo"):
            raise ConfigError(f"NeMo-1 restore_from_path={restore!r}: .nemo archives cannot be loaded; give a bridge "
                              "checkpoint folder (checkpoint.pretrained_checkpoint)")
        t.put("checkpoint.pretrained_checkpoint", restore)
    max_steps = t.keys.get("trainer.max_steps")
    _translate_switches(t)
    _translate_trainer(t)
    _translate_exp_manager(t, name)
    seq_length = _translate_model(t)
    if t.sft:
        legacy_sft.translate_sft_data(t)
        legacy_sft.translate_answer_only_loss(t)
        if any(k.startswith("model.tokenizer.") for k in t.keys):
            _translate_tokenizer(t)
        legacy_sft.adopt_base_model(t, restore)
    else:
        _translate_tokenizer(t)
        _translate_data(t, seq_length)
    _translate_optim(t, max_steps)
    t.finish()

    run = OmegaConf.structured(RunConfig)
    run.model = OmegaConf.structured(family_spec(family).provider_cls)
    try:
        run = OmegaConf.merge(run, _nest(t.out))
    except OmegaConfBaseException as exc:
        raise config_error(exc) from exc
    logger.info("translated NeMo-1 config %r into a bridge %s run", name, family)
    return run, t.how
