from bridge.data.finetune_task import (NUM_TRAIN, NUM_VALID, TaskExample, embedded_task_paths, evaluate_accuracy,
                                       generate_examples, read_task_examples)


def test_task_is_deterministic_disjoint_and_correct():
    train, valid = generate_examples()
    assert (train, valid) == generate_examples()
    assert len(train) == NUM_TRAIN and len(valid) == NUM_VALID
    assert {e.prompt for e in train}.isdisjoint(e.prompt for e in valid)
    word = valid[0].prompt.rsplit(": ", 1)[1].strip()
    assert valid[0].answer == word[::-1] and 3 <= len(word) <= 6


def test_cached_files_read_back(cache_dir):
    train_path, valid_path = embedded_task_paths(cache_dir)
    assert read_task_examples(valid_path) == generate_examples()[1]
    assert read_task_examples(train_path, "input", "target") == generate_examples()[0]


def test_evaluate_accuracy_scores_exact_first_line():
    examples = [TaskExample("reverse the letters of: abc\n", "cba"), TaskExample("reverse the letters of: xy\n", "yx")]
    oracle = {"reverse the letters of: abc\n": " cba\nmore text", "reverse the letters of: xy\n": "yxz"}
    assert evaluate_accuracy(oracle.__getitem__, examples) == 0.5
    assert evaluate_accuracy(lambda p: p.rsplit(": ", 1)[1].strip()[::-1], examples) == 1.0
    assert evaluate_accuracy(lambda p: "", examples) == 0.0
