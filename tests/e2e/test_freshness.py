"""End to end, as a client sees it: the real online trainer and the real server as processes;
events posted over HTTP change the score of the affected user and item within seconds."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from freshrec.demo.procs import Child, wait_for, wait_for_port
from freshrec.online import OnlineConfig, live_commerce_spec
from freshrec.serve import ServeConfig
from freshrec.stream import encode_json, open_log

pytestmark = pytest.mark.slow

USER, ITEM = 4242, "it-fresh-1"
USER_FEATURES = {"segment": 1, "age_bucket": 2}
ITEM_FEATURES = {"category": 3, "seller_id": "s7", "price_bucket": 4, "format": "auction", "price": 25.0}
CONTEXT = {"hour": 20, "device": "ios"}


def _impression(i: int, t: float) -> dict:
    return {"kind": "impression", "event_id": f"e-imp-{i}", "request_id": f"r-{i}", "event_time": t,
            "user_id": USER, "item_id": ITEM, "position": 0, "user_features": USER_FEATURES,
            "item_features": ITEM_FEATURES, "context": CONTEXT}  # fmt: skip


def _click(i: int, t: float) -> dict:
    return {"kind": "action", "event_id": f"e-clk-{i}", "request_id": f"r-{i}", "event_time": t + 2.0,
            "user_id": USER, "item_id": ITEM, "type": "click"}  # fmt: skip


def _score(client: httpx.Client) -> float:
    body = {"user_id": USER, "user_features": USER_FEATURES, "context": CONTEXT,
            "candidates": [{"item_id": ITEM, "features": ITEM_FEATURES}]}  # fmt: skip
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    return r.json()["scores"][0]


def test_posted_actions_reach_serving_within_seconds(tmp_path):
    run = tmp_path / "run"
    online = OnlineConfig.from_dict({
        "run_dir": str(run),
        "spec": live_commerce_spec().model_dump(mode="json"),
        "joiner": {"labels": ["click", "purchase"], "window_s": 60.0, "allowed_lateness_s": 5.0,
                   "checkpoint_interval_s": 5.0},
        "rank_model": {"type": "deepfm", "hidden": [16]},
        "retrieval": False,
        "train": {"batch_size": 64, "dense_lr": 0.01},
        "sync": {"sparse_sync_interval": 0.5, "dense_sync_interval": 0.5, "snapshot_interval": 30.0},
        "max_batch_wait_s": 0.3,
    })  # fmt: skip
    log = open_log(online.log)
    for topic in ("impressions", "actions", "items"):
        log.create_topic(topic, 1)
    log.close()
    (run / "online.json").write_text(json.dumps(online.model_dump(mode="json")))
    port_file = run / "server.port"
    serve = ServeConfig.from_dict({
        "port": 0, "port_file": str(port_file), "log": online.log.model_dump(mode="json"), "tail_items": False,
        "arms": [{"name": "live", "sync": {"snapshot_dir": str(online.sync.snapshot_dir), "retrieval_model": None}}],
    })  # fmt: skip
    (run / "serve.json").write_text(json.dumps({**serve.model_dump(mode="json"), "api_key": None}))
    children: list[Child] = []
    try:
        children.append(
            Child("trainer", ["-m", "freshrec.demo.trainer", str(run / "online.json")], run / "trainer.log")
        )
        wait_for("a snapshot", lambda: (online.sync.snapshot_dir / "rank" / "LATEST").is_file(), 120, children)
        children.append(Child("server", ["-m", "freshrec.cli", "serve", "--config", str(run / "serve.json")],
                              run / "server.log"))  # fmt: skip
        client = httpx.Client(base_url=f"http://127.0.0.1:{wait_for_port(port_file, 120, children)}", timeout=30)
        wait_for("the server", lambda: client.get("/v1/healthz").status_code == 200, 120, children)
        before = _score(client)
        version_before = client.get("/v1/model").json()["arms"][0]["rank"]["sparse_version"]
        events = [e for i in range(4) for e in (_impression(i, 1000.0 + i), _click(i, 1000.0 + i))]
        t0 = time.monotonic()
        r = client.post("/v1/events", content=encode_json_list(events), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        changed_after = rows_after = None
        while time.monotonic() - t0 < 30 and (changed_after is None or rows_after is None):
            if changed_after is None and abs(_score(client) - before) > 1e-6:
                changed_after = time.monotonic() - t0
            tables = client.get("/v1/model").json()["arms"][0]["rank"]["tables"]
            if rows_after is None and tables["item_id"]["rows"] >= 1 and tables["user_id"]["rows"] >= 1:
                rows_after = time.monotonic() - t0  # admitted at their 2nd occurrence, trained, synced
            time.sleep(0.1)
        assert changed_after is not None, "the score never moved"
        assert rows_after is not None, "the user's and item's rows never reached serving"
        # batch wait 0.3 s + sparse sync 0.5 s + polling: seconds, with slack for a loaded CI machine
        assert changed_after < 10.0 and rows_after < 10.0, (changed_after, rows_after)
        assert client.get("/v1/model").json()["arms"][0]["rank"]["sparse_version"] > version_before
    finally:
        for c in reversed(children):
            c.stop()


def encode_json_list(events: list[dict]) -> bytes:
    """JSON for /v1/events, validated through the schema first (a typo here would be a 422)."""
    from freshrec.stream import decode_json_many

    decoded, bad = decode_json_many(json.dumps(events).encode())
    assert not bad, bad
    return encode_json(decoded)
