"""``freshrec experiment ab``: fresh sync vs stale sync vs batch-only, as an A/B test in a closed loop.

The paper's case for real-time training is that a model synced to serving within a minute earns
more than one synced rarely, because items and users change faster than a stale model follows.
Here the arms of an A/B test serve the simulator's users, and what each arm shows changes what
its users click (a closed loop), all in-process and driven by event time::

    simulator --impressions, actions--> event log --> joiner --> online trainer (two-tower)
        ^                                                               | sparse deltas every 10 s,
        | requests, by a stable hash of the user                        | dense every minute
        |                                                               v
    arm: its serving replica <--- Subscriber.poll() at the arm's cadence <--- sync log (Publisher)

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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator, model_validator

from freshrec.config import Config
from freshrec.experiments._common import (
    Column,
    ExperimentConfig,
    ExperimentResult,
    ProgressFn,
    duration,
    seeded_spec,
    summarize,
    wilson,
)
from freshrec.experiments.sim_stream import experiment_world, live_catalog, merge_world
from freshrec.features import Batch
from freshrec.joiner import append_events
from freshrec.models import TwoTowerConfig
from freshrec.online import OnlineConfig, OnlinePipeline, live_commerce_spec, live_commerce_two_tower
from freshrec.ps import PSConfig
from freshrec.serve.arms import ArmRouter
from freshrec.serve.features import ColumnBuilder
from freshrec.serve.items import LiveItems
from freshrec.sim import Recommendation, SimConfig, Simulator
from freshrec.stream import Action, ItemLifecycle, open_log
from freshrec.sync import ServedModel, Subscriber

__all__ = ["ABConfig", "ArmConfig", "plot", "run", "run_world"]

REQUEST_BASE = 1 << 40  # the arms' request ids start here: above any serial the warm-up's policy gives
TAIL_S = 120.0  # after the loop, event time for late clicks: P(click delay > 120 s) ~ 4e-5 in the sim
REFERENCES = ("random", "oracle")


class ArmConfig(Config):
    """One arm: its name and how often its replica applies the sync log (event seconds; None =
    never after the warm-up: the batch-only model)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    sync_every_s: float | None = Field(None, gt=0)


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
    seeds: int = Field(5, ge=1, le=100)
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
    model: TwoTowerConfig = Field(default_factory=live_commerce_two_tower)
    dim: int = Field(16, ge=1)
    batch_size: int = Field(256, ge=1)
    dense_lr: float = Field(1e-3, gt=0)
    item_ttl_factor: float = Field(2.0, gt=0)
    user_ttl_s: float = Field(86_400.0, gt=0)
    references: bool = True
    bin_s: float = Field(1800.0, gt=0)

    @field_validator("world", mode="before")
    @classmethod
    def _onto_default_world(cls, v: Any) -> Any:
        return merge_world(v)

    @field_validator("lifetimes")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not (x > 0 and math.isfinite(x)) for x in v) or len(set(v)) != len(v):
            raise ValueError(f"lifetimes must be distinct positive seconds, got {v}")
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


# ---- the serving side --------------------------------------------------------------------------


class _Catalog:
    """The live catalog as serving knows it (lifecycle events applied after each chunk) and the
    item-tower input of every live item, encoded once per catalog version for all arms."""

    def __init__(self, builder: ColumnBuilder) -> None:
        self.items = LiveItems()
        self.builder = builder
        self.version = -1
        self.ids: list[Any] = []
        self.batch: Batch | None = None

    def apply(self, events: list[Any]) -> None:
        self.items.apply([e for e in events if type(e) is ItemLifecycle])

    def encoded(self) -> tuple[int, list[Any], Batch | None]:
        view = self.items.view()
        if view.version != self.version:
            self.version, self.ids = view.version, list(view.ids)
            if view.ids:
                cols, missing = self.builder.raw(0, {}, {}, view.ids, view.features)
                if missing:  # the simulator's items always carry every item feature
                    raise AssertionError(f"catalog items lack {missing[0].name}")
                self.batch = self.builder.encode(cols, len(view.ids))
            else:
                self.batch = None
        return self.version, self.ids, self.batch


class _Arm:
    """One arm: a serving replica of the retriever, its subscriber (None: never synced), the
    item vectors of the live catalog under its current parameters, and a user-vector cache."""

    def __init__(self, cfg: ArmConfig, index: int, model: ServedModel, subscriber: Subscriber | None,
                 user_builder: ColumnBuilder, start: float) -> None:  # fmt: skip
        self.name, self.index, self.every = cfg.name, index, cfg.sync_every_s
        self.model, self.subscriber, self.user_builder = model, subscriber, user_builder
        self.last_sync = start
        self.syncs = 0
        self._key: tuple = ()
        self.ids: list[Any] = []
        self.matrix = np.zeros((0, 0), np.float32)  # (N, K) item vectors
        self._users: dict[tuple, np.ndarray] = {}  # (user, context) -> (K,) under the current parameters

    def maybe_sync(self, now: float) -> None:
        if self.subscriber is not None and self.every is not None and now - self.last_sync >= self.every:
            while self.subscriber.poll() > 0:
                pass
            self.last_sync = now
            self.syncs += 1

    def _params(self) -> tuple:
        m = self.model
        return (m.sparse_version, m.dense_version, id(m.module), id(m.ps))

    @torch.no_grad()
    def refresh(self, catalog: _Catalog) -> None:
        """Item vectors for the catalog's version under the current parameters (recomputed only
        when either changed); the user cache is dropped when the parameters changed."""
        version, ids, batch = catalog.encoded()
        params = self._params()
        if self._key[1:] != params:
            self._users.clear()
        if self._key == (version, *params):
            return
        self._key = (version, *params)
        self.ids = ids
        if batch is None:
            self.matrix = np.zeros((0, 0), np.float32)
            return
        module, pooled = self.model.pooled(batch)
        self.matrix = module.item_vectors(pooled, torch.from_numpy(batch.dense)).numpy()  # (N, K)

    @torch.no_grad()
    def user_vector(self, user_id: int, user: dict[str, Any], context: dict[str, Any]) -> np.ndarray:
        key = (user_id, *sorted(context.items()))
        vec = self._users.get(key)
        if vec is None:
            cols, missing = self.user_builder.raw(user_id, user, context, [None], [{}])
            if missing:
                raise AssertionError(f"the request lacks {missing[0].name}")
            batch = self.user_builder.encode(cols, 1)
            module, pooled = self.model.pooled(batch)
            vec = module.user_vectors(pooled, torch.from_numpy(batch.dense)).numpy()[0]  # (K,)
            self._users[key] = vec
        return vec


@dataclass
class _Ledger:
    """Every closed-loop request: its arm, user, event time, items shown, expected clicks (the sum of
    their true click probabilities), the age of the parameters that served it, and its clicks."""

    arm: list[int] = field(default_factory=list)
    user: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    age: list[float] = field(default_factory=list)
    clicks: dict[int, int] = field(default_factory=dict)  # request serial -> clicks

    def count_clicks(self, events: list[Any], n_arms: int) -> None:
        for e in events:
            rid = getattr(e, "request_id", None)
            if type(e) is Action and e.type == "click" and isinstance(rid, int) and rid >= REQUEST_BASE:
                serial = (rid - REQUEST_BASE) // n_arms
                self.clicks[serial] = self.clicks.get(serial, 0) + 1


class _Recommender:
    """The simulator's recommender in the closed loop: route, score every live item, top k."""

    def __init__(self, sim: Simulator, arms: list[_Arm], router: ArmRouter, ledger: _Ledger) -> None:
        self.sim, self.arms, self.router, self.ledger = sim, arms, router, ledger
        self.by_name = {a.name: a for a in arms}

    def recommend(self, user_id: int, k: int, now: float, context: dict[str, Any]) -> Recommendation:
        arm = self.by_name[self.router.assign(user_id)]
        ids: list[Any] = []
        if arm.ids:
            scores = arm.matrix @ arm.user_vector(user_id, self.sim.user_features(user_id), context)  # (N,)
            kk = min(k, scores.shape[0])
            top = np.argpartition(-scores, kk - 1)[:kk]
            top = top[np.argsort(-scores[top], kind="stable")]
            ids = [arm.ids[i] for i in top.tolist()]
        p = self.sim.true_ctr(user_id, ids, now, positions=np.arange(len(ids)), device=context["device"])
        led = self.ledger
        serial = len(led.arm)
        led.arm.append(arm.index)
        led.user.append(user_id)
        led.time.append(now)
        led.shown.append(len(ids))
        led.expected.append(float(p.sum()))
        et = arm.model.event_time
        led.age.append(now - et if math.isfinite(et) else math.nan)
        rid = REQUEST_BASE + serial * len(self.arms) + arm.index
        return Recommendation(request_id=rid, item_ids=ids, logged=False, model_version=arm.name)


def _no_slate(user_id: int, k: int, now: float, context: dict[str, Any]) -> Recommendation:
    return Recommendation(request_id=None, item_ids=())


# ---- one world ---------------------------------------------------------------------------------


def _online_config(cfg: ABConfig, lifetime: float, seed: int, folder: Path) -> OnlineConfig:
    spec = live_commerce_spec(
        cfg.dim, ("click",), item_ttl=max(3600.0, cfg.item_ttl_factor * lifetime), user_ttl=cfg.user_ttl_s
    )
    huge = 1e15  # event seconds: no checkpoints or status files inside an experiment
    return OnlineConfig.from_dict(
        {
            "run_dir": str(folder),
            "log": {"path": str(folder / "log"), "synchronous": "normal"},  # a temp dir: no fsync needed
            "spec": seeded_spec(spec, seed).model_dump(mode="json"),
            "joiner": {"labels": ["click"], "window_s": cfg.window_s, "allowed_lateness_s": cfg.allowed_lateness_s,
                       "negative_rate": cfg.negative_rate, "sampling_seed": seed,
                       "checkpoint_interval_s": huge, "checkpoint_every_records": 1 << 60},
            "rank_model": cfg.model.model_dump(mode="json"),
            "retrieval": False,  # the one model is the retriever: arms score every live item with it
            "train": {"batch_size": cfg.batch_size, "dense_lr": cfg.dense_lr, "seed": seed,
                      "threads": cfg.threads, "metrics_window": 20_000},
            "ps": {"threads": cfg.threads},
            "sync": {"sparse_sync_interval": cfg.sparse_sync_s, "dense_sync_interval": cfg.dense_sync_s,
                     "snapshot_interval": None},
            "checkpoint_interval_s": huge,
            "status_interval_s": huge,
            "max_batch_wait_s": cfg.sparse_sync_s,  # a partial batch trains by the next publication
            "expire_every_s": 300.0,
        },
        source="ab online config",
    )  # fmt: skip


def _drive(pipe: OnlinePipeline) -> None:
    """Join and train everything that is ready at the current event time."""
    while pipe.round() or not pipe.joiner.caught_up:
        pass


def run_world(cfg: ABConfig, lifetime: float, seed: int, progress: ProgressFn | None = None) -> dict[str, Any]:
    """One closed-loop run (see the module docstring); returns per-arm and per-bin counts."""
    world = cfg.world_for(lifetime, seed)
    chunk = world.chunk_seconds
    t_end_warm = world.start_time + cfg.warmup_s
    t_end = t_end_warm + cfg.eval_s
    with tempfile.TemporaryDirectory(prefix="freshrec-ab-") as tmp:
        folder = Path(tmp)
        online = _online_config(cfg, lifetime, seed, folder)
        with open_log(online.log) as log:
            for topic in online.joiner.input_topics:
                log.create_topic(topic, 1)
        clock = [world.start_time]
        pipe = OnlinePipeline(online, clock=lambda: clock[0])
        sim = Simulator(world)
        catalog: _Catalog | None = None
        arms: list[_Arm] = []
        registry = CollectorRegistry()  # the subscribers' metrics, apart from the process's global ones
        try:
            total_chunks = math.ceil((t_end - world.start_time) / chunk)
            done = 0

            def step(until: float) -> list[Any]:
                nonlocal done
                events = sim.advance_to(until)
                clock[0] = until
                append_events(pipe.log, events)
                if catalog is not None:
                    catalog.apply(events)
                _drive(pipe)
                done += 1
                if progress is not None and done % 30 == 0:
                    progress(done, total_chunks, f"churn {duration(lifetime)}, seed {seed}: {duration(until)}")
                return events

            warm_events: list[Any] = []
            t = world.start_time
            while t < t_end_warm:
                t = min(t + chunk, t_end_warm)
                warm_events += [e for e in step(t) if type(e) is ItemLifecycle]
            trainer = pipe.trainers["rank"]
            warm_metrics = trainer.metrics.compute()
            pipe.publishers["rank"].snapshot()
            snap = online.sync.model_snapshot_dir("rank")

            spec = trainer.spec
            names = _tower_names(cfg.model)
            catalog = _Catalog(ColumnBuilder(spec, only=names[1]))
            catalog.apply(warm_events)
            del warm_events
            ps_config = PSConfig(num_shards=1, threads=cfg.threads)
            for i, a in enumerate(cfg.arms):
                model = ServedModel.from_snapshot(snap, name="rank", ps_config=ps_config)
                sub = None
                if a.sync_every_s is not None:
                    sub = Subscriber(model, pipe.log, online.sync, registry=registry, metrics_label=f"{a.name}/rank")
                    sub.poll()  # bootstrap: the snapshot, then the deltas after it (none yet)
                arms.append(_Arm(a, i, model, sub, ColumnBuilder(spec, only=names[0]), t))
            for arm in arms:
                arm.refresh(catalog)

            ledger = _Ledger()
            router = ArmRouter([(a.name, 1.0) for a in cfg.arms], seed=seed)
            sim.set_recommender(_Recommender(sim, arms, router, ledger))
            while t < t_end:
                t = min(t + chunk, t_end)
                ledger.count_clicks(step(t), len(arms))
                for arm in arms:
                    arm.maybe_sync(t)
                    arm.refresh(catalog)
            end_metrics = trainer.metrics.compute()
            sim.set_recommender(_no_slate)  # late clicks on the last slates; nothing new is shown
            ledger.count_clicks(sim.advance_to(t_end + TAIL_S), len(arms))
            stats = sim.stats.as_dict()
        finally:
            for arm in arms:
                if arm.subscriber is not None:
                    arm.subscriber.close()
                arm.model.close()
            pipe.close(checkpoint=False)
    return {
        "ledger": ledger,
        "syncs": {a.name: a.syncs for a in arms},
        "warm_auc": warm_metrics.get("click/auc", math.nan),
        "end_auc": end_metrics.get("click/auc", math.nan),
        "sim_stats": stats,
        "t0": t_end_warm,
    }


def _tower_names(model: TwoTowerConfig) -> tuple[list[str], list[str]]:
    return [*model.user_slots, *model.user_dense], [*model.item_slots, *model.item_dense]


def reference_run(cfg: ABConfig, lifetime: float, seed: int, policy: str) -> dict[str, Any]:
    """The simulator's built-in ``policy`` on the same world over the same window: impressions and
    clicks per bin of the closed loop's window."""
    world = cfg.world_for(lifetime, seed, policy)
    t0 = world.start_time + cfg.warmup_s
    t_end = t0 + cfg.eval_s
    sim = Simulator(world)
    sim.advance_to(t0)
    n_bins = math.ceil(cfg.eval_s / cfg.bin_s)
    shown = np.zeros(n_bins)
    clicks = np.zeros(n_bins)
    bin_of: dict[Any, int] = {}  # request id -> bin, for the requests inside the window
    for until, inside in ((t_end, True), (t_end + TAIL_S, False)):
        for e in sim.advance_to(until):
            kind = type(e).__name__
            if inside and kind == "Impression":
                b = min(int((e.event_time - t0) // cfg.bin_s), n_bins - 1)
                bin_of[e.request_id] = b
                shown[b] += 1
            elif kind == "Action" and e.type == "click" and e.request_id in bin_of:
                clicks[bin_of[e.request_id]] += 1
    return {"shown": shown, "clicks": clicks}


# ---- the experiment ----------------------------------------------------------------------------


def _arm_rows(cfg: ABConfig, lifetime: float, seed: int, out: dict[str, Any]) -> tuple[list[dict], dict]:
    led: _Ledger = out["ledger"]
    arm = np.asarray(led.arm, np.int64)
    shown = np.asarray(led.shown, np.float64)
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
                "model_age_s": float(np.nanmean(age[m])) if m.any() else math.nan,
                "syncs": out["syncs"][a.name],
                "trainer_auc_warmup": out["warm_auc"],
                "trainer_auc_end": out["end_auc"],
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
            for r in rows:
                r["lift"] = r["ctr"] / base["ctr"] - 1 if base["ctr"] else math.nan
                r["expected_lift"] = r["expected_ctr"] / base["expected_ctr"] - 1
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
    metrics = ["ctr", "expected_ctr", "lift", "expected_lift", "model_age_s", "impressions", "clicks"]
    metrics += ["trainer_auc_end"]
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
        Column("model_age", "model age at request"),
        Column("impressions", "impressions / seed", "pm", 0),
    ]
    arms = ", ".join(f"{a.name} ({'never' if a.sync_every_s is None else duration(a.sync_every_s)})" for a in cfg.arms)
    return ExperimentResult(
        name="ab",
        config=cfg,
        title=f"ab: closed-loop CTR per arm, mean and 95% CI over {len(cfg.seed_list)} seed(s); "
        f"warm-up {duration(cfg.warmup_s)} (random policy), then {duration(cfg.eval_s)} closed loop",
        columns=columns,
        summary=summary,
        runs=runs,
        series=series,
        notes=[
            f"arms (users split equally by a stable hash): {arms}; one online trainer learns from all arms' "
            f"traffic and publishes sparse deltas every {duration(cfg.sparse_sync_s)}, dense every "
            f"{duration(cfg.dense_sync_s)} of event time",
            "observed CTR = clicks / impressions; expected CTR = mean ground-truth click probability of the "
            "items shown (no click noise); lifts are paired by seed against batch-only",
            "model age at request: event time of the request minus the newest event time the arm's parameters reflect",
            f"world: {cfg.world.n_users:,} users (+{cfg.world.new_users_per_hour:g}/h), a live catalog of "
            f"~{live_catalog(cfg.world):,.0f} "
            "items; items_per_hour scaled per churn setting to keep it",
            "references: the simulator's random and oracle policies on the same worlds and window",
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
