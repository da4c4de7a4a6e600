"""The serving side of sync: a :class:`Subscriber` keeps one :class:`ServedModel` in step with
the sync log (Monolith, section 2.3).

Contract
--------
* **Order.** Sparse deltas are applied in version order, each only once all its parts are there;
  parts already applied (a publisher's retry) are ignored. A full delta (every row) is built into
  a new PS beside the serving one and swapped in, so requests never see a half-replaced table.
* **Gaps.** A sparse version that skips one (a lost record, retention, a bad record) makes the
  subscriber bootstrap again. A full delta is never a gap: it replaces everything before it.
* **Bootstrap** (at the first :meth:`poll`, on a gap, or by :meth:`bootstrap`): load the newest
  good snapshot into a new PS, replay the deltas after its offsets to the end of the log, then
  swap PS, dense weights and versions into the model. Until the swap, requests keep being served
  from the old state; if it fails (no snapshot covers the gap yet) the subscriber is ``STALE``,
  keeps serving the last good state and retries every ``bootstrap_retry_interval``. With no
  snapshot at all it replays the log from its start (which must begin at version 1 or with a full
  delta).
* **Dense** publications are whole states: the newest complete one wins, older ones are skipped.
* **Freshness** of a delta applied live = wall clock at its application - ``newest_arrival_ms``
  in its header (when the action it reflects reached freshrec), observed in the histogram
  ``freshrec_sync_freshness_seconds{model,kind}``. Deltas replayed by a bootstrap are not observed
  (their age measures the replica's start, not the pipeline). Clocks of the publishing and the
  serving machines must agree (NTP) for cross-machine freshness to mean anything.

Threads: :meth:`poll` and :meth:`bootstrap` serialise on one lock; :meth:`start` runs ``poll`` in
a daemon thread that waits on the log for up to ``poll_interval`` per round and survives errors
(counted, logged, retried). Counters and properties may be read from any thread.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from freshrec.errors import CorruptionError, InputError, SchemaError, StateError, SyncError
from freshrec.ps import ParameterServer
from freshrec.stream import EventLog
from freshrec.sync._metrics import sync_metrics
from freshrec.sync.config import SyncConfig, check_model_name
from freshrec.sync.delta import DeltaHeader, SparseShare, decode_sparse, join_dense, load_dense, read_header
from freshrec.sync.fp16 import Fp16PS
from freshrec.sync.snapshot import (
    SnapshotInfo,
    load_tables,
    new_serving_ps,
    read_snapshot,
    snapshot_candidates,
)
from freshrec.sync.state import ServedModel

__all__ = ["Subscriber", "SubscriberState", "SubscriberStats"]

_log = logging.getLogger("freshrec.sync")
_READ_BATCH = 32  # records per read: at most ~16 MiB of 512 KiB parts in memory at once
STALE_AFTER_FAILURES = 3  # polls failed in a row after which a live subscriber counts as stale
_LAG_EVERY_S = 1.0  # refresh the lag gauges at most this often (one end-offset request per topic)


class SubscriberState(enum.Enum):
    NEW = "new"  # not bootstrapped yet: the first poll() bootstraps
    LIVE = "live"  # applying deltas in version order
    STALE = "stale"  # a bootstrap failed: serving the last good state, retrying
    CLOSED = "closed"  # stopped; every call raises StateError


@dataclass
class SubscriberStats:
    sparse_applied: int = 0
    dense_applied: int = 0
    full_deltas: int = 0
    rows_upserted: int = 0
    rows_removed: int = 0
    duplicates: int = 0  # parts of versions already applied (publisher retries), ignored
    bootstraps: int = 0
    gaps: int = 0
    errors: int = 0
    last_error: str | None = None
    lag_records: dict[str, int] = field(default_factory=lambda: {"sparse": 0, "dense": 0})


class _Gap(Exception):
    def __init__(self, expected: int, got: int | None, why: str, kind: str = "sparse") -> None:
        super().__init__(f"expected {kind} version {expected}, {why}")
        self.expected, self.got = expected, got


Parts = list[tuple[DeltaHeader, bytes]]


class _SparseOrder:
    """Assembles the sparse topic's records into complete versions, strictly in order."""

    def __init__(self, model: str, applied: int) -> None:
        self.model = model
        self.applied = applied
        self.pending: dict[int, dict[int, tuple[DeltaHeader, bytes]]] = {}
        self.duplicates = 0  # parts seen before (a publisher's retry), or already applied

    def feed(self, h: DeltaHeader, blob: bytes) -> Parts | None:
        v = h.version
        if v <= self.applied:
            self.duplicates += 1  # a part sent again, or a version a snapshot already holds
            return None
        if v > self.applied + 1 and not h.full:
            raise _Gap(self.applied + 1, v, f"got version {v}")
        if h.full:  # a full delta supersedes every incomplete version before it
            for old in [k for k in self.pending if k < v]:
                del self.pending[old]
        parts = self.pending.setdefault(v, {})
        if any(x.parts != h.parts for x, _ in parts.values()):
            raise SchemaError(f"{h.describe()}: its parts disagree on how many there are")
        self.duplicates += h.part in parts
        parts[h.part] = (h, blob)
        if len(parts) < h.parts:
            return None
        del self.pending[v]
        self.applied = v
        return [parts[i] for i in range(h.parts)]


class _DenseOrder:
    """Assembles dense records; the newest complete version wins."""

    def __init__(self, applied: int) -> None:
        self.applied = applied
        self.pending: dict[int, dict[int, tuple[DeltaHeader, bytes]]] = {}
        self.duplicates = 0

    def feed(self, h: DeltaHeader, blob: bytes) -> Parts | None:
        v = h.version
        if v <= self.applied:
            self.duplicates += 1
            return None
        parts = self.pending.setdefault(v, {})
        self.duplicates += h.part in parts
        parts[h.part] = (h, blob)
        if len(parts) < h.parts:
            return None
        for old in [k for k in self.pending if k <= v]:
            del self.pending[old]
        self.applied = v
        return [parts[i] for i in range(h.parts)]


@dataclass
class _Stage:
    """A state being built aside by a bootstrap."""

    ps: ParameterServer | None = None  # None: nothing to load, keep the served tables
    dense: tuple[dict, float | None] | None = None  # state_dict, logit offset
    event_time: float | None = None


class Subscriber:
    """Keeps ``state`` (one served model) in step with the sync log ``log``.

    Args:
        state: the model to update; its name picks the topics and snapshot folder unless
            ``model_name`` is given.
        log: the sync log (embedded or Kafka); the caller owns and closes it.
        config: topics, fp16, intervals; ``config.snapshot_dir/<model>`` unless ``snapshot_dir``.
        snapshot_dir: this model's snapshot directory (as the publisher writes it).
        registry: Prometheus registry for the metrics (default: the global one).
        model_name: the model's name in the sync log, if not ``state.name``.
        metrics_label: the ``model`` label of the metrics (default: the model name); replicas
            serving one model in several A/B arms label by arm.
    """

    def __init__(
        self,
        state: ServedModel,
        log: EventLog,
        config: SyncConfig | None = None,
        snapshot_dir: str | Path | None = None,
        *,
        registry: CollectorRegistry | None = None,
        model_name: str | None = None,
        metrics_label: str | None = None,
    ) -> None:
        self.state = state
        self.log = log
        self.config = config or SyncConfig()
        self.model = check_model_name(model_name or state.name)
        self.label = metrics_label or self.model  # e.g. "<arm>/<model>" when arms share a model
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else \
            self.config.model_snapshot_dir(self.model)  # fmt: skip
        self.topics = dict(zip(("sparse", "dense"), self.config.topics(self.model), strict=True))
        for topic in self.topics.values():
            if log.ensure_topic(topic, 1)[1]:  # its publisher creates it: a replica came first, or a name differs
                _log.warning(
                    "sync topic %r did not exist; created it empty. The publisher of model %r writes it: if it "
                    "already runs, check both sides' topic_prefix and model names", topic, self.model,
                )  # fmt: skip
        self._sparse = _SparseOrder(self.model, 0)
        self._dense = _DenseOrder(0)
        self._offsets = {"sparse": 0, "dense": 0}
        self._status = SubscriberState.NEW
        self._ok_at: float | None = None  # wall clock of the last poll that did not fail
        self._failing = 0  # polls failed in a row
        self._lock = threading.RLock()
        self._applied = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._retired: list[tuple[float, ParameterServer]] = []
        self._lag_at = 0.0
        self.stats = SubscriberStats()
        self.freshness: deque[float] = deque(maxlen=10_000)  # recent sparse freshness, seconds
        self.metrics = sync_metrics(registry)
        self.metrics.stale.labels(self.label).set(0)  # the series exists before anything fails: alerts can watch it

    # ---- what it reflects ----------------------------------------------------------------------
    @property
    def status(self) -> SubscriberState:
        return self._status

    @property
    def stale(self) -> bool:
        """The served parameters have stopped following the log: a bootstrap or an apply failed
        (``status`` is STALE), or the last ``STALE_AFTER_FAILURES`` polls all failed (the log is
        unreachable, or holds a record this subscriber cannot read). It keeps retrying."""
        if self._status is SubscriberState.CLOSED:
            return False
        return self._status is SubscriberState.STALE or self._failing >= STALE_AFTER_FAILURES

    def _set_status(self, status: SubscriberState) -> None:
        self._status = status
        self.metrics.stale.labels(self.label).set(1 if self.stale else 0)

    def describe(self) -> dict[str, Any]:
        """What a replica's ``/v1/model`` shows of this subscriber: its state (``stale``: see
        :attr:`stale`), its failures (in all, and in a row) and the last one, and how long ago a
        poll last went through (None: never). Read without the lock: the figures may be one
        poll apart, never blocked behind a bootstrap."""
        s = self.stats
        return {
            "state": "stale" if self.stale else self._status.value,
            "failing_polls": self._failing,
            "bootstraps": s.bootstraps,
            "gaps": s.gaps,
            "errors": s.errors,
            "last_error": s.last_error,
            "last_ok_s_ago": None if self._ok_at is None else max(0.0, time.time() - self._ok_at),
        }

    @property
    def sparse_version(self) -> int:
        return self.state.sparse_version

    @property
    def dense_version(self) -> int:
        return self.state.dense_version

    def wait_for(self, sparse_version: int = 0, dense_version: int = 0, timeout: float = 10.0) -> bool:
        """Block until the model reflects at least these versions; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._applied:
            while self.state.sparse_version < sparse_version or self.state.dense_version < dense_version:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied.wait(left)
        return True

    # ---- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Poll in a daemon thread until :meth:`stop`."""
        with self._lock:
            self._check_open("start")
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"freshrec-sync-{self.model}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread (it finishes the round it is in)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    def close(self) -> None:
        """Stop, close the serving PSs swapped out so far; later calls raise StateError."""
        self.stop()
        with self._lock:
            self._close_retired(force=True)
            self._set_status(SubscriberState.CLOSED)

    def _run(self) -> None:
        every = self.config.apply_interval
        while not self._stop.is_set():
            try:
                if every > 0:  # a slow replica: apply what accumulated in one burst, then wait
                    while self.poll(timeout_s=0.0) > 0:
                        pass
                    self._stop.wait(every)
                    continue
                self.poll(timeout_s=self.config.poll_interval)
            except StateError as exc:  # the subscriber, the log or the model was closed: shutting down
                if not self._stop.is_set():
                    _log.warning("sync subscriber of model %r stops polling: %s", self.model, exc)
                return
            except Exception:  # the thread must outlive any one failure: counted in poll, logged here
                _log.exception("sync subscriber of model %r: poll failed; retrying", self.model)
                self._stop.wait(self.config.bootstrap_retry_interval)

    def _check_open(self, what: str) -> None:
        if self._status is SubscriberState.CLOSED:
            raise StateError(f"cannot {what}: the subscriber of model {self.model!r} is closed")

    def catch_up(self, timeout_s: float = 60.0) -> bool:
        """Bootstrap if needed and apply every delta the log holds now, before serving: a replica
        (re)started from a snapshot otherwise answers with the snapshot's parameters, however old,
        until its thread's first poll has replayed the deltas after it. False if it could not
        within ``timeout_s`` or failed (logged; the thread, once started, keeps trying)."""
        deadline = time.monotonic() + timeout_s
        try:
            while self.poll(timeout_s=0.0) > 0:  # the first poll bootstraps and replays to the end
                if time.monotonic() > deadline:
                    _log.warning("sync subscriber of model %r: not caught up after %.0f s", self.model, timeout_s)
                    return False
        except StateError:
            raise
        except Exception as exc:  # counted by poll; the thread retries
            _log.warning("sync subscriber of model %r: catching up failed (%s); the thread retries", self.model, exc)
            return False
        return True

    # ---- polling -------------------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.0) -> int:
        """Apply every complete pending delta in version order (waiting up to ``timeout_s`` for
        the first sparse record); bootstrap first if needed or on a gap. Returns deltas applied."""
        with self._lock:
            self._check_open("poll")
            try:
                n = self._poll(timeout_s)
            except BaseException as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self.stats.errors += 1
                self._failing += 1
                self.metrics.errors.labels(self.label).inc()
                self._set_status(self._status)  # the gauge: failing polls count too
                raise
            self._ok_at = time.time()
            self._failing = 0
            self._set_status(self._status)
            return n

    def _poll(self, timeout_s: float) -> int:
        self._close_retired()
        if self._status is not SubscriberState.LIVE:
            self._bootstrap("start" if self._status is SubscriberState.NEW else "retry")
        try:
            n = self._drain("sparse", self._sparse, self._offsets, self._apply_sparse_live, timeout_s)
            n += self._drain("dense", self._dense, self._offsets, self._apply_dense_live, 0.0)
        except (_Gap, SchemaError) as exc:
            self.stats.gaps += 1
            self.metrics.gaps.labels(self.label).inc()
            _log.warning("sync subscriber of model %r: %s; bootstrapping", self.model, exc)
            self._bootstrap("gap")
            return 0
        self._update_lag()
        return n

    def _drain(
        self,
        kind: str,
        order: _SparseOrder | _DenseOrder,
        offsets: dict[str, int],
        apply: Callable[[Parts], None],
        timeout_s: float,
    ) -> int:
        """Read ``kind``'s topic from ``offsets[kind]`` to its end, applying complete versions."""
        topic = self.topics[kind]
        applied = 0
        seen_dups = order.duplicates
        try:
            while records := self._read(kind, order, offsets[kind], timeout_s):
                timeout_s = 0.0
                for rec in records:
                    h = read_header(rec.value)
                    if h.model != self.model or h.kind != kind:  # a bad record: a gap, as one that does not parse
                        raise SchemaError(f"topic {topic!r} holds a {h.describe()}; expected {kind} deltas "
                                          f"of model {self.model!r}")  # fmt: skip
                    parts = order.feed(h, rec.value)
                    offsets[kind] = rec.offset + 1
                    if parts is not None:
                        try:
                            apply(parts)
                        except BaseException:
                            self._set_status(SubscriberState.STALE)  # half applied: the next poll bootstraps
                            raise
                        applied += 1
            return applied
        finally:
            self.stats.duplicates += order.duplicates - seen_dups

    def _read(self, kind: str, order: _SparseOrder | _DenseOrder, offset: int, timeout_s: float) -> list:
        topic = self.topics[kind]
        try:
            return self.log.read(topic, 0, offset, _READ_BATCH, timeout_s)
        except (InputError, CorruptionError) as exc:  # below what the log retains, or damaged
            # a gap like any other: the next snapshot past it is the way on (a replica retrying
            # the same unreadable record would stay stale for good while reporting itself live)
            raise _Gap(order.applied + 1, None, f"the log cannot supply it: {exc}", kind) from exc

    # ---- applying ------------------------------------------------------------------------------
    def _shares(self, parts: Parts, tables: dict) -> list[SparseShare]:
        """Every part decoded and checked against the served tables before anything is applied."""
        shares = [s for h, blob in parts for s in decode_sparse(blob, h)]
        for s in shares:
            cfg = tables.get(s.table)
            if cfg is None or cfg.dim != s.embeddings.shape[1]:
                raise SyncError(f"{parts[0][0].describe()} carries table {s.table!r} of width "
                                f"{s.embeddings.shape[1]}, which model {self.model!r} does not "
                                "serve")  # fmt: skip
        return shares

    def _new_ps(self) -> ParameterServer:
        return new_serving_ps(self.state.ps.tables, fp16=self.config.fp16,
                              config=getattr(self.state.ps, "config", None))  # fmt: skip

    def _apply_sparse_live(self, parts: Parts) -> None:
        h = parts[0][0]
        shares = self._shares(parts, self.state.ps.tables)
        if h.full:
            ps = self._new_ps()
            try:
                for s in shares:
                    ps.assign(s.table, s.ids, s.embeddings)
            except BaseException:
                ps.close()
                raise
            self._retire(self.state.swap_ps(ps))
            self.stats.full_deltas += 1
        else:
            for s in shares:
                self.state.apply_sparse(s.table, s.ids, s.embeddings, s.removed)
        self.state.mark(sparse_version=h.version, event_time=h.event_time)
        rows = sum(s.ids.size for s in shares)
        removed = sum(s.removed.size for s in shares)
        self.stats.sparse_applied += 1
        self.stats.rows_upserted += rows
        self.stats.rows_removed += removed
        m = self.metrics
        m.rows.labels(self.label, "upsert").inc(rows)
        m.rows.labels(self.label, "tombstone").inc(removed)
        self._applied_one(h)

    def _apply_dense_live(self, parts: Parts) -> None:
        h, blob = join_dense([b for _, b in parts])
        state_dict = load_dense(blob, h.describe())
        try:
            self.state.swap_dense(state_dict, logit_offset=h.logit_offset)
        except RuntimeError as exc:  # load_state_dict: other keys or shapes
            raise SyncError(f"{h.describe()} does not fit the served model: {exc}") from exc
        self.state.mark(dense_version=h.version)
        self.stats.dense_applied += 1
        self._applied_one(h)

    def _applied_one(self, h: DeltaHeader) -> None:
        m = self.metrics
        m.applied.labels(self.label, h.kind).inc()
        m.version.labels(self.label, h.kind).set(h.version)
        if h.event_time is not None:
            m.event_time.labels(self.label).set(self.state.event_time)
        if h.newest_arrival_ms is not None:
            fresh = time.time() - h.newest_arrival_ms / 1000.0
            m.freshness.labels(self.label, h.kind).observe(fresh)
            if h.kind == "sparse":
                self.freshness.append(fresh)
        with self._applied:
            self._applied.notify_all()

    # ---- bootstrap -----------------------------------------------------------------------------
    def bootstrap(self) -> SnapshotInfo | None:
        """Load the newest good snapshot and replay the deltas after it (see the module
        docstring); returns the snapshot used (None: replayed from the log's start)."""
        with self._lock:
            self._check_open("bootstrap")
            return self._bootstrap("manual")

    def _bootstrap(self, reason: str) -> SnapshotInfo | None:
        t0 = time.perf_counter()
        try:
            info, stage, sparse, dense, offsets = self._build_stage()
            if stage.dense is not None:  # first: it may refuse the weights, before anything changed
                try:
                    self.state.swap_dense(stage.dense[0], logit_offset=stage.dense[1])
                except RuntimeError as exc:
                    if stage.ps is not None:
                        stage.ps.close()
                    raise SyncError(f"dense weights of model {self.model!r} do not fit: {exc}") from exc
        except BaseException:
            self._set_status(SubscriberState.STALE)
            raise
        if stage.ps is None and self.config.fp16 and not isinstance(self.state.ps, Fp16PS):
            stage.ps = self._copy_to_fp16()  # nothing to load: store what is served as float16
        if stage.ps is not None:
            self._retire(self.state.swap_ps(stage.ps))
        self.state.mark(sparse_version=sparse.applied, dense_version=dense.applied, event_time=stage.event_time)
        self._sparse, self._dense, self._offsets = sparse, dense, offsets
        self._set_status(SubscriberState.LIVE)
        self.stats.bootstraps += 1
        m = self.metrics
        m.bootstraps.labels(self.label, reason).inc()
        m.version.labels(self.label, "sparse").set(self.state.sparse_version)
        m.version.labels(self.label, "dense").set(self.state.dense_version)
        _log.info("sync subscriber of model %r bootstrapped (%s) from %s to sparse v%d, dense v%d in %.2f s",
                  self.model, reason, info.path if info else "the log's start", self.state.sparse_version,
                  self.state.dense_version, time.perf_counter() - t0)  # fmt: skip
        with self._applied:
            self._applied.notify_all()
        return info

    def _build_stage(self) -> tuple[SnapshotInfo | None, _Stage, _SparseOrder, _DenseOrder, dict[str, int]]:
        """The newest good snapshot loaded into a new PS, and the deltas after it replayed there."""
        info, stage = None, _Stage()
        for path in snapshot_candidates(self.snapshot_dir):
            ps = self._new_ps()
            try:
                info = read_snapshot(path)
                if info.model != self.model:
                    raise CorruptionError(f"{path} is a snapshot of model {info.model!r}")
                load_tables(info, ps)
                blob = info.read_dense()
                dense = None if blob is None else (load_dense(blob, str(path)), info.logit_offset)
                stage = _Stage(ps, dense, info.event_time)
                break
            except CorruptionError as exc:
                ps.close()
                info = None
                _log.warning("sync subscriber of model %r: skipping snapshot %s: %s", self.model, path, exc)
        sparse = _SparseOrder(self.model, info.sparse_version if info else 0)
        dense_order = _DenseOrder(info.dense_version if info else 0)
        offsets = {"sparse": info.sparse_offset if info else 0, "dense": info.dense_offset if info else 0}
        for kind, topic in self.topics.items() if info is not None else ():
            end = self.log.end_offset(topic, 0)
            if end < offsets[kind]:  # a snapshot taken past a topic's end is not of this topic
                if stage.ps is not None:
                    stage.ps.close()
                raise SyncError(
                    f"sync topic {topic!r} ends at offset {end}, but snapshot {info.path.name} of model "
                    f"{self.model!r} was taken after offset {offsets[kind]} of its publisher's topic: this is not "
                    "that topic (check topic_prefix and the log on both sides), or the log was reset"
                )

        def apply_sparse(parts: Parts) -> None:
            h = parts[0][0]
            if stage.ps is None or h.full:  # no snapshot: the log's first delta starts from empty
                if stage.ps is not None:
                    stage.ps.close()
                stage.ps = self._new_ps()
            for s in self._shares(parts, stage.ps.tables):
                if s.ids.size:
                    stage.ps.assign(s.table, s.ids, s.embeddings)
                if s.removed.size:
                    stage.ps.remove(s.table, s.removed)
            if h.event_time is not None:
                stage.event_time = max(h.event_time, stage.event_time or h.event_time)

        def apply_dense(parts: Parts) -> None:
            h, blob = join_dense([b for _, b in parts])
            stage.dense = (load_dense(blob, h.describe()), h.logit_offset)

        try:
            try:
                self._drain("sparse", sparse, offsets, apply_sparse, 0.0)
                self._drain("dense", dense_order, offsets, apply_dense, 0.0)
            except (_Gap, SchemaError) as exc:
                where = f"snapshot {info.path.name}" if info else "the log's start (no snapshot)"
                raise SyncError(f"cannot bootstrap model {self.model!r} from {where}: {exc}") from exc
        except BaseException:
            if stage.ps is not None:
                stage.ps.close()
            raise
        return info, stage, sparse, dense_order, offsets

    def _copy_to_fp16(self) -> ParameterServer:
        ps = self._new_ps()
        for t in ps.tables:
            exp = self.state.ps.export(t)
            ps.assign(t, exp.ids, exp.embeddings)
        return ps

    # ---- housekeeping --------------------------------------------------------------------------
    def _retire(self, ps: ParameterServer) -> None:
        self._retired.append((time.monotonic(), ps))

    def _close_retired(self, force: bool = False) -> None:
        now = time.monotonic()
        keep = []
        for at, ps in self._retired:
            if force or now - at >= self.config.retire_after:
                ps.close()
            else:
                keep.append((at, ps))
        self._retired = keep

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < _LAG_EVERY_S:
            return
        self._lag_at = now
        for kind, topic in self.topics.items():
            lag = max(0, self.log.end_offset(topic, 0) - self._offsets[kind])
            self.stats.lag_records[kind] = lag
            self.metrics.lag.labels(self.label, kind).set(lag)
