"""The joiner's state store: open impressions in memory up to a budget, the rest in SQLite, and
the checkpoint; a SQLite transaction is what makes a checkpoint.

An open impression (one whose window has not closed) is an :class:`Entry`. The store keeps the
newest ``memory_max`` entries in a dict and spills the oldest beyond that, in batches, to the
``spill`` table of ``state.sqlite`` (the paper's "older ones in an on-disk key-value store").
Where an entry lives never changes what the joiner emits: :meth:`StateStore.closing` returns
the entries whose windows closed in the order (window end, arrival) from memory and disk alike.

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
    snapshot/part-<n>.msgpack     in-memory entries added or changed between two checkpoints;
                                  restored in order, a later copy of an entry wins, entries the
                                  checkpoint's watermark closed (or spilled since) are dropped
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import msgspec
import numpy as np

from freshrec._io import checksum_bytes, fsync_dir, sqlite_errors, write_durable
from freshrec.errors import BackendError, CorruptionError, StateError
from freshrec.stream.events import Id

__all__ = ["DB_NAME", "Entry", "StateStore"]

DB_NAME = "state.sqlite"
FORMAT_VERSION = 1
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
_part = msgspec.msgpack.Decoder(list[tuple[tuple[Id, Id], Entry]])
_key = msgspec.msgpack.Decoder(tuple[Id, Id])


class _Fifo:
    """The close order of the entries that arrived in window-end order (almost all of them):
    parallel lists (end, seq, key) consumed from ``head``, so closing is a bisect and a slice."""

    __slots__ = ("ends", "head", "keys", "seqs")

    def __init__(self, items: list[tuple[float, int, Key]] = ()) -> None:  # type: ignore[assignment]
        self.ends = [t[0] for t in items]
        self.seqs = [t[1] for t in items]
        self.keys = [t[2] for t in items]
        self.head = 0

    def __len__(self) -> int:
        return len(self.ends) - self.head

    def first(self) -> tuple[float, int, Key]:
        h = self.head
        return (self.ends[h], self.seqs[h], self.keys[h])

    def popleft(self) -> tuple[float, int, Key]:
        out = self.first()
        self.head += 1
        self._compact()
        return out

    def pop_keys_before(self, end: float) -> list[Key]:
        """Remove the items ending before ``end``; their keys, in order."""
        h = self.head
        k = bisect.bisect_left(self.ends, end, h)
        keys = self.keys[h:k]
        self.head = k
        self._compact()
        return keys

    def _compact(self) -> None:
        h = self.head
        if h > 4096 and 2 * h > len(self.ends):  # amortised O(1) per item
            del self.ends[:h], self.seqs[:h], self.keys[:h]
            self.head = 0


class _DiskKeys:
    """A Bloom filter of the keys in the spill table, so that a key absent from memory costs a
    SQLite lookup only when it may be on disk (every impression looks its key up, to refuse a
    second one; at 1M impressions with a third spilled, those lookups were a fifth of the run).

    16-32 bits per key it was sized for, 4 probes: at most 0.24% false positives when full (0.09%
    measured at 21 bits). It cannot forget a key, so closed entries leave their bits set;
    :meth:`StateStore._rebuild_disk_keys` starts it afresh from the spill table once it is full,
    sized for four times the keys on disk then: O(1) amortised per spilled entry, and 2-16 bytes
    per key on disk against ~1.7 KB per entry held in memory, so the memory budget still bounds
    the state. Keys hash with Python's ``hash`` (salted per process): the filter is never stored."""

    __slots__ = ("added", "bits", "capacity", "mask", "view")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(_MIN_FILTER_KEYS, capacity)
        n_bits = 1 << (16 * self.capacity - 1).bit_length()
        self.bits = bytearray(n_bits >> 3)  # read per key in Python (fast on a bytearray) ...
        self.view = np.frombuffer(self.bits, np.uint8)  # ... and written per batch in numpy
        self.mask = n_bits - 1
        self.added = 0

    def add(self, keys: list[Key]) -> None:
        h = np.fromiter(map(hash, keys), np.int64, len(keys)).view(np.uint64)
        step = (h >> np.uint64(32)) | np.uint64(1)
        mask = np.uint64(self.mask)
        for _ in range(4):
            b = h & mask
            np.bitwise_or.at(self.view, b >> np.uint64(3), np.left_shift(1, b & np.uint64(7)).astype(np.uint8))
            h += step
        self.added += len(keys)

    def __contains__(self, key: Key) -> bool:
        bits, mask = self.bits, self.mask
        h = hash(key) & 0xFFFFFFFFFFFFFFFF  # as the uint64 that add() used
        step = (h >> 32) | 1
        for _ in range(4):
            b = h & mask
            if not bits[b >> 3] & (1 << (b & 7)):
                return False
            h = (h + step) & 0xFFFFFFFFFFFFFFFF
        return True


class StateStore:
    """Open impressions (memory + SQLite spill) and the checkpoint record. See the module doc.

    Not thread-safe: one joiner owns it.
    """

    def __init__(self, path: str | Path, memory_max: int, window_s: float) -> None:
        self.path = Path(path)
        self.file = self.path / DB_NAME
        self.memory_max = int(memory_max)
        self.window_s = float(window_s)
        self._mem: dict[Key, Entry] = {}
        # The close order of in-memory entries, (end, seq, key), lazily pruned of spilled ones: a
        # FIFO for entries that arrive in window-end order (almost all: input is in event-time
        # order), a heap for the others; closing merges the two.
        self._fifo = _Fifo()
        self._heap: list[tuple[float, int, Key]] = []
        self._stale = 0  # order items whose entry was spilled
        self._first_new = 0  # entries with seq >= this were added since the last commit
        self._dirty: set[Key] = set()  # in-memory entries changed since the last commit
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
        return len(self._mem) + self.n_spilled

    @property
    def memory(self) -> dict[Key, Entry]:
        """The in-memory entries (read them; change them through :meth:`add`/:meth:`update`).
        ``n_spilled`` counts the others."""
        return self._mem

    def get(self, key: Key) -> Entry | None:
        """The open entry of ``key``, or None. An entry read from disk is a copy: pass it to
        :meth:`update` after changing it."""
        e = self._mem.get(key)
        if e is not None or not self.n_spilled or key not in self._disk_keys:
            return e
        with self._sqlite("read a spilled entry"):
            row = self._con.execute("SELECT entry FROM spill WHERE key = ?", (_encoder.encode(key),)).fetchone()
        return None if row is None else self._decode(row[0])

    def add(self, key: Key, entry: Entry) -> float:
        """Add a new entry (``key`` must not be open); returns its window end."""
        end = entry.event_time + self.window_s
        self._mem[key] = entry
        fifo = self._fifo
        if not fifo or end >= fifo.ends[-1]:
            fifo.ends.append(end)
            fifo.seqs.append(entry.seq)
            fifo.keys.append(key)
        else:
            heapq.heappush(self._heap, (end, entry.seq, key))
        if len(self._mem) > self.memory_max:
            self._spill()
        return end

    def update(self, key: Key, entry: Entry) -> None:
        """Record that an entry changed (and write it back if :meth:`get` read it from disk)."""
        if key in self._mem:
            self._dirty.add(key)
            return
        with self._sqlite("update a spilled entry"):
            self._con.execute(
                "UPDATE spill SET entry = ? WHERE key = ?", (_encoder.encode(entry), _encoder.encode(key))
            )

    def next_end(self) -> float:
        """The earliest window end of any open entry (inf if none); may be early, never late."""
        fifo = self._fifo
        top = min(fifo.ends[fifo.head] if fifo else _INF, self._heap[0][0] if self._heap else _INF)
        return min(top, self._disk_min)

    def closing(self, watermark: float) -> list[Entry]:
        """Remove and return the entries whose window ends before ``watermark``, ordered by
        (end, seq) across memory and disk."""
        fifo, heap, store = self._fifo, self._heap, self._mem
        if not (heap or self._stale or self.n_spilled):  # the common case: in order, all in memory
            return list(map(store.pop, fifo.pop_keys_before(watermark)))
        mem: list[tuple[float, int, Entry]] = []
        popleft, heappop = fifo.popleft, heapq.heappop
        while True:
            if fifo and fifo.ends[fifo.head] < watermark and not (heap and heap[0] < fifo.first()):
                end, seq, key = popleft()
            elif heap and heap[0][0] < watermark:
                end, seq, key = heappop(heap)
            else:
                break
            e = store.get(key)
            if e is not None and e.seq == seq:
                del store[key]
                mem.append((end, seq, e))
            else:
                self._stale -= 1  # spilled: its item here was stale
        if not (self.n_spilled and self._disk_min < watermark):
            return [e for _, _, e in mem]
        with self._sqlite("close spilled entries"):
            con = self._con
            rows = con.execute(
                "SELECT end, seq, entry FROM spill WHERE end < ? ORDER BY end, seq", (watermark,)
            ).fetchall()
            con.execute("DELETE FROM spill WHERE end < ?", (watermark,))
            self.n_spilled -= len(rows)
            low = con.execute("SELECT min(end) FROM spill").fetchone()[0]
        self._disk_min = float(low) if low is not None else float("inf")
        disk = [(end, seq, self._decode(blob)) for end, seq, blob in rows]
        return [e for _, _, e in heapq.merge(mem, disk, key=lambda t: (t[0], t[1]))]

    def _spill(self) -> None:
        """Move the oldest in-memory entries to disk until a tenth of the budget is free."""
        n = len(self._mem) - self.memory_max + (self._evict if self.memory_max else 0)
        victims = list(itertools.islice(self._mem.items(), min(n, len(self._mem))))
        enc, w = _encoder.encode, self.window_s
        rows = []
        low = self._disk_min
        for key, e in victims:
            del self._mem[key]
            end = e.event_time + w
            low = min(low, end)
            rows.append((enc(key), end, e.seq, enc(e)))
        # into the filter before the table: whatever fails later, no key is on disk unannounced
        self._disk_keys.add([key for key, _ in victims])
        with self._sqlite("spill entries"):
            self._con.executemany("INSERT INTO spill (key, end, seq, entry) VALUES (?, ?, ?, ?)", rows)
        self.n_spilled += len(rows)
        if self._disk_keys.added > self._disk_keys.capacity:
            self._rebuild_disk_keys()  # reads the spill table: these keys included
        self._disk_min = low
        self._stale += len(rows)
        if self._stale > len(self._mem):  # most of the order is stale: rebuild it from memory
            self._rebuild_order()

    def _rebuild_disk_keys(self) -> None:
        """A fresh filter of the keys on disk, sized for four times as many."""
        with self._sqlite("list spilled keys"):
            blobs = [r[0] for r in self._con.execute("SELECT key FROM spill")]
        try:
            keys = [_key.decode(b) for b in blobs]
        except msgspec.MsgspecError as exc:
            raise CorruptionError(f"joiner state {self.file}: a spilled key does not decode: {exc}") from exc
        self._disk_keys = _DiskKeys(4 * len(keys))
        self._disk_keys.add(keys)

    def _rebuild_order(self) -> None:
        w = self.window_s
        order = sorted((e.event_time + w, e.seq, k) for k, e in self._mem.items())
        self._fifo, self._heap, self._stale = _Fifo(order), [], 0

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
        mem, first = self._mem, self._first_new
        # every entry here ends at or before the last of the close order (ends only grow along
        # the FIFO; the heap holds the few that came out of order)
        fifo = self._fifo
        top = max(fifo.ends[-1] if fifo else -_INF, max(self._heap)[0] if self._heap else -_INF)
        items = []  # the new entries are the tail of the (insertion-ordered) dict
        for k, e in reversed(mem.items()):
            if e.seq < first:
                break
            items.append((k, e))
        items.reverse()
        items += [(k, mem[k]) for k in self._dirty if k in mem and mem[k].seq < first]
        new: list[tuple[int, float, str]] = []
        part = max(self._parts, default=-1) + 1
        try:
            for i in range(0, len(items), _PART):
                chunk = items[i : i + _PART]
                data = _encoder.encode(chunk)
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

    def restore(self, watermark: float) -> None:
        """Rebuild the in-memory entries of the last checkpoint, whose watermark was ``watermark``."""
        w = self.window_s
        with self._sqlite("read the checkpoint"):
            spilled = {r[0] for r in self._con.execute("SELECT key FROM spill")}
        mem = self._mem
        mem.clear()
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
            for key, e in chunk:
                if e.event_time + w >= watermark:
                    mem[key] = e
        if spilled:
            enc = _encoder.encode
            for key in [k for k in mem if enc(k) in spilled]:
                del mem[key]
        self._first_new = 1 + max((e.seq for e in mem.values()), default=-1)
        self._dirty = set()
        self._rebuild_order()

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
        yield from list(self._mem.items())
        with self._sqlite("list spilled entries"):
            rows = self._con.execute("SELECT key, entry FROM spill ORDER BY end, seq").fetchall()
        for k, blob in rows:
            yield _key.decode(k), self._decode(blob)

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r}, memory={len(self._mem)}, disk={self.n_spilled})"
