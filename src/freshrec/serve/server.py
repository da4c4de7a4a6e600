"""Run a replica: load every arm's models from their directories, build the app, serve it.

One process, one event loop, a thread pool for requests (torch releases the GIL, so two
requests use two cores); model loading, kernel compilation and a synthetic pass over the whole
request path happen before the socket opens (uvicorn runs the app's startup first).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from freshrec.errors import StateError
from freshrec.ps import PSConfig
from freshrec.serve.app import create_app
from freshrec.serve.config import ServeConfig
from freshrec.serve.replica import Subscriber
from freshrec.stream import EventLog
from freshrec.sync import ServedModel, ServingState

__all__ = ["BackgroundServer", "load_states", "serve"]


def load_states(config: ServeConfig) -> dict[str, ServingState]:
    """Every arm's ranking (and retrieval) model, from the config's model directories. Arms that
    name the same directory share one loaded model."""
    cache: dict[Path, ServedModel] = {}
    ps_config = PSConfig(num_shards=1, threads=config.ps_threads)

    def load(path: Path, name: str) -> ServedModel:
        key = path.resolve()
        if key not in cache:
            cache[key] = ServedModel.from_model_dir(path, name=name, ps_config=ps_config)
        return cache[key]

    return {
        arm.name: ServingState(
            rank=load(arm.model_dir, "rank"),
            retrieve=load(arm.retrieval_dir, "retrieve") if arm.retrieval_dir is not None else None,
        )
        for arm in config.arms
    }


def _uvicorn_config(app, config: ServeConfig) -> uvicorn.Config:  # type: ignore[no-untyped-def]
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def serve(
    config: ServeConfig,
    *,
    states: dict[str, ServingState] | None = None,
    subscribers: Sequence[Subscriber] | None = None,
) -> None:
    """Load the models (unless given) and serve until interrupted (Ctrl-C / SIGTERM)."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    app = create_app(config, states if states is not None else load_states(config), subscribers=subscribers)
    uvicorn.Server(_uvicorn_config(app, config)).run()


class BackgroundServer:
    """A replica served from a thread of this process (benchmarks, demos, tests):
    ``with BackgroundServer(config, states) as srv: httpx.get(srv.url + "/v1/healthz")``."""

    def __init__(
        self,
        config: ServeConfig,
        states: dict[str, ServingState],
        *,
        log_: EventLog | None = None,
        subscribers: Sequence[Subscriber] | None = None,
    ) -> None:
        self.app = create_app(config, states, log_=log_, subscribers=subscribers)
        self.server = uvicorn.Server(_uvicorn_config(self.app, config))
        self._thread = threading.Thread(target=self.server.run, name="freshrec-uvicorn", daemon=True)

    @property
    def replica(self):  # type: ignore[no-untyped-def]
        return self.app.state.replica

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 120.0) -> BackgroundServer:
        self._thread.start()
        waited = 0.0
        while not self.server.started:
            if not self._thread.is_alive():
                raise StateError("the server thread stopped during startup; see its log")
            self._thread.join(0.02)
            waited += 0.02
            if waited > timeout:
                raise StateError(f"the server did not start within {timeout} s")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
