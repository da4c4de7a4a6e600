"""``freshrec experiment collisions``: what hash collisions cost (paper: Table 1, Fig. 7).

The paper trains DeepFM on MovieLens-25M twice: with collisionless embedding tables, and with the
user and movie IDs hashed into smaller tables (collision rates 7.73% for users, 2.86% for
movies), and reports test AUC per epoch; the collisionless model wins at every epoch.

Here: any MovieLens ratings file (ratings >= 3.5 positive), split by time (the newest
``test_fraction`` held out). The collisionless model's tables take the raw IDs. A hashed model is
the same model whose slot IDs are first mapped to ``xxh64(id as 8 little-endian bytes, seed)
mod M``: colliding IDs then share one row, exactly as in a fixed array of ``M`` rows.
Each setting gives ``M`` per slot directly or as a target *collision rate*, the share of the
slot's distinct IDs that share their row with at least one other ID. For ``N`` distinct IDs
hashed uniformly into ``M`` rows its expectation is ``1 - (1 - 1/M) ** (N - 1)``, which
:func:`table_size_for_rate` inverts; the rate each run actually got is measured and reported.

Seeds vary the dense initialisation, the shuffling, the embedding initialisation and the hash
seed (so which IDs collide), and every metric is a mean ± sample std over them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from freshrec.config import Config
from freshrec.errors import ConfigError, InputError
from freshrec.experiments._common import (
    Column,
    ExperimentConfig,
    ExperimentResult,
    ProgressFn,
    id_spec,
    load_data,
    make_trainer,
    mean_std,
    seeded_spec,
    summarize,
)
from freshrec.experiments.stream import minibatches
from freshrec.features import Batch, Jagged
from freshrec.features.hashing import hash_strings
from freshrec.models import DeepFMConfig

__all__ = [
    "CollisionsConfig",
    "HashSetting",
    "collision_rate",
    "expected_collision_rate",
    "hash_buckets",
    "plot",
    "run",
    "table_size_for_rate",
]

COLLISIONLESS = "collisionless"


# ---- hashing and collision arithmetic ------------------------------------------------------


def hash_buckets(ids: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """``xxh64(id as 8 little-endian bytes, seed) mod size`` for each ID: ``(n,)`` int64 in
    ``[0, size)``. Vectorised: the IDs' own buffer is hashed as an Arrow binary array."""
    if size < 1:
        raise InputError(f"hash table size must be >= 1, got {size}")
    keys = np.ascontiguousarray(ids, dtype="<i8")  # (n,)
    n = keys.shape[0]
    offsets = np.arange(0, 8 * (n + 1), 8, dtype=np.int64)  # (n + 1,) every key is 8 bytes
    arr = pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(keys)])
    h = hash_strings(arr, seed).view(np.uint64)
    return (h % np.uint64(size)).astype(np.int64)


def collision_rate(ids: np.ndarray, size: int, seed: int = 0) -> float:
    """The share of the distinct ``ids`` whose bucket holds at least one other distinct ID."""
    distinct = np.unique(np.asarray(ids, dtype=np.int64))
    if distinct.size == 0:
        return 0.0
    _, inverse, counts = np.unique(hash_buckets(distinct, size, seed), return_inverse=True, return_counts=True)
    return float((counts[inverse] > 1).mean())


def expected_collision_rate(n: int, size: int) -> float:
    """Expected :func:`collision_rate` of ``n`` distinct IDs hashed uniformly into ``size`` rows."""
    return 1.0 - (1.0 - 1.0 / size) ** (n - 1) if n > 1 else 0.0


def table_size_for_rate(n: int, rate: float) -> int:
    """The table size whose expected collision rate for ``n`` distinct IDs is ``rate``
    (rounded to the nearest row)."""
    if not 0.0 < rate < 1.0:
        raise InputError(f"a target collision rate must be in (0, 1), got {rate}")
    if n < 2:
        return 1
    # (1 - 1/M) ** (n - 1) = 1 - rate  =>  1/M = 1 - (1 - rate) ** (1 / (n - 1)); log1p/expm1 keep precision
    inv = -math.expm1(math.log1p(-rate) / (n - 1))
    return max(1, round(1.0 / inv))


def hash_batch(batch: Batch, sizes: dict[str, int], seed: int) -> Batch:
    """``batch`` with the IDs of each slot in ``sizes`` replaced by their hash bucket."""
    sparse = dict(batch.sparse)
    for slot, size in sizes.items():
        jag = batch.sparse[slot]
        sparse[slot] = Jagged(hash_buckets(jag.values, size, seed), jag.offsets.copy())
    return Batch(sparse, batch.dense, batch.labels, batch.weights, batch.event_time)


# ---- config --------------------------------------------------------------------------------


class HashSetting(Config):
    """One hashed variant: per slot, a table size or a target collision rate (sizes win).

    Args:
        name: shown in the table and the plot.
        collision_rate: slot -> target share of its distinct IDs that share a row.
        table_size: slot -> rows.
    """

    name: str = Field(min_length=1)
    collision_rate: dict[str, float] = Field(default_factory=dict)
    table_size: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> HashSetting:
        for slot, r in self.collision_rate.items():
            if not 0.0 < r < 1.0:
                raise ValueError(f"setting {self.name!r}: collision_rate[{slot!r}] must be in (0, 1), got {r}")
        for slot, m in self.table_size.items():
            if m < 1:
                raise ValueError(f"setting {self.name!r}: table_size[{slot!r}] must be >= 1, got {m}")
        return self

    def size(self, slot: str, distinct: int) -> int:
        if slot in self.table_size:
            return self.table_size[slot]
        if slot in self.collision_rate:
            return table_size_for_rate(distinct, self.collision_rate[slot])
        raise ConfigError(
            f"collision setting {self.name!r} gives neither table_size nor collision_rate for slot {slot!r}"
        )


def _rates(users: float, items: float, name: str) -> HashSetting:
    return HashSetting(name=name, collision_rate={"user_id": users, "item_id": items})


def _default_settings() -> list[HashSetting]:
    return [
        # a control: the hashing path with (almost surely) no collision must match collisionless
        HashSetting(name="hashed, 2^30 rows", table_size={"user_id": 2**30, "item_id": 2**30}),
        _rates(0.0773, 0.0286, "paper rates"),  # Monolith Table 1: 7.73% of users, 2.86% of movies
        _rates(0.25, 0.25, "25%"),
        _rates(0.50, 0.50, "50%"),
        _rates(0.75, 0.75, "75%"),
        _rates(0.90, 0.90, "90%"),
    ]


class CollisionsConfig(ExperimentConfig):
    """Collisionless tables vs hashed ones, test AUC per epoch.

    Args:
        slots: the slots that are hashed in the hashed variants.
        settings: the hashed variants (the collisionless model always runs first).
        epochs: passes over the training split; test AUC is taken after each (paper: 10).
        test_fraction: the newest share of the examples held out.
        side_features: also read MovieLens-100K's user and item side features (never hashed);
            off by default: the experiment is about ID embeddings, and the 1M/25M files have none.
        model: DeepFM's MLP (the paper's DeepFM: 400-400-400).
        dim: embedding width of every table.
        batch_size: examples per step.
    """

    QUICK: ClassVar[dict[str, Any]] = {
        "seeds": 1,
        "epochs": 2,
        "settings": [_rates(0.0773, 0.0286, "paper rates"), _rates(0.50, 0.50, "50%")],
    }

    slots: list[str] = Field(default_factory=lambda: ["user_id", "item_id"], min_length=1)
    settings: list[HashSetting] = Field(default_factory=_default_settings)
    epochs: int = Field(10, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    side_features: bool = False
    model: DeepFMConfig = Field(default_factory=DeepFMConfig)
    dim: int = Field(16, ge=1)
    batch_size: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _names(self) -> CollisionsConfig:
        names = [s.name for s in self.settings]
        if COLLISIONLESS in names or len(set(names)) != len(names):
            raise ValueError(f"setting names must be unique and not {COLLISIONLESS!r}: {names}")
        return self


# ---- the experiment ------------------------------------------------------------------------


def run(cfg: CollisionsConfig, progress: ProgressFn | None = None) -> ExperimentResult:
    t_start = time.perf_counter()
    data, data_notes = load_data(cfg, id_spec(cfg, cfg.side_features))
    missing = [s for s in cfg.slots if s not in data.spec.slot_names]
    if missing:
        raise ConfigError(f"slots {missing} are not in the data's features {data.spec.slot_names}")
    for setting in cfg.settings:  # every hashed slot needs a size: fail before training anything
        for slot in cfg.slots:
            setting.size(slot, 2)
    train, test = data.split_by_time(1 - cfg.test_fraction)
    train = train.fit()
    test = test.with_spec(train.spec)
    tr_batch, te_batch = train.encode(), test.encode()
    distinct = {s: np.unique(np.concatenate([tr_batch.sparse[s].values, te_batch.sparse[s].values])) for s in cfg.slots}
    label = train.spec.labels[0]
    variants: list[tuple[str, dict[str, int]]] = [(COLLISIONLESS, {})]
    variants += [(st.name, {s: st.size(s, distinct[s].size) for s in cfg.slots}) for st in cfg.settings]
    total = len(cfg.seed_list) * len(variants) * cfg.epochs
    done = 0
    runs: list[dict[str, Any]] = []
    for seed in cfg.seed_list:
        spec = seeded_spec(train.spec, seed, dim=cfg.dim)
        for name, sizes in variants:
            row: dict[str, Any] = {"setting": name, "seed": seed}
            for s in cfg.slots:
                row[f"{s}_rows"] = sizes.get(s, int(distinct[s].size))
                row[f"{s}_collision_rate"] = collision_rate(distinct[s], sizes[s], seed) if s in sizes else 0.0
            tr = hash_batch(tr_batch, sizes, seed) if sizes else tr_batch
            te = hash_batch(te_batch, sizes, seed) if sizes else te_batch
            trainer = make_trainer(spec, cfg.model, seed=seed, threads=cfg.threads, batch_size=cfg.batch_size)
            try:
                for epoch in range(1, cfg.epochs + 1):
                    order_seed = seed * 1_000_003 + epoch
                    for b in minibatches(tr, cfg.batch_size, shuffle=True, seed=order_seed):
                        trainer.step(b)
                    m = trainer.evaluate(minibatches(te, 8192))
                    runs.append({**row, "epoch": epoch, "auc": m[f"{label}/auc"], "logloss": m[f"{label}/logloss"]})
                    done += 1
                    if progress is not None:
                        progress(done, total, f"seed {seed}: {name}, epoch {epoch}")
            finally:
                trainer.close()
    return _result(cfg, runs, variants, distinct, len(train), len(test), time.perf_counter() - t_start, data_notes)


def _result(
    cfg: CollisionsConfig,
    runs: list[dict[str, Any]],
    variants: list[tuple[str, dict[str, int]]],
    distinct: dict[str, np.ndarray],
    n_train: int,
    n_test: int,
    seconds: float,
    data_notes: list[str],
) -> ExperimentResult:
    last = cfg.epochs
    base = {r["seed"]: r["auc"] for r in runs if r["setting"] == COLLISIONLESS and r["epoch"] == last}
    per_run: list[dict[str, Any]] = []  # one row per (setting, seed): first, best and last epoch
    for name, _ in variants:
        for seed in cfg.seed_list:
            rows = [r for r in runs if r["setting"] == name and r["seed"] == seed]
            aucs = [r["auc"] for r in rows]
            first = rows[0]
            per_run.append(
                {
                    **{k: v for k, v in first.items() if k not in ("epoch", "auc", "logloss")},
                    "auc_first": aucs[0],
                    "auc_best": max(aucs),
                    "best_epoch": int(np.argmax(aucs)) + 1,
                    "auc_last": aucs[-1],
                    "logloss_last": rows[-1]["logloss"],
                    "delta_auc_last": aucs[-1] - base[seed],
                }
            )
    metrics = [f"{s}_collision_rate" for s in cfg.slots]
    metrics += ["auc_first", "auc_best", "best_epoch", "auc_last", "logloss_last", "delta_auc_last"]
    summary = summarize(per_run, ["setting", *[f"{s}_rows" for s in cfg.slots]], metrics)
    curves: dict[str, Any] = {}
    for name, _ in variants:
        per_epoch = [
            mean_std(r["auc"] for r in runs if r["setting"] == name and r["epoch"] == e) for e in range(1, last + 1)
        ]
        curves[name] = {"mean": [m for m, _ in per_epoch], "std": [s for _, s in per_epoch]}
    columns = [Column("setting", "setting")]
    for s in cfg.slots:
        columns += [
            Column(f"{s}_rows", f"{s} table size", "int"),
            Column(f"{s}_collision_rate", f"{s} collisions", "pct", 2),
        ]
    columns += [
        Column("auc_first", "AUC epoch 1", "pm"),
        Column("auc_best", "AUC best epoch", "pm"),
        Column("auc_last", f"AUC epoch {last}", "pm"),
        Column("delta_auc_last", f"Δ AUC epoch {last} vs collisionless", "pm"),
    ]
    n_distinct = ", ".join(f"{s}: {v.size:,}" for s, v in distinct.items())
    return ExperimentResult(
        name="collisions",
        config=cfg,
        title=f"collisions: test AUC, mean ± std over {len(cfg.seed_list)} seed(s); "
        f"{n_train:,} training / {n_test:,} newest test examples; distinct IDs {n_distinct}",
        columns=columns,
        summary=summary,
        runs=runs,
        series={
            "auc_per_epoch": curves,
            "epochs": list(range(1, last + 1)),
            "distinct_ids": {s: int(v.size) for s, v in distinct.items()},
        },
        notes=[
            *data_notes,
            "collision rate: share of a slot's distinct IDs that share their row with another ID",
            "Δ: paired by seed against the collisionless model at the same seed",
        ],
        seconds=seconds,
    )


def plot(result: ExperimentResult, out: str | Path) -> list[Path]:
    """``collisions.png``: test AUC per epoch per setting (± std band), and the AUC change at the
    best epoch against each setting's measured collision rate (mean of its slots)."""
    from freshrec.experiments import _plot

    epochs = result.series["epochs"]
    fig, (ax, ax2) = _plot.figure(2)
    for name, curve in result.series["auc_per_epoch"].items():
        _plot.band(ax, epochs, curve["mean"], curve["std"], name, marker="o", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test AUC")
    base = next(r for r in result.summary if r["setting"] == COLLISIONLESS)
    slots = result.config.slots
    for r in result.summary:
        rate = float(np.mean([r[f"{s}_collision_rate_mean"] for s in slots])) * 100
        delta = r["auc_best_mean"] - base["auc_best_mean"]
        ax2.errorbar(rate, delta, yerr=r["auc_best_std"], fmt="o", capsize=3)
        ax2.annotate(r["setting"], (rate, delta), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax2.axhline(0.0, color="gray", linewidth=0.8)
    ax2.set_xlabel("measured collision rate, mean over hashed slots (%)")
    ax2.set_ylabel("AUC at best epoch − collisionless")
    return [_plot.save(fig, Path(out) / "collisions.png", "DeepFM, collisionless vs hashed IDs")]
