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
import torch.nn.functional as F
from megatron.core.activations import fast_gelu

from bridge.attention.backend import AttnBackend, parse_attn_backend
from bridge.models.fields import DTYPES, parse_dtype, strict_dataclass

logger = logging.getLogger("bridge.models")

POSITION_EMBEDDINGS = ("learned_absolute", "rope", "relative", "none")
_POSITION_ALIASES = {"learned": "learned_absolute", "absolute": "learned_absolute", "rotary": "rope"}
NORMALIZATIONS = ("LayerNorm", "RMSNorm")
ACTIVATIONS = ("gelu", "fast_gelu", "swiglu", "fast_geglu", "relu", "squared_relu")


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
class TransformerProvider:
    """Knobs shared by GPT and T5. Field docstrings are the reference; defaults follow megatron-core."""

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
    """Tokenizer vocabulary size; the recipes fill it in from the tokenizer. Padded up for the embedding."""
    make_vocab_size_divisible_by: int = 128
    """The embedding table is padded to a multiple of this × tensor_model_parallel_size."""
    position_embedding_type: str = "learned_absolute"
    """learned_absolute | rope | none."""
    rotary_percent: float = 1.0
    """Fraction of each head dimension rotated by RoPE."""
    rotary_base: int = 10000
    """RoPE base frequency."""
    normalization: str = "LayerNorm"
    """LayerNorm | RMSNorm."""
    layernorm_epsilon: float = 1e-5
    """Epsilon of the normalisation layers."""
    activation: str = "gelu"
    """MLP activation: gelu | fast_gelu (megatron-core's tanh approximation, GPT-2's gelu_new) | swiglu |
    fast_geglu (gated fast_gelu: T5 v1.1's gated-gelu) | relu | squared_relu."""
    add_bias_linear: bool = True
    """Biases in the linear layers (False for Llama-style models)."""
    add_qkv_bias: bool = False
    """Biases on the query/key/value projection even when add_bias_linear is False (Qwen2-style models)."""
    softmax_scale: Optional[float] = None
    """Scale of the attention scores; None = 1/sqrt(head dimension) (T5 uses 1.0)."""
    hidden_dropout: float = 0.1
    """Dropout after the attention and MLP blocks."""
    attention_dropout: float = 0.0
    """Dropout on the attention probabilities (the flash kernel supports only 0.0)."""
    share_embeddings_and_output_weights: bool = True
    """Tie the input embedding and the output layer."""
    init_method_std: float = 0.02
    """Standard deviation of the weight initialisation."""
    dtype: str = "fp32"
    """Parameter and compute dtype: fp32 | bf16 | fp16 (a torch.dtype is accepted too)."""
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
        """Normalise spellings and check every rule; called on construction and again by ``provide()``."""
        self.dtype = parse_dtype(self.dtype, "dtype")
        self.position_embedding_type = _choice(
            self.position_embedding_type, POSITION_EMBEDDINGS, "position_embedding_type", _POSITION_ALIASES
        )
        self.normalization = _choice(self.normalization, NORMALIZATIONS, "normalization", {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"})
        self.activation = _choice(self.activation, ACTIVATIONS, "activation")
        self.attention_backend = self._resolve_legacy_flag(
            "attention_backend", self.attention_backend, self.use_flash_attention, "use_flash_attention"
        )
        for name in ("num_layers", "hidden_size", "seq_length", "tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_position_embeddings is not None and (
                self.max_position_embeddings <= 0 or (self.position_embedding_type == "learned_absolute"
                                                      and self.seq_length > self.max_position_embeddings)):
            raise ValueError(f"seq_length={self.seq_length} needs that many learned positions but "
                             f"max_position_embeddings={self.max_position_embeddings}; shorten seq_length or leave "
                             "max_position_embeddings null")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("ffn_hidden_size", "kv_channels"):  # None = derived from hidden_size / the head count
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (or null to derive it), got {getattr(self, name)}")
        if self.make_vocab_size_divisible_by <= 0:
            raise ValueError(f"make_vocab_size_divisible_by must be positive (1 = no padding), got "
                             f"{self.make_vocab_size_divisible_by}")
        if not 0.0 < self.rotary_percent <= 1.0:
            raise ValueError(f"rotary_percent must be in (0, 1] (the share of each head's dims that rotate), got "
                             f"{self.rotary_percent}")
        for name in ("rotary_base", "layernorm_epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        validate_query_groups(self.num_attention_heads, self.num_query_groups, self.tensor_model_parallel_size)
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                "set kv_channels (the head dimension) explicitly or change one of them"
            )
        if self.head_dim <= 0 or (self.position_embedding_type == "rope" and self.head_dim % 2):
            raise ValueError(f"head dimension {self.head_dim} is invalid (rope needs an even, positive head dimension)")
        if self.num_attention_heads % self.tensor_model_parallel_size != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be divisible by "
                f"tensor_model_parallel_size={self.tensor_model_parallel_size}"
            )
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ValueError("sequence_parallel=True needs tensor_model_parallel_size > 1")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {self.vocab_size}")

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
        if self.vocab_size is None:
            raise ValueError(
                f"{type(self).__name__}.vocab_size is not set: set it, or let a recipe take it from the tokenizer"
            )
        multiple = self.make_vocab_size_divisible_by * self.tensor_model_parallel_size
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def resolved_ffn_hidden_size(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if self.activation == "swiglu":
            return int(math.ceil(8 * self.hidden_size / 3 / 64) * 64)
        return 4 * self.hidden_size

    def transformer_config_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for megatron-core's ``TransformerConfig`` (family builders add or override some)."""
        activation, gated = {
            "gelu": (F.gelu, False),
            "fast_gelu": (fast_gelu, False),
            "fast_geglu": (fast_gelu, True),
            "swiglu": (F.silu, True),
            "relu": (F.relu, False),
            "squared_relu": (lambda x: F.relu(x) ** 2, False),
        }[self.activation]
        dtype = self.torch_dtype
        use_cpu_init = (not torch.cuda.is_available()) if self.use_cpu_initialization is None else self.use_cpu_initialization
        return dict(
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
            activation_func=activation,
            gated_linear_unit=gated,
            add_bias_linear=self.add_bias_linear,
            add_qkv_bias=self.add_qkv_bias,
            softmax_scale=self.softmax_scale,
            init_method_std=self.init_method_std,
            tensor_model_parallel_size=self.tensor_model_parallel_size,
            pipeline_model_parallel_size=self.pipeline_model_parallel_size,
            sequence_parallel=self.sequence_parallel,
            params_dtype=dtype,
            pipeline_dtype=dtype,
            bf16=dtype == torch.bfloat16,
            fp16=dtype == torch.float16,
            use_cpu_initialization=use_cpu_init,
            # Fusions that need Apex / TE or CUDA-only kernels stay off; our attention modules do their own work.
            masked_softmax_fusion=False,
            bias_activation_fusion=False,
            bias_dropout_fusion=False,
            gradient_accumulation_fusion=False,
            persist_layer_norm=False,
            apply_rope_fusion=False,
            attention_softmax_in_fp32=True,
        )
