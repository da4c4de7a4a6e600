"""The simulator: determinism, event-time order, causality of actions, item lifetimes, drift,
calibration, and the closed loop with an external recommender."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from freshrec.errors import ConfigError, InputError
from freshrec.sim import Recommendation, SimConfig, Simulator
from freshrec.stream.events import Action, Impression, ItemLifecycle, encode, validate

# a small, busy world: ~17 impressions/s, ~900 live items; tests run in well under a second each
SMALL = dict(
    n_users=500, new_users_per_hour=50, sessions_per_user_per_day=100, items_per_hour=1000,
    item_lifetime_median=600, n_sellers=50, n_categories=12,
)  # fmt: skip


def small(**kw) -> SimConfig:
    return SimConfig(**(SMALL | kw))


@pytest.fixture(scope="module")
def busy_run():
    """One hour of a small world with a high click rate, so every kind of action occurs often."""
    sim = Simulator(small(random_ctr=0.08, seed=11))
    return sim, sim.run(3600.0)


# ---- determinism and order ----------------------------------------------------------------------


def test_same_seed_same_events_bit_for_bit():
    a = encode(Simulator(small(seed=5)).run(1200.0))
    b = encode(Simulator(small(seed=5)).run(1200.0))
    c = encode(Simulator(small(seed=6)).run(1200.0))
    assert len(a) > 10_000
    assert a == b
    assert a != c


def test_how_events_are_asked_for_does_not_change_them():
    cfg = small(seed=2)
    whole = encode(Simulator(cfg).run(1500.0))
    sim = Simulator(cfg)
    rng = np.random.default_rng(0)
    steps, t = [], 0.0
    while t < 1500.0:
        t = min(1500.0, t + float(rng.exponential(7.0)))
        steps += sim.advance_to(t)
        assert sim.now == t
    assert encode(steps) == whole
    batched = [e for batch in Simulator(cfg).batches(until=1500.0) for e in batch]
    assert encode(batched) == whole


def test_events_are_in_event_time_order_with_consecutive_ids(busy_run):
    _, events = busy_run
    times = np.array([e.event_time for e in events])
    assert (np.diff(times) >= 0).all()
    assert [e.event_id for e in events] == list(range(len(events)))
    assert {type(e) for e in events} == {Impression, Action, ItemLifecycle}
    for e in events[:: max(1, len(events) // 2000)]:
        validate(e)  # what the simulator writes passes the schema's checks


# ---- causality ----------------------------------------------------------------------------------


def test_actions_follow_their_impressions(busy_run):
    sim, events = busy_run
    shown: dict[object, tuple[float, int, set]] = {}
    first_action: dict[tuple, dict[str, float]] = defaultdict(dict)
    fmt = {}
    kinds = defaultdict(int)
    for e in events:
        if isinstance(e, ItemLifecycle) and e.status == "listed":
            fmt[e.item_id] = e.features["format"]
        elif isinstance(e, Impression):
            t, u, items = shown.setdefault(e.request_id, (e.event_time, e.user_id, set()))
            assert (t, u) == (e.event_time, e.user_id)  # one request: one time, one user
            items.add(e.item_id)
        elif isinstance(e, Action):
            kinds[e.type] += 1
            assert e.request_id in shown, "action before (or without) its impression"
            t, u, items = shown[e.request_id]
            assert e.item_id in items, "action on an item that request did not show"
            assert e.user_id == u
            assert t < e.event_time <= t + sim.config.max_action_delay
            seen = first_action[(e.request_id, e.item_id)]
            if e.type == "click":
                assert e.value == 0.0
            else:
                assert "click" in seen and seen["click"] < e.event_time, f"{e.type} without an earlier click"
                assert e.value > 0
            if e.type == "bid":
                assert fmt[e.item_id] == "auction"
            if e.type in ("add_to_cart", "purchase"):
                assert fmt[e.item_id] == "fixed"
            if e.type == "purchase":
                assert seen["add_to_cart"] < e.event_time
            seen.setdefault(e.type, e.event_time)
    assert min(kinds["click"], kinds["bid"], kinds["add_to_cart"], kinds["purchase"]) > 20, kinds


def test_items_are_shown_and_bought_only_while_live(busy_run):
    _, events = busy_run
    listed, ended = {}, {}
    shown_after_listing = 0
    for e in events:
        if isinstance(e, ItemLifecycle):
            if e.status == "listed":
                assert e.item_id not in listed, "an item id listed twice"
                listed[e.item_id] = e.event_time
            elif e.status == "ended":
                assert e.item_id in listed and e.item_id not in ended
                ended[e.item_id] = e.event_time
            else:
                assert e.item_id in listed and e.item_id not in ended
        elif isinstance(e, Impression) or (isinstance(e, Action) and e.type != "click"):
            assert e.item_id in listed, f"{type(e).__name__} of an item never listed"
            assert e.item_id not in ended, f"{type(e).__name__} of an ended item"
            shown_after_listing += 1
    assert shown_after_listing > 10_000
    assert len(ended) > 0.5 * len(listed)  # short lifetimes: most items of the hour are gone


def test_items_end_after_their_lifetime():
    cfg = small(seed=4, item_lifetime_median=900.0, item_lifetime_sigma=0.8)
    sim = Simulator(cfg)
    horizon = 3 * 3600.0
    events = sim.run(horizon)
    items = sim.world.items
    n = items.n
    listed, ends = items["listed"][:n], items["ends"][:n]
    fresh = listed > cfg.start_time  # listed during the run (the initial catalog is length-biased)
    life = ends[fresh] - listed[fresh]
    assert abs(np.median(life) / cfg.item_lifetime_median - 1) < 0.1
    assert abs(np.log(life).std() / cfg.item_lifetime_sigma - 1) < 0.1
    ended = {e.item_id: e.event_time for e in events if isinstance(e, ItemLifecycle) and e.status == "ended"}
    for i in range(n):
        if ends[i] < horizon:
            assert ended[sim.world.item_ids[i]] == ends[i]
        else:
            assert sim.world.item_ids[i] not in ended
    # the initial catalog is in its steady state: as many live items at the start as later on
    at_start = len(Simulator(cfg).live_items(0.0))
    later = len(sim.live_items(horizon - 1.0))
    assert abs(at_start / later - 1) < 0.15, (at_start, later)


def test_bids_raise_the_price_with_an_update_event():
    sim = Simulator(small(seed=8, random_ctr=0.1, auction_share=1.0, followup_rate=0.6))
    events = sim.run(2400.0)
    best_bid: dict[str, float] = {}
    updates = 0
    for e in events:
        if isinstance(e, Action) and e.type == "bid":
            best_bid[e.item_id] = max(best_bid.get(e.item_id, 0.0), e.value)
        elif isinstance(e, ItemLifecycle) and e.status == "updated":
            updates += 1
            assert e.event_time % sim.config.chunk_seconds == 0  # announced at a chunk boundary
            assert e.features["price"] <= best_bid[e.item_id]  # never above the bids seen so far
        elif isinstance(e, Impression) and e.item_id in best_bid:
            assert e.item_features["price"] <= best_bid[e.item_id]
    assert updates > 10
    assert sim.stats.items_updated == updates


# ---- the user model -----------------------------------------------------------------------------


def _preferred_change_share(**kw) -> float:
    cfg = SimConfig(
        n_users=300, new_users_per_hour=0, sessions_per_user_per_day=48, requests_per_session=1, slate_size=1,
        items_per_hour=300, n_categories=20, seed=3, chunk_seconds=600.0, **kw,
    )  # fmt: skip
    sim = Simulator(cfg)
    users = list(range(cfg.n_users))
    before = sim.preferred_category(users)
    sim.run(2 * 86_400.0)
    return float((sim.preferred_category(users) != before).mean())


def test_interests_drift_and_jump():
    frozen = _preferred_change_share(interest_timescale_days=1e9, jumps_per_user_per_day=0.0)
    drift = _preferred_change_share(interest_timescale_days=1.0, jumps_per_user_per_day=0.0)
    jumps = _preferred_change_share(interest_timescale_days=1e9, jumps_per_user_per_day=2.0)
    assert frozen == 0.0
    assert drift > 0.5  # two time constants: most users' top category has moved
    assert jumps > 0.9  # ~4 jumps per user in two days, each to a new top category


# ---- calibration and the ground truth -----------------------------------------------------------


def test_random_policy_ctr_is_in_the_calibrated_band():
    sim = Simulator(SimConfig(n_users=20_000, sessions_per_user_per_day=10.0))
    sim.run(3600.0)
    s = sim.stats
    assert s.impressions > 150_000
    ctr = s.clicks / s.impressions
    assert 0.0032 < ctr < 0.0052, ctr  # random_ctr = 0.4%, hour-of-day effect within +-20%


def test_better_policies_click_more():
    ctr = {}
    for policy in ("random", "popularity", "oracle"):
        sim = Simulator(small(seed=1, policy=policy, sessions_per_user_per_day=200))
        sim.run(3600.0)
        ctr[policy] = sim.stats.clicks / sim.stats.impressions
    assert ctr["popularity"] > 1.3 * ctr["random"], ctr
    assert ctr["oracle"] > 2 * ctr["popularity"], ctr


class RandomRecommender:
    """Shows random live items and records the ground-truth click probability of each slot."""

    def __init__(self, sim_ref: list, logged: bool = False, seed: int = 0) -> None:
        self.sim_ref, self.logged = sim_ref, logged
        self.rng = np.random.default_rng(seed)
        self.expected: dict[int, float] = {}
        self.impressions: list[Impression] = []
        self.slates: dict[object, tuple[float, list[str]]] = {}
        self.n = 0

    def recommend(self, user_id, k, now, context):
        sim = self.sim_ref[0]
        live = sim.live_items(now)
        slate = [live[i] for i in self.rng.choice(len(live), size=k, replace=False)]
        p = sim.true_ctr(user_id, slate, now, positions=np.arange(k), device=context["device"])
        rid = f"ext-{self.n}" if self.logged else 10_000_000 + self.n
        self.n += 1
        self.expected[rid] = float(p.sum())
        self.slates[rid] = (now, slate)
        if self.logged:
            self.impressions += [
                Impression(
                    event_id=f"e-{rid}-{j}",
                    request_id=rid,
                    event_time=now,
                    user_id=user_id,
                    item_id=it,
                    position=j,
                )
                for j, it in enumerate(slate)
            ]
        return Recommendation(request_id=rid, item_ids=slate, logged=self.logged, model_version="m1")


def test_true_ctr_is_the_click_model():
    ref: list = []
    rec = RandomRecommender(ref)
    sim = Simulator(small(seed=9, random_ctr=0.05), recommender=rec)
    ref.append(sim)
    end = 3600.0
    events = sim.run(end + 600.0)  # 10 minutes more, so the last requests' clicks have come
    clicks = defaultdict(int)
    for e in events:
        if isinstance(e, Action) and e.type == "click":
            clicks[e.request_id] += 1
    done = [r for r, (t, _) in rec.slates.items() if t < end]
    expected = sum(rec.expected[r] for r in done)
    observed = sum(clicks[r] for r in done)
    assert expected > 1000
    assert abs(observed - expected) < 4 * math.sqrt(expected), (observed, expected)


def test_true_ctr_is_zero_for_items_not_live():
    sim = Simulator(small(seed=1))
    sim.run(100.0)
    live = sim.live_items()
    p = sim.true_ctr(0, [live[0], "it999999999", "nope", 17])
    assert p[0] > 0 and (p[1:] == 0).all()
    first_end = float(sim.world.items["ends"][0])
    assert sim.true_ctr(0, ["it0"], now=first_end)[0] == 0.0
    assert sim.true_ctr(0, ["it0"], now=first_end - 1e-3)[0] > 0.0


# ---- closing the loop ---------------------------------------------------------------------------


def test_logged_recommender_gets_actions_but_no_impressions_from_the_simulator():
    ref: list = []
    rec = RandomRecommender(ref, logged=True)
    sim = Simulator(small(seed=2, random_ctr=0.08), recommender=rec)
    ref.append(sim)
    events = sim.run(1800.0)
    assert rec.impressions and not any(isinstance(e, Impression) for e in events)
    actions = [e for e in events if isinstance(e, Action)]
    assert len(actions) > 100
    for a in actions:
        t, slate = rec.slates[a.request_id]
        assert a.item_id in slate and a.event_time > t
    assert sim.stats.impressions == len(rec.impressions)


def test_unlogged_recommender_gets_impressions_with_its_ids():
    ref: list = []
    rec = RandomRecommender(ref, logged=False)
    sim = Simulator(small(seed=2), recommender=rec)
    ref.append(sim)
    imps = [e for e in sim.run(600.0) if isinstance(e, Impression)]
    assert imps
    for e in imps:
        t, slate = rec.slates[e.request_id]
        assert e.event_time == t and slate[e.position] == e.item_id and e.model_version == "m1"


def test_a_plain_callable_can_recommend_and_unknown_items_are_never_clicked():
    ref: list = []

    def recommend(user_id, k, now, context):
        return Recommendation(None, ["nope", *ref[0].live_items(now)[:2]])

    sim = Simulator(small(seed=3, random_ctr=0.3), recommender=recommend)
    ref.append(sim)
    events = sim.run(600.0)
    assert sim.stats.shown_not_live == sim.stats.requests  # one unknown item per slate
    imps = [e for e in events if isinstance(e, Impression)]
    assert imps and {e.position for e in imps} == {1, 2}
    assert not any(isinstance(e, Action) and e.item_id == "nope" for e in events)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda live: Recommendation(1, live[:11]), r"11 items for a slate of 10"),
        (lambda live: Recommendation(1, [live[0], live[0]]), r"appears twice"),
        (lambda live: Recommendation(None, live[:2], logged=True), r"request_id: required when logged"),
        (lambda live: Recommendation(1, [1.5]), r"item_ids: 1.5 is not an int or str"),
        (lambda live: Recommendation(2.5, live[:1]), r"request_id: 2.5"),
        (lambda live: live[:3], r"must return a Recommendation"),
    ],
)
def test_bad_recommendations_are_rejected(answer, match):
    ref: list = []
    sim = Simulator(small(seed=3), recommender=lambda u, k, now, ctx: answer(ref[0].live_items(now)))
    ref.append(sim)
    with pytest.raises(InputError, match=match):
        sim.run(600.0)


def test_bad_arguments_are_rejected():
    with pytest.raises(ConfigError, match="SimConfig"):
        Simulator({"seed": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="recommender"):
        Simulator(small(), recommender=42)  # type: ignore[arg-type]
    sim = Simulator(small())
    with pytest.raises(InputError, match="finite"):
        sim.advance_to(math.nan)
    with pytest.raises(InputError, match="user_id 999999"):
        sim.true_ctr(999_999, ["it0"])
    with pytest.raises(InputError, match="device"):
        sim.true_ctr(0, ["it0"], device="tv")
    with pytest.raises(InputError, match="not an item"):
        sim.item_features("nope")
    assert sim.item_features("it0")["category"] >= 0
    assert set(sim.user_features(0)) == {"segment", "age_bucket"}


def test_switching_to_a_recommender_mid_run_closes_the_loop():
    """Warm up on the built-in policy, then hand the slates to a recommender: actions of earlier
    requests keep their ids, later impressions are the recommender's."""
    from freshrec.sim.policies import Recommendation
    from freshrec.stream import Action, Impression

    sim = Simulator(SimConfig(seed=3, random_ctr=0.05, n_users=5_000))
    before = sim.run(600.0)
    calls = []

    def rec(user_id, k, now, context):
        calls.append(now)
        return Recommendation(request_id=f"r{len(calls)}", item_ids=sim.live_items(now)[:k], logged=False,
                              model_version="test")  # fmt: skip

    sim.set_recommender(rec)
    after = sim.run(1200.0)
    imps = [e for e in after if isinstance(e, Impression)]
    assert calls and all(isinstance(e.request_id, str) for e in imps)
    old_ids = {e.request_id for e in before if isinstance(e, Impression)}
    late = [e for e in after if isinstance(e, Action) and not isinstance(e.request_id, str)]
    assert late and all(e.request_id in old_ids for e in late)  # warm-up requests' actions land later
    sim.set_recommender(None)
    assert all(not isinstance(e.request_id, str) for e in sim.run(1300.0) if isinstance(e, Impression))
