"""A replica's lifecycle on a Kafka event log: stopping takes at most ``shutdown_timeout_s``
even when the broker hangs, counts the impressions it could not append, and loses nothing on a
healthy broker."""

from __future__ import annotations

import time
import uuid

from freshrec.serve import ServeConfig, load_states
from freshrec.serve.replica import Replica, ReplicaState
from freshrec.stream import open_log

from ..conftest import frozen


def kafka_replica(model_dirs, broker, **fields) -> Replica:
    tag = uuid.uuid4().hex[:8]  # the session's broker is shared: topics of this test's own
    config = ServeConfig.from_dict(
        {
            "arms": [{"name": "a", "model_dir": str(model_dirs["rank"])}],
            "log": broker.log_config().model_dump(mode="json", exclude_unset=True),
            "topics": {"impressions": f"imp-{tag}", "actions": f"act-{tag}", "items": f"items-{tag}"},
            "warmup_candidates": 4,
            **fields,
        }
    )
    replica = Replica(config, load_states(config))
    replica.start()
    return replica


def submit(replica: Replica, prefix: str, batches: int, size: int = 10) -> list[bytes]:
    values = []
    for i in range(batches):
        batch = [f"{prefix}{i}.{j}".encode() for j in range(size)]
        replica.writer.submit(replica.config.topics.impressions, batch, [b"k"] * size)
        values += batch
    return values


def test_stopping_with_the_broker_frozen_takes_the_budget_and_counts_the_dropped(model_dirs, own_kafka_broker, caplog):
    """A replica took 316 s to exit on SIGTERM with its Kafka broker frozen: the writer's append
    waited timeout_s (30 s) for acknowledgements, closing the log flushed for another 30 s, and
    librdkafka held the producer's close until the queued records expired (5 min). Now stop()
    ends within shutdown_timeout_s; the impressions not acknowledged are counted as dropped and
    logged once; the ones acknowledged before are in the log."""
    replica = kafka_replica(model_dirs, own_kafka_broker, shutdown_timeout_s=2.0)
    w = replica.writer
    early = submit(replica, "early", 5)
    assert w.flush(30) and w.appended == len(early)
    with frozen(own_kafka_broker):
        late = submit(replica, "late", 5)
        time.sleep(0.3)  # the writer thread is waiting for acknowledgements
        with caplog.at_level("ERROR", logger="freshrec.serve"):
            t0 = time.monotonic()
            replica.stop()
            took = time.monotonic() - t0
    assert replica.state is ReplicaState.STOPPED
    assert took < 2.0 + 1.0, f"stop() took {took:.1f} s"
    assert (w.appended, w.dropped, w.pending) == (len(early), len(late), 0)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and f"{len(late)} events" in errors[0], errors
    with open_log(own_kafka_broker.log_config()) as log:  # thawed: what was acknowledged is there
        got = [r.value for r in log.read(replica.config.topics.impressions, 0, 0, 10_000, timeout_s=5)]
    assert got[: len(early)] == early


def test_stopping_on_a_healthy_broker_appends_everything_queued(model_dirs, kafka_broker):
    replica = kafka_replica(model_dirs, kafka_broker, shutdown_timeout_s=10.0)
    values = submit(replica, "v", 200, size=50)  # 10,000 records, most still queued at stop()
    replica.stop()
    w = replica.writer
    assert (w.appended, w.dropped, w.pending) == (len(values), 0, 0)
    with open_log(kafka_broker.log_config()) as log:
        topic = replica.config.topics.impressions
        got = []
        while len(got) < len(values):
            batch = log.read(topic, 0, len(got), 10_000, timeout_s=5)
            assert batch, f"only {len(got)} of {len(values)} records in the log"
            got += [r.value for r in batch]
    assert got == values
