"""Span-corruption invariants: the original window comes back from encoder input + labels."""

import numpy as np
import pytest

from bridge.data import DataConfig, TokenizerConfig, build_tokenizer
from bridge.data.t5_dataset import corrupt_spans, noise_counts, raw_window_length
from tests.data.family_datasets import family_datasets


def _reconstruct(enc, labels, sentinels, eos):
    """Replace each sentinel in the encoder input by the tokens that follow it in the labels."""
    spans, current = {}, None
    for t in labels:
        if t == eos:
            break
        if t in sentinels:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    out = []
    for t in enc:
        if t == eos:
            break
        out.extend(spans[t] if t in sentinels else [t])
    return out


def test_corrupt_spans_round_trip_and_density():
    tok = build_tokenizer(TokenizerConfig())
    rng = np.random.default_rng(0)
    for length in (10, 57, 400):
        raw = rng.integers(3, 259, size=length)
        enc, target = corrupt_spans(raw, tok.sentinel_ids, tok.eos_id, 0.15, 3.0, rng)
        assert _reconstruct(enc, target, set(tok.sentinel_ids), tok.eos_id) == raw.tolist()
        noise, spans = noise_counts(length, 0.15, 3.0)
        assert len(target) == noise + spans + 1 and len(enc) == length - noise + spans + 1
        used = [t for t in enc if t in set(tok.sentinel_ids)]
        assert used == tok.sentinel_ids[:spans]  # in order, each once


def test_window_length_fits_both_sides():
    for enc_len, dec_len in ((512, 114), (128, 32), (64, 8)):
        raw = raw_window_length(enc_len, dec_len, 0.15, 3.0)
        noise, spans = noise_counts(raw, 0.15, 3.0)
        assert raw - noise + spans + 1 <= enc_len and noise + spans + 1 <= dec_len
        noise2, spans2 = noise_counts(raw + 1, 0.15, 3.0)
        assert raw + 1 - noise2 + spans2 + 1 > enc_len or noise2 + spans2 + 1 > dec_len or raw + 1 >= 2 * enc_len


def test_t5_samples_from_embedded_corpus(cache_dir):
    tok = build_tokenizer(TokenizerConfig())
    train, valid = family_datasets(DataConfig(cache_dir=cache_dir), tok, "t5", 128, 32)
    sentinels, eos = set(tok.sentinel_ids), tok.eos_id
    original = train.stream
    for index in (0, 5, len(train) + 5):  # the last one is in epoch 1: new order, new noise
        s = train[index]
        assert s["enc_tokens"].shape == (128,) and s["dec_tokens"].shape == (32,)
        enc, labels = s["enc_tokens"].tolist(), s["labels"].tolist()
        j = int(train.order(index // len(train))[index % len(train)])
        expected = original.read(j * train.raw_length, train.raw_length).tolist()
        assert _reconstruct(enc, labels, sentinels, eos) == expected
        # Decoder input is the target shifted right behind bos; masks mark real tokens.
        n_dec = int(s["dec_mask"].sum())
        assert s["dec_tokens"][0] == tok.bos_id and s["dec_tokens"][1:n_dec].tolist() == labels[:n_dec - 1]
        assert labels[n_dec - 1] == eos and s["loss_mask"].tolist() == s["dec_mask"].float().tolist()
        n_enc = int(s["enc_mask"].sum())
        assert enc[n_enc - 1] == eos and all(t == tok.pad_id for t in enc[n_enc:])
    # Same index, same sample (resume); epoch 1 corrupts the same window differently.
    assert train[5]["enc_tokens"].tolist() == train[5]["enc_tokens"].tolist()
    j = int(train.order(0)[0])
    k = int(np.nonzero(train.order(1) == j)[0][0]) + len(train)
    assert train[k]["enc_tokens"].tolist() != train[0]["enc_tokens"].tolist()


def test_too_short_sequences_are_an_error(cache_dir):
    tok = build_tokenizer(TokenizerConfig())
    with pytest.raises(ValueError, match="no room"):
        family_datasets(DataConfig(cache_dir=cache_dir), tok, "t5", 4, 2)
