"""Numba compilation flags, in one place.

Every hot kernel in freshrec is compiled with ``@njit(**JIT)`` (njit is nopython): releases the GIL (so
PS shards and serving threads run kernels in parallel), cached on disk (a new process pays
~0.3 s, not a full compile), and ``error_model='numpy'`` so that divisions do not carry
Python's zero-division check, which stops numba from vectorising the optimizer loops.
"""

from __future__ import annotations

JIT: dict[str, object] = {
    "nogil": True,
    "cache": True,
    "error_model": "numpy",
}
