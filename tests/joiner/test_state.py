"""The state store: the close order across memory and disk, spilling, checkpoints that commit or
vanish as a whole, snapshot files, and refusals."""

from __future__ import annotations

import os
import sqlite3
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.errors import CorruptionError, StateError
from freshrec.joiner import state as state_module
from freshrec.joiner._wire import decode_batch
from freshrec.joiner.state import Entry, StateStore
from freshrec.stream import encode

from .helpers import imp

# the input log the entries were read from: (source index, offset) -> record; a snapshot refers
# to records there, and a restore reads them back through fetch()
LOG: dict[tuple[int, int], bytes] = {}


def fetch(where):
    return [LOG[p] for p in where]


def entries(times, reqs=None, first=0):
    """(key, Entry) per time, seqs and offsets counting from ``first`` (entries arrive in seq order)."""
    reqs = reqs or list(range(len(times)))
    blobs = encode([imp(first + i, t, req=r) for i, (t, r) in enumerate(zip(times, reqs, strict=True))])
    heads = decode_batch(blobs)
    LOG.update(((0, first + i), b) for i, b in enumerate(blobs))
    return [
        ((h.request_id, h.item_id), Entry(b, h.event_id, h.event_time, h.user_id, first + i, 0, first + i, True))
        for i, (h, b) in enumerate(zip(heads, blobs, strict=True))
    ]


@pytest.mark.parametrize("memory_max", [0, 1, 3, 100])
def test_closing_order_is_the_same_from_memory_and_disk(tmp_path, memory_max):
    times = [5.0, 1.0, 3.0, 3.0, 9.0, 0.5, 7.0, 3.0, 2.0, 8.0]
    store = StateStore(tmp_path / "s", memory_max, window_s=10.0)
    for key, e in entries(times):
        store.add(key, e)
    assert len(store) == 10 == len(store.memory) + store.n_spilled
    assert len(store.memory) <= memory_max
    assert store.next_end() == 10.5
    got = [e.seq for e in store.closing(13.0 + 1e-9)] + [e.seq for e in store.closing(float("inf"))]
    want = sorted(range(10), key=lambda i: (times[i], i))
    assert got == want
    assert len(store) == 0 and store.n_spilled == 0 and store.next_end() == float("inf")
    store.close()


def test_spilled_entries_are_read_and_updated_on_disk(tmp_path):
    store = StateStore(tmp_path / "s", 2, window_s=10.0)
    for key, e in entries([1.0, 2.0, 3.0, 4.0, 5.0]):
        store.add(key, e)
    assert store.n_spilled >= 3
    key = (0, "a")
    assert key not in store.memory
    e = store.get(key)
    e.labels = 5
    store.update(key, e)
    assert store.get(key).labels == 5
    assert store.closing(100.0)[0].labels == 5
    store.close()


def test_every_spilled_key_is_found_through_filter_rebuilds_and_a_reopen(tmp_path):
    """The may-be-on-disk filter in front of SQLite must never hide a spilled entry: across its
    rebuilds (it starts sized for 4,096 keys), windows closing meanwhile, and a reopen (it is
    rebuilt from the spill table)."""
    n = 12_000
    es = entries([float(i) for i in range(n)])  # request i, item "a"
    store = StateStore(tmp_path / "s", 50, window_s=1000.0)
    first_filter = store._disk_keys
    for i, (key, e) in enumerate(es):
        store.add(key, e)
        if i == n // 2:
            store.closing(1500.0)  # closes requests 0..499, from disk
    assert store._disk_keys is not first_filter  # rebuilt at least once
    open_keys = {k for k, _ in store.entries()}
    assert len(open_keys) == n - 500 and store.n_spilled > 10_000

    def check(s: StateStore) -> None:
        for key, e in es:
            got = s.get(key)
            assert (got is not None) == (key in open_keys), key
            if got is not None:
                assert got.event_id == e.event_id
        absent = sum(s.get((r, "zz")) is not None for r in range(n))
        assert absent == 0

    check(store)
    store.commit(b"meta", watermark=1500.0, next_seq=n)
    store.close()
    reopened = StateStore(tmp_path / "s", 50, window_s=1000.0)
    reopened.restore(1500.0, fetch)
    check(reopened)
    reopened.close()


def test_commit_and_restore_round_trip(tmp_path):
    store = StateStore(tmp_path / "s", 4, window_s=10.0)
    es = entries([float(t) for t in range(10)])
    for key, e in es[:6]:
        store.add(key, e)
    store.commit(b"meta-1", watermark=-1.0, next_seq=6)
    for key, e in es[6:]:
        store.add(key, e)
    es[7][1].labels = 1
    store.update(*es[7])
    store.closing(11.5)  # closes the windows ending at 10 and 11
    store.commit(b"meta-2", watermark=11.5, next_seq=10)
    for key, e in entries([20.0], reqs=[99], first=10):  # after the checkpoint: must vanish
        store.add(key, e)
    store.close()

    again = StateStore(tmp_path / "s", 4, window_s=10.0)
    assert again.load_meta() == b"meta-2"
    again.restore(11.5, fetch)
    got = {k: (e.seq, e.labels) for k, e in again.entries()}
    assert got == {(i, "a"): (i, int(i == 7)) for i in range(2, 10)}
    assert [e.seq for e in again.closing(float("inf"))] == list(range(2, 10))
    again.close()


def test_a_crash_before_commit_leaves_the_last_checkpoint(tmp_path):
    store = StateStore(tmp_path / "s", 1, window_s=10.0)
    es = entries([1.0, 2.0, 3.0])
    store.add(*es[0])
    store.commit(b"m", watermark=0.0, next_seq=1)
    store.add(*es[1])
    store.add(*es[2])  # spills: written into the open transaction
    store._con.close()  # the process dies: SQLite drops the open transaction
    again = StateStore(tmp_path / "s", 1, window_s=10.0)
    again.restore(0.0, fetch)
    assert [k for k, _ in again.entries()] == [(0, "a")]
    again.close()


def test_snapshot_files_orphans_and_corruption(tmp_path):
    store = StateStore(tmp_path / "s", 100, window_s=10.0)
    for key, e in entries([1.0, 2.0]):
        store.add(key, e)
    store.commit(b"m", watermark=0.0, next_seq=2)
    store.close()
    parts = sorted((tmp_path / "s" / "snapshot").iterdir())
    assert len(parts) == 1
    orphan = parts[0].with_name("part-000000000099.msgpack")
    orphan.write_bytes(b"half-written")
    again = StateStore(tmp_path / "s", 100, window_s=10.0)
    assert not orphan.exists()  # not recorded by any checkpoint: removed
    again.close()
    data = bytearray(parts[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    parts[0].write_bytes(bytes(data))
    again = StateStore(tmp_path / "s", 100, window_s=10.0)
    with pytest.raises(CorruptionError, match="fails its checksum"):
        again.restore(0.0, fetch)
    again.close()


def test_closed_windows_drop_their_snapshot_files(tmp_path):
    store = StateStore(tmp_path / "s", 100, window_s=10.0)
    for key, e in entries([1.0, 2.0]):
        store.add(key, e)
    store.commit(b"m", watermark=0.0, next_seq=2)
    store.closing(100.0)
    for key, e in entries([50.0], reqs=[7], first=2):
        store.add(key, e)
    store.commit(b"m", watermark=55.0, next_seq=3)
    assert len(os.listdir(tmp_path / "s" / "snapshot")) == 1
    store.close()


def test_refusals(tmp_path):
    store = StateStore(tmp_path / "s", 10, window_s=1.0)
    with pytest.raises(StateError, match="in use by another joiner"):
        StateStore(tmp_path / "s", 10, window_s=1.0)
    store.close()
    store.close()
    other = tmp_path / "o"
    other.mkdir()
    sqlite3.connect(other / "state.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StateError, match="not a freshrec joiner state"):
        StateStore(other, 10, window_s=1.0)


_ids = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-3, 3),
    st.sampled_from(["a", "1", "-1", "日本", "x" * 40]),  # as Id allows: no empty string
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _ids, _ids, st.floats(0, 30)),
        st.tuples(st.just("label"), st.integers(0, 10**6)),
        st.tuples(st.just("close"), st.floats(0, 5)),
        st.tuples(st.just("reopen"), st.integers(0, 6)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, memory_max=st.sampled_from([0, 1, 3]))
def test_get_agrees_with_a_model_through_spills_filter_rebuilds_and_reopens(tmp_path, monkeypatch, ops, memory_max):
    """Random adds, label updates, closings and commit + reopen + restore on a store that spills
    almost everything, with the spilled-key filter sized for 2 keys (so it is rebuilt every few
    spills): after each step every key ever seen, and look-alikes of them, is found by get()
    exactly when it is open, with its labels."""
    monkeypatch.setattr(state_module, "_MIN_FILTER_KEYS", 2)
    path = tmp_path / uuid.uuid4().hex
    store = StateStore(path, memory_max, window_s=10.0)
    model: dict = {}  # open key -> (end, labels)
    seen: list = []
    clock, seq, closed_to = 0.0, 0, -1.0  # closed_to: the watermark of the last closing
    try:
        for op in ops:
            if op[0] == "add":
                key = (op[1], op[2])
                if key in model:
                    continue
                clock = max(clock, op[3])
                blob = encode([imp(seq, clock, req=op[1], item=op[2])])[0]
                LOG[(0, seq)] = blob
                store.add(key, Entry(blob, seq, clock, 7, seq, 0, seq, True))
                model[key] = (clock + 10.0, 0)
                seen.append(key)
                seq += 1
            elif op[0] == "label" and model:
                key = sorted(model, key=repr)[op[1] % len(model)]
                e = store.get(key)
                e.labels |= 1
                store.update(key, e)
                model[key] = (model[key][0], e.labels)
            elif op[0] == "close":
                wm = closed_to = max(closed_to, clock + 10.0 - op[1])
                gone = {k for k, (end, _) in model.items() if end < wm}
                assert {(e.event_id) for e in store.closing(wm)} == {seen.index(k) for k in gone}
                model = {k: v for k, v in model.items() if k not in gone}
            elif op[0] == "reopen":
                store.commit(b"m", watermark=closed_to, next_seq=seq)
                store.close()
                store = StateStore(path, op[1], window_s=10.0)
                store.restore(closed_to, fetch)
            for key in seen + [(k[1], k[0]) for k in seen] + [(str(k[0]), k[1]) for k in seen]:
                got = store.get(key)
                assert (got is not None) == (key in model), (op, key)
                if got is not None:
                    assert got.labels == model[key][1]
    finally:
        store.close()


def test_a_state_of_another_format_version_is_refused(tmp_path):
    StateStore(tmp_path / "s", 10, window_s=10.0).close()
    con = sqlite3.connect(tmp_path / "s" / state_module.DB_NAME)
    con.execute("PRAGMA user_version = 1")  # written by the freshrec before slot columns
    con.commit()
    con.close()
    with pytest.raises(StateError, match=f"format version 1; this freshrec reads {state_module.FORMAT_VERSION}"):
        StateStore(tmp_path / "s", 10, window_s=10.0)
