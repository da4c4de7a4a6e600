"""ab: the closed loop routes each user to one arm, arms sync at their own event-time cadence, the
clicks counted per arm are the simulator's and match the ground truth's expectation, a run is
repeatable bit for bit, and the --quick form runs end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from freshrec.errors import ConfigError
from freshrec.experiments import build_config, run_experiment
from freshrec.experiments.ab import ABConfig
from freshrec.experiments.closed_loop import reference_run, run_world
from freshrec.experiments.sim_stream import experiment_world
from freshrec.online import live_commerce_two_tower
from freshrec.serve.arms import ArmRouter


def tiny(**over) -> ABConfig:
    model = live_commerce_two_tower(out_dim=8).model_dump() | {"hidden": [16]}
    base = {
        "seeds": 1,
        "lifetimes": [1200.0],
        "warmup_s": 900.0,
        "eval_s": 900.0,
        # the evening peak (traffic 3x the night's): enough clicks in a quarter hour
        "world": {"n_users": 3000, "new_users_per_hour": 60.0, "items_per_hour": 300.0, "start_time": 72_000.0},
        "arms": [
            {"name": "fresh", "sync_every_s": 10.0},
            {"name": "stale", "sync_every_s": 300.0},
            {"name": "batch-only", "sync_every_s": None},
        ],
        "model": model,
        "dim": 8,
        "batch_size": 128,
        "bin_s": 300.0,
    }
    return ABConfig.from_dict(base | over)


@pytest.fixture(scope="module")
def tiny_run():
    cfg = tiny()
    return cfg, run_world(cfg, 1200.0, seed=0)


def test_each_user_has_one_arm_and_arms_sync_at_their_cadence(tiny_run):
    cfg, out = tiny_run
    led = out["ledger"]
    router = ArmRouter([(a.name, 1.0) for a in cfg.arms], seed=0)
    names = [a.name for a in cfg.arms]
    assert len(led.arm) > 100
    assert all(names[a] == router.assign(u) for a, u in zip(led.arm, led.user, strict=True))
    assert set(led.arm) == {0, 1, 2}
    assert out["syncs"] == {"fresh": 90, "stale": 3, "batch-only": 0}  # 900 s of loop / cadence
    assert all(0 < n <= 10 for n in led.shown)  # slate_size 10, and the catalog is never empty
    t = np.asarray(led.time)
    t0 = cfg.world.start_time + cfg.warmup_s
    assert t.min() >= t0 and t.max() < t0 + cfg.eval_s
    age = np.asarray(led.age)
    fresh, batch = age[np.asarray(led.arm) == 0], age[np.asarray(led.arm) == 2]
    assert np.all(np.diff(batch) >= 0) and batch[-1] > 800  # the batch model only ages
    assert np.nanmean(fresh) < 120  # ~ the age of the newest example trained on


def test_clicks_counted_match_the_ground_truth_expectation(tiny_run):
    _, out = tiny_run
    led = out["ledger"]
    clicks, expected = sum(led.clicks.values()), sum(led.expected)
    assert clicks > 50
    assert abs(clicks - expected) < 4 * math.sqrt(expected)  # Poisson-binomial: var <= mean
    assert max(led.clicks) < len(led.arm)  # every click is credited to a request of the loop
    arm = np.asarray(led.arm)
    for a in set(led.arm):  # and to the right arm: each arm's clicks match its own slates' truth
        mine = float(np.asarray(led.expected)[arm == a].sum())
        got = sum(c for serial, c in led.clicks.items() if led.arm[serial] == a)
        assert abs(got - mine) < 4 * math.sqrt(mine) + 1, (a, got, mine)


def test_same_seed_same_run_bit_for_bit(tiny_run):
    cfg, out = tiny_run
    again = run_world(cfg, 1200.0, seed=0)
    assert again["ledger"] == out["ledger"]
    other = run_world(cfg, 1200.0, seed=1)
    assert other["ledger"].user != out["ledger"].user


def test_references_bracket_the_world():
    cfg = tiny()
    random = reference_run(cfg, 1200.0, 0, "random")
    oracle = reference_run(cfg, 1200.0, 0, "oracle")
    assert random["shown"].sum() == oracle["shown"].sum() > 1000  # same world, same requests and slates
    ctr_random = random["clicks"].sum() / random["shown"].sum()
    ctr_oracle = oracle["clicks"].sum() / oracle["shown"].sum()
    assert 0.5 * cfg.world.random_ctr < ctr_random < 1.5 * cfg.world.random_ctr
    assert ctr_oracle > 2 * ctr_random


def test_config_checks():
    cfg = ABConfig.from_dict({"world": {"n_users": 500}})
    assert cfg.world.n_users == 500 and cfg.world.random_ctr == experiment_world().random_ctr  # onto our world
    with pytest.raises(ConfigError, match="data"):
        ABConfig.from_dict({"data": "../shared/data/ml-100k"})
    with pytest.raises(ConfigError, match="distinct"):
        ABConfig.from_dict({"arms": [{"name": "a"}, {"name": "a", "sync_every_s": 5}]})
    with pytest.raises(ConfigError, match="lifetimes"):
        ABConfig.from_dict({"lifetimes": [0]})
    with pytest.raises(ConfigError, match=r"3 significant digits .*'30 min', '30 min'"):
        ABConfig.from_dict({"lifetimes": [1800.0, 1800.5]})  # one label: their results would merge
    w = ABConfig().world_for(900.0, seed=4, policy="oracle")
    live = experiment_world().items_per_hour * experiment_world().item_lifetime_median
    assert (w.seed, w.policy, w.items_per_hour * w.item_lifetime_median) == (4, "oracle", live)


def test_quick_form(tmp_path):
    cfg = build_config("ab", quick=True)
    res = run_experiment("ab", cfg, tmp_path)
    assert (tmp_path / "ab.png").stat().st_size > 1000
    arms = [r["arm"] for r in res.summary]
    assert arms == ["fresh", "batch-only", "random (reference)", "oracle (reference)"]
    rows = {r["arm"]: r for r in res.summary}
    assert rows["batch-only"]["lift_mean"] == 0.0
    assert rows["oracle (reference)"]["ctr_mean"] > rows["random (reference)"]["ctr_mean"]
    for r in res.runs:  # the binomial interval holds the observed rate
        assert r["ctr_lo"] <= r["ctr"] <= r["ctr_hi"]


def test_the_joiner_emit_mode_reaches_the_pipeline(tmp_path):
    """``emit`` is the online pipeline's joiner setting (first_action by default, as the joiner's)."""
    from freshrec.experiments.closed_loop import _online_config

    cfg = tiny(emit="window_close")
    assert _online_config(cfg, 1200.0, 0, tmp_path).joiner.emit == "window_close"
    assert _online_config(tiny(), 1200.0, 0, tmp_path).joiner.emit == "first_action"


def test_an_exploring_arm_gives_its_share_of_slates_to_the_newest_listings():
    """An arm's explore share works as a serving arm's: e * k picks per slate on average, the
    rest of the slate unchanged; the other arms explore nothing."""
    cfg = tiny(arms=[{"name": "fresh", "sync_every_s": 10.0}, {"name": "explore", "sync_every_s": 10.0,
                                                               "explore": 0.3, "explore_pool": 50}])  # fmt: skip
    led = run_world(cfg, 1200.0, seed=0)["ledger"]
    arm, shown, explored = (np.asarray(x) for x in (led.arm, led.shown, led.explored))
    assert explored[arm == 0].sum() == 0
    share = explored[arm == 1].sum() / shown[arm == 1].sum()
    assert abs(share - 0.3) < 0.03, share
