"""The online pipeline: joins, trains, publishes and checkpoints; a run interrupted and restored
from its checkpoints ends bit-identical to an uninterrupted one (nothing lost, nothing twice)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from freshrec.errors import BackendError, StateError
from freshrec.joiner import decode_examples
from freshrec.online import OnlineConfig, OnlinePipeline, live_commerce_spec
from freshrec.online.metrics import PipelineCollector
from freshrec.sim import SimConfig, Simulator
from freshrec.stream import Action, Impression, encode, open_log
from freshrec.sync import ServedModel
from freshrec.train import Trainer

SIM_SECONDS = 1200.0


def fill_log(path: Path, seconds: float = SIM_SECONDS, seed: int = 0, alter=None) -> None:
    """A simulated stream, all of it in the log before the pipeline starts; ``alter`` may
    replace each impression (a producer's bugs)."""
    log = open_log(path=path)
    for t in ("impressions", "actions"):
        log.create_topic(t, 1)
    sim = Simulator(SimConfig(seed=seed, random_ctr=0.03, n_users=20_000, items_per_hour=4_000))
    for batch in sim.batches(until=seconds):
        imps = [e for e in batch if isinstance(e, Impression)]
        if alter is not None:
            imps = [alter(e) for e in imps]
        acts = [e for e in batch if isinstance(e, Action)]
        if imps:
            log.append("impressions", encode(imps))
        if acts:
            log.append("actions", encode(acts))
    log.close()


def config(run: Path, **kw) -> OnlineConfig:
    data = {
        "run_dir": str(run),
        "joiner": {"labels": ["click", "purchase"], "negative_rate": 0.3, "window_s": 300, "allowed_lateness_s": 10,
                   "checkpoint_interval_s": 3600, "checkpoint_every_records": 10**9},
        "spec": live_commerce_spec(item_ttl=300.0).model_dump(mode="json"),  # items expire within the stream
        "rank_model": {"type": "deepfm", "hidden": [32]},
        "train": {"batch_size": 256, "metrics_window": 5000},
        "ps": {"threads": 1},
        "sync": {"snapshot_interval": None, "sparse_sync_interval": 3600, "dense_sync_interval": 3600},
        "expire_every_s": 120,
        "checkpoint_interval_s": 3600,
        "max_batch_wait_s": 3600,  # only full batches: the batch sequence is the same however the run is cut
        **kw,
    }  # fmt: skip
    return OnlineConfig.from_dict(data)


def run_until_caught_up(p: OnlinePipeline, max_rounds: int = 2000) -> None:
    idle = 0
    for _ in range(max_rounds):
        before = p.counters["examples_read"]
        p.round()
        idle = idle + 1 if p.counters["examples_read"] == before else 0
        if idle >= 3 and p.joiner.caught_up:
            return
    raise AssertionError("the pipeline did not catch up")


def examples_in_topic(run: Path) -> list:
    log = open_log(path=run / "log")
    out, off = [], 0
    while recs := log.read("examples", 0, off, max_records=10_000):
        out += decode_examples([r.value for r in recs])
        off = recs[-1].offset + 1
    log.close()
    return out


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "log"
    fill_log(path)
    return path


def fresh_run(tmp_path: Path, stream: Path, name: str) -> Path:
    run = tmp_path / name
    shutil.copytree(stream, run / "log")
    return run


def test_joins_trains_expires_publishes_and_checkpoints(tmp_path, stream):
    run = fresh_run(tmp_path, stream, "a")
    p = OnlinePipeline(config(run))
    run_until_caught_up(p)
    st = p.status()
    examples = examples_in_topic(run)
    full_batches = len(examples) // 256 * 256
    assert st["examples_trained"] == full_batches > 1000
    assert len({e.example_id for e in examples}) == len(examples)  # each impression once
    tables = st["tables"]
    assert tables["item_id"]["filtered"] > 0 and tables["item_id"]["expired"] > 0  # the paper's filter and expiry
    assert st["model"]["rank"]["click/auc"] > 0.5
    assert set(st["model"]) == {"rank", "retrieve"}
    p.checkpoint()
    for pub in p.publishers.values():
        pub.snapshot()
    served = ServedModel.from_snapshot(run / "snapshots" / "rank", name="rank")
    assert served.sparse_version == p.publishers["rank"].sparse_version
    for t in ("item_id", "user_id"):  # serving holds exactly the training side's rows
        a, b = p.trainers["rank"].ps.export(t), served.ps.export(t)
        assert sorted(a.ids.tolist()) == sorted(b.ids.tolist())
    p.close()
    with pytest.raises(StateError, match="closed"):
        p.round()
    assert (run / "status.json").is_file()


def _predictions(p: OnlinePipeline) -> np.ndarray:
    from freshrec.joiner import examples_to_columns

    ex = examples_in_topic(p.config.run_dir)[:500]
    cols = examples_to_columns(ex)
    batch = p.spec.encode(cols, weights=cols["sample_weight"], event_time=cols["event_time"])
    return p.trainers["rank"].predict(batch)


def _uninterrupted(tmp_path: Path, stream: Path, **kw) -> tuple[Path, np.ndarray, int]:
    """A run through the whole stream, never cut: its run_dir, predictions and examples trained."""
    whole = fresh_run(tmp_path, stream, "whole")
    p = OnlinePipeline(config(whole, **kw))
    run_until_caught_up(p)
    want, trained = _predictions(p), p.status()["examples_trained"]
    p.close(checkpoint=False)
    return whole, want, trained


def test_a_run_cut_and_restored_ends_identical_to_an_uninterrupted_one(tmp_path, stream):
    whole, want, trained = _uninterrupted(tmp_path, stream)

    cut = fresh_run(tmp_path, stream, "cut")
    p = OnlinePipeline(config(cut))
    for _ in range(40):
        p.round()
    p.checkpoint()
    for _ in range(40):  # trained on, then lost in the "crash": must be trained again, once
        p.round()
    p.log.close()  # a crash: no final checkpoint, no clean shutdown of the joiner
    p.joiner.close()
    p.run_lock.release()  # the kernel drops a dead process's lock
    q = OnlinePipeline(config(cut))
    assert q.restored_from is not None
    run_until_caught_up(q)
    assert q.status()["examples_trained"] == trained
    np.testing.assert_array_equal(_predictions(q), want)
    assert examples_in_topic(cut) == examples_in_topic(whole)
    q.close(checkpoint=False)


@pytest.mark.slow
def test_a_run_trained_on_ray_and_restored_in_process_ends_identical_to_a_local_one(tmp_path, stream):
    """The training PS on Ray (two shard actors; Ray started by the pipeline's own PSs and
    stopped when the last closes): the same batches train the same rows, and its checkpoint
    resumes on the in-process PS as if the run had never left it."""
    import ray

    shards = {"threads": 1, "num_shards": 2}
    _, want, trained = _uninterrupted(tmp_path, stream, ps=shards)

    cut = fresh_run(tmp_path, stream, "cut")
    p = OnlinePipeline(config(cut, ps={**shards, "backend": "ray"}))
    assert type(p.trainers["rank"].ps).__name__ == "RayPS" and ray.is_initialized()
    for _ in range(40):
        p.round()
    p.close()  # a final checkpoint, written by the shard actors
    assert not ray.is_initialized()  # the pipeline started Ray, and its last PS stopped it
    q = OnlinePipeline(config(cut, ps=shards))
    assert q.restored_from is not None and type(q.trainers["rank"].ps).__name__ == "LocalPS"
    run_until_caught_up(q)
    assert q.status()["examples_trained"] == trained
    np.testing.assert_array_equal(_predictions(q), want)
    q.close(checkpoint=False)


class StepClock:
    """A wall clock that moves ``step`` seconds at every reading: a fast or a slow machine."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 1e9, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_a_replay_on_a_slow_machine_trains_the_same_batches_as_on_a_fast_one(tmp_path, stream):
    """Behind the head of the stream, batches are cut by count alone: on a machine slow enough
    that every round outlasts max_batch_wait_s, a replay used to train a partial batch each round
    (the joiner's small read batches emit fewer examples than a batch), and the model differed."""
    models = {}
    for name, step in (("fast", 1e-6), ("slow", 10.0)):
        run = fresh_run(tmp_path, stream, name)
        joiner = {**config(run).joiner.model_dump(), "read_batch": 64}
        clock = StepClock(step)
        p = OnlinePipeline(config(run, max_batch_wait_s=1.0, joiner=joiner), clock=clock)
        run_until_caught_up(p, max_rounds=20_000)
        clock.step = 10.0  # at the head, a partial batch is due once it waited: the tail, on both
        p.round()
        p.round()
        models[name] = (p.status()["examples_trained"], p.trainers["rank"].counters.steps, _predictions(p))
        p.close(checkpoint=False)
    (n_fast, steps_fast, fast), (n_slow, steps_slow, slow) = models["fast"], models["slow"]
    assert n_fast == n_slow == len(examples_in_topic(tmp_path / "fast")) and steps_fast == steps_slow
    np.testing.assert_array_equal(fast, slow)


def test_a_round_that_fails_part_way_is_not_checkpointed_at_close(tmp_path, stream, monkeypatch):
    """A training step that raises after the dense optimizer stepped (a PS shard lost mid-push,
    Ctrl-C at the wrong moment) leaves the models half-stepped: close() must not save that, or the
    restart trains the batch again on top of half of it. The restart resumes from the last
    checkpoint and ends identical to a run never interrupted."""
    _, want, trained = _uninterrupted(tmp_path, stream)

    cut = fresh_run(tmp_path, stream, "cut")
    p = OnlinePipeline(config(cut))
    for _ in range(5):
        p.round()
    p.checkpoint()
    ps = p.trainers["rank"].ps
    pushes = {"n": 0}
    real_push = ps.push_many

    def push_then_fail(*args, **kwargs):
        pushes["n"] += 1
        if pushes["n"] == 3:
            raise BackendError("cannot push: shard 1's actor is gone")
        return real_push(*args, **kwargs)

    monkeypatch.setattr(ps, "push_many", push_then_fail)
    with pytest.raises(BackendError):
        for _ in range(200):
            p.round()
    checkpoints = sorted((cut / "checkpoints").iterdir())
    with pytest.raises(StateError, match="failed part-way"):
        p.checkpoint()
    p.close()  # as freshrec online's `finally` does after the error
    assert sorted((cut / "checkpoints").iterdir()) == checkpoints  # no checkpoint of the half-step
    with pytest.raises(StateError, match="closed"):
        p.round()
    q = OnlinePipeline(config(cut))
    run_until_caught_up(q)
    assert q.status()["examples_trained"] == trained
    np.testing.assert_array_equal(_predictions(q), want)
    q.close(checkpoint=False)


def test_one_pipeline_per_run_dir_and_a_second_one_waits_for_the_first_to_stop(tmp_path, stream, monkeypatch):
    """Two `freshrec online` on one run_dir (a rolling restart, a start script run twice, a
    zombie) would both train and write checkpoints into one folder: the second waits up to
    lock_wait_s for the first to stop, then exits naming it, having touched nothing."""
    run = fresh_run(tmp_path, stream, "r")
    first = OnlinePipeline(config(run))
    for _ in range(5):
        first.round()
    listing = sorted(str(x) for x in run.rglob("*") if "log" not in x.parts)
    note = (run / ".lock").read_bytes()
    with pytest.raises(StateError, match=rf"run_dir {run} is in use by pid {os.getpid()} on "):
        OnlinePipeline(config(run, lock_wait_s=0.3))
    assert sorted(str(x) for x in run.rglob("*") if "log" not in x.parts) == listing
    assert (run / ".lock").read_bytes() == note
    final = []
    real_checkpoint = first.checkpoint

    def slow_checkpoint():  # a final checkpoint longer than the waiter's poll (a large model)
        time.sleep(1.0)
        final.append(real_checkpoint())
        return final[-1]

    monkeypatch.setattr(first, "checkpoint", slow_checkpoint)
    stopper = threading.Timer(0.5, first.close)  # its final checkpoint, then the lock goes
    stopper.start()
    second = OnlinePipeline(config(run, lock_wait_s=60))
    stopper.join()
    assert second.restored_from == final[0]  # it waited for the first's final checkpoint, then resumed from it
    assert second.trainers["rank"].counters.examples == first.trainers["rank"].counters.examples
    second.close(checkpoint=False)
    OnlinePipeline(config(run, lock_wait_s=0)).close(checkpoint=False)  # closed: free at once


def test_a_corrupt_newest_checkpoint_falls_back_to_an_older_one(tmp_path, stream):
    run = fresh_run(tmp_path, stream, "c")
    p = OnlinePipeline(config(run))
    for _ in range(20):
        p.round()
    first = p.checkpoint()
    for _ in range(20):
        p.round()
    second = p.checkpoint()
    p.close(checkpoint=False)
    victim = next((second / "rank" / "ps").rglob("rows-*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:-10])
    q = OnlinePipeline(config(run))
    assert q.restored_from == first
    q.close(checkpoint=False)


def test_a_failed_joiner_is_not_checkpointed_at_close_and_its_error_is_the_one_seen(tmp_path, stream, monkeypatch):
    """A cluster outage failed the joiner mid-step; close() then tried a final checkpoint, which
    raised 'cannot checkpoint: the joiner is failed', and that was all `freshrec online` said."""
    from freshrec.joiner import JoinerState

    run = fresh_run(tmp_path, stream, "f")
    p = OnlinePipeline(config(run))
    for _ in range(5):
        p.round()
    first = p.checkpoint()

    def outage(*args, **kwargs):
        raise BackendError("cannot read topic 'impressions' (Kafka at 127.0.0.1:9092): Broker transport failure")

    monkeypatch.setattr(p.joiner.log, "read_columns", outage)
    monkeypatch.setattr(p.log, "end_offset", outage)  # the final status would ask for offsets too
    with pytest.raises(BackendError, match="Broker transport failure"):
        for _ in range(50):
            p.round()
    assert p.joiner.state is JoinerState.FAILED
    p.close()  # no StateError from a final checkpoint of a failed joiner
    assert p.checkpoints.candidates()[0] == first


def test_a_start_that_fails_leaves_nothing_open_and_a_second_start_works(tmp_path, stream, monkeypatch):
    """The retriever's PS failed to start (a Ray cluster without CPUs for its shard actors) after
    the ranker's had: the ranker (its actors holding the cluster's CPUs), the joiner (its state
    store locked) and the log stayed open, so a second start in the same process was refused."""
    from freshrec.online import pipeline as pipeline_module

    run = fresh_run(tmp_path, stream, "s")
    started = []

    class FailingRetriever(Trainer):
        def __init__(self, spec, model, *args, **kwargs):
            if model.type == "two_tower":
                raise BackendError("cannot start the shard actors: 2 of 2 not started after 60 s")
            super().__init__(spec, model, *args, **kwargs)
            started.append(self)

    monkeypatch.setattr(pipeline_module, "Trainer", FailingRetriever)
    with pytest.raises(BackendError, match="cannot start the shard actors"):
        OnlinePipeline(config(run))
    assert len(started) == 1 and started[0].state.value == "closed"
    monkeypatch.undo()
    p = OnlinePipeline(config(run))  # the joiner's state store is not locked
    p.round()
    p.close(checkpoint=False)


def test_a_close_that_meets_an_outage_still_releases_everything_and_keeps_the_first_error(
    tmp_path, stream, monkeypatch
):
    """A round failed on a log outage after the joiner had stepped (the trainer's read of the
    examples topic); close() then closed the joiner, whose own checkpoint met the same outage and
    raised: the trainers (a RayPS's actors), the log and the run_dir lock stayed open (a second
    close() returned at once), and `freshrec online` reported the joiner's error, not the round's."""
    run = fresh_run(tmp_path, stream, "o")
    p = OnlinePipeline(config(run))
    for _ in range(3):
        p.round()
    real_step = p.joiner.step

    def outage(*args, **kwargs):
        raise BackendError("cannot reach the log: the broker is down")

    def step_then_outage():
        n = real_step()
        for name in ("read", "append", "end_offset"):
            monkeypatch.setattr(p.log, name, outage)
        return n

    monkeypatch.setattr(p.joiner, "step", step_then_outage)
    with pytest.raises(BackendError, match="broker is down"):
        p.round()
    p.close()  # the round's error is the one to report: close adds none of its own
    assert all(tr.state.value == "closed" for tr in p.trainers.values())
    assert not p.run_lock.held
    OnlinePipeline(config(run, lock_wait_s=0)).close(checkpoint=False)  # the run_dir is free


def test_a_close_that_fails_releases_everything_then_raises(tmp_path, stream, monkeypatch):
    """Not after a failed round: the error of a release step (here the joiner's final checkpoint)
    is raised, but only once everything else is released."""
    run = fresh_run(tmp_path, stream, "c")
    p = OnlinePipeline(config(run, metrics_port=0))
    p.round()
    port = p.metrics_port

    real_close = p.joiner.close

    def broken_close():  # as a joiner whose final checkpoint fails does: its store released, then the error
        real_close()
        raise BackendError("cannot checkpoint the joiner: disk full")

    monkeypatch.setattr(p.joiner, "close", broken_close)
    with pytest.raises(BackendError, match="disk full"):
        p.close(checkpoint=False)
    assert all(tr.state.value == "closed" for tr in p.trainers.values())
    assert not p.run_lock.held
    p.close()  # closed: nothing more to do
    q = OnlinePipeline(config(run, lock_wait_s=0, metrics_port=port))  # the lock and the metrics port are free
    q.close(checkpoint=False)


def test_a_start_whose_log_cannot_create_the_input_topics_closes_the_log(tmp_path, stream, monkeypatch):
    """ensure_topic (the first call to a Kafka cluster) ran before anything guarded the log: a
    cluster unreachable at start left the log's clients open in a process that retries."""
    from freshrec.online import pipeline as pipeline_module

    opened = []

    def open_failing_log(cfg):
        log = open_log(cfg)
        opened.append(log)

        def unreachable(*args, **kwargs):
            raise BackendError("cannot reach the Kafka cluster")

        monkeypatch.setattr(log, "ensure_topic", unreachable)
        return log

    monkeypatch.setattr(pipeline_module, "open_log", open_failing_log)
    run = fresh_run(tmp_path, stream, "k")
    with pytest.raises(BackendError, match="cannot reach"):
        OnlinePipeline(config(run))
    assert len(opened) == 1 and opened[0].state.value == "closed"


def test_the_timeline_is_rotated_at_its_size_cap(tmp_path, stream):
    """timeline.jsonl grew by a record every status interval for as long as the run lived (~110 MB
    a day at the default 2 s)."""
    run = fresh_run(tmp_path, stream, "t")
    p = OnlinePipeline(config(run, timeline_max_bytes=1 << 16))
    for _ in range(120):
        p._write_status(p.clock())
    sizes = {f.name: f.stat().st_size for f in run.glob("timeline*.jsonl")}
    assert set(sizes) == {"timeline.jsonl", "timeline.1.jsonl"} and max(sizes.values()) <= 1 << 16
    assert all(json.loads(line) for line in (run / "timeline.jsonl").read_text().splitlines())  # whole records
    p.close(checkpoint=False)


def test_metrics_port_serves_the_training_side(tmp_path, stream):
    import urllib.request

    run = fresh_run(tmp_path, stream, "m")
    p = OnlinePipeline(config(run, metrics_port=0, status_interval_s=0.01))
    for _ in range(30):
        p.round()
    body = urllib.request.urlopen(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=10).read().decode()
    for name in ("freshrec_train_examples_total", "freshrec_train_progressive", "freshrec_table",
                 "freshrec_sync_published_version", "freshrec_joiner_events_in", "freshrec_train_examples_lag"):  # fmt: skip
        assert name in body, name
    lag = next(line for line in body.splitlines() if line.startswith("freshrec_joiner_lag_records"))
    assert float(lag.split()[-1]) == p.last_status["joiner"]["lag_records"] >= 0  # it read -1 (never measured)
    assert 'freshrec_table{table="item_id",what="filtered"}' in body
    p.close(checkpoint=False)


def test_the_log_odds_correction_follows_how_the_loss_treats_sampled_negatives(tmp_path, stream):
    """Unweighted loss: predictions add log(r). Weighted loss over the joiner's reweighted
    negatives (weight 1/r): already unbiased, no correction. Weighted loss without reweighting:
    the weights are 1, so the correction stays."""
    import math

    cases = [({}, {}, math.log(0.3)), ({"weighted_loss": True}, {}, 0.0),
             ({"weighted_loss": True}, {"reweight_negatives": False}, math.log(0.3))]  # fmt: skip
    for i, (train, joiner, offset) in enumerate(cases):
        base = config(fresh_run(tmp_path, stream, f"c{i}"))
        cfg = base.model_copy(update={"train": base.train.model_copy(update=train),
                                      "joiner": base.joiner.model_copy(update=joiner)})  # fmt: skip
        p = OnlinePipeline(cfg)
        try:
            assert p.trainers["rank"].logit_offset == pytest.approx(offset)
        finally:
            p.close(checkpoint=False)


def test_a_first_start_on_an_empty_log_creates_the_input_topics_and_a_first_snapshot(tmp_path, caplog):
    """`freshrec online` on a fresh cluster: nothing has created the input topics yet (the
    serving replicas that write impressions wait for this pipeline's first snapshot)."""
    run = tmp_path / "fresh"
    cfg = config(run, input_partitions=2, sync={"sparse_sync_interval": 3600, "dense_sync_interval": 3600})
    with caplog.at_level("WARNING", logger="freshrec.online.pipeline"):
        p = OnlinePipeline(cfg)
    try:
        assert [p.log.partitions(t) for t in ("impressions", "actions")] == [2, 2]
        assert "'impressions' did not exist" in caplog.text
        p.round()
        served = ServedModel.from_snapshot(run / "snapshots" / "rank")  # what `freshrec serve` starts from
        served.close()
    finally:
        p.close(checkpoint=False)
    with caplog.at_level("WARNING", logger="freshrec.online.pipeline"):
        caplog.clear()
        q = OnlinePipeline(cfg)  # the topics exist now: no warning, counts kept
        q.close(checkpoint=False)
    assert "did not exist" not in caplog.text


def test_unfinished_checkpoints_and_snapshots_of_a_crash_are_removed_at_start(tmp_path, stream):
    """kill -9 mid-write leaves a hidden temp folder (a whole unfinished copy): each start used to
    keep it, leaking a checkpoint's worth of disk per crash."""
    run = fresh_run(tmp_path, stream, "t")
    p = OnlinePipeline(config(run))
    p.round()
    p.close()  # writes a checkpoint and the first snapshots
    torn_ckpt = run / "checkpoints" / ".ckpt-000099.tmp-deadbeef"
    torn_snap = run / "snapshots" / "rank" / ".snapshot-000000000099.tmp-deadbeef"
    for d in (torn_ckpt, torn_snap):
        d.mkdir(parents=True)
        (d / "dense.safetensors").write_bytes(b"half")
    torn_pointers = [run / "checkpoints" / ".LATEST.tmp-deadbeef", run / "snapshots" / "rank" / ".LATEST.tmp-0badf00d"]
    for f in torn_pointers:  # a kill -9 while a LATEST pointer was being replaced: these piled up
        f.write_bytes(b"ckpt-0000")
    keep = run / "checkpoints" / "notes"
    keep.mkdir()
    q = OnlinePipeline(config(run))
    try:
        assert not torn_ckpt.exists() and not torn_snap.exists() and keep.exists()
        assert not any(f.exists() for f in torn_pointers)
        assert q.restored_from is not None
    finally:
        q.close(checkpoint=False)


def test_examples_the_spec_cannot_read_are_left_out_and_counted_not_fatal(tmp_path):
    """A producer that sends a float for an ID slot (or an ID as "42" in one event and 42 in the
    next) stopped training: the batch's encode raised, and a restart met the same batch again.
    Mixed ID types now encode, and an example the spec cannot read is left out and counted."""
    seen = {"n": 0}

    def alter(imp: Impression) -> Impression:
        seen["n"] += 1
        if seen["n"] % 97 == 0:  # a float where the category slot needs an integer or a string
            return msgspec.structs.replace(imp, item_features={**imp.item_features, "category": 2.5})
        if seen["n"] % 5 == 0:  # some users sent as strings: encodes, value by value
            return msgspec.structs.replace(imp, user_id=str(imp.user_id))
        return imp

    run = tmp_path / "poisoned"
    fill_log(run / "log", seconds=600.0, alter=alter)
    p = OnlinePipeline(config(run))
    run_until_caught_up(p)
    trained = examples_in_topic(run)
    trained = trained[: len(trained) // 256 * 256]
    poisoned = sum(isinstance(e.features.get("category"), float) for e in trained)
    assert poisoned > 0 and any(isinstance(e.user_id, str) for e in trained)
    st = p.status()
    assert p.counters["examples_rejected"] == st["counters"]["examples_rejected"] == poisoned
    assert st["examples_trained"] == len(trained) - poisoned
    rejected = [f for f in PipelineCollector(lambda: st).collect() if f.name == "freshrec_train_examples_rejected"]
    assert rejected[0].samples[0].value == poisoned
    p.close()


def test_records_of_the_examples_topic_that_are_not_examples_are_left_out_and_counted(tmp_path, stream):
    """A record on the examples topic that does not decode as an Example (another producer's, a
    newer freshrec's schema version, an old example with a position past int64) made
    decode_examples raise: training stopped there, and a restart read the same record again."""
    run = fresh_run(tmp_path, stream, "foreign")
    p = OnlinePipeline(config(run))
    try:
        run_until_caught_up(p)
        trained = p.status()["examples_trained"]
        good = [r.value for r in p.log.read("examples", 0, 0, max_records=256)]
        newer = msgspec.msgpack.decode(good[0]) | {"schema_version": 2}
        huge = msgspec.msgpack.decode(good[1]) | {"position": 2**64 - 1}
        p.log.append("examples", [b"not msgpack", *good[:100], msgspec.msgpack.encode(newer), *good[100:],
                                  msgspec.msgpack.encode(huge)])  # fmt: skip
        run_until_caught_up(p)
        assert p.counters["examples_rejected"] == 3
        assert p.status()["examples_trained"] == trained + 256  # the good ones around them: one more batch
        assert p.offsets[0] == p.log.end_offset("examples", 0)
    finally:
        p.close()


def test_examples_of_another_label_set_and_reads_of_nothing_but_junk_do_not_stop_or_stall(tmp_path, stream):
    """Review findings: an example with a label the spec lacks failed only beside the others
    (each passed alone, so the search found none and the batch's encode raised again: a crash
    loop); and a read of nothing but bad records left the trained offsets behind (a restart read
    and counted them again, and the lag stayed up)."""
    run = fresh_run(tmp_path, stream, "labels")
    p = OnlinePipeline(config(run))
    try:
        run_until_caught_up(p)
        trained, end = p.status()["examples_trained"], p.log.end_offset("examples", 0)
        good = [r.value for r in p.log.read("examples", 0, 0, max_records=256)]
        other = msgspec.msgpack.decode(good[0])
        other["labels"] = {**other["labels"], "share": 1}
        r = len(p._buffer.examples)  # examples read, waiting for a full batch
        more = [*good[:100], msgspec.msgpack.encode(other), *good[100 : 255 - r]]  # completes one batch
        p.log.append("examples", more)
        run_until_caught_up(p)
        assert p.counters["examples_rejected"] == 1 and not p._buffer.examples
        assert p.status()["examples_trained"] == trained + 255
        p.log.append("examples", [b"junk"] * 10)
        run_until_caught_up(p)
        assert p.counters["examples_rejected"] == 11
        assert p.trained_offsets == p.offsets == [end + len(more) + 10]
    finally:
        p.close()


def test_warming_up_means_clicks_out_and_no_negative_yet(tmp_path, stream):
    """A fresh run with emit = first_action trains on clicks alone until the first windows
    close; the walkthrough saw scores of ~0.95 and a CTR of 1 with nothing saying why."""
    from freshrec.online.pipeline import warming_up

    assert warming_up({"examples_out": 12, "negatives_out": 0})
    assert not warming_up({"examples_out": 0, "negatives_out": 0})  # nothing yet: not warming, idle
    assert not warming_up({"examples_out": 40, "negatives_out": 3})
    run = fresh_run(tmp_path, stream, "warm")
    p = OnlinePipeline(config(run))
    try:
        run_until_caught_up(p)
        st = p.status()
        assert st["warming_up"] is False and st["joiner"]["negatives_out"] > 0
        gauge = [f for f in PipelineCollector(lambda: {**st, "warming_up": True}).collect()
                 if f.name == "freshrec_train_warming_up"]  # fmt: skip
        assert gauge[0].samples[0].value == 1.0
    finally:
        p.close()
