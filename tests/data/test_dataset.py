"""Dataset: time order, splits, batching, refitting; rebatch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from freshrec.data import Dataset, rebatch
from freshrec.errors import ConfigError, DataError, InputError
from freshrec.features import Batch, DenseFeature, FeatureSpec, Jagged, SparseSlot

SPEC = FeatureSpec(
    sparse=[SparseSlot(name="u"), SparseSlot(name="g", multi_valued=True)],
    dense=[DenseFeature(name="x", transform="standardize")],
    labels=["y"],
)


def make(n=100, seed=0, time=True):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 3, n)
    cols = {
        "u": pa.array([f"user{i % 7}" for i in range(n)]),
        "g": Jagged.from_lengths(np.arange(lengths.sum()), lengths),
        "x": rng.normal(5, 2, n),
        "y": rng.integers(0, 2, n).astype(np.float32),
        "row": np.arange(n),
    }
    t = rng.permutation(n).astype(np.float64) if time else None
    return Dataset(SPEC, cols, event_time=t, source="mem"), t


def test_rows_are_sorted_by_time_with_every_column():
    ds, t = make()
    order = np.argsort(t, kind="stable")
    np.testing.assert_array_equal(ds.columns["row"], order)
    np.testing.assert_array_equal(ds.event_time, t[order])
    np.testing.assert_array_equal(ds.columns["u"].to_numpy(zero_copy_only=False), [f"user{i % 7}" for i in order])


def test_split_fit_and_batches():
    ds, _ = make()
    train, test = ds.split_by_time(0.7)
    assert (len(train), len(test)) == (70, 30) and train.event_time[-1] <= test.event_time[0]
    with pytest.raises(ConfigError, match=r"call spec.fit"):
        train.encode()
    train = train.fit()
    test = test.with_spec(train.spec)
    mean = train.spec.dense_feature("x").mean
    assert mean == pytest.approx(train.columns["x"].mean())  # fitted on train rows only
    batches = list(train.batches(32))
    assert [b.size for b in batches] == [32, 32, 6]
    whole = Batch.concat(batches)
    np.testing.assert_array_equal(whole.event_time, train.event_time)
    assert [b.size for b in train.batches(32, drop_last=True)] == [32, 32]
    assert test.encode().size == 30


def test_shuffled_batches_are_seeded_permutations():
    ds, _ = make(time=False)
    ds = ds.fit()
    a = np.concatenate([b.event_time for b in ds.batches(16, shuffle=True, seed=3)])
    b = np.concatenate([b.event_time for b in ds.batches(16, shuffle=True, seed=3)])
    c = np.concatenate([b.event_time for b in ds.batches(16, shuffle=True, seed=4)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.sort(a), np.arange(100))


def test_no_time_keeps_row_order():
    ds, _ = make(time=False)
    assert not ds.has_time
    np.testing.assert_array_equal(ds.columns["row"], np.arange(100))
    _, rest = ds.split_by_time(0.25)
    np.testing.assert_array_equal(rest.columns["row"][:3], [25, 26, 27])
    np.testing.assert_array_equal(rest.event_time[:3], [25, 26, 27])
    picked = ds.take(np.array([50, 10]))
    np.testing.assert_array_equal(picked.columns["row"], [50, 10])
    np.testing.assert_array_equal(picked.event_time, [50, 10])


def test_take_and_slice_keep_columns_aligned():
    ds, _ = make()
    ds = ds.fit()
    sub = ds.take(np.array([50, 10, 30]))  # re-sorted by time
    np.testing.assert_array_equal(sub.event_time, np.sort(ds.event_time[[50, 10, 30]]))
    full = ds.encode()
    s = ds.slice(10, 20).encode()
    assert s.sparse["g"] == full.sparse["g"].slice(10, 20)


def test_bad_datasets():
    ds, _ = make()
    with pytest.raises(DataError, match="mem: no column for sparse slot 'missing'"):
        ds.with_spec(FeatureSpec(sparse=[SparseSlot(name="missing")], labels=["y"]))
    with pytest.raises(DataError, match="column 'b' has 2 rows, expected 3"):
        Dataset(SPEC, {"a": np.zeros(3), "b": np.zeros(2)})
    with pytest.raises(DataError, match="event_time has missing"):
        Dataset(SPEC, {**make()[0].columns}, event_time=np.full(100, np.nan))
    cols = {**make()[0].columns}
    for bad, row in ((np.nan, 4), (-1.0, 4), (np.inf, 4)):
        w = np.ones(100)
        w[3] = bad
        with pytest.raises(
            DataError,
            match=f"1 sample weights are negative, missing or not a finite float32, the first in data row {row}",
        ):
            Dataset(SPEC, cols, weights=w)
    for scale in (1e3, 1e6, 1e9):  # a Unix time in ms, us or ns: ttl and windows would be off by that much
        with pytest.raises(
            DataError, match=r"event_time reaches 1\.7e\+\d+ in absolute value, past the year 5000 in seconds"
        ):
            Dataset(SPEC, cols, event_time=1.7e9 * scale + np.arange(100))
    Dataset(SPEC, cols, event_time=1.7e9 + np.arange(100))  # seconds
    with pytest.raises(DataError, match="every sample weight is 0"):  # every metric came out NaN, quietly
        Dataset(SPEC, cols, weights=np.zeros(100))
    with pytest.raises(InputError, match="fraction"):
        ds.split_by_time(1.0)
    with pytest.raises(InputError, match="batch_size"):
        next(ds.batches(0))


def test_rebatch_cuts_exact_sizes():
    ds, _ = make(time=False)
    full = ds.fit().encode()
    chunks = [full.slice(0, 7), full.slice(7, 7), full.slice(7, 60), full.slice(60, 100)]
    out = list(rebatch(chunks, 25))
    assert [b.size for b in out] == [25, 25, 25, 25]
    np.testing.assert_array_equal(Batch.concat(out).event_time, full.event_time)
