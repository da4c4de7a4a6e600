"""``freshrec demo``: the whole system of the paper, live, on embedded defaults, closing the loop.

Owns the demo's config (``config.py``), its child processes (``procs.py``: the online trainer and
the serving replica, each stopped on exit), the simulator's side of the closed loop (``client.py``:
users asking ``/v1/recommend`` and posting their actions to ``/v1/events``), the live dashboard
(``dashboard.py``), the report (``report.py``) and the orchestration (``run.py``). Imports anything
in freshrec; nothing imports it but the CLI.
"""

from freshrec.demo.config import DemoConfig
from freshrec.demo.run import run_demo

__all__ = ["DemoConfig", "run_demo"]
