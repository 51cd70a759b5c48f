"""Tiny random Hugging Face models, built with ``transformers`` and saved with ``save_pretrained``: no downloads."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.training.conftest import data_cache  # noqa: F401  (the embedded data, built once per session)

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")

VOCAB = 359
"""The byte tokenizer's vocabulary, so the fine-tuning recipe's embedded task runs on these models."""


def _gpt2(**overrides):
    cfg = dict(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
               embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**cfg, **overrides}))


def _llama(**overrides):
    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**cfg, **overrides}))


def _qwen2(**overrides):
    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=True)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**cfg, **overrides}))


CAUSAL_LM_BUILDERS = {
    "gpt2": _gpt2,
    "gpt2_untied": lambda: _gpt2(tie_word_embeddings=False),
    "llama_gqa": _llama,
    "llama_tied_mqa_llama3_rope": lambda: _llama(
        num_key_value_heads=1, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}),
    "qwen2_qkv_bias": _qwen2,
    "mistral_sliding_window": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, sliding_window=5, head_dim=16)),
}


def _t5(**overrides):
    cfg = dict(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=4,
               dropout_rate=0.0, decoder_start_token_id=0)
    return transformers.T5ForConditionalGeneration(transformers.T5Config(**{**cfg, **overrides}))


T5_BUILDERS = {
    "t5_relu_scaled": _t5,  # original T5: relu, tied head with the d_model ** -0.5 output scale
    "t5v1_1_gated_gelu": lambda: _t5(feed_forward_proj="gated-gelu", num_decoder_layers=1),
    # what transformers 5 builds for tie_word_embeddings=False: a tied head without the output scale
    "t5_gated_silu_unscaled": lambda: _t5(feed_forward_proj="gated-silu", tie_word_embeddings=False),
}


def save_hf_model(builder, directory, seed: int = 0) -> str:
    """Build a model with ``builder`` (random weights from ``seed``), give every bias a non-zero value so
    the maps are tested on it, save it to ``directory``, return the directory."""
    torch.manual_seed(seed)
    model = builder()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (name.endswith("bias") and "relative_attention_bias" not in name) or "norm" in name or "ln_" in name:
                param.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    model.save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(params=sorted(CAUSAL_LM_BUILDERS))
def causal_lm_dir(request, tmp_path):
    """(name, directory) of each tiny causal LM family variant."""
    return request.param, save_hf_model(CAUSAL_LM_BUILDERS[request.param], tmp_path / request.param)


@pytest.fixture(params=sorted(T5_BUILDERS))
def t5_dir(request, tmp_path):
    """(name, directory) of each tiny T5 variant."""
    return request.param, save_hf_model(T5_BUILDERS[request.param], tmp_path / request.param)
