"""Exactly once across crashes: a joiner in a child process is SIGKILLed at several points and
restarted; the examples topic, the dead-letter topic and the Parquet files must then hold what
an uninterrupted run writes, each record once. On the embedded log and on Kafka."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from freshrec.joiner import Joiner, JoinerConfig, read_examples_parquet
from freshrec.stream import open_log

from ..conftest import ROOT
from .helpers import read_dead, read_examples, sim_events, write_stream

CHILD = Path(__file__).with_name("_child.py")
# small batches and frequent checkpoints, spilling: many distinct places to die in
# (and a short window, so examples flow from the start)
CFG = dict(negative_rate=0.5, read_batch=60, checkpoint_every_records=500, memory_max_impressions=400,
           window_s=240.0, allowed_lateness_s=10.0)  # fmt: skip
SAME = ("examples_suppressed", "dead_letters_suppressed", "checkpoints", "lag_records")  # may differ


def child(spec: dict) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(spec, default=str)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def reference(tmp_path: Path, events: list) -> tuple[list, list, object, dict, int]:
    """An uninterrupted in-process run: (examples, dead letters, Parquet table, metrics, steps)."""
    with open_log(path=tmp_path / "ref-log") as log:
        write_stream(log, events)
        cfg = JoinerConfig(state_dir=tmp_path / "ref-state", parquet_dir=tmp_path / "ref-pq", **CFG)
        with Joiner(log, cfg) as j:
            steps = 0
            while j.step() or not j.caught_up:
                steps += 1
            j.drain()
            m = j.metrics(lag=False).as_dict()
        return read_examples(log), read_dead(log), read_examples_parquet(tmp_path / "ref-pq"), m, steps


def crash_and_finish(spec: dict, kill_after: list[int], seed: int) -> dict:
    """Start the child, SIGKILL it after the given numbers of steps (each run anew), then let a last
    one finish; its metrics.

    The child waits after each step for a go-ahead, so where it dies is decided here. The first
    run dies paused after a step that left examples past its checkpoint (so the next run must
    suppress them: the case exactly-once is about); the others die either paused or somewhere in
    the following step (reading, joining, appending, committing), at random."""
    rng = random.Random(seed)
    for i, k in enumerate(kill_after):
        proc = child(spec)
        assert proc.stdin is not None and proc.stdout is not None
        for line in proc.stdout:
            assert not line.startswith("done"), f"the run ended before kill point {k}"
            _, n, dirty = line.split()
            if int(n) >= k and (i > 0 or dirty == "1"):
                break
            proc.stdin.write("go\n")
            proc.stdin.flush()
        else:
            raise AssertionError(proc.stderr.read() if proc.stderr else "the child stopped")
        if i > 0 and rng.random() < 0.7:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(rng.random() * 0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    proc = child(spec)
    out, err = proc.communicate(input="", timeout=120)  # stdin closed: it runs without pausing
    assert proc.returncode == 0, err
    done = [line for line in out.splitlines() if line.startswith("done")]
    return json.loads(done[0][5:])


def check_against_reference(log, pq_dir: Path, metrics: dict, ref, topics: dict | None = None) -> None:
    ref_examples, ref_dead, ref_table, ref_metrics, _ = ref
    examples = read_examples(log, (topics or {}).get("examples", "examples"))
    ids = [e.example_id for e in examples]
    assert len(ids) == len(set(ids)), "an example was written twice"
    assert examples == ref_examples  # every example, once, in the uninterrupted order
    dead = read_dead(log, (topics or {}).get("dead-letters", "dead-letters"))
    inputs = {v: k for k, v in (topics or {}).items()}
    assert [(inputs.get(d.topic, d.topic), d.partition, d.offset, d.reason) for d in dead] == [
        (d.topic, d.partition, d.offset, d.reason) for d in ref_dead
    ]
    assert read_examples_parquet(pq_dir).equals(ref_table)
    assert {k: v for k, v in metrics.items() if k not in SAME} == {
        k: v for k, v in ref_metrics.items() if k not in SAME
    }


@pytest.fixture(scope="module")
def events():
    return sim_events(25, seed=3)


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_writes_everything_once(tmp_path, events):
    ref = reference(tmp_path, events)
    steps = ref[4]
    assert steps > 12
    with open_log(path=tmp_path / "log") as log:
        write_stream(log, events)
    spec = {
        "log": {"path": str(tmp_path / "log")},
        "joiner": {"state_dir": str(tmp_path / "state"), "parquet_dir": str(tmp_path / "pq"), **CFG},
    }
    kills = [1, steps // 5, steps // 6, steps // 4, steps // 6, 2]  # together short of the end
    metrics = crash_and_finish(spec, kills, seed=1)
    with open_log(path=tmp_path / "log") as log:
        check_against_reference(log, tmp_path / "pq", metrics, ref)
    assert metrics["examples_suppressed"] > 0  # the first kill left examples past its checkpoint


@pytest.mark.slow
def test_sigkill_on_kafka_then_restart_writes_everything_once(tmp_path, events, kafka_broker):
    """The same on Kafka (the reference ran on the embedded log: the join is the same)."""
    ref = reference(tmp_path, events)
    steps = ref[4]
    tag = uuid.uuid4().hex[:8]
    names = {
        "input_topics": [f"imp-{tag}", f"act-{tag}"],
        "examples_topic": f"ex-{tag}",
        "dead_letter_topic": f"dl-{tag}",
    }
    cfg = kafka_broker.log_config(consumer_settings={"fetch.wait.max.ms": 10})
    with open_log(cfg) as log:
        write_stream(log, events, topics=tuple(names["input_topics"]))
    spec = {
        "log": cfg.model_dump(mode="json"),
        "joiner": {"state_dir": str(tmp_path / "state"), "parquet_dir": str(tmp_path / "pq"), **CFG, **names},
    }
    metrics = crash_and_finish(spec, [steps // 3, steps // 4, 3], seed=2)
    topics = {
        "examples": names["examples_topic"],
        "dead-letters": names["dead_letter_topic"],
        "impressions": names["input_topics"][0],
        "actions": names["input_topics"][1],
    }
    with open_log(cfg) as log:
        check_against_reference(log, tmp_path / "pq", metrics, ref, topics)
    assert metrics["examples_suppressed"] > 0
