"""Reading JSONL files (one JSON object per line) with errors that name the file and line."""

from __future__ import annotations

import json
import os
from typing import Dict, Iterator, Sequence


def read_jsonl_records(path: str, keys: Sequence[str]) -> Iterator[Dict[str, str]]:
    """Yield ``{key: str}`` for each non-blank line of ``path``; every key in ``keys`` must be there.

    A missing file, a line that is not a JSON object, or a missing key is one error naming the
    file and line (and, for a missing key, the keys that line does have).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"JSONL file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            missing = [k for k in keys if k not in record]
            if missing:
                raise ValueError(f"{path}:{line_no}: no key {missing[0]!r} (keys there: {', '.join(sorted(record))}); "
                               "set the data key option to the name your file uses")
            for k in keys:
                value = record[k]
                if not isinstance(value, str) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise ValueError(f"{path}:{line_no}: {k!r} is {json.dumps(value)[:40]}, not text; give a string")
            yield {k: str(record[k]) for k in keys}


def read_jsonl_texts(path: str, key: str = "text") -> Iterator[str]:
    """The ``key`` field of every line of ``path``."""
    for record in read_jsonl_records(path, (key,)):
        yield record[key]
