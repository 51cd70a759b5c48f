"""JSONL -> scripts/preprocess_data.py -> .bin/.idx -> datasets give the expected tokens."""

import importlib.util
import json
import os

import numpy as np
import pytest

from bridge.data import DataConfig, TokenizerConfig, build_tokenizer, open_indexed_dataset
from tests.data.family_datasets import family_datasets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = [f"document number {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(40)]


def _preprocess_main():
    script = os.path.join(REPO, "scripts", "preprocess_data.py")
    spec = importlib.util.spec_from_file_location("preprocess_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    source = folder / "docs.jsonl"
    source.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    out = str(folder / "docs")
    assert _preprocess_main()(["--input", str(source), "--output-prefix", out, "--json-key", "body"]) == 0
    return out


def test_indexed_dataset_holds_documents_with_eod(prefix):
    tok = build_tokenizer(TokenizerConfig())
    dataset = open_indexed_dataset(prefix, tok)
    assert len(dataset) == len(DOCS)
    for i in (0, 13, len(DOCS) - 1):
        assert dataset[i].tolist() == tok.encode(DOCS[i]) + [tok.eos_id]
    assert dataset[0].dtype == np.uint16  # 359 ids fit in two bytes


def test_gpt_dataset_windows_cover_the_stream(prefix):
    tok = build_tokenizer(TokenizerConfig())
    seq = 32
    cfg = DataConfig(paths=[prefix], split="3,1", seed=7)
    train, valid = family_datasets(cfg, tok, "gpt", seq)
    # Contiguous document split 3:1 -> the first 30 documents train, the last 10 validate.
    stream = [t for d in DOCS[:30] for t in tok.encode(d) + [tok.eos_id]]
    assert len(train) == (len(stream) - 1) // seq
    order = train.order(0)
    for position in (0, 1, len(train) - 1):
        sample = train[position]
        j = int(order[position])
        assert sample["tokens"].tolist() == stream[j * seq:(j + 1) * seq]
        assert sample["labels"].tolist() == stream[j * seq + 1:(j + 1) * seq + 1]
        assert sample["loss_mask"].sum().item() == seq
        assert sample["position_ids"].tolist() == list(range(seq))
    valid_stream = [t for d in DOCS[30:] for t in tok.encode(d) + [tok.eos_id]]
    assert len(valid) == (len(valid_stream) - 1) // seq


def test_valid_paths_and_missing_prefix(prefix, tmp_path):
    tok = build_tokenizer(TokenizerConfig())
    train, valid = family_datasets(DataConfig(paths=[prefix], valid_paths=[prefix]), tok, "gpt", 16)
    assert len(train) == len(valid)
    with pytest.raises(FileNotFoundError, match="missing"):
        family_datasets(DataConfig(paths=[str(tmp_path / "absent")]), tok, "gpt", 16)


def test_reading_with_another_tokenizer_is_an_error(prefix, hf_tokenizer_file):
    other = build_tokenizer(TokenizerConfig(type="huggingface", path=hf_tokenizer_file))
    with pytest.raises(ValueError, match="preprocess it again"):
        open_indexed_dataset(prefix, other)


def test_preprocess_with_huggingface_tokenizer(tmp_path, hf_tokenizer_file):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:5]))
    out = str(tmp_path / "hf")
    main = _preprocess_main()
    assert main(["--input", str(source), "--output-prefix", out, "--tokenizer-type", "huggingface",
                 "--tokenizer-path", hf_tokenizer_file]) == 0
    tok = build_tokenizer(TokenizerConfig(type="huggingface", path=hf_tokenizer_file))
    dataset = open_indexed_dataset(out, tok)  # keep it alive: its arrays view its memory map
    assert dataset[2].tolist() == tok.encode(DOCS[2]) + [tok.eos_id]


def test_preprocess_errors_exit_nonzero(tmp_path, capsys):
    main = _preprocess_main()
    assert main(["--input", str(tmp_path / "none.jsonl"), "--output-prefix", str(tmp_path / "x")]) == 1
    assert "none.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    assert main(["--input", str(bad), "--output-prefix", str(tmp_path / "x")]) == 1
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "x.idx"))
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]  # no half-written temporary files either


def test_embedded_default_is_an_indexed_dataset(cache_dir):
    tok = build_tokenizer(TokenizerConfig())
    train, valid = family_datasets(DataConfig(cache_dir=cache_dir), tok, "gpt", 128)
    assert len(train) > 10_000 and len(valid) > 100
    text = tok.decode(train[0]["tokens"].tolist())
    assert sum(c.isalpha() for c in text) > 60  # prose, not noise
    assert os.path.exists(os.path.join(cache_dir, "embedded_corpus"))


def test_a_third_split_weight_holds_documents_out(prefix):
    tok = build_tokenizer(TokenizerConfig())
    train, valid = family_datasets(DataConfig(paths=[prefix], split="6,2,2", seed=7), tok, "gpt", 32)
    train_stream = [t for d in DOCS[:24] for t in tok.encode(d) + [tok.eos_id]]  # 60% of the 40 documents
    valid_stream = [t for d in DOCS[24:32] for t in tok.encode(d) + [tok.eos_id]]  # the next 20%; 20% unread
    assert len(train) == (len(train_stream) - 1) // 32 and len(valid) == (len(valid_stream) - 1) // 32
    with pytest.raises(ValueError, match=r"data.split='6,2,2,1' is not valid"):
        DataConfig(split="6,2,2,1")


def test_the_script_prints_only_its_result(tmp_path):
    """No megatron-core notices about Transformer Engine / Apex before the one result line (README command)."""
    import subprocess
    import sys

    source = tmp_path / "docs.jsonl"
    source.write_text('{"text": "hello world"}\n{"text": "second doc"}\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "preprocess_data.py"), "--input", str(source),
                           "--output-prefix", str(tmp_path / "data" / "docs")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and proc.stdout.startswith("wrote "), (proc.stdout, proc.stderr)
