"""Row storage: reserved mappings, and rows made resident ahead of use."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time

import numpy as np
import pytest

from freshrec.bench._report import rss_bytes
from freshrec.errors import CapacityError, ConfigError
from freshrec.table import EmbeddingTable, _memory

needs_populate = pytest.mark.skipif(not _memory.supported(), reason="needs MADV_POPULATE_WRITE (Linux >= 5.14)")


_libc = ctypes.CDLL(None, use_errno=True)


def _resident(arr: np.ndarray, start: int, stop: int) -> float:
    """The fraction of the pages holding rows ``start:stop`` of ``arr`` that are resident
    (mincore(2) on exactly those pages)."""
    page = os.sysconf("SC_PAGE_SIZE")
    lo = arr.ctypes.data + start * arr.strides[0]
    hi = arr.ctypes.data + stop * arr.strides[0]
    lo, hi = lo - lo % page, hi + (-hi) % page
    vec = (ctypes.c_ubyte * ((hi - lo) // page))()
    assert _libc.mincore(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), vec) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec) / len(vec)


def _populator_idle(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _memory._populator._queue.empty() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # the request taken last may still be running


@needs_populate
def test_populate_makes_rows_resident_without_changing_them():
    arr = _memory.reserve(200_000, 64, np.float32, 2**31)
    arr[:3] = 7.0  # the populated range starts inside rows already written
    assert _resident(arr, 0, 200_000) < 0.01
    assert _memory.populate(arr, 1, 100_000)
    assert _resident(arr, 0, 100_000) == 1.0
    assert _resident(arr, 100_100, 200_000) == 0.0  # nothing past the range
    assert (arr[:3] == 7.0).all() and not arr[3:100_000].any()
    assert _memory.populate(arr, 5, 5) is False  # an empty range is no call


@needs_populate
def test_populate_async_reaches_the_rows_without_anyone_waiting():
    arr = _memory.reserve(100_000, 64, np.float32, 2**31)
    _memory.populate_async(arr, 0, 100_000)
    _populator_idle()
    assert _resident(arr, 0, 100_000) == 1.0
    assert not arr[:100_000].any()


def test_only_a_kernel_without_the_call_turns_population_off(monkeypatch):
    arr = _memory.reserve(1000, 8, np.float32, 2**31)
    monkeypatch.setattr(_memory, "_can_populate", True)

    def failing(code):
        def madvise(*args):
            ctypes.set_errno(code)
            return -1

        return madvise

    monkeypatch.setattr(_memory, "_madvise", failing(errno.ENOMEM))  # memory pressure: try again later
    assert _memory.populate(arr, 0, 1000) is False and _memory._can_populate
    monkeypatch.setattr(_memory, "_madvise", failing(errno.EINVAL))  # a kernel before 5.14: stop trying
    assert _memory.populate(arr, 0, 1000) is False and not _memory._can_populate
    arr[:1000] = 1.0  # the memory works all the same (arr spans a whole reservation: slice it)
    assert arr[:1000].sum() == 8000


@needs_populate
def test_a_growing_table_populates_a_bounded_distance_ahead():
    t = EmbeddingTable(dim=64)
    keys = np.arange(300_000, dtype=np.int64) * 7919
    row_bytes = 4 * t.width
    for lo in range(0, keys.size, 65_536):
        rows = t.find_or_insert(keys[lo : lo + 65_536], now=0)
        hw = len(t)
        assert hw <= t._ready <= t._ahead <= t._data.shape[0]
        # at most two chunks ahead: an eighth of the rows each, within 16 KiB to 16 MiB
        step = min(max(hw // 8, (16 << 10) // row_bytes), (16 << 20) // row_bytes)
        assert t._ahead - hw <= 2 * step + 1
        assert (rows >= 0).all()
        _populator_idle()
        # rows up to _ahead are resident although only rows below hw were ever written
        assert _resident(t._data, hw, t._ahead) == 1.0
        # and nothing past them, but for the rest of a huge page (past the first 32 MiB)
        slack = (2 << 20) // row_bytes + 1
        assert _resident(t._data, t._ahead + slack, t._ahead + 100_000) == 0.0
    # the same rows as a table whose memory was all reserved (and populated) up front
    ref = EmbeddingTable(dim=64)
    ref.reserve(keys.size)
    ref.find_or_insert(keys, now=0)
    np.testing.assert_array_equal(t.lookup(keys), ref.lookup(keys))


def test_small_tables_keep_little_memory_resident():
    before = rss_bytes()
    tables = [EmbeddingTable(dim=16) for _ in range(300)]
    for i, t in enumerate(tables):
        t.find_or_insert(np.arange(10) + i, now=0)
    _populator_idle()
    assert (rss_bytes() - before) / len(tables) < 100 << 10  # was 512 KiB with 256 KiB chunks


@needs_populate
def test_reserve_makes_the_rows_resident_now():
    t = EmbeddingTable(dim=64)
    assert _resident(t._data, 0, 100_000) < 0.01
    t.reserve(100_000)
    assert _resident(t._data, 0, 100_000) == 1.0
    t.find_or_insert(np.arange(100_000), now=0)
    assert len(t) == 100_000 and t._ready >= 100_000


@needs_populate
def test_expected_rows_presizes_at_creation_and_growth_continues_past_it():
    t = EmbeddingTable(dim=16, expected_rows=50_000)
    assert _resident(t._data, 0, 50_000) == 1.0
    assert t._cap * 3 >= 50_000 * 4  # the index holds them under its load factor
    cap = t._cap
    t.find_or_insert(np.arange(50_000), now=0)
    assert t._cap == cap  # no rehash on the way there
    t.find_or_insert(np.arange(50_000, 120_000), now=0)  # past the expectation: grows as usual
    assert len(t) == 120_000 and t._cap > cap
    assert (t.lookup(np.arange(120_000)) != 0).any(axis=1).all()


def test_expected_rows_is_checked():
    with pytest.raises(ConfigError, match="expected_rows"):
        EmbeddingTable(dim=4, expected_rows=0)
    with pytest.raises(ConfigError, match="expected_rows"):
        EmbeddingTable(dim=4, expected_rows=2**31)


def test_reserve_beyond_the_row_limit_is_refused_and_changes_nothing():
    t = EmbeddingTable(dim=4)
    t.find_or_insert(np.arange(10), now=0)
    with pytest.raises(CapacityError, match="at most"):
        t.reserve(2**31)
    assert len(t) == 10 and t._ready < 2**20
    assert t.contains(np.arange(10)).all()


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
            code = 0 if ok and ((worker is not None and worker.is_alive()) or not _memory.supported()) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _vm_flags(addr: int) -> set[str]:
    """The VmFlags of the mapping holding ``addr`` (``hg``: huge pages requested)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {addr:#x}")


@pytest.mark.skipif(
    not os.path.exists("/proc/self/smaps") or not os.path.exists("/sys/kernel/mm/transparent_hugepage"),
    reason="needs /proc/self/smaps and a kernel with transparent huge pages",
)
@pytest.mark.parametrize("mode", ["auto", True, False])
def test_huge_pages_are_requested_for_big_row_ranges_and_the_index(mode):
    t = EmbeddingTable(dim=16, huge_pages=mode)
    t.find_or_insert(np.arange(1000), now=0)
    row_bytes = t._data.strides[0]
    far = _memory.HUGE_FROM_BYTES // row_bytes + 1000  # a row past the first 32 MiB
    first, beyond = _vm_flags(t._data.ctypes.data), _vm_flags(t._data[far:].ctypes.data)
    index = _vm_flags(t._slots.ctypes.data)
    if mode is False:
        assert "hg" not in first | beyond | index
    elif mode is True:
        assert {"hg"} <= first & beyond & index
    else:  # a small table's rows stay on 4 KiB pages; a big one's and the index get huge pages
        assert "hg" not in first and "hg" in beyond and "hg" in index


def test_a_kernel_refusing_huge_pages_still_gets_tables(monkeypatch, caplog):
    """A kernel built without THP answers MADV_HUGEPAGE with EINVAL: a hint, not an error."""
    monkeypatch.setattr(_memory, "_huge_refused", False)
    monkeypatch.setattr(mmap, "MADV_HUGEPAGE", 1000, raising=False)  # advice no kernel knows
    t = EmbeddingTable(dim=16, huge_pages=True)
    t.find_or_insert(np.arange(100_000), now=0)
    assert len(t) == 100_000 and t._data.shape[0] > 100_000  # the full reservation, not a fallback
    assert _memory._huge_refused and "refused transparent huge pages" in caplog.text


def test_expected_rows_beyond_max_rows_presizes_max_rows_only():
    t = EmbeddingTable(dim=4, max_rows=1000, expected_rows=100_000)
    assert 1000 <= t._ready < 100_000 and t._cap * 3 < 100_000 * 4
