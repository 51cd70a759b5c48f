"""How ``scripts/train.py`` ends a failed run: one ``error:`` line, under ``python``, torchrun and its launcher mode.

A plain ``python`` run prints the line and exits with its status (2 for a bad recipe, value or path, 1 for a
failed run). Under torch's elastic launcher (``torchrun``, or the launcher mode ``python scripts/train.py
--nproc-per-node=N``), which sets ``TORCHELASTIC_ERROR_FILE`` for each worker:

* the line is written to that error file in the layout torch's own ``ErrorHandler`` writes (``message`` with
  ``extraInfo.py_callstack``), so torchrun's failure report quotes it as the root cause's ``traceback`` and logs
  no warning about the file's format;
* the line is printed once, not once per rank: the first local rank that fails with a given line claims it by
  creating a marker file (exclusive create) in the launcher's folder of this attempt's error files;
* ranks that fail with the same line before any process group exists (a bad recipe: every rank reads the same
  one) leave one failure behind, not one per rank: each registers the line in that folder, and once every local
  rank has, local rank 0 ends with the status and the others with 0, after them (:func:`worker_status`).
  Otherwise torchrun stops the ranks still starting with SIGTERM when the first one exits and lists each as a
  failure of its own. A rank that fails alone (or after the process group exists) keeps its status;
* the worker exits at once (:func:`exit_now`), skipping the interpreter's slow teardown.

What remains is torchrun's: once a worker exits with a non-zero status, torchrun logs the failure, raises its
``ChildFailedError`` (a Python traceback and a report whose root cause quotes the line) and exits with status 1,
whatever the worker's status was. The launcher mode runs the same agent in-process, catches that error and ends
with the line and the worker's status instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from typing import Optional

ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``; for a file-system error, the path and the reason."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _line_dir(line: str, error_file: str) -> str:
    """This launch's folder for ``line``: beside the per-rank folders of torch elastic's error files
    (``.../attempt_N/<local rank>/error.json``), so it belongs to one launch and attempt only."""
    attempt_dir = os.path.dirname(os.path.dirname(os.path.abspath(error_file)))
    folder = os.path.join(attempt_dir, "bridge_error_" + hashlib.sha1(line.encode()).hexdigest()[:16])
    os.makedirs(folder, exist_ok=True)
    return folder


def _claim(path: str) -> bool:
    """Create ``path`` unless it exists; True for the one process that created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def write_error_file(line: str, error_file: str) -> None:
    """``line`` in torch elastic's error-file layout, so that torchrun's report quotes it verbatim."""
    data = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    with open(error_file, "w") as f:
        json.dump(data, f)


def report(line: str, every_rank: bool = False) -> None:
    """Print ``error: <line>`` (once per launch under torch elastic) and record it in the elastic error file.

    Without torch elastic, rank 0 prints it, or every rank (with its rank) when ``every_rank`` — a failure that
    may differ between ranks."""
    text = f"error: {line}"
    error_file: Optional[str] = os.environ.get(ERROR_FILE_ENV)
    if error_file:
        try:
            first = _claim(os.path.join(_line_dir(text, error_file), "printed"))
        except OSError:  # the launcher's folder is not usable: print rather than stay silent
            first = True
        if first:
            print(text, file=sys.stderr, flush=True)
        write_error_file(text, error_file)
    elif every_rank or _rank() == 0:
        several = every_rank and int(os.environ.get("WORLD_SIZE", "1")) > 1
        print(f"[rank {_rank()}] {text}" if several else text, file=sys.stderr, flush=True)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for torchrun to reap it counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def worker_status(line: str, code: int, timeout: float = 30.0) -> int:
    """The exit status for a worker that failed with ``error: <line>`` before any process group existed.

    Under torch elastic with several local ranks, each registers the line; when all have (within ``timeout``
    seconds), local rank 0 returns ``code`` once the others have exited, and the others return 0, so the
    launcher sees one failure. Alone, or when some rank does not fail alike, every rank keeps ``code``."""
    error_file = os.environ.get(ERROR_FILE_ENV)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if not error_file or local_ranks <= 1:
        return code
    try:
        folder = _line_dir(f"error: {line}", error_file)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        partial = os.path.join(folder, f".rank_{local_rank}")
        with open(partial, "w") as f:
            f.write(str(os.getpid()))
        os.replace(partial, os.path.join(folder, f"rank_{local_rank}"))  # whole, so others read a full pid
        registered = {}
        deadline = time.monotonic() + timeout
        while len(registered) < local_ranks:
            if time.monotonic() > deadline:
                return code
            time.sleep(0.05)
            registered = {name: os.path.join(folder, name) for name in os.listdir(folder) if name.startswith("rank_")}
        if local_rank != 0:
            return 0
        others = []
        for name, path in registered.items():
            if name != "rank_0":
                with open(path) as f:
                    others.append(int(f.read()))
        deadline = time.monotonic() + 5.0
        while not all(_gone(pid) for pid in others) and time.monotonic() < deadline:
            time.sleep(0.05)
    except (OSError, ValueError):  # the folder is not usable: every rank keeps its status
        return code
    return code


def exit_now(code: int) -> None:
    """Flush the logs and the standard streams, then end the process without the interpreter's teardown (seconds
    with torch and megatron-core imported, long enough for torchrun to stop the other ranks with SIGTERM)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
