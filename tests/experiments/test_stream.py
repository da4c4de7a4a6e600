"""Cutting a stream: minibatches, equal shards, and shards of event time (checked against a plain
per-row assignment)."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.data import load_movielens, movielens_spec
from freshrec.errors import InputError
from freshrec.experiments.stream import (
    DatasetStream,
    ExampleStream,
    minibatches,
    shards_by_count,
    shards_by_time,
)
from freshrec.features import Batch, Jagged


def _batch(times: np.ndarray) -> Batch:
    n = times.size
    return Batch(
        sparse={"id": Jagged.single(np.arange(n, dtype=np.int64))},
        dense=np.zeros((n, 0), np.float32),
        labels=np.zeros((n, 1), np.float32),
        weights=np.ones(n, np.float32),
        event_time=times.astype(np.float64),
    )


def test_minibatches_cover_every_row_once():
    b = _batch(np.arange(10.0))
    plain = list(minibatches(b, 4))
    assert [x.size for x in plain] == [4, 4, 2]
    assert np.concatenate([x.sparse["id"].values for x in plain]).tolist() == list(range(10))
    shuffled = np.concatenate([x.sparse["id"].values for x in minibatches(b, 3, shuffle=True, seed=1)])
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))
    again = np.concatenate([x.sparse["id"].values for x in minibatches(b, 3, shuffle=True, seed=1)])
    assert np.array_equal(shuffled, again)
    with pytest.raises(InputError):
        next(minibatches(b, 0))


def test_shards_by_count():
    shards = shards_by_count(_batch(np.arange(10.0)), 3)
    assert [s.size for s in shards] == [3, 4, 3]
    assert np.concatenate([s.event_time for s in shards]).tolist() == list(range(10))
    with pytest.raises(InputError):
        shards_by_count(_batch(np.arange(2.0)), 3)


def test_shards_by_time_matches_a_per_row_reference():
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(100.0, 1000.0, 500))
    times[50:60] = times[49]  # ties
    span = 37.0
    pieces = [_batch(times[lo:hi]) for lo, hi in [(0, 7), (7, 200), (200, 201), (201, 500)]]
    shards = list(shards_by_time(pieces, span))
    key = np.floor((times - times[0]) / span)
    expected = [times[key == k] for k in np.unique(key)]  # empty spans give no shard
    assert len(shards) == len(expected)
    for got, want in zip(shards, expected, strict=True):
        assert np.array_equal(got.event_time, want)
    with pytest.raises(InputError, match="order"):
        list(shards_by_time([_batch(np.array([5.0, 1.0]))], span))
    with pytest.raises(InputError, match="order"):
        list(shards_by_time([_batch(np.array([500.0])), _batch(np.array([1.0]))], span))
    with pytest.raises(InputError):
        list(shards_by_time(pieces, 0.0))


def test_dataset_stream_is_an_example_stream(data_dir):
    ds = load_movielens(data_dir / "ml-100k", movielens_spec())
    stream = DatasetStream(ds)
    assert isinstance(stream, ExampleStream) and stream.has_time and len(stream) == 100_000
    first = next(stream.batches(1000))
    assert first.size == 1000 and np.all(np.diff(first.event_time) >= 0)
