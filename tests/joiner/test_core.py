"""The join rules: exact window and lateness boundaries, held actions, duplicates, both emission
policies, multi-label examples, refusals; and random event sequences against the naive joiner
(with the state in memory and spilled to disk)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.stream import Action, Impression

from .helpers import act, imp, run_core, run_naive

COUNTED = (
    "events_in", "impressions_in", "actions_in", "other_events_in", "rejected_events", "duplicates",
    "late_impressions", "late_actions", "unmatched_actions", "out_of_window_actions", "ignored_actions",
    "actions_joined", "late_label_updates", "examples_out", "positives_out", "negatives_out",
    "negatives_dropped",
)  # fmt: skip


def labels_of(examples, label="click"):
    return {e.example_id: e.labels[label] for e in examples}


# ---- the window -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t_action", "joined"),
    [(100.0, True), (110.0, True), (100.0 + 1e-9, True), (110.0 + 1e-9, False), (100.0 - 1e-9, False)],
)
def test_window_is_closed_on_both_ends(tmp_path, t_action, joined):
    ex, _, m = run_core([imp(1, 100.0), act(2, t_action)], tmp_path, window_s=10.0, allowed_lateness_s=0.0)
    assert labels_of(ex) == {1: int(joined)}
    assert m.actions_joined == int(joined)
    assert m.out_of_window_actions + m.unmatched_actions == int(not joined)


def test_window_closes_when_the_watermark_passes_its_end(tmp_path):
    # W = 10, L = 2: the window [100, 110] closes once an event later than 112 arrives
    events = [imp(1, 100.0), imp(2, 112.0, req=2), act(3, 109.0)]
    ex, _, m = run_core(events, tmp_path, window_s=10.0, allowed_lateness_s=2.0, drain=False)
    assert m.actions_joined == 1 and labels_of(ex) == {1: 1}  # watermark 110 = end: still open
    events = [imp(1, 100.0), imp(2, 112.0 + 1e-6, req=2), act(3, 109.0)]
    ex, _, m = run_core(events, tmp_path, window_s=10.0, allowed_lateness_s=2.0, drain=False)
    assert m.late_actions == 1 and labels_of(ex) == {1: 0}  # closed (a negative), then the action is late
    assert ex[0].emitted_at == 112.0 + 1e-6  # emitted at the event time that closed it


def test_late_impression_is_dropped_and_counted(tmp_path):
    events = [imp(1, 100.0), imp(2, 95.0, req=2), imp(3, 97.0, req=3)]
    ex, _, m = run_core(events, tmp_path, window_s=10.0, allowed_lateness_s=3.0)
    assert m.late_impressions == 1  # 95 < 100 - 3; 97 is exactly the watermark: accepted
    assert sorted(e.example_id for e in ex) == [1, 3]


# ---- held actions -----------------------------------------------------------------------------


def test_action_before_its_impression_is_held_then_joined(tmp_path):
    events = [act(9, 105.0), imp(1, 100.0)]  # the action arrives first (its impression lagged)
    ex, _, m = run_core(events, tmp_path, window_s=10.0, allowed_lateness_s=6.0)
    assert labels_of(ex) == {1: 1} and m.actions_joined == 1 and m.held_actions == 0


def test_held_action_is_dropped_when_the_watermark_passes_it(tmp_path):
    # the action at 105 waits; an event at 111.5 moves the watermark (L=6) to 105.5 > 105
    events = [act(9, 105.0), imp(5, 111.5, req=5), imp(1, 100.0)]
    ex, _, m = run_core(events, tmp_path, window_s=10.0, allowed_lateness_s=6.0)
    assert m.unmatched_actions == 1 and m.late_impressions == 1 and labels_of(ex) == {5: 0}
    # watermark exactly at the action's time: still held, and joined when the impression comes
    events = [act(9, 105.0), imp(5, 111.0, req=5), imp(1, 105.0)]
    ex, _, m = run_core(events, tmp_path, window_s=10.0, allowed_lateness_s=6.0)
    assert m.unmatched_actions == 0 and labels_of(ex)[1] == 1


def test_late_action_without_impression_is_counted(tmp_path):
    events = [imp(5, 200.0, req=5), act(9, 150.0)]
    _, _, m = run_core(events, tmp_path, window_s=10.0, allowed_lateness_s=5.0)
    assert m.late_actions == 1 and m.held_actions == 0


def test_drain_closes_every_window_and_drops_held_actions(tmp_path):
    events = [imp(1, 0.0), act(2, 1.0, req=3)]
    ex, _, m = run_core(events, tmp_path, window_s=1e6, allowed_lateness_s=1.0, drain=False)
    assert ex == [] and m.open_impressions == 1 and m.held_actions == 1
    ex, _, m = run_core(events, tmp_path, window_s=1e6, allowed_lateness_s=1.0, drain=True)
    assert labels_of(ex) == {1: 0} and m.unmatched_actions == 1 and m.open_impressions == 0


# ---- duplicates, refusals -----------------------------------------------------------------------


def test_duplicates_are_dropped(tmp_path):
    i, a = imp(1, 100.0), act(2, 101.0)
    ex, _, m = run_core([i, i, a, a, act(3, 102.0, req=2), act(3, 102.0, req=2), imp(4, 101.5, req=2)], tmp_path)
    assert m.duplicates == 3 and m.duplicate_actions == 2 and m.actions_joined == 2
    assert sorted(e.example_id for e in ex) == [1, 4]
    # a resent impression is no action: the join rate subtracted it too and went past 1
    assert m.join_rate == 1.0


def test_conflicting_impression_and_foreign_user_are_refused(tmp_path):
    events = [imp(1, 100.0), imp(2, 100.5), act(3, 101.0, user=8)]
    ex, dead, m = run_core(events, tmp_path)
    assert m.rejected_events == 2 and [d[2] for d in dead] == ["item_id", "user_id"]
    assert "already has an impression of item 'a' (event_id 1)" in dead[0][3]
    assert dead[1][3].startswith("action.user_id: 8 is not the user of its impression")
    assert labels_of(ex) == {1: 0}


# ---- emission -----------------------------------------------------------------------------------


def test_first_action_emits_at_the_first_action_and_counts_later_labels(tmp_path):
    events = [imp(1, 0.0), act(2, 5.0), act(3, 50.0, type="add_to_cart"), act(4, 60.0, type="purchase")]
    ex, _, m = run_core(events, tmp_path, window_s=100.0, emit="first_action")
    assert len(ex) == 1 and ex[0].emitted_at == 5.0
    assert ex[0].labels == {"click": 1, "bid": 0, "purchase": 0, "add_to_cart": 0}
    assert m.late_label_updates == 2 and m.actions_joined == 3


def test_window_close_emits_every_label_at_close(tmp_path):
    events = [imp(1, 0.0), act(2, 5.0), act(3, 50.0, type="add_to_cart"), act(4, 60.0, type="purchase")]
    events.append(imp(9, 200.0, req=9))  # moves the watermark past the first window's end
    ex, _, m = run_core(events, tmp_path, window_s=100.0, allowed_lateness_s=0.0, emit="window_close", drain=False)
    assert len(ex) == 1 and ex[0].emitted_at == 200.0
    assert ex[0].labels == {"click": 1, "bid": 0, "purchase": 1, "add_to_cart": 1}
    assert m.late_label_updates == 0 and m.positives_out == 1


def test_labels_follow_the_configured_types(tmp_path):
    events = [imp(1, 0.0), act(2, 1.0, type="bid"), imp(3, 2.0, req=2), act(4, 3.0, req=2, type="click")]
    ex, _, m = run_core(events, tmp_path, labels=["purchase", "bid"])
    assert {e.example_id: e.labels for e in ex} == {
        1: {"purchase": 0, "bid": 1},
        3: {"purchase": 0, "bid": 0},
    }
    assert m.ignored_actions == 1
    assert list(ex[0].labels) == ["purchase", "bid"]  # the configured order


def test_negatives_carry_weight_and_rate(tmp_path):
    events = [imp(i, float(i), req=i) for i in range(400)] + [act(1000, 0.5, req=0)]
    events.sort(key=lambda e: e.event_time)
    ex, _, m = run_core(events, tmp_path, negative_rate=0.25)
    pos = [e for e in ex if e.labels["click"]]
    neg = [e for e in ex if not e.labels["click"]]
    assert [(e.sample_weight, e.sampling_rate) for e in pos] == [(1.0, 1.0)]
    assert {(e.sample_weight, e.sampling_rate) for e in neg} == {(4.0, 0.25)}
    assert m.negatives_out + m.negatives_dropped == 399 and 60 < m.negatives_out < 140
    ex2, _, _ = run_core(events, tmp_path, negative_rate=0.25, reweight_negatives=False)
    assert {(e.sample_weight, e.sampling_rate) for e in ex2 if not e.labels["click"]} == {(1.0, 0.25)}
    assert [e.example_id for e in ex2] == [e.example_id for e in ex]  # same decisions


def test_features_are_merged_with_prefixes_on_clashes(tmp_path):
    i = imp(
        1, 0.0, user_features={"age": 3, "x": 1}, item_features={"x": 2, "position": 9, "price": 1.5},
        context={"hour": 4, "click": "no"},
    )  # fmt: skip
    ex, _, _ = run_core([i], tmp_path)
    assert ex[0].features == {
        "age": 3, "user_x": 1, "item_x": 2, "item_position": 9, "price": 1.5, "hour": 4,
        "context_click": "no",
    }  # fmt: skip


def test_a_feature_still_ambiguous_after_prefixing_is_dead_lettered(tmp_path):
    i = imp(1, 0.0, user_features={"x": 1, "item_x": 5}, item_features={"x": 2})
    ex, dead, m = run_core([i, imp(2, 0.5, req=2)], tmp_path)
    assert [e.example_id for e in ex] == [2] and m.rejected_events == 1
    assert dead[0][2] == "features"
    assert "feature 'x' of the item features and another feature both end up as 'item_x'" in dead[0][3]


# ---- random sequences against the naive joiner ----------------------------------------------------

ids = st.sampled_from([1, 2, "r", -1, -2])  # hash(-1) == hash(-2): keys that share a hash
items = st.sampled_from(["a", "b", 3])
features = st.dictionaries(st.sampled_from(["x", "y", "position", "click", "user_x"]), st.integers(0, 3), max_size=2)


@st.composite
def event_lists(draw):
    """Roughly time-ordered streams (each event a little after the last, with some disorder), whose
    actions mostly refer to impressions already drawn, with duplicate deliveries."""
    n = draw(st.integers(0, 40))
    events, shown, clock = [], [], 0.0
    for eid in range(n):
        clock += draw(st.sampled_from([0.0, 0.5, 1.0]))
        t = max(0.0, clock + draw(st.sampled_from([0.0, 0.0, 0.0, -1.0, -3.0, 1.5])))
        if not shown or draw(st.integers(0, 2)) == 0:
            e = Impression(
                event_id=eid, request_id=draw(ids), event_time=t, user_id=draw(st.sampled_from([7, 7, 8])),
                item_id=draw(items), position=draw(st.integers(0, 3)), user_features=draw(features),
                item_features=draw(features), context=draw(features),
            )  # fmt: skip
            shown.append(e)
        else:
            target = draw(st.sampled_from(shown)) if draw(st.integers(0, 4)) else None
            req, item, user = (target.request_id, target.item_id, target.user_id) if target else (1, "b", 7)
            e = Action(
                event_id=eid, request_id=req, event_time=t, user_id=user if draw(st.integers(0, 9)) else 8,
                item_id=item, type=draw(st.sampled_from(["click", "click", "bid", "purchase"])),
            )  # fmt: skip
        events.append(e)
        if draw(st.integers(0, 9)) == 0:
            events.append(draw(st.sampled_from(events)))  # a duplicate delivery
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=event_lists(),
    window=st.sampled_from([2.0, 5.0, 12.0]),
    lateness=st.sampled_from([0.0, 1.5, 4.0]),
    emit=st.sampled_from(["first_action", "window_close"]),
    rate=st.sampled_from([1.0, 0.5]),
    memory_max=st.sampled_from([0, 2, 10**6]),
    drain=st.booleans(),
    chunk=st.sampled_from([None, 1, 3]),
    slots=st.sampled_from([None, 1, 2]),
)
def test_random_sequences_match_the_naive_joiner(
    tmp_path, events, window, lateness, emit, rate, memory_max, drain, chunk, slots
):
    cfg = dict(window_s=window, allowed_lateness_s=lateness, emit=emit, negative_rate=rate,
               labels=["click", "purchase"])  # fmt: skip
    ex, dead, m = run_core(events, tmp_path, memory_max=memory_max, drain=drain, chunk=chunk, slots=slots, **cfg)
    want, want_dead, counts = run_naive(events, drain=drain, **cfg)
    assert ex == want
    assert [d[2] for d in dead] == want_dead
    for name in COUNTED:
        assert getattr(m, name) == counts[name], name
    assert m.open_impressions == (0 if drain else m.open_impressions)
    assert not math.isnan(m.watermark)


@pytest.mark.parametrize("memory_max", [0, 10**6])
def test_keys_sharing_a_hash_are_joined_apart(tmp_path, memory_max):
    # hash((-1, "a")) == hash((-2, "a")): the second key cannot share the first's index cell
    events = [imp(1, 0.0, req=-1), imp(2, 0.5, req=-2), act(3, 1.0, req=-2, type="purchase"), act(4, 1.5, req=-1),
              imp(5, 2.0, req=-2), act(6, 2.5, req=-2)]  # fmt: skip
    ex, dead, m = run_core(events, tmp_path, memory_max=memory_max, emit="window_close")
    assert {e.example_id: (e.labels["click"], e.labels["purchase"]) for e in ex} == {1: (1, 0), 2: (1, 1)}
    assert m.duplicates == 0 and m.rejected_events == 1 and dead[0][2] == "item_id"
