"""The closed loop of ``freshrec experiment ab``, in one process and on event time.

    simulator --impressions, actions--> event log --> joiner --> online trainer (two-tower)
        ^                                                               | sparse deltas, dense
        | requests, by a stable hash of the user                        | weights (event time)
        |                                                               v
    arm: its serving replica <--- Subscriber.poll() at the arm's cadence <--- sync log (Publisher)

:func:`run_world` runs one world: the warm-up (the simulator's random policy; the trainer
learns from it; a serving snapshot at its end starts every arm's replica), then the loop, chunk
by chunk of the simulator (``chunk_seconds``): the simulator asks :class:`Recommender` for each
request's slate (the user's arm scores every live item of the catalog with its replica and shows
the top k), its events go to the log and the catalog, the pipeline joins and trains what is
ready (:class:`~freshrec.online.OnlinePipeline` with the event time as its clock, so the
publisher's cadences are event seconds), and each arm applies the sync log when its cadence is
due. :class:`Ledger` keeps every request (arm, user, time, items shown, expected clicks, age of
the parameters that served it) and the clicks the simulator drew for it.
:func:`reference_run` runs a built-in policy on the same world and window.

Everything that decides a number is seeded or event-timed; with torch and the parameter server
on one thread a run repeats bit for bit.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from freshrec.experiments._common import ProgressFn, duration, seeded_spec
from freshrec.features import Batch
from freshrec.joiner import append_events
from freshrec.models import TwoTowerConfig
from freshrec.online import OnlineConfig, OnlinePipeline, live_commerce_spec
from freshrec.ps import PSConfig
from freshrec.serve.arms import ArmRouter
from freshrec.serve.engine import explore_count, mix_exploration
from freshrec.serve.features import ColumnBuilder
from freshrec.serve.items import LiveItems
from freshrec.sim import Recommendation, Simulator
from freshrec.stream import Action, ItemLifecycle, open_log
from freshrec.sync import ServedModel, Subscriber

if TYPE_CHECKING:
    from freshrec.experiments.ab import ABConfig, ArmConfig

__all__ = ["REQUEST_BASE", "Ledger", "Recommender", "reference_run", "run_world"]

REQUEST_BASE = 1 << 40  # the arms' request ids start here: above any serial the warm-up's policy gives
TAIL_S = 120.0  # after the loop, event time for late clicks: P(click delay > 120 s) ~ 4e-5 in the sim


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
                 user_builder: ColumnBuilder, start: float, seed: int) -> None:  # fmt: skip
        self.name, self.index, self.every = cfg.name, index, cfg.sync_every_s
        self.explore, self.explore_pool = cfg.explore, cfg.explore_pool
        self.rng = np.random.default_rng([seed, index])  # exploration draws: the same run, the same draws
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
class Ledger:
    """Every closed-loop request: its arm, user, event time, items shown, expected clicks (the sum of
    their true click probabilities), the age of the parameters that served it, and its clicks."""

    arm: list[int] = field(default_factory=list)
    user: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    explored: list[int] = field(default_factory=list)  # of the items shown, exploration picks
    expected: list[float] = field(default_factory=list)
    age: list[float] = field(default_factory=list)
    clicks: dict[int, int] = field(default_factory=dict)  # request serial -> clicks

    def count_clicks(self, events: list[Any], n_arms: int) -> None:
        for e in events:
            rid = getattr(e, "request_id", None)
            if type(e) is Action and e.type == "click" and isinstance(rid, int) and rid >= REQUEST_BASE:
                serial = (rid - REQUEST_BASE) // n_arms
                self.clicks[serial] = self.clicks.get(serial, 0) + 1


class Recommender:
    """The simulator's recommender in the closed loop: route, score every live item, top k."""

    def __init__(self, sim: Simulator, arms: list[_Arm], router: ArmRouter, ledger: Ledger) -> None:
        self.sim, self.arms, self.router, self.ledger = sim, arms, router, ledger
        self.by_name = {a.name: a for a in arms}

    def recommend(self, user_id: int, k: int, now: float, context: dict[str, Any]) -> Recommendation:
        arm = self.by_name[self.router.assign(user_id)]
        ids: list[Any] = []
        explored = 0
        if arm.ids:
            scores = arm.matrix @ arm.user_vector(user_id, self.sim.user_features(user_id), context)  # (N,)
            n = scores.shape[0]
            kk = min(k, n)
            top = np.argpartition(-scores, kk - 1)[:kk]
            slate = top[np.argsort(-scores[top], kind="stable")].tolist()
            m = explore_count(arm.explore, k, arm.rng)
            if m:  # as a serving arm does: random picks among the newest listings (the catalog's last)
                pool = min(n, arm.explore_pool)
                drawn = (n - pool + arm.rng.choice(pool, min(pool, m + k), replace=False)).tolist()
                slate, flags = mix_exploration(slate, drawn, k, m, lambda i: i, arm.rng)
                explored = sum(flags)
            ids = [arm.ids[i] for i in slate]
        p = self.sim.true_ctr(user_id, ids, now, positions=np.arange(len(ids)), device=context["device"])
        led = self.ledger
        serial = len(led.arm)
        led.arm.append(arm.index)
        led.user.append(user_id)
        led.time.append(now)
        led.shown.append(len(ids))
        led.explored.append(explored)
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
                       "negative_rate": cfg.negative_rate, "sampling_seed": seed, "emit": cfg.emit,
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
                arms.append(_Arm(a, i, model, sub, ColumnBuilder(spec, only=names[0]), t, seed))
            for arm in arms:
                arm.refresh(catalog)

            ledger = Ledger()
            router = ArmRouter([(a.name, 1.0) for a in cfg.arms], seed=seed)
            sim.set_recommender(Recommender(sim, arms, router, ledger))
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
        "warm_calibration": warm_metrics.get("click/calibration", math.nan),
        "end_calibration": end_metrics.get("click/calibration", math.nan),
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
