"""Llama-style decoders (``model_type`` llama, mistral, qwen2): RoPE, RMSNorm, SwiGLU, grouped-query attention.

Hugging Face keeps q/k/v and gate/up as separate projections; megatron-core fuses them (see ``mapping``).
Both use the "rotate half" RoPE layout, so q and k need no permutation. Mistral's sliding window of w tokens
becomes megatron-core's ``window_size=(w - 1, 0)`` (a band mask, run by the local and fused backends).
"""

from __future__ import annotations

from typing import Dict, List, Optional

from bridge.interop.hf.errors import HFConversionError
from bridge.interop.hf.family import ConfigReader, Family, integral
from bridge.interop.hf.mapping import GatedMLPMap, QKVMap, TensorMap, VocabMap, same
from bridge.models import GPTModelProvider

# megatron-core's Llama 3.1 RoPE scaling has these constants built in (RotaryEmbedding._apply_scaling).
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _rope_fields(r: ConfigReader) -> Dict:
    """rotary_base / rope_scaling fields from either config spelling (transformers 4: rope_theta + rope_scaling;
    transformers 5: rope_parameters)."""
    params = dict(r.get("rope_parameters") or {})
    if not params:
        params = dict(r.get("rope_scaling") or {})
        params.setdefault("rope_theta", r.get("rope_theta", 10000.0))
    fields = dict(rotary_base=integral(r, "rope_theta", params.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "linear":
        fields["seq_len_interpolation_factor"] = float(params["factor"])
    elif kind == "llama3":
        for key, expected in _LLAMA3_ROPE.items():
            if float(params.get(key, expected)) != expected:
                raise r.unsupported(f"rope_scaling.{key}", params.get(key),
                                    f"megatron-core's llama3 RoPE scaling fixes it to {expected:g}")
        fields.update(rope_scaling=True, rope_scaling_factor=float(params["factor"]))
    elif kind != "default":
        raise r.unsupported("rope_scaling.rope_type", kind, "supported: default, linear, llama3")
    partial = params.get("partial_rotary_factor", r.get("partial_rotary_factor", 1.0))
    fields["rotary_percent"] = float(partial)
    return fields


def _window(r: ConfigReader, model_type: str) -> Optional[int]:
    if model_type == "qwen2" and not r.get("use_sliding_window", False):
        return None
    return r.get("sliding_window")


def provider_fields(config: Dict):
    r = ConfigReader(config)
    model_type = config.get("model_type")
    if r.get("hidden_act", "silu") != "silu":
        raise r.unsupported("hidden_act", r.get("hidden_act"), "Llama-style models here use silu (SwiGLU)")
    heads, hidden, context = r.need("num_attention_heads"), r.need("hidden_size"), r.need("max_position_embeddings")
    window = _window(r, model_type)
    # Hugging Face's window of w tokens lets query i see keys i - w + 1 .. i: megatron-core's (w - 1, 0).
    window_fields = dict(window_size=(int(window) - 1, 0)) if window is not None and window < context else {}
    if model_type == "qwen2":
        bias, qkv_bias = False, True
    else:
        attention_bias, mlp_bias = r.get("attention_bias", False), r.get("mlp_bias", False)
        if attention_bias != mlp_bias:
            raise r.unsupported("attention_bias", attention_bias,
                                f"with mlp_bias={mlp_bias}: megatron-core puts biases on every linear layer or none")
        bias, qkv_bias = attention_bias, False
    return GPTModelProvider, dict(
        num_layers=r.need("num_hidden_layers"), hidden_size=hidden, ffn_hidden_size=r.need("intermediate_size"),
        num_attention_heads=heads, num_query_groups=r.get("num_key_value_heads", heads),
        kv_channels=r.get("head_dim", hidden // heads), seq_length=context, max_position_embeddings=context,
        vocab_size=r.need("vocab_size"),
        make_vocab_size_divisible_by=1, should_pad_vocab=True, position_embedding_type="rope", normalization="RMSNorm",
        layernorm_epsilon=r.get("rms_norm_eps", 1e-6), activation="swiglu", add_bias_linear=bias,
        add_qkv_bias=qkv_bias, share_embeddings_and_output_weights=r.get("tie_word_embeddings", False),
        hidden_dropout=0.0, attention_dropout=r.get("attention_dropout", 0.0), **_rope_fields(r), **window_fields,
    )


def tensor_maps(p: GPTModelProvider, config: Optional[Dict] = None) -> List[TensorMap]:
    vocab = dict(vocab_size=p.vocab_size, padded_vocab_size=p.padded_vocab_size)
    maps: List[TensorMap] = [
        VocabMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), **vocab),
        same("decoder.final_layernorm.weight", "model.norm.weight"),
        VocabMap("output_layer.weight",
                 ("model.embed_tokens.weight",) if p.share_embeddings_and_output_weights else ("lm_head.weight",),
                 **vocab),
    ]
    groups = p.num_query_groups or p.num_attention_heads
    qkv = dict(num_heads=p.num_attention_heads, num_groups=groups, head_dim=p.head_dim)
    kinds = ("weight", "bias") if p.add_bias_linear else ("weight",)
    qkv_kinds = ("weight", "bias") if p.add_bias_linear or p.add_qkv_bias else ("weight",)
    for i in range(p.num_layers):
        mc, hf = f"decoder.layers.{i}.", f"model.layers.{i}."
        maps += [same(mc + "input_layernorm.weight", hf + "input_layernorm.weight"),
                 same(mc + "pre_mlp_layernorm.weight", hf + "post_attention_layernorm.weight")]
        maps += [QKVMap(mc + f"self_attention.linear_qkv.{k}", tuple(hf + f"self_attn.{x}_proj.{k}" for x in "qkv"),
                        **qkv) for k in qkv_kinds]
        for k in kinds:
            maps += [same(mc + f"self_attention.linear_proj.{k}", hf + f"self_attn.o_proj.{k}"),
                     GatedMLPMap(mc + f"mlp.linear_fc1.{k}", (hf + f"mlp.gate_proj.{k}", hf + f"mlp.up_proj.{k}")),
                     same(mc + f"mlp.linear_fc2.{k}", hf + f"mlp.down_proj.{k}")]
    return maps


def exports(p) -> bool:
    return (isinstance(p, GPTModelProvider) and p.position_embedding_type == "rope" and p.normalization == "RMSNorm"
            and p.activation == "swiglu")


def hf_config(p: GPTModelProvider, special: Dict[str, Optional[int]]):
    from bridge.interop.hf.errors import require

    transformers = require("transformers")
    rope = {"rope_type": "default", "rope_theta": float(p.rotary_base)}
    if p.rope_scaling:
        rope = {**rope, "rope_type": "llama3", "factor": p.rope_scaling_factor, **_LLAMA3_ROPE}
    elif p.seq_len_interpolation_factor is not None:
        rope = {**rope, "rope_type": "linear", "factor": p.seq_len_interpolation_factor}
    if p.rotary_percent != 1.0:
        rope["partial_rotary_factor"] = p.rotary_percent
    qwen2 = p.add_qkv_bias and not p.add_bias_linear
    common = dict(
        vocab_size=p.vocab_size, hidden_size=p.hidden_size, intermediate_size=p.resolved_ffn_hidden_size(),
        num_hidden_layers=p.num_layers, num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_query_groups or p.num_attention_heads, head_dim=p.head_dim,
        max_position_embeddings=p.resolved_max_positions, rms_norm_eps=p.layernorm_epsilon, hidden_act="silu",
        tie_word_embeddings=p.share_embeddings_and_output_weights, attention_dropout=p.attention_dropout,
        rope_parameters=rope, **{k: v for k, v in special.items() if v is not None},
    )
    window = getattr(p, "window_size", None)
    if window is not None:
        left, right = window
        if right != 0 or left < 0 or qwen2 or p.add_bias_linear:
            raise HFConversionError(f"window_size={tuple(window)} has no Hugging Face equivalent here: Mistral's "
                                    "sliding window is (w - 1, 0) on a bias-free Llama-style model")
        return transformers.MistralConfig(architectures=["MistralForCausalLM"], sliding_window=left + 1, **common)
    if qwen2:
        return transformers.Qwen2Config(architectures=["Qwen2ForCausalLM"], use_sliding_window=False, **common)
    return transformers.LlamaConfig(architectures=["LlamaForCausalLM"], attention_bias=p.add_bias_linear,
                                    mlp_bias=p.add_bias_linear, **common)


FAMILY = Family(
    name="llama", model_types=("llama", "mistral", "qwen2"), provider_fields=provider_fields,
    tensor_maps=tensor_maps, hf_config=hf_config, exports=exports,
    ignored=lambda p: (r"rotary_emb\.inv_freq$",) + ((r"^lm_head\.weight$",) if p.share_embeddings_and_output_weights else ()),
)
