"""Train-to-serve parameter sync at two cadences (Monolith, section 2.3).

Owns what a serving replica holds (``state.py``: :class:`ServedModel`, one model's dense module,
serving PS and versions; :class:`ServingState`, the ranking and retrieval models an arm serves),
the sync record format (``delta.py``), the publisher on the training side (``publisher.py``:
sparse deltas every second or so, dense weights every few minutes, serving snapshots), the
subscriber that applies them on a replica (``subscriber.py``: version order, gap -> bootstrap,
freshness), the serving snapshots (``snapshot.py``), the float16 serving PS (``fp16.py``) and the
config (``config.py``). Imports ``ps``, ``table``, ``models``, ``features``, ``train`` (the model
directory) and ``stream`` (the sync log); serving builds on it. See docs/sync.md.
"""

from freshrec.sync.config import SyncConfig
from freshrec.sync.fp16 import Fp16PS
from freshrec.sync.publisher import Publisher, PublishResult
from freshrec.sync.snapshot import SnapshotInfo
from freshrec.sync.state import ServedModel, ServingState, serving_table_config
from freshrec.sync.subscriber import Subscriber, SubscriberState, SubscriberStats

__all__ = [
    "Fp16PS",
    "PublishResult",
    "Publisher",
    "ServedModel",
    "ServingState",
    "SnapshotInfo",
    "Subscriber",
    "SubscriberState",
    "SubscriberStats",
    "SyncConfig",
    "serving_table_config",
]
