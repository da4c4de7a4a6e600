"""collisions: hashing into buckets (against the xxhash package), the collision-rate arithmetic
(against brute force), determinism, and the --quick form end to end on MovieLens-100K."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xxhash

from freshrec.errors import ConfigError, InputError
from freshrec.experiments import build_config, run_experiment
from freshrec.experiments.collisions import (
    CollisionsConfig,
    collision_rate,
    expected_collision_rate,
    hash_batch,
    hash_buckets,
    run,
    table_size_for_rate,
)
from freshrec.features import Batch, Jagged


def test_hash_buckets_is_xxh64_of_the_ids_bytes_mod_size():
    ids = np.array([0, 1, -1, 2**63 - 1, -(2**63), 943, 123456789], np.int64)
    for seed, size in [(0, 7), (5, 1000), (2**40, 3)]:
        want = [xxhash.xxh64_intdigest(int(v).to_bytes(8, "little", signed=True), seed) % size for v in ids]
        assert hash_buckets(ids, size, seed).tolist() == want
    assert hash_buckets(np.zeros(0, np.int64), 5).size == 0
    with pytest.raises(InputError):
        hash_buckets(ids, 0)


def test_collision_rate_against_brute_force():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10**9, 3000)
    ids = np.concatenate([ids, ids[:100]])  # repeats count once
    for size, seed in [(500, 0), (3000, 1), (100_000, 2)]:
        buckets: dict[int, set[int]] = {}
        for v in set(ids.tolist()):
            b = xxhash.xxh64_intdigest(int(v).to_bytes(8, "little", signed=True), seed) % size
            buckets.setdefault(b, set()).add(v)
        shared = sum(len(s) for s in buckets.values() if len(s) > 1)
        assert collision_rate(ids, size, seed) == pytest.approx(shared / len(set(ids.tolist())))


def test_table_size_for_rate_inverts_the_expectation():
    for n, rate in [(943, 0.0773), (1682, 0.0286), (59_047, 0.5), (162_541, 0.9)]:
        m = table_size_for_rate(n, rate)
        assert expected_collision_rate(n, m) == pytest.approx(rate, abs=rate * 1e-3 + 1e-5)
    # measured rates scatter around the expectation
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 2**62, 20_000)
    m = table_size_for_rate(20_000, 0.25)
    assert collision_rate(ids, m, 0) == pytest.approx(0.25, abs=0.02)
    with pytest.raises(InputError):
        table_size_for_rate(10, 1.0)


def test_hash_batch_replaces_only_the_hashed_slots():
    b = Batch(
        sparse={
            "u": Jagged.single(np.array([1, 2, 3], np.int64)),
            "i": Jagged.single(np.array([7, 8, 9], np.int64)),
        },
        dense=np.zeros((3, 0), np.float32),
        labels=np.zeros((3, 1), np.float32),
        weights=np.ones(3, np.float32),
        event_time=np.arange(3.0),
    )
    h = hash_batch(b, {"u": 2}, seed=0)
    assert h.sparse["u"].values.tolist() == hash_buckets(np.array([1, 2, 3]), 2, 0).tolist()
    assert h.sparse["i"] is b.sparse["i"] and b.sparse["u"].values.tolist() == [1, 2, 3]


def test_settings_must_size_every_hashed_slot(data_dir):
    cfg = CollisionsConfig(data=str(data_dir / "ml-100k"), settings=[{"name": "x", "collision_rate": {"user_id": 0.1}}])
    with pytest.raises(ConfigError, match="item_id"):
        run(cfg)
    with pytest.raises(ConfigError, match="not in the data"):
        run(CollisionsConfig(data=str(data_dir / "ml-100k"), slots=["nope"]))
    with pytest.raises(ConfigError, match="collisionless"):
        CollisionsConfig.from_dict({"settings": [{"name": "collisionless"}]})


def test_same_seed_same_numbers(data_dir):
    cfg = CollisionsConfig(
        data=str(data_dir / "ml-100k"),
        seeds=1,
        epochs=1,
        model={"hidden": [16]},
        settings=[{"name": "s", "table_size": {"user_id": 300, "item_id": 500}}],
    )
    a, b = run(cfg), run(cfg)
    assert a.runs == b.runs and a.summary == b.summary


@pytest.mark.slow  # ~17 s alone on 2 cores
def test_quick_form(data_dir, tmp_path):
    cfg = build_config("collisions", quick=True, data=data_dir / "ml-100k")
    res = run_experiment("collisions", cfg, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.csv",
        "runs.csv",
        "results.json",
        "results.md",
        "collisions.png",
    }
    rows = {r["setting"]: r for r in res.summary}
    assert list(rows) == ["collisionless", "paper rates", "50%"]
    assert rows["collisionless"]["user_id_rows"] == 943 and rows["collisionless"]["item_id_rows"] == 1682
    assert rows["collisionless"]["user_id_collision_rate_mean"] == 0.0
    paper = rows["paper rates"]  # sized for 7.73% / 2.86%: measured within a few points of it
    assert 0.03 < paper["user_id_collision_rate_mean"] < 0.13 and 0.01 < paper["item_id_collision_rate_mean"] < 0.06
    assert 0.4 < rows["50%"]["item_id_collision_rate_mean"] < 0.6
    assert len(res.runs) == 3 * cfg.epochs and all(0.6 < r["auc"] < 0.8 for r in res.runs)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["config"]["quick"] is True and len(doc["series"]["auc_per_epoch"]["50%"]["mean"]) == cfg.epochs
