"""Live mode: event time that advances with the wall clock at a speed factor, for the demo.

    clock = LiveClock(speed=60.0, start_event_time=sim.now)   # one wall second = one minute
    for batch in live_batches(sim, clock):                    # forever, as the clock advances
        ...                                                   # to the log (docs/simulator.md)

The wall clock only paces delivery; the events themselves are those of the same seed run flat
out (the simulator generates fixed chunks and buffers them), so a live run is reproducible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

from freshrec.errors import InputError
from freshrec.sim.simulator import Simulator
from freshrec.stream.events import Event

__all__ = ["LiveClock", "live_batches"]


class LiveClock:
    """``event_time = start_event_time + (wall() - wall at creation) * speed``.

    Args:
        speed: event seconds per wall second (60 = a minute of the world per second).
        start_event_time: the event time at creation.
        wall: a monotonic wall clock in seconds (injectable for tests).
    """

    def __init__(
        self, speed: float = 60.0, start_event_time: float = 0.0, wall: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise InputError(f"LiveClock speed must be a finite number > 0, got {speed}")
        if not (math.isfinite(start_event_time) and start_event_time >= 0):
            raise InputError(f"LiveClock start_event_time must be finite and >= 0, got {start_event_time}")
        self.speed = float(speed)
        self.start_event_time = float(start_event_time)
        self._wall = wall
        self._wall0 = wall()

    def event_time(self) -> float:
        """The event time now."""
        return self.start_event_time + (self._wall() - self._wall0) * self.speed

    def wall_seconds_until(self, event_time: float) -> float:
        """Wall seconds until ``event_time`` is reached (0 if already past)."""
        return max(0.0, (event_time - self.event_time()) / self.speed)


def live_batches(
    sim: Simulator,
    clock: LiveClock,
    *,
    poll_seconds: float = 0.1,
    until: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[Event]]:
    """Yield the events up to the clock's event time every ``poll_seconds`` of wall time (empty
    polls are skipped), until event time ``until`` (forever if None)."""
    if not poll_seconds > 0:
        raise InputError(f"poll_seconds must be > 0, got {poll_seconds}")
    while until is None or sim.now < until:
        t = clock.event_time()
        if until is not None:
            t = min(t, until)
        if t > sim.now:
            batch = sim.advance_to(t)
            if batch:
                yield batch
        if until is None or sim.now < until:
            sleep(poll_seconds)
