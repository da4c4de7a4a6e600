"""The table bench's report: headline pairs from one configuration, interleaved timing."""

from __future__ import annotations

import pytest

from freshrec.bench._report import BenchReport, time_interleaved
from freshrec.bench.table import PAIRS, TARGETS, _report_ratios


def _per() -> dict[str, dict[str, float]]:
    """Two configurations; ``a`` is the worst for every ratio but the growing find-or-insert,
    whose worst is ``b``: the dict's headline must still come from ``a``."""
    a = {name: 10.0 for pair in PAIRS.values() for name in pair}
    b = dict(a)
    for fig, _ in PAIRS.values():
        a[fig] = 5.0  # ratio 0.5
        b[fig] = 8.0  # ratio 0.8
    a["find_or_insert_growing_keys_per_s"] = 9.0
    b["find_or_insert_growing_keys_per_s"] = 1.0
    b["dict_find_or_insert_keys_per_s"] = 2.0  # b's growing ratio 0.5 < a's 0.9
    return {"a": a, "b": b}


def test_a_headline_pair_comes_from_one_configuration():
    report = BenchReport("table")
    _report_ratios(report, _per())
    f, r = report.figures, report.ratios
    assert r["find_or_insert_vs_dict"] == pytest.approx(0.5)
    assert r["find_or_insert_growing_vs_dict"] == pytest.approx(0.5)  # b's
    assert report.params["headline_config"]["find_or_insert_growing_vs_dict"] == "b"
    assert report.params["headline_config"]["find_or_insert_vs_dict"] == "a"
    # the target's headline pair is a's: figure / baseline is the headline ratio
    assert f["dict_find_or_insert_keys_per_s"] == 10.0
    assert r["find_or_insert_vs_dict[b]"] == pytest.approx(4.0)
    for ratio, (fig, base) in list(PAIRS.items())[:TARGETS]:
        assert f[fig] / f[base] == pytest.approx(r[ratio])
    # the other ratios have no headline figures that could pair with another config's baseline
    assert "find_or_insert_growing_keys_per_s" not in f


def test_interleaved_timing_alternates_who_goes_first():
    calls: list[str] = []
    t = time_interleaved({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, 4)
    assert calls == ["x", "y", "y", "x", "x", "y", "y", "x"]
    assert set(t) == {"x", "y"} and all(v >= 0 for v in t.values())
