"""Run a replica: load every arm's models from their directories, build the app, serve it.

One process, one event loop, a thread pool for requests (torch releases the GIL, so two
requests use two cores); model loading, kernel compilation and a synthetic pass over the whole
request path happen before the socket opens (uvicorn runs the app's startup first).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from freshrec._io import atomic_write_bytes
from freshrec.errors import ConfigError, StateError
from freshrec.serve.app import create_app
from freshrec.serve.config import ArmConfig, ServeConfig
from freshrec.serve.replica import Subscriber
from freshrec.stream import EventLog, open_log
from freshrec.sync import ServedModel, ServingState
from freshrec.sync.config import SyncConfig
from freshrec.sync.subscriber import Subscriber as SyncSubscriber

__all__ = ["BackgroundServer", "load_arms", "load_states", "serve"]


def load_states(config: ServeConfig) -> dict[str, ServingState]:
    """Every arm's ranking (and retrieval) model, from the config's model directories. Arms that
    name the same directory share one loaded model. Arms fed by sync need :func:`load_arms`."""
    states, subscribers = load_arms(config)
    if subscribers:
        raise StateError("arms with sync need their subscribers: use load_arms(config)")
    return states


def load_arms(
    config: ServeConfig, *, registry: CollectorRegistry | None = None
) -> tuple[dict[str, ServingState], list[SyncSubscriber]]:
    """Every arm's models, and for arms fed by sync one subscriber per model (not started).

    A sync arm loads its models from the newest serving snapshot; each arm gets its own copy, so
    arms can follow the log at different cadences."""
    cache: dict[Path, ServedModel] = {}
    ps_config = config.ps_config()
    logs: dict[str, EventLog] = {}
    subscribers: list[SyncSubscriber] = []

    def load(path: Path, name: str) -> ServedModel:
        key = path.resolve()
        if key not in cache:
            cache[key] = ServedModel.from_model_dir(path, name=name, ps_config=ps_config)
        return cache[key]

    def follow(arm: ArmConfig, model: str) -> ServedModel:
        sync = arm.sync
        assert sync is not None
        sync_config = SyncConfig(snapshot_dir=sync.snapshot_dir, apply_interval=sync.apply_interval, fp16=sync.fp16,
                                 topic_prefix=sync.topic_prefix)  # fmt: skip
        served = ServedModel.from_snapshot(sync_config.model_snapshot_dir(model), name=model, fp16=sync.fp16,
                                           ps_config=ps_config)  # fmt: skip
        log_config = sync.log or config.log
        key = log_config.model_dump_json()
        if key not in logs:
            logs[key] = open_log(log_config)
        subscribers.append(SyncSubscriber(served, logs[key], sync_config, registry=registry,
                                          metrics_label=f"{arm.name}/{model}"))  # fmt: skip
        return served

    states: dict[str, ServingState] = {}
    for arm in config.arms:
        if arm.sync is None:
            assert arm.model_dir is not None
            retrieve = load(arm.retrieval_dir, "retrieve") if arm.retrieval_dir is not None else None
            states[arm.name] = ServingState(rank=load(arm.model_dir, "rank"), retrieve=retrieve)
        else:
            retriever = follow(arm, arm.sync.retrieval_model) if arm.sync.retrieval_model else None
            states[arm.name] = ServingState(rank=follow(arm, arm.sync.rank_model), retrieve=retriever)
    return states, subscribers


def _uvicorn_config(app, config: ServeConfig) -> uvicorn.Config:  # type: ignore[no-untyped-def]
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # keep idle connections longer than clients and load balancers do (60 s is common): a
        # server closing first races a client reusing the connection (seen: 7 failed requests in
        # 8,000 at 200 QPS with uvicorn's 5 s default)
        timeout_keep_alive=75,
    )


def _clear_port_file(port_file: Path | None) -> None:
    """A stale port file (a crashed run's) must not name a port this run never bound: removed
    before anything slow (loading the models) starts."""
    if port_file is not None:
        try:
            port_file.parent.mkdir(parents=True, exist_ok=True)
            port_file.unlink(missing_ok=True)
        except OSError as exc:
            raise ConfigError(f"port_file {port_file}: cannot write there: {exc}") from exc


class _Server(uvicorn.Server):
    """uvicorn's server, telling where it listens once its socket is bound: the port goes to
    ``port_file`` (the one ``port = 0`` got) until it stops, the URL to stderr if ``announce``.
    ``listening`` turns true after that (uvicorn's ``started`` turns true before it)."""

    def __init__(self, config: ServeConfig, app, *, announce: bool) -> None:  # type: ignore[no-untyped-def]
        super().__init__(_uvicorn_config(app, config))
        self.port_file, self.announce = config.port_file, announce
        self.listening = False
        self.url: str | None = None  # http://host:port, once bound
        _clear_port_file(self.port_file)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # exits the process if the app's startup or the bind fails
        if not self.servers:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if self.port_file is not None:
            atomic_write_bytes(self.port_file, f"{port}\n".encode())
        if self.announce:
            print(f"freshrec serve: listening on {self.url} (API docs: /docs)", file=sys.stderr, flush=True)
        self.listening = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            if self.port_file is not None:
                self.port_file.unlink(missing_ok=True)  # nothing listens there any more


def serve(
    config: ServeConfig,
    *,
    states: dict[str, ServingState] | None = None,
    subscribers: Sequence[Subscriber] | None = None,
) -> None:
    """Load the models (unless given) and serve until interrupted (Ctrl-C / SIGTERM)."""
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    registry = CollectorRegistry()
    _clear_port_file(config.port_file)
    if states is None:
        states, loaded = load_arms(config, registry=registry)
        subscribers = [*(subscribers or ()), *loaded]
    app = create_app(config, states, subscribers=subscribers, registry=registry)
    _Server(config, app, announce=True).run()


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
        self.server = _Server(config, self.app, announce=False)
        self._thread = threading.Thread(target=self.server.run, name="freshrec-uvicorn", daemon=True)

    @property
    def replica(self):  # type: ignore[no-untyped-def]
        return self.app.state.replica

    @property
    def url(self) -> str:
        if self.server.url is None:
            raise StateError("the server is not listening yet: start() it first")
        return self.server.url

    def start(self, timeout: float = 120.0) -> BackgroundServer:
        self._thread.start()
        waited = 0.0
        while not self.server.listening:  # bound, and its port file written
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
