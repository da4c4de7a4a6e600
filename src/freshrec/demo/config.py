"""Configuration of ``freshrec demo``: every knob with the reason for its default."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from freshrec.config import Config
from freshrec.sim import SimConfig

__all__ = ["DemoConfig"]


def _sim() -> SimConfig:
    # a smaller world than the simulator's defaults: at 60x speed the closed loop makes ~40
    # /v1/recommend calls per wall second, what one 2-core machine serves beside the trainer;
    # a base CTR of 1% (the Open Bandit logs have ~0.4%) gives a 3-minute run enough clicks to learn
    return SimConfig(n_users=10_000, new_users_per_hour=200, items_per_hour=3_000, random_ctr=0.01)


class DemoConfig(Config):
    """One demo run.

    Args:
        duration_s: wall-clock seconds of the closed loop (after start-up).
        seed: the simulated world's seed: the same seed gives the same users, items and sessions.
        port: the serving replica's port on 127.0.0.1; 0 takes any free port (the demo reads
            the one bound from ``<run>/server.port``).
        speed: event seconds per wall second (60: the 3-minute default simulates 3 hours).
        warmup_s: event seconds of random-policy traffic written before the loop closes: the batch
            stage the online stage starts from.
        stale_apply_interval_s: arm B's replica applies sync deltas only every this many wall
            seconds (an hour of event time at 60x: the "batch" baseline); arm A applies them as they
            arrive (every second).
        arm_b_weight: share of users served by arm B.
        runs_dir: each run writes ``<runs_dir>/<timestamp>/``.
        dashboard: show the live terminal dashboard (off in tests and CI logs).
        sim: the simulated world.
        online: overrides applied to the online pipeline's config (dotted keys, as ``--set``).
        serve: overrides applied to the serving replica's config.
    """

    duration_s: float = Field(180.0, gt=0)
    seed: int = 0
    port: int = Field(8000, ge=0, le=65535)
    speed: float = Field(60.0, gt=0)
    warmup_s: float = Field(3600.0, ge=0)
    stale_apply_interval_s: float = Field(60.0, ge=0)
    arm_b_weight: float = Field(0.5, gt=0, lt=1)
    runs_dir: Path = Path("runs")
    dashboard: bool = True
    sim: SimConfig = Field(default_factory=_sim)
    online: list[str] = Field(default_factory=list)
    serve: list[str] = Field(default_factory=list)
