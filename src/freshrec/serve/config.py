"""Configuration of a serving replica: where it listens, what each A/B arm serves, the caps.

A config file looks like::

    host = "0.0.0.0"
    port = 8000
    api_key = "change-me"                 # or the FRESHREC_API_KEY environment variable
    [log]
    path = "runs/log"
    [[arms]]
    name = "control"
    weight = 0.9
    model_dir = "runs/rank"
    retrieval_dir = "runs/retrieve"
    [[arms]]
    name = "deep"
    weight = 0.1
    model_dir = "runs/rank-dcn"
    retrieval_dir = "runs/retrieve"
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from freshrec.config import Config
from freshrec.ps.config import PSConfig
from freshrec.stream.config import LogConfig
from freshrec.sync.config import TopicPrefix

__all__ = ["API_KEY_ENV", "ArmConfig", "ArmSyncConfig", "ServeConfig", "TopicsConfig", "is_loopback"]

API_KEY_ENV = "FRESHREC_API_KEY"
_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"  # the event log's rule


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ArmSyncConfig(Config):
    """An arm whose models follow the training side through the sync log (``freshrec online``
    publishes it): loaded from the newest serving snapshot, then kept fresh by subscribers.

    Args:
        snapshot_dir: the publisher's snapshot root (its ``SyncConfig.snapshot_dir``).
        log: the sync log; None = the server's event log.
        apply_interval: seconds between this arm's bursts of applied deltas; 0 = as they arrive
            (seconds of staleness). Minutes make the "batch" baseline of an A/B test.
        fp16: store this arm's embeddings as float16.
        rank_model / retrieval_model: the models' names in the sync log (None: no retriever).
        topic_prefix: the publisher's ``SyncConfig.topic_prefix``.
    """

    snapshot_dir: Path
    log: LogConfig | None = None
    topic_prefix: TopicPrefix = "sync"
    apply_interval: float = Field(0.0, ge=0, allow_inf_nan=False)
    fp16: bool = False
    rank_model: str = "rank"
    retrieval_model: str | None = "retrieve"


class ArmConfig(Config):
    """One A/B arm: the models it serves and its share of users.

    Args:
        name: the arm's name, used in metrics, responses and impressions' model versions.
        weight: its share of users, relative to the other arms' weights.
        model_dir: the ranking model (a model directory written by ``Trainer.save``), served as is.
        retrieval_dir: the two-tower retriever for /v1/recommend; None: /v1/recommend ranks the
            ``retrieve_k`` most recently listed live items instead.
        sync: instead of model directories, follow the training side live (see ArmSyncConfig).
        explore: share of each /v1/recommend slate given to exploration: items drawn at random
            from the ``explore_pool`` newest live listings that the slate's top scores do not
            show anyway, at random positions (``explore * k`` per slate on average). A model learns only from what it
            shows, and a fresh listing has no row until it was shown a few times: without it, a
            model that starts cold keeps showing the few items it knows. 0 = off.
        explore_pool: how many of the newest live listings exploration draws from.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    model_dir: Path | None = None
    retrieval_dir: Path | None = None
    sync: ArmSyncConfig | None = None
    explore: float = Field(0.0, ge=0.0, le=1.0)
    explore_pool: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> ArmConfig:
        if (self.model_dir is None) == (self.sync is None):
            raise ValueError(f"arm {self.name!r} needs exactly one of model_dir (static) or sync (live)")
        if self.sync is not None and self.retrieval_dir is not None:
            raise ValueError(f"arm {self.name!r}: with sync, the retriever comes from sync.retrieval_model")
        return self


class TopicsConfig(Config):
    """Event-log topics the server writes and reads (the joiner reads impressions and actions).

    Args:
        impressions: /v1/recommend's impressions and posted impressions go here.
        actions: posted actions (click, bid, add_to_cart, purchase).
        items: item lifecycle events (listed, updated, ended): the live catalog.
        partitions: partitions of the topics the server creates.
    """

    impressions: str = Field("impressions", pattern=_TOPIC)
    actions: str = Field("actions", pattern=_TOPIC)
    items: str = Field("items", pattern=_TOPIC)
    partitions: int = Field(1, ge=1, le=1024)  # for topics the server creates; existing ones keep theirs


class ServeConfig(Config):
    """A serving replica.

    Args:
        host: the address uvicorn listens on.
        port: its port; 0 takes any free port (see ``port_file``).
        port_file: once the socket is bound, the port it got is written here (atomically, one
            line) and removed at shutdown (a stale one, at start): for supervisors, and for
            ``port = 0``, which leaves no port to race for. ``freshrec serve`` also prints
            ``listening on http://host:port`` to stderr.
        api_key: required (header ``X-API-Key``) by /v1/events; read from the environment
            variable ``FRESHREC_API_KEY`` when not given. None turns the check off, which is
            allowed only when ``host`` is a loopback address (the local demo).
        arms: the A/B arms (at least one); a user's arm is a stable, seeded hash of the user id.
        arm_seed: seed of that hash (change it to reshuffle users between arms).
        log: the event log impressions, actions and item events go to.
        topics: topic names in that log.
        tail_items: read item lifecycle events from the log in a background thread (the live
            catalog for /v1/recommend); off, the catalog is fed by /v1/events only.
        max_body_bytes: requests with a larger body are refused (413) before they are parsed.
        max_candidates: candidates per /v1/rank request.
        max_k: items per /v1/recommend request.
        max_events: events per /v1/events request.
        max_future_s: an event time more than this many seconds after this server's clock (in
            /v1/events, and /v1/recommend's ``event_time``) is refused with a 422: the joiner
            would dead-letter it (its ``max_future_s``: keep the two equal), and a catalog event
            dated far ahead would hold its item until then. None: no check.
        retrieve_k: items the retriever hands to the ranking model in /v1/recommend.
        sync_impressions: /v1/recommend returns only after its impressions are durable in the
            log (one fsync per request on the embedded log); off, a background writer appends
            them in batches within milliseconds and a crash may lose the last ones.
        request_memory: request ids remembered (id -> arm) to attribute later actions to arms.
        item_refresh_s: how often item vectors are recomputed when the catalog or the retriever
            changed.
        torch_threads: torch intra-op threads. 1: a 100-candidate forward pass is too small to
            gain from splitting, and the other core serves the delta, tailer and writer threads.
        ps_threads: worker threads of each served model's parameter server; 1 looks up a
            request's tables in the request's own thread (a pool hand-off per lookup costs more
            than the lookup at serving batch sizes).
        gil_switch_interval_ms: how long a thread holding the GIL may run before one waiting for
            it gets its turn (``sys.setswitchinterval``; Python's default is 5 ms). Requests run
            on the event loop while the sync subscriber, the item tailer and the impression
            writer run Python in other threads: at 5 ms a request that arrives during a delta
            waits up to 5 ms for the GIL. Process-wide while replicas serve (the shortest any running
            replica asks for); the process's own value comes back when the last one stops.
        warmup_candidates: candidate count of the synthetic requests that warm the path at start.
        shutdown_timeout_s: how long stopping the replica may take once uvicorn has let the
            requests in flight finish (up to 10 s): stopping the subscribers and background
            threads, appending the impressions still queued, closing the event log. If the log
            cannot take them in time (a Kafka cluster that is down), the impressions not yet
            acknowledged are dropped, counted in
            ``freshrec_serve_event_log_records_total{outcome="dropped"}`` and logged once as an
            error. A SIGTERM thus ends the process within about 10 s + this: keep the sum under
            the supervisor's grace period (Kubernetes': 30 s).
        log_level: uvicorn's and freshrec's log level.
    """

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port
    port_file: Path | None = None
    api_key: SecretStr | None = None
    arms: list[ArmConfig] = Field(min_length=1)
    arm_seed: int = Field(0, ge=0, lt=2**64)
    log: LogConfig = Field(default_factory=LogConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    tail_items: bool = True
    max_body_bytes: int = Field(1 << 20, ge=1024)  # 1 MiB: 1000 candidates with ~20 features each fit
    max_candidates: int = Field(1000, ge=1)
    max_k: int = Field(100, ge=1)
    max_events: int = Field(10_000, ge=1)
    max_future_s: float | None = Field(300.0, gt=0, allow_inf_nan=False)
    retrieve_k: int = Field(300, ge=1)  # the "top few hundred" by dot product
    sync_impressions: bool = False
    request_memory: int = Field(200_000, ge=1)  # ~100 B each: 20 MB, an hour at ~55 requests/s
    item_refresh_s: float = Field(1.0, gt=0, allow_inf_nan=False)  # the sparse sync cadence
    torch_threads: int = Field(1, ge=1, le=256)
    ps_threads: int = Field(1, ge=1, le=256)
    gil_switch_interval_ms: float = Field(0.5, ge=0.05, le=100.0, allow_inf_nan=False)
    warmup_candidates: int = Field(100, ge=1)
    # 10 s of request draining + 15 s = 25 s: under Kubernetes' 30 s before its SIGKILL
    shutdown_timeout_s: float = Field(15.0, gt=0, le=3600, allow_inf_nan=False)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"

    def ps_config(self) -> PSConfig:
        """The parameter server of each served model: one shard, ``ps_threads`` workers."""
        return PSConfig(num_shards=1, threads=self.ps_threads)

    @model_validator(mode="before")
    @classmethod
    def _key_from_env(cls, data: Any) -> Any:
        # a secret belongs in the environment, not in a config file checked into a repository
        if isinstance(data, dict) and data.get("api_key") is None and os.environ.get(API_KEY_ENV):
            data = {**data, "api_key": os.environ[API_KEY_ENV]}
        return data

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique; repeated: {dupes}")
        if self.api_key is None and not is_loopback(self.host):
            raise ValueError(
                f"api_key is required when host {self.host!r} is not a loopback address "
                f"(set api_key or {API_KEY_ENV}); only a localhost demo may run without one"
            )
        if self.api_key is not None and not self.api_key.get_secret_value():
            raise ValueError("api_key must not be empty")
        if len({self.topics.impressions, self.topics.actions, self.topics.items}) != 3:
            raise ValueError("topics.impressions, topics.actions and topics.items must differ")
        return self
