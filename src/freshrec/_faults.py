"""Crash points for recovery tests (the "failpoint" technique of FoundationDB and TiKV).

Code that must survive a crash at a given moment calls ``crash_point("name")`` there. Nothing
happens unless the environment variable ``FRESHREC_CRASH_AT`` names that point (``name`` or
``name:N`` for its N-th hit): then the process kills itself with SIGKILL on the spot, no clean-up,
as a power cut or an OOM kill would. Tests set the variable for a child process only.
"""

from __future__ import annotations

import os
import signal

__all__ = ["crash_point"]

_SPEC = os.environ.get("FRESHREC_CRASH_AT", "")
_NAME, _, _NTH = _SPEC.partition(":")
_WANT = int(_NTH) if _NTH else 1
_hits = 0


def crash_point(name: str) -> None:
    """SIGKILL this process here if ``FRESHREC_CRASH_AT`` asks for it (otherwise a no-op)."""
    global _hits
    if not _NAME or name != _NAME:
        return
    _hits += 1
    if _hits >= _WANT:
        os.kill(os.getpid(), signal.SIGKILL)
