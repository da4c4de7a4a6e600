"""RateLimitedLog: every occurrence counted, one line per interval naming the ones held back."""

from __future__ import annotations

import logging

from freshrec._ratelimit import RateLimitedLog


def test_one_line_per_interval_counts_everything(caplog, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("freshrec._ratelimit.time.monotonic", lambda: clock[0])
    limited = RateLimitedLog(logging.getLogger("t"), "arm 'a': ", every_s=60.0)
    with caplog.at_level("WARNING", logger="t"):
        assert limited.warn("item x left out")
        assert not limited.warn("item y left out") and not limited.warn("items z left out", n=3)
        clock[0] += 60.0
        assert limited.warn("item w left out")
    assert limited.count == 6
    assert [r.getMessage() for r in caplog.records] == [
        "arm 'a': item x left out",
        "arm 'a': item w left out (4 more since the last such warning)",
    ]
