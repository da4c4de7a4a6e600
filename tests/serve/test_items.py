"""The live catalog follows event time, not arrival; the tailer rebuilds it from the log."""

from __future__ import annotations

import time

from freshrec.serve import ItemTailer, LiveItems
from freshrec.stream import Action, ItemLifecycle, encode, open_log


def ev(item, status, t, eid=0, **features):
    return ItemLifecycle(event_id=eid, event_time=t, item_id=item, status=status, features=features)


def test_listed_updated_ended():
    items = LiveItems()
    assert items.apply([ev("a", "listed", 1, price=1), ev("b", "listed", 2), ev(3, "listed", 3)]) == 3
    assert items.apply([ev("a", "updated", 5, price=2), ev("b", "ended", 6)]) == 2
    view = items.view()
    assert view.ids == ["a", 3] and view.features[0] == {"price": 2}
    assert view.listed_at.tolist() == [1.0, 3.0]  # an update keeps the listing time
    assert items.version == 2


def test_older_events_are_ignored_and_ends_stick():
    items = LiveItems()
    items.apply([ev("a", "listed", 10, price=1), ev("a", "updated", 5, price=9)])
    assert items.get("a") == {"price": 1}
    items.apply([ev("a", "ended", 20), ev("a", "updated", 15, price=3), ev("a", "listed", 20)])
    assert items.get("a") is None  # nothing from before (or at) the end revives it
    items.apply([ev("a", "listed", 30, price=4)])
    assert items.get("a") == {"price": 4}  # a later listing relists it


def test_replaying_the_same_events_changes_nothing():
    events = [ev("a", "listed", 1), ev("b", "listed", 2), ev("a", "ended", 3), ev("c", "updated", 4, x=1)]
    items = LiveItems()
    items.apply(events)
    version = items.version
    assert items.apply(events) == 0 and items.version == version
    assert items.view().ids == ["b", "c"]  # an update of an unknown item lists it


def test_other_events_are_skipped():
    items = LiveItems()
    act = Action(event_id=1, request_id="r", event_time=1.0, user_id=1, item_id="a", type="click")
    assert items.apply([act]) == 0 and len(items) == 0


def test_tailer_reads_the_topic_and_follows_new_records(tmp_path):
    with open_log(path=tmp_path / "log") as log:
        log.create_topic("items", 2)
        log.append(
            "items",
            encode([ev(f"i{k}", "listed", k) for k in range(50)]),
            [f"i{k}".encode() for k in range(50)],
        )
        log.append("items", [b"not msgpack"], partition=0)
        items = LiveItems()
        tailer = ItemTailer(log, "items", items, poll_s=0.01)
        tailer.start()
        try:
            assert tailer.caught_up.wait(10)
            assert len(items) == 50 and tailer.counters.bad_records == 1
            log.append("items", encode([ev("i3", "ended", 100)]), [b"i3"])
            deadline = time.time() + 10
            while items.get("i3") is not None and time.time() < deadline:
                time.sleep(0.01)
            assert items.get("i3") is None and len(items) == 49
        finally:
            tailer.stop()
