"""Train -> serve sync end to end on both log backends: replicas that start before training and
replicas that bootstrap from a mid-stream snapshot end with exactly the training PS; tombstones
remove rows; gaps make a replica reload; retries, restarts and dense updates do what they say."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from freshrec.errors import ConfigError, InputError, SyncError
from freshrec.features import Batch, Jagged
from freshrec.models import DCNConfig, build_model
from freshrec.ps import LocalPS, PSConfig
from freshrec.stream import open_log
from freshrec.sync import Publisher, ServedModel, Subscriber, SubscriberState, SyncConfig
from freshrec.sync.delta import encode_sparse, read_header
from freshrec.table import TableConfig

from ._world import (
    MODEL,
    SPEC,
    DamagedLog,
    Driver,
    FlakyLog,
    LossyLog,
    assert_same_rows,
    burst,
    model_name,
    served,
    training_ps,
)

BACKENDS = ["embedded", "kafka"]


@pytest.fixture(params=BACKENDS)
def log(request, tmp_path):
    if request.param == "embedded":
        lg = open_log(path=tmp_path / "log")
    else:
        lg = open_log(request.getfixturevalue("kafka_broker").log_config(consumer_settings={"fetch.wait.max.ms": 10}))
    yield lg
    lg.close()


@pytest.fixture
def elog(tmp_path):
    lg = open_log(path=tmp_path / "elog")
    yield lg
    lg.close()


def config(tmp_path, **kw) -> SyncConfig:
    return SyncConfig(snapshot_dir=tmp_path / "snapshots", max_record_bytes=65536, retire_after=0.0, **kw)


class World:
    """A training PS + dense module + publisher, and replicas subscribed to it."""

    def __init__(self, log, cfg: SyncConfig, seed: int = 0, model=MODEL) -> None:
        self.name = model_name()
        self.log, self.cfg, self.model = log, cfg, model
        self.ps = training_ps()
        torch.manual_seed(seed)
        self.module = build_model(model, SPEC)
        self.driver = Driver(self.ps, seed)
        self.pub = Publisher(self.name, self.ps, lambda: self.module, log, cfg, spec=SPEC, model_config=model,
                             logit_offset=-1.0)  # fmt: skip
        self.registry = CollectorRegistry()

    def replica(self, *, fp16: bool = False, log=None) -> tuple[ServedModel, Subscriber]:
        state = served(self.name, fp16=fp16, model=self.model)
        cfg = self.cfg.model_copy(update={"fp16": fp16})
        return state, Subscriber(state, log or self.log, cfg, registry=self.registry)

    def nudge_dense(self) -> None:
        with torch.no_grad():
            for p in self.module.parameters():
                p.add_(0.01)


def assert_same_dense(world: World, state: ServedModel) -> None:
    for k, v in world.module.state_dict().items():
        assert torch.equal(state.module.state_dict()[k], v), k


def batch(seed: int = 0, n: int = 64) -> Batch:
    rng = np.random.default_rng(seed)
    cols = {s: Jagged.single(rng.integers(0, 400, n).astype(np.int64)) for s in ("user", "item", "seller")}
    return Batch(cols, np.zeros((n, 0), np.float32), np.zeros((n, 1), np.float32), np.ones(n, np.float32),
                 np.zeros(n))  # fmt: skip


# ---- the core test, on both backends ------------------------------------------------------------


def test_replicas_from_scratch_and_from_a_midstream_snapshot_end_identical(log, tmp_path):
    w = World(log, config(tmp_path))
    early, sub_early = w.replica()
    early16, sub_early16 = w.replica(fp16=True)
    sub_early.poll()  # a fresh start: no snapshot, nothing published yet
    assert sub_early.status is SubscriberState.LIVE and early.sparse_version == 0
    results = []
    for i in range(36):
        w.driver.step(200)
        if i == 10:
            burst(w.ps, "users", 6000, w.driver.now)  # ~150 KB of rows: a delta of several parts
        if i % 3 == 0:
            results.append(w.pub.publish_sparse())
        if i % 4 == 0:
            sub_early.poll()
        if i == 18:
            w.pub.snapshot()
        if i == 25:
            w.nudge_dense()
            w.pub.publish_dense()
    last = w.pub.publish_sparse()
    late, sub_late = w.replica()
    info = sub_late.bootstrap()
    assert info is not None and info.sparse_version == 8  # snapshot after the 7th delta (i = 18)
    late16, sub_late16 = w.replica(fp16=True)
    for sub in (sub_early, sub_early16, sub_late, sub_late16):
        sub.poll()
    assert sub_early.stats.bootstraps == 1 and sub_early.stats.sparse_applied == last.version
    assert sub_early.stats.rows_removed > 0  # expiries and evictions travelled as tombstones
    assert results[0].full and max(r.parts for r in results) >= 3
    for state in (early, late):
        assert_same_rows(w.ps, state.ps)
        assert (state.sparse_version, state.dense_version) == (last.version, 2)
        assert_same_dense(w, state)
        assert state.logit_offset == -1.0
    for state in (early16, late16):
        assert_same_rows(w.ps, state.ps, fp16=True)
    np.testing.assert_array_equal(early.predict(batch()), late.predict(batch()))
    # the replica predicts what the training side would with the same parameters
    ref_ps = LocalPS({t: c for t, c in early.ps.tables.items()}, PSConfig(num_shards=1, threads=1))
    for t in w.ps.tables:
        exp = w.ps.export(t)
        ref_ps.assign(t, exp.ids, exp.embeddings)
    ref = ServedModel(w.name, SPEC, MODEL, w.module, ref_ps, -1.0)
    np.testing.assert_array_equal(early.predict(batch(3)), ref.predict(batch(3)))


# ---- the other tests (embedded log: fast) ---------------------------------------------


def test_a_tombstone_removes_the_row_at_serving(elog, tmp_path):
    w = World(elog, config(tmp_path))
    state, sub = w.replica()
    ids = np.array([11, 12, 13], np.int64)
    w.ps.pull("users", ids, train=True, now=1.0)
    w.ps.pull("users", ids[:1], train=True, now=30.0)  # 11 stays fresh
    w.pub.publish_sparse()
    sub.poll()
    assert state.ps.export("users", ids).ids.size == 3
    np.testing.assert_array_equal(np.sort(w.ps.expire(30.0)["users"]), [12, 13])  # ttl 20 s
    res = w.pub.publish_sparse()
    assert (res.rows, res.removed) == (0, 2)
    sub.poll()
    np.testing.assert_array_equal(state.ps.export("users", ids).ids, [11])
    np.testing.assert_array_equal(state.ps.pull("users", ids[1:]), np.zeros((2, 4), np.float32))  # default
    assert sub.stats.rows_removed == 2


@pytest.mark.parametrize("hole", ["lost", "damaged"])
def test_a_gap_makes_the_replica_reload_from_the_snapshot_after_it(elog, tmp_path, hole):
    """A record lost on the way, or one the log cannot read (a chunk failing its checksum: that
    used to escape as CorruptionError on every poll, leaving a running replica at the version
    before it for good, still reporting LIVE)."""
    w = World(elog, config(tmp_path))
    state, sub = w.replica(log=LossyLog(elog, lost={6}) if hole == "lost" else DamagedLog(elog, "sparse", {6}))
    for _ in range(5):
        w.driver.step()
        w.pub.publish_sparse()
    sub.poll()
    assert state.sparse_version == 5
    for _ in range(3):  # v6 (lost or damaged on the way to the replica), v7, v8
        w.driver.step()
        w.pub.publish_sparse()
    w.pub.snapshot()  # v9
    sub.poll()
    assert (sub.stats.gaps, sub.stats.bootstraps, sub.status) == (1, 2, SubscriberState.LIVE)
    assert state.sparse_version == 9
    assert_same_rows(w.ps, state.ps)
    assert w.registry.get_sample_value("freshrec_sync_bootstraps_total", {"model": w.name, "reason": "gap"}) == 1
    assert w.registry.get_sample_value("freshrec_sync_gaps_total", {"model": w.name}) == 1


def test_an_unreadable_dense_record_is_a_gap_the_next_snapshot_bridges(elog, tmp_path):
    w = World(elog, config(tmp_path))
    state, sub = w.replica(log=DamagedLog(elog, "dense", {2}))
    w.pub.publish_dense()
    sub.poll()
    assert state.dense_version == 1
    w.nudge_dense()
    w.pub.publish_dense()  # v2: damaged
    w.nudge_dense()
    w.pub.publish_dense()  # v3
    w.pub.snapshot()  # carries dense v3
    sub.poll()
    assert (sub.stats.gaps, sub.status, state.dense_version) == (1, SubscriberState.LIVE, 3)
    assert_same_dense(w, state)


def test_a_publisher_refuses_snapshots_left_by_another_log(elog, tmp_path):
    """A reset sync log with the snapshot folder kept: the old run's higher-numbered snapshots
    would be loaded by replicas (which then drop the new log's deltas as old), and pruning by
    version would delete the new run's snapshot as soon as it was written."""
    w = World(elog, config(tmp_path))
    for _ in range(4):
        w.driver.step()
        w.pub.publish_sparse()
    w.pub.snapshot()  # v5
    fresh = open_log(path=tmp_path / "reset-log")
    try:
        with pytest.raises(ConfigError, match=r"snapshot-000000000005.*ends at sparse version 0.*another log"):
            Publisher(w.name, training_ps(), lambda: w.module, fresh, w.cfg, spec=SPEC, model_config=MODEL)
    finally:
        fresh.close()
    Publisher(w.name, w.ps, lambda: w.module, elog, w.cfg, spec=SPEC, model_config=MODEL)  # its own log: fine


def _bad_record(name: str, model: str, version: int) -> bytes:
    """A sync record that reads as one but cannot be applied."""
    import json

    from safetensors.numpy import save

    (good,) = encode_sparse([], model=model, version=version, published_ms=1, max_bytes=65536)
    meta = json.loads(read_header(good).to_json())
    meta.update({"version_str": {"version": str(version)}, "other_model": {"model": "other"},
                 "dense_kind": {"kind": "dense"}}[name])  # fmt: skip
    return save({"x": np.zeros(1, np.int64)}, metadata={"freshrec.sync": json.dumps(meta)})


@pytest.mark.parametrize("bad", ["version_str", "other_model", "dense_kind"])
def test_a_record_that_cannot_be_applied_is_a_gap_the_next_snapshot_bridges(elog, tmp_path, bad):
    """A header field of the wrong type (TypeError where the version was compared) or a record of
    another model or kind (SyncError) failed every poll at the same offset: the replica never
    bootstrapped, and stayed behind for good even once a snapshot past the record existed."""
    w = World(elog, config(tmp_path))
    state, sub = w.replica()
    for _ in range(2):
        w.driver.step()
        w.pub.publish_sparse()
    sub.poll()
    elog.append(w.pub.sparse_topic, [_bad_record(bad, w.name, 3)])
    for _ in range(2):  # stale, and says why, until a snapshot covers the record
        with pytest.raises(SyncError, match="cannot bootstrap"):
            sub.poll()
        assert sub.describe()["state"] == "stale" and state.sparse_version == 2
    w.driver.step()
    w.pub.publish_sparse()  # v3: the publisher does not know the bad record
    w.pub.snapshot()
    sub.poll()
    assert sub.status is SubscriberState.LIVE and state.sparse_version == w.pub.sparse_version
    assert_same_rows(w.ps, state.ps)


def test_a_gap_no_snapshot_covers_leaves_the_replica_stale_until_one_does(elog, tmp_path):
    w = World(elog, config(tmp_path))
    state, sub = w.replica(log=LossyLog(elog, lost={5}))
    for _ in range(3):
        w.driver.step()
        w.pub.publish_sparse()
    w.pub.snapshot()  # v4: before the hole
    sub.poll()
    served_before = {t: state.ps.export(t).ids.size for t in SPEC.table_configs()}
    for _ in range(3):  # v5 (lost), v6, v7
        w.driver.step()
        w.pub.publish_sparse()
    with pytest.raises(SyncError, match="expected sparse version 5"):
        sub.poll()
    assert sub.status is SubscriberState.STALE and state.sparse_version == 4
    assert {t: state.ps.export(t).ids.size for t in SPEC.table_configs()} == served_before  # still serving
    with pytest.raises(SyncError):
        sub.poll()  # retried: still no snapshot past the hole
    assert sub.stats.errors == 2 and "expected sparse version 5" in sub.stats.last_error
    seen = sub.describe()
    assert seen["state"] == "stale" and seen["errors"] == 2 and "expected sparse version 5" in seen["last_error"]
    assert w.registry.get_sample_value("freshrec_sync_stale", {"model": sub.label}) == 1
    w.pub.snapshot()
    sub.poll()
    assert sub.status is SubscriberState.LIVE and state.sparse_version == 8
    assert sub.describe()["state"] == "live" and sub.describe()["last_ok_s_ago"] < 60
    assert w.registry.get_sample_value("freshrec_sync_stale", {"model": sub.label}) == 0
    assert_same_rows(w.ps, state.ps)


def test_a_subscriber_whose_polls_keep_failing_counts_as_stale(elog, tmp_path):
    """Only a failed bootstrap or apply made a subscriber stale: one whose every read failed (the
    log unreachable) stayed 'live', so healthz and the gauge showed nothing while the model fell
    behind."""
    from freshrec.errors import BackendError

    from ._world import LogProxy

    class Down(LogProxy):
        down = False

        def read(self, *args, **kwargs):
            if self.down:
                raise BackendError("broker unreachable")
            return self._log.read(*args, **kwargs)

    w = World(elog, config(tmp_path))
    down = Down(elog)
    _, sub = w.replica(log=down)
    w.driver.step()
    w.pub.publish_sparse()
    sub.poll()
    down.down = True
    gauge = lambda: w.registry.get_sample_value("freshrec_sync_stale", {"model": sub.label})  # noqa: E731
    for n in (1, 2, 3):
        with pytest.raises(BackendError):
            sub.poll()
        assert sub.describe()["failing_polls"] == n
        assert sub.describe()["state"] == ("stale" if n >= 3 else "live") and gauge() == (1 if n >= 3 else 0)
    assert sub.status is SubscriberState.LIVE  # the subscriber's own state: no bootstrap is needed
    down.down = False
    sub.poll()
    assert sub.describe()["state"] == "live" and sub.describe()["failing_polls"] == 0 and gauge() == 0
    sub.close()
    assert sub.describe()["state"] == "closed" and gauge() == 0


def test_without_a_snapshot_the_log_must_start_at_version_one(elog, tmp_path):
    w = World(elog, config(tmp_path, full_delta_on_start=False))
    for _ in range(3):
        w.driver.step()
        w.pub.publish_sparse()
    state, sub = w.replica(log=LossyLog(elog, lost={1}))
    with pytest.raises(SyncError, match="log's start"):
        sub.bootstrap()
    state, sub = w.replica()
    sub.bootstrap()
    assert state.sparse_version == 3
    assert_same_rows(w.ps, state.ps)


def test_an_fp16_replica_stores_half_floats_even_before_anything_is_published(elog, tmp_path):
    w = World(elog, config(tmp_path))
    state, sub = w.replica()  # float32 tables, e.g. loaded from a model directory
    state.apply_sparse("users", np.array([1, 2]), np.full((2, 4), 0.1, np.float32))
    sub.config = sub.config.model_copy(update={"fp16": True})
    sub.poll()  # no snapshot, empty log: keeps the rows, as float16
    assert type(state.ps).__name__ == "Fp16PS"
    np.testing.assert_array_equal(state.ps.pull("users", np.array([1, 2])), np.float32(np.float16(0.1)))


def test_heartbeats_advance_the_version_when_nothing_changed(elog, tmp_path):
    w = World(elog, config(tmp_path))
    state, sub = w.replica()
    w.driver.step()
    w.pub.publish_sparse()
    beat = w.pub.publish_sparse()
    assert (beat.rows, beat.removed, beat.parts) == (0, 0, 1) and beat.bytes < 400
    sub.poll()
    assert state.sparse_version == beat.version == 2


def test_bad_publication_times_are_refused_before_anything_is_drained(elog, tmp_path):
    """A bad event time once lost the drained changes and then broke every later publication."""
    import datetime

    w = World(elog, config(tmp_path))
    state, sub = w.replica()
    w.pub.publish_sparse(full=True)
    w.driver.step()
    pending = {t: st.pending_changes for t, st in w.ps.stats().items()}
    assert sum(pending.values()) > 0
    for kw, match in (({"event_time": datetime.datetime.now()}, "event_time"), ({"event_time": float("nan")}, "event_time"),
                      ({"newest_arrival_ms": "abc"}, "newest_arrival_ms"), ({"newest_arrival_ms": -5}, "newest_arrival_ms")):  # fmt: skip
        for call in (w.pub.publish_sparse, w.pub.publish_dense, w.pub.note):
            with pytest.raises(InputError, match=match):
                call(**kw)
    assert {t: st.pending_changes for t, st in w.ps.stats().items()} == pending  # nothing taken from the PS
    w.pub.publish_sparse(event_time=100.0, newest_arrival_ms=np.int64(5))  # and later calls work
    w.pub.snapshot()
    sub.poll()
    assert_same_rows(w.ps, state.ps)


def test_a_restarted_publisher_continues_versions_and_resets_replicas_with_a_full_delta(elog, tmp_path):
    w = World(elog, config(tmp_path))
    state, sub = w.replica()
    w.driver.step()
    w.pub.publish_sparse()
    w.ps.save(tmp_path / "checkpoint")  # the trainer checkpoints here...
    for _ in range(4):
        w.driver.step(300)
        w.pub.publish_sparse()
    sub.poll()
    assert state.sparse_version == 5
    restored = LocalPS.load(tmp_path / "checkpoint")  # ...crashes, and restarts from the checkpoint
    pub2 = Publisher(w.name, restored, lambda: w.module, elog, w.cfg)
    assert pub2.sparse_version == 5
    res = pub2.publish_sparse()
    assert res.full and res.version == 6 and res.rows == sum(len(restored.export(t)) for t in restored.tables)
    Driver(restored, seed=9).step()
    pub2.publish_sparse()
    sub.poll()
    assert state.sparse_version == 7 and sub.stats.full_deltas == 1
    assert_same_rows(restored, state.ps)  # rows trained after the checkpoint are gone from serving too


def test_a_failed_append_is_sent_again_and_the_replica_ignores_the_duplicate_prefix(elog, tmp_path):
    flaky = FlakyLog(elog, keep=2)
    w = World(flaky, config(tmp_path))
    state, sub = w.replica(log=elog)
    w.driver.step()
    w.pub.publish_sparse()
    burst(w.ps, "sellers", 0, w.driver.now)
    burst(w.ps, "items", 8000, w.driver.now)  # several parts; the append fails after two
    with pytest.raises(Exception, match="mid-batch"):
        w.pub.publish_sparse()
    assert w.pub.stats.failed_appends == 1 and w.pub.sparse_version == 2
    sub.poll()  # sees two parts of v2: waits for the rest
    assert state.sparse_version == 1
    w.driver.step()
    res = w.pub.publish_sparse()  # sends v2 again, then v3
    assert res.version == 3
    sub.poll()
    assert state.sparse_version == 3 and sub.stats.duplicates == 2
    assert_same_rows(w.ps, state.ps)


def test_dense_updates_apply_the_newest_complete_version_with_its_logit_offset(elog, tmp_path):
    w = World(elog, config(tmp_path), model=DCNConfig(hidden=[256, 256]))  # ~300 KB: several parts
    state, sub = w.replica()
    assert w.pub.publish_dense().parts >= 4
    sub.poll()
    assert_same_dense(w, state)
    w.nudge_dense()
    w.pub._logit_offset = -3.0
    w.pub.publish_dense()
    w.nudge_dense()
    w.pub.publish_dense()
    sub.poll()
    assert state.dense_version == 3 and sub.stats.dense_applied == 2  # v2 was superseded unread
    assert_same_dense(w, state)
    assert state.logit_offset == -3.0


def test_freshness_is_observed_per_live_delta(elog, tmp_path):
    w = World(elog, config(tmp_path))
    _state, sub = w.replica()
    sub.poll()
    w.driver.step()
    first = int(time.time() * 1000) - 1500
    w.pub.publish_sparse(newest_arrival_ms=first)
    w.pub.publish_sparse()  # a heartbeat: nothing arrived, no freshness sample
    w.driver.step()
    second = int(time.time() * 1000) - 200
    w.pub.note(newest_arrival_ms=second)
    w.pub.publish_sparse()
    sub.poll()
    done = time.time()
    labels = {"model": w.name, "kind": "sparse"}
    assert w.registry.get_sample_value("freshrec_sync_freshness_seconds_count", labels) == 2
    # each is the time from its arrival stamp to the apply: at least the stamp's age when it was
    # published, at most its age when the poll returned (however long compiling or a GC took)
    assert 1.5 <= sub.freshness[0] <= done - first / 1000
    assert 0.2 <= sub.freshness[1] <= done - second / 1000
    assert w.registry.get_sample_value("freshrec_sync_version", labels) == 3
    assert w.registry.get_sample_value("freshrec_sync_lag_records", labels) == 0


def test_maybe_publish_follows_both_cadences(elog, tmp_path):
    clock = [1000.0]
    w = World(elog, config(tmp_path, sparse_sync_interval=1.0, dense_sync_interval=300.0, snapshot_interval=600.0))
    w.pub = Publisher(w.name, w.ps, lambda: w.module, elog, w.cfg, clock=lambda: clock[0])

    def kinds(t: float) -> list[str]:
        clock[0] = t
        return [r.kind for r in w.pub.maybe_publish()]

    assert kinds(1000.0) == ["dense", "sparse"]  # and a snapshot: everything is due at first
    assert kinds(1000.5) == []
    assert kinds(1001.0) == ["sparse"]
    assert kinds(1299.9) == ["sparse"]
    assert kinds(1300.0) == ["dense"]  # sparse went out 0.1 s ago
    assert kinds(1301.0) == ["sparse"]
    assert kinds(1600.0) == ["dense", "sparse"]  # and the second snapshot
    assert [r.kind for r in w.pub.maybe_publish(1600.0)] == []
    snaps = sorted(p.name for p in (tmp_path / "snapshots" / w.name).iterdir() if p.is_dir())
    assert len(snaps) == 2  # at 1000 and at 1600


def test_a_first_dense_state_with_no_training_is_followed_at_once_by_a_trained_one(elog, tmp_path):
    """At a fresh start the first dense publication holds untrained weights: the next goes out as
    soon as training is noted, not a dense interval (5 minutes) later; a stop ships the dense
    training since its last publication."""
    clock = [1000.0]
    w = World(elog, config(tmp_path, sparse_sync_interval=1.0, dense_sync_interval=300.0))
    w.pub = Publisher(w.name, w.ps, lambda: w.module, elog, w.cfg, clock=lambda: clock[0])

    def kinds(t: float, trained: bool = False) -> list[str]:
        clock[0] = t
        if trained:
            w.pub.note(event_time=t, newest_arrival_ms=int(t * 1000))
        return [r.kind for r in w.pub.maybe_publish()]

    assert kinds(1000.0) == ["dense", "sparse"]  # untrained
    assert kinds(1001.0) == ["sparse"]  # nothing trained yet: nothing new to send
    assert kinds(1002.0, trained=True) == ["dense", "sparse"]  # the first trained dense state
    assert kinds(1003.0, trained=True) == ["sparse"]  # then the cadence
    assert kinds(1302.0, trained=True) == ["dense", "sparse"]
    assert kinds(1602.0) == ["dense", "sparse"]  # an idle interval: the cadence's dense state
    assert kinds(1603.0, trained=True) == ["sparse"]  # its weights were trained: no rush
    assert [r.kind for r in w.pub.publish_final()] == ["dense", "sparse"]  # the training since 1602
    assert [r.kind for r in w.pub.publish_final()] == ["sparse"]  # nothing trained since
    assert w.pub.dense_version == 5


def test_a_replica_restarted_from_an_old_snapshot_catches_up_before_it_serves(elog, tmp_path):
    """catch_up (what the serving replica runs before it says it is healthy) bootstraps and
    replays every delta after the snapshot; a replica restarted 0.6 s before its first poll
    answered with the snapshot's parameters meanwhile."""
    w = World(elog, config(tmp_path))
    w.driver.step()
    w.pub.snapshot()
    for _ in range(5):
        w.driver.step()
        w.pub.publish_sparse()
    w.nudge_dense()
    w.pub.publish_dense()
    state, sub = w.replica()
    assert state.sparse_version == 0
    assert sub.catch_up(30.0)
    assert (state.sparse_version, state.dense_version) == (w.pub.sparse_version, w.pub.dense_version)
    assert_same_dense(w, state)
    assert_same_rows(w.ps, state.ps)
    assert sub.catch_up(30.0)  # nothing new: still caught up
    sub.close()
    # a replica reading other topics than its publisher's (another topic_prefix) cannot replay the
    # snapshot's deltas: it says so instead of serving the snapshot as if nothing came after it
    state, _ = w.replica()
    wrong = Subscriber(state, elog, w.cfg.model_copy(update={"topic_prefix": "other"}), registry=CollectorRegistry())
    assert not wrong.catch_up(30.0)
    with pytest.raises(SyncError, match=r"sync topic 'other\..*\.sparse' ends at offset 0, but snapshot"):
        wrong.poll()
    wrong.close()


def test_the_thread_keeps_a_replica_fresh_while_requests_are_served(elog, tmp_path):
    w = World(elog, config(tmp_path, poll_interval=0.02))
    state, sub = w.replica()
    errors: list[BaseException] = []
    stop = threading.Event()

    def requests() -> None:
        while not stop.is_set():
            try:
                state.predict(batch())
            except BaseException as exc:
                errors.append(exc)

    reader = threading.Thread(target=requests)
    reader.start()
    sub.start()
    try:
        for i in range(12):
            w.driver.step()
            res = w.pub.publish_sparse(full=i % 4 == 3)  # full deltas swap the serving PS
            assert sub.wait_for(sparse_version=res.version, timeout=10)
    finally:
        stop.set()
        reader.join()
        sub.close()
    assert not errors
    assert_same_rows(w.ps, state.ps)
    assert sub.stats.full_deltas == 4  # i = 0 (a new publisher starts with one), 3, 7, 11
    with pytest.raises(Exception, match="closed"):
        sub.poll()


def test_a_replica_of_another_shape_refuses_the_deltas(elog, tmp_path):
    w = World(elog, config(tmp_path))
    w.driver.step()
    w.pub.publish_sparse()
    other = LocalPS({"users": TableConfig(name="users", dim=3), "items": TableConfig(name="items", dim=5),
                     "sellers": TableConfig(name="sellers", dim=8)})  # fmt: skip
    state = served(w.name)
    state.swap_ps(other)
    sub = Subscriber(state, elog, w.cfg, registry=w.registry)
    with pytest.raises(SyncError, match="'users' of width 4"):
        sub.poll()
    assert sub.status is SubscriberState.STALE


def test_topics_hold_one_model_each(elog, tmp_path, caplog):
    """Each model has its own topics under a prefix; names that still meet (model "a.x" under
    "sync", model "x" under "sync.a") are refused by the publisher that comes second."""
    w = World(elog, config(tmp_path))
    first = Publisher(f"{w.name}.x", training_ps(), lambda: w.module, elog, w.cfg)
    first.publish_sparse()
    cfg = w.cfg.model_copy(update={"topic_prefix": f"sync.{w.name}"})
    assert cfg.topics("x") == (first.sparse_topic, first.dense_topic)
    with pytest.raises(ConfigError, match="deltas of model"):
        Publisher("x", training_ps(), lambda: w.module, elog, cfg)
    # a replica whose topics nobody wrote (another prefix than its publisher's) says so
    with caplog.at_level("WARNING", logger="freshrec.sync.subscriber"):
        Subscriber(served(w.name), elog, w.cfg.model_copy(update={"topic_prefix": "typo"}), registry=w.registry)
    assert f"sync topic 'typo.{w.name}.sparse' did not exist" in caplog.text
