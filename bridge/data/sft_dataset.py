"""Fine-tuning datasets from JSONL examples.

GPT: ``prompt`` + ``response`` + eos as one sequence; the loss covers only the response and its
eos (or, with ``answer_only_loss=False``, the prompt too). The prompt is a record key, or a prompt template
filled from the record (:mod:`bridge.data.prompt_template`). Either one example per sequence, right-padded (``packed=False``), or examples packed back to
back into sequences of ``seq_length + 1`` tokens (``packed=True``; an example never straddles two
sequences, pad fills what is left). T5: ``input`` + eos into the encoder, ``target`` + eos as the
decoder target. Examples too long for the sequence lose tokens of the template's truncation field first
(from its right or left end, as NeMo's ``truncation_field`` / ``truncation_method``), then are cut at the end
(counted and logged); examples left with no response token are dropped.
"""

from __future__ import annotations

import logging
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from bridge.data.epoch_order import EpochShuffledDataset
from bridge.data.jsonl import read_jsonl_records
from bridge.data.prompt_template import PromptPart, parse_prompt_template, render_prompt
from bridge.data.t5_dataset import encoder_decoder_sample, pad_to
from bridge.data.tokenizers import Tokenizer

logger = logging.getLogger(__name__)


class Example(NamedTuple):
    """One fine-tuning pair: prompt/input and response/target text; ``parts``: the prompt as template parts."""

    source: str
    target: str
    parts: Optional[Tuple[PromptPart, ...]] = None


def read_examples(path: str, source_key: str, target_key: str, template: Optional[str] = None,
                  truncation_field: Optional[str] = None) -> List[Example]:
    """Examples of a JSONL file: the pair read from ``source_key`` and ``target_key``, or, given a prompt
    ``template`` (ending with ``{target_key}``), the prompt filled from the record's keys."""
    if template is None:
        return [Example(r[source_key], r[target_key]) for r in read_jsonl_records(path, (source_key, target_key))]
    parsed = parse_prompt_template(template, target_key)
    if truncation_field is not None and truncation_field not in parsed.keys[:-1]:
        raise ValueError(f"data.truncation_field={truncation_field!r} is not a field of the prompt template "
                         f"{template!r} (its fields: {', '.join(parsed.keys[:-1]) or 'none'})")
    examples = []
    for record in read_jsonl_records(path, parsed.keys):
        parts = render_prompt(parsed, record, truncation_field)
        examples.append(Example("".join(p.text for p in parts), record[target_key], parts))
    return examples


def _prompt_tokens(ex: Example, tokenizer: Tokenizer) -> Tuple[List[int], List[bool]]:
    """Prompt ids and, per id, whether it may be truncated (each template part is tokenized on its own)."""
    if ex.parts is None:
        ids = tokenizer.encode(ex.source)
        return ids, [False] * len(ids)
    ids, truncatable = [], []
    for part in ex.parts:
        part_ids = tokenizer.encode(part.text)
        ids += part_ids
        truncatable += [part.truncatable] * len(part_ids)
    return ids, truncatable


def _shorten_prompt(ids: List[int], truncatable: List[bool], excess: int, from_left: bool) -> List[int]:
    """``ids`` without up to ``excess`` truncatable tokens, taken from the right (or left) end of them."""
    positions = [i for i, t in enumerate(truncatable) if t]
    drop = set(positions[:excess] if from_left else positions[len(positions) - excess:]) if excess else set()
    return [t for i, t in enumerate(ids) if i not in drop]


def _tokenized_gpt(examples: Sequence[Example], tokenizer: Tokenizer, limit: int, name: str,
                   answer_only_loss: bool = True, truncation_method: str = "right"
                   ) -> List[Tuple[List[int], List[int]]]:
    """``(ids, loss flags)`` per example, ids = prompt + response + eos, at most ``limit`` tokens."""
    out, cut, dropped = [], 0, 0
    for ex in examples:
        prompt, truncatable = _prompt_tokens(ex, tokenizer)
        response = tokenizer.encode(ex.target) + [tokenizer.eos_id]
        excess = len(prompt) + len(response) - limit
        if excess > 0 and any(truncatable):
            prompt = _shorten_prompt(prompt, truncatable, excess, truncation_method == "left")
        ids, flags = prompt + response, [0 if answer_only_loss else 1] * len(prompt) + [1] * len(response)
        if excess > 0:
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
                 packed: bool = False, name: str = "gpt", answer_only_loss: bool = True,
                 truncation_method: str = "right") -> None:
        self.seq_length, self.seed, self.pad_id = seq_length, seed, tokenizer.pad_id
        items = _tokenized_gpt(examples, tokenizer, seq_length + 1, name, answer_only_loss, truncation_method)
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
