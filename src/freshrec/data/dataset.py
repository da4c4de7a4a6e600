"""An in-memory data set: raw columns plus the feature spec that turns them into batches.

Rows are kept in event-time order (a stable sort when loaded), so iterating without shuffling
replays the data as it happened, and a time split is a single cut: every training row is at
or before every test row. Data without a time column keeps its file order, and its event time
is the row number.

Columns stay raw (strings unhashed, dense values untransformed), so the same data can be
re-encoded under another spec (:meth:`Dataset.with_spec`) or have its dense statistics fitted
on a training split (:meth:`Dataset.fit`). The encoded :class:`Batch` is built once and cached;
:meth:`batches` slices it. Files too large for memory go through the ``stream_*`` functions of
the loaders instead, which yield batches chunk by chunk (:func:`rebatch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

import numpy as np
import pyarrow as pa

from freshrec.errors import DataError, InputError
from freshrec.features import Batch, FeatureSpec, Jagged
from freshrec.features._encode import check_event_seconds

__all__ = [
    "Column",
    "Dataset",
    "drop_repeats",
    "rebatch",
]

Column = np.ndarray | pa.Array | Jagged  # (B,) values, or (B,) lists of IDs


def _length(col: Column) -> int:
    return col.size if isinstance(col, Jagged) else len(col)


def _take(col: Column, idx: np.ndarray) -> Column:
    if isinstance(col, np.ndarray):
        return col[idx]
    return col.take(idx)  # pa.Array.take and Jagged.take both accept an int64 numpy array


def _slice(col: Column, lo: int, hi: int) -> Column:
    if isinstance(col, np.ndarray):
        return col[lo:hi]
    if isinstance(col, Jagged):
        return col.slice(lo, hi)
    return col.slice(lo, hi - lo)


class Dataset:
    """Columns of one data set, in event-time order, with the :class:`FeatureSpec` to encode them.

    Args:
        spec: how columns become a :class:`Batch`; every feature and label must have a column.
        columns: name -> ``(B,)`` numpy array, Arrow array, or :class:`Jagged` (lists of IDs).
        event_time: ``(B,)`` seconds, or None when the data has no time (row order is used).
        weights: ``(B,)`` sample weights, or None for 1.0.
        source: the file it came from, for error messages.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        columns: Mapping[str, Column],
        *,
        event_time: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        source: str = "<memory>",
    ) -> None:
        cols = dict(columns)
        if not cols:
            raise DataError(f"{source}: a data set needs at least one column")
        n = _length(next(iter(cols.values())))
        for name, col in cols.items():
            if not isinstance(col, np.ndarray | pa.Array | Jagged):
                raise InputError(f"{source}: column {name!r} must be a numpy/Arrow array or Jagged")
            if _length(col) != n:
                raise DataError(f"{source}: column {name!r} has {_length(col)} rows, expected {n}")
        self.source = source
        self.has_time = event_time is not None
        if event_time is None:
            time = np.arange(n, dtype=np.float64)
        else:
            time = np.asarray(event_time, dtype=np.float64)
            if time.shape != (n,):
                raise DataError(f"{source}: event_time has shape {time.shape}, expected ({n},)")
            if not np.isfinite(time).all():
                raise DataError(f"{source}: event_time has missing or non-finite values")
            check_event_seconds(time, "event_time", source)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (n,):
                raise DataError(f"{source}: weights have shape {weights.shape}, expected ({n},)")
            bad = np.flatnonzero(~(weights >= 0) | ~(weights <= np.finfo(np.float32).max))  # NaN fails both
            if bad.size:
                raise DataError(f"{source}: {bad.size:,} sample weights are negative, missing or not a finite float32, "
                                f"the first in data row {bad[0] + 1} ({float(weights[bad[0]])!r})")  # fmt: skip
            weights = weights.astype(np.float32)
            if n and not weights.any():  # every metric would be 0/0 = NaN, quietly
                raise DataError(f"{source}: every sample weight is 0")
        if self.has_time and n > 1 and np.any(time[1:] < time[:-1]):
            order = np.argsort(time, kind="stable")
            cols = {k: _take(v, order) for k, v in cols.items()}
            time = time[order]
            weights = weights[order] if weights is not None else None
        self._columns = cols
        self._event_time = time
        self._weights = weights
        self._spec = spec
        self._batch: Batch | None = None
        self._check_spec(spec)

    def _check_spec(self, spec: FeatureSpec) -> None:
        needed = [("sparse slot", s.name) for s in spec.sparse]
        needed += [("dense feature", d.name) for d in spec.dense]
        needed += [("label", lab) for lab in spec.labels]
        missing = [f"{what} {name!r}" for what, name in needed if name not in self._columns]
        if missing:
            raise DataError(f"{self.source}: no column for {', '.join(missing)}; columns: {sorted(self._columns)}")

    # ---- what it holds -----------------------------------------------------------------------
    @property
    def spec(self) -> FeatureSpec:
        return self._spec

    @property
    def columns(self) -> Mapping[str, Column]:
        """The raw columns (read-only view), in event-time order."""
        return MappingProxyType(self._columns)

    @property
    def event_time(self) -> np.ndarray:
        """``(B,)`` float64 seconds, non-decreasing when :attr:`has_time`; else the row number."""
        return self._event_time

    @property
    def weights(self) -> np.ndarray | None:
        return self._weights

    def __len__(self) -> int:
        return int(self._event_time.size)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.source!r}, rows={len(self)}, slots={self._spec.slot_names}, "
            f"dense={self._spec.dense_names}, labels={self._spec.labels})"
        )

    # ---- derived data sets ---------------------------------------------------------------------
    def _derive(self, columns: dict[str, Column], time: np.ndarray, weights: np.ndarray | None,
                spec: FeatureSpec, batch: Batch | None) -> Dataset:  # fmt: skip
        out = Dataset.__new__(Dataset)
        out.source, out.has_time, out._spec = self.source, self.has_time, spec
        out._columns, out._event_time, out._weights, out._batch = columns, time, weights, batch
        return out

    def with_spec(self, spec: FeatureSpec) -> Dataset:
        """The same rows under another spec (its features must have columns here); the same
        spec gives this data set itself (and its encoded batch, if there is one)."""
        if spec == self._spec:
            return self
        self._check_spec(spec)
        return self._derive(self._columns, self._event_time, self._weights, spec, None)

    def fit(self) -> Dataset:
        """The same rows with the spec's dense statistics fitted on them (see FeatureSpec.fit);
        fit a training split, then give the test split ``test.with_spec(train.spec)``."""
        return self.with_spec(self._spec.fit(self._columns))

    def slice(self, lo: int, hi: int) -> Dataset:
        """Rows ``lo:hi`` (clipped to the data set)."""
        lo, hi, _ = slice(lo, hi).indices(len(self))
        hi = max(lo, hi)
        cols = {k: _slice(v, lo, hi) for k, v in self._columns.items()}
        weights = self._weights[lo:hi] if self._weights is not None else None
        batch = self._batch.slice(lo, hi) if self._batch is not None else None
        return self._derive(cols, self._event_time[lo:hi], weights, self._spec, batch)

    def take(self, indices: np.ndarray) -> Dataset:
        """Rows at ``indices``: re-sorted by time if the data has time, else in the given order
        (keeping their row numbers as event times)."""
        idx = np.asarray(indices, dtype=np.int64)
        cols = {k: _take(v, idx) for k, v in self._columns.items()}
        weights = self._weights[idx] if self._weights is not None else None
        if not self.has_time:  # keep the original row numbers as event times
            return self._derive(cols, self._event_time[idx], weights, self._spec, None)
        time = self._event_time[idx]
        return Dataset(self._spec, cols, event_time=time, weights=weights, source=self.source)

    def split_by_time(self, frac: float) -> tuple[Dataset, Dataset]:
        """``(first, rest)``: the earliest ``round(frac * B)`` rows and the others. Time-ordered
        when the data has time (every row of ``first`` is at or before every row of ``rest``),
        file order otherwise."""
        if not 0.0 < frac < 1.0:
            raise InputError(f"split fraction must be in (0, 1), got {frac}")
        cut = round(frac * len(self))
        return self.slice(0, cut), self.slice(cut, len(self))

    # ---- batches ------------------------------------------------------------------------------
    def encode(self) -> Batch:
        """All rows as one :class:`Batch` (built once, then cached)."""
        if self._batch is None:
            self._batch = self._spec.encode(
                self._columns, weights=self._weights, event_time=self._event_time, source=self.source
            )
        return self._batch

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> Iterator[Batch]:
        """Consecutive batches of ``batch_size`` rows (the last may be smaller unless
        ``drop_last``). In event-time order, or in a seeded random order with ``shuffle``."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        full = self.encode()
        n = full.size
        stop = n - n % batch_size if drop_last else n
        order = np.random.default_rng(seed).permutation(n) if shuffle else None
        for lo in range(0, stop, batch_size):
            hi = min(lo + batch_size, n)
            yield full.take(order[lo:hi]) if order is not None else full.slice(lo, hi)


def rebatch(chunks: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Re-cut a stream of batches of any sizes into batches of exactly ``batch_size`` rows
    (the last one may be smaller)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    pending: Batch | None = None
    for chunk in chunks:
        pending = chunk if pending is None else Batch.concat([pending, chunk])
        lo = 0
        while pending.size - lo >= batch_size:
            yield pending.slice(lo, lo + batch_size)
            lo += batch_size
        pending = pending.slice(lo, pending.size) if lo else pending
    if pending is not None and pending.size:
        yield pending


def drop_repeats(data: Dataset) -> tuple[Dataset, int]:
    """``data`` without the examples identical to an earlier one (every feature the spec reads,
    the label, the weight, and the event time when the data has time), and how many were dropped.

    A repeated example on both sides of a time split is a leak: the model is scored on rows it
    memorised. (The shared Criteo sample is 900 distinct rows written 12 times over.)
    """
    if len(data) == 0:
        return data, 0
    b = data.with_spec(_unstandardized(data.spec)).encode()
    parts: list[np.ndarray] = []  # (B,) int64 columns that together identify an example
    for jag in b.sparse.values():
        parts += _row_keys(jag)
    for f in (b.dense, b.labels, b.weights[:, None]):
        bits = np.ascontiguousarray(f, np.float32).view(np.int32).astype(np.int64)  # (B, k)
        parts += list(bits.T)
    if data.has_time:
        parts.append(np.ascontiguousarray(b.event_time).view(np.int64))
    rows = np.ascontiguousarray(np.stack(parts, axis=1))  # (B, K)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()  # (B,)
    _, first = np.unique(keys, return_index=True)
    if first.size == len(data):
        return data, 0
    return data.take(np.sort(first)), len(data) - int(first.size)


def _unstandardized(spec: FeatureSpec) -> FeatureSpec:
    """``spec`` with each standardize transform cut back to what precedes it, so it encodes before
    any fit; standardizing is increasing per feature, so it tells the same rows apart."""
    if not any(d.standardizes for d in spec.dense):
        return spec
    before = {"standardize": "none", "log1p_standardize": "log1p"}
    dense = [d.model_copy(update={"transform": before[d.transform], "mean": None, "std": None}) if d.standardizes
             else d for d in spec.dense]  # fmt: skip
    return spec.model_copy(update={"dense": dense})


def _row_keys(jag: Jagged) -> list[np.ndarray]:
    """One slot's IDs as per-row key columns: the ID itself when the slot is single-valued,
    else the row's length and the sum of a 64-bit mix of (ID, position in the row)."""
    lengths = np.diff(jag.offsets)  # (B,)
    if jag.values.size == lengths.size and np.all(lengths == 1):
        return [jag.values]
    sums = np.zeros(lengths.size, np.uint64)
    if jag.values.size:
        pos = (np.arange(jag.values.size) - np.repeat(jag.offsets[:-1], lengths)).astype(np.uint64)  # (N,)
        x = jag.values.view(np.uint64) ^ (pos * np.uint64(0x9E3779B97F4A7C15))
        x = (x ^ (x >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's finaliser
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        nonempty = lengths > 0
        # reduceat from each non-empty row's start to the next one's: exactly that row's IDs
        sums[nonempty] = np.add.reduceat(x, jag.offsets[:-1][nonempty])
    return [lengths.astype(np.int64), sums.view(np.int64)]
