"""The embedded fine-tuning task: reverse the letters of a short word.

``"reverse the letters of: kqfz\\n"`` -> ``"zfqk"``. A model pretrained on prose almost never gets
it right, and a few hundred fine-tuning steps teach it, so accuracy before and after a fine-tune
shows what the fine-tune did. The words are random lowercase strings of 3 to 6 letters from a
fixed seed (no dictionary needed); train and validation words never overlap.

Each JSONL line carries the pair under both key sets of :class:`bridge.data.DataConfig`:
``prompt``/``response`` (GPT) and ``input``/``target`` (T5).
"""

from __future__ import annotations

import json
import os
import random
import string
from typing import Callable, Iterable, List, NamedTuple, Tuple

from bridge.data.cache import build_lock, cache_root, write_text_atomically
from bridge.data.jsonl import read_jsonl_records

TASK_VERSION = "reverse-v1"
"""Bumped whenever the generated examples change, so caches never mix versions."""
NUM_TRAIN, NUM_VALID = 4000, 200
MIN_LETTERS, MAX_LETTERS = 3, 6


class TaskExample(NamedTuple):
    """A prompt and the exact answer expected after it."""

    prompt: str
    answer: str


def make_example(word: str) -> TaskExample:
    """The task's example for ``word``."""
    return TaskExample(f"reverse the letters of: {word}\n", word[::-1])


def generate_examples(seed: int = 0) -> Tuple[List[TaskExample], List[TaskExample]]:
    """``(train, validation)`` examples with distinct words, deterministic in ``seed``."""
    rng = random.Random(seed)
    words: List[str] = []
    seen = set()
    while len(words) < NUM_TRAIN + NUM_VALID:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(MIN_LETTERS, MAX_LETTERS)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    examples = [make_example(w) for w in words]
    return examples[:NUM_TRAIN], examples[NUM_TRAIN:]


def _jsonl(examples: Iterable[TaskExample]) -> str:
    lines = (json.dumps({"prompt": e.prompt, "response": e.answer, "input": e.prompt, "target": e.answer})
             for e in examples)
    return "\n".join(lines) + "\n"


def embedded_task_paths(cache_dir: str | None = None) -> Tuple[str, str]:
    """``(train.jsonl, valid.jsonl)`` of the task in the cache folder, written on first use."""
    folder = os.path.join(cache_root(cache_dir), "finetune_task", TASK_VERSION)
    paths = (os.path.join(folder, "train.jsonl"), os.path.join(folder, "valid.jsonl"))
    if all(os.path.exists(p) for p in paths):
        return paths
    with build_lock(folder):
        if not all(os.path.exists(p) for p in paths):
            for path, examples in zip(paths, generate_examples()):
                write_text_atomically(path, _jsonl(examples))
    return paths


def read_task_examples(path: str, prompt_key: str = "prompt", answer_key: str = "response") -> List[TaskExample]:
    """Examples of a JSONL file (the embedded task's, or any prompt/answer file) for scoring."""
    return [TaskExample(r[prompt_key], r[answer_key]) for r in read_jsonl_records(path, (prompt_key, answer_key))]


def evaluate_accuracy(generate_fn: Callable[[str], str], examples: Iterable[TaskExample]) -> float:
    """Share of ``examples`` whose generation matches the answer exactly.

    ``generate_fn(prompt)`` returns the greedy continuation of the prompt (text only, generation
    stopped at eos or a length limit). The first line of it, stripped of surrounding whitespace,
    must equal the answer.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate_accuracy needs at least one example")
    correct = 0
    for ex in examples:
        generated = generate_fn(ex.prompt)
        lines = generated.strip().splitlines()
        correct += int(bool(lines) and lines[0].strip() == ex.answer)
    return correct / len(examples)
