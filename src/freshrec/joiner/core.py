"""The join itself (the paper's online joiner, section 2.3): events in processing order in,
examples and dead letters out. No I/O here but the state store; :class:`~freshrec.joiner.Joiner`
feeds it from the event log and writes what it emits.

Rules, all in event time (docs/joiner.md has the worked boundaries):

* **Clock.** ``event_time`` = the newest event time seen; ``watermark = event_time -
  allowed_lateness_s``. Both only grow. The watermark moves before an event is handled.
* **Impressions** open a window ``[t, t + window_s]`` keyed by ``(request_id, item_id)``. One
  older than the watermark is late and dropped. A second copy of an open impression (same event
  id) is a duplicate; another impression with the same key is refused (dead letter).
* **Actions** of a label type join the open impression of their key if their time is in its
  window and their user is its user (else: out of window / refused). An action with no open
  impression is held until the impression comes or the watermark passes the action's time
  (then it is unmatched); one already older than the watermark finds nothing to wait for and
  is late. A second copy of a joined or held action is a duplicate.
* **Windows close** when the watermark passes their end, in order of (end, arrival).
* **Emission.** ``first_action``: an impression's example goes out at its first joined action;
  ``window_close``: at close, with every label. An impression with no action is a negative,
  emitted at close if its down-sampling decision keeps it (weight ``1/r``, rate ``r``).
"""

from __future__ import annotations

import heapq
from typing import Any

import msgspec

from freshrec.errors import SchemaError
from freshrec.joiner._wire import Bad, Header, WireAction, impression
from freshrec.joiner.config import JoinerConfig
from freshrec.joiner.example import RESERVED_COLUMNS, Example, merge_features
from freshrec.joiner.metrics import COUNTERS, JoinerMetrics
from freshrec.joiner.sampling import keep_negatives
from freshrec.joiner.state import Entry, Key, StateStore

__all__ = ["CoreState", "DeadRecord", "Held", "JoinCore"]

_INF = float("inf")


class Held(msgspec.Struct, array_like=True, gc=False):
    """An action waiting for its impression."""

    action: WireAction
    seq: int
    src: int
    offset: int
    record: bytes  # as read, for a dead letter


class CoreState(msgspec.Struct, array_like=True):
    """What the join keeps besides the open impressions: its clock, held actions, counters."""

    event_time: float
    watermark: float
    seq: int
    drained: bool
    held: list[Held]
    counters: dict[str, int]


DeadRecord = tuple[int, int, str, str, bytes]  # (source index, offset, field, reason, record)


class JoinCore:
    """The join state machine over a :class:`StateStore`. See the module docstring.

    After :meth:`process` or :meth:`drain`, ``out_blobs`` (``out_ids``, ``out_users``, and
    ``out_examples`` if ``keep_examples``) hold the examples emitted and ``dead`` the dead
    letters, in order; the caller takes them with :meth:`take`.
    """

    def __init__(self, config: JoinerConfig, store: StateStore, *, keep_examples: bool = False) -> None:
        self.config = config
        self.store = store
        self.window_s = config.window_s
        self.lateness_s = config.allowed_lateness_s
        self.first_action = config.emit == "first_action"
        self.label_bit = {t: 1 << i for i, t in enumerate(config.labels)}
        # one labels dict per label bitmask, copied into each example
        self._labels = [
            {t: (mask >> i) & 1 for i, t in enumerate(config.labels)} for mask in range(1 << len(config.labels))
        ]
        self.reserved = frozenset(RESERVED_COLUMNS) | frozenset(config.labels)
        self.rate = config.negative_rate
        self.negative_weight = 1.0 / self.rate if config.reweight_negatives else 1.0
        self.m = JoinerMetrics()
        self.event_time = -_INF
        self.watermark = -_INF
        self.seq = 0  # arrival counter of impressions and held actions
        self.next_close = _INF  # no window ends before this
        self.drained = False
        self.pending: dict[Key, list[Held]] = {}
        self.pending_heap: list[tuple[float, int, Key]] = []  # (action time, seq, key), lazily pruned
        self.n_held = 0
        # emitted since the caller last took them: encoded examples, their ids and users, and
        # (if keep_examples) the Example objects
        self.out_blobs: list[bytes] = []
        self.out_ids: list[Any] = []
        self.out_users: list[Any] = []
        self.out_examples: list[Example] | None = [] if keep_examples else None
        # wall clock (ms) at which the event that caused each example reached the log: the action
        # for a positive, the event that moved the watermark past the window for a negative. The
        # examples topic records it, so sync can measure freshness from the action's arrival.
        self.out_arrivals: list[int] = []
        self.arrival_ms = 0  # the arrival of the event being processed
        self._encode = msgspec.msgpack.Encoder().encode
        self.dead: list[DeadRecord] = []

    # ---- the loop ----------------------------------------------------------------------------

    def process(
        self,
        items: list[Any],
        records: list[bytes],
        srcs: list[int],
        offsets: list[int],
        arrivals: list[int] | None = None,
    ) -> None:
        """Join ``items`` (decoded records, in processing order); ``records[i]`` is item ``i`` as
        read, from partition ``srcs[i]`` at ``offsets[i]`` (kept for examples and dead letters);
        ``arrivals[i]`` is when it reached the log (wall ms; stamped on the examples it causes)."""
        # The hot loop (once per input record): counters and the clock live in locals here.
        store, label_bit, pending, ph = self.store, self.label_bit, self.pending, self.pending_heap
        mem_get = store.memory.get
        lateness, now, watermark, seq = self.lateness_s, self.event_time, self.watermark, self.seq
        keeps = self._keep_flags(items)
        n_act = n_ignored = n_late_imp = n_late_act = n_dup = n_bad = n_other = 0
        for i, ev in enumerate(items):
            if arrivals is not None:
                self.arrival_ms = arrivals[i]
            t = ev.event_time
            if t > now:
                self.event_time = now = t
                if t - lateness > watermark:
                    self.watermark = watermark = t - lateness
                    if watermark > self.next_close or (ph and ph[0][0] < watermark):
                        self._advance(watermark)
            cls = type(ev)
            if cls is Header:
                if t < watermark:
                    n_late_imp += 1
                    continue
                key = (ev.request_id, ev.item_id)
                e = mem_get(key)
                if e is None and store.n_spilled:
                    e = store.get(key)
                if e is not None:
                    if e.event_id == ev.event_id:
                        n_dup += 1
                    else:
                        self._refuse(
                            srcs[i], offsets[i], records[i], "item_id",
                            f"impression.item_id: request {ev.request_id!r} already has an impression of "
                            f"item {ev.item_id!r} (event_id {e.event_id!r})",
                        )  # fmt: skip
                    continue
                e = Entry(
                    records[i],
                    ev.event_id,
                    t,
                    ev.user_id,
                    seq,
                    srcs[i],
                    offsets[i],
                    keeps is None or keeps[i],
                )
                seq += 1
                end = store.add(key, e)
                if end < self.next_close:
                    self.next_close = end
                if pending:
                    held = pending.pop(key, None)
                    if held:
                        self.n_held -= len(held)
                        for h in held:
                            self._join(key, e, h.action, label_bit[h.action.type], h.src, h.offset, h.record)
            elif cls is WireAction:
                n_act += 1
                bit = label_bit.get(ev.type)
                if bit is None:
                    n_ignored += 1
                    continue
                key = (ev.request_id, ev.item_id)
                e = mem_get(key)
                if e is None and store.n_spilled:
                    e = store.get(key)
                if e is not None:
                    self._join(key, e, ev, bit, srcs[i], offsets[i], records[i])
                    continue
                if t < watermark:
                    n_late_act += 1
                    continue
                waiting = pending.get(key)
                if waiting is None:
                    waiting = pending[key] = []
                elif any(h.action.event_id == ev.event_id for h in waiting):
                    n_dup += 1
                    continue
                waiting.append(Held(ev, seq, srcs[i], offsets[i], records[i]))
                heapq.heappush(ph, (t, seq, key))
                seq += 1
                self.n_held += 1
            elif cls is Bad:
                n_bad += 1
                self.dead.append((srcs[i], offsets[i], ev.field, ev.reason, records[i]))
            else:  # an item lifecycle event
                n_other += 1
        self.seq = seq
        m = self.m
        m.events_in += len(items)
        m.impressions_in += len(items) - n_act - n_bad - n_other
        m.actions_in += n_act
        m.ignored_actions += n_ignored
        m.late_impressions += n_late_imp
        m.late_actions += n_late_act
        m.duplicates += n_dup
        m.bad_records += n_bad
        m.dead_letters += n_bad
        m.other_events_in += n_other

    def _keep_flags(self, items: list[Any]) -> list[bool] | None:
        """Each item's down-sampling decision (used for impressions only); None: keep all."""
        if self.rate == 1.0:
            return None
        ids = [getattr(ev, "event_id", 0) for ev in items]  # a Bad record has none
        return keep_negatives(ids, self.rate, self.config.sampling_seed).tolist()

    def _join(self, key: Key, e: Entry, a: WireAction, bit: int, src: int, offset: int, record: bytes) -> None:
        m = self.m
        if a.event_id in e.action_ids:
            m.duplicates += 1
            return
        if a.user_id != e.user_id:
            self._refuse(
                src, offset, record, "user_id",
                f"action.user_id: {a.user_id!r} is not the user of its impression "
                f"(event_id {e.event_id!r}, user_id {e.user_id!r})",
            )  # fmt: skip
            return
        if not e.event_time <= a.event_time <= e.event_time + self.window_s:
            m.out_of_window_actions += 1
            return
        e.action_ids = (*e.action_ids, a.event_id)
        m.actions_joined += 1
        if not e.labels & bit:
            if e.emitted:
                m.late_label_updates += 1
            e.labels |= bit
        if self.first_action and not e.emitted:
            self._emit(e, positive=True)
            e.emitted = True
        self.store.update(key, e)

    def _advance(self, wm: float) -> None:
        """The watermark reached ``wm``: close the windows that end before it, and drop the held
        actions older than it."""
        if wm > self.next_close:
            closed = self.store.closing(wm)
            # once per impression, so in comprehensions: most are dropped negatives
            due = [e for e in closed if (e.labels or e.keep) and not e.emitted]
            self.m.negatives_dropped += len(closed) - len(due) - sum([e.emitted for e in closed])
            for e in due:
                self._emit(e, positive=bool(e.labels))
            self.next_close = self.store.next_end()
        ph, pending = self.pending_heap, self.pending
        while ph and ph[0][0] < wm:
            _, seq, key = heapq.heappop(ph)
            waiting = pending.get(key)
            if not waiting:
                continue  # its impression came: the item was stale
            for j, h in enumerate(waiting):
                if h.seq == seq:
                    del waiting[j]
                    self.m.unmatched_actions += 1
                    self.n_held -= 1
                    break
            if not waiting:
                del pending[key]

    def _emit(self, e: Entry, *, positive: bool) -> None:
        try:
            imp, user, item, context = impression(e.record)
            feats = merge_features(user, item, context, self.reserved)
        except SchemaError as exc:
            reason = str(exc)
            field = reason.split(":", 1)[0].partition(".")[2] or "<record>"
            self.m.rejected_events += 1
            self.m.dead_letters += 1
            self.dead.append((e.src, e.offset, field, reason, e.record))
            return
        m = self.m
        if positive:
            weight = rate = 1.0
            m.positives_out += 1
        else:
            weight, rate = self.negative_weight, self.rate
            m.negatives_out += 1
        m.examples_out += 1
        ex = Example(
            example_id=imp.event_id,
            request_id=imp.request_id,
            event_time=imp.event_time,
            emitted_at=self.event_time,
            user_id=imp.user_id,
            item_id=imp.item_id,
            position=imp.position,
            model_version=imp.model_version,
            features=feats,
            labels=self._labels[e.labels].copy(),
            sample_weight=weight,
            sampling_rate=rate,
        )
        # encoded now, so the example's dicts are freed before the collector could scan them
        self.out_blobs.append(self._encode(ex))
        self.out_arrivals.append(self.arrival_ms)
        self.out_ids.append(imp.event_id)
        self.out_users.append(imp.user_id)
        if self.out_examples is not None:
            self.out_examples.append(ex)

    def take_arrivals(self) -> list[int]:
        """The arrival (wall ms) of what caused each example since the last take; call just
        before :meth:`take`, whose blobs it parallels."""
        out, self.out_arrivals = self.out_arrivals, []
        return out

    def take(self) -> tuple[list[bytes], list[Any], list[Any], list[Example] | None, list[DeadRecord]]:
        """(blobs, ids, users, examples or None, dead records) emitted since the last take."""
        out = (self.out_blobs, self.out_ids, self.out_users, self.out_examples, self.dead)
        self.out_blobs, self.out_ids, self.out_users, self.dead = [], [], [], []
        if self.out_examples is not None:
            self.out_examples = []
        return out

    @property
    def pending_output(self) -> int:
        return len(self.out_blobs) + len(self.dead)

    def _refuse(self, src: int, offset: int, record: bytes, field: str, reason: str) -> None:
        self.m.rejected_events += 1
        self.m.dead_letters += 1
        self.dead.append((src, offset, field, reason, record))

    # ---- end of stream, checkpoints ----------------------------------------------------------

    def drain(self) -> None:
        """End of stream: close every window and drop every held action (watermark = inf)."""
        self.watermark = _INF
        self.next_close = -_INF  # force a full close
        self._advance(_INF)
        self.drained = True

    def snapshot(self) -> CoreState:
        held = [h for waiting in self.pending.values() for h in waiting]
        counters = {name: getattr(self.m, name) for name in COUNTERS}
        return CoreState(self.event_time, self.watermark, self.seq, self.drained, held, counters)

    def restore(self, state: CoreState) -> None:
        self.event_time, self.watermark, self.seq = state.event_time, state.watermark, state.seq
        self.drained = state.drained
        self.pending.clear()
        self.pending_heap = []
        for h in state.held:
            key = (h.action.request_id, h.action.item_id)
            self.pending.setdefault(key, []).append(h)
            self.pending_heap.append((h.action.event_time, h.seq, key))
        heapq.heapify(self.pending_heap)
        self.n_held = len(state.held)
        for name, value in state.counters.items():
            if name in COUNTERS:
                setattr(self.m, name, value)
        self.next_close = self.store.next_end()

    def metrics(self) -> JoinerMetrics:
        m = JoinerMetrics(**{name: getattr(self.m, name) for name in COUNTERS})
        m.open_impressions = len(self.store)
        m.open_impressions_on_disk = self.store.n_spilled
        m.held_actions = self.n_held
        m.watermark = self.watermark
        m.event_time = self.event_time
        return m
