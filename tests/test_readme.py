"""The README's From-Python snippet runs as written on the CPU machine its set-up gives (issue 9, item 16)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_from_python_snippet_runs():
    section = README.read_text().split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), scope)
    assert type(scope["model"]).__name__ == "GPTModel"
    assert scope["llama"].num_query_groups == 4
