"""End to end: ``freshrec serve`` in its own process, talked to over HTTP with httpx; SIGTERM
stops it cleanly with the impressions it logged on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from freshrec.stream import decode, open_log

ROOT = Path(__file__).resolve().parents[2]


def item(i):
    return {"category": i % 10, "seller_id": f"s{i}", "tags": ["t1"], "price": 3.0 + i}


@pytest.fixture
def server_process(model_dirs, tmp_path):
    port_file = tmp_path / "server.port"  # port 0: no port to race other processes for
    cfg = tmp_path / "serve.toml"
    cfg.write_text(
        f'port = 0\nport_file = "{port_file}"\napi_key = "k"\n[log]\npath = "{tmp_path / "log"}"\n'
        f'[[arms]]\nname = "main"\nmodel_dir = "{model_dirs["rank"]}"\nretrieval_dir = "{model_dirs["retrieve"]}"\n'
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("FRESHREC_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "freshrec.cli", "serve", "--config", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 90
    while True:
        port = int(port_file.read_text()) if port_file.exists() else 0
        if port:
            url = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{url}/v1/healthz", timeout=5).status_code == 200  # bound = serving
            break
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.communicate()[0][-3000:]}")
        time.sleep(0.1)
    try:
        yield proc, url, tmp_path / "log"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serves_over_http_and_stops_cleanly(server_process):
    proc, url, log_path = server_process
    with httpx.Client(base_url=url, timeout=10) as c:
        events = [
            {
                "kind": "item",
                "event_id": i,
                "event_time": 10.0 + i,
                "item_id": f"it{i}",
                "status": "listed",
                "features": item(i),
            }
            for i in range(20)
        ]
        assert c.post("/v1/events", json=events).status_code == 401
        assert c.post("/v1/events", json=events, headers={"X-API-Key": "k"}).json()["items"] == 20
        ctx = {"user_features": {"segment": 2}, "context": {"hour": 1, "device": "ios"}}
        r = c.post("/v1/rank", json={"user_id": 1, **ctx, "candidates": [{"item_id": "it1", "features": item(1)}]})
        assert r.status_code == 200 and 0 < r.json()["scores"][0] < 1
        deadline = time.time() + 10  # item vectors are rebuilt within item_refresh_s (1 s)
        while c.get("/v1/model").json()["arms"][0]["item_vectors"]["items"] < 20 and time.time() < deadline:
            time.sleep(0.05)
        r = c.post("/v1/recommend", json={"user_id": 1, **ctx, "k": 4})
        assert r.status_code == 200 and len(r.json()["items"]) == 4
        rid = r.json()["request_id"]
        assert "freshrec_serve_live_items 20.0" in c.get("/metrics").text
        assert c.get("/docs").status_code == 200
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully (lifespan: the writer flushes, the log closes), then re-raises
    # the signal it caught, so the exit status is the signal's
    assert proc.wait(30) in (0, -signal.SIGTERM)
    out = proc.stdout.read()
    assert f"listening on {url} " in out  # the port 0 became, for a human or a script
    assert f"impressions and events go to the embedded log {log_path}" in out  # where its data lands
    assert not (log_path.parent / "server.port").exists()  # removed at shutdown: nothing listens there
    with open_log(path=log_path) as log:
        imps = [decode(rec.value) for rec in log.read("impressions", 0, 0, 1000)]
    assert sorted(e.position for e in imps if e.request_id == rid) == [0, 1, 2, 3]


def test_bad_configuration_exits_with_a_one_line_reason(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from freshrec.cli import app

    monkeypatch.delenv("FRESHREC_API_KEY", raising=False)
    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--model-dir", str(tmp_path), "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "api_key is required" in r.output
    r = runner.invoke(app, ["serve", "--model-dir", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "is not a model directory" in r.output


def test_port_zero_writes_the_bound_port_over_a_stale_port_file(model_dirs, tmp_path):
    from freshrec.serve import BackgroundServer, ServeConfig, load_states

    port_file = tmp_path / "server.port"
    port_file.write_text("1\n")  # left by an earlier run: must not survive this start
    config = ServeConfig.from_dict(
        {
            "port": 0,
            "port_file": str(port_file),
            "arms": [{"name": "a", "model_dir": str(model_dirs["rank"])}],
            "log": {"path": str(tmp_path / "log")},
            "tail_items": False,
        }
    )
    server = BackgroundServer(config, load_states(config))
    assert not port_file.exists()  # gone before the socket is bound
    with server as srv:
        port = int(port_file.read_text())
        assert port > 1 and srv.url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{srv.url}/v1/healthz", timeout=10).status_code == 200
    assert not port_file.exists()  # removed when the server stopped


def test_serve_removes_a_stale_port_file_before_loading_the_models(tmp_path, monkeypatch):
    """A crashed run's port file must be gone while the models load (a supervisor reading it
    then would get a dead port)."""
    from freshrec.serve import ServeConfig, server

    port_file = tmp_path / "server.port"
    port_file.write_text("8000\n")
    seen = []

    def loading(config, registry):
        seen.append(port_file.exists())
        raise RuntimeError("stop here")

    monkeypatch.setattr(server, "load_arms", loading)
    config = ServeConfig.from_dict({"port": 0, "port_file": str(port_file), "log": {"path": str(tmp_path / "log")},
                                    "arms": [{"name": "a", "model_dir": str(tmp_path)}]})  # fmt: skip
    with pytest.raises(RuntimeError, match="stop here"):
        server.serve(config)
    assert seen == [False]


def test_a_port_file_that_cannot_be_written_is_refused_before_serving(model_dirs, tmp_path):
    from freshrec.errors import ConfigError
    from freshrec.serve import BackgroundServer, ServeConfig, load_states

    (tmp_path / "a_file").write_text("")
    config = ServeConfig.from_dict(
        {
            "port": 0,
            "port_file": str(tmp_path / "a_file" / "server.port"),  # its folder is a file
            "arms": [{"name": "a", "model_dir": str(model_dirs["rank"])}],
            "log": {"path": str(tmp_path / "log")},
            "tail_items": False,
        }
    )
    with pytest.raises(ConfigError, match=r"port_file .*cannot write there"):
        BackgroundServer(config, load_states(config))
