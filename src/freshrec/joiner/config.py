"""The joiner's knobs: one :class:`JoinerConfig`, each default with the reason beside it.

A config file section looks like::

    [joiner]
    input_topics = ["impressions", "actions"]
    window_s = 1800                  # seconds of event time an impression waits for actions
    allowed_lateness_s = 60
    emit = "first_action"
    labels = ["click", "purchase"]
    negative_rate = 0.1              # keep 10% of negatives, weight 1/0.1
    state_dir = "runs/joiner"
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from freshrec.config import Config
from freshrec.stream.events import ACTION_TYPES

__all__ = ["JoinerConfig"]

Topic = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]  # Kafka's rule, as the event log's
ActionType = Literal["click", "bid", "purchase", "add_to_cart"]


class JoinerConfig(Config):
    """How the online joiner reads, joins, samples, stores and checkpoints (docs/joiner.md).

    Args:
        input_topics: topics holding impressions and actions, in any mix; every partition of
            each is read. Item lifecycle events found there are counted and skipped.
        examples_topic: where examples go; created with ``examples_partitions`` if missing.
        examples_partitions: partitions of a new examples topic; with more than one, examples
            are keyed by user id, so each user's examples stay in order.
        dead_letter_topic: where bad input goes, with the reason (created if missing).
        group: consumer group whose offsets the joiner commits at each checkpoint, so tools see
            its lag; the checkpoint in ``state_dir``, not the group, is what a restart resumes from.
        window_s: an action joins an impression at event time ``t`` if its own event time is in
            ``[t, t + window_s]`` (both ends included).
        allowed_lateness_s: the watermark trails the newest event time seen by this much. A
            window closes once the watermark passes its end; an impression older than the
            watermark is late and dropped; an action held for its impression is dropped once
            the watermark passes the action's time.
        emit: ``first_action``: one example per impression, at its first action, with the labels
            known then (later actions of other types are counted as late label updates);
            ``window_close``: one example per impression when its window closes, with every label.
            Negatives are emitted at window close in both.
        labels: the action types that become labels (one 0/1 label each, in this order); actions
            of other types are counted and ignored.
        max_future_s: an event whose event time is more than this many seconds after its record
            reached the log (the record's timestamp) is dead-lettered: the join's clock only moves
            forward, so one event dated in the future (a producer's clock ahead, a wrong year)
            would make every later event late until that time came. The largest clock jump one
            event can cause. None turns the check off (a log whose timestamps are not arrival
            times, a simulation that runs ahead of the wall clock).
        max_output_bytes: the largest example or dead letter the joiner writes (Kafka refuses a
            record over the producer's ``message.max.bytes``, 1,000,000 by default, and a joiner
            whose append failed would stop, then meet the same record at every restart). A larger
            example is left out of the examples topic (counted as ``examples_too_large``, logged;
            Parquet files keep it); a larger dead letter
            keeps only the head of its record (its reason says how much). The same on every
            backend, so the output does not depend on the log. None: no limit.
        negative_rate: keep this share of negatives (a seeded, deterministic decision per
            impression); every example records it as ``sampling_rate``.
        reweight_negatives: give kept negatives ``sample_weight = 1 / negative_rate`` (training
            is then unbiased); False leaves weight 1 and serving must add ``log(rate)`` to logits.
        sampling_seed: seeds the down-sampling hash.
        state_dir: the joiner's state store and checkpoint (one SQLite file), created if missing.
        memory_max_impressions: open impressions kept in memory; beyond it those whose windows
            close first are spilled to the state store on disk (0 keeps none in memory).
        read_batch: records read from a partition at a time.
        checkpoint_every_records: checkpoint after this many input records ...
        checkpoint_interval_s: ... or this many wall-clock seconds, whichever comes first.
        parquet_dir: also write every example to Parquet files here, one file per checkpoint.
        poll_interval_s: how long :meth:`Joiner.run` sleeps when every partition is caught up.
    """

    input_topics: list[Topic] = Field(default_factory=lambda: ["impressions", "actions"], min_length=1)
    examples_topic: Topic = "examples"
    examples_partitions: int = Field(1, ge=1, le=1 << 16)
    dead_letter_topic: Topic = "dead-letters"
    group: str = Field("freshrec-joiner", min_length=1)

    window_s: float = Field(1800.0, gt=0, allow_inf_nan=False)  # covers the simulator's max_action_delay
    allowed_lateness_s: float = Field(60.0, ge=0, allow_inf_nan=False)  # a minute of disorder between topics
    emit: Literal["first_action", "window_close"] = "first_action"  # freshness first (the paper)
    labels: list[ActionType] = Field(default_factory=lambda: list(ACTION_TYPES), min_length=1)
    # 5 minutes: far above the clock skew of machines kept by NTP, and what one bad event may cost
    max_future_s: float | None = Field(300.0, gt=0, allow_inf_nan=False)
    max_output_bytes: int | None = Field(990_000, ge=4096)  # under Kafka's 1,000,000 with room for the key

    negative_rate: float = Field(1.0, gt=0, le=1)  # 1: keep every negative, the safe default
    reweight_negatives: bool = True
    sampling_seed: int = Field(0, ge=0, lt=2**64)

    state_dir: Path = Path("freshrec-joiner")  # relative to the working directory
    # ~2 KB each in memory (measured by `freshrec bench joiner`): 250k is ~500 MB, more than
    # the half hour (~160k impressions) of the default simulator that the default window holds
    memory_max_impressions: int = Field(250_000, ge=0)
    read_batch: int = Field(8192, ge=1, le=1 << 20)  # one embedded-log chunk
    checkpoint_every_records: int = Field(500_000, ge=1)
    checkpoint_interval_s: float = Field(30.0, gt=0)  # bounds what a restart redoes in a slow stream
    parquet_dir: Path | None = None
    poll_interval_s: float = Field(0.05, gt=0, le=10)

    @model_validator(mode="after")
    def _check(self) -> JoinerConfig:
        if len(set(self.input_topics)) != len(self.input_topics):
            raise ValueError(f"input_topics has a repeated topic: {self.input_topics}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels has a repeated action type: {self.labels}")
        for name in ("examples_topic", "dead_letter_topic"):
            if getattr(self, name) in self.input_topics:
                raise ValueError(f"{name} {getattr(self, name)!r} is also an input topic")
        if self.examples_topic == self.dead_letter_topic:
            raise ValueError("examples_topic and dead_letter_topic must differ")
        return self
