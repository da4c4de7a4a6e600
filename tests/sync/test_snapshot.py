"""Serving snapshots: written atomically with a LATEST pointer and the newest K kept, verified on
read; a replica skips a torn snapshot for an older good one; a ServedModel can start from one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from freshrec.errors import CorruptionError, SyncError
from freshrec.models import LRConfig
from freshrec.stream import open_log
from freshrec.sync import Publisher, ServedModel, Subscriber, SyncConfig
from freshrec.sync.snapshot import list_snapshots, newest_good_snapshot, read_snapshot, write_snapshot
from freshrec.table import TableConfig
from freshrec.train import TrainConfig, Trainer

from ._world import SPEC, Driver, assert_same_rows, model_name, served, training_ps
from .test_sync import batch


@pytest.fixture
def log(tmp_path):
    lg = open_log(path=tmp_path / "log")
    yield lg
    lg.close()


def test_write_read_keep_and_latest(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.choice(10**9, 50, replace=False).astype(np.int64)
    emb = rng.normal(size=(50, 3)).astype(np.float32)
    cfg = {"t": TableConfig(name="t", dim=3)}
    for v in (3, 5, 9, 12):
        write_snapshot(tmp_path, model="m", tables={"t": (ids[:v], emb[:v])}, table_configs=cfg, dense=b"dense",
                       sparse_version=v, dense_version=1, sparse_offset=v + 1, dense_offset=2, logit_offset=-0.5,
                       event_time=float(v), keep=3)  # fmt: skip
    assert [p.name for p in list_snapshots(tmp_path)] == [f"snapshot-{v:012d}" for v in (12, 9, 5)]
    assert json.loads((tmp_path / "LATEST").read_text()) == {"snapshot": "snapshot-000000000012"}
    info = newest_good_snapshot(tmp_path)
    assert (info.sparse_version, info.sparse_offset, info.dense_offset, info.event_time) == (12, 13, 2, 12.0)
    ((_t, got_ids, got_emb),) = list(info.read_tables())
    np.testing.assert_array_equal(got_ids, ids[:12])
    np.testing.assert_array_equal(got_emb, emb[:12])
    assert info.read_dense() == b"dense" and info.table_configs()["t"].dim == 3
    # a torn table file is caught by its checksum; a missing manifest is not a snapshot
    f = info.path / info.tables["t"]["file"]
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(CorruptionError, match="checksum"):
        list(info.read_tables())
    (tmp_path / "snapshot-000000000009" / "manifest.json").unlink()
    with pytest.raises(CorruptionError, match="no manifest"):
        read_snapshot(tmp_path / "snapshot-000000000009")


def test_a_replica_skips_a_torn_snapshot_for_an_older_good_one(log, tmp_path):
    name = model_name()
    cfg = SyncConfig(snapshot_dir=tmp_path / "snaps")
    ps = training_ps()
    state0 = served(name)
    pub = Publisher(name, ps, lambda: state0.module, log, cfg)
    d = Driver(ps)
    for i in range(12):
        d.step()
        pub.publish_sparse()
        if i in (4, 9):
            pub.snapshot()
    newest = list_snapshots(cfg.model_snapshot_dir(name))[0]
    table_file = next((newest / "tables").iterdir())
    table_file.write_bytes(b"garbage")
    state = served(name)
    sub = Subscriber(state, log, cfg, registry=CollectorRegistry())
    info = sub.bootstrap()
    assert info.sparse_version == 6  # the snapshot at i = 4 (after the delta of i = 4 and its own)
    assert state.sparse_version == pub.sparse_version
    assert_same_rows(ps, state.ps)


def test_a_served_model_starts_from_a_snapshot_alone(log, tmp_path):
    trainer = Trainer(SPEC, LRConfig(), TrainConfig(negative_sampling_rate=0.25), ps=training_ps())
    d = Driver(trainer.ps)
    for _ in range(5):
        d.step()
    pub = Publisher.for_trainer(trainer, log, SyncConfig(snapshot_dir=tmp_path / "snaps"), name="rank")
    path = pub.snapshot()
    for where in (path, path.parent):  # a snapshot folder, or the model's directory of them
        served_model = ServedModel.from_snapshot(where, fp16=where == path)
        assert (served_model.name, served_model.sparse_version, served_model.dense_version) == ("rank", 1, 1)
        assert served_model.logit_offset == pytest.approx(np.log(0.25))
        want = trainer.predict(batch(1))
        got = served_model.predict(batch(1))
        if where == path:  # float16 tables
            np.testing.assert_allclose(got, want, atol=1e-3)
        else:
            np.testing.assert_array_equal(got, want)
    bare = Publisher("bare", trainer.ps, lambda: trainer.model, log, SyncConfig(snapshot_dir=tmp_path / "snaps"))
    with pytest.raises(SyncError, match="lacks the feature spec"):
        ServedModel.from_snapshot(bare.snapshot())
    with pytest.raises(SyncError, match=r"no snapshot under .*nowhere yet.*start it first"):
        ServedModel.from_snapshot(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SyncError, match="no snapshot under"):  # it raised a raw NotADirectoryError
        ServedModel.from_snapshot(tmp_path / "a_file")
    # a torn newest snapshot: the model directory's next one is used
    newer = pub.snapshot()
    (newer / "dense.safetensors").write_bytes(b"torn")
    assert ServedModel.from_snapshot(path.parent).sparse_version == 1
    with pytest.raises(SyncError, match=r"no good snapshot.*checksum"):
        ServedModel.from_snapshot(newer)
