"""A demo that cannot run says so before it writes anything: a bad override of a child's config,
a port already taken (it used to fail after the warm start, leaving ~50 MB of run directory)."""

from __future__ import annotations

import socket

import pytest

from freshrec.demo import DemoConfig, run_demo
from freshrec.errors import ConfigError, StateError


def test_bad_child_override_writes_nothing(tmp_path):
    cfg = DemoConfig.from_dict({"runs_dir": str(tmp_path / "runs"), "online": ["joiner.emit=bogus"]})
    with pytest.raises(ConfigError, match="emit"):
        run_demo(cfg)
    assert not (tmp_path / "runs").exists()


def test_a_taken_port_is_refused_before_the_warm_start(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = DemoConfig.from_dict({"runs_dir": str(tmp_path / "runs"), "port": port})
        with pytest.raises(StateError, match=f"port {port} is in use"):
            run_demo(cfg)
        # the port the server will really bind: a serve override wins over --port
        cfg = DemoConfig.from_dict({"runs_dir": str(tmp_path / "runs"), "port": 0, "serve": [f"port={port}"]})
        with pytest.raises(StateError, match=f"port {port} is in use"):
            run_demo(cfg)
    assert not (tmp_path / "runs").exists()
