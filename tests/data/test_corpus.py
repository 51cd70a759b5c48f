import json

from bridge.data.corpus import corpus_jsonl_paths, generate_documents, is_validation, split_documents


def test_corpus_is_deterministic_and_non_trivial():
    first, second = generate_documents(), generate_documents()
    assert first == second
    assert len(first) > 300
    total = sum(len(d.text) for d in first)
    assert total > 1_000_000, total  # a few MB of prose, not a toy
    assert len({d.name for d in first}) == len(first)
    # Real English prose: the language reference and module docs are in there.
    names = {d.name for d in first}
    assert "json" in names and any(n.startswith("reference.") for n in names)


def test_split_is_fixed_by_name_and_disjoint():
    docs = generate_documents()
    train, valid = split_documents(docs)
    assert len(train) + len(valid) == len(docs)
    assert {d.name for d in train}.isdisjoint(d.name for d in valid)
    assert 0.01 < len(valid) / len(docs) < 0.15
    assert all(is_validation(d.name) for d in valid)


def test_jsonl_cache_written_once(cache_dir):
    train_path, valid_path = corpus_jsonl_paths(cache_dir)
    with open(valid_path) as f:
        records = [json.loads(line) for line in f]
    _, valid = split_documents(generate_documents())
    assert [r["name"] for r in records] == [d.name for d in valid]
    assert [r["text"] for r in records] == [d.text for d in valid]
    # A second call finds the files and leaves them alone.
    import os
    mtime = os.path.getmtime(train_path)
    assert corpus_jsonl_paths(cache_dir) == (train_path, valid_path)
    assert os.path.getmtime(train_path) == mtime
