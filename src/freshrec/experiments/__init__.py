"""Reproductions of the paper's experiments, and ours: each one a config in, a table and plots out.

Owns the framework every experiment shares (``_common.py``: the base config, data loading by
format, mean ± std over seeds, the result written as ``results.csv`` / ``runs.csv`` /
``results.json`` and printed as a rich table; ``_plot.py``: matplotlib figures), the example
streams the online experiments consume (``stream.py``: time-ordered batches from a data file;
``sim_stream.py``: the simulator's events through the event log and the joiner), the closed loop
of simulator, pipeline, sync and serving arms on event time (``closed_loop.py``), the registry of
names (``registry.py``), and one module per experiment: ``collisions.py`` (paper Table 1 /
Fig. 7), ``sync_interval.py`` (Algorithm 1 / Table 2), ``ps_failure.py`` (snapshot age vs AUC
dip), ``filter_expiry.py`` (rows held vs AUC) and ``ab.py`` (A/B arms of sync cadence: CTR).

May import anything in freshrec except the CLI; only the CLI imports it.
"""

from freshrec.experiments._common import ExperimentConfig, ExperimentResult
from freshrec.experiments.registry import EXPERIMENTS, Experiment, build_config, run_experiment

__all__ = [
    "EXPERIMENTS",
    "Experiment",
    "ExperimentConfig",
    "ExperimentResult",
    "build_config",
    "run_experiment",
]
