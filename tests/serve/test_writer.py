"""The impression writer appends what it is handed, in batches, refuses work past its cap, and
closes within its timeout however the log fares, counting what it could not append."""

from __future__ import annotations

import threading
import time

import pytest

from freshrec.errors import BackendError, CapacityError, StateError, TooLargeError
from freshrec.serve.writer import EventWriter
from freshrec.stream import open_log


def test_appends_in_order_and_flushes(tmp_path):
    with open_log(path=tmp_path / "log") as log:
        log.create_topic("t", 1)
        w = EventWriter(log)
        for i in range(100):
            w.submit("t", [f"v{i}".encode()], [b"k"])
        assert w.flush(10)
        assert [r.value for r in log.read("t", 0, 0, 1000)] == [f"v{i}".encode() for i in range(100)]
        assert w.appended == 100 and w.pending == 0
        w.close()
        with pytest.raises(StateError, match="closed"):
            w.submit("t", [b"late"], [None])


def test_a_full_backlog_refuses_new_work(tmp_path):
    with open_log(path=tmp_path / "log") as log:
        log.create_topic("t", 1)
        w = EventWriter(log, max_pending=3)
        with pytest.raises(CapacityError, match="cap 3"):
            w.submit("t", [b"a", b"b", b"c", b"d"], [None] * 4)
        w.close()


def test_close_appends_what_is_queued(tmp_path):
    with open_log(path=tmp_path / "log") as log:
        log.create_topic("t", 1)
        w = EventWriter(log)
        w.submit("t", [b"x"] * 50, [None] * 50)
        w.close()
        assert log.end_offset("t", 0) == 50


class _HungLog:
    """A log whose appends never return until released: a Kafka cluster that stopped answering."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def append(self, topic, values, keys):
        self.calls += 1
        self.release.wait(30)
        raise BackendError("append to topic 't': records not acknowledged within timeout_s=30.0")


def test_close_gives_up_at_its_timeout_and_counts_what_it_held_as_dropped(caplog):
    """A replica took 316 s to stop with its Kafka broker frozen: close() waited for an append
    stuck in the producer's flush, then the log's own timeouts. Now close() returns at its
    timeout, and what was queued or being appended is counted as dropped and logged once."""
    hung = _HungLog()
    w = EventWriter(hung)
    try:
        w.submit("t", [b"a"] * 3, [None] * 3)
        deadline = time.monotonic() + 5
        while hung.calls == 0 and time.monotonic() < deadline:  # the thread is inside append
            time.sleep(0.01)
        w.submit("t", [b"b"] * 4, [None] * 4)  # queued behind it
        with caplog.at_level("ERROR", logger="freshrec.serve.writer"):
            t0 = time.monotonic()
            assert w.close(timeout=0.3) == 7
            assert time.monotonic() - t0 < 1.5
        assert (w.dropped, w.appended, w.pending) == (7, 0, 0)
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "7 events" in errors[0].getMessage()
        assert w.flush(0)  # nothing left to wait for
    finally:
        hung.release.set()
    w._thread.join(5)  # the abandoned append fails late: it is not counted twice
    assert (w.dropped, w.appended, w.failures) == (7, 0, 1) and not w._thread.is_alive()


def test_a_failed_append_is_not_retried_once_closing(tmp_path, caplog):
    """Appends that fail while the writer closes are dropped, counted, and logged in one line."""
    with open_log(path=tmp_path / "log") as log:
        log.create_topic("t", 1)
        w = EventWriter(log, retry_s=60)
        with caplog.at_level("ERROR", logger="freshrec.serve.writer"):
            w.submit("nope", [b"x"] * 5, [None] * 5)  # an unknown topic: every append fails
            w.submit("t", [b"y"] * 2, [None] * 2)
            t0 = time.monotonic()
            assert w.close(timeout=5) == 5
            assert time.monotonic() - t0 < 2  # not retry_s
        assert (w.appended, w.dropped, w.pending) == (2, 5, 0)
        assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1
        assert log.end_offset("t", 0) == 2


class _SizeLimitedLog:
    """Refuses a batch holding a record over ``limit`` bytes, before writing any (as Kafka
    refuses one over message.max.bytes); otherwise the real log."""

    def __init__(self, log, limit: int) -> None:
        self._log, self.limit = log, limit

    def __getattr__(self, name):
        return getattr(self._log, name)

    def append(self, topic, values, keys=None, **kw):
        if any(len(v) > self.limit for v in values):
            raise TooLargeError(f"append to topic {topic!r}: a record is larger than the cluster takes")
        return self._log.append(topic, values, keys, **kw)


def test_a_record_the_log_will_never_take_is_dropped_not_retried_with_everything_after_it(tmp_path):
    """An impression over Kafka's message.max.bytes failed its batch as a BackendError, retried
    every retry_s for good: every impression queued after it waited behind it (the backlog grew
    until /v1/recommend answered 503), and Kafka kept the batch's prefix at every retry."""
    with open_log(path=tmp_path / "log") as log:
        log.create_topic("t", 1)
        w = EventWriter(_SizeLimitedLog(log, 100), retry_s=0.01)
        w.submit("t", [b"a", b"b", b"x" * 101, b"c"], [None] * 4)
        w.submit("t", [b"d"], [None])
        assert w.flush(10)
        w.submit("t", [b"e"], [None])
        assert w.flush(10)
        assert [r.value for r in log.read("t", 0, 0, 100)] == [b"a", b"b", b"c", b"d", b"e"]
        assert (w.dropped, w.pending, w.appended) == (1, 0, 5)
        w.close()
