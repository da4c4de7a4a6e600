"""LocalPS: sharding is invisible (1 shard == N shards), pushes are all-or-nothing, changes are exact,
snapshots round-trip (also into another shard count), and lifecycle errors name the state."""

from __future__ import annotations

import time

import numpy as np
import pytest

from freshrec.errors import InputError, NonFiniteError, StateError
from freshrec.ps import LocalPS, PSConfig, shard_of
from freshrec.ps.local import INLINE_KEYS
from freshrec.ps.sharded import shard_config as _shard_config
from freshrec.table import SGD, AdmissionConfig, EmbeddingTable, TableConfig

TABLES = [
    TableConfig(name="user", dim=4, optimizer=SGD(lr=0.5), ttl=100),
    TableConfig(name="item", dim=3, optimizer=SGD(lr=0.5), admission=AdmissionConfig(min_count=2)),
]


def _drive(ps: LocalPS, seed: int = 0, n: int = 64) -> None:
    rng = np.random.default_rng(seed)
    for step in range(20):
        ids = {"user": rng.integers(-50, 50, n), "item": rng.integers(0, 30, n)}
        rows = ps.pull_many(ids, train=True, now=step)
        assert rows["user"].shape == (n, 4) and rows["item"].shape == (n, 3)
        ps.push_many({t: (i, rng.normal(size=(n, ps.dim(t))).astype(np.float32)) for t, i in ids.items()},
                     now=step)  # fmt: skip
    ps.expire(110)


def _rows(ps: LocalPS, table: str) -> dict[int, np.ndarray]:
    exp = ps.export(table)
    return {int(k): e for k, e in zip(exp.ids, exp.embeddings, strict=True)}


# n: a small batch runs its shards on the caller's thread, a large one (>= INLINE_KEYS) on the pool
@pytest.mark.parametrize(("shards", "n"), [(2, 64), (3, 64), (8, 64), (3, INLINE_KEYS)])
def test_sharding_is_invisible(shards, n):
    one, many = (
        LocalPS(TABLES, PSConfig(num_shards=1)),
        LocalPS(TABLES, PSConfig(num_shards=shards, threads=2)),
    )
    _drive(one, n=n)
    _drive(many, n=n)
    for table in ("user", "item"):
        a, b = _rows(one, table), _rows(many, table)
        assert a.keys() == b.keys() and a
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert one.stats()["user"].rows == many.stats()["user"].rows


def test_shards_are_balanced_and_independent_of_the_table_index():
    ids = np.arange(200_000, dtype=np.int64) * 1024  # a regular pattern in the low bits
    counts = np.bincount(shard_of(ids, 4), minlength=4)
    assert counts.min() > 0.97 * counts.mean()
    ps = LocalPS([TableConfig(name="t", dim=1)], PSConfig(num_shards=4))
    ps.pull("t", ids, train=True, now=0)
    for shard in ps.shard_tables("t"):  # each shard's index must stay evenly filled
        st = shard.stats()
        assert st.rows > 0.97 * len(ids) / 4 and st.index_slots * 3 >= 4 * st.rows


def test_push_is_all_or_nothing_across_tables_and_shards():
    ps = LocalPS(TABLES, PSConfig(num_shards=3))
    ids = np.arange(10)
    ps.pull_many({"user": ids, "item": ids}, train=True, now=0)
    ps.pull_many({"item": ids}, train=True, now=0)
    before = {t: _rows(ps, t) for t in ("user", "item")}
    bad = np.ones((10, 3), np.float32)
    bad[7, 1] = np.nan
    with pytest.raises(NonFiniteError, match="item"):
        ps.push_many({"user": (ids, np.ones((10, 4))), "item": (ids, bad)}, now=1)
    for t in ("user", "item"):
        after = _rows(ps, t)
        assert all(np.array_equal(after[k], v) for k, v in before[t].items())
    assert ps.nonfinite_rejected == 1
    assert ps.stats()["item"].nonfinite_rejected == 1 and ps.stats()["user"].nonfinite_rejected == 0
    huge = np.full((10, 3), 1e20, np.float32)  # finite, but one shard's step would overflow
    with pytest.raises(NonFiniteError, match="overflow"):
        ps.push_many({"user": (ids, np.ones((10, 4))), "item": (ids, huge)}, now=1)
    for t in ("user", "item"):
        after = _rows(ps, t)
        assert all(np.array_equal(after[k], v) for k, v in before[t].items())


def test_drain_changes_is_exact_and_versioned():
    ps = LocalPS(TABLES, PSConfig(num_shards=4))
    ps.pull("user", np.arange(20), train=True, now=0)
    ch = ps.drain_changes()
    assert ch.version == 1 and sorted(ch.tables["user"].upserts.ids.tolist()) == list(range(20))
    assert ps.drain_changes().empty and ps.drain_changes().version == 3
    ps.push("user", np.array([3, 4]), np.ones((2, 4)), now=50)
    ps.expire(105)  # rows seen at 0 expire, 3 and 4 (pushed at 50) stay
    ch = ps.drain_changes()
    assert sorted(ch.tables["user"].upserts.ids.tolist()) == [3, 4]
    assert sorted(ch.tables["user"].removed.tolist()) == sorted(set(range(20)) - {3, 4})


@pytest.mark.parametrize(("saved", "loaded"), [(3, 3), (3, 1), (1, 4)])
def test_snapshot_round_trip_and_resharding(tmp_path, saved, loaded):
    ps = LocalPS(TABLES, PSConfig(num_shards=saved))
    _drive(ps)
    ps.save(tmp_path / "ps")
    back = LocalPS.load(tmp_path / "ps", PSConfig(num_shards=loaded))
    assert back.num_shards == loaded
    for t in ("user", "item"):
        a, b = _rows(ps, t), _rows(back, t)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert back.drain_changes().empty


def test_restore_one_shard_from_an_older_snapshot(tmp_path):
    ps = LocalPS(TABLES, PSConfig(num_shards=2))
    ps.pull("user", np.arange(100), train=True, now=0)
    ps.save(tmp_path / "old")
    ps.push("user", np.arange(100), np.ones((100, 4)), now=1)
    ps.restore_shard(0, tmp_path / "old")
    owner = shard_of(np.arange(100), 2)
    now_rows = ps.pull("user", np.arange(100))
    old = LocalPS.load(tmp_path / "old").pull("user", np.arange(100))
    np.testing.assert_array_equal(now_rows[owner == 0], old[owner == 0])  # rolled back
    assert not np.allclose(now_rows[owner == 1], old[owner == 1])  # kept its progress
    with pytest.raises(InputError, match="shard"):
        ps.restore_shard(5, tmp_path / "old")


def test_restore_shard_refuses_a_snapshot_of_other_tables_or_configs(tmp_path):
    """A shard restored with another optimizer or dim would run unlike its siblings (or fail
    later in a pull with a broadcast error); a missing table gave a bare KeyError."""
    ps = LocalPS(TABLES, PSConfig(num_shards=2))
    ps.pull("user", np.arange(50), train=True, now=0)
    ps.save(tmp_path / "snap")
    before = ps.pull("user", np.arange(50))
    other = [t.model_copy(update={"dim": t.dim + 1}) if t.name == "user" else t for t in TABLES]
    with pytest.raises(InputError, match=r"another config .*dim"):
        LocalPS(other, PSConfig(num_shards=2)).restore_shard(0, tmp_path / "snap")
    with pytest.raises(InputError, match="snapshot holds tables"):
        LocalPS(TABLES[:1], PSConfig(num_shards=2)).restore_shard(0, tmp_path / "snap")
    ps.restore_shard(1, tmp_path / "snap")  # the same configs: accepted
    np.testing.assert_array_equal(ps.pull("user", np.arange(50)), before)
    # memory settings may differ (a snapshot from before huge_pages="auto", another expectation)
    mem = [t.model_copy(update={"huge_pages": True, "expected_rows": 1000}) for t in TABLES]
    LocalPS(mem, PSConfig(num_shards=2)).restore_shard(0, tmp_path / "snap")


def test_shards_divide_the_expected_rows_and_load_builds_no_empty_shards(tmp_path, monkeypatch):
    tables = [t.model_copy(update={"expected_rows": 1001}) for t in TABLES]
    ps = LocalPS(tables, PSConfig(num_shards=4))
    assert all(s.config.expected_rows == 251 for s in ps.shard_tables("user"))
    whole = EmbeddingTable(TABLES[0].model_copy(update={"expected_rows": 1001}))
    assert all(251 <= s._ready < whole._ready and s._cap < whole._cap for s in ps.shard_tables("user"))
    # a cap that the shard count does not divide: expected == max_rows must still shard
    capped = [t.model_copy(update={"expected_rows": 1000, "max_rows": 1000}) for t in TABLES]
    assert LocalPS(capped, PSConfig(num_shards=3)).shard_tables("user")[0].config.max_rows == 333
    _drive(ps)
    ps.save(tmp_path / "ps")
    built = []
    init = EmbeddingTable.__init__
    monkeypatch.setattr(EmbeddingTable, "__init__", lambda self, *a, **k: built.append(1) or init(self, *a, **k))
    back = LocalPS.load(tmp_path / "ps")
    assert len(built) == 8  # the 2 x 4 shards read from the snapshot, and no fresh set beside them
    assert _rows(back, "user").keys() == _rows(ps, "user").keys()


def test_a_sharded_assign_refused_for_one_row_changes_no_shard():
    ps = LocalPS(TABLES, PSConfig(num_shards=4))
    ids = np.arange(40)
    ps.pull("user", ids, train=True, now=0)
    before = ps.pull("user", ids)
    emb = np.ones((40, 4), np.float32)
    emb[-1, 0] = np.nan
    with pytest.raises(NonFiniteError):
        ps.assign("user", ids, emb)
    with pytest.raises(InputError, match="non-negative"):
        ps.assign("user", ids, np.ones((40, 4), np.float32), counts=np.r_[np.ones(39, np.int64), -1])
    np.testing.assert_array_equal(ps.pull("user", ids), before)


def test_bad_calls_and_lifecycle():
    ps = LocalPS(TABLES)
    with pytest.raises(InputError, match="unknown table 'nope'"):
        ps.pull("nope", [1])
    with pytest.raises(InputError, match="event time"):
        ps.pull("user", [1], train=True)
    with pytest.raises(InputError, match=r"shape \(2, 4\)"):
        ps.push("user", [1, 2], np.ones((2, 3)), now=0)
    with pytest.raises(InputError, match="integers"):
        ps.pull("user", np.array([1.5]))
    ps.close()
    ps.close()  # idempotent
    with pytest.raises(StateError, match="cannot pull: the parameter server is closed"):
        ps.pull("user", [1])


@pytest.mark.parametrize("shards", [1, 4])
def test_a_refused_pull_admits_nothing_in_any_table_or_shard(shards):
    """Every table's input is checked before any shard admits a row: a bad count in the second
    table (or at the end of a sharded one) used to leave the first table's rows admitted."""
    ps = LocalPS([TableConfig(name="a", dim=4), TableConfig(name="b", dim=4)], PSConfig(num_shards=shards))
    bad = np.ones(10_000, np.int64)
    bad[-1] = 0
    for call in (lambda: ps.pull_many({"a": [1, 2], "b": [3]}, train=True, now=0, counts={"a": [1, 1], "b": [0]}),
                 lambda: ps.pull("a", np.arange(10_000), train=True, now=0, counts=bad),
                 lambda: ps.pull_many({"a": [1], "b": [2]}, train=True, now=time.time_ns())):  # fmt: skip
        with pytest.raises(InputError, match=r"counts must be 1 integers|counts must be 10000 integers|seconds"):
            call()
    assert {t: s.rows for t, s in ps.stats().items()} == {"a": 0, "b": 0}
    assert all(s.lookups == 0 for s in ps.stats().values())
    ps.close()


def test_table_configs_must_be_configs_with_distinct_names():
    from freshrec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"share a name: \['a'\]"):
        LocalPS([TableConfig(name="a", dim=4), TableConfig(name="a", dim=8)])  # one silently won
    with pytest.raises(ConfigError, match="expected a TableConfig, got dict"):
        LocalPS([{"name": "a"}])
    with pytest.raises(ConfigError, match="expected a TableConfig, got int"):
        LocalPS({"a": 3})


def test_uint64_ids_past_int64_are_refused_as_the_table_refuses_them():
    """The PS wrapped them onto negative IDs (2**63 became -2**63: another key's row)."""
    ps = LocalPS([TableConfig(name="a", dim=4)], PSConfig(num_shards=2))
    with pytest.raises(InputError, match="fit in int64"):
        ps.pull("a", np.array([2**63, 5], np.uint64), train=True, now=0)
    assert ps.stats()["a"].rows == 0
    ps.pull("a", np.array([2**63 - 1, 5], np.uint64), train=True, now=0)
    assert ps.stats()["a"].rows == 2
    with pytest.raises(InputError, match="1-D"):  # the PS's inputs pair with the IDs' length: no scalar
        ps.pull("a", 5)


@pytest.mark.parametrize("edit", ["no_num_shards", "bad_config", "shards_not_a_list", "version_true"])
def test_a_malformed_snapshot_manifest_is_corruption(tmp_path, edit):
    import json

    from freshrec.errors import CorruptionError

    ps = LocalPS([TableConfig(name="a", dim=3)], PSConfig(num_shards=2))
    ps.pull("a", [1, 2, 3], train=True, now=0)
    ps.save(tmp_path / "p")
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    if edit == "no_num_shards":
        del m["num_shards"]
    elif edit == "bad_config":
        m["tables"]["a"]["config"]["dim"] = -1
    elif edit == "version_true":  # True == 1: it passed the shared manifest check
        m["format_version"] = True
    else:
        m["tables"]["a"]["shards"] = 5
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptionError):
        LocalPS.load(tmp_path / "p")
    if edit != "bad_config":
        with pytest.raises(CorruptionError):
            ps.restore_shard(0, tmp_path / "p")
    with pytest.raises(InputError, match="shard must be an int"):
        ps.restore_shard("0", tmp_path / "p")
    assert ps.stats()["a"].rows == 3  # nothing changed


def test_a_shard_gets_its_share_of_the_admission_sketch_and_of_its_window():
    cfg = TableConfig(
        name="u", dim=2, admission=AdmissionConfig(min_count=2, sketch_width=1 << 16, sketch_decay_every=8000)
    )
    shard = _shard_config(cfg, 4).admission
    assert (shard.sketch_width, shard.decay_every) == (1 << 14, 2000)
    default = _shard_config(cfg.model_copy(update={"admission": AdmissionConfig(min_count=2)}), 4).admission
    assert default.decay_every == (1 << 17) // 4  # a quarter of the shard's width
    tight = TableConfig(name="u", dim=2, admission=AdmissionConfig(min_count=300, sketch_decay_every=400))
    assert _shard_config(tight, 4).admission.decay_every == 300  # never below what min_count needs
    rounded = TableConfig(name="u", dim=2, admission=AdmissionConfig(min_count=400, sketch_width=2048))
    assert _shard_config(rounded, 2).admission.decay_every == 400  # a quarter of 1024 would be 256: refused


def test_resharding_a_full_table_keeps_every_row(tmp_path):
    """Shards of a table at max_rows may hold more than max_rows / N after a re-shard; loading
    must not evict them (a snapshot's rows are what it holds) nor refuse the snapshot later."""
    cfg = TableConfig(name="t", dim=2, max_rows=1000)
    one = LocalPS([cfg], PSConfig(num_shards=1))
    one.pull("t", np.arange(1000), train=True, now=0)
    one.save(tmp_path / "one")
    two = LocalPS.load(tmp_path / "one", PSConfig(num_shards=2))
    assert sum(len(s) for s in two.shard_tables("t")) == 1000
    two.save(tmp_path / "two")
    again = LocalPS.load(tmp_path / "two", PSConfig(num_shards=2))
    assert sum(len(s) for s in again.shard_tables("t")) == 1000
