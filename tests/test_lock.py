"""FolderLock: one holder per folder, in this process or another; a waiter names the holder."""

from __future__ import annotations

import os

import pytest

from freshrec._lock import FolderLock
from freshrec.errors import StateError


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_second_holder_waits_then_is_refused_naming_the_first_and_leaks_nothing(tmp_path):
    first = FolderLock(tmp_path, "run_dir")
    first.acquire(0)
    note = (tmp_path / ".lock").read_bytes()
    fds = _open_fds()
    second = FolderLock(tmp_path, "run_dir")  # another object in the same process: excluded too
    for _ in range(3):
        with pytest.raises(StateError, match=rf"run_dir {tmp_path} is in use by pid {os.getpid()} on .*waited 0.1 s"):
            second.acquire(0.1, poll_s=0.02)
    assert _open_fds() == fds and not second.held
    assert (tmp_path / ".lock").read_bytes() == note  # the holder's note, untouched by the waiter
    first.release()
    first.release()  # idempotent
    second.acquire(0)
    assert second.held
    second.release()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_does_not_hold_or_release_the_parents_lock(tmp_path):
    """A child forked while the lock is held shared its open file: its release() (a close() run
    in the child) dropped the parent's lock, and a child outliving the parent kept it held, naming
    a dead pid. The child now lets go of its copy at fork."""
    lock = FolderLock(tmp_path, "run_dir")
    lock.acquire(0)
    try:
        pid = os.fork()
        if pid == 0:  # the child: exit at once, whatever happens
            code = 0 if not lock.held else 1
            lock.release()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # the child does not believe it holds the lock
        with pytest.raises(StateError, match="is in use by"):
            FolderLock(tmp_path, "run_dir").acquire(0)  # the parent still does
    finally:
        lock.release()
