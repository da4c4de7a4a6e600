"""The joiner on the Kafka backend (a real Tansu broker) writes what it writes on the embedded log."""

from __future__ import annotations

import uuid

from freshrec.joiner import Joiner, JoinerConfig
from freshrec.stream import open_log

from .helpers import JOIN, read_dead, read_examples, sim_events, write_stream


def test_kafka_backend_runs_the_same_join(tmp_path, kafka_broker):
    events = sim_events(15, seed=5)
    cfg = dict(negative_rate=0.4, read_batch=400, checkpoint_every_records=1000, **JOIN)
    with open_log(path=tmp_path / "log") as log:
        write_stream(log, events)
        with Joiner(log, JoinerConfig(state_dir=tmp_path / "e", **cfg)) as j:
            want = j.run(until_idle=True, drain=True)
        want_examples, want_dead = read_examples(log), read_dead(log)

    tag = uuid.uuid4().hex[:8]
    names = dict(input_topics=[f"i-{tag}", f"a-{tag}"], examples_topic=f"x-{tag}", dead_letter_topic=f"d-{tag}")
    with open_log(kafka_broker.log_config(consumer_settings={"fetch.wait.max.ms": 10})) as log:
        write_stream(log, events, topics=tuple(names["input_topics"]))
        config = JoinerConfig(state_dir=tmp_path / "k", **cfg, **names)
        with Joiner(log, config) as j:  # in two runs: a restart from the checkpoint on Kafka
            for _ in range(4):
                j.step()
        with Joiner(log, config) as j:
            got = j.run(until_idle=True, drain=True)
        assert read_examples(log, names["examples_topic"]) == want_examples
        dead = read_dead(log, names["dead_letter_topic"])
        assert [(d.partition, d.offset, d.reason) for d in dead] == [
            (d.partition, d.offset, d.reason) for d in want_dead
        ]
        assert log.committed("freshrec-joiner", names["input_topics"][0])  # offsets committed for tools
    skip = {"checkpoints", "lag_records"}
    assert {k: v for k, v in got.as_dict().items() if k not in skip} == {
        k: v for k, v in want.as_dict().items() if k not in skip
    }


RACE = """
import json, sys, time
from freshrec.errors import StateError
from freshrec.joiner import Joiner, JoinerConfig
from freshrec.stream import LogConfig, open_log

spec = json.loads(sys.argv[1])
with open_log(LogConfig(**spec["log"])) as log:
    while time.time() < spec["at"]:  # start together
        time.sleep(0.001)
    try:
        Joiner(log, JoinerConfig(**spec["joiner"])).close()
        print("owner", flush=True)
    except StateError as exc:
        print("refused", exc, flush=True)
"""


def test_pipelines_started_at_once_on_kafka_leave_one_owner(tmp_path, kafka_broker):
    """Three joiners (three processes, three state_dirs) started at the same moment on empty
    Kafka topics: each found no examples and, before claims, all three went on."""
    import json
    import subprocess
    import sys
    import time

    tag = uuid.uuid4().hex[:8]
    names = dict(input_topics=[f"i-{tag}", f"a-{tag}"], examples_topic=f"x-{tag}", dead_letter_topic=f"d-{tag}")
    with open_log(kafka_broker.log_config()) as log:
        write_stream(log, [], bad=False, topics=tuple(names["input_topics"]))
    log_cfg = kafka_broker.log_config().model_dump(mode="json")
    at = time.time() + 8.0  # after every child imported freshrec and connected

    def child(k: int) -> subprocess.Popen:
        joiner = {"state_dir": str(tmp_path / f"s{k}"), **names}
        argv = [sys.executable, "-c", RACE, json.dumps({"log": log_cfg, "at": at, "joiner": joiner})]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    children = [child(k) for k in range(3)]
    outs = [c.communicate(timeout=120) for c in children]
    said = [out.split()[0] if out else f"crashed: {err[-500:]}" for out, err in outs]
    assert sorted(said) == ["owner", "refused", "refused"], said
    assert [(tmp_path / f"s{k}").exists() for k in range(3)] == [s == "owner" for s in said]
