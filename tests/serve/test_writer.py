"""The impression writer appends what it is handed, in batches, and refuses work past its cap."""

from __future__ import annotations

import pytest

from freshrec.errors import CapacityError, StateError, TooLargeError
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
