"""ServeConfig: the API key is required off localhost, read from the environment, arms unique."""

from __future__ import annotations

import pytest

from freshrec.config import load_config
from freshrec.errors import ConfigError
from freshrec.serve import ServeConfig
from freshrec.serve.config import is_loopback

ARM = {"name": "a", "model_dir": "m"}


def test_localhost_may_run_without_a_key(monkeypatch):
    monkeypatch.delenv("FRESHREC_API_KEY", raising=False)
    cfg = ServeConfig.from_dict({"arms": [ARM]})
    assert cfg.api_key is None and cfg.host == "127.0.0.1"


def test_a_public_host_needs_a_key(monkeypatch):
    monkeypatch.delenv("FRESHREC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"api_key is required when host '0\.0\.0\.0'"):
        ServeConfig.from_dict({"host": "0.0.0.0", "arms": [ARM]})
    assert ServeConfig.from_dict({"host": "0.0.0.0", "api_key": "k", "arms": [ARM]}).api_key is not None


def test_the_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FRESHREC_API_KEY", "from-env")
    cfg = ServeConfig.from_dict({"host": "10.0.0.5", "arms": [ARM]})
    assert cfg.api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(cfg)  # a secret never prints


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"arms": []}, "arms"),
        ({"arms": [ARM, ARM]}, "arm names must be unique"),
        ({"arms": [{**ARM, "weight": 0}]}, "weight"),
        ({"arms": [{**ARM, "name": "a b"}]}, "name"),
        ({"arms": [ARM], "topics": {"items": "actions"}}, "must differ"),
        ({"arms": [ARM], "max_k": 0}, "max_k"),
        ({"arms": [ARM], "api_key": ""}, "must not be empty"),
        ({"arms": [ARM], "typo": 1}, "typo"),
        ({"arms": [{"name": "s", "sync": {"snapshot_dir": "x", "topic_prefix": "prod sync"}}]}, "topic_prefix"),
    ],
)
def test_bad_configs_name_the_field(data, match, monkeypatch):
    monkeypatch.delenv("FRESHREC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=match):
        ServeConfig.from_dict(data)


def test_loads_from_toml_with_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("FRESHREC_API_KEY", raising=False)
    f = tmp_path / "serve.toml"
    f.write_text(
        'port = 9000\n[[arms]]\nname = "control"\nmodel_dir = "runs/rank"\nweight = 3\n'
        '[[arms]]\nname = "new"\nmodel_dir = "runs/rank2"\n'
    )
    cfg = load_config(ServeConfig, f, ["port=9100", "max_candidates=50"])
    assert (cfg.port, cfg.max_candidates, [a.name for a in cfg.arms]) == (9100, 50, ["control", "new"])


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.3.2.1", True),
        ("0.0.0.0", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop
