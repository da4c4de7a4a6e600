"""Configuration of train->serve sync: cadences, topics, record size, snapshots, fp16 serving.

A config file section looks like::

    [sync]
    sparse_sync_interval = 1.0          # seconds of wall clock
    dense_sync_interval = 300.0
    snapshot_dir = "runs/snapshots"
    fp16 = true                         # serving replicas store embeddings as float16
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field

from freshrec.config import Config
from freshrec.errors import InputError

__all__ = ["SyncConfig", "TopicPrefix", "check_model_name"]

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")  # a model name must fit in a Kafka topic name
# the start of a model's sync topics' names (``<prefix>.<model>.sparse``): Kafka's characters
TopicPrefix = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,40}$")]


class SyncConfig(Config):
    """How the training side publishes parameters and how a serving replica applies them.

    Args:
        sparse_sync_interval: seconds of wall clock between sparse deltas (the rows touched since
            the previous delta, plus tombstones). The paper uses a minute; we aim for seconds.
        dense_sync_interval: seconds of wall clock between dense publications (the whole dense
            state: it moves slowly and is small next to the tables).
        snapshot_interval: seconds of wall clock between serving snapshots written by
            :meth:`Publisher.maybe_publish`; None = only when :meth:`Publisher.snapshot` is called.
        topic_prefix: a model's sync-log topics are ``<topic_prefix>.<model>.sparse`` and
            ``<topic_prefix>.<model>.dense`` (one partition each, so log order is version order):
            a prefix per environment (``prod.sync``) keeps clusters' deltas apart, and each model
            keeps its own topics. Serving arms name the same prefix.
        max_record_bytes: a delta bigger than this is split into parts of at most about this
            many bytes. Kafka refuses messages over ``message.max.bytes`` (1 MB by default).
        full_delta_on_start: the first sparse delta of a new :class:`Publisher` carries every row
            of every table and replaces the replicas' tables. A trainer that restarts from an
            older checkpoint would otherwise leave replicas holding rows the training side no
            longer has; on a first start it ships the initial (e.g. batch-trained) model.
        snapshot_dir: root of the serving snapshots; each model writes ``<snapshot_dir>/<model>``.
        keep_snapshots: how many snapshots of a model to keep (the newest ones).
        fp16: serving replicas store embeddings as float16 (half the row memory; the paper's
            serving compression). Deltas and snapshots stay float32.
        poll_interval: seconds a subscriber's thread waits for new records per read; records
            appended by the same process wake it at once.
        bootstrap_retry_interval: seconds a subscriber waits before retrying a failed bootstrap
            (no usable snapshot yet, or a gap the newest snapshot does not cover).
        retire_after: seconds a replaced serving PS stays open after a bootstrap or a full delta
            swapped it out, so requests that already hold it can finish.
        apply_interval: a replica's own cadence: its thread applies the deltas that accumulated
            in one burst every this many seconds; 0 = as they arrive. A stale A/B arm (the
            "batch" baseline of the demo) uses minutes while the publisher keeps its second-level
            cadence for the fresh arm.
    """

    sparse_sync_interval: float = Field(1.0, gt=0)
    dense_sync_interval: float = Field(300.0, gt=0)
    snapshot_interval: float | None = Field(600.0, gt=0)  # 10 min: bounds a fresh replica's replay
    topic_prefix: TopicPrefix = "sync"
    # 512 KiB: well under Kafka's 1 MB default, with room for the header and the log's framing
    max_record_bytes: int = Field(512 * 1024, ge=65536, le=64 * 1024 * 1024)
    full_delta_on_start: bool = True
    snapshot_dir: Path = Path("freshrec-snapshots")  # relative to the working directory
    keep_snapshots: int = Field(3, ge=1)
    fp16: bool = False
    poll_interval: float = Field(0.05, gt=0, le=10)  # 50 ms: idle cost vs cross-process latency
    bootstrap_retry_interval: float = Field(5.0, gt=0)
    retire_after: float = Field(5.0, ge=0)
    apply_interval: float = Field(0.0, ge=0)

    def topics(self, model: str) -> tuple[str, str]:
        """The (sparse, dense) topics of ``model``."""
        check_model_name(model)
        return f"{self.topic_prefix}.{model}.sparse", f"{self.topic_prefix}.{model}.dense"

    def model_snapshot_dir(self, model: str) -> Path:
        check_model_name(model)
        return self.snapshot_dir / model


def check_model_name(name: str) -> str:
    """``name`` if it can name a model's topics and snapshot folder, else InputError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InputError(f"model name {name!r} must be 1-200 characters of [A-Za-z0-9._-]")
    return name
