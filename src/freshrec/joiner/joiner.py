"""The online joiner: reads impressions and actions from the event log, joins them in event
time, and writes training examples (and dead letters) back to it, exactly once across crashes.

    with open_log(LogConfig(path="runs/log")) as log, Joiner(log, JoinerConfig(state_dir="runs/joiner")) as j:
        j.run(until_idle=True)              # or j.step() in your own loop; j.drain() at end of stream
        print(j.metrics())

Reading. Every partition of every input topic is a source, read ``read_batch`` records at a time
(columnar reads, one batch decode). Sources are merged in event time: a step joins the buffered
records older than the *frontier*, the smallest "newest time read" of the sources that are not
caught up with the log, in order of (event time, source, offset). A source that is caught up
does not hold the others back. When every partition is in event-time order (as the simulator
and a serving API write them) and the log is already written, the records are joined in the
one global order whatever the batch sizes or restarts, so the output is a function of the log.

Exactly once. A checkpoint is one SQLite commit in the state store holding the join state, the
offset after the last joined record of each input partition, and the end offset of each
partition of the examples and dead-letter topics (after everything emitted so far was
appended). A restarted joiner restores it, reads on from those input offsets, and scans the
output topics from the recorded ends: every example id (the impression's event id) and every
dead letter origin it finds there was written after the checkpoint by the run that crashed,
and is not written again when the join emits it anew. Nothing is lost (the input is read
again from the checkpoint) and nothing is written twice. Parquet files follow the checkpoints
(see ``parquet.py``). The same holds on the embedded log and on Kafka: only offsets are used.
"""

from __future__ import annotations

import logging
import operator
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import numpy as np

from freshrec._ratelimit import RateLimitedLog
from freshrec.errors import InputError, StateError
from freshrec.joiner._wire import Bad, decode_batch
from freshrec.joiner.config import JoinerConfig
from freshrec.joiner.core import CoreState, JoinCore
from freshrec.joiner.dead_letter import DeadLetter, encode_dead_letters
from freshrec.joiner.example import Example
from freshrec.joiner.metrics import JoinerMetrics
from freshrec.joiner.owner import claim_topics
from freshrec.joiner.parquet import ParquetSink
from freshrec.joiner.state import DB_NAME, StateStore, pick
from freshrec.stream.events import Id
from freshrec.stream.log import EventLog

__all__ = ["Joiner", "JoinerState"]

CHECKPOINT_FORMAT = 1
_event_time = operator.attrgetter("event_time")
_RESTORE_READ = 65_536  # records per read when restoring the open impressions
# The settings that give a checkpoint its meaning: resuming under other values is refused.
_BINDING = (
    "input_topics", "examples_topic", "dead_letter_topic", "window_s", "allowed_lateness_s", "emit",
    "labels", "negative_rate", "reweight_negatives", "sampling_seed", "parquet_dir",
)  # fmt: skip


_log = logging.getLogger(__name__)


def _fit(blob: bytes, letter: DeadLetter, limit: int | None) -> bytes:
    """A dead letter's bytes under ``limit``: the head of its record, the reason saying so; if
    the rest (a field name sent as a huge key, repeated in the reason) is still too large, the
    field and reason are cut too (by characters, so the text stays valid)."""
    if limit is None or len(blob) <= limit:
        return blob
    head = max(0, limit - (len(blob) - len(letter.record)) - 128)  # 128: the note added to the reason
    note = f" [record cut to its first {head:,} of {len(letter.record):,} bytes: over max_output_bytes]"
    out = encode_dead_letters([msgspec.structs.replace(letter, record=letter.record[:head],
                                                       reason=letter.reason + note)])[0]  # fmt: skip
    field, reason = letter.field, letter.reason
    note = f" [field, reason and record ({len(letter.record):,} bytes) cut: over max_output_bytes]"
    while len(out) > limit and (reason or len(field) > 64):  # a topic name (<= 249 B) alone always fits
        field, reason = field[: max(64, len(field) // 2)], reason[: len(reason) // 2]
        out = encode_dead_letters([msgspec.structs.replace(letter, field=field, reason=reason + note,
                                                           record=b"")])[0]  # fmt: skip
    return out


_too_large = RateLimitedLog(_log, "joiner: ")  # a producer sending huge events sends many


class JoinerState(Enum):
    RUNNING = "running"  # reading and joining: step(), run(), drain(), checkpoint() allowed
    DRAINED = "drained"  # drain() closed every window (end of stream): checkpoint() and close() only
    FAILED = "failed"  # a step raised midway: close() and open a new Joiner (it resumes from the checkpoint)
    CLOSED = "closed"  # the state store is released: every call but close() raises StateError


class Checkpoint(msgspec.Struct):
    format: int
    binding: dict[str, Any]  # the _BINDING settings it was written under
    inputs: dict[str, list[int]]  # input topic -> next offset to join, per partition
    outputs: dict[str, list[int]]  # output topic -> its end offset per partition at the checkpoint
    parquet_seq: int  # number of the next Parquet file
    core: CoreState


class _ExampleId(msgspec.Struct, tag_field="kind", tag="example"):
    example_id: Id


class _Origin(msgspec.Struct, tag_field="kind", tag="dead_letter"):
    topic: str
    partition: int
    offset: int


@dataclass(eq=False)
class _Source:
    """One input partition: what was read from it and not joined yet."""

    index: int
    topic: str
    partition: int
    next_read: int = 0  # offset of the next record to read
    consumed: int = 0  # offset after the last joined record: the checkpoint's input offset
    items: list[Any] = field(default_factory=list)  # decoded records read and not joined
    records: list[bytes] = field(default_factory=list)  # the same, as read
    times: np.ndarray = field(default_factory=lambda: np.empty(0))  # (n,) their order times
    offsets: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (n,)
    arrivals: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (n,) wall ms appended
    pos: int = 0  # items[:pos] are joined
    caught_up: bool = False  # the last read came back short: at the log's end then
    high: float = float("-inf")  # newest event time read from it

    @property
    def buffered(self) -> int:
        return len(self.items) - self.pos


class Joiner:
    """The online joiner over an :class:`EventLog` (see the module docstring).

    Opening it restores the checkpoint in ``config.state_dir`` if there is one (and refuses one
    written under other join settings), else starts from offset 0 of every input partition and
    writes a first checkpoint. The input topics must exist; the output topics are created if
    they do not. One joiner per ``state_dir`` at a time (a second is refused).
    """

    def __init__(self, log: EventLog, config: JoinerConfig | None = None) -> None:
        self.log = log
        self.config = cfg = config or JoinerConfig()
        self._state = JoinerState.RUNNING
        self._sources: list[_Source] = []
        for topic in cfg.input_topics:
            for p in range(log.partitions(topic)):
                self._sources.append(_Source(len(self._sources), topic, p))
        self._out_parts = {
            cfg.examples_topic: log.ensure_topic(cfg.examples_topic, cfg.examples_partitions)[0],
            cfg.dead_letter_topic: log.ensure_topic(cfg.dead_letter_topic, 1)[0],
        }
        self._parquet = ParquetSink(cfg.parquet_dir) if cfg.parquet_dir is not None else None
        self._parquet_buffer: list[Example] = []
        self._parquet_seq = 0
        self._suppress_examples: set[Id] = set()
        self._suppress_letters: set[tuple[str, int, int]] = set()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        if not (Path(cfg.state_dir) / DB_NAME).exists():
            self._check_fresh_start()  # refused before the state store is created: a refusal leaves nothing
        self.run_id = claim_topics(log, cfg.examples_topic, Path(cfg.state_dir))  # one pipeline per set of topics
        self._store = StateStore(cfg.state_dir, cfg.memory_max_impressions, cfg.window_s)
        try:
            self.core = JoinCore(cfg, self._store, keep_examples=self._parquet is not None)
            meta = self._store.load_meta()
            if meta is None:
                self._fresh_start()
            else:
                self._restore(meta)
        except BaseException:
            self._store.close()
            raise

    # ---- opening -----------------------------------------------------------------------------

    def _binding(self) -> dict[str, Any]:
        data = self.config.model_dump(mode="json", include=set(_BINDING))
        return {k: data[k] for k in _BINDING}

    def _fresh_start(self) -> None:
        self._check_fresh_start()
        self.checkpoint()

    def _check_fresh_start(self) -> None:
        """Refuse to start from nothing where that would write examples twice."""
        if self._parquet is not None and self._parquet.files():
            raise StateError(
                f"parquet_dir {self._parquet.directory} holds example files but state_dir "
                f"{self.config.state_dir} has no checkpoint: they are from another run; move them"
            )
        # a fresh joiner re-joins its inputs from the start: over a topic that already holds
        # examples it would write every one again (a second pipeline on the same cluster and
        # topics, or this run's state lost), and trainers downstream would count them twice
        topic = self.config.examples_topic
        written = sum(self.log.end_offset(topic, p) for p in range(self._out_parts[topic]))
        if written:
            raise StateError(
                f"examples topic {topic!r} has received {written:,} records, but state_dir {self.config.state_dir} "
                "has no checkpoint: another joiner writes that topic (run one `freshrec online` per set of topics), "
                "or this joiner's state was lost or moved; use another examples_topic, or the state_dir that wrote it"
            )

    def _restore(self, meta: bytes) -> None:
        try:
            ck = msgspec.msgpack.decode(meta, type=Checkpoint)
        except msgspec.MsgspecError as exc:
            raise StateError(f"joiner state {self._store.file}: unreadable checkpoint: {exc}") from exc
        where = f"the checkpoint in {self.config.state_dir}"
        if ck.format != CHECKPOINT_FORMAT:
            raise StateError(f"{where} has format {ck.format}; this freshrec reads {CHECKPOINT_FORMAT}")
        now = self._binding()
        changed = [k for k in _BINDING if ck.binding.get(k) != now[k]]
        if changed:
            diffs = "; ".join(f"{k}: {ck.binding.get(k)!r} -> {now[k]!r}" for k in changed)
            raise StateError(
                f"{where} was written under other join settings ({diffs}); use another state_dir and another "
                "examples_topic (a fresh joiner joins its inputs again from their start)"
            )
        for s in self._sources:
            offs = ck.inputs.get(s.topic)
            if offs is None or len(offs) != self.log.partitions(s.topic):
                have = None if offs is None else len(offs)
                raise StateError(
                    f"{where} knows {have} partitions of input topic {s.topic!r}, the log has "
                    f"{self.log.partitions(s.topic)}; partitions cannot change under a running joiner"
                )
            s.consumed = s.next_read = offs[s.partition]
        self._store.restore(ck.core.watermark, self._fetch)
        self.core.restore(ck.core)
        self._parquet_seq = ck.parquet_seq
        if self._parquet is not None:
            self._parquet.remove_from(ck.parquet_seq)
        self._scan_outputs(ck.outputs)
        if ck.core.drained:
            self._state = JoinerState.DRAINED

    def _fetch(self, where: list[tuple[int, int]]) -> list[bytes]:
        """The input records at (source index, offset) ``where``: the open impressions of the
        checkpoint, which its snapshot refers to rather than copies (see state.py)."""
        wanted: dict[int, list[int]] = {}
        for src, offset in where:
            wanted.setdefault(src, []).append(offset)
        found: dict[tuple[int, int], bytes] = {}
        for src, offsets in wanted.items():
            s = self._sources[src]
            want = np.unique(np.asarray(offsets, np.int64))
            k = 0  # the next wanted offset not yet read
            while k < want.shape[0]:
                try:
                    cols = self.log.read_columns(s.topic, s.partition, int(want[k]), max_records=_RESTORE_READ)
                except InputError as exc:  # Kafka: below the earliest offset retention kept
                    raise StateError(
                        f"the checkpoint in {self.config.state_dir} refers to records of {s.topic!r} partition "
                        f"{s.partition} (from offset {int(want[k])}) that the log no longer holds ({exc}); it must "
                        f"keep records for the longest outage plus the join window (docs/joiner.md)"
                    ) from exc
                if not cols.values:
                    break
                got = np.asarray(cols.offsets, np.int64)
                hit = np.flatnonzero(np.isin(got, want[k:]))
                for j in hit.tolist():
                    found[(src, int(got[j]))] = cols.values[j]
                k = int(np.searchsorted(want, got[-1], side="right"))  # skips the gaps between them
            missing = [o for o in want.tolist() if (src, o) not in found]
            if missing:
                raise StateError(
                    f"the checkpoint in {self.config.state_dir} refers to {len(missing)} records of {s.topic!r} "
                    f"partition {s.partition} (first: offset {missing[0]}) that the log no longer holds; it must keep "
                    f"records for the longest outage plus the join window (docs/joiner.md)"
                )
        return [found[p] for p in where]

    def _scan_outputs(self, positions: dict[str, list[int]]) -> None:
        """Collect what the crashed run wrote after the checkpoint (see the module docstring)."""
        ids = msgspec.msgpack.Decoder(_ExampleId)
        origins = msgspec.msgpack.Decoder(_Origin)
        for topic, decoder, into in (
            (self.config.examples_topic, ids, self._suppress_examples),
            (self.config.dead_letter_topic, origins, self._suppress_letters),
        ):
            starts = positions.get(topic, [])
            if len(starts) != self._out_parts[topic]:
                raise StateError(
                    f"the checkpoint knows {len(starts)} partitions of output topic {topic!r}, the log has "
                    f"{self._out_parts[topic]}"
                )
            for p, offset in enumerate(starts):
                while True:
                    cols = self.log.read_columns(topic, p, offset, max_records=self.config.read_batch)
                    if not cols.values:
                        break
                    for blob in cols.values:
                        try:
                            rec = decoder.decode(blob)
                        except msgspec.MsgspecError:
                            continue  # not ours: nothing to suppress
                        into.add(rec.example_id if topic == self.config.examples_topic else
                                 (rec.topic, rec.partition, rec.offset))  # fmt: skip
                    offset = int(cols.offsets[-1]) + 1

    # ---- running -----------------------------------------------------------------------------

    @property
    def state(self) -> JoinerState:
        return self._state

    def _require(self, what: str, *allowed: JoinerState) -> None:
        if self._state not in allowed:
            raise StateError(f"cannot {what}: the joiner is {self._state.value}")

    def step(self) -> int:
        """Read what is there, join what the frontier allows, write what was emitted, and
        checkpoint if one is due. Returns the number of input records joined (0: nothing to do)."""
        self._require("step", JoinerState.RUNNING)
        try:
            n = self._step()
            if self._since_checkpoint and (
                self._since_checkpoint >= self.config.checkpoint_every_records
                or time.monotonic() - self._last_checkpoint >= self.config.checkpoint_interval_s
            ):
                self._checkpoint()
        except BaseException:
            self._state = JoinerState.FAILED
            raise
        return n

    def run(self, *, until_idle: bool = False, drain: bool = False, stop: Any = None) -> JoinerMetrics:
        """Step until ``stop`` (a ``threading.Event``) is set, or, with ``until_idle``, until every
        partition is caught up and joined; then :meth:`drain` if asked, and checkpoint."""
        while stop is None or not stop.is_set():
            if self.step() == 0 and self.caught_up:
                if until_idle:
                    break
                if stop is not None:
                    stop.wait(self.config.poll_interval_s)
                else:
                    time.sleep(self.config.poll_interval_s)
        if drain:
            self.drain()
        elif self._state is JoinerState.RUNNING and self._since_checkpoint:
            self.checkpoint()
        return self.metrics(lag=False)

    def drain(self) -> None:
        """End of stream: join everything in the log now, close every window (negatives and
        window_close examples go out), drop held actions, and checkpoint. The joiner is then
        DRAINED: later input would all be late."""
        self._require("drain", JoinerState.RUNNING)
        try:
            while self._step() or not self.caught_up:
                pass
            self.core.drain()
            self._write()
            self._state = JoinerState.DRAINED
            self._checkpoint()
        except BaseException:
            self._state = JoinerState.FAILED
            raise

    def checkpoint(self) -> None:
        """Write everything emitted, then commit the state and input/output positions."""
        self._require("checkpoint", JoinerState.RUNNING, JoinerState.DRAINED)
        try:
            self._checkpoint()
        except BaseException:
            self._state = JoinerState.FAILED
            raise

    @property
    def caught_up(self) -> bool:
        """Every input partition was read to the log's end (at the last read) and joined."""
        return all(s.caught_up and not s.buffered for s in self._sources)

    def _step(self) -> int:
        self._fill()
        items, records, srcs, offs, arrivals = self._ready()
        while not items and self._force_read():
            items, records, srcs, offs, arrivals = self._ready()
        if items:
            self.core.process(items, records, srcs, offs, arrivals)
            self._since_checkpoint += len(items)
        # Catching up, outputs go out a read batch at a time (one log append, one fsync, each);
        # at the head of the log, after every step.
        batch = self.config.read_batch
        if self.core.pending_output >= batch or not items or self.caught_up:
            self._write()
        return len(items)

    # ---- reading -----------------------------------------------------------------------------

    def _fill(self) -> None:
        low = self.config.read_batch // 2
        for s in self._sources:
            if s.buffered <= low:
                self._read(s)

    def _read(self, s: _Source) -> None:
        n_max = self.config.read_batch
        cols = self.log.read_columns(s.topic, s.partition, s.next_read, max_records=n_max)
        n = len(cols.values)
        s.caught_up = n < n_max
        if not n:
            return
        decoded = decode_batch(cols.values)
        times = np.fromiter(map(_event_time, decoded), np.float64, n)  # (n,) -inf for bad records
        if self.config.max_future_s is not None:
            self._refuse_future(decoded, times, cols.values, cols.timestamps_ms)
        # bad records sort right after what precedes them: at the newest time read so far
        order_times = np.maximum.accumulate(np.concatenate(([s.high], times)))[1:]
        bad = times == -np.inf
        times = np.where(bad, order_times, times) if bad.any() else times
        s.high = max(s.high, float(order_times[-1]))
        if s.pos:
            p = s.pos
            s.items, s.records, s.times, s.offsets, s.arrivals, s.pos = (
                s.items[p:],
                s.records[p:],
                s.times[p:],
                s.offsets[p:],
                s.arrivals[p:],
                0,
            )
        s.items += decoded
        s.records += cols.values
        s.times = np.concatenate((s.times, times))
        s.offsets = np.concatenate((s.offsets, cols.offsets))
        s.arrivals = np.concatenate((s.arrivals, cols.timestamps_ms))
        s.next_read = int(cols.offsets[-1]) + 1

    def _refuse_future(
        self, decoded: list[Any], times: np.ndarray, records: list[bytes], timestamps_ms: np.ndarray
    ) -> None:
        """Turn the events dated more than ``max_future_s`` after their record reached the log into
        bad records (dead-lettered, and never moving the clock); ``times`` is updated in place."""
        limit = self.config.max_future_s
        arrived = np.asarray(timestamps_ms, np.float64) / 1000.0  # (n,) seconds; <= 0: no timestamp
        ahead = times - arrived  # (n,)
        future = (ahead > limit) & (arrived > 0)
        if not future.any():
            return
        for i in np.flatnonzero(future).tolist():
            ev = decoded[i]
            kind = type(ev).__struct_config__.tag
            decoded[i] = Bad(
                "event_time",
                f"{kind}.event_time: {float(times[i])!r} is {ahead[i]:.0f} s after its record reached the log "
                f"(at {arrived[i]:.3f}); more than max_future_s = {limit:g} (a producer's clock ahead, or a date "
                "in the future)",
                records[i],
            )
        times[future] = -np.inf

    def _frontier(self) -> float:
        return min((s.high for s in self._sources if not s.caught_up), default=float("inf"))

    def _force_read(self) -> bool:
        """Nothing can be joined: read more from the sources that hold the frontier back."""
        front = self._frontier()
        if front == float("inf"):
            return False
        for s in self._sources:
            if not s.caught_up and s.high == front:
                self._read(s)
        return True

    def _ready(self) -> tuple[list[Any], list[bytes], list[int], list[int], list[int]]:
        """Take the buffered records older than the frontier, in (time, source, offset) order:
        (decoded, as read, source indices, offsets, arrivals in wall ms)."""
        front = self._frontier()
        picks = []
        for s in self._sources:
            if not s.buffered:
                continue
            seg = s.times[s.pos :]
            if front == float("inf"):
                k = seg.shape[0]
            else:
                over = seg >= front
                k = int(over.argmax()) if over.any() else seg.shape[0]
            if k:
                picks.append((s, k))
        if not picks:
            return [], [], [], [], []
        if len(picks) == 1:
            s, k = picks[0]
            lo, hi = s.pos, s.pos + k
            times, offs, arrivals = s.times[lo:hi], s.offsets[lo:hi], s.arrivals[lo:hi]
            items, records = s.items[lo:hi], s.records[lo:hi]
            srcs = np.full(k, s.index, np.int64)
            if k > 1 and bool((times[1:] < times[:-1]).any()):
                order = np.argsort(times, kind="stable")
                items, records = pick(items, order.tolist()), pick(records, order.tolist())
                offs, arrivals = offs[order], arrivals[order]
        else:
            times = np.concatenate([s.times[s.pos : s.pos + k] for s, k in picks])
            offs_all = np.concatenate([s.offsets[s.pos : s.pos + k] for s, k in picks])
            arr_all = np.concatenate([s.arrivals[s.pos : s.pos + k] for s, k in picks])
            src_all = np.concatenate([np.full(k, s.index, np.int64) for s, k in picks])
            pool: list[Any] = []
            pool_records: list[bytes] = []
            for s, k in picks:
                pool += s.items[s.pos : s.pos + k]
                pool_records += s.records[s.pos : s.pos + k]
            order = np.lexsort((offs_all, src_all, times))
            items, records = pick(pool, order.tolist()), pick(pool_records, order.tolist())
            offs, srcs, arrivals = offs_all[order], src_all[order], arr_all[order]
        for s, k in picks:
            s.pos += k
            s.consumed = int(s.offsets[s.pos - 1]) + 1
        return items, records, srcs.tolist(), offs.tolist(), arrivals.tolist()

    # ---- writing -----------------------------------------------------------------------------

    def _write(self) -> None:
        cfg = self.config
        arrivals = self.core.take_arrivals()
        blobs, ids, users, examples, dead = self.core.take()
        m = self.core.m
        if examples:
            self._parquet_buffer += examples  # every example, suppressed ones too (see parquet.py)
        limit = cfg.max_output_bytes
        if blobs and limit is not None and max(map(len, blobs)) > limit:
            keep = [i for i, b in enumerate(blobs) if len(b) <= limit]
            big = next(i for i, b in enumerate(blobs) if len(b) > limit)
            m.examples_too_large += len(blobs) - len(keep)
            _too_large.warn(f"example {ids[big]!r} is {len(blobs[big]):,} bytes, over max_output_bytes = {limit:,}: "
                            f"left out ({m.examples_too_large:,} so far)", n=len(blobs) - len(keep))  # fmt: skip
            blobs, ids, users = [blobs[i] for i in keep], [ids[i] for i in keep], [users[i] for i in keep]
            arrivals = [arrivals[i] for i in keep]
        if blobs and self._suppress_examples:
            sup = self._suppress_examples
            keep = [i for i, x in enumerate(ids) if x not in sup]
            m.examples_suppressed += len(ids) - len(keep)
            sup.difference_update(ids)
            blobs, users = [blobs[i] for i in keep], [users[i] for i in keep]
            arrivals = [arrivals[i] for i in keep]
        if blobs:
            keys = [str(u).encode() for u in users] if self._out_parts[cfg.examples_topic] > 1 else None
            # an example's record time is its cause's arrival: sync measures freshness from it
            self.log.append(cfg.examples_topic, blobs, keys, timestamps_ms=[max(1, a) for a in arrivals])
        if dead:
            src = self._sources
            letters = [
                DeadLetter(
                    topic=src[i].topic,
                    partition=src[i].partition,
                    offset=off,
                    field=fld,
                    reason=why,
                    record=rec,
                )
                for i, off, fld, why, rec in dead
            ]
            if self._suppress_letters:
                sup_l = self._suppress_letters
                kept = [d for d in letters if d.origin not in sup_l]
                m.dead_letters_suppressed += len(letters) - len(kept)
                sup_l.difference_update(d.origin for d in letters)
                letters = kept
            if letters:
                blobs_d = encode_dead_letters(letters)
                self.log.append(
                    cfg.dead_letter_topic, [_fit(b, d, limit) for b, d in zip(blobs_d, letters, strict=True)]
                )

    def _checkpoint(self) -> None:
        cfg = self.config
        self._write()
        if self._parquet is not None and self._parquet_buffer:
            self._parquet.write(self._parquet_seq, self._parquet_buffer)
            self._parquet_seq += 1
            self._parquet_buffer = []
        outputs = {t: [self.log.end_offset(t, p) for p in range(n)] for t, n in self._out_parts.items()}
        inputs: dict[str, list[int]] = {t: [] for t in cfg.input_topics}
        for s in self._sources:
            inputs[s.topic].append(s.consumed)
        self.core.m.checkpoints += 1
        meta = Checkpoint(CHECKPOINT_FORMAT, self._binding(), inputs, outputs, self._parquet_seq, self.core.snapshot())
        self._store.commit(msgspec.msgpack.encode(meta), self.core.watermark, self.core.seq)
        for topic, offs in inputs.items():
            self.log.commit(cfg.group, topic, dict(enumerate(offs)))
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    # ---- observing ---------------------------------------------------------------------------

    def metrics(self, *, lag: bool = True) -> JoinerMetrics:
        """Counters and gauges now; ``lag`` asks the log for its end offsets (one call per
        input partition) to report how many records the joiner is behind."""
        self._require("read metrics", JoinerState.RUNNING, JoinerState.DRAINED, JoinerState.FAILED)
        m = self.core.metrics()
        if lag:
            m.lag_records = sum(self.log.end_offset(s.topic, s.partition) - s.consumed for s in self._sources)
        return m

    def offsets(self) -> dict[str, list[int]]:
        """Per input topic, the offset after the last joined record of each partition."""
        out: dict[str, list[int]] = {t: [] for t in self.config.input_topics}
        for s in self._sources:
            out[s.topic].append(s.consumed)
        return out

    # ---- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint (unless the joiner failed: it then resumes from its last checkpoint) and
        release the state store. Idempotent."""
        if self._state is JoinerState.CLOSED:
            return
        try:
            if self._state in (JoinerState.RUNNING, JoinerState.DRAINED) and (
                self._since_checkpoint or self.core.pending_output
            ):
                self._checkpoint()
        finally:
            self._store.close()
            self._state = JoinerState.CLOSED

    def __enter__(self) -> Joiner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Joiner({self.config.state_dir!s}, {self._state.value}, open={len(self._store)})"
