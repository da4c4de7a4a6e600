"""filter-expiry: filtering and expiry shrink the tables as they should on a small replay, the knee
is chosen by its rule, and the --quick form runs end to end (MovieLens-100K)."""

from __future__ import annotations

import pytest

from freshrec.data import movielens_spec
from freshrec.experiments import build_config, run_experiment
from freshrec.experiments._common import open_dataset
from freshrec.experiments.filter_expiry import FilterExpiryConfig, replay


def test_replay_rows_follow_min_count_and_ttl(data_dir):
    data, _ = open_dataset(data_dir / "ml-100k", spec=movielens_spec())
    batches = list(data.slice(0, 8192).batches(512))
    cfg = FilterExpiryConfig(model={"hidden": [16]}, dim=8)
    users_items = len(set(data.slice(0, 8192).columns["user_id"].tolist())) + len(
        set(data.slice(0, 8192).columns["item_id"].tolist())
    )
    plain = replay(data.spec, batches, cfg, seed=0, min_count=1, ttl=None)
    assert plain["rows_final"] == plain["admitted"] == users_items and plain["expired"] == 0
    filtered = replay(data.spec, batches, cfg, seed=0, min_count=5, ttl=None)
    assert filtered["rows_final"] < plain["rows_final"] and filtered["rows_mean"] < plain["rows_mean"]
    expiring = replay(data.spec, batches, cfg, seed=0, min_count=1, ttl=3600.0)
    assert expiring["expired"] > 0 and expiring["rows_final"] == expiring["admitted"] - expiring["expired"]
    assert 0.5 < plain["auc"] < 0.8


@pytest.mark.slow  # ~17 s alone on 2 cores
def test_quick_form(data_dir, tmp_path):
    cfg = build_config("filter-expiry", quick=True, data=data_dir / "ml-100k")
    res = run_experiment("filter-expiry", cfg, tmp_path)
    assert (tmp_path / "filter_expiry.png").exists()
    rows = {(r["min_count"], r["ttl_seconds"] is None): r for r in res.summary}
    assert len(rows) == 4
    base = rows[(1, True)]
    assert base["rows_vs_baseline"] == 1.0 and base["delta_auc"] == 0.0
    assert rows[(3, True)]["rows_mean_mean"] < base["rows_mean_mean"]
    assert rows[(1, False)]["rows_final_mean"] < base["rows_final_mean"]
    knees = [r for r in res.summary if r["knee"]]
    assert len(knees) == 1
    eligible = [r for r in res.summary if r["auc_mean"] >= base["auc_mean"] - cfg.knee_tolerance]
    assert knees[0]["rows_mean_mean"] == min(r["rows_mean_mean"] for r in eligible)


def test_simulator_replay_shrinks_the_tables(tmp_path):
    sim = {
        "world": {"n_users": 2000, "new_users_per_hour": 40.0, "items_per_hour": 200.0, "start_time": 72_000.0},
        "hours": 0.5,
        "window_s": 120.0,
        "negative_rate": 0.2,
    }
    cfg = FilterExpiryConfig.from_dict(
        {"data": "sim", "sim": sim, "seeds": 1, "min_counts": [1, 3], "ttl_fractions": [0.1],
         "model": {"hidden": [16]}, "dim": 8, "batch_size": 128}
    )  # fmt: skip
    res = run_experiment("filter-expiry", cfg, tmp_path)
    rows = {(r["min_count"], r["ttl"]): r for r in res.summary}
    base, ttl, filtered = rows[(1, "none")], rows[(1, "3 min")], rows[(3, "none")]
    assert ttl["rows_final_mean"] < base["rows_final_mean"] and ttl["expired_mean"] > 0
    assert filtered["rows_mean_mean"] < base["rows_mean_mean"]
    # the joiner kept a fifth of the negatives: predictions carry log(0.2), so they are calibrated
    # against the stream weighted back to every impression (not ~4x too high)
    cal = [r["calibration"] for r in res.runs]
    assert all(0.5 < c < 2.0 for c in cal), cal
    assert "span 30 min" in res.title
    assert any(n.startswith("ceiling:") for n in res.notes) and "simulator" in res.notes[0]
