"""One process per folder: an exclusive lock held for a process's lifetime.

``FolderLock`` takes ``flock(LOCK_EX)`` on ``<folder>/.lock`` and writes who holds it (host, pid,
since) into the file for the next one's message. The kernel drops the lock when the process
dies, however it dies, so a crash never leaves a stale lock behind; on NFS v4 Linux maps flock
onto the server's byte-range locks, so two machines mounting one folder exclude each other too.
A second taker waits up to ``wait_s`` (a rolling restart: the old process is writing its final
checkpoint), then gets a :class:`~freshrec.errors.StateError` naming the holder.

A lock belongs to the process that took it: a child forked while it is held closes its copy of
the file at once (flock locks the open file, which a fork shares: the child's release would drop
the parent's lock, and a child outliving its parent would keep it). Two objects in one process
exclude each other like two processes, except on NFS, where Linux emulates flock with POSIX
locks, which are per process.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import time
import weakref
from pathlib import Path

from freshrec.errors import BackendError, StateError

__all__ = ["FolderLock"]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"

_held: weakref.WeakSet[FolderLock] = weakref.WeakSet()  # this process's held locks, let go of in a forked child


def _forget_in_child() -> None:
    for lock in list(_held):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            os.close(fd)  # the parent's copy keeps the lock
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class FolderLock:
    """An exclusive lock on ``folder`` (``what`` names it in messages, e.g. "run_dir")."""

    def __init__(self, folder: Path, what: str) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float, *, poll_s: float = 0.2) -> None:
        """Take the lock, waiting up to ``wait_s`` seconds for its holder to let go."""
        if self._fd is not None:
            raise StateError(f"{self.path}: already held by this object")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BackendError(f"cannot open the lock file {self.path}: {exc}") from exc
        deadline, waiting = time.monotonic() + wait_s, False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise BackendError(f"cannot lock {self.path}: {exc} (a file system without locks?)") from exc
                holder = self._holder(fd)
                if time.monotonic() >= deadline:
                    raise StateError(
                        f"{self.what} {self.path.parent} is in use by {holder}; one process per {self.what}: "
                        f"stop that one first (waited {wait_s:g} s)"
                    )
                if not waiting:
                    log.warning("%s %s is in use by %s: waiting up to %g s for it to stop",
                                self.what, self.path.parent, holder, wait_s)  # fmt: skip
                    waiting = True
                time.sleep(poll_s)
            me = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _held.add(self)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info['pid']} on {info['host']} (since {info['since']})"
        except (OSError, ValueError, KeyError, TypeError):  # being written, or from elsewhere
            return "another process"

    def release(self) -> None:
        """Let go (idempotent). The holder's note stays in the file; the next holder replaces it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _held.discard(self)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
