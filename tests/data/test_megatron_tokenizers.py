"""Megatron's tokenizer files (what NeMo's ``library: megatron`` names) read through Hugging Face ``tokenizers``:
GPT2BPETokenizer (vocab.json + merges.txt) and BertWordPieceCase / LowerCase (vocab.txt). Tiny files, no downloads."""

from pathlib import Path

import pytest

from bridge.data import TokenizerConfig, build_tokenizer

FILES = Path(__file__).resolve().parents[1] / "recipes" / "fixtures" / "nemo1" / "tokenizers"


def test_gpt2_bpe_round_trips_and_finds_endoftext():
    tok = build_tokenizer(TokenizerConfig(type="gpt2_bpe", path=str(FILES / "gpt2_vocab.json"),
                                          merges_path=str(FILES / "gpt2_merges.txt")))
    text = "the other thing, and ünïcode"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert 264 in ids  # the merged "the" token of the fixture vocabulary
    assert tok.eos_id == 266  # <|endoftext|>
    assert tok.vocab_size == 267 + 100  # + the sentinel ids every tokenizer provides


@pytest.mark.parametrize("lower,expected", [(False, "The cats"), (True, "the cats")])
def test_wordpiece_cased_and_lower_case(lower, expected):
    tok = build_tokenizer(TokenizerConfig(type="wordpiece", path=str(FILES / "bert_vocab.txt"), lower_case=lower))
    assert tok.decode(tok.encode("The cats")) == expected
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)  # [PAD], [CLS], [SEP]


def test_missing_files_are_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GPT-2 BPE merges.txt \(tokenizer.merges_path\) not found"):
        build_tokenizer(TokenizerConfig(type="gpt2_bpe", path=str(FILES / "gpt2_vocab.json"),
                                        merges_path=str(tmp_path / "merges.txt")))
    with pytest.raises(ValueError, match=r"WordPiece vocab.txt \(tokenizer.path\) is not set"):
        build_tokenizer(TokenizerConfig(type="wordpiece"))
