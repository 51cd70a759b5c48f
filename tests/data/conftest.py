"""Shared fixtures: a per-session cache folder for generated data, tiny trained tokenizers."""

import os

import pytest

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Return a new list containing all items from the iterable in ascending order.",
    "A custom key function can be supplied to customize the sort order.",
    "Unicode works too: naive cafe, 3.14, tabs\tand newlines\n.",
] * 20


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache folder for the whole session, so the embedded corpus is built once."""
    return str(tmp_path_factory.mktemp("bridge_cache"))


@pytest.fixture(scope="session")
def hf_tokenizer_file(tmp_path_factory):
    """A byte-level BPE tokenizer.json trained here with the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SAMPLE_TEXTS, trainer)
    path = os.path.join(str(tmp_path_factory.mktemp("hf")), "tokenizer.json")
    tok.save(path)
    return path


@pytest.fixture(scope="session")
def sp_model_file(tmp_path_factory):
    """A sentencepiece BPE model trained here (identity normalisation, so text round-trips)."""
    import sentencepiece

    prefix = os.path.join(str(tmp_path_factory.mktemp("sp")), "tiny")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SAMPLE_TEXTS), model_prefix=prefix, vocab_size=400, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_by_whitespace=True, pad_id=3, minloglevel=2)
    return prefix + ".model"
