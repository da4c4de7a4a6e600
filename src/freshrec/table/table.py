"""The collisionless embedding table (Monolith, section 2.1): one ID, exactly one row.

Contract
--------
* **Collisionless.** Two distinct int64 IDs never share a row. Every int64 is a valid ID
  (0, negatives, INT64_MIN, INT64_MAX); nothing is reserved. Capacity grows by itself.
* **A row** holds the embedding (``dim`` float32), the optimizer's state (its width depends on
  the optimizer), the last-seen event time and an occurrence count. A new row starts from the
  initializer (a pure function of table seed and ID) and fresh optimizer state.
* **Admission.** In training lookups an unseen ID gets a row only when the frequency filter
  admits it (``min_count``-th occurrence, and/or with probability ``p``); until then it reads
  the default vector and gradients for it are dropped. Inference lookups never insert.
* **Expiry and eviction.** :meth:`expire` removes rows whose last-seen time is more than
  ``ttl`` seconds before ``now`` (event time: a row seen exactly ``ttl`` ago survives). With
  ``max_rows``, admission into a full table first evicts a batch by LRU or LFU. Removed rows
  are recycled; removed IDs are reported by :meth:`drain_changes` as tombstones.
* **Threads.** Any method from any thread: see the concurrency contract of
  :class:`EmbeddingTable`.
* **Training steps.** :meth:`apply_gradients` right after a training lookup of the same IDs
  reuses the rows that lookup found (no second index probe), unless a removal or an assignment
  came between them.
* **Cost.** Batch operations run in compiled kernels, O(1) expected per ID (linear probing,
  load factor <= 3/4); :meth:`expire`, :meth:`export` of all rows and an eviction round scan
  the index, O(rows). The index grows by 1.5x (amortised O(1) per insert); rows stay in place (copied
  once only if their reserved address range fills).
* **Memory.** Per row: the embedding and optimizer state, 12 bytes of metadata at the row's end
  (last-seen time, count, a dirty bit), and 12 bytes per index slot, 4/3 to 2 slots per row
  (the index grows by 1.5x at load 3/4): 28-36 bytes of overhead per row, measured by
  ``freshrec bench table``. The
  index holds each key's full 64-bit hash (a bijection of the key), so lookups verify keys
  without touching rows and rows need not store their key. Fresh rows are made resident a
  chunk ahead of use on a background thread (``_memory.populate_async``), so admitting an ID
  rarely waits on a page fault; :meth:`reserve` makes its rows resident at once.

Event times are seconds (float or int; stored as int64 milliseconds).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from freshrec.errors import CapacityError, ConfigError, InputError, NonFiniteError
from freshrec.table import _kernels as K
from freshrec.table import _memory
from freshrec.table._rwlock import RWLock
from freshrec.table.config import TableConfig, state_problem

__all__ = ["EmbeddingTable", "TableChanges", "TableExport", "TableStats"]

_MIN_SLOTS = 16
_MAX_SLOTS = 2**32 - 1  # homes scale the top 32 hash bits: at most 2**32 slots
_GROWTH = 1.5  # index growth factor: load stays in [1/2, 3/4] (doubling would reach 3/8)
_MAX_ROWS = 2**31 - 2  # row ids are stored as row + 1 in 32 bits
_NO_ROWS = np.zeros(0, np.int64)
_POPULATE_MIN, _POPULATE_MAX = 16 << 10, 16 << 20  # bytes of rows made resident ahead of use at a time


@dataclass(frozen=True)
class TableExport:
    """Rows copied out of a table, aligned by position."""

    ids: np.ndarray  # (n,) int64
    embeddings: np.ndarray  # (n, dim) float32
    state: np.ndarray  # (n, S) float32, the optimizer state
    last_seen: np.ndarray  # (n,) int64 milliseconds of event time
    counts: np.ndarray  # (n,) int64 occurrence counts

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class TableChanges:
    """What changed since the previous :meth:`EmbeddingTable.drain_changes`: rows to upsert
    (their current values) and IDs that no longer have a row (tombstones)."""

    upserts: TableExport
    removed: np.ndarray  # (m,) int64, disjoint from upserts.ids


@dataclass(frozen=True)
class TableStats:
    rows: int
    row_capacity: int
    index_slots: int
    lookups: int
    hits: int
    admitted: int
    filtered: int
    expired: int
    evicted: int
    removed: int
    assigned: int
    grad_rows: int
    grad_missing: int
    nonfinite_rejected: int
    sketch_decays: int
    pending_changes: int
    bytes_per_row_overhead: float  # index + metadata, per live row
    bytes_total: int  # resident estimate: used rows + index + sketch

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


MAX_EVENT_TIME = 9e15  # seconds: int64 milliseconds reach 9.2e15; past it a time is nanoseconds by mistake


def to_ms(now: float | int, what: str = "now") -> int:
    if isinstance(now, (bool, np.bool_)) or not isinstance(now, (int, float, np.integer, np.floating)):
        raise InputError(f"{what} must be an event time in seconds, got {type(now).__name__}")
    x = float(now)
    if not np.isfinite(x):
        raise InputError(f"{what} must be finite, got {x}")
    if abs(x) > MAX_EVENT_TIME:
        raise InputError(f"{what} must be an event time in seconds, got {now!r} (nanoseconds?)")
    return round(x * 1000.0)


def check_ids(ids: Any, *, scalar: bool = True) -> np.ndarray:
    """IDs as a 1-D int64 array (a scalar is one ID if ``scalar``), or InputError: integers only,
    uint64 only below 2**63 (a larger one would wrap onto a negative ID: another key's row)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        if arr.ndim == 0 and scalar:
            arr = arr.reshape(1)
        else:
            raise InputError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.int64:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "u":
        if arr.size and arr.dtype.itemsize == 8 and int(arr.max()) > np.iinfo(np.int64).max:
            raise InputError("ids must fit in int64; got a uint64 value above 2**63-1")
        return arr.astype(np.int64)
    if arr.dtype.kind == "i":
        return arr.astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    raise InputError(
        f"ids must be integers (int64); got dtype {arr.dtype}. Hash string IDs first (freshrec.features.hash_ids)."
    )


_INT64_MAX = 2**63 - 1
# occurrences one ID may stand for in a training lookup: a row's count saturates at 2**31 - 1
# anyway, and a batch's counts summed into the table's int64 counters stay far from overflow
MAX_COUNT = 2**40


def _int_column(values: Any, n: int, name: str, what: str) -> np.ndarray:
    """``n`` integers as int64, or InputError (floats are refused, not truncated)."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be {n} {what}: {exc}") from None
    if arr.shape != (n,) or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError(f"{name} must be {n} {what}, got {arr.dtype} of shape {arr.shape}")
    if arr.size and arr.dtype.kind == "u" and int(arr.max()) > _INT64_MAX:
        raise InputError(f"{name} must be {n} {what}: {int(arr.max())} is past int64 (it would wrap)")
    return np.ascontiguousarray(arr, dtype=np.int64)


def gradient_problem(g: np.ndarray) -> str | None:
    """Why a batch of float32 gradients ``(n, dim)`` must be refused, or None. NaN or Inf; or
    an element so large that ``n`` of them summed (all rows one ID), times ``sqrt(dim)``, could
    pass ``GRAD_MAX``, where the optimizers' squared-gradient state would overflow float32 (a
    finite 1e20 made an Adagrad accumulator Inf, and two duplicates of 3e38 an embedding -Inf).
    Training's gradients are means over a batch, many orders of magnitude below."""
    m = K.max_abs(g)
    if not np.isfinite(m):
        return "gradients contain NaN or Inf"
    n, dim = g.shape[0], g.shape[1] if g.ndim > 1 else 1
    if m * max(1, n) * np.sqrt(max(1, dim)) > K.GRAD_MAX:
        return (f"a gradient of magnitude {m:.3g} in a batch of {n} rows of dim {dim} could overflow the "
                f"optimizer's float32 state (limit: magnitude x rows x sqrt(dim) <= {K.GRAD_MAX:g})")  # fmt: skip
    return None


def check_counts(counts: Any | None, keys: np.ndarray) -> np.ndarray:
    """Occurrence counts for a training lookup of ``keys`` (empty = one each), or InputError."""
    if counts is None:
        return np.zeros(0, np.int64)
    occ = np.asarray(counts)
    if occ.shape != keys.shape or (occ.size and (occ.dtype.kind not in "iu" or occ.min() < 1)):
        raise InputError(f"counts must be {keys.shape[0]} integers >= 1 (one per ID), got {occ.dtype} {occ.shape}")
    if occ.size and int(occ.max()) > MAX_COUNT:  # uint64 past int64 wrapped negative; sums overflowed
        raise InputError(f"counts must be at most 2**40 occurrences per ID, got {int(occ.max())}")
    return np.ascontiguousarray(occ, dtype=np.int64)


def check_assign(
    config: TableConfig,
    ids: Any,
    embeddings: Any,
    *,
    state: Any | None = None,
    last_seen: Any | None = None,
    counts: Any | None = None,
    now: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An assignment's input checks for a table of ``config``, without writing: (keys, values,
    last-seen ms, counts) as :meth:`EmbeddingTable.assign` would write them, or the error it would
    raise. A sharded PS checks a whole assignment this way before any shard writes."""
    keys = check_ids(ids)
    n = keys.shape[0]
    dim, state_width = config.dim, config.state_width
    emb = _rows_values(embeddings, n, dim, "embeddings")
    if state is not None:
        st = _rows_values(state, n, state_width, "state")
        values = np.concatenate([emb, st], axis=1)
    else:
        values = emb
    if not K.all_finite(values):
        raise NonFiniteError(f"table {config.name!r}: assigned values contain NaN or Inf")
    problem = None if state is None else state_problem(config.optimizer, st, dim)
    if problem:
        raise InputError(f"table {config.name!r}: assigned state: {problem}")
    if last_seen is not None:
        ts = _int_column(last_seen, n, "last_seen", "event times in int64 milliseconds")
    else:
        ts = np.full(n, 0 if now is None else to_ms(now), np.int64)
    if counts is not None:
        cnt = _int_column(counts, n, "counts", "non-negative integers")
        if n and cnt.min() < 0:
            raise InputError(f"counts must be {n} non-negative integers")
    else:
        cnt = np.ones(n, np.int64)
    return keys, values, ts, cnt


def _rows_values(values: Any, n: int, width: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{what} must be numeric, got dtype {arr.dtype}")
    if arr.shape != (n, width):
        raise InputError(f"{what} must have shape ({n}, {width}), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class EmbeddingTable:
    """A growable hash table from int64 IDs to embedding rows (the contract is in the module
    docstring).

    Concurrency contract: methods may be called from any thread. Reads (inference
    :meth:`lookup`, :meth:`export`, :meth:`contains`, :meth:`sketch_estimate`, :meth:`save`)
    share a lock; writes (training lookups, :meth:`find_or_insert`, :meth:`apply_gradients`,
    :meth:`assign`, :meth:`remove`, :meth:`expire`, :meth:`drain_changes`, growth) hold it
    alone. A reader therefore never sees a half-written (torn) row and never crashes on a
    growing table: it sees each write entirely or not at all. The kernels release the GIL, so
    concurrent readers run in parallel. :meth:`stats` takes no lock: its counters are each
    current, not a snapshot taken together. ``tests/table/test_concurrency.py`` holds readers
    against a writer that admits, grows, updates, assigns, removes and expires.
    """

    def __init__(self, config: TableConfig | None = None, **fields: Any) -> None:
        if config is None:
            config = TableConfig.from_dict(fields, source="TableConfig")
        elif isinstance(config, dict):
            config = TableConfig.from_dict({**config, **fields}, source="TableConfig")
        elif not isinstance(config, TableConfig):
            raise ConfigError(f"config must be a TableConfig (or a dict of its fields), got {type(config).__name__}")
        elif fields:
            config = TableConfig.from_dict({**config.model_dump(), **fields}, source="TableConfig")
        self.config = config  # frozen: what the table runs on is what it saves
        self.dim = config.dim
        self.state_width = config.state_width
        self._mo = self.dim + self.state_width  # column of the row metadata
        self.width = self._mo + K.META  # float32 words per row
        self._opt_kind, self._opt_hp = config.optimizer.kernel_params()
        self._init = config.initializer.kernel_params()
        self._state_init = float(config.optimizer.state_init())
        self._default = config.default_vector()
        self._ttl_ms = None if config.ttl is None else round(config.ttl * 1000.0)
        adm = config.admission
        self._min_count = adm.min_count
        self._p_admit = adm.admit_probability
        self._decay_every = adm.decay_every if adm.min_count > 1 else 0
        rng = np.random.default_rng([config.seed, 0x5EED])
        self._sk_seeds = rng.integers(0, 2**63, size=adm.sketch_depth, dtype=np.int64).astype(np.uint64)
        # two generations of counters (current, previous): see AdmissionConfig.sketch_decay_every
        shape = (2, adm.sketch_depth, adm.sketch_width) if adm.min_count > 1 else (2, 1, 1)
        self._sketch = np.zeros(shape, np.uint32)
        self._lock = RWLock()
        self._stat_lock = threading.Lock()
        self._ctr = np.zeros(K.N_CTR, np.int64)
        self._ctr[K.C_RNG] = int(rng.integers(0, 2**63))
        self._removed: list[np.ndarray] = []
        # (IDs, rows) of the last training lookup, so that apply_gradients on the same IDs (a
        # training step: lookup, forward, backward, apply) skips probing the index again. Any
        # removal (a freed row may go to another ID) or assignment forgets it. Read and written
        # under the write lock.
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._alloc(rows=16, slots=_MIN_SLOTS)
        self._huge = _memory.huge_pages_granted(config.huge_pages)  # read-only lookups pipeline on them
        if config.expected_rows:  # a memory hint: never more rows than the cap lets live
            self.reserve(min(config.expected_rows, config.max_rows or config.expected_rows))

    # ---- storage -----------------------------------------------------------------------------

    def _alloc(self, rows: int, slots: int) -> None:
        self._data = _memory.reserve(rows, self.width, np.float32, _MAX_ROWS, self.config.huge_pages)
        self._meta = self._data.view(np.uint32)
        self._free = _memory.reserve(self._data.shape[0], 0, np.int32, _MAX_ROWS)
        self._dirty = _memory.reserve(self._data.shape[0], 0, np.int64, _MAX_ROWS)
        self._slots = _memory.zeros(3 * slots, np.uint32, self.config.huge_pages)
        self._cap = slots
        # fresh rows below _ready may be handed out by the kernels (they return NEED_ROWS there);
        # rows up to _ahead are being made resident on the populator thread (see _more_rows)
        self._ready = self._ahead = 0

    def _more_rows(self) -> None:
        """The kernels reached ``_ready``: hand them the chunk populated in the background since
        the last call (populating it now if there is none), and start on the next chunk.
        Chunks are an eighth of the rows so far, from 16 KiB to 16 MiB, so resident memory runs
        ahead of the rows in use by at most two chunks."""
        if self._ready >= self._data.shape[0]:
            self._grow_rows()
        size = self._data.shape[0]
        row_bytes = 4 * self.width
        step = max(1, min(max(int(self._ctr[K.C_HW]) // 8, _POPULATE_MIN // row_bytes), _POPULATE_MAX // row_bytes))
        if self._ahead <= self._ready:  # nothing under way (the first chunk, or after _grow_rows)
            self._ahead = min(size, self._ready + step)
            _memory.populate(self._data, self._ready, self._ahead)
        self._ready = self._ahead
        self._ahead = min(size, self._ready + step)
        assert self._ready <= self._ahead <= size  # the kernels must never hand out a row past the array
        _memory.populate_async(self._data, self._ready, self._ahead)

    def _grow_rows(self, at_least: int = 0) -> None:
        """Only when the reservation is exhausted: reserve a larger one and copy once."""
        old = self._data.shape[0]
        if old >= _MAX_ROWS:
            raise CapacityError(f"table {self.config.name!r} is full at {old} rows")
        new = min(_MAX_ROWS, max(4 * old, at_least))
        hw = int(self._ctr[K.C_HW])
        data = _memory.reserve(new, self.width, np.float32, _MAX_ROWS, self.config.huge_pages)
        data[:hw] = self._data[:hw]
        self._ready = self._ahead = hw
        free = _memory.reserve(data.shape[0], 0, np.int32, _MAX_ROWS)
        free[: self._ctr[K.C_FREE]] = self._free[: self._ctr[K.C_FREE]]
        self._data, self._meta, self._free = data, data.view(np.uint32), free

    def _ensure_dirty(self, extra: int) -> None:
        """Room on the change list for ``extra`` more keys (it lives in a large reservation, so
        this almost never copies)."""
        need = int(self._ctr[K.C_DIRTY]) + extra
        if need > self._dirty.shape[0]:
            dirty = _memory.reserve(max(need, 2 * self._dirty.shape[0]), 0, np.int64, 2**40)
            dirty[: self._ctr[K.C_DIRTY]] = self._dirty[: self._ctr[K.C_DIRTY]]
            self._dirty = dirty

    def _grow_index(self, for_rows: int | None = None) -> None:
        need = int(self._ctr[K.C_LIVE]) + 1 if for_rows is None else for_rows
        cap = max(int(self._cap * _GROWTH), _MIN_SLOTS)
        while need * K.LOAD_DEN > cap * K.LOAD_NUM:
            cap = int(cap * _GROWTH)
        if cap > _MAX_SLOTS:
            raise CapacityError(f"table {self.config.name!r}: index would exceed 2**32 slots")
        slots = _memory.zeros(3 * cap, np.uint32, self.config.huge_pages)
        K.rehash(self._slots, slots, cap)
        self._slots, self._cap = slots, cap

    def reserve(self, rows: int) -> None:
        """Pre-size for ``rows`` live rows, so a known load pays no growth on the hot path: the
        index is sized for them and their memory is made resident now (no page faults later)."""
        if not isinstance(rows, int | np.integer) or isinstance(rows, bool) or rows < 0:
            raise InputError(f"reserve takes a number of rows (an int >= 0), got {rows!r}")
        rows = int(rows)
        if rows > _MAX_ROWS:
            raise CapacityError(f"table {self.config.name!r} holds at most {_MAX_ROWS} rows; asked to reserve {rows}")
        # made resident now: more than the machine has free would not fail here but kill the process
        need = 0
        if _memory.supported():
            row_bytes = 4 * self.width
            if rows > self._data.shape[0]:  # a new array, filled while the old one is still held
                need += rows * row_bytes
            elif rows > self._ready:
                need += (rows - self._ready) * row_bytes
        if rows * K.LOAD_DEN > self._cap * K.LOAD_NUM:  # a new index, written whole
            need += rows * 12 * K.LOAD_DEN // K.LOAD_NUM
        free = psutil.virtual_memory().available
        if need > free:
            raise CapacityError(f"table {self.config.name!r}: reserving {rows:,} rows needs {need / 2**20:,.0f} MiB "
                                f"resident now, the machine has {free / 2**20:,.0f} MiB available")  # fmt: skip
        with self._lock.write():
            if rows > self._data.shape[0]:
                self._grow_rows(at_least=rows)
            if rows > self._ready:
                _memory.populate(self._data, self._ready, rows)
                self._ready = self._ahead = max(self._ahead, rows)
            if rows * K.LOAD_DEN > self._cap * K.LOAD_NUM:
                self._grow_index(for_rows=rows)

    # ---- input checks ------------------------------------------------------------------------

    # ---- lookups -----------------------------------------------------------------------------

    def lookup(
        self, ids: Any, *, train: bool = False, now: float | None = None, counts: Any | None = None
    ) -> np.ndarray:
        """Embeddings of ``ids``, shape ``(n, dim)``; duplicates allowed.

        With ``train=True`` (``now`` required) unseen IDs pass through the admission filter
        and known ones count an occurrence and refresh their last-seen time. IDs without a
        row read the default vector. ``counts`` (training only): ``ids[i]`` stands for
        ``counts[i]`` occurrences, for callers that deduplicated a batch; admission and counts
        see every occurrence.
        """
        if counts is not None and not train:
            raise InputError("counts go with a training lookup: lookup(ids, train=True, now=t, counts=c)")
        keys = check_ids(ids)
        out = np.empty((keys.shape[0], self.dim), np.float32)
        if train:
            if now is None:
                raise InputError("a training lookup needs the event time: lookup(ids, train=True, now=t)")
            self._find_or_insert(keys, to_ms(now), out, True, check_counts(counts, keys))
            return out
        with self._lock.read():
            # rows on huge pages and far beyond the caches: probe and copy in one pipeline
            pipelined = int(self._ctr[K.C_HW]) * 4 * self.width >= K.PIPELINE_FROM_BYTES and self._huge
            hits = K.lookup_infer(self._slots, self._cap, self._data, keys, out,
                                  self._default, self.dim, pipelined)  # fmt: skip
        with self._stat_lock:  # readers run concurrently; counters must not lose increments
            self._ctr[K.C_LOOKUPS] += keys.shape[0]
            self._ctr[K.C_HITS] += hits
        return out

    def find_or_insert(self, ids: Any, *, now: float) -> np.ndarray:
        """Row handles of ``ids`` after admission (-1 where filtered, or evicted by ``max_rows``
        later in the same call), as a training lookup without copying embeddings. Handles are
        valid until the next removal or growth."""
        keys = check_ids(ids)
        return self._find_or_insert(keys, to_ms(now), np.empty((0, self.dim), np.float32), False,
                                    np.zeros(0, np.int64))  # fmt: skip

    def _find_or_insert(
        self, keys: np.ndarray, now_ms: int, out: np.ndarray, copy: bool, occ: np.ndarray
    ) -> np.ndarray:
        rows = np.empty(keys.shape[0], np.int64)
        kind, a, b = self._init
        start, pending = 0, 0
        with self._lock.write():
            self._last = None  # until this lookup completes (it may raise half-way)
            self._ctr[K.C_LOOKUPS] += int(occ.sum()) if occ.size else keys.shape[0]
            evicted = False  # an eviction in this lookup may have reused a row it found
            while True:
                self._ensure_dirty(keys.shape[0])
                status, start = K.lookup_train(
                    self._slots, self._cap, self._meta, self._data, self._free,
                    self._dirty, self._ctr, keys, occ, start, pending, now_ms, out, copy, rows,
                    self._default, self.dim, self.state_width, self._sketch, self._sk_seeds,
                    self._min_count, self._decay_every, self._p_admit, kind, a, b,
                    self.config.seed, self._state_init, self.config.max_rows or 0,
                    self._ready, self.config.track_changes,
                )  # fmt: skip
                if status == K.OK:
                    if evicted:  # rows found before the eviction may be another ID's now
                        K.find_rows(self._slots, self._cap, keys, rows)
                    else:
                        self._last = (keys.copy(), self._rows_now(keys, rows))
                    return rows
                pending = 1
                if status == K.NEED_ROWS:
                    self._more_rows()
                elif status == K.NEED_INDEX:
                    self._grow_index()
                else:
                    self._evict_locked()
                    evicted = True

    def _rows_now(self, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """A copy of a finished lookup's ``rows`` as a probe would find them now: an ID filtered at
        one position of the batch may have been admitted at a later one (``min_count``,
        ``admit_probability``), so positions left at -1 are probed again."""
        rows = rows.copy()  # the caller may change its own (find_or_insert returns them)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            found = np.empty(missing.size, np.int64)
            K.find_rows(self._slots, self._cap, np.ascontiguousarray(keys[missing]), found)
            rows[missing] = found
        return rows

    def contains(self, ids: Any) -> np.ndarray:
        """Boolean mask: which IDs have a row."""
        keys = check_ids(ids)
        rows = np.empty(keys.shape[0], np.int64)
        with self._lock.read():
            K.find_rows(self._slots, self._cap, keys, rows)
        return rows >= 0

    def __len__(self) -> int:
        return int(self._ctr[K.C_LIVE])

    def __contains__(self, key: object) -> bool:
        return bool(self.contains(np.asarray([key]))[0])

    # ---- updates -----------------------------------------------------------------------------

    def apply_gradients(self, ids: Any, grads: Any, *, now: float) -> int:
        """One optimizer step: gradients of duplicate IDs are summed first; IDs without a row
        are skipped. NaN/Inf anywhere, or gradients so large that a sum over duplicates could
        pass ``GRAD_MAX`` (:func:`gradient_problem`), reject the whole batch (counted, table
        unchanged). Returns the number of rows updated."""
        keys = check_ids(ids)
        g = _rows_values(grads, keys.shape[0], self.dim, "grads")
        now_ms = to_ms(now)
        problem = gradient_problem(g)
        if problem:
            with self._stat_lock:  # outside the table lock: concurrent rejections must all count
                self._ctr[K.C_NONFINITE] += 1
            raise NonFiniteError(f"table {self.config.name!r}: {problem}; batch rejected")
        with self._lock.write():
            self._ensure_dirty(keys.shape[0])
            return int(K.apply_gradients(
                self._slots, self._cap, self._meta, self._data, self._dirty,
                self._ctr, keys, self._known_rows(keys), g, now_ms, self._opt_kind, self._opt_hp,
                self.dim, self._mo, self.config.track_changes,
            ))  # fmt: skip

    def _known_rows(self, keys: np.ndarray) -> np.ndarray:
        """The rows of ``keys`` if the last training lookup was of these IDs and no row was
        removed or assigned since (the caller holds the write lock); else empty: probe."""
        last = self._last
        return last[1] if last is not None and np.array_equal(last[0], keys) else _NO_ROWS

    def check_assign(
        self,
        ids: Any,
        embeddings: Any,
        *,
        state: Any | None = None,
        last_seen: Any | None = None,
        counts: Any | None = None,
        now: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`assign`'s input checks, without writing (see :func:`check_assign`)."""
        return check_assign(self.config, ids, embeddings, state=state, last_seen=last_seen, counts=counts, now=now)

    def assign(
        self,
        ids: Any,
        embeddings: Any,
        *,
        state: Any | None = None,
        last_seen: Any | None = None,
        counts: Any | None = None,
        now: float | None = None,
        evict: bool = True,
    ) -> None:
        """Write rows verbatim (serving replicas, restore). New IDs get a row without
        admission. Without ``state`` a new row's optimizer state is zero and an existing row
        keeps its state. ``last_seen`` is int64 ms per row, or ``now`` (seconds) for all;
        ``counts`` the rows' occurrence counts. Without them an existing row keeps its own, and
        a new row gets last-seen 0 (the epoch: the next :meth:`expire` with a ``ttl`` removes
        it) and count 1. With ``max_rows``, an assignment that takes the table past it evicts
        other rows (by ``eviction``; its own only if it alone is larger) back down to it at the
        end, unless ``evict=False`` (a restore: the table holds what was saved, and the next
        admission evicts). Checked first (:meth:`check_assign`): a refused assignment writes
        nothing."""
        keys, values, ts, cnt = self.check_assign(ids, embeddings, state=state, last_seen=last_seen,
                                                  counts=counts, now=now)  # fmt: skip
        with self._lock.write():
            self._last = None  # an ID the last lookup filtered may get a row here
            start = 0
            while True:
                self._ensure_dirty(keys.shape[0])
                status, start = K.assign_rows(
                    self._slots, self._cap, self._meta, self._data, self._free,
                    self._dirty, self._ctr, keys, start, values, values.shape[1], ts, cnt,
                    last_seen is not None or now is not None, counts is not None,
                    self._ready, self._mo, self.config.track_changes,
                )  # fmt: skip
                if status == K.OK:
                    break
                if status == K.NEED_ROWS:
                    self._more_rows()
                else:
                    self._grow_index()
            if evict and self.config.max_rows and len(self) > self.config.max_rows:
                self._evict_locked(room=0, keep=keys)  # back under the memory cap, by the same policy

    def remove(self, ids: Any) -> np.ndarray:
        """Delete the rows of ``ids``; returns the IDs that had a row."""
        keys = check_ids(ids)
        with self._lock.write():
            removed = self._remove_locked(keys)
            self._ctr[K.C_REMOVED] += removed.shape[0]
        return removed

    def _remove_locked(self, keys: np.ndarray) -> np.ndarray:
        if keys.shape[0] == 0:
            return keys
        self._last = None  # freed rows are reused: no row found before this is known any more
        keys = np.unique(keys)
        mask = np.empty(keys.shape[0], np.uint8)
        K.remove_keys(self._slots, self._cap, self._meta, self._mo, self._free,
                      self._ctr, keys, mask)  # fmt: skip
        removed = keys[mask.astype(bool)]
        if self.config.track_changes and removed.shape[0]:
            self._removed.append(removed)
        return removed

    def expire(self, now: float) -> np.ndarray:
        """Remove rows unseen for more than ``ttl`` seconds of event time before ``now``;
        returns their IDs. A table without ``ttl`` expires nothing."""
        now_ms = to_ms(now)
        if self._ttl_ms is None:
            return np.zeros(0, np.int64)
        with self._lock.write():
            keys = np.empty(int(self._ctr[K.C_LIVE]), np.int64)
            cutoff = max(now_ms - self._ttl_ms, -_INT64_MAX - 1)  # a ttl past all of int64 keeps every row
            n = K.collect_older(self._slots, self._meta, self._mo, cutoff, keys)
            removed = self._remove_locked(keys[:n])
            self._ctr[K.C_EXPIRED] += removed.shape[0]
        return removed

    def _evict_locked(self, room: int = 1, keep: np.ndarray | None = None) -> None:
        """One eviction round: ``evict_fraction`` of ``max_rows``, or more if that leaves fewer
        than ``room`` rows free under the cap; rows of ``keep`` only if the others are too few."""
        live = int(self._ctr[K.C_LIVE])
        keys, rows, ts, counts = (np.empty(live, np.int64) for _ in range(4))
        K.live_rows(self._slots, self._meta, self._mo, keys, rows, ts, counts)
        cap = self.config.max_rows or live
        k = max(1, min(live, max(int(self.config.evict_fraction * cap), live + room - cap)))
        if keep is not None:
            others = ~np.isin(keys, keep)
            if int(others.sum()) >= k:
                keys, ts, counts = keys[others], ts[others], counts[others]
                live = keys.shape[0]
        if self.config.eviction == "lru":
            victims = keys[np.argpartition(ts, k - 1)[:k]] if k < live else keys
        else:
            victims = keys[np.lexsort((ts, counts))[:k]]
        removed = self._remove_locked(victims)
        self._ctr[K.C_EVICTED] += removed.shape[0]

    # ---- reading out -------------------------------------------------------------------------

    def export(self, ids: Any | None = None) -> TableExport:
        """Copy rows out: all of them (in index order), or those of ``ids`` that have a row
        (in the order given, duplicates kept)."""
        with self._lock.read():
            if ids is None:
                live = int(self._ctr[K.C_LIVE])
                keys, rows, ts, counts = (np.empty(live, np.int64) for _ in range(4))
                K.live_rows(self._slots, self._meta, self._mo, keys, rows, ts, counts)
            else:
                keys = check_ids(ids)
                rows = np.empty(keys.shape[0], np.int64)
                K.find_rows(self._slots, self._cap, keys, rows)
                keys, rows = keys[rows >= 0], rows[rows >= 0]
            return self._gather(keys, rows)

    def _gather(self, keys: np.ndarray, rows: np.ndarray) -> TableExport:
        n = rows.shape[0]
        w = self._mo
        values = np.empty((n, w), np.float32)
        ts = np.empty(n, np.int64)
        counts = np.empty(n, np.int64)
        K.gather_rows(self._meta, self._data, np.ascontiguousarray(rows, np.int64), w, self._mo,
                      values, ts, counts)  # fmt: skip
        return TableExport(keys, values[:, : self.dim], values[:, self.dim :], ts, counts)

    def drain_changes(self) -> TableChanges:
        """Rows touched (admitted, updated, assigned) and IDs removed since the last drain.

        Exact, and never dropped on overflow: a key joins the change list when its row turns
        dirty and stays once until drained, so the list holds at most the live rows plus the
        rows removed since the last drain (the same bound as the tombstones themselves).
        Requires ``track_changes``.
        """
        with self._lock.write():
            keys, rows = (np.empty(int(self._ctr[K.C_DIRTY]), np.int64) for _ in range(2))
            n = K.drain_dirty(self._slots, self._cap, self._meta, self._mo,
                              self._dirty, self._ctr, keys, rows)  # fmt: skip
            upserts = self._gather(keys[:n], rows[:n])
            removed = np.concatenate(self._removed) if self._removed else np.zeros(0, np.int64)
            self._removed = []
        if removed.shape[0]:
            removed = np.unique(removed)
            removed = removed[~np.isin(removed, upserts.ids)]
            # an ID removed and re-admitted since the last drain is an upsert, not a tombstone;
            # one re-admitted but not touched again is still present: keep it out of tombstones
            removed = removed[~self.contains(removed)]
        return TableChanges(upserts, removed)

    # ---- stats, persistence, warmup ----------------------------------------------------------

    def stats(self) -> TableStats:
        c = self._ctr
        live = int(c[K.C_LIVE])
        index_bytes = self._slots.nbytes
        meta_bytes = K.META * 4 * int(c[K.C_HW])
        row_bytes = self.width * 4 * int(c[K.C_HW])
        return TableStats(
            rows=live,
            row_capacity=int(self._data.shape[0]),
            index_slots=int(self._slots.shape[0] // 3),
            lookups=int(c[K.C_LOOKUPS]),
            hits=int(c[K.C_HITS]),
            admitted=int(c[K.C_ADMITTED]),
            filtered=int(c[K.C_FILTERED]),
            expired=int(c[K.C_EXPIRED]),
            evicted=int(c[K.C_EVICTED]),
            removed=int(c[K.C_REMOVED]),
            assigned=int(c[K.C_ASSIGNED]),
            grad_rows=int(c[K.C_GRAD_ROWS]),
            grad_missing=int(c[K.C_GRAD_MISSING]),
            nonfinite_rejected=int(c[K.C_NONFINITE]),
            sketch_decays=int(c[K.C_SKETCH_DECAYS]),
            pending_changes=int(c[K.C_DIRTY]),
            bytes_per_row_overhead=(index_bytes + meta_bytes) / live if live else 0.0,
            bytes_total=index_bytes + row_bytes + self._sketch.nbytes,
        )

    def sketch_estimate(self, ids: Any) -> np.ndarray:
        """The admission sketch's current count estimate for each ID (0 without a sketch)."""
        keys = check_ids(ids)
        out = np.zeros(keys.shape[0], np.uint32)
        if self._min_count > 1:
            with self._lock.read():
                K.sketch_estimate(self._sketch, self._sk_seeds, keys, out)
        return out.astype(np.int64)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a snapshot directory atomically (see :mod:`freshrec.table.snapshot`)."""
        from freshrec.table.snapshot import save_table

        return save_table(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingTable:
        """Read a snapshot directory; a truncated or corrupted file raises CorruptionError."""
        from freshrec.table.snapshot import load_table

        return load_table(path)

    @staticmethod
    def warmup() -> None:
        """Compile (or load from cache) every kernel, so no request pays for compilation."""
        from freshrec.table.config import FTRL, SGD, Adagrad, Adam, AdmissionConfig, RowwiseAdagrad

        for opt in (SGD(momentum=0.5), Adagrad(), RowwiseAdagrad(), Adam(), FTRL()):
            adm = AdmissionConfig(min_count=2, sketch_width=16)
            t = EmbeddingTable(TableConfig(dim=2, optimizer=opt, ttl=1.0, max_rows=64, admission=adm))
            ids = np.arange(4, dtype=np.int64)
            t.lookup(ids, train=True, now=0)
            t.lookup(ids, train=True, now=0)
            t.lookup(ids)
            t.apply_gradients(ids, np.ones((4, 2), np.float32), now=0)
            t.assign(ids, np.ones((4, 2), np.float32))
            t.export()
            t.drain_changes()
            t.expire(10.0)
            t.remove(ids)

    # ---- internals for the snapshot module ---------------------------------------------------

    def _snapshot_state(self) -> dict[str, Any]:
        return {
            "sketch": self._sketch,
            "sketch_seeds": self._sk_seeds,
            "counters": self._ctr,
        }
