"""A/B arms: which arm a user is in, and which arm served a request (to credit its actions).

A user's arm is a pure function of (user id, seed, arms and weights):
``u = xxh64(str(user_id), seed) / 2**64`` lands in one slice of [0, 1) cut in proportion to the
weights. The same user gets the same arm on every request and every replica, and changing one
arm's weight moves only the users in the slices that change. ``42`` and ``"42"`` are the same
user here.

Actions arrive later, posted by the client with the request id; :class:`RequestLedger`
remembers the arm of the last ``capacity`` requests, so per-arm click-through can be counted
without trusting the client to say which arm it saw.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import xxhash

from freshrec.errors import InputError

__all__ = ["ArmRouter", "RequestLedger"]

_TWO64 = float(2**64)


class ArmRouter:
    """Stable, weighted assignment of users to arms. Thread-safe (immutable after init)."""

    def __init__(self, arms: Sequence[tuple[str, float]], seed: int = 0) -> None:
        if not arms:
            raise InputError("ArmRouter needs at least one arm")
        weights = np.array([w for _, w in arms], np.float64)
        if not (np.isfinite(weights).all() and (weights > 0).all()):
            raise InputError(f"arm weights must be finite and > 0, got {weights.tolist()}")
        self.names = [name for name, _ in arms]
        self.seed = int(seed)
        self._edges = np.cumsum(weights / weights.sum())  # (A,) right edge of each arm's slice
        self._edges[-1] = 1.0  # no gap at the top from rounding

    def point(self, user_id: Any) -> float:
        """The user's point in [0, 1)."""
        return xxhash.xxh64_intdigest(str(user_id).encode(), self.seed) / _TWO64

    def assign(self, user_id: Any) -> str:
        """The arm of ``user_id``."""
        if len(self.names) == 1:
            return self.names[0]
        i = int(np.searchsorted(self._edges, self.point(user_id), side="right"))
        return self.names[min(i, len(self.names) - 1)]


class RequestLedger:
    """A bounded map request id -> arm; the oldest entries are forgotten first. Thread-safe."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InputError(f"RequestLedger capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._arms: OrderedDict[Any, str] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: Any, arm: str) -> None:
        with self._lock:
            self._arms[request_id] = arm
            self._arms.move_to_end(request_id)
            while len(self._arms) > self.capacity:
                self._arms.popitem(last=False)

    def arm_of(self, request_id: Any) -> str | None:
        """The arm that served ``request_id``, or None if unknown or forgotten."""
        with self._lock:
            return self._arms.get(request_id)

    def __len__(self) -> int:
        return len(self._arms)
