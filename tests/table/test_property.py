"""Random operation sequences through the compiled table and the dict reference must agree."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from freshrec.table import SGD, AdmissionConfig, EmbeddingTable, InitializerConfig, TableConfig

from .naive import NaiveTable

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# a small pool of IDs (so sequences revisit them) salted with extremes and random int64s
POOL = st.one_of(st.integers(-5, 20), st.sampled_from([-(2**63), 2**63 - 1, 2**62, -(2**31)]), INT64)
DIM, LR, TTL_S, SEED, STD = 3, 0.1, 50, 7, 0.05


class TableVsDict(RuleBasedStateMachine):
    # the sketch is wide enough (2**20) that a count-min false admission is ~1e-10 per key here;
    # false admissions are measured separately in test_admission.py
    @initialize(min_count=st.sampled_from([1, 2, 3]))
    def setup(self, min_count: int) -> None:
        cfg = TableConfig(
            dim=DIM,
            optimizer=SGD(lr=LR),
            initializer=InitializerConfig(type="normal", std=STD),
            admission=AdmissionConfig(min_count=min_count, sketch_width=1 << 20, sketch_decay_every=0),
            ttl=TTL_S,
            seed=SEED,
        )
        self.table = EmbeddingTable(cfg)
        self.ref = NaiveTable(DIM, min_count, LR, TTL_S * 1000, SEED, STD)
        self.now = 0

    def _check(self, got: np.ndarray, want: np.ndarray) -> None:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

    @rule(ids=st.lists(POOL, max_size=40), dt=st.integers(0, 20))
    def lookup_train(self, ids: list[int], dt: int) -> None:
        self.now += dt
        got = self.table.lookup(np.array(ids, np.int64), train=True, now=self.now)
        self._check(got, self.ref.lookup(ids, self.now * 1000, True))

    @rule(ids=st.lists(POOL, max_size=40))
    def lookup_infer(self, ids: list[int]) -> None:
        got = self.table.lookup(np.array(ids, np.int64))
        self._check(got, self.ref.lookup(ids, None, False))

    @rule(data=st.data(), dt=st.integers(0, 5))
    def apply(self, data: st.DataObject, dt: int) -> None:
        ids = data.draw(st.lists(POOL, max_size=30))
        grads = np.array(
            data.draw(st.lists(st.floats(-2, 2, width=32), min_size=len(ids) * DIM, max_size=len(ids) * DIM)),
            np.float32,
        ).reshape(len(ids), DIM)
        self.now += dt
        self.table.apply_gradients(np.array(ids, np.int64), grads, now=self.now)
        self.ref.apply(ids, grads, self.now * 1000)

    @rule(dt=st.integers(0, 80))
    def expire(self, dt: int) -> None:
        self.now += dt
        got = sorted(self.table.expire(self.now).tolist())
        assert got == self.ref.expire(self.now * 1000)

    @rule(ids=st.lists(POOL, max_size=10))
    def remove(self, ids: list[int]) -> None:
        got = sorted(self.table.remove(np.array(ids, np.int64)).tolist())
        assert got == self.ref.remove(ids)

    @rule(start=INT64, n=st.integers(100, 1500))
    def grow(self, start: int, n: int) -> None:
        """Many new IDs at once: several rehashes and row-array growths in one call."""
        ids = [(start + i * 7919) % 2**64 - 2**63 for i in range(n)]
        got = self.table.lookup(np.array(ids * self.ref.k, np.int64), train=True, now=self.now)
        self._check(got, self.ref.lookup(ids * self.ref.k, self.now * 1000, True))

    @precondition(lambda self: len(self.ref.rows) < 5000)
    @rule()
    def save_and_load(self) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            self.table.drain_changes()
            self.ref.drain()
            self.table.save(f"{d}/t")
            self.table = EmbeddingTable.load(f"{d}/t")

    @rule()
    def drain(self) -> None:
        ch = self.table.drain_changes()
        ups, tomb = self.ref.drain()
        assert sorted(ch.upserts.ids.tolist()) == ups
        assert sorted(ch.removed.tolist()) == tomb
        for key, emb in zip(ch.upserts.ids.tolist(), ch.upserts.embeddings, strict=True):
            self._check(emb, self.ref.rows[key]["emb"])

    @invariant()
    def same_rows(self) -> None:
        assert len(self.table) == len(self.ref.rows)

    def teardown(self) -> None:
        if not hasattr(self, "table"):
            return
        exp = self.table.export()
        assert sorted(exp.ids.tolist()) == sorted(self.ref.rows)
        for key, emb, ts, cnt in zip(exp.ids.tolist(), exp.embeddings, exp.last_seen, exp.counts, strict=True):
            row = self.ref.rows[key]
            self._check(emb, row["emb"])
            assert ts == row["ts"]
            assert cnt == row["count"]


TableVsDict.TestCase.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_table_matches_dict_reference = TableVsDict.TestCase
