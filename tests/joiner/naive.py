"""A plain, obviously-correct joiner for tests: the rules of ``freshrec.joiner.core`` written
as directly as possible (lists and linear scans, no state store, no spill, no heaps).

``naive_join(events, ...)`` takes events in processing order and returns the examples (as
``Example`` structs, in emission order), the fields of the dead letters and the counters; ``drain``
ends the stream (the watermark jumps to +inf).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from freshrec.errors import SchemaError
from freshrec.joiner.example import RESERVED_COLUMNS, Example, merge_features
from freshrec.stream.events import Action, Impression


def naive_join(
    events: list[Any],
    *,
    window_s: float,
    lateness_s: float,
    labels: list[str],
    emit: str,
    keep: dict[Any, bool],
    negative_weight: float,
    negative_rate: float,
    drain: bool = False,
) -> tuple[list[Example], list[str], Counter]:
    now = wm = -math.inf
    open_: dict[tuple, dict] = {}
    held: list[dict] = []
    out: list[Example] = []
    dead: list[str] = []
    c: Counter = Counter()
    seq = 0
    reserved = frozenset(RESERVED_COLUMNS) | frozenset(labels)

    def example(o: dict, positive: bool) -> None:
        imp = o["imp"]
        try:
            feats = merge_features(imp.user_features, imp.item_features, imp.context, reserved)
        except SchemaError:
            dead.append("features")
            c["rejected_events"] += 1
            return
        c["examples_out"] += 1
        c["positives_out" if positive else "negatives_out"] += 1
        out.append(
            Example(
                example_id=imp.event_id, request_id=imp.request_id, event_time=imp.event_time,
                emitted_at=now, user_id=imp.user_id, item_id=imp.item_id, position=imp.position,
                model_version=imp.model_version, features=feats,
                labels={t: int(t in o["labels"]) for t in labels},
                sample_weight=1.0 if positive else negative_weight,
                sampling_rate=1.0 if positive else negative_rate,
            )
        )  # fmt: skip

    def join(o: dict, a: Action) -> None:
        imp = o["imp"]
        if a.event_id in o["actions"]:
            c["duplicates"] += 1
            return
        if a.user_id != imp.user_id:
            dead.append("user_id")
            c["rejected_events"] += 1
            return
        if not imp.event_time <= a.event_time <= imp.event_time + window_s:
            c["out_of_window_actions"] += 1
            return
        o["actions"].append(a.event_id)
        c["actions_joined"] += 1
        if a.type not in o["labels"]:
            if o["emitted"]:
                c["late_label_updates"] += 1
            o["labels"].add(a.type)
        if emit == "first_action" and not o["emitted"]:
            example(o, True)
            o["emitted"] = True

    def advance() -> None:
        due = sorted((o["imp"].event_time + window_s, o["seq"], k) for k, o in open_.items())
        for end, _, k in due:
            if end < wm:
                o = open_.pop(k)
                if o["emitted"]:
                    continue
                if o["labels"]:
                    example(o, True)
                elif keep[o["imp"].event_id]:
                    example(o, False)
                else:
                    c["negatives_dropped"] += 1
        for h in sorted(held, key=lambda h: (h["a"].event_time, h["seq"])):
            if h["a"].event_time < wm:
                held.remove(h)
                c["unmatched_actions"] += 1

    for ev in events:
        c["events_in"] += 1
        t = ev.event_time
        if t > now:
            now = t
            if t - lateness_s > wm:
                wm = t - lateness_s
                advance()
        if isinstance(ev, Impression):
            c["impressions_in"] += 1
            if t < wm:
                c["late_impressions"] += 1
                continue
            key = (ev.request_id, ev.item_id)
            if key in open_:
                if open_[key]["imp"].event_id == ev.event_id:
                    c["duplicates"] += 1
                else:
                    dead.append("item_id")
                    c["rejected_events"] += 1
                continue
            o = open_[key] = {"imp": ev, "seq": seq, "labels": set(), "emitted": False, "actions": []}
            seq += 1
            for h in [h for h in held if (h["a"].request_id, h["a"].item_id) == key]:
                held.remove(h)
                join(o, h["a"])
        elif isinstance(ev, Action):
            c["actions_in"] += 1
            if ev.type not in labels:
                c["ignored_actions"] += 1
                continue
            key = (ev.request_id, ev.item_id)
            if key in open_:
                join(open_[key], ev)
                continue
            if t < wm:
                c["late_actions"] += 1
                continue
            if any(h["a"].event_id == ev.event_id and (h["a"].request_id, h["a"].item_id) == key for h in held):
                c["duplicates"] += 1
                continue
            held.append({"a": ev, "seq": seq})
            seq += 1
        else:
            c["other_events_in"] += 1
    if drain:  # end of stream: the watermark jumps to +inf
        wm = math.inf
        advance()
    return out, dead, c
