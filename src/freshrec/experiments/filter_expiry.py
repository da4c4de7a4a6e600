"""``freshrec experiment filter-expiry``: rows held vs AUC under frequency filtering and expiry.

The paper (section 2.1.1) filters IDs by occurrence count before they get a row, and expires
rows unseen for a while, arguing that most IDs are rare or short-lived and do not deserve memory.
It reports no numbers. This experiment sweeps the admission threshold ``min_count`` and the
expiry ``ttl`` on an online replay of a time-ordered data set: DeepFM trained from scratch in one
pass, every example scored before it is trained on (progressive validation), expired rows
removed after every ``expire_every`` steps at the batch's event time.

Per setting it reports the progressive AUC and log loss over the whole stream, and the rows the
tables held: the mean over steps (the memory the setting needs in steady use), the peak and the
final count. The *knee* is the setting with the fewest mean rows whose AUC is within
``knee_tolerance`` of the unfiltered, unexpired baseline.

The ttls are given in seconds of event time, or as shares of the stream's time span (default),
so the same config means something on any data set; on data without time (Criteo) event time is
the row number and a ttl counts examples.

With ``data = "sim"`` the replay is the simulator's examples through the event log and the joiner
(:class:`~freshrec.experiments.sim_stream.SimStream`, one world per seed) in the order the joiner
emitted them, each stamped with its impression's event time: most item IDs there live half an
hour and most users come once, the churn the paper's filter and expiry are for. The filter and
ttl of the sweep replace the live-commerce spec's own on every table.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

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
from freshrec.experiments.sim_stream import SimSource, SimStream, is_sim, sim_spec
from freshrec.experiments.stream import DatasetStream, ExampleStream
from freshrec.features import Batch, FeatureSpec
from freshrec.models import DeepFMConfig
from freshrec.train import calibration, logloss, weighted_auc

__all__ = ["FilterExpiryConfig", "plot", "replay", "run"]


class FilterExpiryConfig(ExperimentConfig):
    """Sweep ``min_count`` x ``ttl`` on an online replay.

    Args:
        data: a data file (MovieLens ratings, Criteo TSV), or ``sim``: the simulator (``sim``).
        sim: the simulated world and joiner when ``data = "sim"``.
        min_counts: admission thresholds (1 = every ID gets a row at once).
        ttls: expiry times in seconds of event time; None: from ``ttl_fractions``.
        ttl_fractions: expiry times as shares of the stream's event-time span.
        batch_size: examples per step.
        expire_every: expire after every this many steps.
        sketch_width: counters per row of the admission sketch (power of two). The table's
            default (2**19) is sized for production; this keeps 26 Criteo tables small while the
            early-admission rate stays far under 1% for the IDs of these data sets.
        knee_tolerance: the knee's AUC may be this far under the baseline's.
        side_features: read MovieLens-100K's side features too (off: the IDs are what filtering
            and expiry act on).
        model: DeepFM's MLP.
        dim: embedding width.
    """

    QUICK: ClassVar[dict[str, Any]] = {
        "seeds": 1,
        "min_counts": [1, 3],
        "ttl_fractions": [0.05],
        "sim": {"hours": 2.0},
    }

    sim: SimSource = Field(default_factory=SimSource)
    min_counts: list[int] = Field(default_factory=lambda: [1, 2, 3, 5, 10], min_length=1)
    ttls: list[float] | None = None
    ttl_fractions: list[float] = Field(default_factory=lambda: [0.3, 0.1, 0.03, 0.01])
    batch_size: int = Field(256, ge=1)
    expire_every: int = Field(1, ge=1)
    sketch_width: int = Field(1 << 16, ge=16)
    knee_tolerance: float = Field(0.002, ge=0)
    side_features: bool = False
    model: DeepFMConfig = Field(default_factory=DeepFMConfig)
    dim: int = Field(16, ge=1)


def replay(
    spec: FeatureSpec,
    batches: list[Batch],
    cfg: FilterExpiryConfig,
    *,
    seed: int,
    min_count: int,
    ttl: float | None,
) -> dict[str, float]:
    """One pass with ``min_count`` admission and ``ttl`` expiry: progressive AUC / log loss over
    every example, and the rows held (mean over steps, peak, final)."""
    s = seeded_spec(
        spec, seed, dim=cfg.dim, ttl=ttl, admission={"min_count": min_count, "sketch_width": cfg.sketch_width}
    )
    rate = cfg.sim.negative_rate if is_sim(cfg.data) else 1.0  # the simulator's joiner samples negatives
    trainer = make_trainer(
        s, cfg.model, seed=seed, threads=cfg.threads, batch_size=cfg.batch_size, negative_sampling_rate=rate
    )
    probs, rows = [], []
    try:
        for i, b in enumerate(batches, 1):
            probs.append(trainer.step(b).probs[:, 0])
            if ttl is not None and i % cfg.expire_every == 0:
                trainer.expire(float(b.event_time.max()))
            rows.append(sum(st.rows for st in trainer.ps.stats().values()))
        stats = trainer.ps.stats().values()
        admitted = sum(st.admitted for st in stats)
        expired = sum(st.expired for st in stats)
    finally:
        trainer.close()
    p = np.concatenate(probs)
    y = np.concatenate([b.labels[:, 0] for b in batches])
    w = np.concatenate([b.weights for b in batches])
    return {
        "auc": weighted_auc(p, y, w),
        "logloss": logloss(p, y, w),
        "calibration": calibration(p, y, w),
        "rows_mean": float(np.mean(rows)),
        "rows_peak": float(max(rows)),
        "rows_final": float(rows[-1]),
        "admitted": float(admitted),
        "expired": float(expired),
    }


def run(cfg: FilterExpiryConfig, progress: ProgressFn | None = None) -> ExperimentResult:
    t_start = time.perf_counter()
    sim = is_sim(cfg.data)
    if sim:
        spec = sim_spec(cfg.dim)
        span = cfg.sim.hours * 3600.0
        data_notes: list[str] = []
    else:
        data, data_notes = load_data(cfg, id_spec(cfg, cfg.side_features))
        stream: ExampleStream = DatasetStream(data.fit())
        batches = list(stream.batches(cfg.batch_size))
        span = float(batches[-1].event_time.max() - batches[0].event_time.min())
    ttls: list[float | None] = [None]
    ttls += list(cfg.ttls) if cfg.ttls is not None else [f * span for f in cfg.ttl_fractions]
    grid = [(m, t) for m in cfg.min_counts for t in ttls]
    total = len(cfg.seed_list) * len(grid)
    runs: list[dict[str, Any]] = []
    sizes: list[int] = []
    ceilings: list[float] = []  # simulator: AUC of the ground-truth probabilities
    for seed in cfg.seed_list:
        if sim:  # one world per seed
            stream = SimStream(cfg.sim, seed, spec)
            batches = list(stream.batches(cfg.batch_size))
            if not data_notes:
                data_notes = [stream.describe() + f" (seed {seed}); one simulated world per seed"]
            b = stream.examples()[0]
            ceilings.append(weighted_auc(stream.true_probs(), b.labels[:, 0], b.weights))
        sizes.append(sum(b.size for b in batches))
        for min_count, ttl in grid:
            m = replay(stream.spec, batches, cfg, seed=seed, min_count=min_count, ttl=ttl)
            runs.append({"min_count": min_count, "ttl_seconds": ttl, "seed": seed, **m})
            if progress is not None:
                progress(len(runs), total, f"seed {seed}: min_count {min_count}, ttl {_ttl(ttl, stream.has_time)}")
    n = round(float(np.mean(sizes)))
    if ceilings:
        data_notes.append(
            "ceiling: the simulator's ground-truth click probabilities score AUC {:.4f} ± {:.4f} on the same "
            "examples (a perfect model)".format(*mean_std(ceilings))
        )
    return _result(cfg, runs, span, stream.has_time, n, data_notes, time.perf_counter() - t_start)


def _ttl(ttl: float | None, has_time: bool) -> str:
    if ttl is None:
        return "none"
    return duration(ttl) if has_time else f"{ttl:,.0f} examples"


def _result(
    cfg: FilterExpiryConfig,
    runs: list[dict[str, Any]],
    span: float,
    has_time: bool,
    n: int,
    data_notes: list[str],
    seconds: float,
) -> ExperimentResult:
    metrics = ["auc", "logloss", "rows_mean", "rows_peak", "rows_final", "admitted", "expired"]
    summary = summarize(runs, ["min_count", "ttl_seconds"], metrics)
    # the baseline: no expiry and the loosest filter (min_count 1 unless the sweep leaves it out)
    base = min((r for r in summary if r["ttl_seconds"] is None), key=lambda r: r["min_count"])
    within = [r for r in summary if r["auc_mean"] >= base["auc_mean"] - cfg.knee_tolerance]
    knee = min(within, key=lambda r: r["rows_mean_mean"]) if within else None
    for r in summary:
        r["ttl"] = _ttl(r["ttl_seconds"], has_time)
        r["rows_vs_baseline"] = r["rows_mean_mean"] / base["rows_mean_mean"] if base["rows_mean_mean"] else math.nan
        r["delta_auc"] = r["auc_mean"] - base["auc_mean"]
        r["knee"] = "◀ knee" if r is knee else ""
    columns = [
        Column("min_count", "min_count", "int"),
        Column("ttl", "ttl"),
        Column("rows_mean", "rows held (mean)", "pm", 0),
        Column("rows_final", "rows at end", "pm", 0),
        Column("rows_vs_baseline", "rows vs baseline", "float", 3),
        Column("auc", "progressive AUC", "pm"),
        Column("delta_auc", "Δ AUC", "float", 4),
        Column("logloss", "logloss", "pm"),
        Column("knee", ""),
    ]
    knee_text = (
        f"knee: min_count {knee['min_count']}, ttl {knee['ttl']}: {knee['rows_vs_baseline']:.1%} of the "
        f"baseline's rows, AUC {knee['delta_auc']:+.4f}"
        if knee
        else "no knee"
    )
    unit = duration(span) if has_time else f"{span:,.0f} examples (no time: event time = row number)"
    return ExperimentResult(
        name="filter-expiry",
        config=cfg,
        title=f"filter-expiry: one online pass over {n:,} examples (span {unit}); mean ± std over "
        f"{len(cfg.seed_list)} seed(s); baseline = min_count {base['min_count']}, no ttl",
        columns=columns,
        summary=summary,
        runs=runs,
        series={
            "span_seconds": span,
            "knee": None if knee is None else {"min_count": knee["min_count"], "ttl_seconds": knee["ttl_seconds"]},
        },
        notes=[
            *data_notes,
            knee_text + f" (fewest rows within {cfg.knee_tolerance} AUC of the baseline)",
            "rows: live rows over all tables after each step's expiry; progressive AUC: every example "
            "scored before it is trained on",
        ],
        seconds=seconds,
    )


def plot(result: ExperimentResult, out: str | Path) -> list[Path]:
    """``filter_expiry.png``: progressive AUC against mean rows held, one line per min_count
    (points along it: ttl), the knee circled."""
    from freshrec.experiments import _plot

    fig, (ax,) = _plot.figure(1, width=7.5)
    for m in dict.fromkeys(r["min_count"] for r in result.summary):
        rows = sorted((r for r in result.summary if r["min_count"] == m), key=lambda r: r["rows_mean_mean"])
        ax.errorbar(
            [r["rows_mean_mean"] for r in rows],
            [r["auc_mean"] for r in rows],
            yerr=[r["auc_std"] for r in rows],
            marker="o",
            markersize=4,
            capsize=2,
            label=f"min_count {m}",
        )
        for r in rows:
            ax.annotate(
                r["ttl"],
                (r["rows_mean_mean"], r["auc_mean"]),
                fontsize=6,
                xytext=(3, -8),
                textcoords="offset points",
            )
    for r in result.summary:
        if r["knee"]:
            ax.scatter(
                [r["rows_mean_mean"]],
                [r["auc_mean"]],
                s=220,
                facecolors="none",
                edgecolors="red",
                label="knee",
            )
    ax.set_xscale("log")
    ax.set_xlabel("rows held (mean over the stream, all tables; log scale)")
    ax.set_ylabel("progressive AUC")
    return [_plot.save(fig, Path(out) / "filter_expiry.png", "frequency filter x expiry: memory vs quality")]
