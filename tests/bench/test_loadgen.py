"""The load generator's raw HTTP client talks to a real server and keeps its schedule."""

from __future__ import annotations

import asyncio

import numpy as np

from freshrec.bench._loadgen import run_load
from freshrec.serve import BackgroundServer, ServeConfig, load_states

from ..serve.conftest import model_dirs  # noqa: F401 - the fixture (trained once per session)


def test_open_loop_against_a_real_server(model_dirs, tmp_path):  # noqa: F811
    config = ServeConfig.from_dict(
        {
            "port": 0,
            "arms": [{"name": "a", "model_dir": str(model_dirs["rank"])}],
            "log": {"path": str(tmp_path / "log")},
            "tail_items": False,
        }
    )
    good = (
        b'{"user_id": 1, "user_features": {"segment": 1}, "context": {"hour": 2, "device": "ios"}, '
        b'"candidates": [{"item_id": "a", "features": {"category": 1, "seller_id": "s", "price": 1.0}}]}'
    )
    bad = b'{"user_id": 1}'
    with BackgroundServer(config, load_states(config)) as srv:
        for client in ("raw", "httpx"):
            # a low rate: client and server share this process (and the GIL), and at 100/s a
            # loaded CI machine built a backlog near the latency bound; the test is about the
            # schedule and the bookkeeping, not speed
            out = asyncio.run(run_load(f"{srv.url}/v1/rank", [good, bad], rate=40, seconds=0.5, client=client, warm=2))
            assert out["status"] == [200, 422] * 10, client
            lat = np.array(out["latency_s"])
            assert (lat > 0).all() and np.median(lat) < 1.0
