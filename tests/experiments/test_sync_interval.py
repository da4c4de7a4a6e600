"""sync-interval: the sync log brings a replica exactly to the training model, replicas change only
when they sync, shards follow the config, and the --quick form runs end to end (Criteo)."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.errors import ConfigError, StateError
from freshrec.experiments import build_config, run_experiment
from freshrec.experiments._common import make_trainer, open_dataset, seeded_spec
from freshrec.experiments.sim_stream import SimStream
from freshrec.experiments.stream import minibatches, shards_by_count
from freshrec.experiments.sync_interval import SyncIntervalConfig, SyncLog, _sim_shards, run, served_replica
from freshrec.models import DeepFMConfig


def test_a_synced_replica_predicts_exactly_like_the_training_model(data_dir):
    data, _ = open_dataset(data_dir / "ml-100k")  # with side features: a multi-valued slot too
    data = data.slice(0, 6000)
    spec = seeded_spec(data.spec, 3, dim=8)
    trainer = make_trainer(spec, DeepFMConfig(hidden=[16]), seed=3, threads=1, batch_size=256)
    fresh, stale = served_replica(trainer, "fresh"), served_replica(trainer, "stale")
    log = SyncLog()
    log.register(fresh)
    log.register(stale)
    shards = shards_by_count(data.encode(), 4)
    try:
        for b in minibatches(shards[0], 256):
            trainer.step(b)
        log.publish(trainer)
        log.sync(trainer, fresh)
        log.sync(trainer, stale)
        stale_before = stale.predict(shards[3])
        for shard in shards[1:3]:
            for b in minibatches(shard, 256):
                trainer.step(b)
            log.publish(trainer)
            assert log.sync(trainer, fresh) > 0
            np.testing.assert_array_equal(fresh.predict(shards[3]), trainer.predict(shards[3]))
        assert not np.array_equal(stale.predict(shards[3]), trainer.predict(shards[3]))
        np.testing.assert_array_equal(stale.predict(shards[3]), stale_before)  # unchanged until it syncs
        assert len(log.deltas) == 2  # kept for the stale replica only
        log.sync(trainer, stale)  # catches up over both deltas at once
        np.testing.assert_array_equal(stale.predict(shards[3]), trainer.predict(shards[3]))
        assert log.deltas == []
        with pytest.raises(StateError, match="registered"):
            log.sync(trainer, served_replica(trainer, "stranger"))
    finally:
        fresh.close()
        stale.close()
        trainer.close()


def test_config_checks(data_dir):
    with pytest.raises(ConfigError, match="exactly one"):
        SyncIntervalConfig.from_dict({"num_shards": 4, "shard_seconds": 60})
    assert SyncIntervalConfig.from_dict({"shard_seconds": 60}).num_shards is None
    with pytest.raises(ConfigError, match="intervals"):
        SyncIntervalConfig.from_dict({"intervals": [1, 1]})
    cfg = SyncIntervalConfig(data=str(data_dir / "criteo-sample"), shard_seconds=60)
    with pytest.raises(ConfigError, match="no time column"):
        run(cfg)


def test_event_time_shards_on_movielens(data_dir):
    cfg = SyncIntervalConfig(
        data=str(data_dir / "ml-100k"),
        seeds=1,
        batch_fraction=0.9,
        shard_seconds=7 * 86400,
        intervals=[2],
        model={"hidden": [16]},
        dim=8,
        batch_size=2048,
        online_batch_size=512,
        batch_epochs=1,
    )
    res = run(cfg)
    per_shard = res.series["per_shard"]
    assert sum(res.series["shard_examples"]) == 10_000
    assert {r["setting"] for r in per_shard} == {"batch-only", "sync every 2 shards"}
    first = [r["auc"] for r in per_shard if r["shard"] <= 2]  # both are the batch model until the first sync
    assert first[0] == first[1] and first[2] == first[3]
    assert [r["sync_every"] for r in res.summary] == ["never", "14 d"]


def test_quick_form(data_dir, tmp_path):
    cfg = build_config("sync-interval", quick=True, data=data_dir / "criteo-sample" / "train.txt")
    res = run_experiment("sync-interval", cfg, tmp_path)
    assert (tmp_path / "sync_interval.png").stat().st_size > 1000
    names = [r["setting"] for r in res.summary]
    assert names == ["batch-only", "sync every 1 shard", "sync every 3 shards"]
    base = res.summary[0]
    assert base["delta_auc_pooled_mean"] == 0.0 and base["sync_every"] == "never"
    assert any("exact repeats" in n for n in res.notes)  # the tiled sample is deduplicated
    assert len(res.series["auc_per_shard"]["batch-only"]["mean"]) == cfg.num_shards


SIM = {
    "world": {"n_users": 2000, "new_users_per_hour": 40.0, "items_per_hour": 200.0, "start_time": 72_000.0},
    "hours": 0.5,
    "window_s": 120.0,
    "negative_rate": 0.2,
}


def test_simulator_shards_score_each_impression_before_training_on_it():
    cfg = SyncIntervalConfig.from_dict({"data": "sim", "sim": SIM, "shard_seconds": 60, "batch_fraction": 0.5})
    stream = SimStream(cfg.sim, seed=2)
    batch, emitted = stream.examples()
    head, scored, trained, ends, span = _sim_shards(cfg, stream)
    assert span == 60 and ends[0] == stream.start_time + 900 + 60
    t0 = ends[0] - span
    assert head.size == int((emitted < t0).sum())
    assert sum(s.size for s in scored) == int((batch.event_time >= t0).sum())  # each online impression once
    assert head.size + sum(s.size for s in trained) == batch.size  # each example trained once
    for s, t, end in zip(scored, trained, ends, strict=True):
        assert np.all((s.event_time >= end - span) & (s.event_time < end))
        # what shard k trains on was shown before k ended: scored in shard k or earlier
        assert np.all(t.event_time < end)
    assert any(s.size == 0 for s in scored[-2:])  # past the last impression only labels arrive


def test_simulator_quick_form_runs(tmp_path):
    cfg = build_config("sync-interval", quick=True, data="sim", overrides=[f"sim.hours={SIM['hours']}"])
    cfg = SyncIntervalConfig.from_dict(cfg.model_dump() | {"sim": SIM, "model": {"hidden": [16]}, "dim": 8})
    res = run_experiment("sync-interval", cfg, tmp_path)
    names = [r["setting"] for r in res.summary]
    assert names == ["batch-only", "sync every 1 shard", "sync every 3 shards"]
    assert res.summary[1]["sync_every"] == "2.5 min"  # the online quarter hour in 6 shards
    assert any(n.startswith("ceiling:") for n in res.notes)
    assert res.summary[0]["delta_auc_pooled_mean"] == 0.0
    # a CTR of a few percent, predicted with the sampling correction: log loss near the entropy of
    # the click rate (~0.1-0.15), not that of the sampled stream (> 0.2 without the correction)
    assert all(r["logloss_mean"] < 0.17 for r in res.summary), [r["logloss_mean"] for r in res.summary]
