"""The joiner's state store: open impressions in memory up to a budget, the rest in SQLite, and
the checkpoint; a SQLite transaction is what makes a checkpoint.

An open impression (one whose window has not closed) is an :class:`Entry`. In memory, up to
``memory_max`` of them, an entry is a slot of :class:`~freshrec.joiner._windows.Windows`
(columns behind a compiled hash index, which the compiled join reads and writes directly) plus a
reference into the batch of Python objects it was read with; :meth:`StateStore.get` hands out an
:class:`Entry` copy and :meth:`StateStore.update` writes changes back. Past the budget, the
entries that close first are spilled, in batches, to the ``spill`` table of ``state.sqlite``
(the paper's "older ones in an on-disk key-value store"). Where an entry lives never changes what
the joiner emits: entries close in the order (window end, arrival) from memory and disk alike.

Crash safety: the database always has one write transaction open. Spills, updates of spilled
entries and deletions of closed ones go into it. :meth:`StateStore.commit` writes the in-memory
entries added or changed since the last checkpoint to a new snapshot file (fsynced), then
records that file, drops the files whose entries have all closed, stores the caller's checkpoint
record, and commits, as one SQLite transaction, then opens the next. A process killed between
checkpoints leaves the database exactly as the last checkpoint wrote it (SQLite drops the
uncommitted transaction; a snapshot file it had not recorded yet is deleted on reopen), so the
spilled entries, the in-memory snapshot and the input offsets always agree. Each entry is
written to a snapshot about once, however many checkpoints it lives through. The open
transaction also holds the database's write lock: a second joiner on one ``state_dir`` is refused.

On disk (``state_dir``)::

    state.sqlite                  (WAL mode)
      spill(key, end, seq, entry)      spilled entries; index on (end, seq) to close them in order
      snapshot(part, max_end, checksum) the snapshot files of the checkpoint
      meta(id = 1, data)               the caller's checkpoint record (offsets, counters, ...)
    snapshot/part-<n>.msgpack     in-memory entries added or changed between two checkpoints, as
                                  columns (:class:`_Part`) that refer to their records in the
                                  input log; restored in order, a later copy of an entry wins,
                                  entries the checkpoint's watermark closed (or spilled since)
                                  are dropped, and the records are read back from the log
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from operator import itemgetter
from pathlib import Path

import msgspec
import numpy as np
import xxhash

from freshrec._io import checksum_bytes, fsync_dir, sqlite_errors, write_durable
from freshrec.errors import BackendError, CorruptionError, StateError
from freshrec.joiner import _windows as W
from freshrec.joiner._wire import Header, decode_batch
from freshrec.stream.events import Id

__all__ = ["DB_NAME", "Entry", "StateStore"]

DB_NAME = "state.sqlite"
FORMAT_VERSION = 2  # 2: snapshot files hold columns (_Part)
APPLICATION_ID = 0x66726A6E  # "frjn": marks a SQLite file as a freshrec joiner state store
_INF = float("inf")
_PART = 100_000  # entries per snapshot file (~30 MB): bounds the memory of one encode
_MIN_FILTER_KEYS = 1 << 12  # the spilled-key filter is sized for at least this many keys

_SCHEMA = (
    "CREATE TABLE spill (key BLOB PRIMARY KEY, end REAL NOT NULL, seq INTEGER NOT NULL, entry BLOB NOT NULL)",
    "CREATE INDEX spill_close ON spill (end, seq)",
    "CREATE TABLE snapshot (part INTEGER PRIMARY KEY, max_end REAL NOT NULL, checksum TEXT NOT NULL)",
    "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {FORMAT_VERSION}",
)

Key = tuple[Id, Id]  # (request_id, item_id)


class Entry(msgspec.Struct, array_like=True, gc=False):
    """One open impression and what has been joined to it so far (mutable)."""

    record: bytes  # the impression as read; decoded whole only when its example is built
    event_id: Id
    event_time: float
    user_id: Id
    seq: int  # arrival order: the tie-break of the close order
    src: int  # index of the input partition it was read from (for dead letters)
    offset: int  # its offset there
    keep: bool  # the down-sampling decision, should it end a negative
    labels: int = 0  # bit i set: an action of label type i joined
    emitted: bool = False  # its example is out (first_action mode)
    action_ids: tuple[Id, ...] = ()  # event ids of the joined actions (duplicates are dropped)


_encoder = msgspec.msgpack.Encoder()
_entry = msgspec.msgpack.Decoder(Entry)


class _Part(msgspec.Struct, array_like=True):
    """A snapshot file: entries as columns. Their records are not stored: the input log holds
    them (``src``, ``offset``), and keys and ids are decoded from them again at restore. The
    numeric columns are raw little-endian arrays."""

    src: bytes  # int64, index of the input partition
    offset: bytes  # int64
    t: bytes  # float64, event time
    seq: bytes  # int64
    keep: bytes  # uint8
    labels: bytes  # int64
    emitted: bytes  # uint8
    acts: list[tuple[int, tuple[Id, ...]]]  # (row, joined action ids) where any
    digest: bytes  # uint64 xxh3 of each record: a restore checks it reads the same records back


Fetch = Callable[[list[tuple[int, int]]], list[bytes]]  # (source index, offset) pairs -> records


_part = msgspec.msgpack.Decoder(_Part)
_key = msgspec.msgpack.Decoder(tuple[Id, Id])


class _DiskKeys:
    """A Bloom filter of the key hashes in the spill table, so that a key absent from memory costs
    a SQLite lookup only when it may be on disk (every impression looks its key up, to refuse a
    second one; at 1M impressions with a third spilled, those lookups were a fifth of the run).
    The compiled join reads the same bits.

    16-32 bits per key it was sized for, 4 probes: at most 0.24% false positives when full (0.09%
    measured at 21 bits). It cannot forget a key, so closed entries leave their bits set;
    :meth:`StateStore._rebuild_disk_keys` starts it afresh from the spill table once it is full,
    sized for four times the keys on disk then: O(1) amortised per spilled entry, and 2-16 bytes
    per key on disk against ~1.7 KB per entry held in memory, so the memory budget still bounds
    the state. Key hashes are Python's ``hash`` (salted per process): the filter is never stored."""

    __slots__ = ("added", "bits", "capacity", "mask")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(_MIN_FILTER_KEYS, capacity)
        n_bits = 1 << (16 * self.capacity - 1).bit_length()
        self.bits = np.zeros(n_bits >> 3, np.uint8)
        self.mask = n_bits - 1
        self.added = 0

    def add(self, hashes: np.ndarray) -> None:
        W.bloom_add(self.bits, self.mask, np.ascontiguousarray(hashes, np.int64))
        self.added += hashes.shape[0]

    def __contains__(self, h: int) -> bool:
        return bool(W.bloom_has(self.bits, self.mask, h))


def pick(items: list, js: list[int]) -> list:
    """``[items[j] for j in js]``, in C (the joiner's way of reordering and gathering its lists)."""
    if len(js) <= 1:
        return [items[j] for j in js]
    return list(itemgetter(*js)(items))


class _ReadBatch:
    """The objects of windows opened by the compiled join: the lists one ``process`` call read."""

    __slots__ = ("items", "offsets", "records", "srcs")

    def __init__(self, items: list, records: list[bytes], srcs: list[int], offsets: list[int]) -> None:
        self.items, self.records, self.srcs, self.offsets = items, records, srcs, offsets

    def key(self, j: int) -> Key:
        it = self.items[j]
        return (it.request_id, it.item_id)

    def where(self, j: int) -> tuple[bytes, int, int]:
        return self.records[j], self.srcs[j], self.offsets[j]

    def gather(self, js: list[int]) -> tuple[list[bytes], list[int], list[int]]:
        """(records, sources, offsets) at positions ``js``."""
        return pick(self.records, js), pick(self.srcs, js), pick(self.offsets, js)

    def entry(self, j: int, t: float, seq: int, keep: bool, labels: int, emitted: bool, acts: tuple) -> Entry:
        it = self.items[j]
        return Entry(self.records[j], it.event_id, t, it.user_id, seq, self.srcs[j], self.offsets[j], keep, labels,
                     emitted, acts)  # fmt: skip


_Row = tuple[float, int, bool, int, bool, tuple, int]  # (t, seq, keep, labels, emitted, action ids, digest)


def _part_rows(part: _Part, window_s: float, watermark: float, path: Path) -> Iterator[tuple[tuple[int, int], _Row]]:
    """((source index, offset), row) of the entries of a snapshot file the watermark has not closed."""
    cols = [np.frombuffer(part.src, np.int64), np.frombuffer(part.offset, np.int64),
            np.frombuffer(part.t, np.float64), np.frombuffer(part.seq, np.int64), np.frombuffer(part.keep, np.uint8),
            np.frombuffer(part.labels, np.int64), np.frombuffer(part.emitted, np.uint8),
            np.frombuffer(part.digest, np.uint64)]  # fmt: skip
    n = cols[0].shape[0]
    if any(c.shape[0] != n for c in cols):
        raise CorruptionError(f"joiner state: snapshot file {path} has columns of different lengths")
    src, offset, t, seq, keep, labels, emitted, digest = (c.tolist() for c in cols)
    acts = dict(part.acts)
    for k in range(n):
        if t[k] + window_s >= watermark:
            yield (src[k], offset[k]), (t[k], seq[k], bool(keep[k]), labels[k], bool(emitted[k]), acts.get(k, ()),
                                        digest[k])  # fmt: skip


class _EntryBatch:
    """The objects of windows opened from Python (:meth:`StateStore.add`): (key, Entry) pairs."""

    __slots__ = ("entries", "keys")

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.entries: list[Entry] = []

    def key(self, j: int) -> Key:
        return self.keys[j]

    def where(self, j: int) -> tuple[bytes, int, int]:
        e = self.entries[j]
        return e.record, e.src, e.offset

    def gather(self, js: list[int]) -> tuple[list[bytes], list[int], list[int]]:
        es = pick(self.entries, js)
        return [e.record for e in es], [e.src for e in es], [e.offset for e in es]

    def entry(self, j: int, t: float, seq: int, keep: bool, labels: int, emitted: bool, acts: tuple) -> Entry:
        e = self.entries[j]
        return Entry(e.record, e.event_id, t, e.user_id, seq, e.src, e.offset, keep, labels, emitted, acts)


_ENTRY_BATCH = 4096  # entries per batch of Python-opened windows


class _MemoryView(Mapping):
    """The in-memory entries as a read-only mapping (copies, as :meth:`StateStore.get` returns)."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __len__(self) -> int:
        return len(self._store.win)

    def __contains__(self, key: object) -> bool:
        return self._store._slot_of(key) >= 0  # type: ignore[arg-type]

    def __getitem__(self, key: Key) -> Entry:
        s = self._store._slot_of(key)
        if s < 0:
            raise KeyError(key)
        return self._store._entry_of(s)

    def __iter__(self) -> Iterator[Key]:
        st = self._store
        return iter([st._key_of(s) for s in st.win.live_since(-(1 << 62)).tolist()])


class StateStore:
    """Open impressions (memory + SQLite spill) and the checkpoint record. See the module doc.

    Not thread-safe: one joiner owns it.
    """

    def __init__(self, path: str | Path, memory_max: int, window_s: float) -> None:
        self.path = Path(path)
        self.file = self.path / DB_NAME
        self.memory_max = int(memory_max)
        self.window_s = float(window_s)
        # the open windows in memory: slot columns + a compiled index (see _windows.py); each slot
        # refers to the Python objects of its impression in a batch (batch index, position)
        W.warmup()
        self.win = W.Windows(self.memory_max, self.window_s)
        self._batches: list[_ReadBatch | _EntryBatch | None] = []
        self._free_batches: list[int] = []
        self._pinned: set[int] = set()  # batches still being filled: never dropped
        self._entry_batch = -1  # the batch Python-opened windows go to
        self._acts: dict[int, tuple[Id, ...]] = {}  # slot -> joined action ids (slots with labels only)
        self._first_new = 0  # entries with seq >= this were added since the last commit
        self._dirty: set[int] = set()  # slots changed since the last commit
        self.n_spilled = 0  # entries on disk
        self._disk_keys = _DiskKeys(0)  # may-be-on-disk filter of the spilled keys
        self._disk_min = float("inf")  # smallest window end on disk
        self._evict = max(1, self.memory_max // 10)  # spill in batches: one executemany each
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create the joiner state directory {self.path}: {exc}") from exc
        self.parts_dir = self.path / "snapshot"
        with self._sqlite("open the database"):
            # only another joiner ever holds the write lock: fail fast rather than wait for it
            self._con = sqlite3.connect(self.file, timeout=0.2, isolation_level=None, check_same_thread=False)
        try:
            self._init()
            self._parts = self._recorded_parts()
            self._remove_orphans()
            if self.n_spilled:
                self._rebuild_disk_keys()
        except BaseException:
            self._con.close()
            raise

    # ---- SQLite ------------------------------------------------------------------------------

    def _sqlite(self, what: str) -> AbstractContextManager[None]:
        return sqlite_errors(f"joiner state {self.file}", what, locked=StateError,
                             locked_hint=" (in use by another joiner)")  # fmt: skip

    def _init(self) -> None:
        con = self._con
        with self._sqlite("open the database"):
            con.execute("PRAGMA busy_timeout = 200")
            if con.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise BackendError(f"joiner state {self.file}: SQLite cannot use WAL mode here")
            con.execute("PRAGMA synchronous = FULL")  # a checkpoint survives a power cut
            con.execute("PRAGMA cache_size = -32768")  # 32 MiB: spilled entries are read back to close
            con.execute("BEGIN IMMEDIATE")  # held until close(): also the lock against a second joiner
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
            if app_id == 0 and version == 0 and tables == 0:
                for stmt in _SCHEMA:
                    con.execute(stmt)
                con.execute("COMMIT")
                con.execute("BEGIN IMMEDIATE")
            elif app_id != APPLICATION_ID:
                raise StateError(f"{self.file} is a SQLite database but not a freshrec joiner state")
            elif version != FORMAT_VERSION:
                raise StateError(
                    f"joiner state {self.file} has format version {version}; this freshrec reads {FORMAT_VERSION}"
                )
            row = con.execute("SELECT count(*), min(end) FROM spill").fetchone()
            self.n_spilled = int(row[0])
            self._disk_min = float(row[1]) if row[1] is not None else float("inf")

    # ---- entries -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.win) + self.n_spilled

    @property
    def memory(self) -> Mapping[Key, Entry]:
        """The in-memory entries, read-only (change them through :meth:`add`/:meth:`update`).
        ``n_spilled`` counts the others."""
        return _MemoryView(self)

    @property
    def disk_min(self) -> float:
        """The earliest window end on disk (inf if none)."""
        return self._disk_min if self.n_spilled else _INF

    # ---- slots and their batches ---------------------------------------------------------------

    def add_batch(self, items: list, records: list[bytes], srcs: list[int], offsets: list[int]) -> int:
        """Register the lists of a batch the compiled join opens windows from; pinned (kept)
        until :meth:`unpin`, then kept while one of its windows is open."""
        return self._new_batch(_ReadBatch(items, records, srcs, offsets))

    def _new_batch(self, batch: _ReadBatch | _EntryBatch) -> int:
        if self._free_batches:
            bt = self._free_batches.pop()
            self._batches[bt] = batch
        else:
            bt = len(self._batches)
            self._batches.append(batch)
            self.win.batch_slot(bt)
        self._pinned.add(bt)
        return bt

    def unpin(self, bt: int) -> None:
        self._pinned.discard(bt)
        if self.win.bcount[bt] == 0:
            self._drop_batches([bt])

    def _drop_batches(self, emptied: Iterable[int]) -> None:
        for bt in emptied:
            if bt not in self._pinned and self._batches[bt] is not None:
                self._batches[bt] = None
                self._free_batches.append(bt)

    def _slot_of(self, key: Key) -> int:
        """The slot of ``key``'s open window in memory, or -1."""
        s = self.win.find(W.key_hash(key))
        if s >= 0 and self._key_of(s) != key:
            return -1  # another key with the same hash
        return s

    def _key_of(self, s: int) -> Key:
        si = self.win.s_i[s]
        return self._batches[si[W.I_BT]].key(int(si[W.I_BJ]))  # type: ignore[union-attr]

    def where(self, s: int) -> tuple[bytes, int, int]:
        """(record, source index, offset) of slot ``s``'s impression."""
        si = self.win.s_i[s]
        return self._batches[si[W.I_BT]].where(int(si[W.I_BJ]))  # type: ignore[union-attr]

    def _entry_of(self, s: int) -> Entry:
        w = self.win
        si, sb = w.s_i[s], w.s_b[s]
        labels = int(si[W.I_LABELS])
        return self._batches[si[W.I_BT]].entry(  # type: ignore[union-attr]
            int(si[W.I_BJ]), float(w.s_f[s, W.F_T]), int(si[W.I_SEQ]), bool(sb[W.B_KEEP]), labels,
            bool(sb[W.B_EMITTED]), self._acts.get(s, ()) if labels else (),
        )  # fmt: skip

    def release(self, slots: np.ndarray) -> None:
        """Give back the slots of closed (or spilled) windows, once their entries are used."""
        if not slots.shape[0]:
            return
        if self._acts:
            acts = self._acts
            for s in slots[self.win.s_i[slots, W.I_LABELS] != 0].tolist():
                acts.pop(s, None)
        emptied = self.win.release(slots)
        if emptied.shape[0]:
            self._drop_batches(emptied.tolist())

    # ---- entries -----------------------------------------------------------------------------

    def get(self, key: Key) -> Entry | None:
        """A copy of the open entry of ``key``, or None: pass it to :meth:`update` after
        changing it."""
        h = W.key_hash(key)
        s = self.win.find(h)
        if s >= 0 and self._key_of(s) == key:
            return self._entry_of(s)
        if not self.n_spilled or h not in self._disk_keys:
            return None
        with self._sqlite("read a spilled entry"):
            row = self._con.execute("SELECT entry FROM spill WHERE key = ?", (_encoder.encode(key),)).fetchone()
        return None if row is None else self._decode(row[0])

    def add(self, key: Key, entry: Entry) -> float:
        """Add a new entry (``key`` must not be open); returns its window end."""
        end = entry.event_time + self.window_s
        if self._entry_batch < 0 or len(self._batches[self._entry_batch].keys) >= _ENTRY_BATCH:  # type: ignore[union-attr]
            if self._entry_batch >= 0:
                self.unpin(self._entry_batch)
            self._entry_batch = self._new_batch(_EntryBatch())
        batch = self._batches[self._entry_batch]
        assert isinstance(batch, _EntryBatch)
        h = W.key_hash(key)
        s = self.win.insert(h, entry.event_time, end, entry.seq, entry.keep, entry.labels, entry.emitted,
                            self._entry_batch, len(batch.keys))  # fmt: skip
        if s < 0:  # another open key has this hash: this one lives on disk
            self._spill_rows([(key, entry)], np.array([h], np.int64))
            return end
        batch.keys.append(key)
        batch.entries.append(entry)
        if entry.action_ids:
            self._acts[s] = entry.action_ids
        if len(self.win) > self.memory_max:
            self.spill()
        return end

    def update(self, key: Key, entry: Entry) -> None:
        """Record that an entry changed (and write it back if :meth:`get` read it from disk)."""
        s = self._slot_of(key)
        if s >= 0:
            w = self.win
            w.s_i[s, W.I_LABELS] = entry.labels
            w.s_b[s, W.B_EMITTED] = entry.emitted
            if entry.action_ids:
                self._acts[s] = entry.action_ids
            self._dirty.add(s)
            return
        with self._sqlite("update a spilled entry"):
            self._con.execute(
                "UPDATE spill SET entry = ? WHERE key = ?", (_encoder.encode(entry), _encoder.encode(key))
            )

    def next_end(self) -> float:
        """The earliest window end of any open entry (inf if none)."""
        return min(self.win.top_end(), self.disk_min)

    def close_before(self, watermark: float) -> tuple[np.ndarray, list[tuple[float, int, Entry]]]:
        """Remove the entries whose window ends before ``watermark``: (the memory slots, in
        (end, seq) order, to :meth:`release` once used; the entries from disk as (end, seq,
        entry), in that order)."""
        slots = self.win.close_before(watermark)[:, 0].copy()
        self.win.ctr[W.C_OUT] -= slots.shape[0]
        if not (self.n_spilled and self._disk_min < watermark):
            return slots, []
        with self._sqlite("close spilled entries"):
            con = self._con
            rows = con.execute(
                "SELECT end, seq, entry FROM spill WHERE end < ? ORDER BY end, seq", (watermark,)
            ).fetchall()
            con.execute("DELETE FROM spill WHERE end < ?", (watermark,))
            self.n_spilled -= len(rows)
            low = con.execute("SELECT min(end) FROM spill").fetchone()[0]
        self._disk_min = float(low) if low is not None else _INF
        self._sync_filter()
        return slots, [(end, seq, self._decode(blob)) for end, seq, blob in rows]

    def closing(self, watermark: float) -> list[Entry]:
        """Remove and return the entries whose window ends before ``watermark``, ordered by
        (end, seq) across memory and disk."""
        slots, disk = self.close_before(watermark)
        w = self.win
        mem = [(float(w.s_f[s, W.F_END]), int(w.s_i[s, W.I_SEQ]), self._entry_of(s)) for s in slots.tolist()]
        self.release(slots)
        return [e for _, _, e in heapq.merge(mem, disk, key=lambda t: (t[0], t[1]))]

    def spill(self) -> None:
        """Move the in-memory entries that close first to disk until a tenth of the budget is free."""
        w = self.win
        n = min(len(w) - self.memory_max + (self._evict if self.memory_max else 0), len(w))
        if n <= 0:
            return
        start = int(w.ctr[W.C_OUT])
        slots = w.close_before(_INF, limit=n)[:, 0].copy()
        w.ctr[W.C_OUT] = start
        pairs = [(self._key_of(s), self._entry_of(s)) for s in slots.tolist()]
        self._spill_rows(pairs, w.s_i[slots, W.I_HASH])
        self.release(slots)

    def _spill_rows(self, pairs: list[tuple[Key, Entry]], hashes: np.ndarray) -> None:
        enc, w = _encoder.encode, self.window_s
        rows = []
        low = self._disk_min
        for key, e in pairs:
            end = e.event_time + w
            low = min(low, end)
            rows.append((enc(key), end, e.seq, enc(e)))
        # into the filter before the table: whatever fails later, no key is on disk unannounced
        self._disk_keys.add(hashes)
        with self._sqlite("spill entries"):
            self._con.executemany("INSERT INTO spill (key, end, seq, entry) VALUES (?, ?, ?, ?)", rows)
        self.n_spilled += len(rows)
        if self._disk_keys.added > self._disk_keys.capacity:
            self._rebuild_disk_keys()  # reads the spill table: these keys included
        self._disk_min = low
        self._sync_filter()

    def _sync_filter(self) -> None:
        """Show the compiled join the disk filter while anything is on disk."""
        self.win.set_bloom(self._disk_keys.bits, self._disk_keys.mask if self.n_spilled else 0)

    def _rebuild_disk_keys(self) -> None:
        """A fresh filter of the keys on disk, sized for four times as many."""
        with self._sqlite("list spilled keys"):
            blobs = [r[0] for r in self._con.execute("SELECT key FROM spill")]
        try:
            keys = [_key.decode(b) for b in blobs]
        except msgspec.MsgspecError as exc:
            raise CorruptionError(f"joiner state {self.file}: a spilled key does not decode: {exc}") from exc
        self._disk_keys = _DiskKeys(4 * len(keys))
        self._disk_keys.add(W.key_hashes(keys))
        self._sync_filter()

    def _decode(self, blob: bytes) -> Entry:
        try:
            return _entry.decode(blob)
        except msgspec.MsgspecError as exc:
            raise CorruptionError(f"joiner state {self.file}: a spilled entry does not decode: {exc}") from exc

    # ---- checkpoints -------------------------------------------------------------------------

    def _recorded_parts(self) -> dict[int, str]:
        with self._sqlite("list the snapshot files"):
            rows = self._con.execute("SELECT part, checksum FROM snapshot ORDER BY part").fetchall()
        return {int(p): str(c) for p, c in rows}

    def _part_path(self, part: int) -> Path:
        return self.parts_dir / f"part-{part:012d}.msgpack"

    def _remove_orphans(self) -> None:
        """Delete snapshot files no checkpoint records (written by a run killed before it committed)."""
        try:
            self.parts_dir.mkdir(exist_ok=True)
            for p in self.parts_dir.iterdir():
                if not (p.name.startswith("part-") and p.name.endswith(".msgpack")):
                    continue
                try:
                    recorded = int(p.name[5:-8]) in self._parts
                except ValueError:
                    continue
                if not recorded:
                    p.unlink()
        except OSError as exc:
            raise BackendError(f"joiner state {self.parts_dir}: cannot tidy the snapshot files: {exc}") from exc

    def commit(self, meta: bytes, watermark: float, next_seq: int) -> None:
        """Make a checkpoint: snapshot the in-memory entries added (seq >= the last commit's
        ``next_seq``) or changed since the last commit, drop the snapshot files whose entries all
        ended before ``watermark``, store ``meta``, and commit (see the module docstring).
        ``next_seq`` is the seq the next new entry will get (entries arrive in seq order)."""
        first, w = self._first_new, self.win
        slots = w.live_since(first)  # new since the last commit, in seq order
        if self._dirty:  # changed, and neither new nor closed since
            d = np.fromiter(self._dirty, np.int64, len(self._dirty))
            slots = np.concatenate((slots, d[(w.s_b[d, W.B_LIVE] != 0) & (w.s_i[d, W.I_SEQ] < first)]))
        live = w.s_b[: w.cap, W.B_LIVE] != 0
        # every entry here ends at or before the latest end in memory
        top = float(w.s_f[: w.cap, W.F_END][live].max()) if live.any() else -_INF
        new: list[tuple[int, float, str]] = []
        part = max(self._parts, default=-1) + 1
        try:
            for i in range(0, slots.shape[0], _PART):
                data = _encoder.encode(self._part_of(slots[i : i + _PART]))
                write_durable(self._part_path(part), data)
                new.append((part, top, checksum_bytes(data)))
                part += 1
            if new:
                fsync_dir(self.parts_dir)
        except OSError as exc:
            raise BackendError(f"joiner state {self.parts_dir}: cannot write a snapshot file: {exc}") from exc
        con = self._con
        with self._sqlite("write a checkpoint"):
            con.executemany("INSERT INTO snapshot (part, max_end, checksum) VALUES (?, ?, ?)", new)
            done = [r[0] for r in con.execute("SELECT part FROM snapshot WHERE max_end < ?", (watermark,))]
            con.execute("DELETE FROM snapshot WHERE max_end < ?", (watermark,))
            con.execute("INSERT OR REPLACE INTO meta (id, data) VALUES (1, ?)", (meta,))
            con.execute("COMMIT")
            con.execute("BEGIN IMMEDIATE")
        self._first_new, self._dirty = next_seq, set()
        self._parts.update((p, c) for p, _, c in new)
        for p in done:
            del self._parts[p]
            self._part_path(p).unlink(missing_ok=True)

    def load_meta(self) -> bytes | None:
        """The last checkpoint's ``meta``, or None if there was none."""
        with self._sqlite("read the checkpoint"):
            row = self._con.execute("SELECT data FROM meta WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    def restore(self, watermark: float, fetch: Fetch) -> None:
        """Rebuild the in-memory entries of the last checkpoint, whose watermark was ``watermark``;
        ``fetch`` reads their records from the input log."""
        w = self.window_s
        with self._sqlite("read the checkpoint"):
            spilled = {r[0] for r in self._con.execute("SELECT key FROM spill")}
        rows: dict[tuple[int, int], _Row] = {}  # by where the impression is in the log
        for part, checksum in self._parts.items():
            path = self._part_path(part)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise CorruptionError(f"joiner state: snapshot file {path} is recorded but unreadable: {exc}") from exc
            if checksum_bytes(data) != checksum:
                raise CorruptionError(f"joiner state: snapshot file {path} fails its checksum")
            try:
                chunk = _part.decode(data)
            except msgspec.MsgspecError as exc:  # pragma: no cover - the checksum catches damage first
                raise CorruptionError(f"joiner state: snapshot file {path} does not decode: {exc}") from exc
            rows.update(_part_rows(chunk, w, watermark, path))  # a later copy wins
        where = sorted(rows, key=lambda p: rows[p][1])  # in seq order
        records = fetch(where) if where else []
        heads = decode_batch(records)
        enc = _encoder.encode
        self._clear_memory()
        for (src, offset), record, h in zip(where, records, heads, strict=True):
            t, seq, keep, labels, emitted, acts, digest = rows[(src, offset)]
            if type(h) is not Header or xxhash.xxh3_64_intdigest(record) != digest:
                raise StateError(
                    f"joiner state: input record {offset} of source {src} is not the impression the checkpoint "
                    f"refers to: the log under this state_dir is not the one the checkpoint was made on"
                )
            key = (h.request_id, h.item_id)
            if spilled and enc(key) in spilled:
                continue
            self.add(key, Entry(record, h.event_id, t, h.user_id, seq, src, offset, keep, labels, emitted, acts))
        self._first_new = 1 + max((r[1] for r in rows.values()), default=-1)
        self._dirty = set()

    def _part_of(self, slots: np.ndarray) -> _Part:
        """The snapshot file of ``slots``: their Python objects gathered per batch, in C."""
        w = self.win
        order = np.argsort(w.s_i[slots, W.I_BT], kind="stable")
        slots = slots[order]
        bts = w.s_i[slots, W.I_BT]
        cuts = np.flatnonzero(np.diff(bts)) + 1
        src: list[int] = []
        offset: list[int] = []
        digest: list[int] = []
        for grp in np.split(slots, cuts):
            if not grp.shape[0]:
                continue
            batch = self._batches[int(w.s_i[grp[0], W.I_BT])]
            rec, sr, o = batch.gather(w.s_i[grp, W.I_BJ].tolist())  # type: ignore[union-attr]
            src += sr
            offset += o
            digest += map(xxhash.xxh3_64_intdigest, rec)
        labels = w.s_i[slots, W.I_LABELS]
        acts = self._acts
        joined = [(k, acts[s]) for k, s in zip(np.flatnonzero(labels).tolist(), slots[labels != 0].tolist(),
                                                 strict=True) if s in acts]  # fmt: skip
        return _Part(
            np.asarray(src, np.int64).tobytes(), np.asarray(offset, np.int64).tobytes(),
            w.s_f[slots, W.F_T].tobytes(), w.s_i[slots, W.I_SEQ].tobytes(), w.s_b[slots, W.B_KEEP].tobytes(),
            labels.tobytes(), w.s_b[slots, W.B_EMITTED].tobytes(), joined, np.asarray(digest, np.uint64).tobytes(),
        )  # fmt: skip

    def _clear_memory(self) -> None:
        self.win.clear()
        self._batches, self._free_batches, self._pinned, self._entry_batch = [], [], set(), -1
        self._acts = {}

    def close(self) -> None:
        """Drop what was not committed and close the database. Idempotent."""
        con, self._con = self._con, None  # type: ignore[assignment]
        if con is None:
            return
        try:
            if con.in_transaction:
                con.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        finally:
            con.close()

    def entries(self) -> Iterator[tuple[Key, Entry]]:
        """Every open entry (memory first, then disk), for tests and inspection."""
        slots = self.win.live_since(-(1 << 62)).tolist()
        yield from [(self._key_of(s), self._entry_of(s)) for s in slots]
        with self._sqlite("list spilled entries"):
            rows = self._con.execute("SELECT key, entry FROM spill ORDER BY end, seq").fetchall()
        for k, blob in rows:
            yield _key.decode(k), self._decode(blob)

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r}, memory={len(self.win)}, disk={self.n_spilled})"
