"""The joiner over the embedded event log: a simulated stream end to end against the naive join,
output that depends on the log only, dead letters, metrics, restarts, refusals, Parquet."""

from __future__ import annotations

import json
import time

import msgspec
import pytest

from freshrec.errors import BackendError, CorruptionError, InputError, StateError
from freshrec.joiner import Joiner, JoinerConfig, JoinerState, prometheus_collector, read_examples_parquet
from freshrec.joiner.dead_letter import DeadLetter, decode_dead_letters, encode_dead_letters
from freshrec.joiner.example import examples_to_columns
from freshrec.joiner.owner import Claim, owner_topic
from freshrec.stream import Action, Impression, ItemLifecycle, encode, open_log, partition_for

from .helpers import JOIN, act, imp, read_dead, read_examples, read_topic, run_naive, sim_events, write_stream


@pytest.fixture(scope="module")
def events():
    return sim_events(25)


def joined(tmp_path, events, name="a", bad=True, **cfg):
    """Write ``events`` to a fresh log, run a joiner over it to the end, drain; (log path, metrics)."""
    path = tmp_path / name
    with open_log(path=path / "log") as log:
        write_stream(log, events, bad=bad)
        with Joiner(log, JoinerConfig(state_dir=path / "state", **{**JOIN, **cfg})) as j:
            m = j.run(until_idle=True, drain=True)
        return path, m, read_examples(log), read_dead(log)


def processing_order(events):
    """The order the joiner joins a sorted stream in: event time, then input partition, then offset."""
    src = []
    for e in events:
        topic, n = ("impressions", 3) if isinstance(e, Impression) else ("actions", 2)
        src.append((0 if topic == "impressions" else 3) + partition_for(str(e.request_id).encode(), n))
    return [e for _, _, e in sorted(zip([e.event_time for e in events], src, events, strict=True),
                                    key=lambda x: (x[0], x[1]))]  # fmt: skip


def test_simulated_stream_matches_the_naive_join(tmp_path, events):
    _, m, examples, dead = joined(tmp_path, events, bad=False, negative_rate=0.5, emit="window_close")
    stream = [e for e in events if type(e).__name__ in ("Impression", "Action")]
    want, _, counts = run_naive(processing_order(stream), drain=True, negative_rate=0.5, emit="window_close", **JOIN)
    assert sorted(examples, key=lambda e: e.example_id) == sorted(want, key=lambda e: e.example_id)
    assert dead == []
    assert m.examples_out == len(examples) == counts["examples_out"] > 100
    assert m.positives_out == counts["positives_out"] > 20
    assert m.actions_joined == counts["actions_joined"] and m.join_rate > 0.9


def test_output_is_a_function_of_the_log(tmp_path, events):
    """Read batch sizes and the memory budget change nothing in what is written, nor its order."""
    runs = [
        joined(tmp_path, events, name=f"r{i}", negative_rate=0.3, read_batch=rb, memory_max_impressions=mm)
        for i, (rb, mm) in enumerate([(8192, 10**6), (3, 10**6), (37, 0), (500, 60)])
    ]
    first = runs[0]
    assert len(first[2]) > 100
    for _, m, examples, dead in runs[1:]:
        assert examples == first[2]
        assert dead == first[3]
        assert m.as_dict() | {"checkpoints": 0} == first[1].as_dict() | {"checkpoints": 0}
    assert runs[2][1].open_impressions == 0  # drained, also from disk


def test_bad_input_goes_to_the_dead_letter_topic(tmp_path, events):
    _, m, examples, dead = joined(tmp_path, events)
    dead.sort(key=lambda d: (d.topic, d.offset))  # written in join order, which interleaves topics
    assert [d.field for d in dead] == ["type", "<record>", "event_time", "surprise"]
    assert dead[0].reason == "action.type: invalid enum value 'like'"
    assert dead[2].reason.startswith("impression.event_time: expected a finite float >= 0")
    assert [(d.topic, d.partition) for d in dead] == [("actions", partition_for(b"bad", 2))] + [
        ("impressions", partition_for(b"bad", 3))
    ] * 3
    assert dead[1].record == b"\xc1 not msgpack"
    assert dead[3].reason == "impression.surprise: object contains unknown field `surprise`"
    # the unknown field is found when the impression's example is built (rejected, not bad bytes)
    assert (m.bad_records, m.rejected_events, m.dead_letters) == (3, 1, 4)
    _, _, clean, _ = joined(tmp_path, events, name="clean", bad=False)
    assert examples == clean  # bad records change nothing else


def test_metrics_lag_and_prometheus(tmp_path, events):
    from prometheus_client import CollectorRegistry

    with open_log(path=tmp_path / "log") as log:
        n = write_stream(log, events)
        with Joiner(log, JoinerConfig(state_dir=tmp_path / "state", read_batch=500, **JOIN)) as j:
            assert j.metrics().lag_records == n
            j.step()
            assert 0 < j.metrics().lag_records < n
            j.run(until_idle=True)
            m = j.metrics()
            assert m.lag_records == 0 and m.events_in == n
            assert m.open_impressions > 0 and m.event_time > m.watermark == m.event_time - JOIN["allowed_lateness_s"]
            assert m.examples_out == len(read_examples(log))
            reg = CollectorRegistry()
            reg.register(prometheus_collector(j.metrics))
            assert reg.get_sample_value("freshrec_joiner_events_in_total") == n
            assert reg.get_sample_value("freshrec_joiner_open_impressions") == m.open_impressions
            assert reg.get_sample_value("freshrec_joiner_join_rate") == pytest.approx(m.join_rate)


def test_restart_resumes_where_the_checkpoint_left_off(tmp_path, events):
    _, _, want, want_dead = joined(tmp_path, events, name="ref", negative_rate=0.5)
    path = tmp_path / "restarted"
    with open_log(path=path / "log") as log:
        write_stream(log, events)
        cfg = JoinerConfig(state_dir=path / "state", negative_rate=0.5, read_batch=700,
                           checkpoint_every_records=2000, memory_max_impressions=300, **JOIN)  # fmt: skip
        for steps in (1, 5, 3, 11):
            with Joiner(log, cfg) as j:
                for _ in range(steps):
                    j.step()
        with Joiner(log, cfg) as j:
            m = j.run(until_idle=True, drain=True)
            assert j.state is JoinerState.DRAINED
        assert read_examples(log) == want
        assert read_dead(log) == want_dead
        assert m.examples_suppressed == 0  # clean closes checkpoint: nothing to suppress


def test_a_checkpoint_needs_the_log_that_holds_its_open_impressions(tmp_path, events):
    """Snapshots refer to the open impressions' records in the input log: a log without them (or
    with something else there) is refused on restore, naming what is missing."""
    cfg = JoinerConfig(state_dir=tmp_path / "state", read_batch=500, **JOIN)
    with open_log(path=tmp_path / "log") as log:
        write_stream(log, events)
        with Joiner(log, cfg) as j:
            j.step()
            j.step()
            assert j.metrics().open_impressions > 0
    with open_log(path=tmp_path / "empty") as log:
        log.create_topic("impressions", 3)
        log.create_topic("actions", 2)
        with pytest.raises(StateError, match="that the log no longer holds; it must keep records"):
            Joiner(log, cfg)
    with open_log(path=tmp_path / "other") as log:  # actions where the impressions were
        log.create_topic("impressions", 3)
        log.create_topic("actions", 2)
        acts = encode([e for e in events if isinstance(e, Action)])
        for p in range(3):
            log.append("impressions", acts * 10, partition=p)
        with pytest.raises(StateError, match="is not the impression the checkpoint refers to: the log under"):
            Joiner(log, cfg)
    with open_log(path=tmp_path / "similar") as log:  # other impressions at the same offsets
        write_stream(log, [msgspec.structs.replace(e, position=e.position + 1) if isinstance(e, Impression) else e
                           for e in events])  # fmt: skip
        with pytest.raises(StateError, match="is not the impression the checkpoint refers to"):
            Joiner(log, cfg)


def test_settings_that_bind_a_checkpoint_cannot_change(tmp_path):
    with open_log(path=tmp_path / "log") as log:
        write_stream(log, [], bad=False)
        Joiner(log, JoinerConfig(state_dir=tmp_path / "s")).close()
        with pytest.raises(StateError, match=r"window_s: 1800.0 -> 60.0; negative_rate: 1.0 -> 0.5"):
            Joiner(log, JoinerConfig(state_dir=tmp_path / "s", window_s=60, negative_rate=0.5))
        Joiner(log, JoinerConfig(state_dir=tmp_path / "s", read_batch=5, memory_max_impressions=0)).close()


def test_one_joiner_per_state_dir_and_lifecycle(tmp_path):
    with open_log(path=tmp_path / "log") as log:
        write_stream(log, [], bad=False)
        cfg = JoinerConfig(state_dir=tmp_path / "s")
        j = Joiner(log, cfg)
        with pytest.raises(StateError, match="in use by another joiner"):
            Joiner(log, cfg)
        j.drain()
        with pytest.raises(StateError, match="cannot step: the joiner is drained"):
            j.step()
        j.close()
        j.close()  # idempotent
        with pytest.raises(StateError, match="cannot checkpoint: the joiner is closed"):
            j.checkpoint()
        with Joiner(log, cfg) as again:  # a drained joiner stays drained
            assert again.state is JoinerState.DRAINED


def test_a_failed_step_fails_the_joiner_and_a_new_one_resumes(tmp_path, events):
    _, _, want, _ = joined(tmp_path, events, name="ref")
    log = open_log(path=tmp_path / "log")
    write_stream(log, events)
    cfg = JoinerConfig(state_dir=tmp_path / "s", read_batch=300, checkpoint_every_records=1000, **JOIN)
    j = Joiner(log, cfg)
    for _ in range(5):
        j.step()
    done = sum(j.offsets()["impressions"]) + sum(j.offsets()["actions"])
    assert 0 < done < len(events)
    log.close()  # the log goes away under the joiner
    with pytest.raises(StateError, match="the event log is closed"):
        j.step()
    assert j.state is JoinerState.FAILED
    with pytest.raises(StateError, match="cannot step: the joiner is failed"):
        j.step()
    j.close()  # no checkpoint of a failed joiner
    with open_log(path=tmp_path / "log") as log, Joiner(log, cfg) as again:
        again.run(until_idle=True, drain=True)
        assert read_examples(log) == want


def test_missing_input_topic_and_bad_config(tmp_path):
    with (
        open_log(path=tmp_path / "log") as log,
        pytest.raises(InputError, match="unknown topic 'impressions'"),
    ):
        Joiner(log, JoinerConfig(state_dir=tmp_path / "s"))
    with pytest.raises(ValueError, match="examples_topic 'impressions' is also an input topic"):
        JoinerConfig(examples_topic="impressions")
    with pytest.raises(ValueError, match="labels has a repeated action type"):
        JoinerConfig(labels=["click", "click"])


def test_parquet_files_hold_every_example_once(tmp_path, events):
    path, _, examples, _ = joined(
        tmp_path,
        events,
        negative_rate=0.2,
        checkpoint_every_records=1500,
        read_batch=400,
        parquet_dir=tmp_path / "pq",
    )
    files = sorted((tmp_path / "pq").glob("examples-*.parquet"))
    assert len(files) >= 3
    table = read_examples_parquet(tmp_path / "pq")
    cols = examples_to_columns(examples)
    assert table.column("example_id").to_pylist() == cols["example_id"].tolist()
    assert table.column("click").to_pylist() == cols["click"].tolist()
    assert table.column("sample_weight").to_pylist() == cols["sample_weight"].tolist()
    assert table.column("seller_id").to_pylist() == cols["seller_id"]
    # a fresh state_dir must not silently mix its files with another run's
    with open_log(path=path / "log") as log, pytest.raises(StateError, match="holds example files"):
        Joiner(log, JoinerConfig(state_dir=tmp_path / "other", parquet_dir=tmp_path / "pq", **JOIN))
    assert not (tmp_path / "other").exists()


def test_a_second_joiner_on_a_written_examples_topic_is_refused(tmp_path, events):
    """A second pipeline on the same cluster and topics (another run_dir) re-joined everything and
    wrote every example again; so would a run whose joiner state was lost."""
    path, _, examples, _ = joined(tmp_path, events, negative_rate=0.2)
    assert examples
    with (
        open_log(path=path / "log") as log,
        pytest.raises(StateError, match=r"examples topic 'examples' has received"),
    ):
        Joiner(log, JoinerConfig(state_dir=tmp_path / "other", **JOIN))
    assert not (tmp_path / "other").exists()  # refused before its state store was made: nothing left behind
    with open_log(path=path / "log") as log:  # another examples topic is a fresh start
        Joiner(log, JoinerConfig(state_dir=tmp_path / "other2", examples_topic="examples-2", **JOIN)).close()


def test_two_joiners_started_together_on_empty_topics_one_is_refused(tmp_path):
    """Both found the examples topic empty and both went on: every example written twice.
    The first claim on the owner topic wins; the other is refused before it writes anything,
    naming the owner, and leaves no state behind."""
    with open_log(path=tmp_path / "log") as log:
        write_stream(log, [], bad=False)
        first = Joiner(log, JoinerConfig(state_dir=tmp_path / "a"))
        with pytest.raises(StateError, match=r"belong to another pipeline: run [0-9a-f]{32} \(host .*state_dir .*a,"):
            Joiner(log, JoinerConfig(state_dir=tmp_path / "b"))
        assert not (tmp_path / "b").exists()
        first.close()
        with Joiner(log, JoinerConfig(state_dir=tmp_path / "a")) as again:  # a restart knows its own claim
            assert again.run_id == first.run_id
        # the race itself: B appends its claim between A's look at the empty topic and A's append
        real = log.append

        def sneak_in(topic, values, *args, **kw):
            if topic == owner_topic("ex2") and log.end_offset(topic, 0) == 0:
                rival = Claim(run_id="b" * 32, host="h", pid=1, claimed_at=0.0, state_dir="/b")
                real(topic, [msgspec.json.encode(rival)])
            return real(topic, values, *args, **kw)

        log.append = sneak_in
        with pytest.raises(StateError, match=f"run {'b' * 32}"):
            Joiner(log, JoinerConfig(state_dir=tmp_path / "c", examples_topic="ex2"))
        assert not (tmp_path / "c").exists()


def test_a_state_dir_without_a_claim_claims_and_a_lost_run_id_is_refused(tmp_path, monkeypatch):
    """A state_dir written before claims existed claims at its next start; so does a run that
    crashed between writing its run id and appending its claim. A run whose owner.json is lost
    cannot prove the claim is its own: refused, naming the run id to restore."""
    import freshrec.joiner.joiner as joiner_module

    with open_log(path=tmp_path / "log") as log:
        write_stream(log, [], bad=False)
        with monkeypatch.context() as m:  # an older freshrec: no claim, no owner.json
            m.setattr(joiner_module, "claim_topics", lambda *a: "")
            Joiner(log, JoinerConfig(state_dir=tmp_path / "old")).close()
        assert not (tmp_path / "old" / "owner.json").exists()
        with Joiner(log, JoinerConfig(state_dir=tmp_path / "old")) as j:
            run_id = j.run_id
        (tmp_path / "old" / "owner.json").unlink()
        with pytest.raises(StateError, match=f"run {run_id}"):
            Joiner(log, JoinerConfig(state_dir=tmp_path / "old"))
        (tmp_path / "old" / "owner.json").write_text('{"run_id": "' + run_id + '"}')
        Joiner(log, JoinerConfig(state_dir=tmp_path / "old")).close()
        (tmp_path / "old" / "owner.json").write_text("{")
        with pytest.raises(CorruptionError, match=r"owner.json: unreadable run id"):
            Joiner(log, JoinerConfig(state_dir=tmp_path / "old"))
    with open_log(path=tmp_path / "log2") as log:  # crashed after writing its run id
        write_stream(log, [], bad=False)
        (tmp_path / "s").mkdir()
        (tmp_path / "s" / "owner.json").write_text('{"run_id": "' + "c" * 32 + '"}')
        with Joiner(log, JoinerConfig(state_dir=tmp_path / "s")) as j:
            assert j.run_id == "c" * 32


def test_an_examples_record_time_is_when_its_cause_reached_the_log(tmp_path):
    """Sync measures freshness from the examples' record times: a positive carries its action's
    arrival, a negative the arrival of the event that closed its window."""
    from freshrec.joiner import decode_examples
    from freshrec.stream import Action, encode

    log = open_log(path=tmp_path / "log")
    for t in ("impressions", "actions"):
        log.create_topic(t, 1)
    imp = [Impression(event_id=i, request_id=i, event_time=float(i), user_id=1, item_id=i, position=0)
           for i in range(2)]  # fmt: skip
    log.append("impressions", encode(imp), timestamps_ms=[1_000, 2_000])
    log.append("actions", encode([Action(event_id=10, request_id=0, event_time=5.0, user_id=1, item_id=0,
                                         type="click")]), timestamps_ms=[7_000])  # fmt: skip
    late = Impression(event_id=20, request_id=20, event_time=100.0, user_id=1, item_id=9, position=0)
    log.append("impressions", encode([late]), timestamps_ms=[9_000])  # past both windows, < max_future_s ahead
    cfg = JoinerConfig(state_dir=tmp_path / "state", window_s=60, allowed_lateness_s=0, labels=["click"])
    with Joiner(log, cfg) as j:
        j.run(until_idle=True)
    recs = log.read("examples", 0, 0)
    by_id = {
        ex.example_id: r.timestamp_ms for ex, r in zip(decode_examples([r.value for r in recs]), recs, strict=True)
    }
    assert by_id == {0: 7_000, 1: 9_000}
    log.close()


def test_an_event_dated_in_the_future_is_dead_lettered_rather_than_making_every_later_one_late(tmp_path):
    """The join's clock is the newest event time seen and never goes back (it is checkpointed): one
    event dated years ahead (a producer's clock, a wrong year; the schema takes times up to 1e11)
    made every event after it late, for good, and ItemLifecycle events, otherwise skipped, did it
    too. An event more than max_future_s after its record reached the log is dead-lettered."""
    now = time.time()
    cfg = JoinerConfig(state_dir=tmp_path / "state", labels=["click"], window_s=60.0, allowed_lateness_s=5.0)
    assert cfg.max_future_s == 300.0
    with open_log(path=tmp_path / "log") as log:
        for topic in ("impressions", "actions"):
            log.create_topic(topic, 1)
        with Joiner(log, cfg) as j:
            log.append("impressions", encode([imp(0, now - 100.0, req=0)]))
            log.append("actions", encode([act(1, now - 99.0, req=0)]))
            j.run(until_idle=True)
            log.append("impressions", encode([imp(2, now + 4e8, req=2),  # 2039
                                              ItemLifecycle(event_id=3, event_time=now + 4e8, item_id=1,
                                                            status="listed")]))  # fmt: skip
            log.append("actions", encode([act(4, now + 3600.0, req=0)]))
            j.run(until_idle=True)
            log.append("impressions", encode([imp(5, now - 50.0, req=5), imp(6, now + 200.0, req=6)]))
            log.append("actions", encode([act(7, now - 49.0, req=5)]))
            j.run(until_idle=True)
            m = j.metrics()
        assert (m.late_impressions, m.late_actions, m.positives_out) == (0, 0, 2)  # the later events still join
        assert m.event_time == now + 200.0  # within max_future_s: a clock a little ahead is fine
        assert m.bad_records == m.dead_letters == 3
        dead = read_dead(log)
        assert [(d.topic, d.offset, d.field) for d in dead] == [
            ("impressions", 1, "event_time"), ("impressions", 2, "event_time"), ("actions", 1, "event_time")
        ]  # fmt: skip
        assert dead[0].reason.startswith(f"impression.event_time: {now + 4e8!r} is ")
        assert "after its record reached the log" in dead[0].reason and "max_future_s = 300" in dead[0].reason
        assert dead[1].reason.startswith("item.event_time") and dead[2].reason.startswith("action.event_time")


def test_a_claim_whose_append_failed_late_stays_this_runs(tmp_path, monkeypatch):
    """An append that timed out may still have landed (librdkafka keeps the record queued):
    the refusal deleted owner.json, and every later start of the same state_dir was refused as
    another pipeline's. The run id stays; the next start finds its own claim. A refused fresh
    start leaves none of the folders it made; two starts on one fresh state_dir share one id."""
    import freshrec.joiner.owner as owner

    with open_log(path=tmp_path / "log") as log:
        write_stream(log, [], bad=False)
        real = log.append

        def lands_then_fails(topic, values, *args, **kw):
            real(topic, values, *args, **kw)
            raise BackendError("append to topic 'examples.owner': 1 records not acknowledged within timeout_s")

        log.append = lands_then_fails
        with pytest.raises(BackendError):
            Joiner(log, JoinerConfig(state_dir=tmp_path / "a"))
        log.append = real
        assert (tmp_path / "a" / "owner.json").exists()
        Joiner(log, JoinerConfig(state_dir=tmp_path / "a")).close()  # its own claim
        with pytest.raises(StateError, match="belong to another pipeline"):
            Joiner(log, JoinerConfig(state_dir=tmp_path / "x" / "y" / "b"))
        assert not (tmp_path / "x").exists()
        # another process writes the run id between this one's look and its write: this one takes it
        early = tmp_path / "c"
        real_write = owner.write_durable

        def other_first(path, data):
            if not (early / "owner.json").exists():
                (early / "owner.json").write_text('{"run_id": "' + "d" * 32 + '"}')
            real_write(path, data)

        monkeypatch.setattr(owner, "write_durable", other_first)
        assert owner._run_id(early) == ("d" * 32, False)
        assert [p.name for p in early.iterdir()] == ["owner.json"]  # its temp file is gone


def test_outputs_larger_than_a_record_may_be_are_cut_not_a_reason_to_stop(tmp_path):
    """An impression just under Kafka's record limit makes an example (or a dead letter, record
    plus reason) over it: the append failed, the joiner stopped, and met it again at every
    restart. Examples over max_output_bytes are left out (counted); dead letters keep their
    record's head; both the same on every backend."""
    big = [f"item-{i:06d}" for i in range(600)]  # ~7 KB of history
    imps = [
        Impression(event_id=f"e{i}", request_id=f"r{i}", event_time=100.0 + i, user_id=1, item_id=i, position=0,
                   user_features={"history": big if i == 3 else ["a"]})
        for i in range(6)
    ]  # fmt: skip
    acts = [Action(event_id=f"c{i}", request_id=f"r{i}", event_time=101.0 + i, user_id=1, item_id=i, type="click")
            for i in range(6)]  # fmt: skip
    with open_log(path=tmp_path / "log") as log:
        log.create_topic("impressions", 1)
        log.create_topic("actions", 1)
        log.append("impressions", encode(imps))
        log.append("actions", encode(acts))
        log.append("impressions", [b"\x00" * 9000])  # malformed: a dead letter holding 9 KB of record
        with Joiner(log, JoinerConfig(state_dir=tmp_path / "s", max_output_bytes=4096, labels=["click"],
                                      window_s=60.0)) as j:  # fmt: skip
            m = j.run(until_idle=True, drain=True)
        got = read_examples(log)
        assert sorted(e.example_id for e in got) == ["e0", "e1", "e2", "e4", "e5"]
        assert m.examples_too_large == 1
        raw = read_topic(log, "dead-letters")
        assert len(raw) == 1 and len(raw[0]) <= 4096
        (dead,) = read_dead(log)
        assert dead.record == b"\x00" * len(dead.record) and "record cut to its first" in dead.reason


def test_a_dead_letter_whose_field_and_reason_alone_are_too_large_still_fits(tmp_path):
    """An event with a huge unknown field name puts the name in the dead letter's field and twice
    in its reason: cutting the record alone left the dead letter over the limit (and Kafka would
    refuse it at every restart). Field and reason are cut too."""
    from freshrec.joiner.joiner import _fit

    for name_len, record_len in ((100, 1_000), (3_000, 200), (20_000, 50_000), (300_000, 10)):
        name = "é" * name_len
        letter = DeadLetter(topic="impressions", partition=0, offset=7, field=name,
                            reason=f"impression.{name}: unknown field {name!r}", record=b"x" * record_len)  # fmt: skip
        blob = encode_dead_letters([letter])[0]
        out = _fit(blob, letter, 4096)
        assert len(out) <= 4096, (name_len, record_len, len(out))
        back = decode_dead_letters([out])[0]
        assert back.origin == letter.origin and ("cut" in back.reason or out == blob)


def test_a_state_dir_on_a_filesystem_without_hard_links_still_gets_its_run_id(tmp_path, monkeypatch):
    """owner.json is linked into place (exclusive and never half-written); where the filesystem
    has no hard links (some network and FUSE mounts) every start failed with a raw OSError."""
    import freshrec.joiner.owner as owner

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted", str(src))

    monkeypatch.setattr(owner.os, "link", no_links)
    with open_log(path=tmp_path / "log") as log:
        write_stream(log, [], bad=False)
        with Joiner(log, JoinerConfig(state_dir=tmp_path / "s")) as j:
            run_id = j.run_id
        assert json.loads((tmp_path / "s" / "owner.json").read_text()) == {"run_id": run_id}
        assert not list((tmp_path / "s").glob(".owner.json.tmp-*"))
        Joiner(log, JoinerConfig(state_dir=tmp_path / "s")).close()  # and recognises its claim
