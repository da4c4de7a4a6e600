"""Feeding recorded data through the log and the joiner: events to topics, Open Bandit to events.

:func:`append_events` writes events to an impressions topic and an actions topic in batches, in
the order given (event-time order keeps each partition sorted, which makes the join a function
of the log). :func:`open_bandit_events` turns an Open Bandit log (real impressions with click
labels, ``freshrec.data.load_open_bandit``) into the impressions and clicks a serving system
would have written, so the joiner's examples can be checked against the file's labels:

* impression ``event_id = request_id = row`` (rows in file order, which is time order),
  ``event_time`` = the timestamp in unix seconds, ``item_id``, ``position = file position - 1``
  (0 = first slot), ``model_version = "obp-random"`` (the uniform-random logging policy);
  ``user_features`` = ``user_feature_0..3``; ``item_features`` = ``item_feature_0..3`` (from
  item_context.csv); ``context`` = ``affinity`` (the user's affinity to the shown item) and
  ``propensity_score``;
* ``user_id``: the file has none, so a pseudo-id: the XXH64 of the four user features, as int64
  (users with identical features share it);
* one ``click`` action per clicked row: ``event_id = n_rows + row``, ``click_delay_s`` after
  the impression (the file records no click time).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import xxhash

from freshrec.errors import InputError
from freshrec.stream.events import Action, Event, Impression, encode
from freshrec.stream.log import EventLog

__all__ = ["append_events", "open_bandit_events"]


def append_events(
    log: EventLog,
    events: Iterable[Event],
    impressions_topic: str = "impressions",
    actions_topic: str = "actions",
    batch: int = 10_000,
) -> tuple[int, int]:
    """Append impressions and actions (other events are skipped) to their topics in batches of
    ``batch`` events, keyed by request id; returns (impressions, actions) written."""
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    counts = [0, 0]
    imps: list[Event] = []
    acts: list[Event] = []

    def flush() -> None:
        for topic, evs, slot in ((impressions_topic, imps, 0), (actions_topic, acts, 1)):
            if evs:
                log.append(topic, encode(evs), [str(e.request_id).encode() for e in evs])
                counts[slot] += len(evs)
                evs.clear()

    for ev in events:
        if type(ev) is Impression:
            imps.append(ev)
        elif type(ev) is Action:
            acts.append(ev)
        else:
            continue
        if len(imps) + len(acts) >= batch:
            flush()
    flush()
    return counts[0], counts[1]


def _pseudo_user(parts: tuple[str, ...]) -> int:
    h = xxhash.xxh64_intdigest("\x1f".join(parts).encode())
    return h - (1 << 64) if h >= 1 << 63 else h


def open_bandit_events(path: str | Path, *, click_delay_s: float = 1.0) -> list[Event]:
    """The impressions and clicks of an Open Bandit log (see the module docstring), in event-time
    order. ``path`` is a log CSV or a directory holding one (e.g. ``open-bandit/random/all``)."""
    from freshrec.data.open_bandit import USER_FEATURES, load_open_bandit

    if not click_delay_s > 0:
        raise InputError(f"click_delay_s must be > 0, got {click_delay_s}")
    ds = load_open_bandit(path)
    cols = ds.columns
    n = len(ds)
    if "item_feature_0" not in cols:
        raise InputError(f"{path}: the Open Bandit replay needs item_context.csv beside the log")
    times = ds.event_time.tolist()
    item = np.asarray(cols["item_id"]).tolist()
    pos = np.asarray(cols["position"]).tolist()
    click = np.asarray(cols["click"]).tolist()
    aff = np.asarray(cols["affinity"]).tolist()
    prop = np.asarray(cols["propensity_score"]).tolist()
    users = [cols[u].to_pylist() for u in USER_FEATURES]
    if0 = np.asarray(cols["item_feature_0"]).tolist()
    ifs = [cols[f"item_feature_{k}"].to_pylist() for k in (1, 2, 3)]
    item_names = [f"item_feature_{k}" for k in (1, 2, 3)]
    events: list[Event] = []
    for r in range(n):
        uf = {name: users[k][r] for k, name in enumerate(USER_FEATURES)}
        uid = _pseudo_user(tuple(uf.values()))
        events.append(
            Impression(
                event_id=r, request_id=r, event_time=times[r], user_id=uid, item_id=item[r],
                position=pos[r] - 1, model_version="obp-random", user_features=uf,
                item_features={"item_feature_0": if0[r], **{f: ifs[k][r] for k, f in enumerate(item_names)}},
                context={"affinity": aff[r], "propensity_score": prop[r]},
            )
        )  # fmt: skip
        if click[r]:
            events.append(
                Action(
                    event_id=n + r, request_id=r, event_time=times[r] + click_delay_s, user_id=uid,
                    item_id=item[r], type="click",
                )
            )  # fmt: skip
    events.sort(key=lambda e: e.event_time)  # stable: an impression stays before its click
    return events
