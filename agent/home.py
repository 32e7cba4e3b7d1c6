"""One agent per home: `HOME/lock`, held with `fcntl.flock` for as long as the agent runs.

The kernel drops the lock when its process dies, even by SIGKILL, so a stale lock (a dead pid, a
killed agent) is taken over silently. The holder's pid is written into the file so that a second
agent can say who holds it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from squirrel.errors import UserError

LOCK_NAME = "lock"


class HomeLock:
    """An exclusive lock on an agent home. `acquire()` raises UserError when another process holds it."""

    def __init__(self, home: str | Path):
        self.home = Path(home).expanduser()
        self.path = self.home / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "HomeLock":
        if self._fd is not None:
            return self
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"home {self.home} is in use by pid {holder} (stop it, or use another --home)") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock (the file stays: removing it would race with a process about to lock it)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "HomeLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def scratch_home(path: str, prefix: str) -> Iterator[Path]:
    """`path` as a home, or (empty) a temporary one that is deleted afterwards (benchmarks' own runs)."""
    home = Path(path) if path else Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield home
    finally:
        if not path:
            shutil.rmtree(home, ignore_errors=True)
