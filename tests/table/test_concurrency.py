"""The concurrency contract: lookups from other threads while one thread writes never crash, never
see a torn row, and never lose a key while the table grows."""

from __future__ import annotations

import threading
import time

import numpy as np

from freshrec.table import SGD, EmbeddingTable, TableConfig


def test_readers_never_see_torn_rows_or_lose_keys_during_writes_and_growth():
    dim = 32
    t = EmbeddingTable(TableConfig(dim=dim, optimizer=SGD(lr=1.0)))
    known = np.arange(20_000, dtype=np.int64)
    # every row starts with all coordinates equal, and every update keeps them equal
    t.assign(known, np.repeat(np.arange(20_000, dtype=np.float32)[:, None], dim, axis=1))
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        rng = np.random.default_rng(threading.get_ident() % 2**32)
        while not stop.is_set():
            ids = rng.choice(known, 4096)
            rows = t.lookup(ids)
            torn = (rows != rows[:, :1]).any(axis=1)
            if torn.any():
                errors.append(f"torn rows for ids {ids[torn][:5]}")
            if not t.contains(ids).all():
                errors.append("a known id was missing")

    def writer() -> None:
        rng = np.random.default_rng(1)
        fresh = 10**9
        while not stop.is_set():
            ids = rng.choice(known, 8192)
            g = np.repeat(rng.normal(size=(8192, 1)).astype(np.float32), dim, axis=1)
            t.apply_gradients(ids, g, now=0)
            # new IDs force row-array growth and index rehashes under the readers
            t.lookup(np.arange(fresh, fresh + 30_000), train=True, now=0)
            fresh += 30_000

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for th in threads:
        th.start()
    time.sleep(3.0)
    deadline = time.monotonic() + 60.0
    while len(t) <= 100_000 and time.monotonic() < deadline:  # a loaded machine, or a first compile
        time.sleep(0.1)
    stop.set()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert t.stats().grad_rows > 0 and len(t) > 100_000  # both sides really ran


def test_concurrent_writers_are_serialised():
    t = EmbeddingTable(TableConfig(dim=4, optimizer=SGD(lr=1.0), initializer={"type": "zeros"}))
    t.lookup([1], train=True, now=0)

    def work() -> None:
        for _ in range(500):
            t.apply_gradients([1], -np.ones((1, 4)), now=0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    np.testing.assert_array_equal(t.lookup([1]), np.full((1, 4), 2000.0))
