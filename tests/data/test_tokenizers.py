import pytest

from bridge.data.tokenizers import (NUM_SENTINELS, ByteTokenizer, TokenizerConfig, TokenizerType, build_tokenizer,
                                    sentinel_name)

ROUND_TRIP = "def f(x):\n    return x ** 2  # naive café, 3.14\tend"


def _check_common(tok):
    specials = {tok.eos_id, tok.pad_id, tok.bos_id}
    assert len(tok.sentinel_ids) >= NUM_SENTINELS
    assert len(set(tok.sentinel_ids)) == len(tok.sentinel_ids)
    assert not specials & set(tok.sentinel_ids)
    assert all(0 <= i < tok.vocab_size for i in [*specials, *tok.sentinel_ids])


def test_byte_round_trip_and_layout():
    tok = build_tokenizer(TokenizerConfig())
    assert isinstance(tok, ByteTokenizer)
    ids = tok.encode(ROUND_TRIP)
    assert len(ids) == len(ROUND_TRIP.encode("utf-8"))
    assert tok.decode(ids) == ROUND_TRIP
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 3 + 256 + NUM_SENTINELS
    _check_common(tok)
    # Specials vanish from decoded text; sentinels show by name.
    assert tok.decode([tok.bos_id, *tok.encode("ab"), tok.sentinel_ids[7], tok.eos_id, tok.pad_id]) == \
        "ab" + sentinel_name(7)


def test_huggingface_round_trip(hf_tokenizer_file, tmp_path):
    tok = build_tokenizer(TokenizerConfig(type="huggingface", path=hf_tokenizer_file))
    assert tok.decode(tok.encode(ROUND_TRIP)) == ROUND_TRIP
    assert tok.eos_id == tok._tok.token_to_id("</s>")
    assert tok.pad_id == tok._tok.token_to_id("<pad>")
    # No <extra_id_N> in this vocabulary: 100 sentinels are appended past it.
    assert tok.vocab_size == tok._tok.get_vocab_size() + NUM_SENTINELS
    assert tok.sentinel_ids[0] == tok._tok.get_vocab_size()
    _check_common(tok)
    assert tok.decode(tok.encode("ab") + [tok.sentinel_ids[3]]) == "ab<extra_id_3>"
    # A directory holding tokenizer.json works too and gives the same fingerprint.
    import os
    by_dir = build_tokenizer(TokenizerConfig(type="huggingface", path=os.path.dirname(hf_tokenizer_file)))
    assert by_dir.fingerprint == tok.fingerprint


def test_sentencepiece_round_trip(sp_model_file):
    tok = build_tokenizer(TokenizerConfig(type=TokenizerType.sentencepiece, path=sp_model_file))
    text = "The quick brown fox sorts items in ascending order."
    assert tok.decode(tok.encode(text)) == text
    assert tok.eos_id == tok._sp.eos_id() and tok.pad_id == 3
    _check_common(tok)


@pytest.mark.parametrize("kind", ["huggingface", "sentencepiece"])
def test_missing_file_names_the_path(kind, tmp_path):
    missing = str(tmp_path / "nope" / "tok.file")
    with pytest.raises(FileNotFoundError, match="nope"):
        build_tokenizer(TokenizerConfig(type=kind, path=missing))


def test_file_tokenizer_without_path_and_bad_type():
    with pytest.raises(ValueError, match="needs tokenizer.path"):
        build_tokenizer(TokenizerConfig(type="sentencepiece"))
    with pytest.raises(ValueError, match="byte, huggingface, sentencepiece, gpt2_bpe, wordpiece"):
        TokenizerConfig(type="tiktoken")


def test_unknown_eos_token_is_an_error(hf_tokenizer_file):
    with pytest.raises(ValueError, match="<eot>"):
        build_tokenizer(TokenizerConfig(type="huggingface", path=hf_tokenizer_file, eos_token="<eot>"))


def test_corrupt_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read Hugging Face tokenizer"):
        build_tokenizer(TokenizerConfig(type="huggingface", path=str(bad)))


def test_check_vocab_fits():
    from bridge.data.tokenizers import check_vocab_fits

    tok = ByteTokenizer()
    check_vocab_fits(tok, 384)
    check_vocab_fits(tok, tok.vocab_size)
    with pytest.raises(ValueError, match="vocab_size=256 is smaller than the tokenizer's 359"):
        check_vocab_fits(tok, 256)
