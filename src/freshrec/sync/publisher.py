"""The training side of sync: sparse deltas every second or so, dense weights every few minutes,
serving snapshots now and then (Monolith, section 2.3: "parameter synchronization").

A sparse delta is what :meth:`ParameterServer.drain_changes` returns: the rows touched since the
previous delta with their current embeddings, and the IDs expired or evicted since (tombstones).
Only what changed travels. A dense publication is the whole ``state_dict``: it is small next to the
tables and moves slowly. Both go to the sync log (one single-partition topic per kind, so log
order is version order) as records of :mod:`freshrec.sync.delta`.

Choices:
* **Heartbeats.** A sparse delta is published at every cadence tick even when nothing changed:
  an empty, versioned delta lets a replica tell "no change" (its version advances, freshness
  holds) from "the trainer stalled" (its version stops). It costs one record of ~350 bytes.
* **Versions** are the publisher's own, continued from the last record in the topic when a
  publisher starts, not the PS's drain counter (a restarted PS starts that again at 1).
* **Full deltas.** A new publisher first sends every row (``full_delta_on_start``): after a
  restart from an older checkpoint the replicas would otherwise keep rows the training side lost.
* **Failures.** If an append fails, the version is spent and its records are kept: the next
  call sends them again before anything new (a replica ignores parts it already has).
* **Consistency.** :meth:`snapshot` drains and publishes first, then exports the tables: the
  snapshot equals deltas ``1..v`` exactly, provided no training step runs in between. Call every
  method from the training thread, between steps (they read the dense module and the PS).
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import TypeAdapter

from freshrec._faults import crash_point
from freshrec._io import remove_temps
from freshrec.errors import ConfigError, FreshrecError, InputError, SchemaError
from freshrec.models import ModelConfig
from freshrec.ps import ParameterServer
from freshrec.stream import EventLog
from freshrec.sync.config import SyncConfig, check_model_name
from freshrec.sync.delta import DeltaHeader, SparseShare, encode_dense, encode_sparse, read_header, record_key
from freshrec.sync.snapshot import list_snapshots, write_snapshot
from freshrec.sync.state import serving_table_config

if TYPE_CHECKING:
    from freshrec.features import FeatureSpec
    from freshrec.train import Trainer

__all__ = ["PublishResult", "Publisher"]

_logger = logging.getLogger(__name__)  # "log" is the event log here

_MODEL_CONFIG = TypeAdapter(ModelConfig)


@dataclass(frozen=True)
class PublishResult:
    """What one publication sent."""

    kind: str  # "sparse" | "dense"
    version: int
    parts: int  # records appended
    rows: int  # sparse: upserted rows (all rows if full); dense: tensors
    removed: int  # sparse: tombstones
    bytes: int  # total record bytes
    seconds: float  # drain + encode + append
    full: bool = False


@dataclass
class PublisherStats:
    sparse_deltas: int = 0
    dense_versions: int = 0
    snapshots: int = 0
    rows: int = 0
    tombstones: int = 0
    bytes: int = 0
    failed_appends: int = 0


def _max(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def _check_times(event_time: Any, newest_arrival_ms: Any) -> tuple[float | None, int | None]:
    """The two publication times as float seconds and int ms, or :class:`InputError` before
    anything is drained (a bad value once lost the drained changes and stuck in every later
    publication)."""
    if event_time is not None:
        if isinstance(event_time, bool) or not isinstance(event_time, numbers.Real) or not math.isfinite(event_time):
            raise InputError(f"event_time must be finite event-time seconds (a float), got {event_time!r}")
        event_time = float(event_time)
    if newest_arrival_ms is not None:
        ok = isinstance(newest_arrival_ms, numbers.Real) and not isinstance(newest_arrival_ms, bool)
        if not ok or not math.isfinite(newest_arrival_ms) or newest_arrival_ms < 0:
            raise InputError(f"newest_arrival_ms must be wall-clock milliseconds >= 0, got {newest_arrival_ms!r}")
        newest_arrival_ms = int(newest_arrival_ms)
    return event_time, newest_arrival_ms


class Publisher:
    """Publishes ``ps`` (sparse) and ``module_getter()`` (dense) of model ``model_name`` to ``log``.

    Args:
        model_name: names the topics (``sync.<model>.sparse``/``.dense``) and snapshot folder.
        ps: the training parameter server (its tables must track changes).
        module_getter: returns the current dense module (a getter, since a trainer may rebuild it).
        log: the sync log (embedded or Kafka); the caller owns and closes it.
        config: cadences, topics, record size, snapshots.
        logit_offset: the log-odds correction serving adds (a float, or a getter).
        spec, model_config: written into snapshots so a replica can start from one alone.
        clock: wall clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        model_name: str,
        ps: ParameterServer,
        module_getter: Callable[[], torch.nn.Module],
        log: EventLog,
        config: SyncConfig | None = None,
        *,
        logit_offset: float | Callable[[], float] = 0.0,
        spec: FeatureSpec | None = None,
        model_config: ModelConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = check_model_name(model_name)
        self.config = config or SyncConfig()
        self.ps = ps
        self.module_getter = module_getter
        self.log = log
        self._logit_offset = logit_offset
        self._spec = None if spec is None else spec.model_dump(mode="json")
        self._model_config = None if model_config is None else _MODEL_CONFIG.dump_python(model_config, mode="json")
        self.clock = clock
        untracked = sorted(t for t, c in ps.tables.items() if not c.track_changes)
        if untracked:
            raise ConfigError(f"tables {untracked} do not track changes (track_changes=False): cannot publish")
        self.sparse_topic, self.dense_topic = self.config.topics(self.model)
        for topic in (self.sparse_topic, self.dense_topic):
            log.create_topic(topic, 1)
        self.sparse_version, sparse_complete = self._tail(self.sparse_topic)
        self.dense_version, _ = self._tail(self.dense_topic)
        # A snapshot is written after its version reached the log, so one past the log's end comes
        # from another log (reset, or another cluster's). Replicas would load it and drop this
        # log's deltas as old, and pruning by version would delete this publisher's snapshots.
        snap_dir = self.config.model_snapshot_dir(self.model)
        if snap_dir.is_dir():  # one publisher per model: unfinished snapshots are a crash's
            for p in remove_temps(snap_dir, "snapshot-*"):
                _logger.warning("removed %s, a serving snapshot a crash left unfinished", p)
            remove_temps(snap_dir, "LATEST")  # the pointer's temp files: the pointer itself is whole
        newer = [p.name for p in list_snapshots(snap_dir) if int(p.name.rsplit("-", 1)[1]) > self.sparse_version]
        if newer:
            raise ConfigError(
                f"{snap_dir} holds {newer[0]}, but the sync log of model {self.model!r} ends at sparse version "
                f"{self.sparse_version}: those snapshots come from another log (was the log reset?). Move them "
                "away, or point snapshot_dir elsewhere"
            )
        self._needs_full = self.config.full_delta_on_start or not sparse_complete
        self._unsent: list[tuple[str, list[bytes], list[bytes]]] = []
        self._dense_blob: bytes | None = None  # last dense state published by this publisher
        self._dense_logit = 0.0
        # the first dense publication reflected no training (at a fresh start: untrained weights):
        # the next is due as soon as training is noted, not a whole dense interval later
        self._dense_stale = True
        # newest event time / arrival passed in since the last sparse and dense publication
        self._pending: dict[str, list[Any]] = {"sparse": [None, None], "dense": [None, None]}
        self._published_event_time: float | None = None  # newest sent in any sparse delta
        self._published_arrival_ms: int | None = None
        self._last: dict[str, float | None] = {"sparse": None, "dense": None, "snapshot": None}
        self._lock = threading.RLock()
        self.stats = PublisherStats()

    @classmethod
    def for_trainer(
        cls,
        trainer: Trainer,
        log: EventLog,
        config: SyncConfig | None = None,
        *,
        name: str = "rank",
        **kw: Any,
    ) -> Publisher:
        """A publisher for a :class:`Trainer`'s PS, module and logit offset."""
        return cls(name, trainer.ps, lambda: trainer.model, log, config,
                   logit_offset=lambda: trainer.logit_offset, spec=trainer.spec,
                   model_config=trainer.model_config, **kw)  # fmt: skip

    def _tail(self, topic: str) -> tuple[int, bool]:
        """The last version in ``topic`` and whether all its parts are there (0, True if empty)."""
        offset = max(0, self.log.end_offset(topic, 0) - 64)  # a version's last part is near the end
        last = None
        while records := self.log.read(topic, 0, offset, max_records=64):
            last, offset = records[-1], records[-1].offset + 1
        if last is None:
            return 0, True
        try:
            h = read_header(last.value)
        except SchemaError as exc:
            raise ConfigError(f"topic {topic!r} holds a record that is not a sync record: {exc}") from exc
        if h.model != self.model:
            raise ConfigError(f"topic {topic!r} holds deltas of model {h.model!r}, not {self.model!r}")
        return h.version, h.part == h.parts - 1

    def _logit(self) -> float:
        lo = self._logit_offset
        return float(lo() if callable(lo) else lo)

    # ---- appends -------------------------------------------------------------------------------
    def _append(self, topic: str, records: list[bytes], keys: list[bytes]) -> None:
        self._unsent.append((topic, records, keys))
        self.flush()

    def flush(self) -> None:
        """Send records a failed append left behind (each call starts with this)."""
        with self._lock:
            while self._unsent:
                topic, records, keys = self._unsent[0]
                try:
                    self.log.append(topic, records, keys, partition=0)
                except FreshrecError:
                    self.stats.failed_appends += 1
                    raise
                self._unsent.pop(0)

    def note(self, *, event_time: float | None = None, newest_arrival_ms: int | None = None) -> None:
        """Record what was trained since the last publication: the newest event time, and the wall
        clock (ms) at which the newest action trained on reached the system."""
        event_time, newest_arrival_ms = _check_times(event_time, newest_arrival_ms)
        with self._lock:
            for pending in self._pending.values():
                pending[0] = _max(pending[0], event_time)
                pending[1] = _max(pending[1], newest_arrival_ms)

    # ---- sparse --------------------------------------------------------------------------------
    def publish_sparse(
        self, *, event_time: float | None = None, newest_arrival_ms: int | None = None, full: bool = False
    ) -> PublishResult:
        """Drain the PS and publish the delta (a heartbeat if nothing changed); ``full`` sends
        every row instead, and replicas drop rows it does not hold."""
        with self._lock:
            self.flush()
            self.note(event_time=event_time, newest_arrival_ms=newest_arrival_ms)
            t0 = time.perf_counter()
            changes = self.ps.drain_changes()
            full = full or self._needs_full
            newest_ms = None  # newest last-seen time (event time, ms) among the rows sent
            if full:
                shares = []
                for t in sorted(self.ps.tables):
                    exp = self.ps.export(t)
                    shares.append(SparseShare(t, exp.ids, exp.embeddings, np.zeros(0, np.int64)))
                    newest_ms = _max(newest_ms, int(exp.last_seen.max()) if len(exp) else None)
            else:
                shares = []
                for t, c in sorted(changes.tables.items()):
                    shares.append(SparseShare(t, c.upserts.ids, c.upserts.embeddings, c.removed))
                    newest_ms = _max(newest_ms, int(c.upserts.last_seen.max()) if len(c.upserts) else None)
            pending = self._pending["sparse"]
            event_t = _max(pending[0], None if newest_ms is None else newest_ms / 1000.0)
            version = self.sparse_version + 1
            records = encode_sparse(
                shares, model=self.model, version=version, published_ms=int(self.clock() * 1000),
                max_bytes=self.config.max_record_bytes, full=full, event_time=event_t,
                newest_arrival_ms=pending[1],
            )  # fmt: skip
            self.sparse_version = version  # spent even if the append fails: its records are kept
            self._needs_full = False
            self._pending["sparse"] = [None, None]
            self._published_event_time = _max(self._published_event_time, event_t)
            self._published_arrival_ms = _max(self._published_arrival_ms, pending[1])
            keys = [record_key(DeltaHeader(self.model, "sparse", version, k, len(records), 0))
                    for k in range(len(records))]  # fmt: skip
            crash_point("sync.before_append")  # drained from the PS, not yet in the log
            self._append(self.sparse_topic, records, keys)
            crash_point("sync.after_append")
            rows = sum(int(s.ids.size) for s in shares)
            removed = sum(int(s.removed.size) for s in shares)
            size = sum(len(r) for r in records)
            st = self.stats
            st.sparse_deltas += 1
            st.rows += rows
            st.tombstones += removed
            st.bytes += size
            return PublishResult("sparse", version, len(records), rows, removed, size,
                                 time.perf_counter() - t0, full)  # fmt: skip

    # ---- dense ---------------------------------------------------------------------------------
    def publish_dense(self, *, event_time: float | None = None, newest_arrival_ms: int | None = None) -> PublishResult:
        """Publish the module's whole ``state_dict`` with the current logit offset."""
        with self._lock:
            self.flush()
            self.note(event_time=event_time, newest_arrival_ms=newest_arrival_ms)
            t0 = time.perf_counter()
            state = self.module_getter().state_dict()
            pending = self._pending["dense"]
            version = self.dense_version + 1
            logit = self._logit()
            blob, records = encode_dense(
                state, model=self.model, version=version, published_ms=int(self.clock() * 1000),
                max_bytes=self.config.max_record_bytes, logit_offset=logit, event_time=pending[0],
                newest_arrival_ms=pending[1],
            )  # fmt: skip
            self.dense_version = version
            self._dense_blob, self._dense_logit = blob, logit
            # this publisher's first dense state, with no training noted: the weights it started with
            self._dense_stale = self.stats.dense_versions == 0 and not self._dense_pending
            self._pending["dense"] = [None, None]
            keys = [record_key(DeltaHeader(self.model, "dense", version, k, len(records), 0))
                    for k in range(len(records))]  # fmt: skip
            self._append(self.dense_topic, records, keys)
            size = sum(len(r) for r in records)
            self.stats.dense_versions += 1
            self.stats.bytes += size
            return PublishResult("dense", version, len(records), len(state), 0, size, time.perf_counter() - t0)

    # ---- cadences and snapshots ----------------------------------------------------------------
    def maybe_publish(
        self,
        now_wall: float | None = None,
        *,
        event_time: float | None = None,
        newest_arrival_ms: int | None = None,
    ) -> list[PublishResult]:
        """Publish whatever is due at wall time ``now_wall`` (default: the clock): a sparse delta
        every ``sparse_sync_interval``, the dense state every ``dense_sync_interval``, a snapshot
        every ``snapshot_interval``. All three are due at the first call; if that first dense state
        reflected no training, the next is due at the first call after training is noted (a fresh
        start would otherwise serve its untrained dense weights for a whole dense interval)."""
        now = self.clock() if now_wall is None else float(now_wall)
        out: list[PublishResult] = []
        with self._lock:
            self.note(event_time=event_time, newest_arrival_ms=newest_arrival_ms)
            c = self.config
            if self._due("dense", now, c.dense_sync_interval) or (self._dense_stale and self._dense_pending):
                out.append(self.publish_dense())
                self._last["dense"] = now
            if self._due("sparse", now, c.sparse_sync_interval):
                out.append(self.publish_sparse())
                self._last["sparse"] = now
            if c.snapshot_interval is not None and self._due("snapshot", now, c.snapshot_interval):
                self.snapshot()
                self._last["snapshot"] = now
        return out

    @property
    def _dense_pending(self) -> bool:
        """Training was noted since the last dense publication."""
        return self._pending["dense"][0] is not None or self._pending["dense"][1] is not None

    def publish_final(self) -> list[PublishResult]:
        """At a stop: the sparse delta, and the dense state if training was noted since its last
        publication (a trainer stopped for good would otherwise never ship up to a dense interval
        of its training to serving)."""
        with self._lock:
            out = [self.publish_dense()] if self._dense_pending else []
            return [*out, self.publish_sparse()]

    def _due(self, what: str, now: float, interval: float) -> bool:
        last = self._last[what]
        return last is None or now - last >= interval

    def snapshot(self, root: str | Path | None = None) -> Path:
        """Publish a sparse delta (and the dense state, if none was published yet), then write a
        serving snapshot labelled with those versions and the sync-log offsets after them."""
        with self._lock:
            if self._dense_blob is None:
                self.publish_dense()
            self.publish_sparse()
            tables = {}
            for t in self.ps.tables:
                exp = self.ps.export(t)
                tables[t] = (exp.ids, exp.embeddings)
            configs = {t: serving_table_config(c) for t, c in self.ps.tables.items()}
            path = write_snapshot(
                Path(root) if root is not None else self.config.model_snapshot_dir(self.model),
                model=self.model, tables=tables, table_configs=configs, dense=self._dense_blob,
                sparse_version=self.sparse_version, dense_version=self.dense_version,
                sparse_offset=self.log.end_offset(self.sparse_topic, 0),
                dense_offset=self.log.end_offset(self.dense_topic, 0), logit_offset=self._dense_logit,
                event_time=self._published_event_time, newest_arrival_ms=self._published_arrival_ms,
                spec=self._spec, model_config=self._model_config, keep=self.config.keep_snapshots,
            )  # fmt: skip
            self.stats.snapshots += 1
            return path
