"""Shared helpers for the joiner tests: build events, run the join core, read topics back."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from freshrec.joiner import JoinerConfig, decode_dead_letters, decode_examples
from freshrec.joiner._wire import decode_batch
from freshrec.joiner.core import JoinCore
from freshrec.joiner.metrics import JoinerMetrics
from freshrec.joiner.sampling import keep_negatives
from freshrec.joiner.state import StateStore
from freshrec.stream import Action, Impression, encode
from freshrec.stream.log import EventLog

from .naive import naive_join


def imp(eid: Any, t: float, req: Any = 1, item: Any = "a", user: Any = 7, **kw: Any) -> Impression:
    kw.setdefault("position", 0)
    return Impression(event_id=eid, request_id=req, event_time=t, user_id=user, item_id=item, **kw)


def act(eid: Any, t: float, req: Any = 1, item: Any = "a", user: Any = 7, type: str = "click") -> Action:
    return Action(event_id=eid, request_id=req, event_time=t, user_id=user, item_id=item, type=type)


def run_core(
    events: list[Any],
    state_dir: Path,
    *,
    memory_max: int = 10**6,
    drain: bool = True,
    chunk: int | None = None,
    slots: int | None = None,
    **cfg: Any,
) -> tuple[list[Any], list[Any], JoinerMetrics]:
    """Join ``events`` (in this order) with a fresh core, ``chunk`` events per ``process`` call
    (all at once if None), starting with ``slots`` in-memory slots if given (they grow as
    needed); (examples, dead records, metrics)."""
    config = JoinerConfig(**cfg)
    store = StateStore(state_dir / uuid.uuid4().hex, memory_max, config.window_s)
    if slots is not None:
        store.win._alloc(slots)  # a fresh store's slots: start small to exercise growth
    try:
        core = JoinCore(config, store, keep_examples=True)
        records = encode(events)
        items = decode_batch(records)
        step = chunk or max(1, len(items))
        for lo in range(0, len(items), step):
            hi = lo + step
            core.process(items[lo:hi], records[lo:hi], [0] * len(items[lo:hi]), list(range(lo, min(hi, len(items)))))
        if drain:
            core.drain()
        blobs, _, _, examples, dead = core.take()
        assert decode_examples(blobs) == examples  # what goes to the topic is what was built
        return examples, dead, core.metrics()
    finally:
        store.close()


def run_naive(events: list[Any], *, drain: bool = True, **cfg: Any) -> tuple[list[Any], list[str], Any]:
    config = JoinerConfig(**cfg)
    ids = [e.event_id for e in events if isinstance(e, Impression)]
    keep = dict(zip(ids, keep_negatives(ids, config.negative_rate, config.sampling_seed).tolist(), strict=True))
    return naive_join(
        events,
        window_s=config.window_s,
        lateness_s=config.allowed_lateness_s,
        labels=list(config.labels),
        emit=config.emit,
        keep=keep,
        negative_weight=1.0 / config.negative_rate if config.reweight_negatives else 1.0,
        negative_rate=config.negative_rate,
        drain=drain,
    )


def read_topic(log: EventLog, topic: str) -> list[bytes]:
    """Every record of ``topic``, partition by partition."""
    out: list[bytes] = []
    for p in range(log.partitions(topic)):
        offset = 0
        while True:
            cols = log.read_columns(topic, p, offset, max_records=5000)
            if not cols.values:
                break
            out += cols.values
            offset = int(cols.offsets[-1]) + 1
    return out


def read_examples(log: EventLog, topic: str = "examples") -> list[Any]:
    return decode_examples(read_topic(log, topic))


def read_dead(log: EventLog, topic: str = "dead-letters") -> list[Any]:
    return decode_dead_letters(read_topic(log, topic))


# ---- simulated streams through a log ------------------------------------------------------------

SIM = dict(n_users=3000, items_per_hour=3000, random_ctr=0.05, new_users_per_hour=100.0)
JOIN = dict(window_s=600.0, allowed_lateness_s=30.0)  # the simulator's follow-ups come up to 30 min later


def sim_events(minutes: float, seed: int = 0) -> list[Any]:
    from freshrec.sim import SimConfig, Simulator

    return Simulator(SimConfig(seed=seed, **SIM)).run(minutes * 60.0)


def bad_records(t: float = 5.0) -> list[tuple[str, bytes]]:
    """(topic, record) pairs at event time ``t`` the joiner must dead-letter. The last is an
    impression with an unknown field: only detected when its example is built."""
    import msgspec

    good = msgspec.msgpack.decode(encode([imp(10**9, t, req="bad-req", item="x")])[0])
    act_ = msgspec.msgpack.decode(encode([act(10**9 + 1, t, req="bad-req", item="x")])[0])
    return [
        ("impressions", b"\xc1 not msgpack"),
        ("impressions", msgspec.msgpack.encode({**good, "event_time": float("nan")})),
        ("actions", msgspec.msgpack.encode({**act_, "type": "like"})),
        ("impressions", msgspec.msgpack.encode({**good, "surprise": 1})),
    ]


def write_stream(
    log: EventLog,
    events: list[Any],
    bad: bool = True,
    parts: tuple[int, int] = (3, 2),
    topics: tuple[str, str] = ("impressions", "actions"),
) -> int:
    """Create the input topics and append ``events`` in order (and, with ``bad``, the bad records
    of :func:`bad_records` in the middle); returns the number of input records."""
    from freshrec.joiner import append_events

    log.create_topic(topics[0], parts[0])
    log.create_topic(topics[1], parts[1])
    name = {"impressions": topics[0], "actions": topics[1]}
    half = len(events) // 2
    n = sum(append_events(log, events[:half], *topics, batch=2000))
    if bad:
        for topic, blob in bad_records(events[half].event_time if events else 5.0):
            log.append(name[topic], [blob], [b"bad"])
            n += 1
    return n + sum(append_events(log, events[half:], *topics, batch=2000))
