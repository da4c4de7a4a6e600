"""The impression writer appends what it is handed, in batches, and refuses work past its cap."""

from __future__ import annotations

import pytest

from freshrec.errors import CapacityError, StateError
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
