"""The joiner benchmark's workload and baseline on a tiny stream (the benchmark itself is a script)."""

from __future__ import annotations

import msgspec

from freshrec.bench.joiner import TOPICS, _baseline, _stream
from freshrec.stream import open_log


def test_stream_is_cut_at_the_nth_impression_in_order():
    batches, n_imp, n_act = _stream(3000, seed=1)
    assert n_imp == 3000 and 0 < n_act < 300
    kinds = {t: 0 for t, _ in TOPICS}
    last = -1.0
    for topic, values, keys in batches:
        assert len(values) == len(keys)
        kinds[topic] += len(values)
        times = [msgspec.msgpack.decode(v)["event_time"] for v in values]
        assert times == sorted(times) and times[0] >= last - 1800  # each batch in order
    assert kinds == {"impressions": n_imp, "actions": n_act}


def test_baseline_appends_and_reads_everything(tmp_path):
    batches, n_imp, n_act = _stream(500, seed=2)
    with open_log(path=tmp_path / "log") as log:
        figures = _baseline(log, batches, n_imp + n_act, "-t")
        assert sum(log.end_offset("impressions-t", p) for p in range(2)) == n_imp
    assert set(figures) == {
        "log_append_events_per_s",
        "log_read_events_per_s",
        "log_append_read_events_per_s",
        "log_read_records_events_per_s",
        "log_append_read_records_events_per_s",
    }
    assert all(v > 0 for v in figures.values())
