"""One run per checkpoint folder: ``<checkpoint.dir>/.lock`` names the process that writes there.

Two runs saving into one folder delete each other's saves (each cleans up the other's temporary folders and
prunes its steps); a torchrun worker that outlived its killed launcher does exactly that. The lock file is
created with ``O_EXCL`` and holds ``{"pid", "host", "start"}``. A lock whose process is gone (same host, pid not
running, or running with another start time, i.e. a reused pid) is stale and taken over with a log line; a lock
of a live process, or of another host (which cannot be checked from here), is one error naming it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Optional

from bridge.training.errors import CheckpointError

logger = logging.getLogger("bridge.training")

LOCK_NAME = ".lock"
_UNREADABLE_GRACE_S = 10.0
"""A lock file that is empty or garbled is treated as stale once it is this old (its writer died while
creating it); younger, it may be a writer that has not finished its first write yet."""


def _process_start(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (Linux ``/proc``), to tell a reused pid from the original process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class DirectoryLock:
    """Exclusive use of a folder by this process, released by :meth:`release` (or found stale after a crash)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._mine: Optional[dict] = None

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):  # take over at most a couple of stale locks racing with another starter
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale_or_raise()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self._mine = me
            return
        raise CheckpointError(f"could not lock {self.path}: other runs keep taking it")

    def _clear_stale_or_raise(self) -> None:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            age = time.time() - os.path.getmtime(self.path) if os.path.exists(self.path) else _UNREADABLE_GRACE_S
            if age < _UNREADABLE_GRACE_S:
                raise CheckpointError(f"{self.path} is being created by another run that starts in "
                                      f"{self.folder}; use another checkpoint.dir or wait") from None
            logger.warning("removing unreadable stale lock %s", self.path)
            self._remove()
            return
        since = holder.get("since", "?")
        if host != socket.gethostname():
            raise CheckpointError(
                f"checkpoint.dir {self.folder} is locked by pid {pid} on host {host} (since {since}); two runs must "
                f"not write one folder: use another checkpoint.dir, or delete {self.path} if that run is over")
        if _alive(pid) and (holder.get("start") is None or holder.get("start") == _process_start(pid)):
            raise CheckpointError(
                f"checkpoint.dir {self.folder} is in use by pid {pid} on this host (since {since}); two runs must "
                f"not write one folder: stop that run or use another checkpoint.dir")
        logger.warning("taking over the stale lock of %s (pid %d on %s, since %s, is gone)", self.folder, pid, host,
                       since)
        self._remove()

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Remove the lock file if it is still this process's."""
        if self._mine is None:
            return
        try:
            with open(self.path) as f:
                holder = json.load(f)
            if holder.get("pid") == self._mine["pid"] and holder.get("host") == self._mine["host"]:
                self._remove()
        except (OSError, ValueError):
            pass
        self._mine = None
