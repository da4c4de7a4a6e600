"""Live-commerce simulator: a seeded world of users, sellers and short-lived items that writes the
events of ``freshrec.stream.events`` (impressions, delayed actions, item lifecycle) at any speed.

Owns: the knobs (``config.py``), the hidden world and its ground-truth click model
(``world.py``), who picks the slates (``policies.py``: the ``Recommender`` protocol and the
built-in random / popularity / oracle policies), the event-time loop (``simulator.py``),
wall-clock pacing for demos (``live.py``) and the calibration against Open Bandit
(``calibrate.py``). Imports numpy, freshrec's base modules and ``freshrec.stream.events`` only;
nothing in freshrec imports it except the demo, benchmarks and experiments.
"""

from freshrec.sim.config import SimConfig
from freshrec.sim.live import LiveClock, live_batches
from freshrec.sim.policies import Recommendation, Recommender
from freshrec.sim.simulator import SimStats, Simulator

__all__ = [
    "LiveClock",
    "Recommendation",
    "Recommender",
    "SimConfig",
    "SimStats",
    "Simulator",
    "live_batches",
]
