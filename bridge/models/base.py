"""Fields and validation shared by the GPT and T5 providers, and their translation into megatron-core config.

A provider holds settings only; building the megatron-core model lives in ``gpt_builder`` / ``t5_builder``.
Every field type is one OmegaConf understands, so Hydra can use the providers as structured configs
(``attention_backend`` is ``Any`` because it accepts several spellings, normalised in ``__post_init__``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Dict, Optional

import torch

from bridge.attention.backend import AttnBackend, parse_attn_backend
from bridge.models import mcore_fields
from bridge.models.aliases import ACTIVATION_ALIASES, ACTIVATION_FUNCTIONS, CUSTOM_ACTIVATION, resolve_aliases
from bridge.models.fields import DTYPES, parse_dtype

logger = logging.getLogger("bridge.models")

POSITION_EMBEDDINGS = ("learned_absolute", "rope", "relative", "none")
_POSITION_ALIASES = {"learned": "learned_absolute", "absolute": "learned_absolute", "rotary": "rope"}
NORMALIZATIONS = ("LayerNorm", "RMSNorm")
ACTIVATIONS = tuple(ACTIVATION_FUNCTIONS) + (CUSTOM_ACTIVATION,)


def _choice(value: str, valid, field_name: str, aliases: Optional[Dict[str, str]] = None) -> str:
    aliases = aliases or {}
    lowered = {v.lower(): v for v in valid}
    key = str(value).strip()
    key = aliases.get(key.lower(), key)
    if key.lower() in lowered:
        return lowered[key.lower()]
    raise ValueError(f"{field_name}={value!r} is not valid; valid values: {', '.join(valid)}")


def validate_query_groups(num_attention_heads: int, num_query_groups: Optional[int], tensor_parallel: int) -> None:
    """The MHA / GQA / MQA rules and megatron-core's tensor-parallel rule, each with a message naming the numbers."""
    if num_attention_heads <= 0:
        raise ValueError(f"num_attention_heads must be positive, got {num_attention_heads}")
    if num_query_groups is None:
        return
    if num_query_groups <= 0:
        raise ValueError(
            f"num_query_groups={num_query_groups} is invalid: use 1 (MQA), a divisor of "
            f"num_attention_heads={num_attention_heads} (GQA), or None / {num_attention_heads} (MHA)"
        )
    if num_attention_heads % num_query_groups != 0:
        raise ValueError(
            f"num_query_groups={num_query_groups} does not divide num_attention_heads={num_attention_heads}; "
            f"use 1 (MQA), a divisor of {num_attention_heads} (GQA), or {num_attention_heads} (MHA)"
        )
    if num_query_groups % tensor_parallel != 0 and tensor_parallel % num_query_groups != 0:
        raise ValueError(
            f"num_query_groups={num_query_groups} must be a multiple or a divisor of "
            f"tensor_model_parallel_size={tensor_parallel}"
        )


@dataclasses.dataclass
class TransformerProvider(mcore_fields.MegatronCoreFields):
    """Knobs shared by GPT and T5. Field docstrings are the reference; defaults follow megatron-core.

    Every megatron-core ``TransformerConfig`` field is a field too (inherited from ``MegatronCoreFields``,
    with megatron-core's default), so code written for Megatron Bridge's providers works as written;
    ``bridge.models.mcore_fields`` says what each one does here.
    """

    num_layers: int = 12
    """Transformer layers (for T5: the encoder's, unless ``encoder_num_layers`` is set)."""
    hidden_size: int = 768
    """Model width."""
    ffn_hidden_size: Optional[int] = None
    """MLP width; None = 4 × hidden_size (gelu/relu) or 8/3 × hidden_size rounded up to 64 (swiglu)."""
    num_attention_heads: int = 12
    """Query heads."""
    num_query_groups: Optional[int] = None
    """Key/value heads. To use multi-query attention (MQA), set this to 1; for grouped-query attention
    (GQA), a divisor of num_attention_heads in between; None or num_attention_heads means plain MHA."""
    kv_channels: Optional[int] = None
    """Head dimension; None = hidden_size / num_attention_heads."""
    seq_length: int = 1024
    """Tokens per sample (T5: encoder tokens): the datasets cut samples to this length, and throughput counts it."""
    max_position_embeddings: Optional[int] = None
    """Positions the model can address (learned position embeddings have this many rows); None = seq_length.
    A model imported from Hugging Face keeps its context length here while seq_length is the run's."""
    vocab_size: Optional[int] = None
    """Tokenizer vocabulary size; the recipes fill it in from the tokenizer."""
    should_pad_vocab: bool = False
    """Pad the embedding table up to a multiple of make_vocab_size_divisible_by × tensor_model_parallel_size
    (Megatron Bridge's default is False: the table has exactly vocab_size rows; the presets pad)."""
    make_vocab_size_divisible_by: int = 128
    """The padding multiple when should_pad_vocab is True."""
    position_embedding_type: str = "learned_absolute"
    """learned_absolute | rope | none."""
    rotary_percent: float = 1.0
    """Fraction of each head dimension rotated by RoPE."""
    rotary_base: int = 10000
    """RoPE base frequency."""
    seq_len_interpolation_factor: Optional[float] = None
    """Linear RoPE position interpolation: positions are divided by this factor (None = off)."""
    normalization: str = "LayerNorm"
    """LayerNorm | RMSNorm."""
    layernorm_epsilon: float = 1e-5
    """Epsilon of the normalisation layers."""
    activation: str = "gelu"
    """MLP activation: gelu | fast_gelu (megatron-core's tanh approximation, GPT-2's gelu_new) | swiglu |
    geglu | fast_geglu (gated fast_gelu: T5 v1.1's gated-gelu) | reglu | relu | squared_relu | silu |
    quick_gelu. megatron-core's spelling: gated_linear_unit + activation_func ('custom' = a function of
    your own in activation_func)."""
    add_bias_linear: bool = True
    """Biases in the linear layers (False for Llama-style models)."""
    add_qkv_bias: bool = False
    """Biases on the query/key/value projection even when add_bias_linear is False (Qwen2-style models)."""
    softmax_scale: Optional[float] = None
    """Scale of the attention scores; None = 1/sqrt(head dimension) (T5 uses 1.0)."""
    hidden_dropout: float = 0.1
    """Dropout after the attention and MLP blocks."""
    attention_dropout: float = 0.1
    """Dropout on the attention probabilities, megatron-core's default 0.1 (the flash kernel supports only
    0.0, so auto picks another backend while it is on; the presets set what their models use)."""
    share_embeddings_and_output_weights: bool = True
    """Tie the input embedding and the output layer."""
    init_method_std: float = 0.02
    """Standard deviation of the weight initialisation."""
    dtype: str = "fp32"
    """Parameter and compute dtype: fp32 | bf16 | fp16 (a torch.dtype is accepted too); megatron-core's
    spelling bf16=True / fp16=True / params_dtype works as well."""
    fp16_lm_cross_entropy: bool = False
    """Compute the output cross-entropy in fp16 (megatron-core GPTModel / T5Model argument)."""
    parallel_output: bool = True
    """Keep the logits split over tensor-parallel ranks (megatron-core model argument)."""
    tensor_model_parallel_size: int = 1
    """Tensor-parallel ranks."""
    pipeline_model_parallel_size: int = 1
    """Pipeline-parallel stages."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs tensor_model_parallel_size > 1)."""
    attention_backend: Any = AttnBackend.auto
    """auto | flash | fused | local (also megatron-core's AttnBackend, 'flash_attn', 'fused_attn')."""
    use_flash_attention: Optional[bool] = None
    """Deprecated (NeMo 1): True = attention_backend flash; False = auto without flash."""
    deterministic_attention: bool = False
    """Use the flash kernel's deterministic backward (bit-identical gradients, a little slower)."""
    use_cpu_initialization: Optional[bool] = None
    """Initialise weights on the CPU; None = only when no GPU is present."""

    def __post_init__(self) -> None:
        self.validate()

    # -- validation: the one place every rule lives -----------------------------------------------
    def validate(self) -> None:
        """Normalise spellings and check every rule; called on construction and again by ``provide()``.

        Every problem found is reported together, in one ``ValueError`` line.
        """
        problems: list = []
        self.check(problems)
        if problems:
            many = f"{type(self).__name__} has {len(problems)} problems: " if len(problems) > 1 else ""
            raise ValueError(many + "; ".join(problems))

    def finalize(self) -> None:
        """Megatron Bridge's name for "settle the fields after changing them": validate and fill derived values."""
        self.validate()

    def provide_distributed_model(self, ddp_config=None, **kwargs):
        """This rank's model chunks wrapped for training, as Megatron Bridge's method of this name returns
        them (arguments and behaviour: ``bridge.models.distributed_model``)."""
        from bridge.models.distributed_model import provide_distributed_model

        return provide_distributed_model(self, ddp_config, **kwargs)

    def sequence_split_problems(self) -> list:
        """Sequence parallelism splits every sequence over the tensor-parallel ranks: its length must divide."""
        tp = self.tensor_model_parallel_size
        return [f"sequence_parallel=True splits seq_length={self.seq_length} over tensor_model_parallel_size={tp}: "
                f"use a seq_length divisible by {tp}"] if self.seq_length % tp else []

    def check(self, problems: list) -> None:
        """Append one message per problem to ``problems``; subclasses extend this."""
        def attempt(fn, *args):
            try:
                return fn(*args)
            except ValueError as exc:
                problems.append(str(exc))
                return None

        for name, value, valid, aliases in (
            ("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDINGS, _POSITION_ALIASES),
            ("normalization", self.normalization, NORMALIZATIONS, {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}),
            ("activation", self.activation, ACTIVATIONS, ACTIVATION_ALIASES),
        ):
            chosen = attempt(_choice, value, valid, name, aliases)
            if chosen is not None:
                object.__setattr__(self, name, chosen)
        dtype = attempt(parse_dtype, self.dtype, "dtype")
        if dtype is not None:
            object.__setattr__(self, "dtype", dtype)
        if self.activation == CUSTOM_ACTIVATION and self.activation_func is None:
            problems.append("activation='custom' needs activation_func (the function to use)")
        elif not problems:
            problems.extend(resolve_aliases(self, self.__dict__.get("_alias_state"), _class_defaults(type(self))))
        problems.extend(mcore_fields.unsupported_settings(self))
        backend = attempt(self._resolve_legacy_flag, "attention_backend", self.attention_backend,
                          self.use_flash_attention, "use_flash_attention")
        if backend is not None:
            object.__setattr__(self, "attention_backend", backend)
        for name in ("num_layers", "hidden_size", "seq_length", "tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_position_embeddings is not None and (
                self.max_position_embeddings <= 0 or (self.position_embedding_type == "learned_absolute"
                                                      and self.seq_length > self.max_position_embeddings)):
            problems.append(f"seq_length={self.seq_length} needs that many learned positions but "
                            f"max_position_embeddings={self.max_position_embeddings}; shorten seq_length or leave "
                            "max_position_embeddings null")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("ffn_hidden_size", "kv_channels"):  # None = derived from hidden_size / the head count
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                problems.append(f"{name} must be positive (or null to derive it), got {getattr(self, name)}")
        if self.make_vocab_size_divisible_by <= 0:
            problems.append(f"make_vocab_size_divisible_by must be positive (1 = no padding), got "
                            f"{self.make_vocab_size_divisible_by}")
        if not 0.0 < self.rotary_percent <= 1.0:
            problems.append(f"rotary_percent must be in (0, 1] (the share of each head's dims that rotate), got "
                            f"{self.rotary_percent}")
        for name in ("rotary_base", "layernorm_epsilon"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads > 0 and self.tensor_model_parallel_size > 0:
            attempt(validate_query_groups, self.num_attention_heads, self.num_query_groups, self.tensor_model_parallel_size)
        elif self.num_attention_heads <= 0:
            problems.append(f"num_attention_heads must be positive, got {self.num_attention_heads}")
        if self.num_attention_heads > 0:
            if self.kv_channels is None and self.hidden_size % self.num_attention_heads != 0:
                problems.append(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                    "set kv_channels (the head dimension) explicitly or change one of them")
            elif self.head_dim <= 0 or (self.position_embedding_type == "rope" and self.head_dim % 2):
                problems.append(f"head dimension {self.head_dim} is invalid (rope needs an even, positive head dimension)")
            if self.tensor_model_parallel_size > 0 and self.num_attention_heads % self.tensor_model_parallel_size != 0:
                problems.append(
                    f"num_attention_heads={self.num_attention_heads} must be divisible by "
                    f"tensor_model_parallel_size={self.tensor_model_parallel_size}")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            problems.append("sequence_parallel=True needs tensor_model_parallel_size > 1")
        elif self.sequence_parallel and self.tensor_model_parallel_size > 1:
            problems.extend(self.sequence_split_problems())
        if self.vocab_size is not None and self.vocab_size <= 0:
            problems.append(f"vocab_size must be positive, got {self.vocab_size}")
        elif (self.vocab_size is not None and not self.should_pad_vocab and self.tensor_model_parallel_size > 1
              and self.vocab_size % self.tensor_model_parallel_size):
            problems.append(
                f"vocab_size={self.vocab_size} is not divisible by tensor_model_parallel_size="
                f"{self.tensor_model_parallel_size}; set should_pad_vocab=True to pad the embedding table")
        if self.seq_len_interpolation_factor is not None:
            if self.position_embedding_type != "rope":
                problems.append("seq_len_interpolation_factor needs position_embedding_type=rope, "
                                f"got {self.position_embedding_type}")
            elif self.seq_len_interpolation_factor <= 0:
                problems.append(f"seq_len_interpolation_factor must be positive, got {self.seq_len_interpolation_factor}")
        problems.extend(self._window_problems())
        problems.extend(self._recompute_problems())
        if self.virtual_pipeline_model_parallel_size is not None:
            vp = self.virtual_pipeline_model_parallel_size
            if not isinstance(vp, int) or vp < 1:
                problems.append(f"virtual_pipeline_model_parallel_size must be None or a positive integer, got {vp!r}")
            elif vp > 1 and self.pipeline_model_parallel_size == 1:
                problems.append("virtual_pipeline_model_parallel_size > 1 needs pipeline_model_parallel_size > 1")
            elif self.num_layers % (self.pipeline_model_parallel_size * vp):
                problems.append(
                    f"num_layers={self.num_layers} must be divisible by pipeline_model_parallel_size="
                    f"{self.pipeline_model_parallel_size} × virtual_pipeline_model_parallel_size={vp}")

    def _window_problems(self) -> list:
        window = self.window_size
        if window is None:
            return []
        if (not isinstance(window, (list, tuple)) or len(window) != 2
                or not all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window)):
            return [f"window_size={window!r} must be two integers (left, right), each >= 0 or -1 for unlimited"]
        object.__setattr__(self, "window_size", tuple(window))
        return []

    def _recompute_problems(self) -> list:
        granularity, method = self.recompute_granularity, self.recompute_method
        if granularity not in (None, "full", "selective"):
            return [f"recompute_granularity={granularity!r} is not valid; use full, selective or None"]
        if method not in (None, "uniform", "block"):
            return [f"recompute_method={method!r} is not valid; use uniform, block or None"]
        if granularity == "full" and (method is None or self.recompute_num_layers is None):
            return ["recompute_granularity=full needs recompute_method (uniform | block) and recompute_num_layers"]
        if granularity != "full" and method is not None:
            return [f"recompute_method={method!r} only applies with recompute_granularity=full"]
        return []

    def _resolve_legacy_flag(self, field_name: str, backend: Any, legacy: Optional[bool], legacy_name: str) -> AttnBackend:
        """Fold a NeMo-1 ``use_flash_attention`` flag into a backend, or raise if the two contradict.

        The deprecation warning is logged once per provider and flag, however often ``validate()`` runs.
        """
        backend = parse_attn_backend(backend, field_name)
        if legacy is None:
            return backend
        if not isinstance(legacy, bool):
            raise ValueError(f"{legacy_name} must be true or false, got {legacy!r}")
        warned = self.__dict__.setdefault("_legacy_warned", set())
        if legacy_name not in warned:
            warned.add(legacy_name)
            logger.warning(
                "%s is deprecated; use %s=%s instead",
                legacy_name, field_name, "flash" if legacy else "auto (or fused/local)",
            )
        if legacy:
            if backend not in (AttnBackend.auto, AttnBackend.flash):
                raise ValueError(
                    f"{legacy_name}=True contradicts {field_name}={backend.value}; remove one of them"
                )
            return AttnBackend.flash
        if backend == AttnBackend.flash:
            raise ValueError(f"{legacy_name}=False contradicts {field_name}=flash; remove one of them")
        return backend

    def excluded_backends(self, stack: Optional[str] = None) -> tuple:
        """Backends a legacy ``use_flash_attention=False`` takes out of ``auto`` (T5 adds its per-stack flags)."""
        return (AttnBackend.flash,) if self.use_flash_attention is False else ()

    # -- derived values ----------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.kv_channels if self.kv_channels is not None else self.hidden_size // self.num_attention_heads

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[parse_dtype(self.dtype)]

    @property
    def resolved_max_positions(self) -> int:
        """Positions the model addresses: ``max_position_embeddings``, or ``seq_length`` when that is None."""
        return self.max_position_embeddings or self.seq_length

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table: vocab_size, padded when should_pad_vocab is True."""
        if self.vocab_size is None:
            raise ValueError(
                f"{type(self).__name__}.vocab_size is not set: set it, or let a recipe take it from the tokenizer"
            )
        if not self.should_pad_vocab:
            return int(self.vocab_size)
        multiple = self.make_vocab_size_divisible_by * self.tensor_model_parallel_size
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def resolved_ffn_hidden_size(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if self.gated_linear_unit:
            return int(math.ceil(8 * self.hidden_size / 3 / 64) * 64)
        return 4 * self.hidden_size

    def transformer_config_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for megatron-core's ``TransformerConfig`` (family builders add or override some)."""
        dtype = self.torch_dtype
        use_cpu_init = (not torch.cuda.is_available()) if self.use_cpu_initialization is None else self.use_cpu_initialization
        kwargs = mcore_fields.passthrough_kwargs(self)
        kwargs.update(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.resolved_ffn_hidden_size(),
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            kv_channels=self.head_dim,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            layernorm_epsilon=self.layernorm_epsilon,
            normalization=self.normalization,
            activation_func=self.activation_func,
            gated_linear_unit=self.gated_linear_unit,
            add_bias_linear=self.add_bias_linear,
            add_qkv_bias=self.add_qkv_bias,
            softmax_scale=self.softmax_scale,
            init_method_std=self.init_method_std,
            tensor_model_parallel_size=self.tensor_model_parallel_size,
            pipeline_model_parallel_size=self.pipeline_model_parallel_size,
            sequence_parallel=self.sequence_parallel,
            params_dtype=dtype,
            pipeline_dtype=self.pipeline_dtype if self.pipeline_dtype is not None else dtype,
            bf16=dtype == torch.bfloat16,
            fp16=dtype == torch.float16,
            use_cpu_initialization=use_cpu_init,
        )
        return kwargs


def _class_defaults(cls: type) -> Dict[str, Any]:
    """Field defaults of a provider class: what the first alias resolution compares the given values with."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out
