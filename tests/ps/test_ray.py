"""RayPS: the same parameter server as LocalPS with its shards in Ray actors.

One local Ray instance serves the module (starting it takes seconds); each test's RayPS joins it.
The reference for every result is a LocalPS with the same tables and shard count, fed the same
calls: RayPS must give exactly what it gives.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import ray

from freshrec.errors import BackendError, ConfigError, InputError, NonFiniteError, StateError
from freshrec.ps import LocalPS, PSConfig, RayPS, load_ps, make_ps, shard_of
from freshrec.table import Adagrad, AdmissionConfig, TableConfig

from ..conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    started = not ray.is_initialized()
    if started:
        # "local": a Ray of our own, even where `ray start` made a cluster this machine's drivers would join
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    if started:
        ray.shutdown()


TABLES = {
    "user": TableConfig(dim=8, optimizer=Adagrad(lr=0.1), ttl=10.0, max_rows=60),
    "item": TableConfig(dim=4, admission=AdmissionConfig(min_count=2)),
}


def _pair(num_shards: int) -> tuple[RayPS, LocalPS]:
    return (RayPS(TABLES, PSConfig(backend="ray", num_shards=num_shards, threads=1)),
            LocalPS(TABLES, PSConfig(num_shards=num_shards, threads=1)))  # fmt: skip


def _same_export(a, b) -> None:
    oa, ob = np.argsort(a.ids), np.argsort(b.ids)
    for field in ("ids", "embeddings", "state", "last_seen", "counts"):
        np.testing.assert_array_equal(getattr(a, field)[oa], getattr(b, field)[ob], err_msg=field)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_every_operation_gives_what_local_gives(num_shards):
    ray_ps, local = _pair(num_shards)
    rng = np.random.default_rng(num_shards)
    try:
        for step in range(12):
            now = float(step)
            ids = {"user": rng.integers(-80, 80, 200), "item": rng.integers(0, 40, 120)}
            counts = {"item": rng.integers(1, 3, 120)}
            got = ray_ps.pull_many(ids, train=True, now=now, counts=counts)
            want = local.pull_many(ids, train=True, now=now, counts=counts)
            for t in ids:
                np.testing.assert_array_equal(got[t], want[t])
            grads = {t: (v, rng.normal(size=(v.size, TABLES[t].dim)).astype(np.float32)) for t, v in ids.items()}
            assert ray_ps.push_many(grads, now=now) == local.push_many(grads, now=now)
            if step % 4 == 3:  # expiry, removal, assignment and a drain now and then
                for t, removed in ray_ps.expire(now).items():
                    np.testing.assert_array_equal(np.sort(removed), np.sort(local.expire(now)[t]))
                gone = rng.integers(-80, 80, 10)
                np.testing.assert_array_equal(np.sort(ray_ps.remove("user", gone)), np.sort(local.remove("user", gone)))
                new = np.arange(1000 + step * 10, 1010 + step * 10)
                emb = rng.normal(size=(10, 4)).astype(np.float32)
                ray_ps.assign("item", new, emb, now=now)
                local.assign("item", new, emb, now=now)
                a, b = ray_ps.drain_changes(), local.drain_changes()
                assert a.version == b.version
                for t in TABLES:
                    _same_export(a.tables[t].upserts, b.tables[t].upserts)
                    np.testing.assert_array_equal(np.sort(a.tables[t].removed), np.sort(b.tables[t].removed))
        for t in TABLES:
            _same_export(ray_ps.export(t), local.export(t))
            some = rng.integers(-80, 80, 30)
            _same_export(ray_ps.export(t, some), local.export(t, some))
            np.testing.assert_array_equal(ray_ps.pull(t, some), local.pull(t, some))  # inference: no admission
        # the steps above see most IDs every second, so nothing outlived the ttl: now every row does
        got, want = ray_ps.expire(30.0), local.expire(30.0)
        assert got["user"].size > 0 and set(got) == set(want)
        for t in TABLES:
            np.testing.assert_array_equal(np.sort(got[t]), np.sort(want[t]))
        a, b = ray_ps.drain_changes(), local.drain_changes()
        np.testing.assert_array_equal(np.sort(a.tables["user"].removed), np.sort(b.tables["user"].removed))
        assert ray_ps.stats() == local.stats()
        assert ray_ps.stats()["user"].evicted > 0  # max_rows per shard was reached: eviction ran in actors
    finally:
        ray_ps.close()
        local.close()


def test_bad_input_is_refused_before_any_shard_sees_it():
    ray_ps, _ = _pair(2)
    try:
        ids = np.arange(50)
        ray_ps.pull_many({"user": ids, "item": ids}, train=True, now=1.0)
        before = {t: ray_ps.export(t) for t in TABLES}
        bad = np.ones((50, 4), np.float32)
        bad[7, 2] = np.nan
        with pytest.raises(NonFiniteError, match="'item'"):
            ray_ps.push_many({"user": (ids, np.ones((50, 8), np.float32)), "item": (ids, bad)}, now=2.0)
        with pytest.raises(InputError, match="shape"):
            ray_ps.push("user", ids, np.ones((50, 3), np.float32), now=2.0)
        with pytest.raises(InputError, match="counts"):
            ray_ps.pull_many({"user": ids}, train=True, now=2.0, counts={"user": np.zeros(50, np.int64)})
        with pytest.raises(InputError, match="event time"):
            ray_ps.pull("user", ids, train=True)
        with pytest.raises(InputError, match="unknown table"):
            ray_ps.pull("nope", ids)
        emb = np.ones((50, 8), np.float32)
        emb[40] = np.inf  # a row of the second shard: the first must not have written its part either
        with pytest.raises(NonFiniteError):
            ray_ps.assign("user", np.arange(100, 150), emb)
        for t in TABLES:
            _same_export(ray_ps.export(t), before[t])
        assert ray_ps.stats()["item"].nonfinite_rejected == 1 and ray_ps.nonfinite_rejected == 1
    finally:
        ray_ps.close()
    with pytest.raises(StateError, match="closed"):
        ray_ps.pull("user", np.arange(3))


def test_snapshots_load_into_either_backend_and_any_shard_count(tmp_path, monkeypatch):
    ray_ps, local = _pair(2)
    ids = {"user": np.arange(-30, 30), "item": np.repeat(np.arange(20), 2)}
    try:
        for ps in (ray_ps, local):
            ps.pull_many(ids, train=True, now=3.0)
        monkeypatch.chdir(tmp_path)  # a relative path: the actors do not share this working directory
        ray_ps.save("snap")
        local.save(tmp_path / "local-snap")
    finally:
        ray_ps.close()
    as_local = LocalPS.load(tmp_path / "snap")
    as_ray = RayPS.load(tmp_path / "local-snap", PSConfig(backend="ray", num_shards=2))
    resharded = load_ps(tmp_path / "snap", PSConfig(backend="ray", num_shards=3))
    try:
        for t in TABLES:
            want = local.export(t)
            for ps in (as_local, as_ray, resharded):
                _same_export(ps.export(t), want)
        assert resharded.drain_changes().empty  # the re-shard's own assignments are not a delta
        assert as_ray.stats() == as_local.stats()  # both loaded: no changes pending, unlike local
    finally:
        for ps in (as_local, as_ray, resharded, local):
            ps.close()


def test_a_dead_shard_is_an_error_until_restored_from_a_snapshot(tmp_path):
    ray_ps, _ = _pair(2)
    try:
        ids = np.arange(200)
        ray_ps.pull("user", ids, train=True, now=1.0)
        rows = ray_ps.pull("user", ids)  # the rows kept (max_rows evicted the rest)
        assert np.abs(rows).sum(axis=1).astype(bool).sum() == 60
        ray_ps.save(tmp_path / "snap")
        ray.kill(ray_ps.shard_actors[1], no_restart=True)
        deadline = time.monotonic() + 30
        with pytest.raises(BackendError, match="shard 1's actor is gone"):
            while time.monotonic() < deadline:  # the kill is asynchronous
                ray_ps.pull("user", ids)
        with pytest.raises(InputError, match="shard must be"):
            ray_ps.restore_shard(2, tmp_path / "snap")
        other = RayPS(TABLES, PSConfig(backend="ray", num_shards=3))
        try:
            other.save(tmp_path / "three")
        finally:
            other.close()
        with pytest.raises(InputError, match="snapshot has 3 shards; cannot restore shard 1 of a 2-shard PS"):
            ray_ps.restore_shard(1, tmp_path / "three")  # the dead actor's replacement is dropped again
        ray_ps.restore_shard(1, tmp_path / "snap")
        np.testing.assert_array_equal(ray_ps.pull("user", ids), rows)
    finally:
        ray_ps.close()


def test_shards_the_cluster_cannot_place_are_an_error_in_time_not_a_hang():
    config = PSConfig(backend="ray", num_shards=2, ray_actor_cpus=64, ray_start_timeout_s=2)  # the cluster has 2
    t0 = time.monotonic()
    with pytest.raises(
        BackendError,
        match=r"2 of 2 PS shard actors did not start within 2 s .*ray_actor_cpus = 64 CPU and the cluster has 2 of 2 CPUs free",
    ):
        RayPS(TABLES, config)
    assert time.monotonic() - t0 < 30
    assert ray.is_initialized()  # the module's Ray instance: a failed RayPS does not stop what it joined
    ps = RayPS(TABLES, PSConfig(backend="ray", num_shards=2))  # and the next one starts as usual
    ps.close()


def test_make_ps_picks_the_backend_and_ray_missing_is_a_config_error(monkeypatch):
    local = make_ps(TABLES)
    assert isinstance(local, LocalPS)
    local.close()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'freshrec\[ray\]'"):
        make_ps(TABLES, PSConfig(backend="ray"))


def test_a_ray_that_is_installed_but_does_not_import_says_why(monkeypatch, tmp_path):
    """A broken Ray (here a dependency missing) was reported as not installed: 'pip install
    freshrec[ray]', which the user had done."""
    (tmp_path / "ray.py").write_text("raise ModuleNotFoundError(\"No module named 'grpc'\", name='grpc')\n")
    monkeypatch.delitem(sys.modules, "ray")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="Ray is installed but does not import: No module named 'grpc'"):
        make_ps(TABLES, PSConfig(backend="ray"))


def test_freshrec_train_on_ray_matches_local_and_starts_and_stops_ray_itself(data_dir, tmp_path):
    def train(backend: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "freshrec.cli", "train", "--data", str(data_dir / "ml-100k"),
             "--set", "model.hidden=[16]", "--set", f"ps.backend={backend}", "--set", "ps.num_shards=2",
             "--no-baselines", "--out", str(tmp_path / backend)],
            capture_output=True, text=True, cwd=ROOT, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return next(line for line in out.stdout.splitlines() if "deepfm" in line)

    ray_row, local_row = train("ray"), train("local")
    # same AUC, logloss and calibration to the printed digit; seconds differ
    assert ray_row.split("│")[:5] == local_row.split("│")[:5]
    served = LocalPS.load(tmp_path / "ray" / "ps")  # a model trained on Ray loads locally
    assert served.num_shards == 2 and served.stats()["item_id"].rows > 0
    served.close()


def _shard_ids(num_shards: int, shard: int, n: int) -> np.ndarray:
    """``n`` IDs that shard ``shard`` of ``num_shards`` owns."""
    ids = np.arange(20 * n * num_shards)
    return ids[shard_of(ids, num_shards) == shard][:n]


def _wait_dead(actor) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the kill is asynchronous
        try:
            ray.get(actor.ready.remote(), timeout=5)
        except ray.exceptions.RayError:
            return
        time.sleep(0.1)
    raise AssertionError("the actor is still alive")


def test_an_error_names_the_shard_that_failed_when_a_call_reaches_only_some_shards():
    """The operator restores the shard the error names: it must be the dead one."""
    ray_ps = RayPS({"t": TableConfig(dim=2)}, PSConfig(backend="ray", num_shards=3, threads=1))
    try:
        ray.kill(ray_ps.shard_actors[2], no_restart=True)
        _wait_dead(ray_ps.shard_actors[2])
        with pytest.raises(BackendError, match="shard 2's actor is gone"):  # the only shard this pull reaches
            ray_ps.pull("t", _shard_ids(3, 2, 5))
        ray_ps.pull("t", _shard_ids(3, 1, 5))  # the others still answer
    finally:
        ray_ps.close()


def test_a_drain_that_fails_on_one_shard_loses_nothing_the_others_drained(tmp_path):
    """The live shards' changes go out with the next drain that succeeds, merged with what changed
    since (a row removed since is a tombstone only, a row re-admitted an upsert only)."""
    ray_ps = RayPS({"t": TableConfig(dim=2)}, PSConfig(backend="ray", num_shards=2, threads=1))
    try:
        ray_ps.save(tmp_path / "empty")
        ray_ps.drain_changes()
        kept, removed_later = _shard_ids(2, 1, 20)[:10], _shard_ids(2, 1, 20)[10:]
        ray_ps.pull("t", np.concatenate([kept, removed_later]), train=True, now=1.0)
        gone_before = _shard_ids(2, 1, 30)[25:]  # removed before the failed drain, admitted again after
        ray_ps.pull("t", gone_before, train=True, now=1.0)
        ray_ps.drain_changes()
        ray_ps.remove("t", gone_before)
        ray_ps.push("t", kept, np.ones((kept.size, 2), np.float32), now=2.0)  # drained by the drain that fails
        ray.kill(ray_ps.shard_actors[0], no_restart=True)
        _wait_dead(ray_ps.shard_actors[0])
        with pytest.raises(BackendError, match="shard 0's actor is gone"):
            ray_ps.drain_changes()
        ray_ps.restore_shard(0, tmp_path / "empty")
        ray_ps.remove("t", removed_later[:5])
        ray_ps.pull("t", gone_before[:2], train=True, now=3.0)
        got = ray_ps.drain_changes()
        assert got.version == 3  # the failed drain took no version
        changes = got.tables["t"]
        want_upserts = np.concatenate([kept, gone_before[:2]])
        np.testing.assert_array_equal(np.sort(changes.upserts.ids), np.sort(want_upserts))
        np.testing.assert_array_equal(
            np.sort(changes.removed), np.sort(np.concatenate([gone_before[2:], removed_later[:5]]))
        )
        _same_export(changes.upserts, ray_ps.export("t", want_upserts))  # the rows' current values
        assert ray_ps.drain_changes().empty  # sent once
    finally:
        ray_ps.close()


def test_restoring_a_shard_whose_actor_does_not_answer_stops_that_actor(tmp_path, monkeypatch):
    """An actor that misses restore_shard's liveness probe (busy, or its machine unreachable) is
    replaced, and killed: it would otherwise hold its shard's memory for nothing."""
    ray_ps = RayPS({"t": TableConfig(dim=2)}, PSConfig(backend="ray", num_shards=2, threads=1))
    try:
        ray_ps.save(tmp_path / "snap")
        old = ray_ps.shard_actors[1]
        real_get = ray.get

        def slow_probe(ref, *args, timeout=None, **kwargs):
            if timeout is not None:  # the probe: as if the actor had not answered in time
                raise ray.exceptions.GetTimeoutError("no answer")
            return real_get(ref, *args, **kwargs)

        monkeypatch.setattr(ray, "get", slow_probe)
        ray_ps.restore_shard(1, tmp_path / "snap")
        monkeypatch.setattr(ray, "get", real_get)
        assert ray_ps.shard_actors[1] is not old
        _wait_dead(old)
        ray_ps.pull("t", np.arange(10))
    finally:
        ray_ps.close()
