"""A background writer that appends events to the log in batches, off the request path.

/v1/recommend logs its impressions through it: a request hands over its encoded events and
returns; the writer thread appends everything queued per topic in one call (one fsync for many
requests on the embedded log). What was handed over and not yet appended is lost if the
process dies: that is the trade for not paying an fsync per request (``sync_impressions``
in the config pays it instead). A failed append is retried every ``retry_s`` until it succeeds
or the writer is closed; the backlog is capped, and a full backlog refuses new work
(:class:`CapacityError`, a 503) rather than grow without bound. A batch the log refuses for its
content (:class:`TooLargeError`: a record over Kafka's size limit) is never retried whole: it
is halved until the records at fault are found, and those are dropped (counted, logged).
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from freshrec.errors import CapacityError, FreshrecError, StateError, TooLargeError
from freshrec.stream import EventLog

__all__ = ["EventWriter"]

log = logging.getLogger(__name__)


class EventWriter:
    """Batched, asynchronous appends to ``log``. Thread-safe."""

    def __init__(self, log_: EventLog, *, max_pending: int = 100_000, retry_s: float = 0.5) -> None:
        self.log = log_
        self.max_pending = max_pending
        self.retry_s = retry_s
        self._queue: deque[tuple[str, list[bytes], list[bytes | None]]] = deque()
        self._pending = 0  # records queued or being appended
        self._submitted = 0  # batches handed over
        self._done = 0  # batches appended (or dropped at close)
        self._cond = threading.Condition()
        self._closed = False
        self.appended = 0
        self.failures = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="freshrec-event-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, topic: str, values: list[bytes], keys: list[bytes | None]) -> None:
        """Queue records for ``topic``; returns at once."""
        with self._cond:
            if self._closed:
                raise StateError("cannot log events: the event writer is closed")
            if self._pending + len(values) > self.max_pending:
                raise CapacityError(
                    f"the event log is behind: {self._pending} events wait to be appended "
                    f"(cap {self.max_pending}); retry shortly"
                )
            self._queue.append((topic, values, keys))
            self._pending += len(values)
            self._submitted += 1
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is appended; False on timeout."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Append what is queued (waiting up to ``timeout``), then stop the thread."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                work = list(self._queue)
                self._queue.clear()
            by_topic: dict[str, tuple[list[bytes], list[bytes | None]]] = {}
            for topic, values, keys in work:
                vals, ks = by_topic.setdefault(topic, ([], []))
                vals += values
                ks += keys
            for topic, (vals, ks) in by_topic.items():
                self._append(topic, vals, ks)
            with self._cond:
                self._done += len(work)
                self._pending -= sum(len(v) for _, v, _ in work)
                self._cond.notify_all()

    def _append(self, topic: str, values: list[bytes], keys: list[bytes | None]) -> None:
        while True:
            try:
                self.log.append(topic, values, keys)
                self.appended += len(values)
                return
            except TooLargeError as exc:  # a record no retry will take: retried, it blocked everything after it
                self.failures += 1
                if len(values) > 1:  # halves: a prefix Kafka kept may go twice (the joiner drops duplicates)
                    h = len(values) // 2
                    self._append(topic, values[:h], keys[:h])
                    self._append(topic, values[h:], keys[h:])
                else:
                    self.dropped += 1
                    log.error("event writer: dropped an event for %s that the log refuses: %s", topic, exc)
                return
            except FreshrecError as exc:
                self.failures += 1
                if self._closed or isinstance(exc, StateError):
                    self.dropped += len(values)
                    log.error("event writer: dropped %d events for %s: %s", len(values), topic, exc)
                    return
                log.warning("event writer: append to %s failed, retrying: %s", topic, exc)
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, self.retry_s)
