"""Jagged and Batch: selection and concatenation against plain lists of lists."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.errors import InputError
from freshrec.features import Batch, Jagged


def rows_of(j: Jagged) -> list[list[int]]:
    return [j.values[j.offsets[i] : j.offsets[i + 1]].tolist() for i in range(j.size)]


def jagged(rows: list[list[int]]) -> Jagged:
    return Jagged.from_lengths(np.array([v for r in rows for v in r], np.int64), np.array([len(r) for r in rows]))


ROWS = [[1, 2, 3], [], [4], [5, 6], [], [7, 8, 9, 10]]


def test_jagged_take_matches_list_indexing():
    j = jagged(ROWS)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.integers(0, len(ROWS), size=rng.integers(0, 12))
        assert rows_of(j.take(idx)) == [ROWS[i] for i in idx]
    assert rows_of(j.take([-1, 0])) == [ROWS[-1], ROWS[0]]


def test_jagged_slice_concat_truncate():
    j = jagged(ROWS)
    for lo in range(len(ROWS) + 1):
        for hi in range(lo, len(ROWS) + 1):
            assert rows_of(j.slice(lo, hi)) == ROWS[lo:hi]
    assert rows_of(Jagged.concat([j.slice(0, 2), j.slice(2, 2), j.slice(2, 6)])) == ROWS
    assert rows_of(j.truncate(2)) == [r[:2] for r in ROWS]
    assert j.lengths.tolist() == [len(r) for r in ROWS]
    single = Jagged.single(np.array([4, 5, 6]))
    assert single.is_single and not j.is_single
    np.testing.assert_array_equal(single.offsets, np.arange(4))


@pytest.mark.parametrize(
    "values, offsets, match",
    [
        (np.array([1, 2]), np.array([0, 1]), "offsets must run"),
        (np.array([1, 2]), np.array([0, 2, 1, 2]), "non-decreasing"),
        (np.array([1.0]), np.array([0, 1]), "int64"),
        (np.array([1]), np.array([1, 1]), "offsets must run"),
    ],
)
def test_jagged_rejects_inconsistent_arrays(values, offsets, match):
    with pytest.raises(InputError, match=match):
        Jagged(values, offsets.astype(np.int64) if offsets.dtype.kind == "i" else offsets)


def make_batch(n: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 4, n)
    return Batch(
        sparse={
            "user": Jagged.single(rng.integers(0, 100, n)),
            "hist": Jagged.from_lengths(rng.integers(0, 50, lengths.sum()), lengths),
        },
        dense=rng.normal(size=(n, 3)).astype(np.float32),
        labels=rng.integers(0, 2, (n, 1)).astype(np.float32),
        weights=rng.random(n).astype(np.float32),
        event_time=np.arange(n, dtype=np.float64) * 10,
    )


def assert_batches_equal(a: Batch, b: Batch) -> None:
    assert list(a.sparse) == list(b.sparse)
    for k in a.sparse:
        assert a.sparse[k] == b.sparse[k], k
    for field in ("dense", "labels", "weights", "event_time"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_batch_take_slice_concat_are_consistent():
    b = make_batch(37)
    assert b.size == len(b) == 37
    parts = [b.slice(0, 10), b.slice(10, 10), b.slice(10, 37)]
    assert [p.size for p in parts] == [10, 0, 27]
    assert_batches_equal(Batch.concat(parts), b)
    perm = np.random.default_rng(1).permutation(37)
    shuffled = b.take(perm)
    np.testing.assert_array_equal(shuffled.event_time, b.event_time[perm])
    assert rows_of(shuffled.sparse["hist"]) == [rows_of(b.sparse["hist"])[i] for i in perm]
    assert_batches_equal(shuffled.take(np.argsort(perm)), b)


def test_batch_slices_are_copies():
    b = make_batch(5)
    s = b.slice(0, 2)
    s.dense[:] = 0
    s.sparse["user"].values[:] = -1
    assert b.dense[0].any() and b.sparse["user"].values[0] != -1


def test_batch_validates_shapes():
    b = make_batch(4)
    with pytest.raises(InputError, match="dense"):
        Batch(b.sparse, b.dense[:3], b.labels, b.weights, b.event_time)
    with pytest.raises(InputError, match="weights"):
        Batch(b.sparse, b.dense, b.labels, b.weights.astype(np.float64), b.event_time)
    with pytest.raises(InputError, match="hist"):
        Batch({**b.sparse, "hist": b.sparse["hist"].slice(0, 3)}, b.dense, b.labels, b.weights, b.event_time)


def test_concat_rejects_mismatched_batches():
    a = make_batch(3)
    b = make_batch(3)
    b.sparse = {"hist": b.sparse["hist"], "user": b.sparse["user"]}
    with pytest.raises(InputError, match="slots"):
        Batch.concat([a, b])
    with pytest.raises(InputError, match="at least one"):
        Batch.concat([])
    with pytest.raises(InputError, match="out of range"):
        a.take([3])
