"""The experiments by name, how a config is assembled for one, and running it to an output folder.

A config is built in layers, later ones winning: the experiment's defaults, its ``QUICK``
changes (with ``--quick``), a TOML/YAML file (``--config``), ``--data`` / ``--seeds``, and dotted
``--set key=value`` overrides. Unknown keys are an error at every layer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from freshrec.config import apply_overrides, read_config_file
from freshrec.errors import ConfigError
from freshrec.experiments import ab, collisions, filter_expiry, ps_failure, sync_interval
from freshrec.experiments._common import ExperimentConfig, ExperimentResult, ProgressFn

__all__ = ["EXPERIMENTS", "Experiment", "build_config", "run_experiment"]


@dataclass(frozen=True)
class Experiment:
    name: str
    help: str
    config: type[ExperimentConfig]
    run: Callable[[Any, ProgressFn | None], ExperimentResult]
    plot: Callable[[ExperimentResult, Path], list[Path]]


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment(
            "collisions",
            "Collisionless vs hashed ID tables: test AUC per epoch (paper Table 1, Fig. 7).",
            collisions.CollisionsConfig,
            collisions.run,
            collisions.plot,
        ),
        Experiment(
            "sync-interval",
            "Batch model, then online training with train->serve sync every k shards (paper Algorithm 1, Table 2).",
            sync_interval.SyncIntervalConfig,
            sync_interval.run,
            sync_interval.plot,
        ),
        Experiment(
            "ps-failure",
            "Restore one PS shard from an old snapshot mid-stream: AUC dip and recovery.",
            ps_failure.PSFailureConfig,
            ps_failure.run,
            ps_failure.plot,
        ),
        Experiment(
            "filter-expiry",
            "Sweep admission min_count and expiry ttl: rows held vs progressive AUC.",
            filter_expiry.FilterExpiryConfig,
            filter_expiry.run,
            filter_expiry.plot,
        ),
        Experiment(
            "ab",
            "A/B arms in the closed-loop simulator (fresh sync vs stale sync vs batch-only): CTR per arm.",
            ab.ABConfig,
            ab.run,
            ab.plot,
        ),
    ]
}


def _experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def _plain(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda o: o.model_dump(mode="json") if isinstance(o, BaseModel) else str(o))
    )


def build_config(
    name: str,
    *,
    quick: bool = False,
    data: str | Path | None = None,
    seeds: int | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> ExperimentConfig:
    """The config of experiment ``name`` (see the module docstring for the layers)."""
    exp = _experiment(name)
    layers: dict[str, Any] = _plain(exp.config.QUICK) if quick else {}
    if quick:
        layers["quick"] = True
    if config_file is not None:
        layers.update(read_config_file(config_file))
    if data is not None:
        layers["data"] = str(data)
    if seeds is not None:
        layers["seeds"] = seeds
    merged = apply_overrides(layers, overrides)
    return exp.config.from_dict(merged, source=str(config_file) if config_file else f"{name} config")


def run_experiment(
    name: str, config: ExperimentConfig, out: str | Path, progress: ProgressFn | None = None
) -> ExperimentResult:
    """Run ``name`` with ``config``; write its results and plots to ``out``."""
    exp = _experiment(name)
    if not isinstance(config, exp.config):
        raise ConfigError(f"experiment {name!r} takes a {exp.config.__name__}, got {type(config).__name__}")
    result = exp.run(config, progress)
    result.plots = [p.name for p in exp.plot(result, Path(out))]
    result.write(out)
    return result
