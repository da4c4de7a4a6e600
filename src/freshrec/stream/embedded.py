"""The embedded event log: one SQLite database in WAL mode on local disk (the default backend).

Why SQLite in WAL mode: it gives the three things the log needs without a server, and each is
tested in SQLite far beyond what we could test in a home-made file format.
* **Crash safety.** A batch is one transaction. Its WAL frames carry checksums and a commit
  marker; on reopen SQLite replays committed transactions only, so a process killed mid-append,
  or a WAL whose tail was torn, leaves every earlier batch whole and no part of the torn one.
* **Several processes.** A server process appends while a trainer process reads the same
  directory: writers serialise on SQLite's write lock (``BEGIN IMMEDIATE``, ``busy_timeout``),
  readers never block and see only committed batches.
* **Speed in batches.** Records are packed into chunks (``_chunk.py``): an append of 10k records
  writes a handful of rows in one transaction with one fsync; a read is a range query on
  ``(topic, partition, base_offset)``.

On disk (``config.path``)::

    log.sqlite       tables: topics(id, name, partitions)
                             chunks(topic_id, partition, base_offset, count, checksum, data)
                             group_offsets(grp, topic_id, partition, next_offset)
    log.sqlite-wal   the write-ahead log (committed batches not yet checkpointed)
    log.sqlite-shm   the WAL index (rebuilt from the WAL if lost)

The file's ``application_id`` marks it as a freshrec log and ``user_version`` is its format
version; opening any other SQLite file is refused. Offsets are contiguous: a batch's first
offset is the partition's end offset, read inside the write transaction.

Threads: appends, commits and topic creation share one writer connection under a lock; reads
take a connection from a pool, so they run in parallel (sqlite3 releases the GIL) and never
wait for an append.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from itertools import repeat
from pathlib import Path

import numpy as np

from freshrec._io import sqlite_errors
from freshrec.errors import BackendError, CorruptionError, InputError, StateError
from freshrec.stream import _chunk
from freshrec.stream.config import LogConfig
from freshrec.stream.log import EventLog, LogRecord, PartitionBatch, RecordColumns

__all__ = ["DB_NAME", "FORMAT_VERSION", "EmbeddedLog"]

DB_NAME = "log.sqlite"
FORMAT_VERSION = 1
APPLICATION_ID = 0x66726C67  # "frlg": marks a SQLite file as a freshrec event log
_PAGE_SIZE = 16384  # for a new database: chunks are ~1 MiB blobs, bigger pages mean fewer of them

_SCHEMA = (
    "CREATE TABLE topics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL)",
    "CREATE TABLE chunks (id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, partition INTEGER NOT NULL,"
    " base_offset INTEGER NOT NULL, count INTEGER NOT NULL, checksum INTEGER NOT NULL, data BLOB NOT NULL,"
    " UNIQUE (topic_id, partition, base_offset))",
    "CREATE TABLE group_offsets (grp TEXT NOT NULL, topic_id INTEGER NOT NULL, partition INTEGER NOT NULL,"
    " next_offset INTEGER NOT NULL, PRIMARY KEY (grp, topic_id, partition)) WITHOUT ROWID",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {FORMAT_VERSION}",
)
_END = "SELECT base_offset + count FROM chunks WHERE topic_id = ? AND partition = ? ORDER BY base_offset DESC LIMIT 1"
_SCAN = (
    "SELECT base_offset, count, checksum, data FROM chunks WHERE topic_id = ?1 AND partition = ?2"
    " AND base_offset >= coalesce((SELECT max(base_offset) FROM chunks"
    " WHERE topic_id = ?1 AND partition = ?2 AND base_offset <= ?3), 0) ORDER BY base_offset"
)
_INSERT = "INSERT INTO chunks (topic_id, partition, base_offset, count, checksum, data) VALUES (?, ?, ?, ?, ?, ?)"
_UPSERT_OFFSET = (
    "INSERT INTO group_offsets (grp, topic_id, partition, next_offset) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (grp, topic_id, partition) DO UPDATE SET next_offset = excluded.next_offset"
)


class EmbeddedLog(EventLog):
    """The event log in a SQLite database under ``config.path``. See the module docstring."""

    def __init__(self, config: LogConfig | None = None) -> None:
        super().__init__()
        self.config = config or LogConfig()
        self.path = Path(self.config.path)
        self.file = self.path / DB_NAME
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create the event log directory {self.path}: {exc}") from exc
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._topics: dict[str, tuple[int, int]] = {}  # name -> (id, partitions); never change
        self._appended = threading.Condition()
        self._generation = 0  # bumped by every append of this process; wakes waiting reads
        self._writer = self._connect()
        try:
            self._init_schema()
        except BaseException:
            self._writer.close()
            raise

    # ---- connections -------------------------------------------------------------------------

    def _sqlite(self, what: str) -> AbstractContextManager[None]:
        """Translate sqlite3 errors raised by ``what`` into ours."""
        hint = f" (another process held the write lock for busy_timeout_s={self.config.busy_timeout_s})"
        return sqlite_errors(f"event log {self.file}", what, locked_hint=hint)

    def _connect(self) -> sqlite3.Connection:
        with self._sqlite("open the database"):
            con = sqlite3.connect(
                self.file,
                timeout=self.config.busy_timeout_s,
                isolation_level=None,  # autocommit; transactions are explicit BEGIN/COMMIT
                check_same_thread=False,  # used under our locks from many threads
            )
            try:
                con.execute(f"PRAGMA busy_timeout = {round(self.config.busy_timeout_s * 1000)}")
                con.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # no effect once the file exists
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise BackendError(
                        f"event log {self.file}: SQLite cannot use WAL mode here (got {mode!r}); "
                        "the log needs a local file system"
                    )
                con.execute(f"PRAGMA synchronous = {self.config.synchronous.upper()}")
                con.execute(f"PRAGMA wal_autocheckpoint = {self.config.wal_autocheckpoint_pages}")
                con.execute("PRAGMA cache_size = -16384")  # 16 MiB of page cache per connection
            except BaseException:
                con.close()
                raise
        return con

    def _init_schema(self) -> None:
        with self._sqlite("read the schema"):
            con = self._writer
            con.execute("BEGIN IMMEDIATE")
            try:
                app_id = con.execute("PRAGMA application_id").fetchone()[0]
                version = con.execute("PRAGMA user_version").fetchone()[0]
                tables = con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
                if app_id == 0 and version == 0 and tables == 0:
                    for stmt in _SCHEMA:
                        con.execute(stmt)
                elif app_id != APPLICATION_ID:
                    raise InputError(f"{self.file} is a SQLite database but not a freshrec event log")
                elif version != FORMAT_VERSION:
                    raise StateError(
                        f"event log {self.file} has format version {version}; this freshrec reads "
                        f"version {FORMAT_VERSION}"
                    )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            con = self._idle.pop() if self._idle else None
        if con is None:
            con = self._connect()
            with self._pool_lock:
                self._all.append(con)
        try:
            yield con
        finally:
            with self._pool_lock:
                self._idle.append(con)

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """The writer connection inside ``BEGIN IMMEDIATE``: committed if the block returns,
        rolled back if it raises."""
        with self._write_lock, self._sqlite(what):
            con = self._writer
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    # ---- topics ------------------------------------------------------------------------------

    def _topic(self, topic: str) -> tuple[int, int]:
        found = self._topics.get(topic)
        if found is None:
            with self._reader() as con, self._sqlite("look up a topic"):
                row = con.execute("SELECT id, partitions FROM topics WHERE name = ?", (topic,)).fetchone()
            if row is None:
                raise InputError(f"unknown topic {topic!r}: create it first with create_topic()")
            found = self._topics[topic] = (int(row[0]), int(row[1]))
        return found

    def _create_topic(self, topic: str, partitions: int, keep_forever: bool) -> None:  # it keeps everything
        with self._transaction("create a topic") as con:
            row = con.execute("SELECT id, partitions FROM topics WHERE name = ?", (topic,)).fetchone()
            if row is None:
                con.execute("INSERT INTO topics (name, partitions) VALUES (?, ?)", (topic, partitions))
            elif row[1] != partitions:
                raise InputError(f"topic {topic!r} exists with {row[1]} partitions, not {partitions}")

    def _partitions(self, topic: str) -> int:
        return self._topic(topic)[1]

    # ---- records -----------------------------------------------------------------------------

    def _append(self, topic: str, batches: list[PartitionBatch]) -> None:
        tid, _ = self._topic(topic)
        cfg = self.config
        packed = []  # (partition, [(count, blob)]): the expensive packing happens outside the lock
        for b in batches:
            vlen, klen = _chunk.record_sizes(b.values, b.keys)
            chunks = []
            for s, e in _chunk.spans(vlen + klen.clip(0) + 16, cfg.chunk_records, cfg.chunk_bytes):
                keys = None if b.keys is None else b.keys[s:e]
                blob = _chunk.pack(b.values[s:e], keys, b.timestamps_ms[s:e], vlen[s:e], klen[s:e])
                chunks.append((e - s, blob))
            packed.append((b.partition, chunks))
        with self._transaction("append") as con:
            for p, chunks in packed:
                row = con.execute(_END, (tid, p)).fetchone()
                off = row[0] if row else 0
                rows = []
                for count, blob in chunks:
                    rows.append((tid, p, off, count, _chunk.checksum(blob, off), blob))
                    off += count
                con.executemany(_INSERT, rows)
        with self._appended:
            self._generation += 1
            self._appended.notify_all()

    def _read(self, topic: str, partition: int, offset: int, max_records: int, timeout_s: float) -> list[LogRecord]:
        offsets, keys, values, ts = self._wait_scan(topic, partition, offset, max_records, timeout_s)
        m = len(values)
        return list(map(LogRecord, repeat(topic, m), repeat(partition, m), offsets, keys, values, ts))

    def _read_columns(
        self, topic: str, partition: int, offset: int, max_records: int, timeout_s: float
    ) -> RecordColumns:
        offsets, keys, values, ts = self._wait_scan(topic, partition, offset, max_records, timeout_s)
        n = len(values)
        return RecordColumns(
            np.arange(offsets.start, offsets.stop, dtype=np.int64),
            keys,
            values,
            np.fromiter(ts, np.int64, n),
        )

    def _wait_scan(
        self, topic: str, partition: int, offset: int, max_records: int, timeout_s: float
    ) -> tuple[range, list[bytes | None], list[bytes], list[int]]:
        """:meth:`_scan`, waiting up to ``timeout_s`` for the first record if there is none."""
        tid, _ = self._topic(topic)
        deadline = time.monotonic() + timeout_s
        while True:
            generation = self._generation
            out = self._scan(topic, tid, partition, offset, max_records)
            remaining = deadline - time.monotonic()
            if out[2] or remaining <= 0:
                return out
            with self._appended:
                self._check_open("read")
                if self._generation == generation:  # else an append landed since the scan
                    self._appended.wait(min(remaining, self.config.poll_interval_s))
            self._check_open("read")

    def _scan(
        self, topic: str, tid: int, partition: int, offset: int, max_records: int
    ) -> tuple[range, list[bytes | None], list[bytes], list[int]]:
        """(offsets, keys, values, timestamps) of up to ``max_records`` records from ``offset``
        on; offsets are contiguous, so they come as a range."""
        keys: list[bytes | None] = []
        values: list[bytes] = []
        ts: list[int] = []
        first = None
        with self._reader() as con, self._sqlite("read"):
            cur = con.execute(_SCAN, (tid, partition, offset))
            try:
                expect = None
                for base, count, cks, data in cur:
                    where = f"event log {self.file}, topic {topic!r} partition {partition} offsets {base}.."
                    where += str(base + count - 1)
                    if expect is not None and base != expect:
                        raise CorruptionError(f"{where}: expected a chunk at offset {expect}")
                    expect = base + count
                    if _chunk.checksum(data, base) != cks:
                        raise CorruptionError(f"{where}: chunk fails its checksum")
                    start = max(offset - base, 0)
                    stop = min(count, start + max_records - len(values))
                    if start >= stop:
                        continue
                    k, v, t = _chunk.unpack(data, count, start, stop, where)
                    if first is None:
                        first = base + start
                    keys += k
                    values += v
                    ts += t
                    if len(values) >= max_records:
                        break
            finally:
                cur.close()  # ends the statement's read snapshot
        first = offset if first is None else first
        return range(first, first + len(values)), keys, values, ts

    def _end_offset(self, topic: str, partition: int) -> int:
        tid, _ = self._topic(topic)
        with self._reader() as con, self._sqlite("get an end offset"):
            row = con.execute(_END, (tid, partition)).fetchone()
        return int(row[0]) if row else 0

    # ---- consumer groups ---------------------------------------------------------------------

    def _commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        tid, _ = self._topic(topic)
        with self._transaction("commit offsets") as con:
            con.executemany(_UPSERT_OFFSET, [(group, tid, p, o) for p, o in offsets.items()])

    def _committed(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        tid, _ = self._topic(topic)
        with self._reader() as con, self._sqlite("fetch committed offsets"):
            rows = con.execute(
                "SELECT partition, next_offset FROM group_offsets WHERE grp = ? AND topic_id = ? ORDER BY partition",
                (group, tid),
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

    # ---- lifecycle ---------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._appended:
            self._appended.notify_all()

    def _close(self, timeout_s: float | None) -> None:  # closing a connection takes no waiting
        errors = []
        with self._pool_lock:
            cons = [*self._all, self._writer]
            self._all.clear()
            self._idle.clear()
        for con in cons:
            try:
                con.close()  # the last connection of the last process checkpoints the WAL
            except sqlite3.Error as exc:
                errors.append(exc)
        if errors:
            raise BackendError(f"event log {self.file}: closing failed: {errors[0]}") from errors[0]

    def __repr__(self) -> str:
        return f"EmbeddedLog({str(self.path)!r}, state={self.state.value})"
