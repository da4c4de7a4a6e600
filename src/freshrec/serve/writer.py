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

:meth:`EventWriter.close` is bounded: it waits up to its ``timeout`` for what is queued to be
appended, then counts whatever is still queued or being appended as ``dropped`` and logs the
count once, as an error. A log that is down (a frozen Kafka broker) thus costs a stopping
replica ``timeout`` seconds and the events it held, not the log's own timeouts.
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
    """Batched, asynchronous appends to ``log``. Thread-safe.

    Every record submitted ends up counted once: ``appended``, ``dropped`` (failed once the
    writer was closing, refused by a closed log, or still waiting at :meth:`close`'s deadline),
    or ``pending`` while neither has happened yet.
    """

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
        self._abandoned = False  # close() gave up waiting: what the thread still holds is counted dropped
        self._last_error: str | None = None  # why the last append failed (the close report names it)
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

    def close(self, timeout: float | None = 10.0) -> int:
        """Refuse new events, append what is queued (a failed append is no longer retried), and
        stop the thread, waiting up to ``timeout`` seconds (None: as long as it takes). Records
        still queued or being appended then are counted as dropped (an append still running is
        abandoned: should it succeed later, its records are in the log but counted dropped).
        Logs one error with the number of events dropped since close began, if any; returns it.
        Idempotent (a second call returns 0)."""
        with self._cond:
            if self._closed:
                return 0
            self._closed = True
            dropped_before = self.dropped
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            if self._thread.is_alive():  # stuck in an append the log cannot finish
                self._abandoned = True
                self.dropped += self._pending
                self._pending = 0
                self._queue.clear()
                self._done = self._submitted
                self._cond.notify_all()
            lost = self.dropped - dropped_before
        if lost:
            why = f"; last error: {self._last_error}" if self._last_error else ""
            log.error(
                "event writer: closed with %d events not appended to the log, dropped (waited %s)%s",
                lost,
                "without limit" if timeout is None else f"{timeout:.1f} s",
                why,
            )
        return lost

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue or self._abandoned:
                    return
                work = list(self._queue)
                self._queue.clear()
            by_topic: dict[str, tuple[list[bytes], list[bytes | None]]] = {}
            for topic, values, keys in work:
                vals, ks = by_topic.setdefault(topic, ([], []))
                vals += values
                ks += keys
            for topic, (vals, ks) in by_topic.items():
                n = self._append(topic, vals, ks)
                with self._cond:
                    if self._abandoned:  # close() has counted these already
                        return
                    self.appended += n
                    self.dropped += len(vals) - n
                    self._pending -= len(vals)
            with self._cond:
                self._done += len(work)
                self._cond.notify_all()

    def _append(self, topic: str, values: list[bytes], keys: list[bytes | None]) -> int:
        """Append, retrying every ``retry_s`` until it works or the writer is closing; returns how
        many records were appended (the others are dropped). A batch never tried is still tried
        once after close began; one the log refuses for its content is halved (see the module
        docstring)."""
        while True:
            try:
                self.log.append(topic, values, keys)
                return len(values)
            except TooLargeError as exc:  # a record no retry will take: retried, it blocked everything after it
                self.failures += 1
                if len(values) > 1:  # halves: a prefix Kafka kept may go twice (the joiner drops duplicates)
                    h = len(values) // 2
                    return self._append(topic, values[:h], keys[:h]) + self._append(topic, values[h:], keys[h:])
                log.error("event writer: dropped an event for %s that the log refuses: %s", topic, exc)
                return 0
            except FreshrecError as exc:
                self.failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                if self._closed:  # close() reports the count, once
                    return 0
                if isinstance(exc, StateError):  # the log was closed under a running writer
                    log.error("event writer: dropped %d events for %s: %s", len(values), topic, exc)
                    return 0
                log.warning("event writer: append to %s failed, retrying: %s", topic, exc)
                with self._cond:
                    if self._cond.wait_for(lambda: self._closed, self.retry_s):
                        return 0  # closing: no more retries (close() reports the count)
