"""SimConfig: documented defaults load, bad values are rejected with the field named."""

from __future__ import annotations

import pytest

from freshrec.errors import ConfigError
from freshrec.sim import SimConfig


def test_defaults_are_valid_and_plausible():
    cfg = SimConfig()
    assert cfg.random_ctr == 0.004  # Open Bandit's random-policy CTR, docs/simulator.md
    assert 0.1 < cfg.session_rate < 100  # sessions per event second


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"n_users": 0}, "n_users"),
        ({"items_per_hour": -1}, "items_per_hour"),
        ({"items_per_hour": float("inf")}, "items_per_hour"),
        ({"item_lifetime_median": float("nan")}, "item_lifetime_median"),
        ({"random_ctr": 0.7}, "random_ctr"),
        ({"slate_size": 0}, "slate_size"),
        ({"policy": "greedy"}, "policy"),
        ({"diurnal_amplitude": 1.0}, "diurnal_amplitude"),
        ({"seed": -1}, "seed"),
        ({"n_user": 5}, "n_user"),  # a typo is an error, not ignored
        ({"click_delay_median": 4000.0}, "max_action_delay"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        SimConfig.from_dict(data)


def test_loads_from_toml_with_overrides(tmp_path):
    path = tmp_path / "sim.toml"
    path.write_text('seed = 7\nitems_per_hour = 5000\npolicy = "popularity"\n')
    cfg = SimConfig.from_file(path, overrides=["n_users=1234"])
    assert (cfg.seed, cfg.items_per_hour, cfg.policy, cfg.n_users) == (7, 5000, "popularity", 1234)
    path.write_text("seed = 7\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        SimConfig.from_file(path)
