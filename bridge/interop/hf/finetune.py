"""``checkpoint.pretrained_checkpoint=hf:<dir>``: fine-tune starting from a Hugging Face directory.

The directory's config.json decides the model's architecture (the recipe's ``model`` node keeps only the
choices of the run: attention backend, dtype, parallel layout, dropout, initialisation); its weights are
loaded after the model is built, on every tensor-/pipeline-parallel rank. Any other value of
``pretrained_checkpoint`` is a checkpoint of this project, loaded as before.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from bridge.interop.hf.errors import HFConversionError
from bridge.interop.hf.importer import provider_from_hf

logger = logging.getLogger("bridge.interop")

HF_PREFIX = "hf:"

RUN_CHOICES = ("attention_backend", "use_flash_attention", "deterministic_attention", "dtype",
               "tensor_model_parallel_size", "pipeline_model_parallel_size", "sequence_parallel",
               "use_cpu_initialization", "init_method_std", "hidden_dropout", "attention_dropout",
               "encoder_attention_backend", "decoder_attention_backend", "encoder", "decoder",
               "seq_length", "decoder_seq_length")
"""Provider fields the recipe keeps when the architecture comes from a Hugging Face directory (the sample
lengths are the run's; the directory's context length is kept as ``max_position_embeddings``)."""


def hf_directory(reference: Optional[str]) -> Optional[str]:
    """The directory of an ``hf:<dir>`` reference; None for anything else."""
    if not reference or not str(reference).startswith(HF_PREFIX):
        return None
    directory = str(reference)[len(HF_PREFIX):]
    if not directory:
        raise HFConversionError("checkpoint.pretrained_checkpoint=hf: needs a directory: hf:<path to a Hugging "
                                "Face model directory>")
    return directory


def adopt_hf_architecture(run, tokenizer) -> None:
    """When ``run.checkpoint.pretrained_checkpoint`` is ``hf:<dir>``, replace ``run.model`` by the provider of
    ``<dir>``'s config.json (keeping the run's :data:`RUN_CHOICES`); otherwise do nothing. The directory's
    context length becomes ``model.max_position_embeddings``; ``model.seq_length`` stays the run's sample length.

    ``tokenizer`` is the run's: when it only adds ids past the checkpoint's vocabulary (the 100 T5 sentinels
    bridge appends to a tokenizer that has none), the embedding grows by zero rows to hold them.
    """
    directory = hf_directory(run.checkpoint.pretrained_checkpoint)
    if directory is None:
        return
    current = run.model
    kept = {name: getattr(current, name) for name in RUN_CHOICES if hasattr(current, name)}
    provider = provider_from_hf(directory)
    if type(provider) is not type(current):
        raise HFConversionError(f"{directory} holds a {type(provider).__name__.replace('ModelProvider', '')} model but "
                                f"this run trains family={run.family}; use the matching recipe")
    if provider.position_embedding_type == "learned_absolute" and current.seq_length > provider.resolved_max_positions:
        raise HFConversionError(f"model.seq_length={current.seq_length} is longer than {directory}'s "
                                f"{provider.resolved_max_positions} learned positions; set model.seq_length <= "
                                f"{provider.resolved_max_positions}")
    provider = type(provider)(**{**_fields(provider), **{k: v for k, v in kept.items() if k in _fields(provider)}})
    if tokenizer.text_vocab_size <= provider.vocab_size < tokenizer.vocab_size:
        logger.info("%s: %d ids the tokenizer adds past its vocabulary of %d get zero embedding rows", directory,
                    tokenizer.vocab_size - provider.vocab_size, provider.vocab_size)
        provider.vocab_size = tokenizer.vocab_size
    tokenizer_cfg = run.tokenizer
    if str(getattr(tokenizer_cfg.type, "value", tokenizer_cfg.type)) == "byte" and os.path.isfile(
            os.path.join(directory, "tokenizer.json")):
        logger.warning("the run tokenizes with the built-in byte tokenizer; to use %s's own tokenizer set "
                       "tokenizer.type=huggingface tokenizer.path=%s", directory, os.path.join(directory, "tokenizer.json"))
    run.model = provider


def _fields(provider) -> dict:
    import dataclasses

    return {f.name: getattr(provider, f.name) for f in dataclasses.fields(provider)}
