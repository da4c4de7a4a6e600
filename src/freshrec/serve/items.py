"""The live catalog: which items can be recommended now, with their features.

Fed by item lifecycle events (``listed``, ``updated``, ``ended``), from two doors: the event
log, read by :class:`ItemTailer` (a background thread, from offset 0 so a restarted replica
rebuilds the catalog), and /v1/events, which applies the events it appends at once. An event
may therefore arrive twice; applying it is idempotent.

Order is event time, not arrival: an event older than the item's last applied event is ignored,
and an ``ended`` item stays ended against ``listed``/``updated`` events that are not later
than the end (at equal times the end comes last, as the simulator orders them; the last
``ended_memory`` ended items are remembered). An ``updated`` event for an item never listed
lists it (a replica that joined late still learns it). A ``listed`` event after the end, with a
later event time, relists the item.

Readers take an immutable :class:`CatalogView`, rebuilt only when the catalog changed.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from freshrec.errors import FreshrecError, StateError
from freshrec.stream import EventLog, ItemLifecycle, decode_many

__all__ = ["CatalogView", "ItemTailer", "LiveItems"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogView:
    """The live items at one catalog version, oldest listing first. Never mutated."""

    version: int
    ids: list[Any]
    features: list[dict[str, Any]]
    listed_at: np.ndarray  # (N,) float64 event time of each item's (re)listing

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class _Entry:
    features: dict[str, Any]
    event_time: float  # of the last applied event
    listed_at: float


class LiveItems:
    """Live items by id. Thread-safe: writers hold a lock; readers use :meth:`view`."""

    def __init__(self, ended_memory: int = 100_000) -> None:
        self._items: dict[Any, _Entry] = {}
        self._ended: OrderedDict[Any, float] = OrderedDict()  # item -> event time of its end
        self._ended_memory = ended_memory
        self._lock = threading.Lock()
        self._version = 0
        self._view = CatalogView(0, [], [], np.zeros(0))
        self.applied = 0  # events that changed the catalog
        self.ignored = 0  # events older than what the catalog already reflects

    @property
    def version(self) -> int:
        return self._version

    def __len__(self) -> int:
        return len(self._items)

    def get(self, item_id: Any) -> dict[str, Any] | None:
        entry = self._items.get(item_id)
        return entry.features if entry is not None else None

    def apply(self, events: Iterable[Any]) -> int:
        """Apply the :class:`ItemLifecycle` events among ``events`` (others are skipped);
        returns how many changed the catalog."""
        changed = 0
        with self._lock:
            for e in events:
                if type(e) is ItemLifecycle:
                    changed += self._apply_one(e)
            if changed:
                self._version += 1
        return changed

    def _apply_one(self, e: ItemLifecycle) -> int:
        entry = self._items.get(e.item_id)
        if entry is not None and e.event_time < entry.event_time:
            self.ignored += 1
            return 0
        if e.status == "ended":
            if entry is not None:
                del self._items[e.item_id]
            previous = self._ended.get(e.item_id)
            if previous is None or previous < e.event_time:
                self._ended[e.item_id] = e.event_time
                self._ended.move_to_end(e.item_id)
                while len(self._ended) > self._ended_memory:
                    self._ended.popitem(last=False)
            if entry is None:
                self.ignored += 1
                return 0
            self.applied += 1
            return 1
        ended_at = self._ended.get(e.item_id)
        if ended_at is not None:
            if e.event_time <= ended_at:  # at equal times an end comes last (the simulator's order)
                self.ignored += 1  # an echo from before the end
                return 0
            del self._ended[e.item_id]
        if entry is not None and entry.features == e.features and entry.event_time == e.event_time:
            return 0  # the same event again (both doors)
        listed_at = entry.listed_at if entry is not None else e.event_time
        self._items[e.item_id] = _Entry(dict(e.features), e.event_time, listed_at)
        self.applied += 1
        return 1

    def view(self) -> CatalogView:
        """The current live items (cached until the catalog changes)."""
        view = self._view
        if view.version == self._version:
            return view
        with self._lock:
            if self._view.version != self._version:
                entries = list(self._items.items())
                entries.sort(key=lambda kv: kv[1].listed_at)  # oldest first; stable for ties
                self._view = CatalogView(
                    self._version,
                    [k for k, _ in entries],
                    [v.features for _, v in entries],
                    np.array([v.listed_at for _, v in entries], np.float64),
                )
            return self._view


@dataclass
class TailerCounters:
    records: int = 0
    item_events: int = 0
    bad_records: int = 0
    errors: int = 0
    positions: dict[int, int] = field(default_factory=dict)  # partition -> next offset


class ItemTailer:
    """Reads item lifecycle events from ``topic`` into ``items`` in a daemon thread.

    :meth:`start` begins at offset 0 of every partition; :attr:`caught_up` is set once the
    tailer has read up to the end offsets that existed when it started."""

    def __init__(
        self, log_: EventLog, topic: str, items: LiveItems, *, batch: int = 10_000, poll_s: float = 0.05
    ) -> None:
        self.log = log_
        self.topic = topic
        self.items = items
        self.batch = batch
        self.poll_s = poll_s
        self.counters = TailerCounters()
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise StateError("cannot start the item tailer: it is already running")
        parts = self.log.partitions(self.topic)
        self._ends = {p: self.log.end_offset(self.topic, p) for p in range(parts)}
        self.counters.positions = dict.fromkeys(range(parts), 0)
        self._thread = threading.Thread(target=self._run, name="freshrec-item-tailer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def poll_once(self, timeout_s: float = 0.0) -> int:
        """Read what is available once in every partition; returns records read."""
        n = 0
        pos = self.counters.positions
        for p in list(pos):
            recs = self.log.read(self.topic, p, pos[p], self.batch, timeout_s if len(pos) == 1 else 0.0)
            if not recs:
                continue
            pos[p] = recs[-1].offset + 1
            events, bad = decode_many([r.value for r in recs])
            self.counters.records += len(recs)
            self.counters.bad_records += len(bad)
            for b in bad[:1]:
                log.warning("item tailer: bad record in %s[%d]: %s", self.topic, p, b.reason)
            self.counters.item_events += sum(type(e) is ItemLifecycle for e in events)
            self.items.apply(events)
            n += len(recs)
        if not self.caught_up.is_set() and all(pos[p] >= end for p, end in self._ends.items()):
            self.caught_up.set()
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.poll_once(self.poll_s):
                    self._stop.wait(self.poll_s if len(self.counters.positions) > 1 else 0.0)
            except StateError:
                return  # the log was closed under us: the server is stopping
            except FreshrecError as exc:  # a backend hiccup: count it, wait, retry
                self.counters.errors += 1
                log.warning("item tailer: %s", exc)
                self._stop.wait(1.0)
