"""The batch that travels from data to model: per-slot ID lists, dense values, labels.

Shapes (letters used below): ``B`` rows, ``N`` IDs of one slot over the whole batch,
``F`` dense features, ``L`` labels.

A slot's IDs are a :class:`Jagged` array (TorchRec calls it a jagged tensor): row ``i`` owns
``values[offsets[i]:offsets[i + 1]]``. A single-valued slot has exactly one ID per row
(``offsets == arange(B + 1)``); a multi-valued slot may have any number, including none.

Every operation here is vectorised numpy (no per-row Python loop) and copies only what it
returns; a :class:`Batch` never aliases a caller's array that it was told to own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from freshrec.errors import InputError

__all__ = ["Batch", "Jagged"]


def _as_index(indices: np.ndarray | Sequence[int], size: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise InputError(f"indices must be a 1-D integer array, got {idx.dtype} of shape {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise InputError(f"indices out of range for {size} rows")
    return np.where(idx < 0, idx + size, idx)


@dataclass(eq=False)
class Jagged:
    """Variable-length ID lists of one slot: row ``i`` is ``values[offsets[i]:offsets[i+1]]``."""

    values: np.ndarray  # (N,) int64
    offsets: np.ndarray  # (B + 1,) int64, offsets[0] == 0, non-decreasing, offsets[-1] == N

    def __post_init__(self) -> None:
        if self.values.dtype != np.int64 or self.values.ndim != 1:
            raise InputError(f"Jagged.values must be 1-D int64, got {self.values.dtype} {self.values.shape}")
        if self.offsets.dtype != np.int64 or self.offsets.ndim != 1 or self.offsets.size == 0:
            raise InputError(
                f"Jagged.offsets must be 1-D int64 with B + 1 entries, got {self.offsets.dtype} {self.offsets.shape}"
            )
        if self.offsets[0] != 0 or self.offsets[-1] != self.values.size:
            raise InputError(
                f"Jagged.offsets must run from 0 to len(values)={self.values.size}, "
                f"got {self.offsets[0]}..{self.offsets[-1]}"
            )
        if self.offsets.size > 1 and np.any(self.offsets[1:] < self.offsets[:-1]):
            raise InputError("Jagged.offsets must be non-decreasing")

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def single(cls, ids: np.ndarray) -> Jagged:
        """One ID per row. ``(B,)`` int64 in."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        return cls(ids, np.arange(ids.size + 1, dtype=np.int64))

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray) -> Jagged:
        """Rows of the given lengths, filled from ``values`` in order."""
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.ascontiguousarray(values, dtype=np.int64), offsets)

    # ---- shape -------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of rows ``B``."""
        return int(self.offsets.size - 1)

    @property
    def lengths(self) -> np.ndarray:
        """IDs per row, ``(B,)`` int64."""
        return np.diff(self.offsets)

    @property
    def is_single(self) -> bool:
        """True when every row holds exactly one ID."""
        return self.values.size == self.size and bool(np.all(self.lengths == 1))

    # ---- selection ---------------------------------------------------------------------------
    def slice(self, lo: int, hi: int) -> Jagged:
        """Rows ``lo:hi`` (Python slice semantics for bounds within ``[0, B]``)."""
        lo, hi, _ = slice(lo, hi).indices(self.size)
        hi = max(hi, lo)
        a, b = self.offsets[lo], self.offsets[hi]
        return Jagged(self.values[a:b].copy(), self.offsets[lo : hi + 1] - a)

    def take(self, indices: np.ndarray | Sequence[int]) -> Jagged:
        """Rows at ``indices`` (any order, repeats allowed), gathered without a row loop."""
        idx = _as_index(indices, self.size)
        starts = self.offsets[idx]  # (B',)
        lengths = self.offsets[idx + 1] - starts  # (B',)
        offsets = np.zeros(idx.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # position of every output ID in the input: its row's start plus its rank in the row
        rank = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        src = np.repeat(starts, lengths) + rank  # (N',)
        return Jagged(self.values[src], offsets)

    def truncate(self, max_len: int) -> Jagged:
        """Keep at most the first ``max_len`` IDs of each row."""
        lengths = self.lengths
        if lengths.size == 0 or lengths.max() <= max_len:
            return self
        rank = np.arange(self.values.size, dtype=np.int64) - np.repeat(self.offsets[:-1], lengths)
        return Jagged.from_lengths(self.values[rank < max_len], np.minimum(lengths, max_len))

    @staticmethod
    def concat(parts: Sequence[Jagged]) -> Jagged:
        """Rows of ``parts`` one after another."""
        if not parts:
            raise InputError("Jagged.concat needs at least one part")
        values = np.concatenate([p.values for p in parts])
        shifts = np.cumsum([0] + [p.values.size for p in parts[:-1]])
        shifted = [p.offsets[1:] + s for p, s in zip(parts, shifts, strict=True)]
        offsets = np.concatenate([parts[0].offsets[:1], *shifted])
        return Jagged(values, offsets.astype(np.int64, copy=False))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Jagged):
            return NotImplemented
        return np.array_equal(self.values, other.values) and np.array_equal(self.offsets, other.offsets)


@dataclass(eq=False)
class Batch:
    """One batch of examples, ready for a model.

    Attributes:
        sparse: every slot of the feature spec, in spec order, as :class:`Jagged` IDs.
        dense: ``(B, F)`` float32, transformed as the spec declares; ``(B, 0)`` without dense.
        labels: ``(B, L)`` float32, in the spec's label order; ``(B, 0)`` when encoded without.
        weights: ``(B,)`` float32 sample weights (1.0 unless given, e.g. by negative sampling).
        event_time: ``(B,)`` float64 seconds; the row number where the data has no time.
    """

    sparse: dict[str, Jagged]
    dense: np.ndarray  # (B, F) float32
    labels: np.ndarray  # (B, L) float32
    weights: np.ndarray  # (B,) float32
    event_time: np.ndarray  # (B,) float64

    def __post_init__(self) -> None:
        b = self.event_time.shape[0] if self.event_time.ndim == 1 else -1
        checks = [
            ("dense", self.dense, 2, np.float32),
            ("labels", self.labels, 2, np.float32),
            ("weights", self.weights, 1, np.float32),
            ("event_time", self.event_time, 1, np.float64),
        ]
        for name, arr, ndim, dtype in checks:
            if arr.dtype != dtype or arr.ndim != ndim or arr.shape[0] != b:
                raise InputError(
                    f"Batch.{name} must be {ndim}-D {np.dtype(dtype).name} with {b} rows, "
                    f"got {arr.dtype} of shape {arr.shape}"
                )
        for slot, jag in self.sparse.items():
            if not isinstance(jag, Jagged) or jag.size != b:
                got = jag.size if isinstance(jag, Jagged) else type(jag).__name__
                raise InputError(f"Batch.sparse[{slot!r}] must be a Jagged of {b} rows, got {got}")

    @property
    def size(self) -> int:
        """Number of rows ``B``."""
        return int(self.event_time.shape[0])

    def __len__(self) -> int:
        return self.size

    def slice(self, lo: int, hi: int) -> Batch:
        """Rows ``lo:hi``, copied."""
        lo, hi, _ = slice(lo, hi).indices(self.size)
        hi = max(hi, lo)
        return Batch(
            sparse={k: v.slice(lo, hi) for k, v in self.sparse.items()},
            dense=self.dense[lo:hi].copy(),
            labels=self.labels[lo:hi].copy(),
            weights=self.weights[lo:hi].copy(),
            event_time=self.event_time[lo:hi].copy(),
        )

    def take(self, indices: np.ndarray | Sequence[int]) -> Batch:
        """Rows at ``indices`` (any order, repeats allowed), e.g. a shuffled minibatch."""
        idx = _as_index(indices, self.size)
        return Batch(
            sparse={k: v.take(idx) for k, v in self.sparse.items()},
            dense=self.dense[idx],
            labels=self.labels[idx],
            weights=self.weights[idx],
            event_time=self.event_time[idx],
        )

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """Rows of ``batches`` one after another. All must carry the same slots, in the same
        order, and the same number of dense features and labels."""
        if not batches:
            raise InputError("Batch.concat needs at least one batch")
        first = batches[0]
        slots = list(first.sparse)
        for i, b in enumerate(batches[1:], 1):
            if list(b.sparse) != slots:
                raise InputError(f"Batch.concat: batch {i} has slots {list(b.sparse)}, batch 0 has {slots}")
            if b.dense.shape[1] != first.dense.shape[1] or b.labels.shape[1] != first.labels.shape[1]:
                raise InputError(
                    f"Batch.concat: batch {i} has {b.dense.shape[1]} dense / {b.labels.shape[1]} labels, "
                    f"batch 0 has {first.dense.shape[1]} / {first.labels.shape[1]}"
                )
        return Batch(
            sparse={k: Jagged.concat([b.sparse[k] for b in batches]) for k in slots},
            dense=np.concatenate([b.dense for b in batches]),
            labels=np.concatenate([b.labels for b in batches]),
            weights=np.concatenate([b.weights for b in batches]),
            event_time=np.concatenate([b.event_time for b in batches]),
        )
