"""The T5 family: encoder-decoder, loss over the decoder targets, span corruption for pretraining."""

from __future__ import annotations

from typing import Dict

import torch

from bridge.data import DatasetKind, as_data_config, blended_datasets, finetuning_examples, pretraining_streams
from bridge.data.sft_dataset import T5FinetuneDataset
from bridge.data.t5_dataset import T5SpanCorruptionDataset
from bridge.models.family import FamilySpec, attention_flops, register_family, training_flops
from bridge.models.t5 import T5ModelProvider


def per_token_loss(model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Losses [b, s_dec]. megatron's masks are True where attention is *blocked*, the datasets' masks True
    where the token is real, hence the ``~``."""
    enc_blocked = ~batch["enc_mask"][:, None, None, :]  # [b, 1, 1, s_enc]
    dec_blocked = ~batch["dec_mask"][:, None, None, :]  # [b, 1, 1, s_dec]
    return model(batch["enc_tokens"], batch["dec_tokens"], enc_blocked, dec_blocked, enc_blocked,
                 lm_labels=batch["labels"]).float()


def tokens_per_sample(batch: Dict[str, torch.Tensor]) -> int:
    """Encoder + decoder tokens."""
    return int(batch["enc_tokens"].shape[1] + batch["dec_tokens"].shape[1])


def flops_per_sample(provider: T5ModelProvider, num_params: int) -> float:
    """Encoder tokens see ``s_enc`` keys; decoder tokens ``s_dec`` (self) + ``s_enc`` (cross) keys."""
    s_enc, s_dec = provider.seq_length, provider.resolved_decoder_seq_length
    width = provider.num_attention_heads * provider.head_dim
    attention = (attention_flops(s_enc, s_enc, provider.resolved_encoder_layers, width)
                 + attention_flops(s_dec, s_dec + s_enc, provider.resolved_decoder_layers, width))
    return training_flops(s_enc + s_dec, num_params, attention)


def build_datasets(data_cfg, tokenizer, provider: T5ModelProvider):
    """Pretraining: span corruption of ``seq_length`` encoder tokens into ``decoder_seq_length`` targets;
    fine-tuning: input/target examples (blended when ``data.weights`` is set)."""
    return blended_datasets(as_data_config(data_cfg), lambda cfg: _datasets(cfg, tokenizer, provider))


def _datasets(cfg, tokenizer, provider: T5ModelProvider):
    enc, dec = provider.seq_length, provider.resolved_decoder_seq_length
    if cfg.kind is DatasetKind.pretrain:
        streams = pretraining_streams(cfg, tokenizer)
        return tuple(T5SpanCorruptionDataset(stream, tokenizer, enc, dec, cfg.seed, cfg.noise_density,
                                             cfg.mean_noise_span_length, name)
                     for stream, name in zip(streams, ("train", "validation")))
    examples = finetuning_examples(cfg, (cfg.input_key, cfg.target_key))
    return tuple(T5FinetuneDataset(part, tokenizer, enc, dec, cfg.seed, name)
                 for part, name in zip(examples, ("train", "validation")))


T5 = register_family(FamilySpec(
    name="t5", provider_cls=T5ModelProvider, per_token_loss=per_token_loss, tokens_per_sample=tokens_per_sample,
    flops_per_sample=flops_per_sample, build_datasets=build_datasets, generates_text=False,
))
