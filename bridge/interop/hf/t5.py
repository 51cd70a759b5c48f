"""T5 and T5 v1.1 (``model_type: t5``): relative position bias, RMS layer norms, no biases, unscaled attention.

What maps onto megatron-core's ``T5Model``:

* positions: ``position_embedding_type=relative`` (megatron-core's bucketed relative position bias is the
  Hugging Face one: one table per stack, in the first layer there);
* attention: T5 does not scale its scores, so ``softmax_scale=1.0``; cross-attention ``k`` / ``v`` become
  megatron's ``linear_kv`` (rows ``[k; v]`` per head);
* the feed-forward block: ``relu`` / ``gelu`` (T5), ``gated-gelu`` (v1.1: gated tanh-GELU, ``fast_geglu``),
  ``gated-silu`` (``swiglu``);
* scaled decoder output: original T5 multiplies the decoder output by ``d_model ** -0.5`` before its tied LM
  head; that constant is folded into the decoder's final norm weight (exact when ``sqrt(d_model)`` is a power
  of two). A tied head without the scale (what transformers 5 builds for T5 v1.1) imports unscaled and
  exports scaled, with the weight adjusted: the same function, not the same tensors.
  megatron-core gives a tied T5 head a bias Hugging Face lacks: it is zero and frozen (``AbsentMap``).

Not expressible, one error each: an untied LM head on export when ``transformers`` always ties T5's head
(transformers 5), relative-bias models with tensor parallelism > 1 (see the provider), other activations.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from bridge.interop.hf.errors import HFConversionError, require
from bridge.interop.hf.family import ConfigReader, Family
from bridge.interop.hf.mapping import AbsentMap, GatedMLPMap, KVMap, QKVMap, ScaledMap, TensorMap, VocabMap, same
from bridge.models import T5ModelProvider

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gated-gelu": "fast_geglu", "gated-silu": "swiglu"}
_EXPORT_ACTIVATIONS = {v: k for k, v in _ACTIVATIONS.items()}
_GATED = ("fast_geglu", "swiglu")


def _scales_decoder_output(config: Dict) -> bool:
    """transformers 5 writes ``scale_decoder_outputs``; older configs scale exactly when the head is tied."""
    return bool(config.get("scale_decoder_outputs", config.get("tie_word_embeddings", True)))


def provider_fields(config: Dict):
    r = ConfigReader(config)
    if not r.get("is_encoder_decoder", True):
        raise r.unsupported("is_encoder_decoder", False, "only the encoder-decoder T5 imports (T5Model)")
    tied = r.get("tie_word_embeddings", True)
    if _scales_decoder_output(config) and not tied:
        raise r.unsupported("scale_decoder_outputs", True, "scaling the decoder output of an untied head")
    dropout = r.get("dropout_rate", 0.1)
    layers = r.need("num_layers")
    return T5ModelProvider, dict(
        num_layers=layers, encoder_num_layers=layers, decoder_num_layers=r.get("num_decoder_layers", layers),
        hidden_size=r.need("d_model"), ffn_hidden_size=r.need("d_ff"), num_attention_heads=r.need("num_heads"),
        kv_channels=r.need("d_kv"), vocab_size=r.need("vocab_size"), make_vocab_size_divisible_by=1, should_pad_vocab=True,
        seq_length=r.get("n_positions", 512), position_embedding_type="relative",
        relative_attention_num_buckets=r.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=r.get("relative_attention_max_distance", 128),
        normalization="RMSNorm", layernorm_epsilon=r.get("layer_norm_epsilon", 1e-6),
        activation=r.choice("feed_forward_proj", "relu", _ACTIVATIONS), add_bias_linear=False, softmax_scale=1.0,
        share_embeddings_and_output_weights=tied, hidden_dropout=dropout, attention_dropout=dropout,
    )


def _attention(mc: str, hf: str, p: T5ModelProvider) -> List[TensorMap]:
    return [QKVMap(mc + "linear_qkv.weight", tuple(hf + x + ".weight" for x in "qkv"), num_heads=p.num_attention_heads,
                   num_groups=p.num_attention_heads, head_dim=p.head_dim),
            same(mc + "linear_proj.weight", hf + "o.weight")]


def _mlp(mc: str, hf: str, p: T5ModelProvider) -> List[TensorMap]:
    fc1 = (GatedMLPMap(mc + "linear_fc1.weight", (hf + "wi_0.weight", hf + "wi_1.weight")) if p.activation in _GATED
           else same(mc + "linear_fc1.weight", hf + "wi.weight"))
    return [fc1, same(mc + "linear_fc2.weight", hf + "wo.weight")]


def tensor_maps(p: T5ModelProvider, config: Optional[Dict] = None) -> List[TensorMap]:
    """``config`` (on import) says whether the decoder output is scaled; an export writes a tied head scaled,
    as transformers' T5 of every version reads a tied config."""
    vocab = dict(vocab_size=p.vocab_size, padded_vocab_size=p.padded_vocab_size)
    tied = p.share_embeddings_and_output_weights
    scaled = _scales_decoder_output(config) if config is not None else tied
    bias_table = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    maps: List[TensorMap] = [
        VocabMap("embedding.word_embeddings.weight", ("shared.weight",), **vocab),
        same("encoder_relative_pos_emb.relative_attention_bias.weight", "encoder." + bias_table),
        same("decoder_relative_pos_emb.relative_attention_bias.weight", "decoder." + bias_table),
        same("encoder.final_layernorm.weight", "encoder.final_layer_norm.weight"),
        # Hugging Face scales a tied head's input by d_model ** -0.5; folded into the norm before it.
        ScaledMap("decoder.final_layernorm.weight", ("decoder.final_layer_norm.weight",),
                  factor=p.hidden_size ** -0.5 if scaled else 1.0),
        AbsentMap("lm_head.output_layer.bias", ()) if tied
        else VocabMap("lm_head.output_layer.weight", ("lm_head.weight",), **vocab),
    ]
    for i in range(p.resolved_encoder_layers):
        mc, hf = f"encoder.layers.{i}.", f"encoder.block.{i}.layer."
        maps += [same(mc + "input_layernorm.weight", hf + "0.layer_norm.weight"),
                 *_attention(mc + "self_attention.", hf + "0.SelfAttention.", p),
                 same(mc + "pre_mlp_layernorm.weight", hf + "1.layer_norm.weight"),
                 *_mlp(mc + "mlp.", hf + "1.DenseReluDense.", p)]
    for i in range(p.resolved_decoder_layers):
        mc, hf = f"decoder.layers.{i}.", f"decoder.block.{i}.layer."
        cross = hf + "1.EncDecAttention."
        maps += [same(mc + "input_layernorm.weight", hf + "0.layer_norm.weight"),
                 *_attention(mc + "self_attention.", hf + "0.SelfAttention.", p),
                 same(mc + "pre_cross_attn_layernorm.weight", hf + "1.layer_norm.weight"),
                 same(mc + "cross_attention.linear_q.weight", cross + "q.weight"),
                 KVMap(mc + "cross_attention.linear_kv.weight", (cross + "k.weight", cross + "v.weight"),
                       num_heads=p.num_attention_heads, head_dim=p.head_dim),
                 same(mc + "cross_attention.linear_proj.weight", cross + "o.weight"),
                 same(mc + "pre_mlp_layernorm.weight", hf + "2.layer_norm.weight"),
                 *_mlp(mc + "mlp.", hf + "2.DenseReluDense.", p)]
    return maps


def exports(p) -> bool:
    return (isinstance(p, T5ModelProvider) and p.position_embedding_type == "relative"
            and p.normalization == "RMSNorm" and p.activation in _EXPORT_ACTIVATIONS and not p.add_bias_linear
            and p.softmax_scale == 1.0 and p.num_query_groups in (None, p.num_attention_heads))


def hf_config(p: T5ModelProvider, special: Dict[str, Optional[int]]):
    transformers = require("transformers")
    tied = p.share_embeddings_and_output_weights
    if not tied and transformers.T5Config(tie_word_embeddings=False).tie_word_embeddings:
        raise HFConversionError(
            f"transformers {transformers.__version__} always ties T5's LM head to the embedding, but this model's "
            "output layer is separate (share_embeddings_and_output_weights=False): it cannot be exported")
    ids = {k: v for k, v in special.items() if v is not None}
    ids.setdefault("decoder_start_token_id", special.get("pad_token_id") or 0)
    return transformers.T5Config(
        vocab_size=p.vocab_size, d_model=p.hidden_size, d_kv=p.head_dim, d_ff=p.resolved_ffn_hidden_size(),
        num_layers=p.resolved_encoder_layers, num_decoder_layers=p.resolved_decoder_layers,
        num_heads=p.num_attention_heads, relative_attention_num_buckets=p.relative_attention_num_buckets,
        relative_attention_max_distance=p.relative_attention_max_distance, dropout_rate=p.hidden_dropout,
        layer_norm_epsilon=p.layernorm_epsilon, feed_forward_proj=_EXPORT_ACTIVATIONS[p.activation],
        tie_word_embeddings=tied, is_encoder_decoder=True, architectures=["T5ForConditionalGeneration"], **ids)


FAMILY = Family(
    name="t5", model_types=("t5",), provider_fields=provider_fields, tensor_maps=tensor_maps, hf_config=hf_config,
    exports=exports,
    ignored=lambda p: (r"^(encoder|decoder)\.embed_tokens\.weight$",) + ((r"^lm_head\.weight$",) if p.share_embeddings_and_output_weights else ()),
)
