"""The bench reports: headline pairs from one configuration, interleaved timing, strict JSON, a
phase's own peak RSS."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from freshrec.bench._report import BenchReport, peak_rss_bytes, reset_peak_rss, time_each, time_interleaved
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


def test_item_by_item_timing_rotates_who_goes_first_and_gives_each_side_each_item_once():
    calls: list[tuple[str, int]] = []
    sides = {name: (lambda b, name=name: calls.append((name, b))) for name in "xyz"}
    spent = time_each(sides, [0, 1, 2])
    assert calls == [("x", 0), ("y", 0), ("z", 0), ("y", 1), ("z", 1), ("x", 1), ("z", 2), ("x", 2), ("y", 2)]
    assert {k: len(v) for k, v in spent.items()} == {"x": 3, "y": 3, "z": 3}


def test_a_figure_that_could_not_be_measured_is_null_in_strict_json(tmp_path):
    report = BenchReport("serve")
    report.figure("freshness_p99_s", float("nan"))
    report.ratio("x_vs_y", 2.0)
    text = report.write_json(tmp_path / "r.json").read_text()
    out = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON token {c}"))
    assert out["figures"]["freshness_p99_s"] is None and out["ratios"]["x_vs_y"] == 2.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")
def test_a_phase_reports_its_own_peak_rss_not_an_earlier_ones():
    big = np.ones(200 << 20, np.uint8)  # 200 MiB resident, then freed
    before = peak_rss_bytes()
    del big
    assert reset_peak_rss()
    assert peak_rss_bytes() < before - (150 << 20)
