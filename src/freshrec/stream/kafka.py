"""The Kafka event log: the same interface on a Kafka cluster, through confluent-kafka.

How the interface maps onto Kafka (docs/kafka.md tells a user how to point freshrec at a
cluster):
* **Append** produces every record with an explicit partition (``partition_for`` of its key,
  so both backends place keys alike) and the given timestamp, then flushes: the producer uses
  ``acks=all`` and is idempotent, so a batch is durable, in order and without duplicates when
  :meth:`append` returns. A failed batch may leave a prefix behind (Kafka has no atomic batch
  without transactions).
* **Read** uses one consumer per (topic, partition), assigned to that partition (no group
  membership, no rebalances) and kept positioned after the last record returned, so reading a
  partition in order costs no seek. It waits for records known to exist (below the high
  watermark), so ``timeout_s=0`` returns what was appended before the call, as in the
  embedded log.
* **Commit/committed** use one consumer per group that never joins it: offsets are committed
  with ``commit(offsets=...)`` as a "simple consumer" does. A group that freshrec manages must
  not also have subscribed members elsewhere (Kafka would refuse the commit).
* **End offset** is the high watermark (ListOffsets), confirmed by a fetch of the tail when
  ``probe_end_offset`` is on (Tansu 0.6 under-reports ListOffsets; see LogConfig).
* **Close** gives up on records not yet acknowledged after one flush (or at the deadline of
  ``close(timeout_s)``): they are purged (an append in flight raises :class:`StateError`),
  never left queued, since librdkafka would hold the process for their ``message.timeout.ms``
  (5 min) on exit. Consumers still used by a call in flight are left for the process's exit.

Threads: the producer and the admin client are thread-safe; each consumer is used under its
own lock. librdkafka's log lines go to the ``freshrec.stream.kafka`` logger.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import repeat
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from freshrec.errors import BackendError, ConfigError, InputError, StateError, TooLargeError
from freshrec.stream.config import LogConfig
from freshrec.stream.log import EventLog, LogRecord, PartitionBatch

__all__ = ["KafkaLog"]

_log = logging.getLogger("freshrec.stream.kafka")
_SLICE_S = 0.05  # waits are cut into slices this long, so close() wakes a waiting read quickly
_NO_OFFSET = -1001  # librdkafka's OFFSET_INVALID: "no committed offset", "watermark unknown"
_BAD_TOPIC = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION)
# a record over the producer's or the broker's message.max.bytes: no retry will take it
_TOO_LARGE = (KafkaError.MSG_SIZE_TOO_LARGE,)
_TOO_LARGE_HINT = "a record is larger than the cluster takes (message.max.bytes, 1 MB by default)"


class _Reader:
    """A consumer assigned to one partition, and where its next record will come from."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.lock = threading.Lock()
        self.position: int | None = None  # offset the next consumed record is expected at


class KafkaLog(EventLog):
    """The event log on a Kafka cluster at ``config.bootstrap_servers``. See the module docstring."""

    def __init__(self, config: LogConfig) -> None:
        super().__init__()
        if config.backend != "kafka" or not config.bootstrap_servers:
            raise InputError("KafkaLog needs a LogConfig with backend='kafka' and bootstrap_servers")
        self.config = config
        self._common: dict[str, Any] = {
            "bootstrap.servers": config.bootstrap_servers,
            "logger": _log,
            "error_cb": _on_client_error,
            **config.kafka_settings,
        }
        self._lock = threading.Lock()
        self._topics: dict[str, int] = {}  # name -> partitions (a cluster may add some: reopen)
        self._readers: dict[tuple[str, int], _Reader] = {}
        self._groups: dict[str, _Reader] = {}
        self._closables: list[_Reader] = []
        self._dropping = False  # close() gave up on unacknowledged records: appends purge theirs and fail
        try:  # librdkafka checks settings here: a bad one is a configuration error
            self._admin = AdminClient(self._common)
            self._producer = Producer(
                {
                    **self._common,
                    "acks": "all",  # durable: every in-sync replica has the record
                    "enable.idempotence": True,  # retries neither duplicate nor reorder records
                    "delivery.report.only.error": True,  # no Python callback per delivered record
                    **config.producer_settings,
                }
            )
            self._meta = self._new_consumer("freshrec.meta")  # watermark queries and tail probes
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Kafka settings for {config.bootstrap_servers!r}: {exc}") from exc

    def _new_consumer(self, group: str) -> _Reader:
        consumer = Consumer(
            {
                **self._common,
                "group.id": group,  # only commit()'s consumers use it; none ever subscribes
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "error",  # never skip silently to another offset
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,  # an idle fetch returns within 100 ms (read latency)
                **self.config.consumer_settings,
            }
        )
        reader = _Reader(consumer)
        self._closables.append(reader)
        return reader

    # ---- topics ------------------------------------------------------------------------------

    def _create_topic(self, topic: str, partitions: int, keep_forever: bool) -> None:
        cfg = self.config
        settings = dict(cfg.topic_settings)
        if keep_forever:
            settings.update({"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"})
        new = NewTopic(topic, partitions, cfg.replication_factor, config=settings)
        with _kafka(f"create topic {topic!r}", self.config.bootstrap_servers):
            future = self._admin.create_topics([new], request_timeout=cfg.timeout_s)[topic]
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        deadline = time.monotonic() + cfg.timeout_s
        while True:  # metadata reaches every broker a little after creation
            found = self._lookup(topic)
            if found is not None:
                break
            if time.monotonic() > deadline:
                raise BackendError(f"topic {topic!r} was created but did not appear in metadata")
            time.sleep(_SLICE_S)
        if found != partitions:
            raise InputError(f"topic {topic!r} exists with {found} partitions, not {partitions}")

    def _lookup(self, topic: str) -> int | None:
        """The topic's partition count from cluster metadata, or None if it does not exist. Lists
        all topics: asking for one by name could auto-create it on some brokers."""
        with _kafka("list topics", self.config.bootstrap_servers):
            meta = self._admin.list_topics(timeout=self.config.timeout_s)
        t = meta.topics.get(topic)
        if t is None or (t.error is not None and t.error.code() in _BAD_TOPIC) or not t.partitions:
            return None
        with self._lock:
            self._topics[topic] = len(t.partitions)
        return len(t.partitions)

    def _partitions(self, topic: str) -> int:
        n = self._topics.get(topic)
        if n is None:
            n = self._lookup(topic)
            if n is None:
                raise InputError(f"unknown topic {topic!r}: create it first with create_topic()")
        return n

    # ---- records -----------------------------------------------------------------------------

    def _append(self, topic: str, batches: list[PartitionBatch]) -> None:
        failed: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failed.append(err)

        producer = self._producer
        produce = producer.produce
        with _kafka(f"append to topic {topic!r}", self.config.bootstrap_servers):
            for b in batches:
                keys = repeat(None) if b.keys is None else b.keys
                for value, key, ts in zip(b.values, keys, b.timestamps_ms.tolist(), strict=False):
                    while True:
                        try:
                            produce(topic, value, key, b.partition, on_delivery=on_delivery, timestamp=ts)
                            break
                        except BufferError:  # the local queue is full: let deliveries drain it
                            if self._dropping:
                                break
                            producer.poll(_SLICE_S)
            left = self._flush()
        if self._dropping and (failed or left):
            raise StateError(
                f"cannot append to topic {topic!r}: the event log is {self.state.value}; "
                f"{len(failed) + left} records not acknowledged were dropped"
            )
        if failed:
            too_large = [e for e in failed if e.code() in _TOO_LARGE]
            if too_large:  # the others were likely delivered: a prefix, as any failed batch may leave
                raise TooLargeError(f"append to topic {topic!r}: {_TOO_LARGE_HINT}: {too_large[0].str()}")
            raise BackendError(f"append to topic {topic!r}: {len(failed)} records failed: {failed[0].str()}")
        if left:
            raise BackendError(
                f"append to topic {topic!r}: {left} records not acknowledged within timeout_s={self.config.timeout_s}"
            )

    def _flush(self) -> int:
        """Wait up to ``timeout_s`` for every record to be acknowledged; returns how many were
        not. Cut short, and the records purged, once close() gives up on them (``_dropping``)."""
        producer = self._producer
        deadline = time.monotonic() + self.config.timeout_s
        while True:
            if self._dropping:  # purge again: this append may have produced since close() purged
                producer.purge()
                return producer.flush(_SLICE_S)  # serves the purged records' delivery reports
            left = producer.flush(min(_SLICE_S, max(0.0, deadline - time.monotonic())))
            if not left or time.monotonic() >= deadline:
                return left

    def _reader(self, topic: str, partition: int) -> _Reader:
        with self._lock:
            reader = self._readers.get((topic, partition))
            if reader is None:
                with _kafka("create a consumer", self.config.bootstrap_servers):
                    reader = self._readers[topic, partition] = self._new_consumer("freshrec.reader")
        return reader

    def _read(self, topic: str, partition: int, offset: int, max_records: int, timeout_s: float) -> list[LogRecord]:
        reader = self._reader(topic, partition)
        tp = TopicPartition(topic, partition)
        now = time.monotonic()
        deadline = now + timeout_s  # for records not yet appended
        arrive_by = now + self.config.timeout_s  # for records known to exist
        end: int | None = None  # the end offset, once asked for
        out: list[LogRecord] = []
        with reader.lock, _kafka(f"read topic {topic!r} partition {partition}", self.config.bootstrap_servers):
            c = reader.consumer
            if reader.position != offset:
                c.assign([TopicPartition(topic, partition, offset)])
                reader.position = offset
            while len(out) < max_records:
                self._check_open("read")
                if reader.position is None:  # the fetcher stopped beyond the end: retry from there
                    if out or time.monotonic() >= deadline:
                        break
                    time.sleep(_SLICE_S)
                    c.assign([TopicPartition(topic, partition, offset)])
                    reader.position = offset
                if self._take(reader, c.consume(max_records - len(out), 0), topic, partition, out):
                    continue
                _, high = c.get_watermark_offsets(tp, cached=True)  # from the last fetch response
                known = max(high, end or 0)
                now = time.monotonic()
                if reader.position < known:  # records exist: wait for the fetch that brings them
                    if now > arrive_by:
                        raise BackendError(
                            f"records {reader.position}..{known - 1} of topic {topic!r} partition "
                            f"{partition} did not arrive within timeout_s={self.config.timeout_s}"
                        )
                    wait = _SLICE_S
                elif out:
                    break
                elif end is None:
                    end = self._end_offset(topic, partition)
                    continue
                elif now < deadline:
                    wait = min(_SLICE_S, deadline - now)
                else:
                    break
                msg = c.poll(wait)
                if msg is not None:
                    self._take(reader, [msg], topic, partition, out)
        return out

    def _take(self, reader: _Reader, msgs: list[Message], topic: str, partition: int, out: list[LogRecord]) -> bool:
        """Append ``msgs`` to ``out`` (skipping any before the position); False if none came."""
        if not msgs:
            return False
        position = reader.position
        add = out.append
        for m in msgs:  # the hot loop of a Kafka read: keep it lean
            if m.error() is not None:
                reader.position = position
                self._fetch_error(reader, m.error(), topic, partition)
                return True  # the fetcher stopped; what follows is stale
            off = m.offset()
            if off >= position:  # else left over from before a seek
                add(LogRecord(topic, partition, off, m.key(), m.value(), m.timestamp()[1]))
                position = off + 1
        reader.position = position
        return True

    def _fetch_error(self, reader: _Reader, err: KafkaError, topic: str, partition: int) -> None:
        code = err.code()
        if code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
            low, _ = reader.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.config.timeout_s
            )
            if reader.position is not None and reader.position < low:
                raise InputError(
                    f"offset {reader.position} of topic {topic!r} partition {partition} is no longer "
                    f"retained (the earliest is {low}); see retention in docs/kafka.md"
                )
            reader.position = None  # beyond the end: the fetcher stopped; reassign on the next read
            return
        if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            raise InputError(f"topic {topic!r} partition {partition} does not exist (deleted?): {err.str()}")
        raise BackendError(f"read topic {topic!r} partition {partition}: {err.str()}")

    def _end_offset(self, topic: str, partition: int) -> int:
        tp = TopicPartition(topic, partition)
        probe = self._meta
        with (
            probe.lock,
            _kafka(f"get the end offset of topic {topic!r} partition {partition}", self.config.bootstrap_servers),
        ):
            c = probe.consumer
            _, high = c.get_watermark_offsets(tp, timeout=self.config.timeout_s)
            if not self.config.probe_end_offset or high <= 0:
                return int(high)
            # The fetch response of the record before the reported end carries the true end.
            c.assign([TopicPartition(topic, partition, high - 1)])
            try:
                deadline = time.monotonic() + self.config.timeout_s
                while True:
                    msg = c.poll(_SLICE_S)
                    _, fetched = c.get_watermark_offsets(tp, cached=True)
                    # Done once a fetch response reported an end at least ListOffsets' (Kafka: the
                    # first one), or brought the record before it (Tansu). An earlier probe's
                    # cached value is below a new ListOffsets answer whenever records were added.
                    if fetched >= high or (msg is not None and msg.error() is None and msg.offset() >= high - 1):
                        break
                    if time.monotonic() > deadline:
                        raise BackendError(f"no fetch response for the tail within timeout_s={self.config.timeout_s}")
            finally:
                c.unassign()
            return int(max(high, fetched))

    # ---- consumer groups ---------------------------------------------------------------------

    def _group(self, group: str) -> _Reader:
        with self._lock:
            g = self._groups.get(group)
            if g is None:
                with _kafka("create a consumer", self.config.bootstrap_servers):
                    g = self._groups[group] = self._new_consumer(group)
        return g

    def _commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        g = self._group(group)
        tps = [TopicPartition(topic, p, o) for p, o in offsets.items()]
        with g.lock, _kafka(f"commit offsets of group {group!r}", self.config.bootstrap_servers):
            result = g.consumer.commit(offsets=tps, asynchronous=False)
        bad = [tp for tp in result or [] if tp.error is not None]
        if bad:
            raise BackendError(f"commit offsets of group {group!r}: partition {bad[0].partition}: {bad[0].error.str()}")

    def _committed(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        g = self._group(group)
        with g.lock, _kafka(f"fetch committed offsets of group {group!r}", self.config.bootstrap_servers):
            tps = g.consumer.committed(
                [TopicPartition(topic, p) for p in range(partitions)], timeout=self.config.timeout_s
            )
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}

    # ---- lifecycle ---------------------------------------------------------------------------

    def _cut_short(self) -> bool:
        # An append in flight would wait timeout_s for acknowledgements the broker may never send;
        # purged, its records fail at once. Reads notice the closing log within _SLICE_S, or when
        # their broker request times out; _close() leaves the consumers they hold alone.
        self._dropping = True
        with contextlib.suppress(KafkaException):
            self._producer.purge()
        return True

    def _close(self, timeout_s: float | None) -> None:
        first: Exception | None = None
        budget = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
        deadline = time.monotonic() + budget
        try:
            cut = self._dropping  # _cut_short() purged the records of the appends in flight: they say so
            left = self._producer.flush(budget)
            if left:
                # Never close() with records queued: librdkafka would wait for their
                # message.timeout.ms (5 min by default) before letting the process go. Their
                # appends failed (timed out) or fail now: the callers know.
                self._dropping = True
                self._producer.purge()
                self._producer.flush(0)
                if not cut:
                    _log.warning("closing: %d records not acknowledged within %.1f s were dropped", left, budget)
            self._producer.close()
        except KafkaException as exc:
            first = BackendError(f"closing the producer: {exc}")
        busy = 0
        for r in self._closables:
            if not r.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                busy += 1  # a call cut short by close() still uses it: closing it under the call could crash
                continue
            try:
                r.consumer.close()
            except (KafkaException, RuntimeError) as exc:
                first = first or BackendError(f"closing a consumer: {exc}")
            finally:
                r.lock.release()
        if busy:
            _log.warning("closing: %d consumers still used by calls in flight are left open until the process exits",
                         busy)  # fmt: skip
        self._closables.clear()
        self._admin = None  # type: ignore[assignment]  # it has no close(): dropping it disconnects
        if first is not None:
            raise first

    def __repr__(self) -> str:
        return f"KafkaLog({self.config.bootstrap_servers!r}, state={self.state.value})"


_ERROR_EVERY_S = 10.0  # a client error of one kind is logged at most this often
_error_seen: dict[int, tuple[float, int]] = {}  # error code -> (last logged, suppressed since)
_error_lock = threading.Lock()
_now = time.monotonic  # the clock of that rate limit (tests replace it)


def _on_client_error(err: KafkaError) -> None:
    # librdkafka retries connection errors itself; calls that cannot finish raise on their own.
    # While a broker is down it reports every failed connection (dozens a second, from every
    # client): one line per kind of error per 10 s, with how many were left out, keeps the line
    # that matters (the call that gave up) readable.
    if err.fatal():  # the client is unusable from now on: never held back
        _log.error("kafka client fatal error: %s", err.str())
        return
    now = _now()
    with _error_lock:
        last, suppressed = _error_seen.get(err.code(), (float("-inf"), 0))
        if now - last < _ERROR_EVERY_S:
            _error_seen[err.code()] = (last, suppressed + 1)
            return
        _error_seen[err.code()] = (now, 0)
    more = f" ({suppressed} more like it in the last {_ERROR_EVERY_S:.0f} s)" if suppressed else ""
    _log.warning("kafka client error: %s%s", err.str(), more)


@contextmanager
def _kafka(what: str, servers: str) -> Iterator[None]:
    """Translate a KafkaException raised inside the block into BackendError (InputError for an
    unknown topic or partition, TooLargeError for a record over the size limit) naming what was
    being done and the cluster's address (a wrong ``bootstrap_servers`` otherwise shows only as a
    transport failure or a controller timeout)."""
    try:
        yield
    except KafkaException as exc:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is not None and err.code() in _BAD_TOPIC:
            raise InputError(f"cannot {what}: {err.str()}") from exc
        if err is not None and err.code() in _TOO_LARGE:
            raise TooLargeError(f"cannot {what}: {_TOO_LARGE_HINT}: {err.str()}") from exc
        raise BackendError(f"cannot {what} (Kafka at {servers}): {err.str() if err else exc}") from exc
