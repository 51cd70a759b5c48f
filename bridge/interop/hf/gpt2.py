"""GPT-2 (``model_type: gpt2``): learned positions, LayerNorm, tanh-GELU MLP, biases, fused ``c_attn``.

Hugging Face's GPT-2 stores its linear layers as ``Conv1D`` (weights ``[in, out]``), so every matrix is
transposed; ``c_attn`` holds ``[q; k; v]`` in one matrix (after the transpose).
"""

from __future__ import annotations

from typing import Dict, List, Optional

from bridge.interop.hf.family import ConfigReader, Family
from bridge.interop.hf.mapping import QKVMap, TensorMap, VocabMap, same
from bridge.models import GPTModelProvider

_ACTIVATIONS = {"gelu_new": "fast_gelu", "gelu_pytorch_tanh": "fast_gelu", "gelu_fast": "fast_gelu",
                "gelu": "gelu", "relu": "relu"}
_EXPORT_ACTIVATIONS = {"fast_gelu": "gelu_new", "gelu": "gelu", "relu": "relu"}


def provider_fields(config: Dict):
    r = ConfigReader(config)
    for key, why in (("scale_attn_by_inverse_layer_idx", "megatron-core scales every layer's attention alike"),
                     ("add_cross_attention", "a GPT here has no cross-attention")):
        if r.get(key, False):
            raise r.unsupported(key, True, why)
    if not r.get("scale_attn_weights", True):
        raise r.unsupported("scale_attn_weights", False, "megatron-core always scales scores by 1/sqrt(head_dim)")
    hidden = r.need("n_embd")
    return GPTModelProvider, dict(
        num_layers=r.need("n_layer"), hidden_size=hidden, num_attention_heads=r.need("n_head"),
        ffn_hidden_size=r.get("n_inner", 4 * hidden), seq_length=r.need("n_positions"),
        max_position_embeddings=r.need("n_positions"),
        vocab_size=r.need("vocab_size"), make_vocab_size_divisible_by=1, should_pad_vocab=True,
        position_embedding_type="learned_absolute", normalization="LayerNorm",
        layernorm_epsilon=r.get("layer_norm_epsilon", 1e-5),
        activation=r.choice("activation_function", "gelu_new", _ACTIVATIONS), add_bias_linear=True,
        share_embeddings_and_output_weights=r.get("tie_word_embeddings", True),
        hidden_dropout=r.get("resid_pdrop", 0.1), attention_dropout=r.get("attn_pdrop", 0.1),
    )


def tensor_maps(p: GPTModelProvider, config: Optional[Dict] = None) -> List[TensorMap]:
    vocab = dict(vocab_size=p.vocab_size, padded_vocab_size=p.padded_vocab_size)
    maps: List[TensorMap] = [
        VocabMap("embedding.word_embeddings.weight", ("transformer.wte.weight",), **vocab),
        same("embedding.position_embeddings.weight", "transformer.wpe.weight"),
        same("decoder.final_layernorm.weight", "transformer.ln_f.weight"),
        same("decoder.final_layernorm.bias", "transformer.ln_f.bias"),
        VocabMap("output_layer.weight",
                 ("transformer.wte.weight",) if p.share_embeddings_and_output_weights else ("lm_head.weight",), **vocab),
    ]
    qkv = dict(num_heads=p.num_attention_heads, num_groups=p.num_attention_heads, head_dim=p.head_dim, fused_hf=True)
    for i in range(p.num_layers):
        mc, hf = f"decoder.layers.{i}.", f"transformer.h.{i}."
        maps += [
            same(mc + "input_layernorm.weight", hf + "ln_1.weight"),
            same(mc + "input_layernorm.bias", hf + "ln_1.bias"),
            QKVMap(mc + "self_attention.linear_qkv.weight", (hf + "attn.c_attn.weight",), True, **qkv),
            QKVMap(mc + "self_attention.linear_qkv.bias", (hf + "attn.c_attn.bias",), False, **qkv),
            same(mc + "self_attention.linear_proj.weight", hf + "attn.c_proj.weight", transpose=True),
            same(mc + "self_attention.linear_proj.bias", hf + "attn.c_proj.bias"),
            same(mc + "pre_mlp_layernorm.weight", hf + "ln_2.weight"),
            same(mc + "pre_mlp_layernorm.bias", hf + "ln_2.bias"),
            same(mc + "mlp.linear_fc1.weight", hf + "mlp.c_fc.weight", transpose=True),
            same(mc + "mlp.linear_fc1.bias", hf + "mlp.c_fc.bias"),
            same(mc + "mlp.linear_fc2.weight", hf + "mlp.c_proj.weight", transpose=True),
            same(mc + "mlp.linear_fc2.bias", hf + "mlp.c_proj.bias"),
        ]
    return maps


def exports(p) -> bool:
    return (isinstance(p, GPTModelProvider) and p.position_embedding_type == "learned_absolute"
            and p.normalization == "LayerNorm" and p.activation in _EXPORT_ACTIVATIONS and p.add_bias_linear
            and p.num_query_groups in (None, p.num_attention_heads) and p.kv_channels in (None, p.hidden_size // p.num_attention_heads))


def hf_config(p: GPTModelProvider, special: Dict[str, Optional[int]]):
    from bridge.interop.hf.errors import require

    transformers = require("transformers")
    return transformers.GPT2Config(
        vocab_size=p.vocab_size, n_positions=p.resolved_max_positions, n_embd=p.hidden_size, n_layer=p.num_layers,
        n_head=p.num_attention_heads, n_inner=p.resolved_ffn_hidden_size(),
        activation_function=_EXPORT_ACTIVATIONS[p.activation], layer_norm_epsilon=p.layernorm_epsilon,
        resid_pdrop=p.hidden_dropout, embd_pdrop=p.hidden_dropout, attn_pdrop=p.attention_dropout,
        tie_word_embeddings=p.share_embeddings_and_output_weights, architectures=["GPT2LMHeadModel"],
        **{k: v for k, v in special.items() if v is not None},
    )


FAMILY = Family(
    name="gpt2", model_types=("gpt2",), provider_fields=provider_fields, tensor_maps=tensor_maps,
    hf_config=hf_config, exports=exports,
    ignored=lambda p: (r"\.attn\.(masked_)?bias$",) + ((r"^lm_head\.weight$",) if p.share_embeddings_and_output_weights else ()),
)
