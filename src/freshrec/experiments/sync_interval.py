"""``freshrec experiment sync-interval``: how fresh must serving be (paper: Algorithm 1, Table 2).

The paper batch-trains DeepFM on the first part of Criteo, then walks the rest in shards
(Algorithm 1): for each shard, *evaluate the serving model* on it, *train the training model* on
it, and every ``k`` shards *sync* training -> serving. A batch-only model that never updates is
the baseline; online training with a shorter sync interval should score higher.

Here the same loop runs on any time-ordered example file (Criteo TSV or MovieLens ratings):
the newest ``1 - batch_fraction`` of it is cut into ``num_shards`` equal shards, or into
shards of ``shard_seconds`` of event time when the data has time. One training run per seed
feeds every setting at once: the training model is the same whatever the sync interval, so
each setting is a serving replica (:class:`freshrec.sync.ServedModel`) that applies the
training PS's change log (touched rows and tombstones, ``drain_changes``) and the dense
weights every ``k`` shards. A replica that is never synced after the batch stage is the
batch-only model. Settings are compared on the same examples with the same training model,
so the difference to batch-only is paired by seed.

With ``data = "sim"`` the examples come from the simulator through the event log and the joiner
(:class:`~freshrec.experiments.sim_stream.SimStream`, a new world per seed), and labels arrive
late: a click seconds after its impression, a negative when its join window closes. Each shard
is then two sets on the same event-time grid: the impressions made during it, which the serving
replicas score (as they would have when serving them), and the examples the joiner emitted during
it, which the trainer learns (and expires rows after). Every example is scored before it is
trained on; the examples of impressions made during the batch stage but emitted after it are
trained on, never scored.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from freshrec.errors import ConfigError, StateError
from freshrec.experiments._common import (
    Column,
    ExperimentConfig,
    ExperimentResult,
    ProgressFn,
    default_data,
    duration,
    load_data,
    make_trainer,
    mean_std,
    seeded_spec,
    summarize,
)
from freshrec.experiments.sim_stream import SimSource, SimStream, is_sim, sim_spec
from freshrec.experiments.stream import minibatches, shards_by_count, shards_by_time
from freshrec.features import Batch, FeatureSpec
from freshrec.models import DeepFMConfig, build_model
from freshrec.ps import LocalPS, PSChanges, PSConfig
from freshrec.sync import ServedModel, serving_table_config
from freshrec.train import Trainer, logloss, weighted_auc

__all__ = ["SyncIntervalConfig", "SyncLog", "plot", "run", "served_replica"]

BATCH_ONLY = "batch-only"


class SyncIntervalConfig(ExperimentConfig):
    """Batch training, then online training with train -> serve sync every ``k`` shards.

    Args:
        data: a data file (Criteo TSV, MovieLens ratings), or ``sim``: the simulator (``sim``).
        sim: the simulated world and joiner when ``data = "sim"``.
        batch_fraction: the oldest share of the examples, trained on in the batch stage (of the
            simulated event time, with ``data = "sim"``).
        batch_epochs: passes over it (shuffled).
        num_shards: cut the rest into this many equal shards (data without time: Criteo; equal
            spans of event time with ``data = "sim"``) ...
        shard_seconds: ... or into shards of this much event time (data with time); set one.
        intervals: sync every ``k`` shards, one setting per ``k`` (plus batch-only, never synced).
        model: DeepFM's MLP.
        dim: embedding width.
        batch_size: examples per step in the batch stage.
        online_batch_size: examples per step in the online stage (smaller: a shard is a few
            hundred examples and should still be several steps).
    """

    QUICK: ClassVar[dict[str, Any]] = {"seeds": 1, "num_shards": 6, "intervals": [1, 3], "sim": {"hours": 2.0}}

    data: str = Field(default_factory=lambda: default_data("criteo-sample/train.txt"))
    sim: SimSource = Field(default_factory=SimSource)
    batch_fraction: float = Field(0.5, gt=0, lt=1)
    batch_epochs: int = Field(3, ge=1)
    num_shards: int | None = Field(10, ge=1)
    shard_seconds: float | None = Field(None, gt=0)
    intervals: list[int] = Field(default_factory=lambda: [1, 2, 5], min_length=1)
    model: DeepFMConfig = Field(default_factory=DeepFMConfig)
    dim: int = Field(16, ge=1)
    # small steps by default: the shared Criteo sample has 900 distinct rows (450 for the batch
    # stage); on a large log use e.g. batch_size=4096, online_batch_size=1024
    batch_size: int = Field(32, ge=1)
    online_batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _one_cut(self) -> SyncIntervalConfig:
        if self.shard_seconds is not None and "num_shards" not in self.model_fields_set:
            self.__dict__["num_shards"] = None  # shard_seconds given alone replaces the default count
        if (self.num_shards is None) == (self.shard_seconds is None):
            raise ValueError("set exactly one of num_shards and shard_seconds")
        if any(k < 1 for k in self.intervals) or len(set(self.intervals)) != len(self.intervals):
            raise ValueError(f"intervals must be distinct shard counts >= 1, got {self.intervals}")
        return self


# ---- the serving side ------------------------------------------------------------------------


def served_replica(trainer: Trainer, name: str, threads: int = 1) -> ServedModel:
    """An empty serving replica of ``trainer``'s model: serving tables (embeddings only), fresh
    dense weights. Sync fills it."""
    tables = {t: serving_table_config(c) for t, c in trainer.ps.tables.items()}
    ps = LocalPS(tables, PSConfig(threads=threads))
    module = build_model(trainer.model_config, trainer.spec)
    return ServedModel(name, trainer.spec, trainer.model_config, module, ps, trainer.logit_offset)


@dataclass
class SyncLog:
    """The training PS's changes, drained once per shard, and how far each replica has applied
    them. A replica that syncs applies every delta it has not seen, in order (a row touched in
    several deltas ends at its newest value), then the current dense weights. Replicas are
    registered before the first publish; deltas every replica has applied are forgotten."""

    deltas: list[PSChanges] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)  # replica name -> deltas applied

    def register(self, replica: ServedModel) -> None:
        if self.deltas:
            raise StateError(f"cannot register replica {replica.name!r}: deltas were already published")
        self.applied[replica.name] = 0

    def unregister(self, replica: ServedModel) -> None:
        """``replica`` will not sync again (the batch-only model): stop keeping deltas for it."""
        self.applied.pop(replica.name, None)
        self._trim()

    def publish(self, trainer: Trainer) -> PSChanges:
        delta = trainer.ps.drain_changes()
        self.deltas.append(delta)
        return delta

    def sync(self, trainer: Trainer, replica: ServedModel) -> int:
        """Bring ``replica`` up to date with ``trainer``; returns the sparse rows it applied."""
        if replica.name not in self.applied:
            raise StateError(f"replica {replica.name!r} is not registered with the sync log")
        start = self.applied[replica.name]
        rows = 0
        for delta in self.deltas[start:]:
            for table, ch in delta.tables.items():
                replica.apply_sparse(table, ch.upserts.ids, ch.upserts.embeddings, ch.removed)
                rows += len(ch.upserts) + int(ch.removed.size)
        self.applied[replica.name] = len(self.deltas)
        replica.swap_dense({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        replica.mark(
            sparse_version=self.deltas[-1].version if self.deltas else 0,
            event_time=trainer.counters.last_event_time,
        )
        self._trim()
        return rows

    def _trim(self) -> None:
        """Forget deltas every replica has applied."""
        low = min(self.applied.values(), default=len(self.deltas))
        if low:
            self.deltas = self.deltas[low:]
            self.applied = {k: v - low for k, v in self.applied.items()}


# ---- the experiment ------------------------------------------------------------------------


def _setting(k: int | None) -> str:
    if k is None:
        return BATCH_ONLY
    return f"sync every {k} shard" + ("s" if k > 1 else "")


def _shards(cfg: SyncIntervalConfig, tail: Batch, has_time: bool) -> list[Batch]:
    if cfg.num_shards is not None:
        return shards_by_count(tail, cfg.num_shards)
    if not has_time:
        raise ConfigError(f"{cfg.data} has no time column: cut it with num_shards, not shard_seconds")
    return list(shards_by_time(minibatches(tail, 4096), cfg.shard_seconds))


def _run_seed(
    cfg: SyncIntervalConfig,
    spec: FeatureSpec,
    head_batch: Batch,
    shards: list[Batch],
    intervals: list[int | None],
    seed: int,
    per_shard: list[dict[str, Any]],
    progress: ProgressFn | None,
    train_shards: list[Batch] | None = None,
    expire_at: list[float] | None = None,
) -> list[dict[str, Any]]:
    """Algorithm 1 for one seed: the batch stage, then each shard scored by every replica,
    trained on, and synced to the replicas whose interval divides its number. Appends one row
    per (replica, non-empty shard) to ``per_shard``; returns one row per replica.

    ``train_shards`` (default: ``shards``) are what the trainer learns at the end of each shard,
    when labels come later than the scored impressions; ``expire_at``: expire rows at this
    event time after each shard's training."""
    label = 0  # the first task
    rate = cfg.sim.negative_rate if is_sim(cfg.data) else 1.0  # the simulator's joiner samples negatives
    trainer = make_trainer(
        spec, cfg.model, seed=seed, threads=cfg.threads, batch_size=cfg.batch_size, negative_sampling_rate=rate
    )
    replicas = {k: served_replica(trainer, _setting(k), cfg.threads) for k in intervals}
    runs: list[dict[str, Any]] = []
    try:
        for epoch in range(cfg.batch_epochs):
            for b in minibatches(head_batch, cfg.batch_size, shuffle=True, seed=seed * 1_000_003 + epoch):
                trainer.step(b)
        log = SyncLog()
        for r in replicas.values():
            log.register(r)
        log.publish(trainer)
        for r in replicas.values():  # every replica starts as the batch model
            log.sync(trainer, r)
        log.unregister(replicas[None])
        preds: dict[int | None, list[np.ndarray]] = {k: [] for k in intervals}
        first_row = len(per_shard)  # this seed's rows start here
        for i, shard in enumerate(shards, 1):
            y, w = shard.labels[:, label], shard.weights
            for k, r in replicas.items() if shard.size else ():  # 1. the serving model scores the shard
                p = r.predict(shard)[:, label]
                preds[k].append(p)
                per_shard.append(
                    {
                        "setting": r.name,
                        "interval_shards": k,
                        "seed": seed,
                        "shard": i,
                        "examples": shard.size,
                        "auc": weighted_auc(p, y, w),
                        "logloss": logloss(p, y, w),
                    }
                )
            learn = shard if train_shards is None else train_shards[i - 1]
            for b in minibatches(learn, cfg.online_batch_size):  # 2. the training model learns it
                trainer.step(b)
            if expire_at is not None:
                trainer.expire(expire_at[i - 1])
            log.publish(trainer)
            for k, r in replicas.items():  # 3. sync every k shards
                if k is not None and i % k == 0:
                    log.sync(trainer, r)
            if progress is not None:
                progress(i, len(shards), f"seed {seed}: shard {i}")
        y_all = np.concatenate([s.labels[:, label] for s in shards])
        w_all = np.concatenate([s.weights for s in shards])
        for k, r in replicas.items():
            p = np.concatenate(preds[k])
            shard_aucs = [row["auc"] for row in per_shard[first_row:] if row["setting"] == r.name]
            runs.append(
                {
                    "setting": r.name,
                    "interval_shards": k,
                    "seed": seed,
                    "auc_shard_mean": float(np.nanmean(shard_aucs)),
                    "auc_pooled": weighted_auc(p, y_all, w_all),
                    "logloss": logloss(p, y_all, w_all),
                }
            )
    finally:
        for r in replicas.values():
            r.close()
        trainer.close()
    return runs


def _sim_shards(
    cfg: SyncIntervalConfig, stream: SimStream
) -> tuple[Batch, list[Batch], list[Batch], list[float], float]:
    """The simulator's examples cut for Algorithm 1 (module docstring): the batch stage (emitted
    before the split), and per shard of the grid from the split, the impressions made during it
    and the examples emitted during it. Returns (batch stage, scored shards, trained shards,
    shard ends, shard span)."""
    batch, emitted = stream.examples()
    t0 = stream.start_time + cfg.batch_fraction * (stream.end_time - stream.start_time)
    last = max(float(emitted.max()), stream.end_time)
    span = cfg.shard_seconds if cfg.shard_seconds is not None else (stream.end_time - t0) / cfg.num_shards
    n = max(1, math.ceil((last - t0) / span))
    scored = np.floor((batch.event_time - t0) / span).astype(np.int64)  # (B,) shard of the impression
    trained = np.floor((emitted - t0) / span).astype(np.int64)  # (B,) shard of the emission
    head = batch.take(np.flatnonzero(trained < 0))
    eval_shards = [batch.take(np.flatnonzero(scored == k)) for k in range(n)]
    train_shards = [batch.take(np.flatnonzero(trained == k)) for k in range(n)]
    ends = [t0 + (k + 1) * span for k in range(n)]
    return head, eval_shards, train_shards, ends, span


def _run_sim(cfg: SyncIntervalConfig, progress: ProgressFn | None) -> ExperimentResult:
    t_start = time.perf_counter()
    intervals: list[int | None] = [None, *cfg.intervals]
    runs: list[dict[str, Any]] = []
    per_shard: list[dict[str, Any]] = []
    notes: list[str] = []
    n_batch: list[int] = []
    ceilings: list[float] = []  # AUC of the ground-truth probabilities on the scored impressions
    for j, seed in enumerate(cfg.seed_list):
        stream = SimStream(cfg.sim, seed, sim_spec(cfg.dim))
        head, shards, train_shards, ends, span = _sim_shards(cfg, stream)
        batch, _ = stream.examples()
        online = batch.event_time >= ends[0] - span  # every impression the replicas score
        ceilings.append(weighted_auc(stream.true_probs()[online], batch.labels[online, 0], batch.weights[online]))
        spec = seeded_spec(stream.spec, seed)
        n = len(shards)
        step = (
            None
            if progress is None
            else (lambda i, _n, what, j=j, n=n: progress(j * n + i, len(cfg.seed_list) * n, what))
        )
        runs += _run_seed(cfg, spec, head, shards, intervals, seed, per_shard, step, train_shards, ends)
        notes.append(stream.describe() + f" (seed {seed})")
        n_batch.append(head.size)
    _pair(runs)
    return _result(
        cfg, runs, per_shard, shards, intervals, round(float(np.mean(n_batch))), time.perf_counter() - t_start,
        [notes[0], "one simulated world per seed (world.seed = seed); each shard: the replicas score the "
         "impressions made during it, the trainer learns the examples the joiner emitted during it, then "
         "expires rows",
         "ceiling: the simulator's ground-truth click probabilities score AUC {:.4f} ± {:.4f} on the same "
         "online examples (a perfect model)".format(*mean_std(ceilings))], span,
    )  # fmt: skip


def _pair(runs: list[dict[str, Any]]) -> None:
    base = {r["seed"]: r for r in runs if r["interval_shards"] is None}
    for r in runs:
        b = base[r["seed"]]
        r["delta_auc_shard_mean"] = r["auc_shard_mean"] - b["auc_shard_mean"]
        r["delta_auc_pooled"] = r["auc_pooled"] - b["auc_pooled"]


def run(cfg: SyncIntervalConfig, progress: ProgressFn | None = None) -> ExperimentResult:
    if is_sim(cfg.data):
        return _run_sim(cfg, progress)
    t_start = time.perf_counter()
    data, data_notes = load_data(cfg)
    head, tail = data.split_by_time(cfg.batch_fraction)
    head = head.fit()
    tail = tail.with_spec(head.spec)
    head_batch = head.encode()
    shards = _shards(cfg, tail.encode(), data.has_time)
    intervals: list[int | None] = [None, *cfg.intervals]
    total = len(cfg.seed_list) * len(shards)
    runs: list[dict[str, Any]] = []
    per_shard: list[dict[str, Any]] = []
    for j, seed in enumerate(cfg.seed_list):
        spec = seeded_spec(head.spec, seed, dim=cfg.dim)
        step = None if progress is None else (lambda i, _n, what, j=j: progress(j * len(shards) + i, total, what))
        runs += _run_seed(cfg, spec, head_batch, shards, intervals, seed, per_shard, step)
    _pair(runs)
    return _result(
        cfg, runs, per_shard, shards, intervals, len(head), time.perf_counter() - t_start, data_notes,
        cfg.shard_seconds,
    )  # fmt: skip


def _result(
    cfg: SyncIntervalConfig,
    runs: list[dict[str, Any]],
    per_shard: list[dict[str, Any]],
    shards: list[Batch],
    intervals: list[int | None],
    n_batch: int,
    seconds: float,
    data_notes: list[str],
    shard_seconds: float | None,
) -> ExperimentResult:
    metrics = ["auc_shard_mean", "auc_pooled", "logloss", "delta_auc_shard_mean", "delta_auc_pooled"]
    summary = summarize(runs, ["setting", "interval_shards"], metrics)
    rows_per_shard = float(np.mean([s.size for s in shards]))
    for row in summary:
        k = row["interval_shards"]
        if k is None:
            row["sync_every"] = "never"
        elif shard_seconds is not None:
            row["sync_every"] = duration(k * shard_seconds)
        else:
            row["sync_every"] = f"{k * rows_per_shard:,.0f} examples"
    curves: dict[str, Any] = {}
    n = len(shards)
    by_shard: dict[tuple[str, int], list[float]] = {}
    for r in per_shard:
        by_shard.setdefault((r["setting"], r["shard"]), []).append(r["auc"])
    for k in intervals:
        name = _setting(k)
        stats = [mean_std(by_shard.get((name, i), [])) for i in range(1, n + 1)]
        curves[name] = {"mean": [m for m, _ in stats], "std": [s for _, s in stats]}
    columns = [
        Column("setting", "setting"),
        Column("sync_every", "sync every"),
        Column("auc_shard_mean", "AUC (mean over shards)", "pm"),
        Column("delta_auc_shard_mean", "Δ vs batch-only", "pm"),
        Column("auc_pooled", "AUC (all online examples)", "pm"),
        Column("delta_auc_pooled", "Δ vs batch-only", "pm"),
        Column("logloss", "logloss", "pm"),
    ]
    span = (
        f"{n} shards of {duration(shard_seconds)}"
        if shard_seconds is not None
        else f"{n} shards of ~{rows_per_shard:,.0f} examples"
    )
    return ExperimentResult(
        name="sync-interval",
        config=cfg,
        title=f"sync-interval: serving AUC on each shard before training on it, mean ± std over "
        f"{len(cfg.seed_list)} seed(s); batch stage {n_batch:,} examples, online {span}",
        columns=columns,
        summary=summary,
        runs=runs,
        series={"auc_per_shard": curves, "shard_examples": [s.size for s in shards], "per_shard": per_shard},
        notes=[
            *data_notes,
            "Δ: paired by seed against the batch-only replica (same batch model, same shards)",
            "sync = the training PS's touched rows and tombstones since the replica's last sync, "
            "then the dense weights",
        ],
        seconds=seconds,
    )


def plot(result: ExperimentResult, out: str | Path) -> list[Path]:
    """``sync_interval.png``: serving AUC per shard per setting, and Δ AUC vs batch-only."""
    from freshrec.experiments import _plot

    fig, (ax, ax2) = _plot.figure(2)
    curves = result.series["auc_per_shard"]
    n = len(next(iter(curves.values()))["mean"])
    smooth = 7 if n > 30 else 1  # many short shards (days): a 7-shard moving average keeps it readable
    for name, c in curves.items():
        x = np.arange(1, n + 1)
        mean = np.convolve(np.nan_to_num(np.asarray(c["mean"], float), nan=0.5), np.ones(smooth) / smooth, "valid")
        style = "--" if name == BATCH_ONLY else "-"
        _plot.band(
            ax,
            x[smooth - 1 :],
            mean,
            None,
            name,
            marker="o" if smooth == 1 else None,
            markersize=3,
            linestyle=style,
        )
    ax.set_xlabel("online shard (time order)")
    ax.set_ylabel("serving AUC on the shard" + (f", {smooth}-shard mean" if smooth > 1 else ""))
    rows = [r for r in result.summary if r["interval_shards"] is not None]
    labels = [f"{r['interval_shards']}\n({r['sync_every']})" for r in rows]
    ax2.bar(
        range(len(rows)),
        [r["delta_auc_shard_mean_mean"] for r in rows],
        yerr=[r["delta_auc_shard_mean_std"] for r in rows],
        capsize=4,
        color="tab:blue",
    )
    ax2.set_xticks(range(len(rows)), labels, fontsize=8)
    ax2.axhline(0.0, color="gray", linewidth=0.8)
    ax2.set_xlabel("sync every k shards")
    ax2.set_ylabel("AUC − batch-only (mean over shards)")
    return [_plot.save(fig, Path(out) / "sync_interval.png", "train -> serve sync interval (Algorithm 1)")]
