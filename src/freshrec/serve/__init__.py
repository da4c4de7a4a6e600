"""Serving: the HTTP API, the live catalog, A/B arms, and ranking over a served model.

Owns the replica's config (``config.py``), request features -> model columns named as the
joiner names them (``features.py``), ranking and retrieve-then-rank for one arm (``engine.py``),
the live-item catalog fed by item lifecycle events (``items.py``), stable arm assignment and the
request -> arm ledger (``arms.py``), the batched impression writer (``writer.py``), the replica's
lifecycle (``replica.py``), Prometheus metrics (``metrics.py``), the FastAPI app and its error
mapping (``app.py``, ``api.py``, ``_asgi.py``) and running it under uvicorn (``server.py``).
Imports ``sync`` (what a replica holds), ``stream`` (events and the log), ``joiner`` (its
feature columns and example names), ``ps``, ``features``, ``models`` and base modules; nothing
imports it but the CLI, the demo, benchmarks and experiments.
"""

from freshrec.serve.app import create_app, status_of
from freshrec.serve.arms import ArmRouter, RequestLedger
from freshrec.serve.config import ArmConfig, ServeConfig, TopicsConfig
from freshrec.serve.engine import ArmEngine, ItemVectors
from freshrec.serve.items import ItemTailer, LiveItems
from freshrec.serve.replica import Replica, ReplicaState
from freshrec.serve.server import BackgroundServer, load_arms, load_states, serve

__all__ = [
    "ArmConfig",
    "ArmEngine",
    "ArmRouter",
    "BackgroundServer",
    "ItemTailer",
    "ItemVectors",
    "LiveItems",
    "Replica",
    "ReplicaState",
    "RequestLedger",
    "ServeConfig",
    "TopicsConfig",
    "create_app",
    "load_arms",
    "load_states",
    "serve",
    "status_of",
]
