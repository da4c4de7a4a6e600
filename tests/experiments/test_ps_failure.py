"""ps-failure: the windowed AUC and the recovery rule against plain references, the failure run is
the baseline until the restore, and the --quick form end to end (MovieLens-100K)."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.errors import ConfigError
from freshrec.experiments import build_config, run_experiment
from freshrec.experiments.ps_failure import PSFailureConfig, recovery_step, run, window_auc
from freshrec.train import weighted_auc


def test_window_auc_against_a_plain_loop():
    rng = np.random.default_rng(0)
    probs = [rng.random(n) for n in (5, 7, 3, 9, 4)]
    labels = [(rng.random(p.size) < 0.4).astype(np.float32) for p in probs]
    got = window_auc(probs, labels, 10)
    p, y = np.concatenate(probs), np.concatenate(labels)
    ends = np.cumsum([x.size for x in probs])
    want = [weighted_auc(p[max(0, e - 10) : e], y[max(0, e - 10) : e]) for e in ends]
    np.testing.assert_allclose(got, want)


def test_recovery_step():
    gap = np.array([0, 0, 0.05, 0.03, 0.001, 0.004, 0.001, 0.0, 0.001, 0.0])
    assert recovery_step(gap, 2, tolerance=0.002, hold=3) == 6  # 4 is followed by a relapse at 5
    assert recovery_step(gap, 2, tolerance=0.002, hold=1) == 4
    assert recovery_step(gap, 2, tolerance=0.01, hold=2) == 4
    assert recovery_step(np.array([0.1, 0.1, 0.1]), 0, tolerance=0.002, hold=2) is None
    assert recovery_step(np.array([0.1, 0.1, 0.001]), 0, tolerance=0.002, hold=5) == 2  # the stream ends


def test_config_checks(data_dir):
    with pytest.raises(ConfigError, match="failed_shard"):
        PSFailureConfig.from_dict({"num_shards": [2, 4], "failed_shard": 2})
    cfg = PSFailureConfig(data=str(data_dir / "ml-100k"), seeds=1, num_shards=[2], snapshot_age_steps=[300])
    with pytest.raises(ConfigError, match="before the stream's start"):
        run(cfg)


def test_quick_form(data_dir, tmp_path):
    cfg = build_config("ps-failure", quick=True, data=data_dir / "ml-100k")
    res = run_experiment("ps-failure", cfg, tmp_path)
    assert (tmp_path / "ps_failure.png").exists()
    (run_row,) = res.runs
    assert run_row["pre_failure_identical"]  # same seed, same stream: bit for bit until the restore
    assert run_row["rows_lost"] > 0 and run_row["rows_reverted"] > 0  # 100 steps of ml-100k admit new users
    assert run_row["age_seconds"] > 86400  # 100 steps of 256 ratings span days
    assert 0.0 < run_row["dip"] < 0.1
    gap = res.series["gap_mean"]["N=2, T=100"]
    assert len(gap) == res.series["steps"] and max(abs(g) for g in gap[: res.series["fail_step"]]) == 0.0
    assert any("checked, bit for bit" in n for n in res.notes)
