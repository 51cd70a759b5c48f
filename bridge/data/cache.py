"""Where generated data lives, and how several processes build it once.

Generated files (the embedded corpus, its indexed datasets, the fine-tuning task) go under a
cache folder: ``DataConfig.cache_dir`` when set, else ``$BRIDGE_CACHE_DIR``, else
``~/.cache/bridge``. Under ``torchrun`` every rank asks for the same files at once; an exclusive
file lock lets one build while the others wait, and each file is written under a temporary name
and renamed into place, so a crash mid-build never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator, Optional


def cache_root(cache_dir: Optional[str] = None) -> str:
    """The cache folder: ``cache_dir``, else ``$BRIDGE_CACHE_DIR``, else ``~/.cache/bridge``."""
    root = cache_dir or os.environ.get("BRIDGE_CACHE_DIR") or os.path.join("~", ".cache", "bridge")
    return os.path.abspath(os.path.expanduser(root))


@contextlib.contextmanager
def build_lock(folder: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the duration of the block."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_text_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either nothing or the whole file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
