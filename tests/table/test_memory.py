"""Row storage: reserved mappings, and rows made resident ahead of use."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from freshrec.bench._report import rss_bytes
from freshrec.table import EmbeddingTable, _memory


def test_populate_makes_rows_resident_without_changing_them():
    arr = _memory.reserve(200_000, 64, np.float32, 2**31)
    arr[:3] = 7.0  # the populated range starts inside rows already written
    before = rss_bytes()
    if not _memory.populate(arr, 1, 100_000):
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    assert rss_bytes() - before >= 0.9 * 100_000 * 64 * 4
    assert (arr[:3] == 7.0).all() and not arr[3:100_000].any()
    assert _memory.populate(arr, 5, 5) is False  # an empty range is no call


def test_populate_async_reaches_the_rows_without_anyone_waiting():
    arr = _memory.reserve(100_000, 64, np.float32, 2**31)
    before = rss_bytes()
    _memory.populate_async(arr, 0, 100_000)
    deadline = time.monotonic() + 10
    while rss_bytes() - before < 0.9 * arr[:100_000].nbytes and time.monotonic() < deadline:
        time.sleep(0.01)
    if not _memory._can_populate:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    assert rss_bytes() - before >= 0.9 * arr[:100_000].nbytes
    assert not arr[:100_000].any()


def test_a_growing_table_populates_a_bounded_distance_ahead():
    t = EmbeddingTable(dim=64)
    keys = np.arange(300_000, dtype=np.int64) * 7919
    for lo in range(0, keys.size, 65_536):
        rows = t.find_or_insert(keys[lo : lo + 65_536], now=0)
        hw = len(t)
        assert hw <= t._ready <= t._ahead <= t._data.shape[0]
        # at most two chunks ahead: an eighth of the rows each, within 256 KiB to 16 MiB
        step = min(max(hw // 8, (256 << 10) // (4 * t.width)), (16 << 20) // (4 * t.width))
        assert t._ahead - hw <= 2 * step + 1
        assert (rows >= 0).all()
    np.testing.assert_array_equal(t.lookup(keys[::1000]), t.lookup(keys[::1000]))
    assert len(t) == keys.size


def test_reserve_makes_the_rows_resident_now():
    t = EmbeddingTable(dim=64)
    before = rss_bytes()
    t.reserve(100_000)
    if not _memory._can_populate:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    assert rss_bytes() - before >= 0.9 * 100_000 * 4 * t.width
    t.find_or_insert(np.arange(100_000), now=0)
    assert len(t) == 100_000 and t._ready >= 100_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_populates_with_its_own_thread():
    parent = EmbeddingTable(dim=8)
    parent.find_or_insert(np.arange(50_000), now=0)  # the parent's populator thread is running
    pid = os.fork()
    if pid == 0:  # the child: no populator thread was inherited; a new one must start
        code = 1
        try:
            child = EmbeddingTable(dim=8)
            child.find_or_insert(np.arange(200_000), now=0)
            ok = len(child) == 200_000 and child.contains(np.arange(200_000)).all()
            worker = _memory._populator._thread
            code = 0 if ok and ((worker is not None and worker.is_alive()) or not _memory._can_populate) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
