"""megatron-core's ``TransformerConfig`` field names on the providers, and what each one does in bridge.

Megatron Bridge users configure a model with megatron-core's own field names (``gated_linear_unit``,
``bf16``, ``recompute_granularity``, ...). Every ``TransformerConfig`` field of megatron-core 0.16 is a
provider field here, with megatron-core's default. Each field is in exactly one of these groups:

* **ours**: a field bridge declares itself (``num_layers``, ``hidden_size``, ...), same name and meaning.
* **aliases**: the megatron-core spelling of one of our fields (``gated_linear_unit`` + ``activation_func``
  for ``activation``; ``bf16`` / ``fp16`` / ``params_dtype`` for ``dtype``); see ``bridge.models.aliases``.
* **passed**: handed to megatron-core's ``TransformerConfig`` as given; the layers bridge builds read them.
* **accepted without effect**: settings of a kernel fusion that bridge's own attention modules replace
  (their softmax is always fused and in fp32); any value is accepted and passed on, and it changes nothing.
* **rejected**: features bridge cannot build in this environment. The megatron-core default is accepted
  (it changes nothing); another value is one error line saying why and what would make it work.

The generated dataclass :class:`MegatronCoreFields` is the base of the providers, so the fields are
part of the Hydra schema too (``model.recompute_granularity=full``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable, Dict, List, Optional

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

# -- reasons for the rejected groups --------------------------------------------------------------------
_TE = "needs Transformer Engine layers; bridge builds megatron-core's local (torch) layers"
_MOE = "mixture-of-experts models are out of scope: bridge builds dense GPT / T5 models"
_CP = "context parallelism is not supported by bridge's attention backends"
_NORM = "needs Apex / Transformer Engine layer norms; bridge builds torch LayerNorm / RMSNorm"
_CUDA_GRAPH = "CUDA graphs are not supported by bridge's training loop"
_ARCH = "is an architecture variant bridge's GPT / T5 layer specs do not build"
_INFERENCE = "is a megatron-core inference-engine setting; bridge generates with its own KV-cache path"
_OFFLOAD = "activation / weight offloading needs Transformer Engine"
_MTP = "multi-token prediction is not supported"


def _apex_grad_accum_reason() -> Optional[str]:
    if importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is None:
        return "needs Apex's fused_weight_gradient_mlp_cuda extension, which is not installed"
    return None


def _te_reason(what: str) -> Callable[[], Optional[str]]:
    def reason() -> Optional[str]:
        if importlib.util.find_spec("transformer_engine") is None:
            return f"needs Transformer Engine ({what}), which is not installed"
        return None
    return reason


# field -> reason (a string, or a function returning None when the environment can honour the field)
REJECTED: Dict[str, Any] = {}
for _name in ("fp8", "fp8_recipe", "fp8_param", "fp8_quantizer_factory", "fp8_margin", "fp8_interval",
              "fp8_amax_history_len", "fp8_amax_compute_algo", "fp8_wgrad", "fp8_dot_product_attention",
              "fp8_multi_head_attention", "tp_only_amax_red", "first_last_layers_bf16",
              "num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16", "fp4", "fp4_recipe", "fp4_param",
              "fp4_quantizer_factory", "activation_func_fp8_input_store", "use_kitchen", "use_kitchen_attention",
              "kitchen_attention_backend", "quant_recipe", "use_te_rng_tracker", "use_te_activation_func",
              "transformer_impl", "tp_comm_overlap", "tp_comm_bulk_wgrad", "tp_comm_bulk_dgrad",
              "tp_comm_overlap_ag", "tp_comm_overlap_rs", "tp_comm_overlap_rs_dgrad", "tp_comm_split_ag",
              "tp_comm_atomic_ag", "tp_comm_split_rs", "tp_comm_atomic_rs", "tp_comm_overlap_disable_qkv",
              "tp_comm_overlap_disable_fc1", "tp_comm_bootstrap_backend", "delay_wgrad_compute",
              "use_fused_weighted_squared_relu", "fused_single_qkv_rope"):
    REJECTED[_name] = _TE
for _name in ("num_moe_experts", "expert_model_parallel_size", "expert_tensor_parallel_size", "moe_extended_tp",
              "overlap_moe_expert_parallel_comm", "ep_overlap_early_attn_memory_release"):
    REJECTED[_name] = _MOE
for _name in ("context_parallel_size", "hierarchical_context_parallel_sizes", "max_seqlen_per_dp_cp_rank",
              "hybrid_context_parallel", "cp_comm_type"):
    REJECTED[_name] = _CP
REJECTED["layernorm_zero_centered_gamma"] = _NORM
for _name in ("enable_cuda_graph", "cuda_graph_use_single_mempool", "cuda_graph_retain_backward_graph",
              "cuda_graph_warmup_steps", "external_cuda_graph", "cuda_graph_impl", "cuda_graph_scope"):
    REJECTED[_name] = _CUDA_GRAPH
for _name in ("multi_latent_attention", "experimental_attention_variant", "dsa_indexer_n_heads",
              "dsa_indexer_head_dim", "dsa_indexer_topk", "dsa_indexer_loss_coeff", "dsa_indexer_use_sparse_loss",
              "linear_attention_freq", "linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
              "linear_num_key_heads", "linear_num_value_heads", "is_hybrid_model", "mamba_state_dim",
              "mamba_head_dim", "mamba_num_groups", "mamba_num_heads", "use_mamba_mem_eff_path",
              "heterogeneous_block_specs", "hetereogenous_dist_checkpoint", "qk_l2_norm", "qk_clip", "qk_clip_alpha",
              "qk_clip_threshold", "log_max_attention_logit", "attention_output_gate", "softmax_type",
              "no_rope_freq", "mrope_section", "glu_linear_offset", "activation_func_clamp_value",
              "window_attn_skip_freq", "init_model_with_meta_device"):
    REJECTED[_name] = _ARCH
for _name in ("flash_decode", "inference_rng_tracker", "inference_sampling_seed", "symmetric_ar_type",
              "use_inference_optimized_layers", "inference_fuse_tp_communication", "mlp_chunks_for_prefill",
              "batch_invariant_mode"):
    REJECTED[_name] = _INFERENCE
for _name in ("cpu_offloading", "cpu_offloading_num_layers", "cpu_offloading_activations", "cpu_offloading_weights",
              "cpu_offloading_double_buffering", "fine_grained_activation_offloading", "offload_modules",
              "min_offloaded_tensor_size"):
    REJECTED[_name] = _OFFLOAD
for _name in ("mtp_num_layers", "mtp_loss_scaling_factor", "mtp_standalone"):
    REJECTED[_name] = _MTP
REJECTED.update({
    "gradient_accumulation_fusion": _apex_grad_accum_reason,
    "pipeline_model_parallel_comm_backend": "bridge's pipeline schedule communicates through torch.distributed's "
                                            "default backend",
})

ACCEPTED_WITHOUT_EFFECT: Dict[str, str] = {
    "masked_softmax_fusion": "bridge's attention backends replace megatron-core's softmax module; flash and fused "
                             "always fuse it, local is the unfused reference",
    "attention_softmax_in_fp32": "bridge's attention backends always compute the softmax in fp32",
    "apply_query_key_layer_scaling": "megatron-core divides the scores by the layer number and scales the softmax "
                                     "input back, so with bridge's fp32 softmax the result is the same either way",
    "async_tensor_model_parallel_allreduce": "a megatron-core scheduling knob without effect on the result",
    "barrier_with_L1_time": "only used by megatron-core's timers",
    "config_logger_dir": "megatron-core's config logger; passed on",
    "disable_parameter_transpose_cache": "a Transformer Engine cache knob; the local layers have no such cache",
    "moe_layer_recompute": "only matters with num_moe_experts, which is rejected",
    "persist_layer_norm": "selects Apex's persistent LayerNorm kernel (same result); bridge's torch norms are used",
    "memory_efficient_layer_norm": "selects Apex's memory-efficient LayerNorm kernel (same result); bridge's torch "
                                   "norms are used",
    "apply_rope_fusion": "selects a fused RoPE kernel (same result); bridge's layers apply RoPE unfused, as Megatron "
                         "Bridge does when the fused kernel is unavailable",
}
"""Fields accepted at any value that cannot change what bridge's layers compute (each with why)."""

OURS = frozenset({
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "hidden_dropout", "attention_dropout", "layernorm_epsilon", "normalization", "add_bias_linear", "add_qkv_bias",
    "softmax_scale",
    "init_method_std", "tensor_model_parallel_size", "pipeline_model_parallel_size", "sequence_parallel",
    "attention_backend", "use_cpu_initialization",
})
"""TransformerConfig fields that the providers declare themselves (same name, same meaning)."""

ALIASES = frozenset({"gated_linear_unit", "activation_func", "bf16", "fp16", "params_dtype"})
"""megatron-core spellings of our ``activation`` and ``dtype`` (resolved in ``bridge.models.aliases``)."""

DERIVED = frozenset({"pipeline_dtype"})
"""Filled in by bridge from other fields when left at None (``pipeline_dtype`` = the model dtype)."""

# megatron-core fields with a moe_ prefix all belong to the rejected MoE group.
_PREFIX_REJECTED = (("moe_", _MOE),)


def _mcore_fields() -> List[dataclasses.Field]:
    return [f for f in dataclasses.fields(TransformerConfig) if not f.name.startswith("_")]


def mcore_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def rejection_reason(name: str) -> Optional[str]:
    """Why a non-default value of megatron-core field ``name`` cannot be honoured here (None: it can)."""
    reason = REJECTED.get(name)
    if reason is None:
        for prefix, prefix_reason in _PREFIX_REJECTED:
            if name.startswith(prefix) and name not in ACCEPTED_WITHOUT_EFFECT:
                reason = prefix_reason
    return reason() if callable(reason) else reason


def _omegaconf_friendly(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_omegaconf_friendly(v) for v in value)
    return False


def _generated_fields():
    specs = []
    for f in _mcore_fields():
        if f.name in OURS:
            continue
        default = mcore_default(f)
        # Callables, dtypes and megatron enums cannot sit in a Hydra schema: None stands for megatron-core's
        # default there (the alias resolution fills in the real object on the instance).
        if not _omegaconf_friendly(default):
            default = None
        if isinstance(default, (list, tuple)):
            specs.append((f.name, Any, dataclasses.field(default_factory=lambda d=list(default): list(d))))
        else:
            specs.append((f.name, Any, dataclasses.field(default=default)))
    return specs


MegatronCoreFields = dataclasses.make_dataclass("MegatronCoreFields", _generated_fields())
MegatronCoreFields.__doc__ = "Every megatron-core TransformerConfig field the providers do not declare themselves."
MegatronCoreFields.__module__ = __name__

GENERATED = frozenset(f.name for f in dataclasses.fields(MegatronCoreFields))

PASSED = frozenset(
    f.name for f in _mcore_fields()
    if f.name not in OURS | ALIASES | DERIVED | set(ACCEPTED_WITHOUT_EFFECT) and rejection_reason(f.name) is None
    and f.name not in REJECTED and not any(f.name.startswith(p) for p, _ in _PREFIX_REJECTED)
)
"""Fields handed to megatron-core as given (their effect is megatron-core's)."""


def handling(name: str) -> str:
    """'ours' | 'alias' | 'derived' | 'passed' | 'no effect' | 'rejected' for a TransformerConfig field."""
    if name in OURS:
        return "ours"
    if name in ALIASES:
        return "alias"
    if name in DERIVED:
        return "derived"
    if name in ACCEPTED_WITHOUT_EFFECT:
        return "no effect"
    if name in REJECTED or any(name.startswith(p) for p, _ in _PREFIX_REJECTED):
        return "rejected"
    return "passed"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    try:
        return bool(a == b)
    except Exception:  # tensors and other objects without a plain truth value
        return a is b


def unsupported_settings(provider) -> List[str]:
    """One message per rejected field that is not at megatron-core's default (or its None stand-in)."""
    problems = []
    defaults = {f.name: mcore_default(f) for f in _mcore_fields()}
    for name in sorted(GENERATED):
        if handling(name) != "rejected":
            continue
        value = getattr(provider, name)
        if value is None or _same(value, defaults[name]):
            continue
        reason = rejection_reason(name)
        if reason is not None:
            problems.append(f"{name}={value!r} is not supported: {reason} (leave it at {defaults[name]!r})")
    return problems


KERNEL_CHOICES = frozenset({"persist_layer_norm", "memory_efficient_layer_norm", "apply_rope_fusion"})
"""No-effect fields kept at megatron-core's default in the built config: the local layers refuse them."""


def passthrough_kwargs(provider) -> Dict[str, Any]:
    """TransformerConfig keyword arguments for the passed / no-effect fields not left at None."""
    out = {}
    for name in GENERATED:
        if name in KERNEL_CHOICES:
            continue
        if handling(name) in ("passed", "no effect"):
            value = getattr(provider, name)
            if value is not None:
                out[name] = value
    return out


def dtype_or_none(value: Any) -> Optional[torch.dtype]:
    return value if isinstance(value, torch.dtype) else None
