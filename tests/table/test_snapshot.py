"""Snapshots: exact round trip (rows, optimizer state, metadata, sketch), atomic replacement, and
corruption detected before anything is built."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from freshrec.errors import CorruptionError, InputError
from freshrec.table import Adam, AdmissionConfig, EmbeddingTable, TableConfig
from freshrec.table import snapshot as snap


def _trained(n: int = 5000) -> EmbeddingTable:
    cfg = TableConfig(name="items", dim=6, optimizer=Adam(), ttl=100, admission=AdmissionConfig(min_count=2))
    t = EmbeddingTable(cfg)
    rng = np.random.default_rng(0)
    for step in range(6):
        ids = rng.integers(-(2**40), 2**40, size=n // 2).astype(np.int64)
        ids = np.concatenate([ids, ids[: n // 4]])
        t.lookup(ids, train=True, now=step)
        t.apply_gradients(ids, rng.normal(size=(len(ids), 6)).astype(np.float32), now=step)
    return t


def _same(a: EmbeddingTable, b: EmbeddingTable) -> None:
    ea, eb = a.export(), b.export()
    oa, ob = np.argsort(ea.ids), np.argsort(eb.ids)
    for field in ("ids", "embeddings", "state", "last_seen", "counts"):
        np.testing.assert_array_equal(getattr(ea, field)[oa], getattr(eb, field)[ob])


def test_round_trip_is_exact_and_training_continues_identically(tmp_path, monkeypatch):
    monkeypatch.setattr(snap, "CHUNK_BYTES", 20_000)  # force many chunk files
    t = _trained()
    t.drain_changes()
    t.save(tmp_path / "t")
    assert len(list((tmp_path / "t").glob("rows-*.safetensors"))) > 5
    u = EmbeddingTable.load(tmp_path / "t")
    _same(t, u)
    assert u.config == t.config
    assert u.stats().admitted == t.stats().admitted and u.stats().pending_changes == 0
    np.testing.assert_array_equal(u.sketch_estimate(np.arange(-50, 50)), t.sketch_estimate(np.arange(-50, 50)))
    # the same further steps give the same table, bit for bit (sketch and RNG restored too)
    rng = np.random.default_rng(9)
    ids = rng.integers(-(2**40), 2**40, size=3000).astype(np.int64)
    g = rng.normal(size=(3000, 6)).astype(np.float32)
    for table in (t, u):
        table.lookup(ids, train=True, now=10)
        table.lookup(ids, train=True, now=11)
        table.apply_gradients(ids, g, now=11)
        table.expire(50)
    _same(t, u)


def test_empty_table_round_trip(tmp_path):
    t = EmbeddingTable(dim=3)
    t.save(tmp_path / "e")
    assert len(EmbeddingTable.load(tmp_path / "e")) == 0


def test_overwrite_is_explicit_and_atomic(tmp_path):
    t = _trained(1000)
    t.save(tmp_path / "t")
    with pytest.raises(InputError, match="overwrite"):
        t.save(tmp_path / "t")
    t.lookup([123456789], train=True, now=99)
    t.lookup([123456789], train=True, now=99)
    t.save(tmp_path / "t", overwrite=True)
    assert 123456789 in EmbeddingTable.load(tmp_path / "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temp or aside dirs left
    # overwrite replaces an earlier table snapshot only: not a folder of other files, nor a file
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("x")
    (tmp_path / "a_file").write_text("y")
    for target in (tmp_path / "notes", tmp_path / "a_file", tmp_path / "a_file" / "t"):
        with pytest.raises(InputError, match=r"not a table snapshot|not a writable directory"):
            t.save(target, overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "x" and (tmp_path / "a_file").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "notes", "t"]
    (tmp_path / "link").symlink_to(tmp_path / "gone")  # a dangling link: replaced by the snapshot
    t.save(tmp_path / "link", overwrite=True)
    assert not (tmp_path / "link").is_symlink() and 123456789 in EmbeddingTable.load(tmp_path / "link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "link", "notes", "t"]


def test_crash_between_renames_recovers_the_set_aside_copy(tmp_path):
    t = _trained(1000)
    t.save(tmp_path / "t")
    os.rename(tmp_path / "t", tmp_path / ".t.old-deadbeef")  # as if killed mid-replace
    _same(t, EmbeddingTable.load(tmp_path / "t"))


def _corrupt_cases():
    def truncate(p):
        f = next(p.glob("rows-*.safetensors"))
        f.write_bytes(f.read_bytes()[:-100])

    def flip(p):
        f = next(p.glob("rows-*.safetensors"))
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0xFF
        f.write_bytes(bytes(b))

    def drop_file(p):
        next(p.glob("rows-*.safetensors")).unlink()

    def torn_manifest(p):
        m = p / "manifest.json"
        m.write_bytes(m.read_bytes()[:40])

    def no_manifest(p):
        (p / "manifest.json").unlink()

    def lying_rows(p):
        m = json.loads((p / "manifest.json").read_text())
        m["rows"] += 1
        (p / "manifest.json").write_text(json.dumps(m))

    def huge_rows(p):  # must not reserve (and populate) 10**12 rows before finding out
        m = json.loads((p / "manifest.json").read_text())
        m["rows"] = 10**12
        (p / "manifest.json").write_text(json.dumps(m))

    def rows_not_a_count(p):
        m = json.loads((p / "manifest.json").read_text())
        m["rows"] = "1000"
        (p / "manifest.json").write_text(json.dumps(m))

    def future_version(p):
        m = json.loads((p / "manifest.json").read_text())
        m["format_version"] = 99
        (p / "manifest.json").write_text(json.dumps(m))

    def bad_config(p):
        m = json.loads((p / "manifest.json").read_text())
        m["config"]["dim"] = -1
        (p / "manifest.json").write_text(json.dumps(m))

    def counters_not_a_map(p):  # hand-edited: it raised a raw AttributeError
        m = json.loads((p / "manifest.json").read_text())
        m["counters"] = [1]
        (p / "manifest.json").write_text(json.dumps(m))

    def files_missing(p):  # another tool's manifest: it raised a raw KeyError
        m = json.loads((p / "manifest.json").read_text())
        del m["files"]
        (p / "manifest.json").write_text(json.dumps(m))

    def version_true(p):  # True == 1 in Python: it passed the version check
        m = json.loads((p / "manifest.json").read_text())
        m["format_version"] = True
        (p / "manifest.json").write_text(json.dumps(m))

    def counter_not_a_number(p):  # it raised a raw ValueError after building the table
        m = json.loads((p / "manifest.json").read_text())
        m["counters"]["lookups"] = "abc"
        (p / "manifest.json").write_text(json.dumps(m))

    def counter_past_int64(p):  # a raw OverflowError
        m = json.loads((p / "manifest.json").read_text())
        m["counters"]["rng"] = 2**70
        (p / "manifest.json").write_text(json.dumps(m))

    def sketch_dropped(p):  # min_count 2 without a sketch loaded silently, every pending count lost
        m = json.loads((p / "manifest.json").read_text())
        m["sketch"] = None
        (p / "manifest.json").write_text(json.dumps(m))
        (p / "sketch.safetensors").unlink()

    return [truncate, flip, drop_file, torn_manifest, no_manifest, lying_rows, huge_rows, rows_not_a_count,
            future_version, bad_config, counters_not_a_map, files_missing, version_true, counter_not_a_number,
            counter_past_int64, sketch_dropped]  # fmt: skip


@pytest.mark.parametrize("corrupt", _corrupt_cases(), ids=lambda f: f.__name__)
def test_corruption_is_detected_and_nothing_is_loaded(tmp_path, corrupt):
    _trained(1000).save(tmp_path / "t")
    corrupt(tmp_path / "t")
    with pytest.raises(CorruptionError):
        EmbeddingTable.load(tmp_path / "t")


def test_no_pickle_in_the_format(tmp_path):
    _trained(500).save(tmp_path / "t")
    for f in (tmp_path / "t").iterdir():
        assert f.suffix in (".json", ".safetensors")


def test_a_snapshot_with_one_sketch_generation_loads_it_as_the_current_one(tmp_path):
    """Snapshots before 2026-11-29 held one generation of admission counters (depth x width)."""
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    from freshrec._io import checksum_bytes

    t = _trained(1000)
    t.save(tmp_path / "t")
    f = tmp_path / "t" / "sketch.safetensors"
    a = st_load(f.read_bytes())
    assert a["sketch"].shape[0] == 2
    blob = st_save({"sketch": np.ascontiguousarray(a["sketch"][0] + a["sketch"][1]), "seeds": a["seeds"]})
    f.write_bytes(blob)
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    m["sketch"].update(bytes=len(blob), xxh3_128=checksum_bytes(blob))
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(m))
    u = EmbeddingTable.load(tmp_path / "t")
    probe = np.arange(-(2**40), 2**40, 2**30)
    np.testing.assert_array_equal(u.sketch_estimate(probe), t.sketch_estimate(probe))
    assert not u._sketch[1].any()
