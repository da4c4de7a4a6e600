"""Typed configuration of the event log: which backend, and how to reach it.

A config file section looks like::

    [log]                               # the default: SQLite in WAL mode on local disk
    path = "runs/log"

    [log]                               # your own Kafka cluster (docs/kafka.md)
    backend = "kafka"
    bootstrap_servers = "broker-1:9092,broker-2:9092"
    topic_settings = { "retention.ms" = "604800000" }
    [log.kafka_settings]                # librdkafka's own keys, passed through
    "security.protocol" = "SASL_SSL"
    "sasl.mechanism" = "PLAIN"
    "sasl.username" = "freshrec"
    "sasl.password" = "..."
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from freshrec.config import Config

__all__ = ["KAFKA_RESERVED_SETTINGS", "LogConfig"]

# librdkafka settings freshrec sets itself: overriding them would break the log's contract.
KAFKA_RESERVED_SETTINGS: dict[str, str] = {
    "bootstrap.servers": "set bootstrap_servers instead",
    "group.id": "freshrec passes the group to commit() and committed()",
    "enable.auto.commit": "offsets are committed only by commit()",
    "enable.auto.offset.store": "offsets are committed only by commit()",
    "auto.offset.reset": "read() starts exactly at the offset it is given",
    "enable.partition.eof": "read() reports the end of a partition by returning fewer records",
    "acks": "append() is durable only with acks=all",
    "delivery.report.only.error": "append() checks every delivery",
}

KafkaValue = str | int | float | bool


class LogConfig(Config):
    """Where the event log lives and how to reach it.

    Args:
        backend: ``embedded`` (a SQLite database on local disk; the default) or ``kafka``.
        path: embedded: the log's directory, created if missing; it holds ``log.sqlite`` and
            SQLite's ``-wal``/``-shm`` files (layout in docs/kafka.md).
        synchronous: embedded: ``full`` fsyncs the WAL at every append, so a batch that was
            appended survives a power cut; ``normal`` survives a process crash but may lose
            the last appends on power loss, and is faster.
        busy_timeout_s: embedded: how long a writer waits for another process's append.
        poll_interval_s: embedded: how often a waiting :meth:`read` looks for records that
            another process appended (appends by this process wake it at once).
        wal_autocheckpoint_pages: embedded: the WAL is copied into the database once it holds
            this many pages; 0 turns automatic checkpoints off (tests use it to keep a WAL).
        chunk_records, chunk_bytes: embedded: records are stored in chunks of at most this
            many records and about this many bytes (a chunk is never split below one record).
            Bigger chunks append and scan faster; a read from the middle of a chunk loads it
            whole.
        bootstrap_servers: kafka: ``host:port[,host:port...]`` of the cluster.
        kafka_settings: kafka: extra librdkafka settings for every client freshrec creates
            (``security.protocol``, ``sasl.*``, ``ssl.*``, ``client.id``...), passed through
            unchanged. The settings freshrec owns (:data:`KAFKA_RESERVED_SETTINGS`) are refused.
        producer_settings, consumer_settings: kafka: extra settings for the producer only or
            for the consumers only (``linger.ms``, ``compression.type``, ``fetch.wait.max.ms``).
        replication_factor: kafka: replicas of the topics :meth:`create_topic` makes; -1
            takes the broker's default.
        topic_settings: kafka: topic configs for the topics :meth:`create_topic` makes
            (``retention.ms``, ``min.insync.replicas``...).
        timeout_s: kafka: how long one admin, metadata, flush or commit request may take.
        probe_end_offset: kafka: confirm :meth:`end_offset` with a fetch of the partition's
            tail. Needed for Tansu 0.6, whose ListOffsets answer is the last record batch's
            first offset + 1 rather than the end of the log; on Apache Kafka it is exact and
            this can be turned off to save one fetch per call.
    """

    backend: Literal["embedded", "kafka"] = "embedded"
    # embedded
    path: Path = Path("freshrec-log")  # relative to the working directory
    synchronous: Literal["full", "normal"] = "full"
    busy_timeout_s: float = Field(30.0, gt=0)
    poll_interval_s: float = Field(0.01, gt=0, le=10)  # 10 ms: cross-process latency vs idle cost
    # 64 MiB of 16 KiB pages: a quarter of the checkpoints of 1024 pages, ~1.5x the throughput
    wal_autocheckpoint_pages: int = Field(4096, ge=0)
    chunk_records: int = Field(8192, ge=1)
    chunk_bytes: int = Field(1 << 20, ge=1)  # 1 MiB: a read from a chunk's middle loads <= ~1 MiB
    # kafka
    bootstrap_servers: str | None = None
    kafka_settings: dict[str, KafkaValue] = Field(default_factory=dict)
    producer_settings: dict[str, KafkaValue] = Field(default_factory=dict)
    consumer_settings: dict[str, KafkaValue] = Field(default_factory=dict)
    replication_factor: int = Field(-1, ge=-1)
    topic_settings: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(30.0, gt=0)
    probe_end_offset: bool = True

    @field_validator("kafka_settings", "producer_settings", "consumer_settings")
    @classmethod
    def _not_reserved(cls, v: dict[str, KafkaValue]) -> dict[str, KafkaValue]:
        for key in v:
            if key in KAFKA_RESERVED_SETTINGS:
                raise ValueError(f"{key!r} is set by freshrec ({KAFKA_RESERVED_SETTINGS[key]})")
        return v

    @model_validator(mode="after")
    def _backend_needs(self) -> LogConfig:
        if self.backend == "kafka" and not (self.bootstrap_servers or "").strip():
            raise ValueError("backend 'kafka' needs bootstrap_servers ('host:port,...')")
        return self
