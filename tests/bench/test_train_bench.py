"""``freshrec bench train --quick`` runs end to end: freshrec, the torch baseline and the RayPS
side measured in one run, and the Ray instance the RayPS side started is gone afterwards."""

from __future__ import annotations

import sys

import pytest
import ray

from freshrec.bench import train as bench_train

pytestmark = pytest.mark.slow


def test_quick_run_reports_every_side_and_leaves_no_ray_behind():
    assert not ray.is_initialized()
    report = bench_train.run(quick=True)
    for name in ("train_examples_per_s", "torch_baseline_examples_per_s", "ray_ps_train_examples_per_s"):
        assert report.figures[name] > 0, name
    assert set(report.ratios) == {"train_vs_torch_baseline", "ray_ps_vs_local_ps"}
    assert 0 < report.figures["ray_ps_pull_push_share"] < 1
    assert not ray.is_initialized()


def test_without_the_ray_extra_the_ray_side_is_skipped_with_a_note(monkeypatch):
    from freshrec.bench._report import BenchReport

    monkeypatch.setitem(sys.modules, "ray", None)  # import fails as when not installed
    report = BenchReport("train", params={})
    assert bench_train._ray_trainer(bench_train._spec(), report) is None
    assert report.notes and report.notes[0].startswith("ray: skipped") and "freshrec[ray]" in report.notes[0]
