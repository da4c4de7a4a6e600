"""A serving replica without HTTP: arms, the live catalog, the event log, and their lifecycle.

:class:`Replica` owns one :class:`~freshrec.serve.engine.ArmEngine` per A/B arm, the live
catalog and its tailer, the item-vector refresher, the writer that logs /v1/recommend's
impressions, the request ledger that credits actions to arms, and the metrics. The HTTP layer
(``app.py``) only parses, calls a method here, and renders.

Subscribers (the sync subscribers that keep each :class:`ServedModel` fresh) are plugged in
from outside: any object with ``start()`` and ``stop(timeout)``; the replica starts them after
warmup and stops them on shutdown, after the impression writer.
"""

from __future__ import annotations

import enum
import gc
import itertools
import logging
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from freshrec.errors import ConfigError, FreshrecError, InputError, SchemaError, StateError
from freshrec.features import warmup as warm_features
from freshrec.serve.arms import ArmRouter, RequestLedger
from freshrec.serve.config import ServeConfig
from freshrec.serve.engine import ArmEngine, ModelInfo
from freshrec.serve.items import ItemTailer, LiveItems
from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.writer import EventWriter
from freshrec.stream import Action, EventLog, Impression, ItemLifecycle, decode_json_many, encode, open_log
from freshrec.sync import ServingState

__all__ = ["Replica", "ReplicaState", "Subscriber"]

log = logging.getLogger(__name__)


class ReplicaState(enum.Enum):
    CREATED = "created"  # models loaded; nothing started; requests are refused
    STARTING = "starting"  # warming up, creating topics, catching up on the catalog
    SERVING = "serving"  # answering requests
    STOPPING = "stopping"  # new requests refused; background threads and subscribers stopping
    STOPPED = "stopped"  # everything released


class Subscriber(Protocol):
    """What the replica needs of a sync subscriber (``freshrec.sync``). One that also has
    ``describe()``, ``state`` (the served model it feeds) and ``label`` (as
    ``freshrec.sync.Subscriber`` does) shows its status in /v1/model and /v1/healthz."""

    def catch_up(self, timeout_s: float = 60.0) -> bool: ...

    def start(self) -> None: ...

    def stop(self, timeout: float) -> None:
        """Stop within about ``timeout`` seconds (the replica's shutdown budget, what is left of it)."""
        ...


class _SwitchInterval:
    """The process's GIL switch interval while replicas serve: the shortest any running replica
    asked for; the process's own comes back when the last one stops (replicas may overlap, as
    in tests and benchmarks that run several in one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: list[float] = []
        self._saved = 0.0

    def claim(self, seconds: float) -> None:
        with self._lock:
            if not self._claims:
                self._saved = sys.getswitchinterval()
            self._claims.append(seconds)
            sys.setswitchinterval(min(self._claims))

    def release(self, seconds: float) -> None:
        with self._lock:
            self._claims.remove(seconds)
            sys.setswitchinterval(min(self._claims) if self._claims else self._saved)


_SWITCH = _SwitchInterval()


def _key(value: Any) -> bytes:
    return str(value).encode()


class Replica:
    """See the module docstring. Thread-safe once started."""

    def __init__(
        self,
        config: ServeConfig,
        states: Mapping[str, ServingState],
        *,
        log_: EventLog | None = None,
        subscribers: Sequence[Subscriber] = (),
        metrics: ServeMetrics | None = None,
    ) -> None:
        names = [a.name for a in config.arms]
        if sorted(states) != sorted(names):
            raise ConfigError(f"states are given for arms {sorted(states)}, the config has arms {sorted(names)}")
        self.config = config
        self.state = ReplicaState.CREATED
        self.items = LiveItems()
        self.engines = {
            a.name: ArmEngine(
                a.name,
                states[a.name],
                self.items,
                retrieve_k=config.retrieve_k,
                explore=a.explore,
                explore_pool=a.explore_pool,
            )
            for a in config.arms
        }
        self.router = ArmRouter([(a.name, a.weight) for a in config.arms], seed=config.arm_seed)
        self.ledger = RequestLedger(config.request_memory)
        self.metrics = metrics or ServeMetrics()
        self.subscribers = list(subscribers)
        self._owns_log = log_ is None
        self.log: EventLog | None = log_
        self.tailer: ItemTailer | None = None
        self.writer: EventWriter | None = None
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        self._switched: float | None = None  # this replica's claim on the GIL switch interval
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:10]  # this process's requests; a counter within
        self.started_wall = time.time()
        self.metrics.watch(self.engines, self.items, lambda: self.tailer, lambda: self.writer)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, *, catch_up_timeout_s: float = 60.0) -> None:
        """Warm up, open the log and its topics, read the catalog, start the background threads,
        bring every sync-fed model up to the end of the sync log and start its subscriber.
        Requests are answered (and /v1/healthz says ok) only after this returns."""
        if self.state is not ReplicaState.CREATED:
            raise StateError(f"cannot start the replica: it is {self.state.value}")
        self.state = ReplicaState.STARTING
        c = self.config
        torch.set_num_threads(c.torch_threads)
        self._switched = c.gil_switch_interval_ms / 1000.0
        _SWITCH.claim(self._switched)
        warm_features()
        for engine in self.engines.values():
            engine.warmup(c.warmup_candidates)
        if self.log is None:
            self.log = open_log(c.log)
        for topic in (c.topics.impressions, c.topics.actions, c.topics.items):
            created = self.log.ensure_topic(topic, c.topics.partitions)[1]
            if created and topic != c.topics.items:  # `freshrec online` reads these: a misspelt name goes nowhere
                log.warning("topic %r did not exist; created it with %d partitions. `freshrec online` must read it "
                            "(its joiner.input_topics)", topic, c.topics.partitions)  # fmt: skip
        self.writer = EventWriter(self.log)
        if c.tail_items:
            self.tailer = ItemTailer(self.log, c.topics.items, self.items)
            self.tailer.start()
            if not self.tailer.caught_up.wait(catch_up_timeout_s):
                log.warning("item tailer not caught up after %.0f s; serving anyway", catch_up_timeout_s)
        self.refresh_item_vectors()
        self._refresher = threading.Thread(target=self._refresh_loop, name="freshrec-item-vectors", daemon=True)
        self._refresher.start()
        deadline = time.monotonic() + catch_up_timeout_s  # one budget for every model of every arm
        for sub in self.subscribers:  # healthy only once the models reflect what the sync log holds
            if not sub.catch_up(max(0.0, deadline - time.monotonic())):
                log.warning("a sync-fed model is not caught up with the sync log; serving anyway (its "
                            "subscriber keeps applying deltas)")  # fmt: skip
            sub.start()
        # what exists now (models, compiled kernels, modules) lives as long as the replica: keep
        # the cyclic collector from rescanning it in every full collection (a pause on requests)
        gc.collect()
        gc.freeze()
        self.started_wall = time.time()
        self.state = ReplicaState.SERVING

    def stop(self) -> None:
        """Stop subscribers, threads and the writer (flushing it); close the log if owned.

        Takes at most about ``config.shutdown_timeout_s``, however the log fares. The writer goes
        first, since only it can lose anything: it gets the budget but the log's share (a fifth,
        at most 2 s); impressions not acknowledged by then are dropped (the writer counts them
        and logs the count once). Subscribers and threads get what is left: one stuck in a call
        to a hung log is left to finish on its own (they are daemons). A failure to close the
        log is logged, not raised, so everything else is released."""
        if self.state in (ReplicaState.STOPPING, ReplicaState.STOPPED):
            return
        self.state = ReplicaState.STOPPING
        budget = self.config.shutdown_timeout_s
        deadline = time.monotonic() + budget

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if self.writer is not None:
            self.writer.close(max(0.0, left() - min(2.0, budget / 5)))
        for sub in self.subscribers:
            sub.stop(left())
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(left())
        if self.tailer is not None:
            self.tailer.stop(min(5.0, left()))
        if self.log is not None and self._owns_log:
            try:
                self.log.close(left())
            except FreshrecError as exc:
                log.error("stopping the replica: closing the event log: %s", exc)
        for engine in self.engines.values():
            engine.state.close()
        if self._switched is not None:
            _SWITCH.release(self._switched)
            self._switched = None
        self.state = ReplicaState.STOPPED

    def refresh_item_vectors(self) -> None:
        """Rebuild every arm's item vectors whose catalog or retriever changed, now (the
        background thread does it every ``item_refresh_s``)."""
        for engine in self.engines.values():
            if engine.vectors is not None:
                engine.vectors.refresh()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.config.item_refresh_s):
            for engine in self.engines.values():
                if engine.vectors is None or not engine.vectors.stale():
                    continue
                try:
                    engine.vectors.refresh()
                except Exception:  # keep serving the previous vectors; say why
                    log.exception("item vectors of arm %s: rebuild failed", engine.arm)

    def _check(self, what: str) -> None:
        if self.state is not ReplicaState.SERVING:
            raise StateError(f"cannot {what}: the server is {self.state.value}")

    def _request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    # ---- requests ---------------------------------------------------------------------------------
    def rank(
        self,
        user_id: Any,
        user: Mapping[str, Any],
        context: Mapping[str, Any],
        item_ids: Sequence[Any],
        items: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        self._check("rank")
        arm = self.router.assign(user_id)
        ranked = self.engines[arm].rank(user_id, user, context, item_ids, items)
        rid = self._request_id()
        self.ledger.remember(rid, arm)
        probs = ranked.probs.astype(np.float64)  # (N, T)
        return {
            "request_id": rid,
            "arm": arm,
            "model": _model_out(ranked.model),
            "tasks": ranked.tasks,
            "scores": probs[:, 0].tolist(),
            "task_scores": {t: probs[:, j].tolist() for j, t in enumerate(ranked.tasks)},
        }

    def recommend(
        self, user_id: Any, user: dict[str, Any], context: dict[str, Any], k: int, event_time: float | None
    ) -> dict[str, Any]:
        self._check("recommend")
        if event_time is not None:
            self._check_not_ahead(event_time, "event_time", "no impression was logged")
        arm = self.router.assign(user_id)
        rec = self.engines[arm].recommend(user_id, user, context, k)
        rid = self._request_id()
        t = time.time() if event_time is None else event_time
        version = rec.model.version
        explored = rec.explored or [False] * len(rec.item_ids)
        impressions = [
            Impression(
                event_id=f"{rid}.{p}",
                request_id=rid,
                event_time=t,
                user_id=user_id,
                item_id=iid,
                position=p,
                model_version=f"{version}/explore" if e else version,  # tells exploration apart offline
                user_features=user,
                item_features=feats,
                context=context,
            )
            for p, (iid, feats, e) in enumerate(zip(rec.item_ids, rec.features, explored, strict=True))
        ]
        if impressions:
            self._log_events(
                self.config.topics.impressions,
                impressions,
                [rid] * len(impressions),
                sync=self.config.sync_impressions,
            )
            self.metrics.events.labels("impression", "recommend").inc(len(impressions))
        self.ledger.remember(rid, arm)
        self.metrics.impressions.labels(arm).inc(len(impressions))
        if rec.explored:
            self.metrics.explored.labels(arm).inc(sum(rec.explored))
        scores = rec.probs[:, 0].astype(np.float64).tolist() if len(rec.item_ids) else []
        return {
            "request_id": rid,
            "arm": arm,
            "model": _model_out(rec.model),
            "retrieval": _model_out(rec.retrieval) if rec.retrieval is not None else None,
            "candidates": rec.candidates,
            "items": [
                {"item_id": iid, "position": p, "score": s, "explored": e}
                for p, (iid, s, e) in enumerate(zip(rec.item_ids, scores, explored, strict=True))
            ],
        }

    def _log_events(self, topic: str, events: list[Any], keys: list[Any], *, sync: bool) -> None:
        assert self.log is not None and self.writer is not None
        values, ks = encode(events), [_key(k) for k in keys]
        if sync:
            self.log.append(topic, values, ks)
        else:
            self.writer.submit(topic, values, ks)

    def _check_not_ahead(self, t: float, what: str, outcome: str) -> None:
        """Refuse an event time more than ``max_future_s`` after this server's clock."""
        limit = self.config.max_future_s
        if limit is not None and t > time.time() + limit:
            raise InputError(f"{what}: {t:.3f} is {t - time.time():,.0f} s ahead of this server's clock (more than "
                             f"max_future_s = {limit:g}): the joiner would dead-letter it; {outcome}")  # fmt: skip

    def ingest(self, body: bytes) -> dict[str, int]:
        """/v1/events: a JSON array of events, appended durably when this returns. One invalid
        event rejects the request before anything is written. Each topic's share is one atomic
        append; if the log fails between topics (impressions, actions, items), the earlier
        topics keep theirs and the error is a 503: retrying is safe, since the joiner and the
        catalog drop events whose ids they have seen."""
        self._check("ingest events")
        events, bad = decode_json_many(body)
        if bad:
            shown = "; ".join(f"events[{b.index}].{b.reason}" for b in bad[:3])
            exc = SchemaError(f"{len(bad)} of {len(events) + len(bad)} events are invalid, none was written: {shown}")
            exc.detail = [{"index": b.index, "field": b.field, "reason": b.reason} for b in bad[:100]]  # type: ignore[attr-defined]
            raise exc
        if len(events) > self.config.max_events:
            raise InputError(f"body: at most {self.config.max_events} events per request, got {len(events)}")
        for i, e in enumerate(events):
            self._check_not_ahead(e.event_time, f"events[{i}].event_time", "none was written")
        topics = self.config.topics
        groups: dict[str, tuple[list[Any], list[Any]]] = {}
        for e in events:
            if type(e) is ItemLifecycle:
                topic, key = topics.items, e.item_id
            else:
                topic, key = (topics.impressions if type(e) is Impression else topics.actions), e.request_id
            evs, keys = groups.setdefault(topic, ([], []))
            evs.append(e)
            keys.append(key)
        for topic, (evs, keys) in groups.items():
            self._log_events(topic, evs, keys, sync=True)
        counts = {"impressions": 0, "actions": 0, "items": 0}
        for e in events:
            t = type(e)
            if t is Impression:
                counts["impressions"] += 1
                self.metrics.impressions.labels(self.ledger.arm_of(e.request_id) or "unknown").inc()
            elif t is Action:
                counts["actions"] += 1
                self.metrics.actions.labels(self.ledger.arm_of(e.request_id) or "unknown", e.type).inc()
            else:
                counts["items"] += 1
        self.items.apply(e for e in events if type(e) is ItemLifecycle)
        for kind, n in (
            ("impression", counts["impressions"]),
            ("action", counts["actions"]),
            ("item", counts["items"]),
        ):
            if n:
                self.metrics.events.labels(kind, "client").inc(n)
        return {"accepted": len(events), **counts}

    # ---- reads --------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``ok`` while serving. A sync-fed model that went stale (its subscriber cannot bootstrap
        past a gap, or cannot apply) is named in ``stale_models`` but does not make the replica
        unhealthy: it keeps serving its last good parameters, and a transient gap would
        otherwise take every replica out of the load balancer at once."""
        return {
            "status": "ok" if self.state is ReplicaState.SERVING else "unavailable",
            "state": self.state.value,
            "uptime_s": time.time() - self.started_wall,
            "arms": list(self.engines),
            "live_items": len(self.items),
            "stale_models": [sub.label for sub, seen in self._sync_status() if seen["state"] == "stale"],
            # impressions wait here for the log: a pending count that keeps growing (with failures)
            # is a log that refuses them; the replica still serves, the feedback loop does not close
            "event_log": None
            if self.writer is None
            else {
                "pending": self.writer.pending,
                "failures": self.writer.failures,
                "dropped": self.writer.dropped,
            },
        }

    def _sync_status(self) -> list[tuple[Any, dict[str, Any]]]:
        """(subscriber, its describe()) of the subscribers that describe themselves (and say
        which model they feed: ``state`` and ``label``)."""
        return [
            (sub, sub.describe())
            for sub in self.subscribers
            if all(hasattr(sub, a) for a in ("describe", "state", "label"))
        ]

    def model(self) -> dict[str, Any]:
        subs = {id(sub.state): seen for sub, seen in self._sync_status()}
        arms = []
        for a in self.config.arms:
            engine = self.engines[a.name]
            entry: dict[str, Any] = {
                "name": a.name,
                "weight": a.weight,
                "rank": _model_detail(a.name, engine.state.rank, subs.get(id(engine.state.rank))),
            }
            retrieve = engine.state.retrieve
            entry["retrieve"] = (
                _model_detail(a.name, retrieve, subs.get(id(retrieve))) if retrieve is not None else None
            )
            if engine.vectors is not None:
                vv = engine.vectors.view()
                entry["item_vectors"] = {
                    "items": len(vv.ids),
                    "skipped": vv.skipped,
                    "catalog_version": vv.key[0],
                    "rebuilds": engine.vectors.rebuilds,
                }
            arms.append(entry)
        return {"arms": arms, "live_items": len(self.items), "catalog_version": self.items.version}


def _model_out(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "sparse_version": info.sparse_version,
        "dense_version": info.dense_version,
        "event_time": info.event_time,
        "freshness_s": info.freshness_s,
        "version": info.version,
    }


def _model_detail(arm: str, model: Any, sync: dict[str, Any] | None) -> dict[str, Any]:
    info = ModelInfo.of(arm, model)
    tables = {t: {"rows": st.rows, "dim": model.ps.tables[t].dim} for t, st in model.ps.stats().items()}
    return {
        **_model_out(info),
        "type": model.model_config.type,
        "tasks": model.tasks,
        "logit_offset": model.logit_offset,
        "tables": tables,
        "sync": sync,  # None: a static model (model_dir), or a subscriber that does not describe itself
    }
