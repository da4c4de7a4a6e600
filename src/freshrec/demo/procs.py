"""The demo's child processes: started in their own session, logged to files, always stopped.

Each child runs with ``start_new_session`` so a terminal's Ctrl-C reaches only the demo, which
then stops the children itself: SIGTERM (a clean stop: the trainer checkpoints), then SIGKILL
after a grace period. The demo treats SIGTERM and SIGHUP (a ``kill``, a closed terminal) as
Ctrl-C; ``atexit`` covers an exception on the way out. If the demo itself is killed (SIGKILL),
Linux sends each child SIGTERM (``PR_SET_PDEATHSIG``): a killed demo left its trainer and server
running, holding the run's joiner state, so ``--resume`` failed until they were found by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from freshrec.errors import StateError

__all__ = ["Child", "stop_on_hangup_or_term", "wait_for", "wait_for_port"]


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when the demo dies (None elsewhere).
    The libc function is looked up here, in the parent: the forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_it() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the demo died before the request took effect
            os._exit(1)

    return set_it


_PR_SET_PDEATHSIG = 1


class Child:
    def __init__(self, name: str, args: list[str], log_file: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_file = log_file
        self._out = open(log_file, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *args], stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})}, preexec_fn=_parent_death_signal(),
        )  # fmt: skip
        atexit.register(self.stop)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise StateError(f"the {self.name} process exited with {self.proc.returncode}; its log ends:\n{tail}")

    def stop(self, grace_s: float = 30.0) -> int | None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self._out.closed:
            self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, no clean-up (the recovery tests)."""
        if self.alive:
            self.proc.kill()
            self.proc.wait(5)


def wait_for(what: str, ready, timeout_s: float, children: list[Child]) -> None:  # type: ignore[no-untyped-def]
    """Poll ``ready()`` until true; fail early if a child died."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for c in children:
            c.check()
        try:
            if ready():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise StateError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_for_port(port_file: Path, timeout_s: float, children: list[Child]) -> int:
    """The port a server started with ``port_file`` bound, once it has written it."""
    wait_for(f"a server to write its port to {port_file}", port_file.is_file, timeout_s, children)
    return int(port_file.read_text())


@contextlib.contextmanager
def stop_on_hangup_or_term() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, so the demo's own
    clean-up runs (stopping its children). Outside the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    before = {sig: signal.signal(sig, signal.default_int_handler) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
