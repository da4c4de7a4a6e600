"""Calibration: the Open Bandit click rate measured from the files, and the churn statistics."""

from __future__ import annotations

import math

import pytest

from freshrec.errors import DataError
from freshrec.sim import SimConfig
from freshrec.sim.calibrate import id_churn, open_bandit_ctr, policy_ctr


def test_open_bandit_random_policy_ctr(data_dir):
    ob = open_bandit_ctr(data_dir)
    assert ob["all"]["impressions"] == 10_000 and ob["all"]["clicks"] == 38
    assert ob["men"]["ctr"] == pytest.approx(0.0046) and ob["women"]["ctr"] == pytest.approx(0.0046)
    assert set(ob["all"]["ctr_by_position"]) == {1, 2, 3}
    pooled = ob["pooled"]
    # the default random_ctr lies inside the pooled 95% Wilson interval of the real logs
    n, p, z = pooled["impressions"], pooled["ctr"], 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert centre - half < SimConfig().random_ctr < centre + half


def test_missing_or_broken_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_bandit_ctr(tmp_path)
    for name in ("all", "men", "women"):
        d = tmp_path / "open-bandit" / "random" / name
        d.mkdir(parents=True)
        (d / f"{name}.csv").write_text(",timestamp,item_id\n0,2019,3\n")
    with pytest.raises(DataError, match="missing column"):
        open_bandit_ctr(tmp_path)


def test_churn_statistics_of_a_small_run():
    cfg = SimConfig(n_users=500, sessions_per_user_per_day=100, items_per_hour=1000, n_sellers=50, seed=2)
    stats, events = policy_ctr(cfg, hours=1.0)
    churn = id_churn(events, cfg.start_time, hours=1.0)
    assert stats["impressions"] > 10_000 and 0 < stats["ctr"] < 0.02
    assert abs(churn["items_listed_per_hour"] / cfg.items_per_hour - 1) < 0.1
    assert 0 < churn["item_ids_shown_once_share"] <= churn["item_ids_shown_at_most_5_share"] <= 1
