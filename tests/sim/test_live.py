"""Live mode: event time follows a (fake) wall clock at a speed factor; same events as flat out."""

from __future__ import annotations

import pytest

from freshrec.errors import InputError
from freshrec.sim import LiveClock, SimConfig, Simulator, live_batches
from freshrec.stream.events import encode

CFG = SimConfig(n_users=500, sessions_per_user_per_day=100, items_per_hour=1000, n_sellers=50, seed=4)


class FakeWall:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_clock_maps_wall_to_event_time():
    wall = FakeWall()
    clock = LiveClock(speed=60.0, start_event_time=1000.0, wall=wall)
    assert clock.event_time() == 1000.0
    wall.t += 2.5
    assert clock.event_time() == 1150.0
    assert clock.wall_seconds_until(1210.0) == pytest.approx(1.0)
    assert clock.wall_seconds_until(0.0) == 0.0


def test_live_batches_deliver_the_flat_out_events_as_time_passes():
    wall = FakeWall()
    sim = Simulator(CFG)
    clock = LiveClock(speed=120.0, start_event_time=sim.now, wall=wall)
    seen_at = []
    got = []
    for batch in live_batches(sim, clock, poll_seconds=0.25, until=900.0, sleep=wall.sleep):
        now = clock.event_time()
        assert all(e.event_time < now for e in batch)  # nothing from the future
        seen_at.append(now)
        got += batch
    assert len(seen_at) > 20  # delivered bit by bit, not at once
    assert encode(got) == encode(Simulator(CFG).run(900.0))


def test_bad_live_arguments():
    with pytest.raises(InputError, match="speed"):
        LiveClock(speed=0)
    with pytest.raises(InputError, match="start_event_time"):
        LiveClock(start_event_time=float("nan"))
    sim = Simulator(CFG)
    with pytest.raises(InputError, match="poll_seconds"):
        next(live_batches(sim, LiveClock(), poll_seconds=0))
