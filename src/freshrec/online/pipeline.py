"""The online pipeline: event log -> joiner -> examples topic -> trainers -> sync log.

One loop, one thread, in this order each round: the joiner turns the impressions and actions that
arrived into examples (exactly once, its own checkpoints); the trainer reads the examples topic from
its offset, and when a batch is full (or, at the head of the stream, its first example waited
``max_batch_wait_s``) both models train on it with progressive validation; every
``expire_every_s`` of event time every table expires rows; the publishers ship sparse deltas
every second and dense weights every few minutes; every ``checkpoint_interval_s`` the training
side is checkpointed.

Exactly once across crashes, end to end: the joiner writes each example once (its checkpoint plus
suppression of what it already wrote); the trainer's checkpoint holds both models (tables with
optimizer state, dense weights with optimizer state) and the examples-topic offset they reflect,
so a restart re-trains exactly the examples after it, once. Serving catches up through the
publishers' full delta on start.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from freshrec._faults import crash_point
from freshrec._io import atomic_write_bytes, json_safe
from freshrec._lock import FolderLock
from freshrec._ratelimit import RateLimitedLog
from freshrec.errors import CorruptionError, InputError, SchemaError, StateError
from freshrec.features import Batch, encodable_rows
from freshrec.joiner import Joiner, JoinerState, decode_example, decode_examples, examples_to_columns
from freshrec.online.checkpoint import CheckpointStore
from freshrec.online.config import OnlineConfig
from freshrec.online.spec import live_commerce_spec, live_commerce_two_tower
from freshrec.stream import open_log
from freshrec.sync.publisher import Publisher
from freshrec.train import Trainer

__all__ = ["OnlinePipeline", "PipelineState"]

log = logging.getLogger(__name__)

REJECTED_LOG_EVERY_S = 60.0  # examples the trainer cannot read: one warning a minute at most


class PipelineState(enum.Enum):
    RUNNING = "running"  # joining, training, publishing
    FAILED = "failed"  # a round raised part-way: no more rounds or checkpoints, close() releases
    CLOSED = "closed"  # log, joiner and trainers released; every call raises StateError


@dataclass
class _Buffer:
    examples: list[Any] = field(default_factory=list)
    arrival_ms: int = 0  # newest record timestamp (wall ms) among them
    since: float | None = None  # wall clock when the first of them was read


def warming_up(joiner: dict[str, Any]) -> bool:
    """Whether the joiner has emitted examples but not one negative yet: with ``emit =
    first_action`` a click is emitted at once and the negatives of its request only when windows
    close (``window_s + allowed_lateness_s`` of event time after the stream starts), so until
    then the model learns from clicks alone and scores everything near 1."""
    return joiner.get("examples_out", 0) > 0 and joiner.get("negatives_out", 0) == 0


class OnlinePipeline:
    """``freshrec online`` as an object: build it, call :meth:`run` (or :meth:`round` by hand)."""

    def __init__(self, config: OnlineConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_lock = FolderLock(config.run_dir, "run_dir")
        self.run_lock.acquire(config.lock_wait_s)  # before anything in run_dir is read or written
        try:
            self._open(config)
        except BaseException:
            self.run_lock.release()
            raise

    def _open(self, config: OnlineConfig) -> None:
        self.spec = config.spec or live_commerce_spec(labels=tuple(config.joiner.labels))  # labels: OnlineConfig checks
        self.log = open_log(config.log)
        try:
            for topic in config.joiner.input_topics:  # a first start on an empty cluster
                if self.log.ensure_topic(topic, config.input_partitions)[1]:
                    log.warning("input topic %r did not exist: created with %d partition(s); nothing has written "
                                "to it yet (check joiner.input_topics if a producer uses another name)",
                                topic, config.input_partitions)  # fmt: skip
            self.joiner = Joiner(self.log, config.joiner)
        except BaseException:  # the cluster unreachable, another pipeline's examples topic: nothing left open
            _release_all([("the log", self.log.close)], quiet=True)
            raise
        self.trainers: dict[str, Trainer] = {}
        try:
            self.topic = config.joiner.examples_topic
            self.checkpoints = CheckpointStore(config.checkpoint_dir, config.keep_checkpoints)
            self.offsets = [0] * self.log.partitions(self.topic)  # read up to here
            self.trained_offsets = list(self.offsets)  # every example before these is trained on
            self.last_expire: float | None = None
            self.restored_from: Path | None = None
            self._restore_or_start()
            self.publishers = {
                name: Publisher.for_trainer(tr, self.log, config.sync, name=name) for name, tr in self.trainers.items()
            }
            self._buffer = _Buffer()
            self._last_checkpoint = self.clock()
            self._last_status = 0.0
            self._started = self.clock()
            self.state = PipelineState.RUNNING
            self.counters = {"rounds": 0, "batches": 0, "expired": 0, "checkpoints": 0, "examples_read": 0,
                             "examples_rejected": 0}  # fmt: skip
            self._rejected_log = RateLimitedLog(log, every_s=REJECTED_LOG_EVERY_S)
            self._rate = (self.clock(), self.trainers["rank"].counters.examples)
            self._examples_per_s = 0.0
            self.last_status: dict[str, Any] | None = None
            self.metrics_server = None
            if config.metrics_port is not None:
                self._serve_metrics(config.metrics_port)
        except BaseException:
            # nothing left open: the joiner's state store stays locked while open (a second start
            # in this process was refused), and a RayPS's actors hold the cluster's CPUs
            _release_all(self._release_steps(), quiet=True)
            raise

    # ---- start ---------------------------------------------------------------------------------
    def _new_trainers(self) -> dict[str, Trainer]:
        c = self.config
        # the log-odds correction undoes sampling the loss did not: with a weighted loss over the
        # joiner's reweighted negatives (1/r) there is nothing to undo
        neg = 1.0 if c.train.weighted_loss and c.joiner.reweight_negatives else c.joiner.negative_rate
        train = c.train.model_copy(update={"negative_sampling_rate": neg})
        makers = {"rank": lambda: Trainer(self.spec, c.rank_model, train, ps_config=c.ps)}
        if c.retrieval:
            first = self.spec.model_copy(update={"labels": [self.spec.labels[0]]})
            model = c.retrieval_model or live_commerce_two_tower()
            makers["retrieve"] = lambda: Trainer(first, model, train, ps_config=c.ps)
        return _all_or_none(makers)

    def _restore_or_start(self) -> None:
        for path in self.checkpoints.candidates():
            try:
                manifest = CheckpointStore.manifest(path)
                trainers = _all_or_none({name: functools.partial(Trainer.load, path / name, ps_config=self.config.ps)
                                         for name in manifest["models"]})  # fmt: skip
            except (CorruptionError, OSError, KeyError) as exc:
                log.warning("checkpoint %s is unusable (%s); trying an older one", path, exc)
                continue
            self.trainers = trainers
            offsets = manifest["examples_offsets"]
            self.offsets = offsets + [0] * (len(self.offsets) - len(offsets))
            self.trained_offsets = list(self.offsets)
            self.last_expire = manifest.get("last_expire")
            self.restored_from = path
            log.info("restored the training side from %s (examples offsets %s)", path, self.offsets)
            return
        self.trainers = self._new_trainers()

    # ---- the loop ------------------------------------------------------------------------------
    def round(self) -> int:
        """One round: join, read, train if a batch is due, expire, publish, checkpoint. Returns
        the examples trained this round. A round that raises leaves the pipeline failed: part of
        it may have run (a dense step without its sparse push), so :meth:`close` then writes no
        checkpoint and a restart resumes from the last one."""
        self._check("run a round")
        try:
            return self._round()
        except BaseException:
            self.state = PipelineState.FAILED
            raise

    def _round(self) -> int:
        self.joiner.step()
        self._read()
        if not self._buffer.examples:  # whatever was read was left out: no later batch owes it
            self._buffer = _Buffer()
            self.trained_offsets = list(self.offsets)
        trained = 0
        now = self.clock()
        buf = self._buffer
        # a partial batch only at the head of the stream: behind it (a replay, a restart catching
        # up) batches are cut by count alone, so where they fall does not depend on how fast this
        # machine happens to run, and a replay of the same log gives the same model
        due = len(buf.examples) >= self.config.train.batch_size or bool(
            buf.examples
            and buf.since is not None
            and now - buf.since >= self.config.max_batch_wait_s
            and self._at_head()
        )
        if due:
            trained = self._train(buf)
            self._buffer = _Buffer()
            self.trained_offsets = list(self.offsets)  # the buffer held exactly what was read
        for pub in self.publishers.values():
            pub.maybe_publish(now)
        if now - self._last_checkpoint >= self.config.checkpoint_interval_s:
            self.checkpoint()
        if now - self._last_status >= self.config.status_interval_s:
            self._write_status(now)
        self.counters["rounds"] += 1
        return trained

    def _at_head(self) -> bool:
        """The joiner read and joined all its input, and this side all the joiner's examples."""
        return self.joiner.caught_up and all(
            self.offsets[p] >= self.log.end_offset(self.topic, p) for p in range(len(self.offsets))
        )

    def _read(self) -> None:
        want = self.config.train.batch_size - len(self._buffer.examples)
        for p in range(len(self.offsets)):
            if want <= 0:
                return
            records = self.log.read(self.topic, p, self.offsets[p], max_records=want)
            if not records:
                continue
            self._buffer.examples += self._decode([r.value for r in records], p, records[0].offset)
            self._buffer.arrival_ms = max(self._buffer.arrival_ms, max(r.timestamp_ms for r in records))
            if self._buffer.since is None:
                self._buffer.since = self.clock()
            self.offsets[p] = records[-1].offset + 1
            self.counters["examples_read"] += len(records)
            want -= len(records)

    def _decode(self, values: list[bytes], partition: int, first_offset: int) -> list[Any]:
        """The examples of ``values``, leaving out (counted, logged) records that are not valid
        examples: one written by another producer or another freshrec version must not stop
        training, and a restart would only read it again."""
        try:
            return decode_examples(values)
        except SchemaError:
            pass
        out, bad = [], []
        for i, blob in enumerate(values):
            try:
                out.append(decode_example(blob))
            except SchemaError as exc:
                bad.append((f"record {self.topic}[{partition}]@{first_offset + i}", exc))
        self._reject(bad)
        return out

    def _reject(self, bad: list[tuple[str, Exception]]) -> None:
        """Count examples left out, and name one of them in a warning (one a minute at most)."""
        self.counters["examples_rejected"] += len(bad)
        if bad:
            what, exc = bad[0]
            self._rejected_log.warn(f"left out {len(bad)} example(s) the trainer cannot read, e.g. {what}: {exc}",
                                    n=len(bad))  # fmt: skip

    def _train(self, buf: _Buffer) -> int:
        batch = self._encode(buf.examples)
        if batch is None:
            return 0
        for name, trainer in self.trainers.items():
            b = batch if name == "rank" else _first_label(batch)
            trainer.step(b, progressive=True)
        crash_point("train.step")
        event_time = float(batch.event_time.max())
        for pub in self.publishers.values():
            pub.note(event_time=event_time, newest_arrival_ms=buf.arrival_ms)
        self._maybe_expire(event_time)
        self.counters["batches"] += 1
        return batch.size

    def _encode(self, examples: list) -> Batch | None:
        """The batch of ``examples``, leaving out (counted, logged) those the spec cannot read: a
        producer sending a float for an ID or text for a price must not stop training, and a
        restart would only meet the same example again. None if no example is left."""

        def encode(rows: np.ndarray) -> Batch:
            # columns made from the examples at hand: a column's type follows its values (one
            # float makes a column of integers float), so cutting the whole batch's would not do
            c = examples_to_columns([examples[i] for i in rows.tolist()])
            return self.spec.encode(c, weights=c["sample_weight"], event_time=c["event_time"])

        # labels other than the spec's (another joiner's examples) are left out first, whatever
        # the rest of the batch: beside the others' they fail only together (each passes alone,
        # so the search below would not find them), and a superset of the spec's even encodes
        labels = set(self.spec.labels)
        ours = np.array([i for i, e in enumerate(examples) if set(e.labels) == labels], np.int64)
        if ours.size < len(examples):
            self._reject([(f"example {e.example_id!r}", InputError(f"labels {sorted(e.labels)}, the spec's are "
                                                                    f"{sorted(labels)}"))
                          for e in examples if set(e.labels) != labels])  # fmt: skip
            if ours.size == 0:
                return None
        try:
            return encode(ours)
        except InputError:  # DataError: find the examples at fault
            pass
        kept, bad = encodable_rows(lambda rows: encode(ours[rows]), ours.size)
        self._reject([(f"example {examples[ours[row]].example_id!r}", exc) for row, exc in bad])
        if kept.size == 0:
            return None
        try:
            return encode(ours[kept])
        except InputError as exc:  # rows that encode alone but not together: none is known; stay up
            self._reject([(f"example {examples[i].example_id!r}", exc) for i in ours[kept].tolist()])
            return None

    def _maybe_expire(self, event_time: float) -> None:
        if self.last_expire is None:
            self.last_expire = event_time
        elif event_time - self.last_expire >= self.config.expire_every_s:
            for trainer in self.trainers.values():
                self.counters["expired"] += sum(int(ids.size) for ids in trainer.expire(event_time).values())
            self.last_expire = event_time

    def run(self, *, stop: threading.Event | None = None, duration_s: float | None = None,
            idle_sleep_s: float = 0.02) -> None:  # fmt: skip
        """Loop until ``stop`` is set or ``duration_s`` passed; sleeps briefly when idle."""
        end = None if duration_s is None else self.clock() + duration_s
        while not (stop is not None and stop.is_set()) and (end is None or self.clock() < end):
            before = self.counters["examples_read"]
            self.round()
            if self.counters["examples_read"] == before and not self._buffer.examples:
                time.sleep(idle_sleep_s)

    # ---- checkpoints and status ----------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Checkpoint the training side now (and the joiner alongside)."""
        self._check("checkpoint")
        self.joiner.checkpoint()
        manifest = {
            "models": list(self.trainers),
            "examples_topic": self.topic,
            "examples_offsets": list(self.trained_offsets),  # buffered examples are read again
            "joiner_offsets": self.joiner.offsets(),
            "last_expire": self.last_expire,
            "sync_versions": {n: p.sparse_version for n, p in self.publishers.items()},
            "examples_trained": self.trainers["rank"].counters.examples,
        }

        def write(folder: Path) -> None:
            for name, trainer in self.trainers.items():
                trainer.save(folder / name)

        path = self.checkpoints.write(write, manifest)
        self._last_checkpoint = self.clock()
        self.counters["checkpoints"] += 1
        return path

    def status(self) -> dict[str, Any]:
        """Everything the dashboard shows: model quality, system counters, sync versions."""
        now = self.clock()
        rank = self.trainers["rank"]
        t0, n0 = self._rate
        if now - t0 >= 1.0:
            self._examples_per_s = (rank.counters.examples - n0) / (now - t0)
            self._rate = (now, rank.counters.examples)
        tables = {}
        for t, st in rank.ps.stats().items():
            tables[t] = {k: st.as_dict()[k] for k in ("rows", "admitted", "filtered", "expired", "evicted")}
        joiner = self.joiner.metrics().as_dict()
        return {
            "wall_time": now,
            "uptime_s": now - self._started,
            "event_time": rank.counters.last_event_time if math.isfinite(rank.counters.last_event_time) else None,
            "model": {name: tr.metrics.compute() for name, tr in self.trainers.items()},
            "examples_trained": rank.counters.examples,
            "examples_per_s": self._examples_per_s,
            # examples written by the joiner and not trained on yet: the trainer's lag
            "examples_lag": sum(self.log.end_offset(self.topic, p) - off for p, off in enumerate(self.trained_offsets)),
            "steps": rank.counters.steps,
            "skipped_nonfinite": rank.counters.skipped_nonfinite,
            "tables": tables,
            "joiner": joiner,
            "sync": {
                n: {"sparse_version": p.sparse_version, "dense_version": p.dense_version}
                for n, p in self.publishers.items()
            },
            "counters": dict(self.counters),
            "restored_from": str(self.restored_from) if self.restored_from else None,
            "warming_up": warming_up(joiner),
        }

    def _serve_metrics(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        from freshrec.joiner import prometheus_collector
        from freshrec.online.metrics import PipelineCollector

        registry = CollectorRegistry()
        registry.register(PipelineCollector(lambda: self.last_status))
        registry.register(prometheus_collector(self._joiner_metrics))
        self.metrics_server, _thread = start_http_server(port, addr=self.config.metrics_host, registry=registry)
        self.metrics_port = self.metrics_server.server_port

    def _joiner_metrics(self) -> Any:
        """The joiner's counters now, with the lag of the latest status record: a scrape runs on
        the metrics thread and must not query the log the training loop uses."""
        m = self.joiner.metrics(lag=False)
        lag = (self.last_status or {}).get("joiner", {}).get("lag_records")
        if isinstance(lag, int) and lag >= 0:
            m.lag_records = lag
        return m

    def _write_status(self, now: float) -> None:
        status = json_safe(self.status())
        self.last_status = status  # what /metrics reads: one dict swap, no shared state with the loop
        blob = json.dumps(status).encode()
        atomic_write_bytes(self.config.run_dir / "status.json", blob)
        timeline = self.config.run_dir / "timeline.jsonl"
        with contextlib.suppress(FileNotFoundError):
            if timeline.stat().st_size + len(blob) + 1 > self.config.timeline_max_bytes:
                os.replace(timeline, self.config.run_dir / "timeline.1.jsonl")  # bounded: the newest two parts
        with open(timeline, "ab") as f:
            f.write(blob + b"\n")
        self._last_status = now

    # ---- lifecycle -----------------------------------------------------------------------------
    def _check(self, what: str) -> None:
        state = getattr(self, "state", PipelineState.RUNNING)
        if state is PipelineState.FAILED:
            raise StateError(f"cannot {what}: a round failed part-way; close the pipeline and start it again "
                             "(it resumes from its last checkpoint)")  # fmt: skip
        if state is not PipelineState.RUNNING:
            raise StateError(f"cannot {what}: the online pipeline is {state.value}")

    def close(self, *, checkpoint: bool = True) -> None:
        """Stop: a final checkpoint (unless told not to, or the joiner or a round failed: then the
        last checkpoint stands and a restart resumes from it), then release everything, each part
        whatever the others do; an error on the way is raised once all is released (only logged
        after a failure, whose own error is the one to report)."""
        if self.state is PipelineState.CLOSED:
            return
        failed = self.joiner.state is JoinerState.FAILED or self.state is PipelineState.FAILED
        if failed:
            # its state is half-stepped: checkpointing it would save half a round (or raise), and a
            # final status asks the log for offsets (which an outage makes wait and raise): either
            # error would hide the one that failed it from whoever reads the exit message
            newest = next(iter(self.checkpoints.candidates()), None)
            what = "the joiner failed" if self.joiner.state is JoinerState.FAILED else "a round failed part-way"
            log.warning("no final checkpoint or status: %s; a restart resumes from %s",
                        what, newest or "the start of the log")  # fmt: skip
        try:
            if checkpoint and not failed:
                self.checkpoint()
                for pub in self.publishers.values():
                    pub.publish_final()
            if not failed:
                self._write_status(self.clock())  # the final word, not the last periodic one
        except BaseException:
            self.state = PipelineState.CLOSED
            _release_all(self._release_steps(), quiet=True)  # the error above is the one to report
            raise
        self.state = PipelineState.CLOSED
        # after a failure the error that caused it is the one to report: the joiner's own final
        # checkpoint (it stepped whole) may meet the same outage, and must not replace it
        _release_all(self._release_steps(), quiet=failed)

    def _release_steps(self) -> list[tuple[str, Callable[[], None]]]:
        """What close() releases, in order; the run_dir lock last (the next process may start)."""
        steps: list[tuple[str, Callable[[], None]]] = []
        server = getattr(self, "metrics_server", None)
        if server is not None:
            steps += [("the metrics server", server.shutdown), ("the metrics port", server.server_close)]
        steps.append(("the joiner", self.joiner.close))
        steps += [(f"the {name} trainer", trainer.close) for name, trainer in self.trainers.items()]
        steps += [("the log", self.log.close), ("the run_dir lock", self.run_lock.release)]
        return steps


def _all_or_none(makers: dict[str, Callable[[], Trainer]]) -> dict[str, Trainer]:
    """Every trainer, or none left open: one that fails to start closes those started before it
    (a RayPS's actors hold the cluster's CPUs until closed)."""
    trainers: dict[str, Trainer] = {}
    try:
        for name, make in makers.items():
            trainers[name] = make()
    except BaseException:
        _release_all([(f"the {name} trainer", trainer.close) for name, trainer in trainers.items()], quiet=True)
        raise
    return trainers


def _release_all(steps: list[tuple[str, Callable[[], None]]], *, quiet: bool) -> None:
    """Run every step whatever the others do: one that raises must not leave the rest open (a
    RayPS's actors, the log, the run_dir lock), and a second close() returns at once. The first
    error is raised at the end; with ``quiet`` (another error is being reported) errors are
    logged instead, but an interrupt (Ctrl-C) is still raised."""
    first: BaseException | None = None
    for what, release in steps:
        try:
            release()
        except BaseException as exc:
            if quiet and isinstance(exc, Exception):
                log.warning("closing %s: %s: %s", what, type(exc).__name__, exc)
            elif first is None:
                first = exc
    if first is not None:
        raise first


def _first_label(batch: Batch) -> Batch:
    return Batch(batch.sparse, batch.dense, batch.labels[:, :1], batch.weights, batch.event_time)
