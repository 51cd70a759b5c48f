"""Fine-tuning datasets from JSONL examples.

GPT: ``prompt`` + ``response`` + eos as one sequence; the loss covers only the response and its
eos. Either one example per sequence, right-padded (``packed=False``), or examples packed back to
back into sequences of ``seq_length + 1`` tokens (``packed=True``; an example never straddles two
sequences, pad fills what is left). T5: ``input`` + eos into the encoder, ``target`` + eos as the
decoder target. Examples too long for the sequence are cut at the end (counted and logged);
examples left with no response token are dropped.
"""

from __future__ import annotations

import logging
from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch

from bridge.data.epoch_order import EpochShuffledDataset
from bridge.data.jsonl import read_jsonl_records
from bridge.data.t5_dataset import encoder_decoder_sample, pad_to
from bridge.data.tokenizers import Tokenizer

logger = logging.getLogger(__name__)


class Example(NamedTuple):
    """One fine-tuning pair: prompt/input and response/target text."""

    source: str
    target: str


def read_examples(path: str, source_key: str, target_key: str) -> List[Example]:
    """Examples of a JSONL file, the pair read from ``source_key`` and ``target_key``."""
    return [Example(r[source_key], r[target_key]) for r in read_jsonl_records(path, (source_key, target_key))]


def _tokenized_gpt(examples: Sequence[Example], tokenizer: Tokenizer, limit: int, name: str
                   ) -> List[Tuple[List[int], List[int]]]:
    """``(ids, loss flags)`` per example, ids = prompt + response + eos, at most ``limit`` tokens."""
    out, cut, dropped = [], 0, 0
    for ex in examples:
        prompt, response = tokenizer.encode(ex.source), tokenizer.encode(ex.target) + [tokenizer.eos_id]
        ids, flags = prompt + response, [0] * len(prompt) + [1] * len(response)
        if len(ids) > limit:
            ids, flags, cut = ids[:limit], flags[:limit], cut + 1
        # flags[0] never counts: the first token is never a label.
        if sum(flags[1:]) == 0:
            dropped += 1
            continue
        out.append((ids, flags))
    if cut or dropped:
        logger.warning("%s fine-tuning data: %d example(s) cut to %d tokens, %d dropped (no response left)",
                       name, cut, limit, dropped)
    if not out:
        raise ValueError(f"{name} fine-tuning data has no usable example (of {len(examples)}); "
                         f"prompts fill all {limit} tokens, raise seq_length")
    return out


def _pack(items: List[Tuple[List[int], List[int]]], capacity: int) -> List[Tuple[List[int], List[int]]]:
    """Greedy packing in file order: start a new sequence when the next example does not fit."""
    packed: List[Tuple[List[int], List[int]]] = []
    ids: List[int] = []
    flags: List[int] = []
    for item_ids, item_flags in items:
        if ids and len(ids) + len(item_ids) > capacity:
            packed.append((ids, flags))
            ids, flags = [], []
        ids, flags = ids + item_ids, flags + item_flags
    packed.append((ids, flags))
    return packed


class GPTFinetuneDataset(EpochShuffledDataset):
    """GPT samples ``tokens``/``labels``/``position_ids`` (int64 [s]) and ``loss_mask`` (float32 [s])."""

    def __init__(self, examples: Sequence[Example], tokenizer: Tokenizer, seq_length: int, seed: int,
                 packed: bool = False, name: str = "gpt") -> None:
        self.seq_length, self.seed, self.pad_id = seq_length, seed, tokenizer.pad_id
        items = _tokenized_gpt(examples, tokenizer, seq_length + 1, name)
        self.sequences = _pack(items, seq_length + 1) if packed else items
        self.num_distinct_samples = len(self.sequences)

    def sample(self, j: int, epoch: int) -> Dict[str, torch.Tensor]:
        ids, flags = self.sequences[j]
        s = self.seq_length
        # Labels are the next token; a label is trained on when it is a response token.
        loss_mask = torch.zeros(s, dtype=torch.float32)
        loss_mask[:len(flags) - 1] = torch.tensor(flags[1:], dtype=torch.float32)
        return {
            "tokens": pad_to(ids[:-1], s, self.pad_id),  # [s]
            "labels": pad_to(ids[1:], s, self.pad_id),  # [s]
            "loss_mask": loss_mask,  # [s]
            "position_ids": torch.arange(s, dtype=torch.int64),
        }


class T5FinetuneDataset(EpochShuffledDataset):
    """T5 samples with the keys of :func:`bridge.data.t5_dataset.encoder_decoder_sample`."""

    def __init__(self, examples: Sequence[Example], tokenizer: Tokenizer, seq_length: int,
                 decoder_seq_length: int, seed: int, name: str = "t5") -> None:
        if not examples:
            raise ValueError(f"{name} fine-tuning data has no example")
        self.tokenizer, self.seed = tokenizer, seed
        self.enc_length, self.dec_length = seq_length, decoder_seq_length
        self.pairs = []
        cut = 0
        for ex in examples:
            enc, target = tokenizer.encode(ex.source), tokenizer.encode(ex.target)
            if len(enc) >= seq_length or len(target) >= decoder_seq_length:
                cut += 1
            # Cut before appending eos so that every sequence still ends with it.
            self.pairs.append((enc[:seq_length - 1] + [tokenizer.eos_id],
                               target[:decoder_seq_length - 1] + [tokenizer.eos_id]))
        if cut:
            logger.warning("%s fine-tuning data: %d example(s) cut to %d / %d tokens", name, cut, seq_length,
                           decoder_seq_length)
        self.num_distinct_samples = len(self.pairs)

    def sample(self, j: int, epoch: int) -> Dict[str, torch.Tensor]:
        enc, target = self.pairs[j]
        return encoder_decoder_sample(enc, target, self.tokenizer, self.enc_length, self.dec_length)
