"""``freshrec experiment ab``: fresh sync vs stale sync vs batch-only, as an A/B test in a closed loop.

The paper's case for real-time training is that a model synced to serving within a minute earns
more than one synced rarely, because items and users change faster than a stale model follows.
Here the arms of an A/B test serve the simulator's users, and what each arm shows changes what
its users click (a closed loop), all in one process and driven by event time (the loop itself:
:mod:`freshrec.experiments.closed_loop`):

1. **Warm-up** (``warmup_s``): random-policy traffic goes through the log, the joiner and the
   trainer (:class:`~freshrec.online.OnlinePipeline`, its clock = event time). A serving
   snapshot is written; every arm's replica starts from it.
2. **Closed loop** (``eval_s``): each request goes to its user's arm
   (:class:`~freshrec.serve.arms.ArmRouter`); the arm scores every live item of the catalog
   (:class:`~freshrec.serve.items.LiveItems`, fed by the lifecycle events) with its replica of
   the two-tower retriever (item vectors . user vector) and shows the top k. The simulator draws
   the clicks from its ground truth. All arms' traffic feeds one trainer; the publisher ships
   deltas on the event-time cadence; each arm applies them at its own (``fresh``: every 10 s,
   ``stale``: every hour, ``batch-only``: never).
3. **Measured**, per arm: observed CTR (clicks / impressions; a Wilson interval within the run)
   and expected CTR (the mean ground-truth click probability of the slates shown: the same
   quantity without the Bernoulli noise of clicks), as means over seeds with 95% intervals, and
   the lift over batch-only paired by seed. Reference lines: the simulator's ``random`` and
   ``oracle`` policies over the same window of the same world (same seed: same users, items and
   sessions).

Churn: each entry of ``lifetimes`` is a world whose listings live that long (median), with
``items_per_hour`` scaled so the live catalog keeps its size; freshness should matter when items
churn fast and fade when they churn slowly.

Every seed is a different world (``world.seed`` = the seed) and model initialisation; with torch
and the parameter server on one thread the same config gives the same numbers, bit for bit.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from freshrec.config import Config
from freshrec.experiments._common import (
    Column,
    ExperimentConfig,
    ExperimentResult,
    ProgressFn,
    duration,
    summarize,
    wilson,
)
from freshrec.experiments.closed_loop import Ledger, reference_run, run_world
from freshrec.experiments.sim_stream import experiment_world, live_catalog
from freshrec.models import TwoTowerConfig
from freshrec.online import live_commerce_two_tower
from freshrec.sim import SimConfig

__all__ = ["ABConfig", "ArmConfig", "plot", "run"]

REFERENCES = ("random", "oracle")


class ArmConfig(Config):
    """One arm: its name, how often its replica applies the sync log (event seconds; None =
    never after the warm-up: the batch-only model), and its exploration share and pool (as a
    serving arm's ``explore`` / ``explore_pool``: ``explore * k`` positions of each slate go to
    random items of the ``explore_pool`` newest listings that its top scores do not show)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    sync_every_s: float | None = Field(None, gt=0)
    explore: float = Field(0.0, ge=0.0, le=1.0)
    explore_pool: int = Field(1000, ge=1)


def _default_arms() -> list[ArmConfig]:
    return [
        ArmConfig(name="fresh", sync_every_s=10.0),  # every chunk of the simulator: as fresh as it gets
        ArmConfig(name="stale", sync_every_s=3600.0),
        ArmConfig(name="batch-only", sync_every_s=None),
    ]


class ABConfig(ExperimentConfig):
    """The closed-loop A/B test (see the module docstring).

    Args:
        data: ``sim``: this experiment runs on the simulator only.
        world: the simulator's knobs (its ``seed`` and ``policy`` are set per run); default
            :func:`~freshrec.experiments.sim_stream.experiment_world`, which a partial world
            (``--set world.x=...``) changes.
        lifetimes: median item lifetimes (event seconds), one world each; ``items_per_hour`` is
            scaled by ``world.item_lifetime_median / lifetime`` so the live catalog keeps its size.
        warmup_s: event seconds of random-policy traffic trained on before the arms start.
        eval_s: event seconds of the closed loop.
        arms: the arms, users split between them equally by a stable hash.
        sparse_sync_s, dense_sync_s: the publisher's cadences (event seconds).
        window_s, allowed_lateness_s, negative_rate: the joiner's (clicks come seconds after
            the impression; negatives are emitted when the window closes).
        emit: the joiner's emit mode: ``first_action`` (its default: a click is trained on
            seconds after it happens, its impression's negatives only when the window closes) or
            ``window_close`` (every example when its window closes: labels ``window_s`` older,
            but unbiased).
        model: the two-tower retriever that every arm serves.
        dim: embedding width.
        batch_size, dense_lr: the online trainer's.
        item_ttl_factor: the item table forgets an item unseen for this many median lifetimes
            (at least an hour); users after ``user_ttl_s``.
        user_ttl_s: see ``item_ttl_factor``.
        references: also run the simulator's random and oracle policies on the same worlds.
        bin_s: event seconds per point of the CTR-over-time curves.
    """

    QUICK: ClassVar[dict[str, Any]] = {
        "seeds": 1,
        "lifetimes": [1800.0],
        "warmup_s": 1800.0,
        "eval_s": 1800.0,
        "world": {"n_users": 10_000, "new_users_per_hour": 200.0, "items_per_hour": 250.0},
        "arms": [{"name": "fresh", "sync_every_s": 10.0}, {"name": "batch-only", "sync_every_s": None}],
        "bin_s": 600.0,
    }

    data: Literal["sim"] = "sim"
    seeds: int = Field(8, ge=1, le=100)  # ~35 s per seed and world on this machine
    world: SimConfig = Field(default_factory=experiment_world)
    lifetimes: list[float] = Field(default_factory=lambda: [1800.0, 28_800.0], min_length=1)
    warmup_s: float = Field(7200.0, gt=0)  # two event hours: the batch model knows the users and sellers
    eval_s: float = Field(14_400.0, gt=0)
    arms: list[ArmConfig] = Field(default_factory=_default_arms, min_length=1, max_length=16)
    sparse_sync_s: float = Field(10.0, gt=0)
    dense_sync_s: float = Field(60.0, gt=0)  # dense weights move slowly (the paper: less often than sparse)
    window_s: float = Field(300.0, gt=0)  # a click comes within ~1 min of its impression in the sim
    allowed_lateness_s: float = Field(10.0, ge=0)
    negative_rate: float = Field(0.1, gt=0, le=1)  # CTR ~1%: keep a tenth of the negatives, weight 10
    emit: Literal["first_action", "window_close"] = "first_action"
    model: TwoTowerConfig = Field(default_factory=live_commerce_two_tower)
    dim: int = Field(16, ge=1)
    batch_size: int = Field(256, ge=1)
    dense_lr: float = Field(1e-3, gt=0)
    item_ttl_factor: float = Field(2.0, gt=0)
    user_ttl_s: float = Field(86_400.0, gt=0)
    references: bool = True
    bin_s: float = Field(1800.0, gt=0)

    @field_validator("lifetimes")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not (x > 0 and math.isfinite(x)) for x in v) or len(set(v)) != len(v):
            raise ValueError(f"lifetimes must be distinct positive seconds, got {v}")
        labels = [duration(x) for x in v]
        if len(set(labels)) != len(labels):  # results are keyed by the label: two would merge
            raise ValueError(f"lifetimes must differ at 3 significant digits (they are reported as {labels}), got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> ABConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be distinct, got {names}")
        if self.window_s < self.world.click_delay_median:
            raise ValueError(f"window_s ({self.window_s}) is shorter than the sim's median click delay")
        return self

    def world_for(self, lifetime: float, seed: int, policy: str = "random") -> SimConfig:
        """The world of one churn setting and seed."""
        w = self.world
        scale = w.item_lifetime_median / lifetime
        return w.model_copy(
            update={"seed": seed, "policy": policy, "item_lifetime_median": lifetime,
                    "items_per_hour": w.items_per_hour * scale}
        )  # fmt: skip


# ---- the experiment ----------------------------------------------------------------------------


def _arm_rows(cfg: ABConfig, lifetime: float, seed: int, out: dict[str, Any]) -> tuple[list[dict], dict]:
    led: Ledger = out["ledger"]
    arm = np.asarray(led.arm, np.int64)
    shown = np.asarray(led.shown, np.float64)
    explored = np.asarray(led.explored, np.float64)
    expected = np.asarray(led.expected, np.float64)
    age = np.asarray(led.age, np.float64)
    clicks = np.zeros(arm.size)
    for serial, c in led.clicks.items():
        clicks[serial] = c
    n_bins = math.ceil(cfg.eval_s / cfg.bin_s)
    bins = np.minimum(((np.asarray(led.time) - out["t0"]) // cfg.bin_s).astype(np.int64), n_bins - 1)
    rows, curves = [], {}
    for a in cfg.arms:
        m = arm == cfg.arms.index(a)
        n, c = float(shown[m].sum()), float(clicks[m].sum())
        lo, hi = wilson(c, n)
        rows.append(
            {
                "churn": duration(lifetime),
                "lifetime_s": lifetime,
                "arm": a.name,
                "sync_every": "never" if a.sync_every_s is None else duration(a.sync_every_s),
                "seed": seed,
                "requests": int(m.sum()),
                "impressions": n,
                "clicks": c,
                "ctr": c / n if n else math.nan,
                "ctr_lo": lo,
                "ctr_hi": hi,
                "expected_ctr": float(expected[m].sum()) / n if n else math.nan,
                "explored": float(explored[m].sum()) / n if n else math.nan,
                "model_age_s": float(np.nanmean(age[m])) if m.any() else math.nan,
                "syncs": out["syncs"][a.name],
                "trainer_auc_warmup": out["warm_auc"],
                "trainer_auc_end": out["end_auc"],
                "trainer_calibration_warmup": out["warm_calibration"],
                "trainer_calibration_end": out["end_calibration"],
            }
        )
        s = np.bincount(bins[m], shown[m], n_bins)
        curves[a.name] = {
            "ctr": (np.bincount(bins[m], clicks[m], n_bins) / np.maximum(s, 1)).tolist(),
            "expected_ctr": (np.bincount(bins[m], expected[m], n_bins) / np.maximum(s, 1)).tolist(),
        }
    return rows, curves


def run(cfg: ABConfig, progress: ProgressFn | None = None) -> ExperimentResult:
    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[list[float]]]] = {}  # churn -> arm -> [per seed curve]
    total = len(cfg.lifetimes) * len(cfg.seed_list)
    for li, lifetime in enumerate(cfg.lifetimes):
        churn = duration(lifetime)
        curves[churn] = {}
        for si, seed in enumerate(cfg.seed_list):
            j = li * len(cfg.seed_list) + si

            def step(i: int, n: int, what: str, j: int = j) -> None:
                if progress is not None:
                    progress(j * n + i, total * n, what)

            out = run_world(cfg, lifetime, seed, step)
            rows, arm_curves = _arm_rows(cfg, lifetime, seed, out)
            base = next((r for r in rows if r["sync_every"] == "never"), rows[-1])
            for r, nxt in zip(rows, [*rows[1:], None], strict=True):
                r["lift"] = r["ctr"] / base["ctr"] - 1 if base["ctr"] else math.nan
                r["expected_lift"] = r["expected_ctr"] / base["expected_ctr"] - 1
                # against the next arm of the config (the next slower cadence), paired by seed
                r["expected_lift_next"] = r["expected_ctr"] / nxt["expected_ctr"] - 1 if nxt else math.nan
            runs += rows
            for name, c in arm_curves.items():
                curves[churn].setdefault(name, []).append(c["expected_ctr"])
            if cfg.references:
                for policy in REFERENCES:
                    ref = reference_run(cfg, lifetime, seed, policy)
                    n, c = float(ref["shown"].sum()), float(ref["clicks"].sum())
                    lo, hi = wilson(c, n)
                    runs.append(
                        {"churn": churn, "lifetime_s": lifetime, "arm": f"{policy} (reference)",
                         "sync_every": "-", "seed": seed, "impressions": n, "clicks": c,
                         "ctr": c / n if n else math.nan, "ctr_lo": lo, "ctr_hi": hi,
                         "lift": (c / n) / base["ctr"] - 1 if n and base["ctr"] else math.nan}
                    )  # fmt: skip
                    curves[churn].setdefault(f"{policy} (reference)", []).append(
                        (ref["clicks"] / np.maximum(ref["shown"], 1)).tolist()
                    )
    return _result(cfg, runs, curves, time.perf_counter() - t_start)


def _result(cfg: ABConfig, runs: list[dict[str, Any]], curves: dict, seconds: float) -> ExperimentResult:
    metrics = ["ctr", "expected_ctr", "lift", "expected_lift", "expected_lift_next", "model_age_s", "impressions"]
    metrics += ["explored"]
    metrics += ["clicks"]
    metrics += ["trainer_auc_warmup", "trainer_auc_end", "trainer_calibration_warmup", "trainer_calibration_end"]
    full = [{m: r.get(m, math.nan) for m in metrics} | r for r in runs]
    summary = summarize(full, ["churn", "arm", "sync_every"], metrics, ci=True)
    for row in summary:  # the binomial interval of all seeds' impressions pooled
        group = [r for r in runs if r["churn"] == row["churn"] and r["arm"] == row["arm"]]
        n, c = sum(r["impressions"] for r in group), sum(r["clicks"] for r in group)
        lo, hi = wilson(c, n)
        row["pooled_ci"] = f"{100 * lo:.3f}-{100 * hi:.3f}%" if n else "-"
        row["model_age"] = duration(row["model_age_s_mean"]) if math.isfinite(row["model_age_s_mean"]) else "-"
    series = {
        "bin_s": cfg.bin_s,
        "expected_ctr_curves": {
            churn: {arm: [float(np.mean(col)) for col in zip(*per_seed, strict=True)] for arm, per_seed in arms.items()}
            for churn, arms in curves.items()
        },
    }
    columns = [
        Column("churn", "item lifetime (median)"),
        Column("arm", "arm"),
        Column("sync_every", "sync every"),
        Column("ctr", "CTR (95% CI over seeds)", "cipct", 3),
        Column("pooled_ci", "binomial 95% CI, seeds pooled"),
        Column("lift", "CTR lift vs batch-only", "cipct", 1),
        Column("expected_ctr", "expected CTR of the slates", "cipct", 3),
        Column("expected_lift", "expected lift vs batch-only", "cipct", 1),
        Column("expected_lift_next", "expected lift vs the next arm", "cipct", 1),
        Column("model_age", "model age at request"),
        Column("impressions", "impressions / seed", "pm", 0),
    ]
    if any(a.explore for a in cfg.arms):
        columns.append(Column("explored", "exploration picks", "cipct", 1))

    def _arm(a: ArmConfig) -> str:
        sync = "never" if a.sync_every_s is None else duration(a.sync_every_s)
        return f"{a.name} ({sync}{f', explore {a.explore:g} of the {a.explore_pool} newest' if a.explore else ''})"

    arms = ", ".join(_arm(a) for a in cfg.arms)
    # one trainer per world: its progressive metrics are the same on every arm's row (keep the first)
    trainer: dict[str, dict[str, Any]] = {}
    for row in summary:
        if "reference" not in row["arm"]:
            trainer.setdefault(row["churn"], row)
    return ExperimentResult(
        name="ab",
        config=cfg,
        title=f"ab: closed-loop CTR per arm, mean and 95% CI over {len(cfg.seed_list)} seed(s); "
        f"warm-up {duration(cfg.warmup_s)} (random policy), then {duration(cfg.eval_s)} closed loop; "
        f"joiner emits at {cfg.emit.replace('_', ' ')}",
        columns=columns,
        summary=summary,
        runs=runs,
        series=series,
        notes=[
            f"arms (users split equally by a stable hash): {arms}; one online trainer learns from all arms' "
            f"traffic and publishes sparse deltas every {duration(cfg.sparse_sync_s)}, dense every "
            f"{duration(cfg.dense_sync_s)} of event time",
            "observed CTR = clicks / impressions; expected CTR = mean ground-truth click probability of the "
            "items shown (no click noise); lifts are paired by seed, against batch-only or the next arm listed",
            "model age at request: event time of the request minus the newest event time the arm's parameters reflect",
            f"world: {cfg.world.n_users:,} users (+{cfg.world.new_users_per_hour:g}/h), a live catalog of "
            f"~{live_catalog(cfg.world):,.0f} "
            "items; items_per_hour scaled per churn setting to keep it",
            "references: the simulator's random and oracle policies on the same worlds and window",
            "the trainer's progressive metrics (mean over seeds), at the end of the random-policy warm-up -> at the "
            "end of the closed loop: "
            + "; ".join(
                f"{c}: AUC {r['trainer_auc_warmup_mean']:.3f} -> {r['trainer_auc_end_mean']:.3f}, calibration "
                f"{r['trainer_calibration_warmup_mean']:.2f} -> {r['trainer_calibration_end_mean']:.2f}"
                for c, r in trainer.items()
            ),
        ],
        seconds=seconds,
    )


def plot(result: ExperimentResult, out: str | Path) -> list[Path]:
    """``ab.png``: CTR per arm with 95% intervals and the reference lines, per churn setting; and
    the expected CTR of each arm over event time."""
    from freshrec.experiments import _plot

    churns = list(dict.fromkeys(r["churn"] for r in result.summary))
    fig, axes = _plot.figure(len(churns) + 1, width=5.2)
    colors = {}
    for ax, churn in zip(axes, churns, strict=False):
        rows = [r for r in result.summary if r["churn"] == churn]
        arms = [r for r in rows if "reference" not in r["arm"]]
        bars = ax.bar(
            range(len(arms)),
            [100 * r["ctr_mean"] for r in arms],
            yerr=[100 * (r["ctr_ci95"] if math.isfinite(r["ctr_ci95"]) else 0) for r in arms],
            capsize=4,
            color=[f"C{i}" for i in range(len(arms))],
        )
        for i, r in enumerate(arms):
            colors[r["arm"]] = bars[i].get_facecolor()
        for r, style in zip([r for r in rows if "reference" in r["arm"]], ["--", ":"], strict=False):
            ax.axhline(100 * r["ctr_mean"], color="gray", linestyle=style, linewidth=1, label=r["arm"])
        ax.set_xticks(range(len(arms)), [f"{r['arm']}\n({r['sync_every']})" for r in arms], fontsize=8)
        ax.set_ylabel("CTR, % (95% CI over seeds)")
        ax.set_title(f"item lifetime {churn}", fontsize=9)
    ax = axes[-1]
    bin_h = result.series["bin_s"] / 3600.0
    for churn, arms in result.series["expected_ctr_curves"].items():
        style = "-" if churn == churns[0] else "--"
        for arm, curve in arms.items():
            if "reference" in arm:
                continue
            x = (np.arange(len(curve)) + 0.5) * bin_h
            ax.plot(x, 100 * np.asarray(curve), style, color=colors.get(arm), label=f"{arm}, {churn}", marker="o",
                    markersize=3)  # fmt: skip
    ax.set_xlabel("event hours into the closed loop")
    ax.set_ylabel("expected CTR of the slates, % (seed mean)")
    return [_plot.save(fig, Path(out) / "ab.png", "A/B in the closed-loop simulator: sync cadence vs CTR")]
