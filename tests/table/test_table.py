"""Table semantics at their edges: keys, initializers, expiry boundaries, eviction, growth, changes,
and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.errors import InputError, NonFiniteError
from freshrec.table import (
    FTRL,
    SGD,
    Adagrad,
    Adam,
    AdmissionConfig,
    EmbeddingTable,
    InitializerConfig,
    RowwiseAdagrad,
    _memory,
)
from freshrec.table import _kernels as K

from .naive import init_row

EXTREMES = np.array([0, -1, 1, -(2**63), 2**63 - 1, 2**32, -(2**32), 0xFFFFFFFF], np.int64)


def test_every_int64_is_a_key_and_each_gets_its_own_row():
    t = EmbeddingTable(dim=4, initializer=InitializerConfig(type="zeros"), optimizer=SGD(lr=1.0))
    t.lookup(EXTREMES, train=True, now=0)
    assert len(t) == len(EXTREMES)
    # give each row a distinct value through a gradient and read it back
    grads = -np.arange(len(EXTREMES), dtype=np.float32)[:, None].repeat(4, axis=1)
    t.apply_gradients(EXTREMES, grads, now=0)
    np.testing.assert_array_equal(t.lookup(EXTREMES), -grads)
    assert sorted(t.export().ids.tolist()) == sorted(EXTREMES.tolist())
    assert t.contains(EXTREMES).all() and not t.contains([12345]).any()


@pytest.mark.parametrize("dim", [5, 48])  # one pass up to dim 32, two above: the same values
@pytest.mark.parametrize("kind", ["zeros", "uniform", "normal", "truncated_normal"])
def test_initializer_is_a_pure_function_of_seed_and_id(kind, dim):
    init = InitializerConfig(type=kind, low=-0.1, high=0.3, mean=0.5, std=0.2)
    a = EmbeddingTable(dim=dim, initializer=init, seed=11)
    b = EmbeddingTable(dim=dim, initializer=init, seed=11)
    c = EmbeddingTable(dim=dim, initializer=init, seed=12)
    ea = a.lookup(EXTREMES, train=True, now=0)
    eb = b.lookup(EXTREMES[::-1], train=True, now=5)[::-1]  # other order, other time
    np.testing.assert_array_equal(ea, eb)
    args = {
        "zeros": (0.0, 0.0),
        "uniform": (-0.1, 0.3),
        "normal": (0.5, 0.2),
        "truncated_normal": (0.5, 0.2),
    }[kind]
    for key, row in zip(EXTREMES.tolist(), ea, strict=True):
        np.testing.assert_allclose(row, init_row(key, 11, kind, dim, *args), rtol=1e-6, atol=1e-7)
    if kind != "zeros":
        assert not np.array_equal(ea, c.lookup(EXTREMES, train=True, now=0))


@pytest.mark.parametrize("kind", ["uniform", "normal", "truncated_normal"])
def test_initializer_values_do_not_depend_on_dim_or_on_which_pass_draws_them(kind):
    """Value j of a row is the same at every dim, bit for bit: a row of 32 is drawn in one pass,
    a row of 33 or 64 in two (the table chooses by dim), and they must agree."""
    init = InitializerConfig(type=kind, low=-0.1, high=0.3, mean=0.5, std=0.2)
    ids = np.concatenate([EXTREMES, np.arange(2_000)])
    rows = {d: EmbeddingTable(dim=d, initializer=init, seed=3).lookup(ids, train=True, now=0) for d in (8, 32, 33, 64)}
    for d in (8, 32, 33):
        np.testing.assert_array_equal(rows[d].view(np.uint32), rows[64][:, :d].view(np.uint32))


def test_initializer_statistics():
    t = EmbeddingTable(dim=8, initializer=InitializerConfig(type="normal", mean=0.0, std=0.5))
    e = t.lookup(np.arange(20_000), train=True, now=0)
    assert abs(e.mean()) < 0.01 and abs(e.std() - 0.5) < 0.01
    tn = EmbeddingTable(dim=8, initializer=InitializerConfig(type="truncated_normal", std=0.5))
    e = tn.lookup(np.arange(20_000), train=True, now=0)
    assert abs(e).max() <= 1.0 and abs(e.std() - 0.5 * 0.8796) < 0.01  # std of N(0,1) cut at 2
    u = EmbeddingTable(dim=8, initializer=InitializerConfig(type="uniform", low=-1, high=3))
    e = u.lookup(np.arange(20_000), train=True, now=0)
    assert e.min() >= -1 and e.max() < 3 and abs(e.mean() - 1.0) < 0.02


def test_reused_row_is_rebuilt_identically():
    t = EmbeddingTable(dim=4, ttl=10)
    first = t.lookup([42], train=True, now=0)
    t.apply_gradients([42], np.ones((1, 4)), now=0)
    assert len(t.expire(100)) == 1
    again = t.lookup([42], train=True, now=100)
    np.testing.assert_array_equal(first, again)


def test_default_vector_for_unknown_and_filtered_ids():
    t = EmbeddingTable(dim=3, default_value=[1.0, 2.0, 3.0], admission=AdmissionConfig(min_count=2))
    np.testing.assert_array_equal(t.lookup([7]), [[1, 2, 3]])
    np.testing.assert_array_equal(t.lookup([7], train=True, now=0), [[1, 2, 3]])  # filtered
    assert len(t) == 0
    assert t.apply_gradients([7], np.ones((1, 3)), now=0) == 0  # no row: dropped, counted
    assert t.stats().grad_missing == 1


def test_expiry_at_exact_boundaries():
    t = EmbeddingTable(dim=2, ttl=10)
    t.lookup([1], train=True, now=100)
    t.lookup([2], train=True, now=100.5)
    assert t.expire(110).tolist() == []  # seen exactly ttl ago: survives
    assert t.expire(110.001).tolist() == [1]  # a millisecond later: gone
    assert t.expire(110.5).tolist() == []
    assert t.expire(110.501).tolist() == [2]
    assert len(t) == 0 and t.stats().expired == 2


def test_expiry_uses_newest_event_time_and_gradients_refresh_it():
    t = EmbeddingTable(dim=2, ttl=10)
    t.lookup([1, 2], train=True, now=100)
    t.lookup([1], train=True, now=50)  # an older event does not move last-seen back
    t.apply_gradients([2], np.ones((1, 2)), now=105)
    assert t.expire(111).tolist() == [1]
    assert t.export().last_seen.tolist() == [105_000]
    assert EmbeddingTable(dim=2).expire(1e12).size == 0  # no ttl: nothing expires


def test_lru_eviction_frees_the_oldest_rows():
    t = EmbeddingTable(dim=2, max_rows=100, eviction="lru", evict_fraction=0.05)
    for i in range(100):
        t.lookup([i], train=True, now=i)
    t.lookup([0], train=True, now=500)  # refresh ID 0
    t.lookup([1000], train=True, now=600)
    assert len(t) == 96  # 5 evicted, one admitted
    assert not t.contains([1, 2, 3, 4, 5]).any() and t.contains([0, 6, 1000]).all()
    st = t.stats()
    assert st.evicted == 5 and st.rows == 96
    assert sorted(t.drain_changes().removed.tolist()) == [1, 2, 3, 4, 5]


def test_lfu_eviction_frees_the_least_frequent_rows():
    t = EmbeddingTable(dim=2, max_rows=10, eviction="lfu", evict_fraction=0.1)
    for i in range(10):
        t.lookup([i] * (i + 2), train=True, now=100 - i)  # ID i seen i+2 times
    t.lookup([99], train=True, now=200)
    assert not t.contains([0]).any() and t.contains([1, 99]).all()


def test_batch_with_more_new_ids_than_max_rows():
    t = EmbeddingTable(dim=2, max_rows=10, evict_fraction=0.5)
    out = t.lookup(np.arange(100), train=True, now=0)
    assert len(t) <= 10 and out.shape == (100, 2)


def test_growth_from_one_row_to_millions():
    t = EmbeddingTable(dim=2, initializer=InitializerConfig(type="uniform", low=0, high=1))
    assert t.stats().index_slots <= 16  # nobody sized it up front
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, size=2_100_000, dtype=np.int64))[:2_000_000]
    rng.shuffle(keys)
    pos = 0
    for size in [1, 2, 3, 10, 1000, 50_000, 400_000, 1_548_984]:
        t.lookup(keys[pos : pos + size], train=True, now=0)
        pos += size
    assert pos == 2_000_000 and len(t) == 2_000_000
    assert t.contains(keys).all()
    sample = keys[rng.choice(len(keys), 200, replace=False)]
    want = np.stack([init_row(int(k), 0, "uniform", 2, 0.0, 1.0) for k in sample])
    np.testing.assert_allclose(t.lookup(sample), want, rtol=1e-6)
    st = t.stats()
    assert st.index_slots * 3 >= 4 * st.rows  # load factor <= 3/4
    assert st.bytes_per_row_overhead <= 44


def test_drain_changes_upserts_and_tombstones():
    t = EmbeddingTable(dim=2, ttl=10, optimizer=SGD(lr=1))
    t.lookup([1, 2, 3], train=True, now=0)
    ch = t.drain_changes()
    assert sorted(ch.upserts.ids.tolist()) == [1, 2, 3] and ch.removed.size == 0
    assert t.drain_changes().upserts.ids.size == 0  # nothing since
    t.lookup([1], train=True, now=5)  # a read does not change the row
    t.apply_gradients([2], np.ones((1, 2)), now=5)
    t.remove([3])
    ch = t.drain_changes()
    assert ch.upserts.ids.tolist() == [2] and ch.removed.tolist() == [3]
    np.testing.assert_array_equal(ch.upserts.embeddings, t.lookup([2]))
    t.expire(16)  # 1 (seen at 5) survives? no: 5 < 16 - 10
    t.lookup([1], train=True, now=16)  # re-admitted after expiry: an upsert, not a tombstone
    ch = t.drain_changes()
    assert ch.upserts.ids.tolist() == [1] and ch.removed.tolist() == [2]


def test_changes_are_not_kept_when_tracking_is_off():
    t = EmbeddingTable(dim=2, track_changes=False)
    t.assign([1, 2], np.ones((2, 2)))
    t.remove([1])
    st = t.stats()
    assert st.pending_changes == 0
    ch = t.drain_changes()
    assert ch.upserts.ids.size == 0 and ch.removed.size == 0


def test_assign_keeps_state_unless_given():
    t = EmbeddingTable(dim=2, optimizer=RowwiseAdagrad())
    t.assign([5], [[1.0, 2.0]], state=[[3.0]], last_seen=[7000], counts=[4])
    t.assign([5], [[9.0, 9.0]])
    exp = t.export([5])
    assert exp.embeddings.tolist() == [[9.0, 9.0]] and exp.state.tolist() == [[3.0]]
    assert exp.counts.tolist() == [4] and exp.last_seen.tolist() == [7000]  # its own metadata too


def test_export_given_ids_keeps_order_and_skips_missing():
    t = EmbeddingTable(dim=2)
    t.lookup([1, 2, 3], train=True, now=0)
    assert t.export([3, 99, 1, 3]).ids.tolist() == [3, 1, 3]


def test_stats_count_what_happened():
    t = EmbeddingTable(dim=2, admission=AdmissionConfig(min_count=2), ttl=1)
    t.lookup([1, 2, 2, 3], train=True, now=0)
    t.lookup([2, 4], now=0)
    st = t.stats()
    assert (st.admitted, st.filtered, st.lookups, st.hits) == (1, 3, 6, 1)
    t.expire(5)
    assert t.stats().expired == 1


# ---- bad input -------------------------------------------------------------------------------


@pytest.fixture
def table() -> EmbeddingTable:
    t = EmbeddingTable(dim=3, optimizer=SGD(lr=0.1))
    t.lookup([1, 2], train=True, now=0)
    return t


def test_ids_are_coerced_or_rejected(table):
    np.testing.assert_array_equal(table.lookup(np.array([1, 2], np.int32)), table.lookup([1, 2]))
    np.testing.assert_array_equal(table.lookup(np.array([1], np.uint64)), table.lookup([1]))
    with pytest.raises(InputError, match="integers"):
        table.lookup(np.array([1.5]))
    with pytest.raises(InputError, match="Hash string IDs"):
        table.lookup(["a"])
    with pytest.raises(InputError, match="1-D"):
        table.lookup(np.zeros((2, 2), np.int64))
    with pytest.raises(InputError, match="int64"):
        table.lookup(np.array([2**64 - 1], np.uint64))
    with pytest.raises(InputError, match="event time"):
        table.lookup([1], train=True)
    with pytest.raises(InputError, match="finite"):
        table.lookup([1], train=True, now=float("nan"))


def test_bad_gradients_change_nothing(table):
    before = table.export()
    with pytest.raises(InputError, match=r"shape \(2, 3\)"):
        table.apply_gradients([1, 2], np.ones((2, 4)), now=1)
    for bad in (np.nan, np.inf, -np.inf):
        g = np.ones((2, 3), np.float32)
        g[1, 2] = bad
        with pytest.raises(NonFiniteError):
            table.apply_gradients([1, 2], g, now=1)
    after = table.export()
    np.testing.assert_array_equal(before.embeddings, after.embeddings)
    np.testing.assert_array_equal(before.last_seen, after.last_seen)
    assert table.stats().nonfinite_rejected == 3
    with pytest.raises(InputError, match="numeric"):
        table.apply_gradients([1], np.array([["a", "b", "c"]]), now=1)


@pytest.mark.parametrize(
    ("optimizer", "ids", "grad"),
    [
        (SGD(lr=1e-30), [1, 1], 3e38),  # finite alone; the sum over the duplicates was -Inf in the row
        (Adagrad(), [1], 1e20),  # finite; its square made the accumulator Inf
        (Adam(), [1, 2], 6e17),  # two rows: each could be the sum of both, past 1e18
    ],
    ids=["duplicate-sum", "square", "batch-bound"],
)
def test_finite_gradients_that_would_overflow_the_state_are_refused(optimizer, ids, grad):
    t = EmbeddingTable(dim=2, optimizer=optimizer)
    t.lookup([1, 2], train=True, now=0)
    before = t.export([1, 2])
    with pytest.raises(NonFiniteError, match="overflow"):
        t.apply_gradients(ids, np.full((len(ids), 2), grad, np.float32), now=1)
    after = t.export([1, 2])
    for field in ("embeddings", "state", "last_seen"):
        np.testing.assert_array_equal(getattr(before, field), getattr(after, field))
    assert t.stats().nonfinite_rejected == 1
    t.apply_gradients(ids, np.full((len(ids), 2), 1e3, np.float32), now=1)  # large but sound: taken
    assert np.isfinite(t.export([1, 2]).state).all()


def test_assign_rejects_dim_mismatch(table):
    with pytest.raises(InputError, match=r"shape \(1, 3\)"):
        table.assign([9], np.ones((1, 4)))
    with pytest.raises(InputError, match="state"):
        table.assign([9], np.ones((1, 3)), state=np.ones((1, 1)))
    with pytest.raises(NonFiniteError):
        table.assign([9], np.full((1, 3), np.nan))
    assert 9 not in table


def test_row_wise_sums_of_squares_are_bounded_by_dim_and_accumulators_saturate():
    t = EmbeddingTable(dim=512, optimizer=RowwiseAdagrad())
    t.lookup([1], train=True, now=0)
    with pytest.raises(NonFiniteError, match="overflow"):  # 512 x (1e17)^2 = 5e36 summed in one row
        t.apply_gradients([1], np.full((1, 512), 1e17, np.float32), now=1)
    for optimizer in (Adagrad(), FTRL()):  # accepted steps, each near the bound, add up
        t = EmbeddingTable(dim=1, optimizer=optimizer)
        t.lookup([1], train=True, now=0)
        for _ in range(450):  # 421 of (9e17)^2 pass float32's max
            t.apply_gradients([1], np.full((1, 1), 9e17, np.float32), now=1)
        e = t.export([1])
        assert np.isfinite(e.embeddings).all() and np.isfinite(e.state).all(), (optimizer, e)


@pytest.mark.parametrize(
    ("optimizer", "state", "match"),
    [
        (Adagrad(), [[0.0, -2.0, 0.0]], "accumulators must be >= 0"),
        (RowwiseAdagrad(), [[-1.0]], "accumulators must be >= 0"),
        (Adam(), [[0, 0, 0, 0, -1.0, 0, 3]], "second moments"),
        (Adam(), [[0, 0, 0, 0, 0, 0, -1]], "second moments"),  # step -1: the bias correction divides by 0
        (Adam(), [[0, 0, 0, 0, 0, 0, 2.5]], "whole numbers"),
        (FTRL(), [[0, 0, 0, 0, -3.0, 0]], "n accumulators"),
    ],
)
def test_assigned_optimizer_state_the_next_step_would_turn_to_nan_is_refused(optimizer, state, match):
    t = EmbeddingTable(dim=3, optimizer=optimizer)
    with pytest.raises(InputError, match=match):
        t.assign([5], np.ones((1, 3)), state=np.array(state, np.float32))
    assert 5 not in t
    t.assign([5], np.ones((1, 3)), state=np.abs(np.array(state, np.float32)).round())  # sound state: taken
    t.apply_gradients([5], np.ones((1, 3)), now=0)
    assert np.isfinite(t.lookup([5])).all()


def test_integer_inputs_that_would_wrap_are_refused(table):
    with pytest.raises(InputError, match="2\\*\\*40"):
        table.lookup([1], train=True, now=0, counts=np.array([2**64 - 1], np.uint64))  # was -1: counters fell
    with pytest.raises(InputError, match="2\\*\\*40"):
        table.lookup([1, 2], train=True, now=0, counts=[2**62, 2**62])  # summed past int64
    with pytest.raises(InputError, match="past int64"):
        table.assign([1], np.ones((1, 3)), last_seen=np.array([2**64 - 1], np.uint64))  # stored -1
    with pytest.raises(InputError, match="training lookup"):
        table.lookup([1], counts=[3])  # ignored silently before
    for bad in (-5, 2.5, True, "10"):
        with pytest.raises(InputError, match="reserve"):
            table.reserve(bad)
    assert table.export([1]).counts.tolist() == [1] and table.stats().lookups == 2


def test_a_ttl_past_int64_milliseconds_expires_nothing():
    t = EmbeddingTable(dim=2, ttl=1e16)  # 1e19 ms: now - ttl fell below int64 (OverflowError)
    t.lookup([1], train=True, now=0)
    assert t.expire(1e9).tolist() == [] and 1 in t


def test_assign_without_times_or_counts_keeps_an_existing_rows_own():
    """A sync delta assigns embeddings only: it used to reset last-seen to 0 (the next expire
    removed the row) and the count to 1 (LFU lost its history)."""
    t = EmbeddingTable(dim=2, ttl=10)
    t.lookup([1, 1, 1], train=True, now=100)
    t.assign([1, 2], np.zeros((2, 2)))
    e = t.export([1, 2])
    assert e.counts.tolist() == [3, 1] and e.last_seen.tolist() == [100_000, 0]
    assert t.expire(100).tolist() == [2]  # the new row starts at the epoch, as documented
    t.assign([1], np.zeros((1, 2)), last_seen=[5], counts=[9])  # given: written
    assert t.export([1]).counts.tolist() == [9] and t.export([1]).last_seen.tolist() == [5]


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_assign_past_max_rows_evicts_back_to_the_cap(eviction):
    t = EmbeddingTable(dim=2, max_rows=10, eviction=eviction)
    t.assign(np.arange(100), np.ones((100, 2)), last_seen=np.arange(100), counts=np.arange(100) + 1)
    assert len(t) == 10 and t.stats().evicted == 90
    assert sorted(t.export().ids.tolist()) == list(range(90, 100))  # the newest / most frequent stay
    t.lookup([1000], train=True, now=0)  # an admission into the full table: one round, then room
    assert len(t) <= 10 and 1000 in t
    t.assign([2000], np.ones((1, 2)))  # last-seen 0, count 1: the first victim, but just assigned
    assert 2000 in t and len(t) <= 10


def test_a_restore_past_max_rows_keeps_every_row_and_the_next_admission_evicts():
    t = EmbeddingTable(dim=2, max_rows=10)
    t.assign(np.arange(30), np.ones((30, 2)), last_seen=np.arange(30), evict=False)
    assert len(t) == 30 and t.stats().evicted == 0
    t.lookup([1000], train=True, now=0)
    assert len(t) <= 10 and 1000 in t


def test_bad_config_is_a_config_error():
    from freshrec.errors import ConfigError

    with pytest.raises(ConfigError, match="dim"):
        EmbeddingTable(dim=0)
    with pytest.raises(ConfigError, match="power of two"):
        EmbeddingTable(admission={"min_count": 2, "sketch_width": 1000})
    with pytest.raises(ConfigError, match="default_value"):
        EmbeddingTable(dim=3, default_value=[1.0, 2.0])
    with pytest.raises(ConfigError, match="Extra inputs"):
        EmbeddingTable(dim=3, optimiser="sgd")
    # no infinite or NaN hyper-parameter, ttl or default (an lr of inf trained rows to -inf)
    for bad, where in (({"optimizer": {"type": "sgd", "lr": float("inf")}}, "lr"), ({"ttl": float("inf")}, "ttl"),
                       ({"default_value": float("nan")}, "default_value")):  # fmt: skip
        with pytest.raises(ConfigError, match=where):
            EmbeddingTable(dim=3, **bad)
    with pytest.raises(ConfigError, match="got int"):
        EmbeddingTable(5)
    assert EmbeddingTable({"dim": 3}).dim == 3  # a dict of fields is a config too


def test_a_table_config_is_read_only(tmp_path):
    """Changing a config after the table was built changed what save() wrote (not the live
    table), and the snapshot then failed to load: table configs are frozen, nested ones too."""
    import pydantic

    from freshrec.table import TableConfig

    cfg = TableConfig(dim=4, ttl=60.0, optimizer=SGD(lr=0.1))
    t = EmbeddingTable(cfg)
    t.lookup([1, 2], train=True, now=0)
    for obj, field, value in ((cfg, "dim", 8), (t.config, "ttl", 5.0), (t.config.optimizer, "lr", 9.0),
                              (t.config.admission, "min_count", 3)):  # fmt: skip
        with pytest.raises(pydantic.ValidationError, match="frozen"):
            setattr(obj, field, value)
    t.save(tmp_path / "t")
    back = EmbeddingTable.load(tmp_path / "t")
    assert back.dim == 4 and back.config.ttl == 60.0 and len(back) == 2
    assert TableConfig.from_dict({**cfg.model_dump(), "dim": 8}).dim == 8  # the way to a changed config
    vec = TableConfig(dim=2, default_value=[1.0, 2.0])
    with pytest.raises(TypeError):  # a tuple: a frozen config's list could still change in place
        vec.default_value[0] = 9.0


def test_assign_refuses_fractional_times_and_counts(table):
    for kw, name in (({"last_seen": [1.9]}, "last_seen"), ({"counts": [2.7]}, "counts"),
                     ({"last_seen": ["x"]}, "last_seen"), ({"counts": [None]}, "counts")):  # fmt: skip
        with pytest.raises(InputError, match=name):
            table.assign([9], np.ones((1, 3)), **kw)
    assert 9 not in table
    table.assign([9], np.ones((1, 3)), last_seen=np.array([5_000], np.uint32), counts=[3])
    assert table.export([9]).counts.tolist() == [3]


def test_pre_sizing_past_the_free_memory_is_a_capacity_error(monkeypatch):
    """It used to be made resident anyway, and the kernel killed the process."""
    import collections

    from freshrec.errors import CapacityError
    from freshrec.table import table as table_module

    mem = collections.namedtuple("mem", "available")
    free = {"bytes": 2**30}
    monkeypatch.setattr(table_module.psutil, "virtual_memory", lambda: mem(free["bytes"]))  # 1 GiB free
    with pytest.raises(CapacityError, match=r"needs 2,747 MiB resident now, the machine has 1,024 MiB"):
        EmbeddingTable(dim=64, expected_rows=10_000_000)
    t = EmbeddingTable(dim=64, expected_rows=100_000)  # what fits is still pre-sized
    free["bytes"] = 1
    t.reserve(100_000)  # nothing left to make resident: not refused (a snapshot load re-reserves)
    t.reserve(50_000)


# ---- apply_gradients after a training lookup of the same IDs reuses its rows -------------------


def _sgd_table(**kw) -> EmbeddingTable:
    return EmbeddingTable(dim=2, optimizer=SGD(lr=1.0), initializer=InitializerConfig(type="zeros"), **kw)


def _step_both(ids, grads, between=lambda t: None, **kw) -> tuple[EmbeddingTable, EmbeddingTable]:
    """The same lookup -> (between) -> apply on two tables; the second forgets the lookup's rows
    before applying, so it probes the index: the reference."""
    a, b = _sgd_table(**kw), _sgd_table(**kw)
    for t in (a, b):
        t.lookup(np.arange(10), train=True, now=0)
        t.lookup(ids, train=True, now=1)
        between(t)
    b._last = None
    for t in (a, b):
        t.apply_gradients(ids, grads, now=2)
    return a, b


def _same(a: EmbeddingTable, b: EmbeddingTable) -> None:
    ea, eb = a.export(), b.export()
    assert dict(zip(ea.ids.tolist(), ea.embeddings.tolist(), strict=True)) == dict(
        zip(eb.ids.tolist(), eb.embeddings.tolist(), strict=True)
    )
    assert a.stats().grad_rows == b.stats().grad_rows and a.stats().grad_missing == b.stats().grad_missing


def test_apply_after_a_lookup_of_the_same_ids_uses_its_rows():
    ids = np.array([3, 50, 3, 7, 50, 3])
    t = _sgd_table()
    t.lookup(ids, train=True, now=0)
    assert t._known_rows(ids).shape == (6,)  # the hand-off is taken
    assert t._known_rows(ids[::-1].copy()).shape == (0,)  # other IDs: probe
    grads = np.arange(12, dtype=np.float32).reshape(6, 2)
    _same(*_step_both(ids, grads))
    a, _ = _step_both(ids, grads)
    np.testing.assert_array_equal(a.lookup([3, 50, 7]), -np.array([[14, 17], [10, 12], [6, 7]], np.float32))


@pytest.mark.parametrize(
    "between",
    [
        lambda t: t.remove([50]),  # its row is freed...
        lambda t: (t.remove([50]), t.assign([999], np.full((1, 2), 5.0, np.float32))),  # ...and reused
        lambda t: t.expire(1000.0),
        lambda t: t.assign([50, 12345], np.ones((2, 2), np.float32)),
        lambda t: t.lookup([1, 2], train=True, now=1),  # another lookup: its rows are the known ones
    ],
    ids=["remove", "remove-reuse", "expire", "assign", "other-lookup"],
)
def test_rows_found_by_a_lookup_are_not_trusted_after_a_change(between):
    ids = np.array([3, 50, 3, 7])
    grads = np.ones((4, 2), np.float32)
    a, b = _step_both(ids, grads, between, ttl=10.0)
    _same(a, b)
    assert 999 not in a or np.array_equal(a.lookup([999]), np.full((1, 2), 5.0, np.float32))


def test_ids_changed_in_place_after_the_lookup_are_probed():
    ids = np.array([3, 50, 7])
    t = _sgd_table()
    t.lookup(np.arange(100), train=True, now=0)
    t.lookup(ids, train=True, now=1)
    ids[1] = 60  # the caller reuses its buffer
    t.apply_gradients(ids, np.ones((3, 2), np.float32), now=2)
    np.testing.assert_array_equal(t.lookup([50, 60]), [[0, 0], [-1, -1]])


def test_rows_reused_by_an_eviction_inside_the_lookup_are_not_trusted():
    t = _sgd_table(max_rows=4, evict_fraction=0.5)
    t.lookup([1, 2, 3, 4], train=True, now=0)
    ids = np.array([1, 5, 6, 7])  # admitting 5..7 evicts inside this lookup: 1's row may be reused
    t.lookup(ids, train=True, now=1)
    assert t._known_rows(ids).shape == (0,)
    t.apply_gradients(ids, np.ones((4, 2), np.float32), now=2)
    exp = t.export()
    for k, e in zip(exp.ids.tolist(), exp.embeddings.tolist(), strict=True):  # each row got its own step
        assert e == ([-1.0, -1.0] if k in (1, 5, 6, 7) else [0.0, 0.0])


@pytest.mark.parametrize(
    "admission",
    [AdmissionConfig(min_count=2), AdmissionConfig(admit_probability=0.3)],
    ids=["min_count", "probability"],
)
def test_an_id_filtered_then_admitted_within_one_lookup_gets_every_gradient(admission):
    """Earlier copies of an ID in a batch may be filtered and a later one admitted: apply must
    find the row for every copy, as a probe after the lookup would."""
    ids = np.array([42, 42, 7, 5, 5, 5, 5, 5, 5])
    a, b = _step_both(ids, np.ones((ids.size, 2), np.float32), admission=admission, seed=1)
    _same(a, b)
    assert 42 in a or 5 in a  # the case arose: something was admitted after being filtered


def test_an_id_filtered_by_the_lookup_and_assigned_before_apply_gets_its_gradient():
    t = _sgd_table(admission=AdmissionConfig(min_count=2))
    ids = np.array([9, 8])
    t.lookup(ids, train=True, now=0)  # both filtered
    t.assign([9], np.zeros((1, 2), np.float32))
    t.apply_gradients(ids, np.ones((2, 2), np.float32), now=1)
    np.testing.assert_array_equal(t.lookup([9]), [[-1, -1]])
    assert 8 not in t


def test_a_lookup_that_fails_half_way_forgets_the_rows_of_the_one_before(monkeypatch):
    t = _sgd_table(admission=AdmissionConfig(min_count=2))
    many = np.arange(100, 10_000)
    t.lookup(many, train=True, now=0)  # seen once: filtered
    ids = np.array([3, 4])
    t.lookup(ids, train=True, now=0)  # filtered: their -1 rows are the known ones

    def fail(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(t, "_grow_index", fail)  # the next lookup admits 3 and 4, then cannot grow
    with pytest.raises(MemoryError):
        t.lookup(np.concatenate([ids, many]), train=True, now=0)
    assert 3 in t and t._known_rows(ids).shape == (0,)


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_find_or_insert_hands_out_no_row_taken_back_by_an_eviction_in_the_same_call(eviction):
    """With max_rows, admitting a batch can evict rows the same batch was just given (LFU: new rows
    have the lowest count; LRU: the batch's event time is older). Those handles used to come back
    anyway, several IDs sharing one row."""
    t = EmbeddingTable(dim=2, max_rows=4, evict_fraction=0.25, eviction=eviction)
    for _ in range(5):
        t.lookup([100, 101, 102], train=True, now=10)
    ids = np.array([1, 2, 3, 4], np.int64)
    rows = t.find_or_insert(ids, now=5 if eviction == "lru" else 20)
    present = t.contains(ids)
    assert (rows >= 0).tolist() == present.tolist()
    assert len(set(rows[rows >= 0].tolist())) == int(present.sum())  # one row per ID
    assert (rows[present] == t.find_or_insert(ids[present], now=20)).all()  # each its own row still


@pytest.mark.parametrize("pipelined", [False, True], ids=["two-pass", "pipelined"])
@pytest.mark.parametrize("n", [0, 1, 23, 24, 25, 31, 32, 33, 63, 64, 65, 129, 300])
def test_batches_around_the_prefetch_distances_find_the_right_rows(n, pipelined, monkeypatch):
    """The read-only probe looks 24 keys ahead through a ring of 32, the pipelined read-only
    lookup keeps stages 32 keys apart through rings of 64, the training lookup takes 64 keys per
    group: batches of every length around those, duplicates and unknown IDs included, must read,
    update and admit exactly the right rows. (The pipeline is for tables past 128 MiB; the
    threshold is lowered here so that this small table takes it.)"""
    monkeypatch.setattr(K, "PIPELINE_FROM_BYTES", 0 if pipelined else 1 << 62)
    monkeypatch.setattr(_memory, "huge_pages_granted", lambda asked: True)  # whatever this host's THP mode
    taken = []
    real = K.lookup_infer
    monkeypatch.setattr(K, "lookup_infer", lambda *a: taken.append(a[-1]) or real(*a))
    rng = np.random.default_rng(n)
    t = EmbeddingTable(dim=3, optimizer=SGD(lr=1.0), track_changes=False)
    known = rng.choice(10**12, size=200, replace=False)
    t.find_or_insert(known, now=0)
    before = dict(zip(known.tolist(), t.lookup(known), strict=True))
    ids = np.concatenate([rng.choice(known, n - n // 3), rng.integers(10**12, 2 * 10**12, n // 3)])
    rng.shuffle(ids)
    hit = np.isin(ids, known)
    want = np.array([before.get(k, np.zeros(3, np.float32)) for k in ids.tolist()], np.float32).reshape(n, 3)
    np.testing.assert_array_equal(t.lookup(ids), want)  # unknown IDs read the default
    t.apply_gradients(ids[hit], np.ones((int(hit.sum()), 3), np.float32), now=1)  # probes by itself
    seen = dict(zip(*np.unique(ids[hit], return_counts=True), strict=True))
    after = t.lookup(ids, train=True, now=2)  # admits the unknown IDs
    for i, k in enumerate(ids.tolist()):
        if hit[i]:  # SGD, lr 1, gradient 1 summed over duplicates
            np.testing.assert_allclose(after[i], before[k] - seen[k], rtol=1e-6)
    assert len(t) == 200 + len(set(ids[~hit].tolist()))
    np.testing.assert_array_equal(t.lookup(ids), after)
    assert set(taken) == {pipelined}
