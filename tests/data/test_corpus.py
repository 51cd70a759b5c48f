import json
import os
import subprocess
import sys

import pytest

from bridge.data.corpus import corpus_jsonl_paths, generate_documents, is_validation, split_documents

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def docs():
    return generate_documents()


def test_corpus_is_deterministic_and_non_trivial(docs):
    first, second = docs, generate_documents()
    assert first == second
    assert len(first) > 300
    total = sum(len(d.text) for d in first)
    assert total > 1_000_000, total  # a few MB of prose, not a toy
    assert len({d.name for d in first}) == len(first)
    # Real English prose: the language reference and module docs are in there.
    names = {d.name for d in first}
    assert "json" in names and any(n.startswith("reference.") for n in names)


def test_split_is_fixed_by_name_and_disjoint(docs):
    train, valid = split_documents(docs)
    assert len(train) + len(valid) == len(docs)
    assert {d.name for d in train}.isdisjoint(d.name for d in valid)
    assert 0.01 < len(valid) / len(docs) < 0.15
    assert all(is_validation(d.name) for d in valid)


def test_jsonl_cache_written_once(cache_dir, docs):
    train_path, valid_path = corpus_jsonl_paths(cache_dir)
    with open(valid_path) as f:
        records = [json.loads(line) for line in f]
    _, valid = split_documents(docs)
    assert [r["name"] for r in records] == [d.name for d in valid]
    assert [r["text"] for r in records] == [d.text for d in valid]
    # A second call finds the files and leaves them alone.
    mtime = os.path.getmtime(train_path)
    assert corpus_jsonl_paths(cache_dir) == (train_path, valid_path)
    assert os.path.getmtime(train_path) == mtime


def test_concurrent_ranks_get_one_complete_cache(tmp_path):
    """Two processes (as under torchrun) ask for the embedded indexed dataset at the same time."""
    code = ("import sys; from bridge.data import build_tokenizer, TokenizerConfig, embedded_corpus_prefixes; "
            "print(embedded_corpus_prefixes(build_tokenizer(TokenizerConfig()), sys.argv[1])[0])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] and os.path.isfile(outputs[0] + ".idx")
    leftovers = [n for _, _, names in os.walk(tmp_path) for n in names if ".tmp" in n]
    assert leftovers == []
