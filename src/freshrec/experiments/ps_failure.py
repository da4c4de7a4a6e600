"""``freshrec experiment ps-failure``: what a PS shard restored from an old snapshot costs.

The paper (section 2.4) snapshots the parameter server once a day and argues that losing up to
a day of updates on one failed shard barely hurts: the shard holds a small share of the rows and
the model recovers by training on. It reports no measurement; this experiment makes one.

An online replay of a time-ordered data set (MovieLens by default) trains DeepFM from scratch,
one pass, with the sparse rows in a :class:`~freshrec.ps.LocalPS` of ``N`` shards. Every
prediction is made before its batch is trained on (progressive validation), and the AUC over
the last ``window`` examples is taken after every step. In a failure run, the PS is snapshotted
``T`` steps before step ``F``; after step ``F`` shard ``failed_shard`` of every table is restored
from that snapshot (its rows lose ``T`` steps of updates; rows admitted since are gone) while the
other shards and the dense model carry on. The same seed without a failure is the baseline: both
runs are identical up to ``F``, bit for bit, so the gap after it is the failure's cost alone.

Reported per (N, T): the *dip* (largest windowed-AUC gap to the baseline after the failure),
the mean gap over the ``horizon`` steps after it and over the last ``horizon`` steps of the
stream, the *recovery* (steps, and event time, from the failure until the gap, past its
deepest point, stays within ``tolerance`` for a full window; per seed, and for the gap averaged
over seeds) and the rows the restore reverted or lost. After the restore the two runs follow
different trajectories for good, so a gap of a few thousandths of AUC either way is the noise
between two equally good models, not damage.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from freshrec.errors import ConfigError
from freshrec.experiments._common import (
    Column,
    ExperimentConfig,
    ExperimentResult,
    ProgressFn,
    duration,
    id_spec,
    load_data,
    make_trainer,
    mean_std,
    seeded_spec,
    summarize,
)
from freshrec.experiments.stream import DatasetStream, ExampleStream
from freshrec.features import Batch, FeatureSpec
from freshrec.models import DeepFMConfig
from freshrec.ps import LocalPS
from freshrec.train import weighted_auc

__all__ = ["PSFailureConfig", "Replay", "plot", "recovery_step", "replay", "run", "window_auc"]


class PSFailureConfig(ExperimentConfig):
    """Restore one PS shard from a ``T``-step-old snapshot in the middle of an online replay.

    Args:
        num_shards: the PS shard counts N to try.
        snapshot_age_steps: the snapshot ages T to try, in training steps before the failure.
        fail_at: the failure's place in the stream, as a share of its steps.
        failed_shard: which shard fails (the same for every table).
        batch_size: examples per step.
        window: examples in the sliding progressive-AUC window.
        tolerance: a gap to the baseline at or under this counts as recovered.
        horizon: steps after the failure (and at the stream's end) over which the mean gap is reported.
        side_features: read MovieLens-100K's side features too (they never live in the failed
            shard only, so they dilute the failure; off by default).
        model: DeepFM's MLP.
        dim: embedding width.
    """

    QUICK: ClassVar[dict[str, Any]] = {"seeds": 1, "num_shards": [2], "snapshot_age_steps": [100]}

    num_shards: list[int] = Field(default_factory=lambda: [2, 4], min_length=1)
    snapshot_age_steps: list[int] = Field(default_factory=lambda: [10, 50, 150], min_length=1)
    fail_at: float = Field(0.5, gt=0, lt=1)
    failed_shard: int = Field(0, ge=0)
    batch_size: int = Field(256, ge=1)
    window: int = Field(4096, ge=100)  # 16 steps of 256: AUC over fewer examples is mostly noise
    tolerance: float = Field(0.002, ge=0)
    horizon: int = Field(50, ge=1)
    side_features: bool = False
    model: DeepFMConfig = Field(default_factory=DeepFMConfig)
    dim: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check(self) -> PSFailureConfig:
        if any(n < 1 for n in self.num_shards) or any(self.failed_shard >= n for n in self.num_shards):
            raise ValueError(f"failed_shard {self.failed_shard} must exist in every PS of {self.num_shards} shards")
        if any(t < 1 for t in self.snapshot_age_steps):
            raise ValueError(f"snapshot_age_steps must be >= 1, got {self.snapshot_age_steps}")
        return self


# ---- one replay ------------------------------------------------------------------------------


@dataclass
class Replay:
    """One pass over the stream: each step's predictions (made before training on it)."""

    probs: list[np.ndarray]  # per step: (B,) first task
    rows_reverted: int = 0  # rows of the failed shard that the snapshot brought back
    rows_lost: int = 0  # rows the failed shard held that the snapshot did not have
    snapshot_time: float = math.nan  # event time of the snapshot
    fail_time: float = math.nan  # event time of the failure


def replay(
    spec: FeatureSpec,
    batches: list[Batch],
    cfg: PSFailureConfig,
    *,
    seed: int,
    num_shards: int,
    fail_step: int | None = None,
    age: int = 0,
) -> Replay:
    """Train one pass over ``batches``; with ``fail_step``, restore shard ``cfg.failed_shard``
    from the snapshot taken ``age`` steps earlier, right after step ``fail_step``'s predecessor."""
    trainer = make_trainer(
        spec, cfg.model, seed=seed, threads=cfg.threads, batch_size=cfg.batch_size, num_shards=num_shards
    )
    out = Replay(probs=[])
    snap_step = None if fail_step is None else fail_step - age
    try:
        with tempfile.TemporaryDirectory(prefix="freshrec-ps-failure-") as tmp:
            snapshot = Path(tmp) / "snapshot"
            for i, b in enumerate(batches):
                if i == snap_step:  # the state after steps 0..i-1
                    trainer.ps.save(snapshot)
                    out.snapshot_time = float(batches[i - 1].event_time.max()) if i else math.nan
                if i == fail_step:
                    out.rows_reverted, out.rows_lost = _restore(trainer.ps, cfg.failed_shard, snapshot)
                    out.fail_time = float(batches[i - 1].event_time.max())
                out.probs.append(trainer.step(b).probs[:, 0])
    finally:
        trainer.close()
    return out


def _restore(ps: LocalPS, shard: int, snapshot: Path) -> tuple[int, int]:
    """Restore ``shard`` of every table from ``snapshot``; (rows reverted, rows lost)."""
    before = {t: set(ps.shard_tables(t)[shard].export().ids.tolist()) for t in ps.tables}
    ps.restore_shard(shard, snapshot)
    after = {t: set(ps.shard_tables(t)[shard].export().ids.tolist()) for t in ps.tables}
    reverted = sum(len(before[t] & after[t]) for t in before)
    lost = sum(len(before[t] - after[t]) for t in before)
    return reverted, lost


# ---- measuring the dip ---------------------------------------------------------------------


def window_auc(probs: list[np.ndarray], labels: list[np.ndarray], window: int) -> np.ndarray:
    """After each step ``s``, the AUC of the last ``window`` examples up to and including step
    ``s``'s batch (fewer at the start). ``(S,)``."""
    p, y = np.concatenate(probs), np.concatenate(labels)
    ends = np.cumsum([len(x) for x in probs])
    return np.array([weighted_auc(p[max(0, e - window) : e], y[max(0, e - window) : e]) for e in ends])


def recovery_step(gap: np.ndarray, start: int, tolerance: float, hold: int) -> int | None:
    """The first step ``r >= start`` from which ``gap`` stays at or under ``tolerance`` for
    ``hold`` steps (fewer only where the stream ends); None if there is none."""
    ok = gap <= tolerance  # (S,)
    n = gap.size
    for r in range(start, n):
        if ok[r : min(n, r + hold)].all():
            return r
    return None


def _key(row: dict[str, Any]) -> str:
    return f"N={row['num_shards']}, T={row['age_steps']}"


def _hold(cfg: PSFailureConfig) -> int:
    """Steps in one window: how long a gap must stay small to count as recovered."""
    return max(1, math.ceil(cfg.window / cfg.batch_size))


def _measure(
    gap: np.ndarray, fail: Replay, fail_step: int, end_time: np.ndarray, cfg: PSFailureConfig
) -> dict[str, Any]:
    """The failure's cost from ``gap`` (baseline minus failed windowed AUC, per step)."""
    after = gap[fail_step:]
    dip = float(np.nanmax(after))
    # recovered from step r on: the gap stays small from r's batch on. Sought from the deepest
    # point: right after the restore the window still holds mostly pre-failure examples
    peak = fail_step + int(np.nanargmax(after))
    r = fail_step if dip <= cfg.tolerance else recovery_step(gap, peak, cfg.tolerance, _hold(cfg))
    return {
        "age_seconds": fail.fail_time - fail.snapshot_time,
        "rows_reverted": fail.rows_reverted,
        "rows_lost": fail.rows_lost,
        "dip": dip,
        "mean_gap": float(np.nanmean(after[: cfg.horizon])),
        "late_gap": float(np.nanmean(gap[-cfg.horizon :])),
        "recovered": r is not None,
        "recovery_steps": math.nan if r is None else float(r - fail_step),
        "recovery_seconds": math.nan if r is None else float(end_time[r - 1] - fail.fail_time),
        "pre_failure_identical": bool(np.array_equal(gap[:fail_step], np.zeros(fail_step))),
    }


def run(cfg: PSFailureConfig, progress: ProgressFn | None = None) -> ExperimentResult:
    t_start = time.perf_counter()
    data, data_notes = load_data(cfg, id_spec(cfg, cfg.side_features))
    stream: ExampleStream = DatasetStream(data.fit())
    batches = list(stream.batches(cfg.batch_size))
    labels = [b.labels[:, 0] for b in batches]
    n_steps = len(batches)
    fail_step = round(cfg.fail_at * n_steps)
    if max(cfg.snapshot_age_steps) > fail_step:
        raise ConfigError(
            f"snapshot_age_steps {max(cfg.snapshot_age_steps)} reaches before the stream's start: "
            f"the failure is at step {fail_step} of {n_steps}"
        )
    end_time = np.array([float(b.event_time.max()) for b in batches])  # (S,)
    total = len(cfg.seed_list) * len(cfg.num_shards) * (1 + len(cfg.snapshot_age_steps))
    done = 0
    runs: list[dict[str, Any]] = []
    curves: dict[str, list[list[float]]] = {}
    baselines_equal = True
    for seed in cfg.seed_list:
        s_spec = seeded_spec(stream.spec, seed, dim=cfg.dim)
        first_base: np.ndarray | None = None
        for n in cfg.num_shards:
            base = replay(s_spec, batches, cfg, seed=seed, num_shards=n)
            base_auc = window_auc(base.probs, labels, cfg.window)
            if first_base is None:
                first_base = base_auc
            baselines_equal &= bool(np.array_equal(first_base, base_auc, equal_nan=True))
            done += 1
            if progress is not None:
                progress(done, total, f"seed {seed}: {n} shards, no failure")
            for age in cfg.snapshot_age_steps:
                fail = replay(s_spec, batches, cfg, seed=seed, num_shards=n, fail_step=fail_step, age=age)
                gap = base_auc - window_auc(fail.probs, labels, cfg.window)  # (S,) 0 before the failure
                runs.append(
                    {
                        "num_shards": n,
                        "age_steps": age,
                        "seed": seed,
                        **_measure(gap, fail, fail_step, end_time, cfg),
                    }
                )
                curves.setdefault(_key({"num_shards": n, "age_steps": age}), []).append(gap.tolist())
                done += 1
                if progress is not None:
                    progress(done, total, f"seed {seed}: {n} shards, snapshot {age} steps old")
    return _result(
        cfg,
        runs,
        curves,
        fail_step,
        n_steps,
        end_time,
        baselines_equal,
        data_notes,
        time.perf_counter() - t_start,
    )


def _result(
    cfg: PSFailureConfig,
    runs: list[dict[str, Any]],
    curves: dict[str, list[list[float]]],
    fail_step: int,
    n_steps: int,
    end_time: np.ndarray,
    baselines_equal: bool,
    data_notes: list[str],
    seconds: float,
) -> ExperimentResult:
    metrics = [
        "age_seconds",
        "rows_reverted",
        "rows_lost",
        "dip",
        "mean_gap",
        "late_gap",
        "recovery_steps",
        "recovery_seconds",
    ]
    summary = summarize(runs, ["num_shards", "age_steps"], metrics)
    for row in summary:
        group = [r for r in runs if r["num_shards"] == row["num_shards"] and r["age_steps"] == row["age_steps"]]
        row["recovered_share"] = sum(r["recovered"] for r in group) / len(group)
        row["snapshot_age"] = duration(row["age_seconds_mean"]) if math.isfinite(row["age_seconds_mean"]) else "-"
        row["recovery_time"] = (
            duration(row["recovery_seconds_mean"]) if math.isfinite(row["recovery_seconds_mean"]) else "never"
        )
    hold = _hold(cfg)
    for row in summary:
        mean_gap = np.array([mean_std(col)[0] for col in zip(*curves[_key(row)], strict=True)])
        if np.nanmax(mean_gap[fail_step:]) <= cfg.tolerance:
            row["recovery_of_mean"] = 0
        else:
            peak = fail_step + int(np.nanargmax(mean_gap[fail_step:]))
            r = recovery_step(mean_gap, peak, cfg.tolerance, hold)
            row["recovery_of_mean"] = None if r is None else r - fail_step
    series = {
        "fail_step": fail_step,
        "steps": n_steps,
        "gap_mean": {k: [mean_std(col)[0] for col in zip(*v, strict=True)] for k, v in curves.items()},
        "gap_std": {k: [mean_std(col)[1] for col in zip(*v, strict=True)] for k, v in curves.items()},
        "step_end_time": end_time.tolist(),
    }
    columns = [
        Column("num_shards", "N shards", "int"),
        Column("age_steps", "T (steps)", "int"),
        Column("snapshot_age", "T (event time)"),
        Column("rows_lost", "rows lost", "pm", 0),
        Column("rows_reverted", "rows reverted", "pm", 0),
        Column("dip", "AUC dip", "pm"),
        Column("mean_gap", f"mean gap, {cfg.horizon} steps", "pm"),
        Column("late_gap", f"gap, last {cfg.horizon} steps", "pm"),
        Column("recovery_steps", "steps to recover", "pm", 1),
        Column("recovery_of_mean", "… of the mean gap", "int"),
        Column("recovery_time", "time to recover"),
        Column("recovered_share", "recovered", "float", 2),
    ]
    notes = [
        *data_notes,
        f"failure after step {fail_step} of {n_steps} ({cfg.batch_size} examples/step); progressive AUC "
        f"over the last {cfg.window:,} examples; recovered = gap <= {cfg.tolerance} for {_hold(cfg)} "
        "steps in a row; recovery means are over the seeds that recovered; '… of the mean gap' applies "
        "the rule to the gap averaged over seeds (less noisy); '-' = not within the stream",
        f"gap, last {cfg.horizon} steps: what is left at the end of the stream (damage that persists, or the "
        "noise between two diverged runs)",
        "the no-failure baseline is identical for every N (same rows, same math): "
        + ("checked, bit for bit" if baselines_equal else "NOT identical in this run"),
    ]
    return ExperimentResult(
        name="ps-failure",
        config=cfg,
        title="ps-failure: one PS shard restored from a T-step-old snapshot, vs the same run without "
        f"failure; mean ± std over {len(cfg.seed_list)} seed(s)",
        columns=columns,
        summary=summary,
        runs=runs,
        series=series,
        notes=notes,
        seconds=seconds,
    )


def plot(result: ExperimentResult, out: str | Path) -> list[Path]:
    """``ps_failure.png``: the windowed-AUC gap to the baseline around the failure, per (N, T)."""
    from freshrec.experiments import _plot

    s = result.series
    f = s["fail_step"]
    lo = max(0, f - 20)
    fig, (ax,) = _plot.figure(1, width=8.0)
    for key, mean in s["gap_mean"].items():
        x = list(range(lo - f, len(mean) - f))
        _plot.band(ax, x, mean[lo:], s["gap_std"][key][lo:], key)
    ax.axvline(0, color="black", linewidth=0.8, linestyle=":")
    ax.axhline(result.config.tolerance, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xlabel("steps after the shard restore")
    ax.set_ylabel("baseline AUC − failed-run AUC (sliding window)")
    return [_plot.save(fig, Path(out) / "ps_failure.png", "PS shard restored from an old snapshot")]
