"""The event-log interface: topics split into partitions, each an append-only sequence of records.

Every event freshrec sees (impressions, actions, and later the sync log's deltas) travels
through an :class:`EventLog`. The log knows nothing of event types: a record is a key, a value
(bytes) and a timestamp, addressed by (topic, partition, offset). Two backends implement it
with the same behaviour, checked by one test suite: :class:`~freshrec.stream.embedded.EmbeddedLog`
(SQLite on local disk, the default) and :class:`~freshrec.stream.kafka.KafkaLog` (a Kafka
cluster through confluent-kafka).

Contract
--------
* **Partitioning.** :meth:`EventLog.append` puts a record in the partition it is given; else
  in ``partition_for(key, partitions)`` (seeded xxh64, the same in both backends, so a key
  lands in the same partition whichever backend holds it); else, without a key, in partition 0.
* **Offsets.** Each partition numbers its records 0, 1, 2, ... in append order; the embedded
  log never leaves a gap (Kafka may, after transactions or compaction). :meth:`end_offset` is
  the next offset to be written.
* **Durability.** A batch is durable when :meth:`append` returns (embedded: a committed, fsynced
  SQLite transaction; Kafka: every record acknowledged with ``acks=all``). The embedded log
  also makes a batch atomic, across partitions too: after a crash it is there whole or not at
  all. Kafka has no such guarantee without transactions: a failed append may leave a prefix.
* **Consumer groups.** :meth:`commit` stores, per group and partition, the next offset the
  group will read (Kafka's convention); :meth:`committed` returns them.
* **Threads.** One instance may be shared by any number of threads (the server's request
  threads, the joiner). :meth:`close` refuses new calls, wakes waiting reads (they raise
  :class:`StateError`), waits for calls in flight to finish (at most its ``timeout_s``, if
  given), then releases everything; it is idempotent, and every call after it raises
  :class:`StateError` naming the state.
* **Errors.** Bad arguments raise :class:`InputError` naming the argument, before anything is
  written; failures of SQLite or Kafka are raised as :class:`BackendError` with the original
  exception chained.
"""

from __future__ import annotations

import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import xxhash

from freshrec.errors import InputError, StateError
from freshrec.stream.config import LogConfig

__all__ = [
    "PARTITION_SEED",
    "EventLog",
    "LogRecord",
    "LogState",
    "PartitionBatch",
    "RecordColumns",
    "open_log",
    "partition_for",
]

PARTITION_SEED = 0x6672_6573_6872_6563  # "freshrec" in ASCII: fixed forever, or keys move
MAX_PARTITIONS = 1 << 16  # far above any real topic; catches a mistyped count early
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's rule, so a name works in both backends


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record read back from the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int  # set by the appender (default: wall clock at append), not event time


class RecordColumns(NamedTuple):
    """The records of one :meth:`EventLog.read_columns` call (one partition), as parallel columns:
    record ``i`` is ``(offsets[i], keys[i], values[i], timestamps_ms[i])``. No object per record,
    so a consumer that only decodes the values (the joiner) skips :class:`LogRecord`'s cost."""

    offsets: np.ndarray  # (n,) int64, increasing
    keys: list[bytes | None]
    values: list[bytes]
    timestamps_ms: np.ndarray  # (n,) int64


@dataclass(frozen=True, slots=True)
class PartitionBatch:
    """The records of one :meth:`EventLog.append` call that go to one partition, in order.
    Built and validated by :class:`EventLog`; backends receive only these."""

    partition: int
    values: list[bytes]
    keys: list[bytes | None] | None  # None: no record has a key
    timestamps_ms: np.ndarray  # (n,) int64


class LogState(Enum):
    OPEN = "open"  # every call allowed
    CLOSING = "closing"  # close() started: new calls refused, waiting reads woken, calls in flight finish
    CLOSED = "closed"  # connections released; every call but close() raises StateError


def partition_for(key: bytes, partitions: int) -> int:
    """The partition a keyed record goes to: ``xxh64(key, PARTITION_SEED) % partitions``.

    The same in both backends. It is not Kafka's default partitioner (murmur2), so programs
    outside freshrec that write to its topics should use this function or pass a partition.
    """
    if type(key) is not bytes:
        raise InputError(f"key must be bytes, got {type(key).__name__}")
    if isinstance(partitions, bool) or not isinstance(partitions, int | np.integer) or partitions < 1:
        raise InputError(f"partitions must be a positive int, got {partitions!r}")
    return xxhash.xxh64_intdigest(key, PARTITION_SEED) % int(partitions)


def _partitions_of(keys: list[bytes | None], n: int) -> np.ndarray:
    """``partition_for`` of every key (None -> 0), as an (n,) int64 array."""
    digest = xxhash.xxh64_intdigest
    seed = PARTITION_SEED
    hashes = np.fromiter((0 if k is None else digest(k, seed) for k in keys), dtype=np.uint64, count=len(keys))  # (N,)
    return (hashes % np.uint64(n)).astype(np.int64)


class EventLog(ABC):
    """Append-only partitioned topics with consumer-group offsets. See the module docstring.

    Public methods validate their arguments and the lifecycle, then call the backend's
    ``_create_topic``, ``_partitions``, ``_append``, ``_read``, ``_end_offset``, ``_commit``,
    ``_committed`` and ``_close``, which trust them.
    """

    def __init__(self) -> None:
        self._life = threading.Condition()
        self._state = LogState.OPEN
        self._inflight = 0

    # ---- the interface -----------------------------------------------------------------------

    def create_topic(self, topic: str, partitions: int = 1, *, keep_forever: bool = False) -> None:
        """Create ``topic`` with ``partitions`` partitions. Idempotent for the same count; a
        topic that exists with another count is an :class:`InputError`. ``keep_forever``: no
        retention limit, whatever the log's topic settings say (Kafka; the embedded log keeps
        every record anyway)."""
        _check_topic(topic)
        partitions = _check_int(partitions, "partitions", 1, MAX_PARTITIONS)
        with self._call("create a topic"):
            self._create_topic(topic, partitions, keep_forever)

    def ensure_topic(self, topic: str, partitions: int = 1, *, keep_forever: bool = False) -> tuple[int, bool]:
        """``(partition count, created)``: create ``topic`` with ``partitions`` partitions unless
        it exists (an existing topic keeps its own count and settings, also when another process
        creates it between the check and the creation)."""
        try:
            return self.partitions(topic), False
        except InputError:  # no such topic (or a bad name, which create_topic reports again)
            pass
        try:
            self.create_topic(topic, partitions, keep_forever=keep_forever)
        except InputError:
            return self.partitions(topic), False  # created meanwhile with another count
        return partitions, True

    def partitions(self, topic: str) -> int:
        """The number of partitions of ``topic``; :class:`InputError` if it does not exist."""
        _check_topic(topic)
        with self._call("look up a topic"):
            return self._partitions(topic)

    def append(
        self,
        topic: str,
        values: Sequence[bytes],
        keys: Sequence[bytes | None] | None = None,
        *,
        partition: int | None = None,
        timestamps_ms: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Append a batch of records; durable when this returns (see the module docstring).

        Args:
            values: the records' payloads, bytes each.
            keys: one key (bytes or None) per value, or None for no keys.
            partition: put every record here; else each keyed record goes to
                ``partition_for(key, n)`` and each unkeyed one to partition 0.
            timestamps_ms: one int per value, milliseconds >= 1; default: the wall clock now.
        """
        _check_topic(topic)
        vals = _check_values(values)
        n = len(vals)
        ks = _check_keys(keys, n)
        ts = _check_timestamps(timestamps_ms, n)
        with self._call("append"):
            n_parts = self._partitions(topic)
            if partition is not None:
                p = _check_partition(partition, topic, n_parts)
                batches = [PartitionBatch(p, vals, ks, ts)] if n else []
            else:
                batches = _split(vals, ks, ts, n_parts)
            if batches:
                self._append(topic, batches)

    def read(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_records: int = 10_000,
        timeout_s: float = 0.0,
    ) -> list[LogRecord]:
        """Up to ``max_records`` records of one partition with offsets >= ``offset``, in
        order. Returns at once if there are any; else waits up to ``timeout_s`` seconds for
        the first one to be appended, and returns [] if none was."""
        _check_topic(topic)
        offset = _check_int(offset, "offset", 0, None)
        max_records = _check_int(max_records, "max_records", 1, None)
        timeout_s = _check_timeout(timeout_s)
        with self._call("read"):
            p = _check_partition(partition, topic, self._partitions(topic))
            return self._read(topic, p, offset, max_records, timeout_s)

    def read_columns(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_records: int = 10_000,
        timeout_s: float = 0.0,
    ) -> RecordColumns:
        """:meth:`read` with the records as columns (:class:`RecordColumns`): the same records,
        the same waiting, without building a :class:`LogRecord` per record."""
        _check_topic(topic)
        offset = _check_int(offset, "offset", 0, None)
        max_records = _check_int(max_records, "max_records", 1, None)
        timeout_s = _check_timeout(timeout_s)
        with self._call("read"):
            p = _check_partition(partition, topic, self._partitions(topic))
            return self._read_columns(topic, p, offset, max_records, timeout_s)

    def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record appended to this partition will get."""
        _check_topic(topic)
        with self._call("get an end offset"):
            p = _check_partition(partition, topic, self._partitions(topic))
            return self._end_offset(topic, p)

    def commit(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Store ``group``'s position in ``topic``: partition -> the next offset it will read."""
        _check_group(group)
        _check_topic(topic)
        if not isinstance(offsets, Mapping):
            raise InputError(f"offsets must be a mapping partition -> offset, got {type(offsets).__name__}")
        with self._call("commit offsets"):
            n_parts = self._partitions(topic)
            checked = {
                _check_partition(p, topic, n_parts): _check_int(o, f"offsets[{p}]", 0, None) for p, o in offsets.items()
            }
            if checked:
                self._commit(group, topic, checked)

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """``group``'s committed offsets in ``topic``; partitions never committed are absent."""
        _check_group(group)
        _check_topic(topic)
        with self._call("fetch committed offsets"):
            return self._committed(group, topic, self._partitions(topic))

    @property
    def state(self) -> LogState:
        return self._state

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new calls, wake waiting reads, wait for calls in flight, release everything.

        ``timeout_s`` bounds the whole close (None: calls in flight take as long as the
        backend's own timeouts let them). At the deadline a backend that can cuts short what is
        still in flight, and releases what no call is using: Kafka drops the records it has not
        delivered (an append in flight raises :class:`StateError`) and leaves a consumer that a
        call still uses for the process's exit. The embedded log waits for its calls regardless
        (SQLite bounds them with ``busy_timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
        with self._life:
            if self._state is not LogState.OPEN:
                while self._state is LogState.CLOSING:  # another thread is closing: wait for it
                    self._life.wait()
                return
            self._state = LogState.CLOSING
        try:
            self._wake()
            with self._life:
                while self._inflight and (deadline is None or time.monotonic() < deadline):
                    self._life.wait(None if deadline is None else deadline - time.monotonic())
                late = self._inflight > 0
            if late and not self._cut_short():
                with self._life:
                    while self._inflight:
                        self._life.wait()
            self._close(None if deadline is None else max(0.0, deadline - time.monotonic()))
        finally:
            with self._life:
                self._state = LogState.CLOSED
                self._life.notify_all()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- for backends ------------------------------------------------------------------------

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        with self._life:
            if self._state is not LogState.OPEN:
                raise StateError(f"cannot {what}: the event log is {self._state.value}")
            self._inflight += 1
        try:
            yield
        finally:
            with self._life:
                self._inflight -= 1
                if not self._inflight:
                    self._life.notify_all()

    def _check_open(self, what: str) -> None:
        """For wait loops: raise if close() started while this call was waiting."""
        if self._state is not LogState.OPEN:
            raise StateError(f"cannot {what}: the event log is {self._state.value}")

    def _wake(self) -> None:  # noqa: B027 - optional hook: backends whose reads wait override it
        """Wake reads that are waiting for records (close() calls it)."""

    def _cut_short(self) -> bool:
        """close() reached its deadline with calls in flight: make them end soon and return
        True if ``_close`` may then run while they finish (it must leave alone what they use);
        False (the default) makes close() wait for them."""
        return False

    @abstractmethod
    def _create_topic(self, topic: str, partitions: int, keep_forever: bool) -> None: ...

    @abstractmethod
    def _partitions(self, topic: str) -> int: ...

    @abstractmethod
    def _append(self, topic: str, batches: list[PartitionBatch]) -> None: ...

    @abstractmethod
    def _read(self, topic: str, partition: int, offset: int, max_records: int, timeout_s: float) -> list[LogRecord]: ...

    def _read_columns(
        self, topic: str, partition: int, offset: int, max_records: int, timeout_s: float
    ) -> RecordColumns:
        """Columns from :meth:`_read`; backends that can skip the records override it."""
        records = self._read(topic, partition, offset, max_records, timeout_s)
        n = len(records)
        return RecordColumns(
            np.fromiter((r.offset for r in records), np.int64, n),
            [r.key for r in records],
            [r.value for r in records],
            np.fromiter((r.timestamp_ms for r in records), np.int64, n),
        )

    @abstractmethod
    def _end_offset(self, topic: str, partition: int) -> int: ...

    @abstractmethod
    def _commit(self, group: str, topic: str, offsets: dict[int, int]) -> None: ...

    @abstractmethod
    def _committed(self, group: str, topic: str, partitions: int) -> dict[int, int]: ...

    @abstractmethod
    def _close(self, timeout_s: float | None) -> None:
        """Release everything within about ``timeout_s`` (None: the backend's own timeouts)."""


def open_log(config: LogConfig | None = None, **fields: Any) -> EventLog:
    """Open the event log ``config`` describes (fields may be given as keywords instead)."""
    if config is None:
        config = LogConfig.from_dict(fields, source="LogConfig")
    elif fields:
        config = LogConfig.from_dict({**config.model_dump(), **fields}, source="LogConfig")
    if config.backend == "kafka":
        from freshrec.stream.kafka import KafkaLog

        return KafkaLog(config)
    from freshrec.stream.embedded import EmbeddedLog

    return EmbeddedLog(config)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- argument checks (shared by both backends, so their errors are identical) ----------------


def _check_topic(topic: Any) -> None:
    if not isinstance(topic, str):
        raise InputError(f"topic must be a str, got {type(topic).__name__}")
    if not _TOPIC_RE.fullmatch(topic) or topic in (".", ".."):
        raise InputError(f"topic {topic!r} is not a valid name: use 1-249 of [A-Za-z0-9._-]")


def _check_group(group: Any) -> None:
    if not isinstance(group, str) or not group:
        raise InputError(f"group must be a non-empty str, got {group!r}")


def _check_int(value: Any, name: str, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if v < low or (high is not None and v > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"{name} must be {bound}, got {v}")
    return v


def _check_partition(partition: Any, topic: str, n_parts: int) -> int:
    if isinstance(partition, bool) or not isinstance(partition, int | np.integer):
        raise InputError(f"partition must be an int, got {type(partition).__name__}")
    p = int(partition)
    if not 0 <= p < n_parts:
        raise InputError(f"partition {p} is out of range: topic {topic!r} has partitions 0..{n_parts - 1}")
    return p


def _check_timeout(timeout_s: Any) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float | np.integer | np.floating):
        raise InputError(f"timeout_s must be a number of seconds, got {type(timeout_s).__name__}")
    t = float(timeout_s)
    if not (t >= 0 and np.isfinite(t)):
        raise InputError(f"timeout_s must be finite and >= 0, got {t}")
    return t


def _check_values(values: Any) -> list[bytes]:
    if isinstance(values, bytes | bytearray | memoryview | str):
        raise InputError(
            f"values must be a sequence of bytes, got one {type(values).__name__} (wrap a single record in a list)"
        )
    if not isinstance(values, Sequence):
        raise InputError(f"values must be a sequence of bytes, got {type(values).__name__}")
    vals = list(values)
    if all(type(v) is bytes for v in vals):
        return vals
    return [_as_bytes(v, f"values[{i}]") for i, v in enumerate(vals)]


def _check_keys(keys: Any, n: int) -> list[bytes | None] | None:
    if keys is None:
        return None
    if isinstance(keys, bytes | bytearray | memoryview | str) or not isinstance(keys, Sequence):
        raise InputError(f"keys must be a sequence of bytes or None, got {type(keys).__name__}")
    ks = list(keys)
    if len(ks) != n:
        raise InputError(f"keys has {len(ks)} entries, values has {n}")
    if not all(type(k) is bytes or k is None for k in ks):
        ks = [None if k is None else _as_bytes(k, f"keys[{i}]") for i, k in enumerate(ks)]
    if all(k is None for k in ks):
        return None
    return ks


def _as_bytes(v: Any, name: str) -> bytes:
    if type(v) is bytes:
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    raise InputError(f"{name} must be bytes, got {type(v).__name__}")


def _check_timestamps(timestamps_ms: Any, n: int) -> np.ndarray:
    if timestamps_ms is None:
        return np.full(n, now_ms(), np.int64)
    if isinstance(timestamps_ms, str | bytes) or not isinstance(timestamps_ms, Sequence | np.ndarray):
        raise InputError(f"timestamps_ms must be a sequence of ints, got {type(timestamps_ms).__name__}")
    ts = np.asarray(timestamps_ms)
    if ts.shape != (n,):
        raise InputError(f"timestamps_ms must hold one int per value ({n}), got shape {ts.shape}")
    if n and ts.dtype.kind not in "iu":
        raise InputError(f"timestamps_ms must be ints (milliseconds), got dtype {ts.dtype}")
    ts = ts.astype(np.int64)
    if n and int(ts.min()) < 1:  # Kafka's producer reads 0 as "now": refuse it in both backends
        raise InputError(f"timestamps_ms must be >= 1 (0 means 'now' to Kafka), got {int(ts.min())}")
    return ts


def _split(values: list[bytes], keys: list[bytes | None] | None, ts: np.ndarray, n_parts: int) -> list[PartitionBatch]:
    """Group a batch by partition (keys hashed, None -> 0), keeping append order in each."""
    n = len(values)
    if not n:
        return []
    if keys is None or n_parts == 1:
        return [PartitionBatch(0, values, keys, ts)]
    parts = _partitions_of(keys, n_parts)  # (N,)
    order = np.argsort(parts, kind="stable")
    counts = np.bincount(parts, minlength=n_parts)
    out = []
    start = 0
    for p in np.flatnonzero(counts).tolist():
        idx = order[start : start + counts[p]]
        start += int(counts[p])
        if idx.shape[0] == n:
            out.append(PartitionBatch(p, values, keys, ts))
            break
        il = idx.tolist()
        sub_keys = [keys[i] for i in il]
        out.append(
            PartitionBatch(p, [values[i] for i in il], None if all(k is None for k in sub_keys) else sub_keys, ts[idx])
        )
    return out
