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

How: the clock, closing windows and opening the windows of new impressions run in one compiled
loop per batch (:func:`freshrec.joiner._windows.run`); it hands every other event back to
:meth:`JoinCore._handle`, in order. The examples of windows it closed are built afterwards and
put back in event order (:meth:`JoinCore._flush`), so the output is what the rules above give
one event at a time.
"""

from __future__ import annotations

import heapq
import itertools
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from freshrec.errors import SchemaError
from freshrec.joiner import _windows as W
from freshrec.joiner._wire import Bad, Header, WireAction, impression
from freshrec.joiner.config import JoinerConfig
from freshrec.joiner.example import RESERVED_COLUMNS, Example, merge_features
from freshrec.joiner.metrics import COUNTERS, JoinerMetrics
from freshrec.joiner.sampling import keep_negatives
from freshrec.joiner.state import Entry, Key, StateStore, pick

__all__ = ["CoreState", "DeadRecord", "Held", "JoinCore"]

_INF = float("inf")
_KIND = {Header: W.KIND_IMPRESSION, WireAction: W.KIND_ACTION, Bad: W.KIND_BAD}
_event_time, _request_id, _item_id = attrgetter("event_time"), attrgetter("request_id"), attrgetter("item_id")


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
        # the clock and the arrival counter live in the compiled windows' arrays
        self._win = store.win
        self._win.clock[W.K_LATENESS] = self.lateness_s
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
        # Inside process(): the index of the event that caused each output since _mark/_dead_mark
        # (examples, dead letters). The compiled loop's closes are emitted in bulk later and put
        # back in event order by these (see _flush).
        self._cause = 0
        self._causes: list[int] = []
        self._dead_causes: list[int] = []
        self._mark = self._dead_mark = 0

    @property
    def event_time(self) -> float:
        """The newest event time seen."""
        return float(self._win.clock[W.K_NOW])

    @property
    def watermark(self) -> float:
        return float(self._win.clock[W.K_WM])

    @property
    def seq(self) -> int:
        """The arrival number the next impression or held action gets."""
        return int(self._win.ctr[W.C_SEQ])

    def _next_seq(self) -> int:
        ctr = self._win.ctr
        seq = int(ctr[W.C_SEQ])
        ctr[W.C_SEQ] = seq + 1
        return seq

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
        ``arrivals[i]`` is when it reached the log (wall ms; stamped on the examples it causes).

        The compiled loop (:func:`freshrec.joiner._windows.run`) moves the clock, closes windows
        and opens the windows of new impressions; every other event comes back here, in order."""
        n = len(items)
        if not n:
            return
        kind, t, kh, keep = self._columns(items)
        store = self.store
        win = self._win
        ctr, clk = win.ctr, win.clock
        late0 = int(ctr[W.C_LATE])
        bt = store.add_batch(items, records, srcs, offsets)
        ctr[W.C_I], ctr[W.C_DONE] = 0, 0
        ph = self.pending_heap
        self._mark, self._dead_mark, self._causes, self._dead_causes = len(self.out_blobs), len(self.dead), [], []
        try:
            while True:
                clk[W.K_STOP] = min(store.disk_min, ph[0][0] if ph else _INF)
                w = self._win  # arrays are replaced when they grow
                status = W.run(kind, t, kh, keep, bt, w.ix, w.fifo, w.heap, w.free, w.s_f, w.s_i, w.s_b, w.bcount,
                               w.px, w.bloom, w.out, ctr, clk)  # fmt: skip
                if status == W.DONE:
                    break
                i = int(ctr[W.C_I])
                if status == W.STOP_SPILL:  # i is the next event, maybe past the end
                    store.spill()
                    continue
                self._cause = i
                if arrivals is not None:
                    self.arrival_ms = arrivals[i]
                if status == W.STOP_EVENT:  # the clock has moved for it
                    self._handle(items[i], float(t[i]), int(kh[i]), bool(keep[i]), records[i], srcs[i], offsets[i])
                    ctr[W.C_I], ctr[W.C_DONE] = i + 1, 0
                elif status == W.STOP_ADVANCE:
                    clk[W.K_NOW] = t[i]
                    clk[W.K_WM] = t[i] - self.lateness_s
                    self._advance(float(clk[W.K_WM]))
                    ctr[W.C_DONE] = 1
                else:  # NEED_SLOTS: closed slots first go back, then more if still short
                    self._flush(t, arrivals)
                    if not ctr[W.C_FREE]:
                        win.grow()
            self._flush(t, arrivals)
        finally:
            store.unpin(bt)
        if arrivals is not None:
            self.arrival_ms = arrivals[-1]
        m = self.m
        n_act = int(np.count_nonzero(kind == W.KIND_ACTION))
        n_bad = int(np.count_nonzero(kind == W.KIND_BAD))
        n_other = int(np.count_nonzero(kind == W.KIND_OTHER))
        m.events_in += n
        m.impressions_in += n - n_act - n_bad - n_other
        m.actions_in += n_act
        m.bad_records += n_bad
        m.dead_letters += n_bad
        m.other_events_in += n_other
        m.late_impressions += int(ctr[W.C_LATE]) - late0

    def _columns(self, items: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What the compiled loop reads of each item: kind, event time, key hash (impressions)
        and down-sampling decision."""
        n = len(items)
        kind = np.fromiter(map(_KIND.get, map(type, items), itertools.repeat(W.KIND_OTHER)), np.int8, n)
        t = np.fromiter(map(_event_time, items), np.float64, n)
        if np.count_nonzero(kind > W.KIND_ACTION) == 0:  # impressions and actions only: all have keys
            kh = W.key_hashes(zip(map(_request_id, items), map(_item_id, items), strict=True))
        else:
            kh = np.zeros(n, np.int64)
            idx = np.flatnonzero(kind == W.KIND_IMPRESSION)
            if idx.shape[0]:
                kh[idx] = W.key_hashes([(items[j].request_id, items[j].item_id) for j in idx.tolist()])
        if self.rate == 1.0:
            keep = np.ones(n, np.uint8)
        else:
            ids = [getattr(ev, "event_id", 0) for ev in items]  # a Bad record has none
            keep = keep_negatives(ids, self.rate, self.config.sampling_seed).astype(np.uint8)
        return kind, t, kh, keep

    def _handle(self, ev: Any, t: float, h: int, keep: bool, record: bytes, src: int, offset: int) -> None:
        """One event the compiled loop left to Python (its clock step done)."""
        m = self.m
        cls = type(ev)
        if cls is Header:
            key = (ev.request_id, ev.item_id)
            store = self.store
            e = store.get(key)
            if e is not None:
                if e.event_id == ev.event_id:
                    m.duplicates += 1
                else:
                    self._refuse(
                        src, offset, record, "item_id",
                        f"impression.item_id: request {ev.request_id!r} already has an impression of "
                        f"item {ev.item_id!r} (event_id {e.event_id!r})",
                    )  # fmt: skip
                return
            e = Entry(record, ev.event_id, t, ev.user_id, self._next_seq(), src, offset, keep)
            store.add(key, e)
            held = self.pending.pop(key, None)
            if held:
                self.n_held -= len(held)
                self._win.pending_add(h, -len(held))
                label_bit = self.label_bit
                for a in held:
                    self._join(key, e, a.action, label_bit[a.action.type], a.src, a.offset, a.record)
        elif cls is WireAction:
            bit = self.label_bit.get(ev.type)
            if bit is None:
                m.ignored_actions += 1
                return
            key = (ev.request_id, ev.item_id)
            e = self.store.get(key)
            if e is not None:
                self._join(key, e, ev, bit, src, offset, record)
                return
            if t < self.watermark:
                m.late_actions += 1
                return
            waiting = self.pending.get(key)
            if waiting is None:
                waiting = self.pending[key] = []
            elif any(a.action.event_id == ev.event_id for a in waiting):
                m.duplicates += 1
                m.duplicate_actions += 1
                return
            seq = self._next_seq()
            waiting.append(Held(ev, seq, src, offset, record))
            heapq.heappush(self.pending_heap, (t, seq, key))
            self.n_held += 1
            self._win.pending_add(W.key_hash(key), 1)
        elif cls is Bad:
            self._dead((src, offset, ev.field, ev.reason, record))

    def _join(self, key: Key, e: Entry, a: WireAction, bit: int, src: int, offset: int, record: bytes) -> None:
        m = self.m
        if a.event_id in e.action_ids:
            m.duplicates += 1
            m.duplicate_actions += 1
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
            self._emit(e.record, e.labels, e.src, e.offset, True, self.event_time, self.arrival_ms)
            e.emitted = True
        self.store.update(key, e)

    def _flush(self, t: np.ndarray, arrivals: list[int] | None) -> None:
        """Emit what the compiled loop closed since the last flush, give the slots back, and put
        this process call's outputs since then in event order (each close right before the
        outputs of the event that caused it, as the loop found them)."""
        n_py, n_py_dead = len(self._causes), len(self._dead_causes)
        if self._win.ctr[W.C_OUT]:
            self._emit_closed(t, arrivals)
        for cause, outs, mark, n_first in (
            (self._causes, (self.out_blobs, self.out_arrivals, self.out_ids, self.out_users, self.out_examples),
             self._mark, n_py),
            (self._dead_causes, (self.dead,), self._dead_mark, n_py_dead),
        ):  # fmt: skip
            if 0 < n_first < len(cause):  # outputs from Python and from closes: interleave them
                key = np.asarray(cause, np.int64) * 2 + (np.arange(len(cause)) < n_first)
                order = np.argsort(key, kind="stable")
                if (order[1:] < order[:-1]).any():
                    js = order.tolist()
                    for lst in outs:
                        if lst is not None:
                            lst[mark:] = pick(lst[mark:], js)
        self._mark, self._dead_mark, self._causes, self._dead_causes = len(self.out_blobs), len(self.dead), [], []

    def _emit_closed(self, t: np.ndarray, arrivals: list[int] | None) -> None:
        """Emit what the compiled loop closed (in ``out``: slot, index of the event that moved
        the watermark past it), then give the slots back."""
        store, win = self.store, self._win
        out = win.out[: int(win.ctr[W.C_OUT])]
        slots = out[:, 0].copy()
        labels = win.s_i[slots, W.I_LABELS]
        emitted = win.s_b[slots, W.B_EMITTED] != 0
        due = ((labels != 0) | (win.s_b[slots, W.B_KEEP] != 0)) & ~emitted
        idx = np.flatnonzero(due)
        self.m.negatives_dropped += slots.shape[0] - idx.shape[0] - int(np.count_nonzero(emitted))
        if idx.shape[0]:
            where = store.where
            causes = out[idx, 1].tolist()
            at = t[out[idx, 1]].tolist()
            arr = [arrivals[c] for c in causes] if arrivals is not None else [self.arrival_ms] * idx.shape[0]
            for s, lab, when, arrival, cause in zip(slots[idx].tolist(), labels[idx].tolist(), at, arr, causes,
                                                    strict=True):  # fmt: skip
                record, src, offset = where(s)
                self._cause = cause
                self._emit(record, lab, src, offset, lab != 0, when, arrival)
        store.release(slots)
        win.ctr[W.C_OUT] = 0

    def _advance(self, wm: float) -> None:
        """The watermark is ``wm`` (set): close the windows that end before it, from memory and
        disk, and drop the held actions older than it."""
        store, win = self.store, self._win
        slots, disk = store.close_before(wm)
        now, arrival = self.event_time, self.arrival_ms
        m = self.m
        if disk:
            mem = [(float(win.s_f[s, W.F_END]), int(win.s_i[s, W.I_SEQ]), s) for s in slots.tolist()]
            order = heapq.merge(mem, disk, key=lambda x: (x[0], x[1]))
        else:
            order = ((0.0, 0, s) for s in slots.tolist())
        for _, _, x in order:
            if isinstance(x, int):
                labels, keep = int(win.s_i[x, W.I_LABELS]), bool(win.s_b[x, W.B_KEEP])
                emitted = bool(win.s_b[x, W.B_EMITTED])
                if (labels or keep) and not emitted:
                    record, src, offset = store.where(x)
                    self._emit(record, labels, src, offset, labels != 0, now, arrival)
                elif not emitted:
                    m.negatives_dropped += 1
            elif (x.labels or x.keep) and not x.emitted:
                self._emit(x.record, x.labels, x.src, x.offset, x.labels != 0, now, arrival)
            elif not x.emitted:
                m.negatives_dropped += 1
        store.release(slots)
        ph, pending = self.pending_heap, self.pending
        while ph and ph[0][0] < wm:
            _, seq, key = heapq.heappop(ph)
            waiting = pending.get(key)
            if not waiting:
                continue  # its impression came: the item was stale
            for j, a in enumerate(waiting):
                if a.seq == seq:
                    del waiting[j]
                    self.m.unmatched_actions += 1
                    self.n_held -= 1
                    win.pending_add(W.key_hash(key), -1)
                    break
            if not waiting:
                del pending[key]

    def _emit(self, record: bytes, labels: int, src: int, offset: int, positive: bool, at: float,
              arrival: int) -> None:  # fmt: skip
        """Build, encode and queue the example of an impression (``at``: the clock when it went
        out; ``arrival``: when its cause reached the log)."""
        try:
            imp, user, item, context = impression(record)
            feats = merge_features(user, item, context, self.reserved)
        except SchemaError as exc:
            reason = str(exc)
            field = reason.split(":", 1)[0].partition(".")[2] or "<record>"
            self.m.rejected_events += 1
            self.m.dead_letters += 1
            self._dead((src, offset, field, reason, record))
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
            emitted_at=at,
            user_id=imp.user_id,
            item_id=imp.item_id,
            position=imp.position,
            model_version=imp.model_version,
            features=feats,
            labels=self._labels[labels].copy(),
            sample_weight=weight,
            sampling_rate=rate,
        )
        # encoded now, so the example's dicts are freed before the collector could scan them
        self.out_blobs.append(self._encode(ex))
        self.out_arrivals.append(arrival)
        self.out_ids.append(imp.event_id)
        self.out_users.append(imp.user_id)
        self._causes.append(self._cause)
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
        self._dead((src, offset, field, reason, record))

    def _dead(self, letter: DeadRecord) -> None:
        self.dead.append(letter)
        self._dead_causes.append(self._cause)

    # ---- end of stream, checkpoints ----------------------------------------------------------

    def drain(self) -> None:
        """End of stream: close every window and drop every held action (watermark = inf)."""
        self._win.clock[W.K_WM] = _INF
        self._advance(_INF)
        self.drained = True

    def snapshot(self) -> CoreState:
        held = [h for waiting in self.pending.values() for h in waiting]
        counters = {name: getattr(self.m, name) for name in COUNTERS}
        return CoreState(self.event_time, self.watermark, self.seq, self.drained, held, counters)

    def restore(self, state: CoreState) -> None:
        win = self._win
        win.clock[W.K_NOW], win.clock[W.K_WM], win.ctr[W.C_SEQ] = state.event_time, state.watermark, state.seq
        self.drained = state.drained
        self.pending.clear()
        self.pending_heap = []
        win.pending_clear()
        for h in state.held:
            key = (h.action.request_id, h.action.item_id)
            self.pending.setdefault(key, []).append(h)
            self.pending_heap.append((h.action.event_time, h.seq, key))
            win.pending_add(W.key_hash(key), 1)
        heapq.heapify(self.pending_heap)
        self.n_held = len(state.held)
        for name, value in state.counters.items():
            if name in COUNTERS:
                setattr(self.m, name, value)

    def metrics(self) -> JoinerMetrics:
        m = JoinerMetrics(**{name: getattr(self.m, name) for name in COUNTERS})
        m.open_impressions = len(self.store)
        m.open_impressions_on_disk = self.store.n_spilled
        m.held_actions = self.n_held
        m.watermark = self.watermark
        m.event_time = self.event_time
        return m
