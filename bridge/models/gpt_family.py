"""The GPT family: decoder-only, next-token loss over one sequence, text generation."""

from __future__ import annotations

from typing import Dict

import torch

from bridge.data import DatasetKind, as_data_config, blended_datasets, finetuning_examples, pretraining_streams
from bridge.data.gpt_dataset import GPTPretrainingDataset
from bridge.data.sft_dataset import GPTFinetuneDataset
from bridge.models.family import FamilySpec, attention_flops, register_family, training_flops
from bridge.models.gpt import GPTModelProvider


def per_token_loss(model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(tokens, position_ids, None, labels=labels)``: losses [b, s] (causal layers, no mask needed)."""
    return model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"]).float()


def tokens_per_sample(batch: Dict[str, torch.Tensor]) -> int:
    return int(batch["tokens"].shape[1])


def flops_per_sample(provider: GPTModelProvider, num_params: int) -> float:
    s = provider.seq_length
    width = provider.num_attention_heads * provider.head_dim
    return training_flops(s, num_params, attention_flops(s, s, provider.num_layers, width))


def build_datasets(data_cfg, tokenizer, provider: GPTModelProvider):
    """Pretraining: next-token windows of ``seq_length``; fine-tuning: prompt/response examples (blended when
    ``data.weights`` is set)."""
    return blended_datasets(as_data_config(data_cfg), lambda cfg: _datasets(cfg, tokenizer, provider))


def _datasets(cfg, tokenizer, provider: GPTModelProvider):
    seq_length = provider.seq_length
    if cfg.kind is DatasetKind.pretrain:
        train, valid = pretraining_streams(cfg, tokenizer)
        return (GPTPretrainingDataset(train, seq_length, cfg.seed, "train"),
                GPTPretrainingDataset(valid, seq_length, cfg.seed, "validation"))
    train, valid = finetuning_examples(cfg, (cfg.prompt_key, cfg.response_key), template=True)
    loss = dict(answer_only_loss=cfg.answer_only_loss, truncation_method=cfg.truncation_method)
    return (GPTFinetuneDataset(train, tokenizer, seq_length, cfg.seed, cfg.packed, "train", **loss),
            GPTFinetuneDataset(valid, tokenizer, seq_length, cfg.seed, cfg.packed, "validation", **loss))


GPT = register_family(FamilySpec(
    name="gpt", provider_cls=GPTModelProvider, per_token_loss=per_token_loss, tokens_per_sample=tokens_per_sample,
    flops_per_sample=flops_per_sample, build_datasets=build_datasets, generates_text=True,
))
