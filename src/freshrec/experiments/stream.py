"""The input of the online experiments: labelled examples in event-time order, as batches.

An :class:`ExampleStream` is anything with a feature ``spec`` and ``batches(batch_size)`` that
yields :class:`~freshrec.features.Batch` es in the order a trainer receives them. A data file
gives one in event-time order (:class:`DatasetStream`); the simulator through the event log and
the online joiner gives one in the joiner's emission order, each example stamped with its
impression's event time (:class:`~freshrec.experiments.sim_stream.SimStream`).

Helpers cut a stream or a batch the ways the experiments need: minibatches (shuffled for batch
training), a fixed number of equal shards (Algorithm 1 on data without time), or shards of a
fixed span of event time (sync intervals in seconds).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import pairwise
from typing import Protocol, runtime_checkable

import numpy as np

from freshrec.data import Dataset
from freshrec.errors import InputError
from freshrec.features import Batch, FeatureSpec

__all__ = ["DatasetStream", "ExampleStream", "minibatches", "shards_by_count", "shards_by_time"]


@runtime_checkable
class ExampleStream(Protocol):
    """Labelled examples in the order a trainer receives them (event-time order for a file; for
    a joined stream, emission order: an example's event time is its impression's, at most the
    join window older than its emission)."""

    @property
    def spec(self) -> FeatureSpec: ...

    @property
    def has_time(self) -> bool:
        """False when event time is a row number (data without timestamps)."""
        ...

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Batches of ``batch_size`` examples (the last may be smaller), in that order."""
        ...


class DatasetStream:
    """A time-ordered :class:`Dataset` replayed as a stream (the file as it happened)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    @property
    def spec(self) -> FeatureSpec:
        return self.dataset.spec

    @property
    def has_time(self) -> bool:
        return self.dataset.has_time

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        return self.dataset.batches(batch_size)


def minibatches(batch: Batch, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
    """``batch`` cut into consecutive pieces of ``batch_size`` rows, or in a seeded random order."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    n = batch.size
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        yield batch.take(order[lo:hi]) if order is not None else batch.slice(lo, hi)


def shards_by_count(batch: Batch, num_shards: int) -> list[Batch]:
    """``batch`` cut into ``num_shards`` consecutive shards of equal size (the first ones one
    row larger when it does not divide)."""
    if not 1 <= num_shards <= batch.size:
        raise InputError(f"cannot cut {batch.size} examples into {num_shards} shards")
    bounds = np.linspace(0, batch.size, num_shards + 1).round().astype(np.int64)
    return [batch.slice(int(lo), int(hi)) for lo, hi in pairwise(bounds)]


def shards_by_time(batches: Iterable[Batch], seconds: float, *, start: float | None = None) -> Iterator[Batch]:
    """Regroup a time-ordered stream into shards of ``seconds`` of event time each:
    shard ``k`` holds the examples with ``start + k * seconds <= t < start + (k + 1) * seconds``
    (``start`` defaults to the first example's time). Empty spans yield no shard."""
    if not seconds > 0:
        raise InputError(f"shard span must be > 0 seconds, got {seconds}")
    pending: list[Batch] = []
    current: int | None = None
    for b in batches:
        if b.size == 0:
            continue
        if start is None:
            start = float(b.event_time[0])
        if b.size > 1 and np.any(b.event_time[1:] < b.event_time[:-1]):
            raise InputError("shards_by_time needs batches in event-time order")
        k = np.floor((b.event_time - start) / seconds).astype(np.int64)  # (B,) shard of each row
        if current is not None and k[0] < current:
            raise InputError("shards_by_time needs batches in event-time order")
        cuts = np.flatnonzero(np.diff(k)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, b.size], strict=True):
            if current is not None and k[lo] != current:
                yield Batch.concat(pending)
                pending = []
            current = int(k[lo])
            pending.append(b.slice(int(lo), int(hi)))
    if pending:
        yield Batch.concat(pending)
