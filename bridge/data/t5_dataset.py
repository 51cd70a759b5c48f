"""T5 span-corruption pretraining samples over a token stream.

Each distinct sample is a window of ``L`` raw tokens (non-overlapping windows, crossing document
boundaries). ``round(L * noise_density)`` of them, in ``k = round(noise / mean_span_length)``
spans, are cut out. The encoder sees the kept tokens with sentinel ``i`` where span ``i`` was; the
decoder predicts ``sentinel_0 span_0 sentinel_1 span_1 ... eos``. ``L`` is the longest window whose
encoder input (kept + k sentinels + eos) fits ``seq_length`` and whose target (noise + k sentinels
+ eos) fits ``decoder_seq_length``; the rest is padding. Span positions are drawn from
``(seed, epoch, sample)``, so each epoch corrupts differently and a resume reproduces them.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch

from bridge.data.epoch_order import EpochShuffledDataset
from bridge.data.indexed import TokenStream
from bridge.data.tokenizers import Tokenizer


def noise_counts(raw_length: int, noise_density: float, mean_span: float) -> Tuple[int, int]:
    """``(noise tokens, noise spans)`` for a window of ``raw_length`` tokens."""
    noise = min(max(int(round(raw_length * noise_density)), 1), raw_length - 1)
    spans = max(int(round(noise / mean_span)), 1)
    # Every span needs at least one noise token and one kept token before it.
    return noise, min(spans, noise, raw_length - noise)


def raw_window_length(enc_length: int, dec_length: int, noise_density: float, mean_span: float) -> int:
    """Longest raw window whose corrupted encoder input and target fit (0 if none does)."""
    best = 0
    for raw in range(2, 2 * enc_length + 8):
        noise, spans = noise_counts(raw, noise_density, mean_span)
        if raw - noise + spans + 1 <= enc_length and noise + spans + 1 <= dec_length:
            best = raw
    return best


def _random_segments(total: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` items into ``count`` positive lengths, uniformly over all such splits."""
    if count == 1:
        return np.array([total])
    cuts = np.sort(rng.choice(np.arange(1, total), size=count - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def corrupt_spans(raw: np.ndarray, sentinels: List[int], eos_id: int, noise_density: float,
                  mean_span: float, rng: np.random.Generator) -> Tuple[List[int], List[int]]:
    """``(encoder input, target)`` of one window, both ending with eos."""
    noise, spans = noise_counts(len(raw), noise_density, mean_span)
    kept_lengths = _random_segments(len(raw) - noise, spans, rng)
    noise_lengths = _random_segments(noise, spans, rng)
    enc: List[int] = []
    target: List[int] = []
    pos = 0
    for i, (kept, cut) in enumerate(zip(kept_lengths, noise_lengths)):
        enc.extend(raw[pos:pos + kept].tolist())
        pos += kept
        enc.append(sentinels[i])
        target.append(sentinels[i])
        target.extend(raw[pos:pos + cut].tolist())
        pos += cut
    enc.append(eos_id)
    target.append(eos_id)
    return enc, target


def pad_to(ids: List[int], length: int, pad_id: int) -> torch.Tensor:
    """``ids`` right-padded with ``pad_id`` to ``length`` (int64)."""
    out = torch.full((length,), pad_id, dtype=torch.int64)
    out[:len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def encoder_decoder_sample(enc: List[int], target: List[int], tokenizer: Tokenizer, enc_length: int,
                           dec_length: int) -> Dict[str, torch.Tensor]:
    """The T5 sample dict from an encoder input and a target (eos included), padded.

    The decoder input is the target shifted right behind ``bos_id`` (teacher forcing).
    """
    if len(enc) > enc_length or len(target) > dec_length:
        raise ValueError(f"encoder input {len(enc)} / target {len(target)} tokens exceed {enc_length} / {dec_length}")
    pad = tokenizer.pad_id
    dec_in = [tokenizer.bos_id] + target[:-1]
    enc_mask = torch.zeros(enc_length, dtype=torch.bool)
    enc_mask[:len(enc)] = True
    dec_mask = torch.zeros(dec_length, dtype=torch.bool)
    dec_mask[:len(target)] = True
    return {
        "enc_tokens": pad_to(enc, enc_length, pad),  # [s_enc]
        "dec_tokens": pad_to(dec_in, dec_length, pad),  # [s_dec]
        "labels": pad_to(target, dec_length, pad),  # [s_dec]
        "loss_mask": dec_mask.to(torch.float32),  # [s_dec]
        "enc_mask": enc_mask,  # [s_enc]
        "dec_mask": dec_mask,  # [s_dec]
    }


class T5SpanCorruptionDataset(EpochShuffledDataset):
    """Map-style dataset of T5 span-corruption samples (keys in :func:`encoder_decoder_sample`)."""

    def __init__(self, stream: TokenStream, tokenizer: Tokenizer, seq_length: int, decoder_seq_length: int,
                 seed: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                 name: str = "t5") -> None:
        self.stream, self.tokenizer, self.seed = stream, tokenizer, seed
        self.enc_length, self.dec_length = seq_length, decoder_seq_length
        self.noise_density, self.mean_span = noise_density, mean_noise_span_length
        self.raw_length = raw_window_length(seq_length, decoder_seq_length, noise_density, mean_noise_span_length)
        if self.raw_length < 2:
            raise ValueError(f"T5 seq_length={seq_length} / decoder_seq_length={decoder_seq_length} leave no room "
                             f"for span corruption at noise_density={noise_density}; make them longer")
        spans = noise_counts(self.raw_length, noise_density, mean_noise_span_length)[1]
        if spans > len(tokenizer.sentinel_ids):
            raise ValueError(f"T5 windows of {self.raw_length} tokens need {spans} sentinels, the tokenizer has "
                             f"{len(tokenizer.sentinel_ids)}; shorten seq_length or raise mean_noise_span_length")
        self.num_distinct_samples = stream.num_tokens // self.raw_length
        if self.num_distinct_samples < 1:
            raise ValueError(f"{name} data has {stream.num_tokens} tokens, fewer than one T5 window of "
                             f"{self.raw_length}; use more data or a shorter seq_length")

    def sample(self, j: int, epoch: int) -> Dict[str, torch.Tensor]:
        raw = self.stream.read(j * self.raw_length, self.raw_length)
        rng = np.random.default_rng([self.seed, epoch, j])
        enc, target = corrupt_spans(raw, self.tokenizer.sentinel_ids, self.tokenizer.eos_id, self.noise_density,
                                    self.mean_span, rng)
        return encoder_decoder_sample(enc, target, self.tokenizer, self.enc_length, self.dec_length)
