"""Provider code as Megatron Bridge's documentation writes it (GPT, Llama-style, T5), run unchanged on bridge.

Each example sets the fields the Megatron Bridge model providers set (megatron-core names, fusion flags and
all), changes some after construction, calls ``finalize()`` and builds the model with ``provide()`` or
``provide_distributed_model()``; only the sizes are tiny so the CPU can build them.
"""

import torch
import torch.nn.functional as F
from megatron.core.distributed import DistributedDataParallelConfig

from bridge.models import GPTModelProvider, T5ModelProvider


def test_gpt_example():
    provider = GPTModelProvider(
        num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, seq_length=32,
        vocab_size=1000, make_vocab_size_divisible_by=128, should_pad_vocab=True,
        bf16=False, params_dtype=torch.float32, masked_softmax_fusion=True, bias_activation_fusion=True,
        bias_dropout_fusion=True, persist_layer_norm=True, attention_softmax_in_fp32=False,
        apply_query_key_layer_scaling=False, share_embeddings_and_output_weights=True,
        position_embedding_type="learned_absolute", attention_backend="local",
    )
    provider.hidden_dropout = 0.0
    provider.finalize()
    model = provider.provide(pre_process=None, post_process=None, vp_stage=None)
    assert model.embedding.word_embeddings.weight.shape[0] == 1024
    assert model.config.attention_dropout == 0.1  # megatron-core's default, as in Megatron Bridge
    tokens = torch.randint(0, 1000, (2, 16))
    assert model(tokens, torch.arange(16).expand(2, 16), None).shape == (2, 16, 1024)


def test_llama_style_example():
    provider = GPTModelProvider(
        normalization="RMSNorm", activation_func=F.silu, gated_linear_unit=True, position_embedding_type="rope",
        add_bias_linear=False, seq_length=64, attention_dropout=0.0, hidden_dropout=0.0,
        share_embeddings_and_output_weights=False, bias_activation_fusion=True, masked_softmax_fusion=True,
        persist_layer_norm=True, bias_dropout_fusion=True, apply_rope_fusion=True, num_query_groups=2,
        init_method_std=0.02, layernorm_epsilon=1e-5, rotary_base=500000, kv_channels=16,
        num_layers=2, hidden_size=64, ffn_hidden_size=192, num_attention_heads=4, vocab_size=512,
    )
    provider.finalize()
    assert provider.activation == "swiglu"
    chunks = provider.provide_distributed_model(ddp_config=DistributedDataParallelConfig(), wrap_with_ddp=False)
    model = chunks[0]
    assert model.config.gated_linear_unit and model.config.activation_func is F.silu
    assert model.decoder.layers[0].mlp.linear_fc1.weight.shape[0] == 2 * 192
    tokens = torch.randint(0, 512, (1, 8))
    assert torch.isfinite(model(tokens, torch.arange(8)[None], None)).all()


def test_t5_example():
    provider = T5ModelProvider(
        num_layers=2, encoder_num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
        kv_channels=16, seq_length=32, seq_length_dec=16, vocab_size=300, should_pad_vocab=True,
        position_embedding_type="learned_absolute", bias_activation_fusion=True, masked_softmax_fusion=True,
        persist_layer_norm=True, bias_dropout_fusion=True, attention_softmax_in_fp32=False,
        share_embeddings_and_output_weights=True, attention_backend="local",
    )
    provider.finalize()
    model = provider.provide()
    assert provider.decoder_seq_length == 16
    enc, dec = torch.randint(0, 300, (1, 12)), torch.randint(0, 300, (1, 6))
    with torch.no_grad():
        assert model.eval()(enc, dec, None, None, None).shape == (1, 6, 384)
