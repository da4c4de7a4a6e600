"""The event log: one suite run against both backends (embedded SQLite, Kafka on a real Tansu
broker), checked against a plain list-per-partition reference; then the embedded log's crash
safety and cross-process behaviour, and the configs."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import xxhash

from freshrec.errors import BackendError, ConfigError, CorruptionError, InputError, StateError, TooLargeError
from freshrec.stream import EmbeddedLog, EventLog, LogConfig, LogRecord, LogState, open_log, partition_for
from freshrec.stream.log import PARTITION_SEED

from ..conftest import ROOT, frozen

APPENDER = Path(__file__).with_name("_appender.py")
BACKENDS = ["embedded", "kafka"]


def new_topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"  # the Kafka broker is shared by the whole session


@pytest.fixture(params=BACKENDS)
def log(request, tmp_path):
    if request.param == "embedded":
        # small chunks, so reads and appends cross chunk boundaries all the time
        lg = open_log(path=tmp_path / "log", chunk_records=37, chunk_bytes=2048)
    else:
        # short idle fetches: a read that seeks waits for the consumer's in-flight fetch
        lg = open_log(request.getfixturevalue("kafka_broker").log_config(consumer_settings={"fetch.wait.max.ms": 10}))
    yield lg
    lg.close()


def read_all(lg: EventLog, topic: str, partition: int, offset: int = 0) -> list[LogRecord]:
    out: list[LogRecord] = []
    while True:
        got = lg.read(topic, partition, offset + len(out), max_records=1000)
        if not got:
            return out
        out.extend(got)


def run_child(*args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, str(APPENDER), *map(str, args)], stdout=subprocess.PIPE, text=True, env=env
    )


# ---- both backends ---------------------------------------------------------------------------


def test_append_read_round_trip(log):
    t = new_topic()
    log.create_topic(t)
    values = [b"", b"a", bytes(range(256)), b"x" * 5000]
    log.append(t, values, [None, b"k1", b"", b"k3"], partition=0, timestamps_ms=[1, 2, 2**40, 7])
    log.append(t, [b"tail"])
    got = log.read(t, 0, 0)
    assert got == [
        LogRecord(t, 0, 0, None, b"", 1),
        LogRecord(t, 0, 1, b"k1", b"a", 2),
        LogRecord(t, 0, 2, b"", bytes(range(256)), 2**40),
        LogRecord(t, 0, 3, b"k3", b"x" * 5000, 7),
        LogRecord(t, 0, 4, None, b"tail", got[4].timestamp_ms),
    ]
    assert abs(got[4].timestamp_ms - time.time() * 1000) < 60_000  # default: the wall clock
    assert log.end_offset(t, 0) == 5


def test_partition_for_is_seeded_xxh64_and_pinned():
    for key in (b"", b"user-1", b"\x00" * 40):
        for n in (1, 2, 7, 64):
            assert partition_for(key, n) == xxhash.xxh64_intdigest(key, PARTITION_SEED) % n
    # Pinned: changing the seed or hash would move every key to another partition.
    assert [partition_for(b"user-%d" % i, 8) for i in range(8)] == PINNED_PARTITIONS


PINNED_PARTITIONS = [3, 5, 4, 3, 3, 1, 3, 7]


def test_keyed_records_go_to_partition_for_their_key(log):
    t = new_topic()
    log.create_topic(t, partitions=4)
    keys = [b"user-%d" % (i % 50) for i in range(400)]
    log.append(t, [b"%d" % i for i in range(400)], keys)
    log.append(t, [b"nokey-%d" % i for i in range(5)])  # no key: partition 0
    seen = {}
    for p in range(4):
        for r in read_all(log, t, p):
            seen[r.value] = (p, r.key)
    for i, k in enumerate(keys):
        assert seen[b"%d" % i] == (partition_for(k, 4), k)
    assert all(seen[b"nokey-%d" % i] == (0, None) for i in range(5))
    # append order is kept inside each partition
    for p in range(4):
        nums = [int(r.value) for r in read_all(log, t, p) if not r.value.startswith(b"nokey")]
        assert nums == sorted(nums)


def test_random_appends_and_reads_match_a_reference(log):
    """Random batches (keyed, unkeyed, explicit partitions) and random reads, against a plain list
    per partition; offsets must be 0, 1, 2, ... with no gap."""
    rng = random.Random(7)
    t = new_topic()
    log.create_topic(t, partitions=3)
    ref: dict[int, list[tuple[bytes | None, bytes, int]]] = defaultdict(list)
    seq = 0
    for _ in range(25):
        n = rng.choice([1, 2, 36, 37, 38, 120])
        values = [rng.randbytes(rng.choice([0, 5, 90])) + b"#%d" % (seq + i) for i in range(n)]
        ts = [rng.randrange(1, 2**41) for _ in range(n)]
        mode = rng.choice(["keyed", "unkeyed", "explicit"])
        if mode == "keyed":
            keys = [None if rng.random() < 0.2 else b"k%d" % rng.randrange(30) for _ in range(n)]
            log.append(t, values, keys, timestamps_ms=ts)
            parts = [0 if k is None else partition_for(k, 3) for k in keys]
        elif mode == "unkeyed":
            keys = [None] * n
            log.append(t, values, timestamps_ms=ts)
            parts = [0] * n
        else:
            keys = [b"x"] * n
            p = rng.randrange(3)
            log.append(t, values, keys, partition=p, timestamps_ms=ts)
            parts = [p] * n
        for k, v, s, p in zip(keys, values, ts, parts, strict=True):
            ref[p].append((k, v, s))
        seq += n
        for _ in range(3):
            p = rng.randrange(3)
            offset = rng.randrange(len(ref[p]) + 2)
            m = rng.choice([1, 5, 37, 10_000])
            got = log.read(t, p, offset, max_records=m)
            want = [LogRecord(t, p, o, *ref[p][o]) for o in range(offset, min(len(ref[p]), offset + m))]
            assert got == want
    for p in range(3):
        assert log.end_offset(t, p) == len(ref[p])
        assert [r.offset for r in read_all(log, t, p)] == list(range(len(ref[p])))


def test_read_from_the_middle_with_max_records(log):
    t = new_topic()
    log.create_topic(t)
    log.append(t, [b"%d" % i for i in range(300)])
    assert [r.offset for r in log.read(t, 0, 120, max_records=7)] == list(range(120, 127))
    assert [r.value for r in log.read(t, 0, 298, max_records=50)] == [b"298", b"299"]
    assert [r.offset for r in log.read(t, 0, 0, max_records=1)] == [0]
    assert log.read(t, 0, 300) == []
    assert log.read(t, 0, 10_000) == []


def test_read_waits_for_a_late_append(log):
    t = new_topic()
    log.create_topic(t)
    log.append(t, [b"first"])
    t0 = time.monotonic()
    assert log.read(t, 0, 1, timeout_s=0.3) == []
    assert time.monotonic() - t0 >= 0.29
    timer = threading.Timer(0.3, lambda: log.append(t, [b"late", b"later"]))
    t0 = time.monotonic()  # before the timer starts: the append cannot come sooner than 0.3 s after
    timer.start()
    got = log.read(t, 0, 1, timeout_s=10)
    waited = time.monotonic() - t0
    timer.join()
    assert [r.value for r in got] in ([b"late", b"later"], [b"late"])
    assert 0.29 <= waited < 5
    t0 = time.monotonic()
    assert [r.value for r in log.read(t, 0, 0, timeout_s=10)] == [b"first", b"late", b"later"]
    assert time.monotonic() - t0 < 5  # records that exist come back without waiting for new ones


def test_commit_and_committed_per_group(log):
    t, other = new_topic(), new_topic()
    log.create_topic(t, partitions=3)
    log.create_topic(other)
    log.append(t, [b"v"] * 10, partition=1)
    assert log.committed("g1", t) == {}
    log.commit("g1", t, {0: 0, 1: 7})
    log.commit("g2", t, {2: 3})
    assert log.committed("g1", t) == {0: 0, 1: 7}
    assert log.committed("g2", t) == {2: 3}
    log.commit("g1", t, {1: 10})  # moves only what it names
    assert log.committed("g1", t) == {0: 0, 1: 10}
    assert log.committed("g1", other) == {}
    log.commit("g1", t, {})
    assert log.committed("g1", t) == {0: 0, 1: 10}


def test_topics_and_partitions(log):
    t = new_topic()
    log.create_topic(t, partitions=5)
    log.create_topic(t, partitions=5)  # idempotent
    with pytest.raises(InputError, match="exists with 5 partitions, not 2"):
        log.create_topic(t, partitions=2)
    assert log.partitions(t) == 5
    for p in range(5):
        log.append(t, [b"x"] * (p + 1), partition=p)
    assert [log.end_offset(t, p) for p in range(5)] == [1, 2, 3, 4, 5]
    assert [len(read_all(log, t, p)) for p in range(5)] == [1, 2, 3, 4, 5]


def test_ensure_topic_creates_once_and_keeps_an_existing_count(log, monkeypatch):
    t = new_topic()
    assert log.ensure_topic(t, 3) == (3, True)
    assert log.ensure_topic(t, 1) == (3, False)  # exists: keeps its count
    assert log.partitions(t) == 3
    with pytest.raises(InputError, match="not a valid name"):
        log.ensure_topic("a b")
    # another process creates it between the check and the creation, with another count
    raced = new_topic()
    create = type(log).create_topic

    def late(self, topic, partitions=1, **kw):
        create(self, topic, 2)  # the other process wins
        create(self, topic, partitions, **kw)  # ours: exists with 2, not 4

    monkeypatch.setattr(type(log), "create_topic", late)
    assert log.ensure_topic(raced, 4) == (2, False)


def _bad_calls(t: str) -> list[tuple[str, object, str]]:
    """(description, call, the words the error must contain)."""
    return [
        ("unknown topic: append", lambda lg: lg.append("nope-topic", [b"x"]), "unknown topic 'nope-topic'"),
        ("unknown topic: read", lambda lg: lg.read("nope-topic", 0, 0), "unknown topic 'nope-topic'"),
        ("unknown topic: partitions", lambda lg: lg.partitions("nope-topic"), "unknown topic"),
        ("unknown topic: end", lambda lg: lg.end_offset("nope-topic", 0), "unknown topic"),
        ("unknown topic: commit", lambda lg: lg.commit("g", "nope-topic", {0: 1}), "unknown topic"),
        ("unknown topic: committed", lambda lg: lg.committed("g", "nope-topic"), "unknown topic"),
        ("bad topic name", lambda lg: lg.create_topic("a b"), "not a valid name"),
        ("topic not str", lambda lg: lg.append(5, [b"x"]), "topic must be a str"),
        ("zero partitions", lambda lg: lg.create_topic(t + "z", 0), "partitions must be in"),
        ("negative offset", lambda lg: lg.read(t, 0, -1), "offset must be >= 0"),
        ("float offset", lambda lg: lg.read(t, 0, 1.5), "offset must be an int"),
        ("read partition out of range", lambda lg: lg.read(t, 2, 0), "partition 2 is out of range"),
        ("append partition out of range", lambda lg: lg.append(t, [b"x"], partition=-1), "partition -1"),
        ("end partition out of range", lambda lg: lg.end_offset(t, 9), "partition 9 is out of range"),
        ("commit partition out of range", lambda lg: lg.commit("g", t, {5: 1}), "partition 5"),
        ("commit negative offset", lambda lg: lg.commit("g", t, {0: -3}), "offsets[0] must be >= 0"),
        ("commit not a mapping", lambda lg: lg.commit("g", t, [(0, 1)]), "offsets must be a mapping"),
        ("empty group", lambda lg: lg.commit("", t, {0: 1}), "group must be a non-empty str"),
        ("str value", lambda lg: lg.append(t, [b"ok", "text"]), "values[1] must be bytes, got str"),
        ("int value", lambda lg: lg.append(t, [3]), "values[0] must be bytes, got int"),
        ("one bytes, not a list", lambda lg: lg.append(t, b"abc"), "wrap a single record in a list"),
        ("None value", lambda lg: lg.append(t, [None]), "values[0] must be bytes"),
        ("str key", lambda lg: lg.append(t, [b"a"], ["k"]), "keys[0] must be bytes, got str"),
        ("keys length", lambda lg: lg.append(t, [b"a", b"b"], [b"k"]), "keys has 1 entries, values has 2"),
        ("timestamps length", lambda lg: lg.append(t, [b"a"], timestamps_ms=[1, 2]), "one int per value"),
        ("float timestamps", lambda lg: lg.append(t, [b"a"], timestamps_ms=[1.5]), "must be ints"),
        ("negative timestamp", lambda lg: lg.append(t, [b"a"], timestamps_ms=[0]), "must be >= 1"),
        ("max_records 0", lambda lg: lg.read(t, 0, 0, max_records=0), "max_records must be >= 1"),
        ("negative timeout", lambda lg: lg.read(t, 0, 0, timeout_s=-1), "timeout_s must be finite and >= 0"),
        ("nan timeout", lambda lg: lg.read(t, 0, 0, timeout_s=float("nan")), "timeout_s must be finite"),
    ]


def test_bad_input_gives_clear_errors_and_writes_nothing(log):
    t = new_topic()
    log.create_topic(t, partitions=2)
    log.append(t, [b"before"])
    for what, call, words in _bad_calls(t):
        with pytest.raises(InputError) as err:
            call(log)
        assert words in str(err.value), f"{what}: {err.value}"
    assert [log.end_offset(t, p) for p in range(2)] == [1, 0]
    assert log.committed("g", t) == {}


def test_close_semantics(log):
    t = new_topic()
    log.create_topic(t)
    errors: list[BaseException] = []

    def waiting_read() -> None:
        try:
            log.read(t, 0, 0, timeout_s=30)
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=waiting_read)
    reader.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    log.close()
    reader.join(10)
    assert not reader.is_alive() and time.monotonic() - t0 < 5  # close woke the waiting read
    assert len(errors) == 1 and isinstance(errors[0], StateError)
    assert log.state is LogState.CLOSED
    log.close()  # idempotent
    for call in (
        lambda: log.append(t, [b"x"]),
        lambda: log.read(t, 0, 0),
        lambda: log.end_offset(t, 0),
        lambda: log.create_topic(t),
        lambda: log.partitions(t),
        lambda: log.commit("g", t, {0: 0}),
        lambda: log.committed("g", t),
    ):
        with pytest.raises(StateError, match="the event log is closed"):
            call()


def test_concurrent_appenders_lose_nothing(log):
    t = new_topic()
    log.create_topic(t, partitions=2)
    threads, batches, size = 4, 15, 40

    def appender(w: int) -> None:
        for b in range(batches):
            log.append(t, [b"%d:%d:%d" % (w, b, i) for i in range(size)], [b"w%d-%d" % (w, i) for i in range(size)])

    workers = [threading.Thread(target=appender, args=(w,)) for w in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seen = []
    for p in range(2):
        recs = read_all(log, t, p)
        assert [r.offset for r in recs] == list(range(len(recs)))
        seen += [tuple(map(int, r.value.split(b":"))) for r in recs]
        per_key = defaultdict(list)  # one writer's records with one key: in append order
        for r in recs:
            w, b, i = map(int, r.value.split(b":"))
            per_key[w, i].append(b)
        assert all(v == sorted(v) for v in per_key.values())
    assert sorted(seen) == [(w, b, i) for w in range(threads) for b in range(batches) for i in range(size)]


def test_context_manager_closes(tmp_path, kafka_broker):
    for cfg in (LogConfig(path=tmp_path / "log"), kafka_broker.log_config()):
        with open_log(cfg) as lg:
            assert lg.state is LogState.OPEN
        assert lg.state is LogState.CLOSED


def test_both_backends_lay_out_a_batch_identically(tmp_path, kafka_broker):
    keys = [None if i % 11 == 0 else b"user-%d" % (i % 37) for i in range(300)]
    values = [b"%d" % i for i in range(300)]
    layouts = []
    for cfg in (LogConfig(path=tmp_path / "log"), kafka_broker.log_config()):
        with open_log(cfg) as lg:
            t = new_topic()
            lg.create_topic(t, partitions=5)
            lg.append(t, values[:100], keys[:100])
            lg.append(t, values[100:], keys[100:])
            layouts.append([[(r.offset, r.key, r.value) for r in read_all(lg, t, p)] for p in range(5)])
    assert layouts[0] == layouts[1]
    assert all(layouts[0])  # every partition got records


# ---- embedded only: durability, crash safety, several processes -------------------------------


def _whole_batches(lg: EventLog, topic: str, size: int) -> int:
    """Check that the log holds batches 0..B-1 each whole (``size`` records across partitions,
    the ``crash`` appender's format) and nothing else; return B."""
    found = defaultdict(set)
    for p in range(lg.partitions(topic)):
        recs = read_all(lg, topic, p)
        assert [r.offset for r in recs] == list(range(len(recs)))
        for r in recs:
            i, j, _ = r.value.split(b":")
            found[int(i)].add(int(j))
    assert sorted(found) == list(range(len(found))), "a batch is missing"
    for i, js in found.items():
        assert js == set(range(size)), f"batch {i} is partial: {len(js)} of {size} records"
    return len(found)


def test_sigkill_mid_append_leaves_every_committed_batch_whole(tmp_path):
    path, t, size = tmp_path / "log", "events", 3000
    with open_log(path=path) as lg:
        lg.create_topic(t, partitions=3)  # each batch spans the 3 partitions: one transaction
    rng = random.Random(1)
    rounds = mid_append = 0
    while rounds < 3 or (not mid_append and rounds < 12):  # kill, reopen, check; the next child
        rounds += 1  # resumes where the log ends
        child = run_child("crash", path, t, size)
        lines = []
        while sum(line.startswith("done") for line in lines) < 3:
            line = child.stdout.readline()
            assert line, "the appender died"
            lines.append(line)
        time.sleep(rng.uniform(0.0, 0.03))
        child.send_signal(signal.SIGKILL)
        child.wait()
        lines += child.stdout.read().splitlines()
        mid_append += lines[-1].startswith("begin")  # killed after "begin", before "done"
        acknowledged = max(int(line.split()[1]) for line in lines if line.startswith("done"))
        with open_log(path=path) as lg:
            whole = _whole_batches(lg, t, size)
        assert acknowledged + 1 <= whole <= acknowledged + 2  # every acknowledged batch is there
    assert mid_append, "no kill landed inside an append"


def test_torn_wal_tail_is_dropped_on_reopen(tmp_path):
    path, t = tmp_path / "log", "events"
    with open_log(path=path) as lg:
        lg.create_topic(t)
    child = run_child("wal", path, t, 4)
    out, _ = child.communicate(timeout=60)
    sizes = [int(x) for x in out.split()]  # WAL bytes after each of the 4 appends
    assert len(sizes) == 4 and sizes == sorted(sizes)
    wal = path / "log.sqlite-wal"
    pristine = {f.name: f.read_bytes() for f in path.iterdir() if f.name != "log.sqlite-shm"}

    def reopen_after(cut: int) -> list[int]:
        for name, data in pristine.items():
            (path / name).write_bytes(data)
        (path / "log.sqlite-shm").unlink(missing_ok=True)
        with open(wal, "r+b") as f:
            f.truncate(cut)
        with open_log(path=path) as lg:
            recs = read_all(lg, t, 0)
        batches = defaultdict(int)
        for r in recs:
            batches[int(r.value.split(b":")[0])] += 1
        assert all(batches[i] == 100 + 37 * i for i in batches), "a batch came back partial"
        return sorted(batches)

    assert reopen_after(sizes[3]) == [0, 1, 2, 3]  # the intact WAL
    assert reopen_after(sizes[3] - 1) == [0, 1, 2]  # one byte torn off the last commit
    assert reopen_after((sizes[2] + sizes[3]) // 2) == [0, 1, 2]  # the last batch half written
    assert reopen_after(sizes[1] + 100) == [0, 1]
    assert reopen_after(sizes[0] - 1) == []


def test_two_processes_see_every_record_exactly_once(tmp_path):
    path, t, total = tmp_path / "log", "events", 20_000
    with open_log(path=path) as lg:
        lg.create_topic(t, partitions=2)
        child = run_child("stream", path, t, total, 3)
        got: dict[int, list[int]] = {0: [], 1: []}
        deadline = time.monotonic() + 60
        while sum(map(len, got.values())) < total and time.monotonic() < deadline:
            for p in (0, 1):
                recs = lg.read(t, p, len(got[p]), max_records=777, timeout_s=0.05)
                assert [r.offset for r in recs] == list(range(len(got[p]), len(got[p]) + len(recs)))
                got[p] += [int(r.value) for r in recs]
        assert child.wait(60) == 0
        for p in (0, 1):
            assert got[p] == sorted(got[p])  # the appender's order, per partition
            assert all(partition_for(b"key%d" % (v % 97), 2) == p for v in got[p])
        assert sorted(got[0] + got[1]) == list(range(total))
        assert [lg.read(t, p, len(got[p])) for p in (0, 1)] == [[], []]


def test_reopen_keeps_records_and_offsets(tmp_path):
    path = tmp_path / "log"
    with open_log(path=path) as lg:
        lg.create_topic("a", partitions=2)
        lg.append("a", [b"%d" % i for i in range(100)], [b"k%d" % i for i in range(100)])
        lg.commit("g", "a", {1: 4})
        before = [read_all(lg, "a", p) for p in range(2)]
    with open_log(path=path) as lg:
        assert [read_all(lg, "a", p) for p in range(2)] == before
        assert lg.committed("g", "a") == {1: 4}
        lg.append("a", [b"more"], partition=1)
        assert lg.end_offset("a", 1) == len(before[1]) + 1


def test_refuses_files_that_are_not_a_freshrec_log(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    con = sqlite3.connect(other / "log.sqlite")
    con.execute("CREATE TABLE x (y)")
    con.commit()
    con.close()
    with pytest.raises(InputError, match="not a freshrec event log"):
        open_log(path=other)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "log.sqlite").write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(CorruptionError, match="not a database"):
        open_log(path=junk)
    newer = tmp_path / "newer"
    open_log(path=newer).close()
    con = sqlite3.connect(newer / "log.sqlite")
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(StateError, match="format version 99"):
        open_log(path=newer)


def test_a_corrupted_chunk_is_detected_not_returned(tmp_path):
    path = tmp_path / "log"
    with open_log(path=path) as lg:
        lg.create_topic("a")
        lg.append("a", [b"%d" % i for i in range(50)])
    con = sqlite3.connect(path / "log.sqlite")
    (data,) = con.execute("SELECT data FROM chunks").fetchone()
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    con.execute("UPDATE chunks SET data = ?", (bytes(flipped),))
    con.commit()
    con.close()
    with (
        open_log(path=path) as lg,
        pytest.raises(CorruptionError, match=r"offsets 0\.\.49: chunk fails its checksum"),
    ):
        lg.read("a", 0, 10)


def test_embedded_layout_is_one_sqlite_file_in_wal_mode(tmp_path):
    with EmbeddedLog(LogConfig(path=tmp_path / "log")) as lg:
        lg.create_topic("a")
        lg.append("a", [b"x"] * 20_000)
        con = sqlite3.connect(lg.file)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT count(*) FROM chunks").fetchone()[0] < 10  # chunked, not per record
        con.close()


# ---- configuration and the local broker ------------------------------------------------------


def test_an_unreachable_kafka_cluster_is_named_in_the_error():
    """A wrong bootstrap_servers showed only as "Broker transport failure" (or, when creating a
    topic, a controller timeout) without the address."""
    pytest.importorskip("confluent_kafka")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open_log(LogConfig(backend="kafka", bootstrap_servers=f"127.0.0.1:{port}", timeout_s=1.0))
    try:
        with pytest.raises(BackendError, match=rf"cannot list topics \(Kafka at 127\.0\.0\.1:{port}\)"):
            log.partitions("impressions")
    finally:
        log.close()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="needs bootstrap_servers"):
        LogConfig.from_dict({"backend": "kafka"})
    with pytest.raises(ConfigError, match=r"kafka_settings: .*'acks' is set by freshrec"):
        LogConfig.from_dict({"backend": "kafka", "bootstrap_servers": "h:1", "kafka_settings": {"acks": "1"}})
    with pytest.raises(ConfigError, match="consumer_settings"):
        LogConfig.from_dict({"consumer_settings": {"group.id": "x"}})
    with pytest.raises(ConfigError, match="backend"):
        LogConfig.from_dict({"backend": "files"})
    with pytest.raises(ConfigError, match="partitions"):
        LogConfig.from_dict({"partitions": 3})  # unknown keys are refused
    cfg = LogConfig.from_dict(
        {
            "backend": "kafka",
            "bootstrap_servers": "b1:9092",
            "kafka_settings": {"security.protocol": "SASL_SSL"},
        }
    )
    assert cfg.kafka_settings == {"security.protocol": "SASL_SSL"}


def test_a_record_over_the_clusters_size_limit_is_too_large_not_a_backend_failure(kafka_broker):
    """A BackendError says "retry": the serving event writer retried such a record forever, and
    everything queued behind it waited."""
    with open_log(kafka_broker.log_config()) as log:
        t = new_topic()
        log.create_topic(t, 1)
        with pytest.raises(TooLargeError, match=r"larger than the cluster takes \(message\.max\.bytes"):
            log.append(t, [b"x" * 2_000_000])
        log.append(t, [b"fine"])
        assert [r.value for r in log.read(t, 0, 0)] == [b"fine"]


def test_bad_librdkafka_setting_is_a_config_error(kafka_broker):
    with pytest.raises(ConfigError, match=r"no\.such\.setting"):
        open_log(kafka_broker.log_config(kafka_settings={"no.such.setting": 1}))


def test_local_broker_starts_and_stops_only_itself(kafka_broker):
    from freshrec.stream import LocalBroker

    broker = LocalBroker()
    with pytest.raises(StateError, match="not running"):
        broker.bootstrap_servers  # noqa: B018
    with broker:
        assert broker.running and broker.bootstrap_servers != kafka_broker.bootstrap_servers
        pid = broker._proc.pid
        with open_log(broker.log_config()) as lg:
            lg.create_topic("x")
            lg.append("x", [b"1"])
            assert lg.end_offset("x", 0) == 1
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert kafka_broker.running  # the session's broker was left alone


def test_kafka_close_drops_what_a_frozen_broker_never_acknowledged_instead_of_waiting(own_kafka_broker):
    """With records the broker never acknowledged, close() flushed for timeout_s, then librdkafka
    held the producer's close until they expired (message.timeout.ms, 5 min by default): a
    replica took 316 s to stop. Now they are purged after the flush."""
    lg = open_log(own_kafka_broker.log_config(timeout_s=1.0, producer_settings={"message.timeout.ms": 20_000}))
    lg.create_topic("t")
    lg.append("t", [b"a", b"b"])
    with frozen(own_kafka_broker):
        with pytest.raises(BackendError, match=r"not acknowledged within timeout_s=1\.0"):
            lg.append("t", [b"c"])
        t0 = time.monotonic()
        lg.close()
        assert time.monotonic() - t0 < 1.0 + 2.0
    with open_log(own_kafka_broker.log_config()) as lg:
        assert [r.value for r in lg.read("t", 0, 0, timeout_s=5)][:2] == [b"a", b"b"]  # acknowledged: kept


def test_kafka_close_with_a_timeout_cuts_an_append_in_flight_short(own_kafka_broker):
    """close(timeout_s) returns within about timeout_s however long the log's own timeouts are:
    an append still waiting for acknowledgements then fails with StateError, its records dropped."""
    lg = open_log(own_kafka_broker.log_config(timeout_s=30.0))
    lg.create_topic("t")
    lg.append("t", [b"a"])
    outcome: list[Exception] = []

    def append() -> None:
        try:
            lg.append("t", [b"x"] * 100)
        except Exception as exc:  # the test looks at what it was
            outcome.append(exc)

    with frozen(own_kafka_broker):
        appender = threading.Thread(target=append)
        appender.start()
        time.sleep(0.3)  # the append is waiting for acknowledgements
        t0 = time.monotonic()
        lg.close(timeout_s=1.0)
        assert time.monotonic() - t0 < 1.0 + 1.0
        appender.join(5)
    assert not appender.is_alive() and len(outcome) == 1
    assert isinstance(outcome[0], StateError) and "100 records not acknowledged were dropped" in str(outcome[0])
    assert lg.state is LogState.CLOSED
    with open_log(own_kafka_broker.log_config()) as lg2:
        assert lg2.read("t", 0, 0, timeout_s=5)[0].value == b"a"


def test_timestamps_accept_numpy_arrays(log):
    t = new_topic()
    log.create_topic(t)
    log.append(t, [b"a", b"b"], timestamps_ms=np.array([5, 6], np.int32))
    assert [r.timestamp_ms for r in log.read(t, 0, 0)] == [5, 6]


def test_read_columns_matches_read(log):
    """The columnar fast path returns exactly the records read() does, for any window."""
    t = new_topic()
    log.create_topic(t, 2)
    rng = random.Random(5)
    for _ in range(6):
        m = rng.randint(1, 120)
        log.append(
            t,
            [b"v%d" % rng.randrange(10**6) for _ in range(m)],
            [rng.choice([None, b"a", b"bb"]) for _ in range(m)],
        )
    for p in range(2):
        end = log.end_offset(t, p)
        for offset, m in [(0, 10_000), (0, 1), (3, 50), (end - 1, 10), (end, 10)]:
            offset = max(offset, 0)
            got = log.read_columns(t, p, offset, max_records=m)
            want = log.read(t, p, offset, max_records=m)
            assert got.offsets.dtype == np.int64 and got.timestamps_ms.dtype == np.int64
            assert got.offsets.tolist() == [r.offset for r in want]
            assert got.keys == [r.key for r in want]
            assert got.values == [r.value for r in want]
            assert got.timestamps_ms.tolist() == [r.timestamp_ms for r in want]
    with pytest.raises(InputError, match="max_records must be >= 1"):
        log.read_columns(t, 0, 0, max_records=0)


def test_repeated_kafka_client_errors_are_logged_once_per_interval(caplog, monkeypatch):
    """A broker that is down made librdkafka report ~68 'Connection refused' in seconds, burying
    the one line that said which call gave up."""
    from confluent_kafka import KafkaError

    from freshrec.stream import kafka

    monkeypatch.setattr(kafka, "_error_seen", {})
    clock = iter([0.0, 1.0, 2.0, 3.0, 11.0])
    monkeypatch.setattr(kafka, "_now", lambda: next(clock))
    err = KafkaError(KafkaError._TRANSPORT, "Connection refused")
    with caplog.at_level("WARNING", logger="freshrec.stream"):
        for _ in range(5):
            kafka._on_client_error(err)
    lines = [r.getMessage() for r in caplog.records if "kafka client error" in r.getMessage()]
    assert len(lines) == 2 and "(3 more like it in the last 10 s)" in lines[1], lines
    fatal = KafkaError(KafkaError._FATAL, "Unknown Producer Id", fatal=True)
    with caplog.at_level("WARNING", logger="freshrec.stream"):
        for _ in range(2):
            kafka._on_client_error(fatal)  # never held back
    assert sum("kafka client fatal error" in r.getMessage() for r in caplog.records) == 2
