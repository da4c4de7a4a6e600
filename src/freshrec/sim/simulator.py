"""The simulator: a seeded live-commerce world that writes the events of ``stream.events``.

    sim = Simulator(SimConfig(seed=7))
    events = sim.run(until=3600.0)          # every event with event_time < 3600, in order
    for batch in sim.batches(until=7200.0):  # or chunk by chunk
        ...                                 # to the event log, a topic per kind (docs/simulator.md)

Contract:
* Events come in event-time order (ties: listed, updated, impression, action, ended), with
  ``event_id`` increasing by one from 0. Every action refers to an item shown in its request
  (same ``request_id``) and comes strictly later than that impression; an item is shown only
  while live (after its ``listed`` event, before its ``ended`` event); bids, carts and
  purchases come only while the item is live, a click may land just after it ends.
* Determinism: same config (seed included) = same events, bit for bit, whatever the sizes of
  the steps in which they are asked for: the world is generated in fixed chunks of
  ``chunk_seconds`` on a grid from ``start_time`` and buffered. Items, users and sessions come
  from their own random streams, so they are the same whatever policy shows the slates.
* A closed-loop recommender is called once per request, in event-time order, and sees the
  world as of the start of the chunk being generated (up to ``chunk_seconds`` behind).
* Feature dicts are shared between events (one per user, item and context) to keep
  generation fast: treat events as read-only.

Each chunk [t0, t1): new users and items (Poisson); due item ends, updates and delayed actions
from a pending queue; new sessions (Poisson, users by activity), each a geometric number of
requests; the due requests' slates (policy), impressions, and their outcomes drawn at once
from the ground truth (clicks and follow-ups pushed on the pending queue with their delays).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from freshrec.errors import ConfigError, InputError
from freshrec.sim.config import SimConfig
from freshrec.sim.policies import (
    BuiltinPolicy,
    OraclePolicy,
    PopularityPolicy,
    RandomPolicy,
    Recommendation,
    RecommenderLike,
)
from freshrec.sim.world import DEVICES, World, sigmoid
from freshrec.stream.events import Action, Event, Id, Impression, ItemLifecycle

__all__ = ["SimStats", "Simulator"]

# pending-queue kinds; the tie-break order of events at equal times is by these priorities
_LISTED, _UPDATED, _IMPRESSION, _CLICK, _BID, _CART, _PURCHASE, _ENDED = range(8)
_PRIO = np.array([0, 1, 2, 3, 3, 3, 3, 4], np.int8)
_ACTION_NAME = {_CLICK: "click", _BID: "bid", _CART: "add_to_cart", _PURCHASE: "purchase"}
_BID_STEP = (0.01, 0.10)  # a bid raises the current price by 1-10%


@dataclass
class SimStats:
    """Counters since the start (of generated events, including buffered ones)."""

    chunks: int = 0
    users: int = 0
    sessions: int = 0
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    bids: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    items_listed: int = 0
    items_updated: int = 0
    items_ended: int = 0
    followups_after_end: int = 0  # follow-ups not emitted because the item had ended
    shown_not_live: int = 0  # items a recommender showed that were unknown or not live
    empty_slots: int = 0  # slots a policy could not fill (fewer live items than k)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Queue:
    """Pending events as parallel numpy columns; ``pop(t)`` takes those due before ``t`` in
    (time, push order)."""

    def __init__(self, **dtypes: Any) -> None:
        self.cols = {k: np.empty(0, dt) for k, dt in dtypes.items()}
        self.cols["seq"] = np.empty(0, np.int64)
        self._seq = 0

    def push(self, **cols: np.ndarray) -> None:
        n = len(cols["time"])
        if n == 0:
            return
        cols["seq"] = np.arange(self._seq, self._seq + n)
        self._seq += n
        for k, v in self.cols.items():
            self.cols[k] = np.concatenate([v, np.asarray(cols[k], v.dtype)])

    def pop(self, t: float) -> dict[str, np.ndarray]:
        due = self.cols["time"] < t
        out = {k: v[due] for k, v in self.cols.items()}
        self.cols = {k: v[~due] for k, v in self.cols.items()}
        order = np.lexsort((out["seq"], out["time"]))
        return {k: v[order] for k, v in out.items()}

    def __len__(self) -> int:
        return len(self.cols["time"])


class Simulator:
    """A seeded live-commerce world producing events in event-time order (see module doc).

    Args:
        config: the world's knobs; default :class:`SimConfig()`.
        recommender: a :class:`~freshrec.sim.policies.Recommender` (or a callable with its
            signature) to close the loop; None = the built-in ``config.policy``.
    """

    def __init__(self, config: SimConfig | None = None, recommender: RecommenderLike | None = None) -> None:
        if config is None:
            config = SimConfig()
        if not isinstance(config, SimConfig):
            raise ConfigError(f"Simulator needs a SimConfig, got {type(config).__name__}")
        self.config = cfg = config
        streams = np.random.SeedSequence(cfg.seed).spawn(6)
        r_users, r_items, self._r_sessions, r_policy, self._r_outcomes, r_calib = (
            np.random.default_rng(s) for s in streams
        )
        self.world = world = World(cfg, r_users, r_items)
        self.stats = SimStats()
        t0 = cfg.start_time
        world.add_users(cfg.n_users, t0)
        self._activity_cum = np.cumsum(world.users["activity"][: world.users.n])

        # the initial catalog, in its steady state (length-biased lifetimes, uniform ages)
        mean_life = cfg.item_lifetime_median * math.exp(cfg.item_lifetime_sigma**2 / 2)
        n0 = int(r_items.poisson(cfg.items_per_hour / 3600.0 * mean_life))
        life = world.draw_lifetimes(n0, length_biased=True)
        listed = t0 - r_items.random(n0) * life
        order = np.argsort(listed, kind="stable")
        self._pool = world.add_items(listed[order], life[order])
        world.calibrate(r_calib, self._pool)

        self._pending = _Queue(time=np.float64, kind=np.int8, item=np.int64, user=np.int64, request=np.int64)
        self._pending.push(
            time=world.items["ends"][self._pool], kind=np.full(n0, _ENDED), item=self._pool,
            user=np.zeros(n0), request=np.zeros(n0),
        )  # fmt: skip
        self._requests = _Queue(time=np.float64, user=np.int64, device=np.int8)
        self._initial_listed = self._pool.copy()

        if recommender is not None:
            if not (hasattr(recommender, "recommend") or callable(recommender)):
                raise ConfigError("recommender must have a recommend(user_id, k, now, context) method or be callable")
            self._external = getattr(recommender, "recommend", recommender)
            self._policy: BuiltinPolicy | None = None
            self._model_version: Id | None = None
        else:
            self._external = None
            self._policy = {
                "random": lambda: RandomPolicy(world, r_policy),
                "popularity": lambda: PopularityPolicy(
                    world, cfg.popularity_halflife, 2 * cfg.random_ctr, cfg.popularity_prior_impressions
                ),
                "oracle": lambda: OraclePolicy(world),
            }[cfg.policy]()
            self._model_version = f"sim-{cfg.policy}"
        self._builtin = self._policy  # kept for set_recommender(None)
        self._ext_ids: dict[int, Id] = {}  # request serial -> a recommender's own request id
        self._ext_lo = 0

        self._chunk_index = 0
        self._generated = t0  # the world is generated up to here (a chunk boundary)
        self._returned = t0  # events before this event time have been handed out
        self._buffer: deque[tuple[list[Event], np.ndarray]] = deque()
        self._next_event_id = 0
        self._next_request = 0
        # one context dict per (hour, device), shared by the impressions that have it
        self._context_table = [{"hour": h, "device": d} for h in range(24) for d in DEVICES]

    # ---- public: time -------------------------------------------------------------------------

    def set_recommender(self, recommender: RecommenderLike | None) -> None:
        """Show slates from ``recommender`` from the next chunk on (None: back to the built-in
        policy). A demo warms a model up on the built-in policy's traffic, then closes the loop."""
        if recommender is None:
            if self._builtin is None:
                raise ConfigError("this simulator was built with a recommender and has no built-in policy")
            self._external, self._policy = None, self._builtin
            return
        if not (hasattr(recommender, "recommend") or callable(recommender)):
            raise ConfigError("recommender must have a recommend(user_id, k, now, context) method or be callable")
        self._external = getattr(recommender, "recommend", recommender)
        self._policy = None

    @property
    def now(self) -> float:
        """Event time up to which events have been handed out."""
        return self._returned

    def advance_to(self, t: float) -> list[Event]:
        """Every event with ``now <= event_time < t`` not handed out yet, in order."""
        if not math.isfinite(t):
            raise InputError(f"advance_to: t must be finite, got {t}")
        while self._generated < t:
            self._step()
        out: list[Event] = []
        while self._buffer:
            events, times = self._buffer[0]
            k = int(np.searchsorted(times, t, side="left"))
            if k == len(events):
                out.extend(events)
                self._buffer.popleft()
            else:
                out.extend(events[:k])
                self._buffer[0] = (events[k:], times[k:])
                break
        self._returned = max(self._returned, t)
        return out

    def run(self, until: float) -> list[Event]:
        """Every event from ``now`` up to (excluding) event time ``until``."""
        return self.advance_to(until)

    def batches(self, until: float | None = None) -> Iterator[list[Event]]:
        """Non-empty event batches, one per chunk of event time, until ``until`` (forever if None)."""
        c, t0 = self.config.chunk_seconds, self.config.start_time
        while until is None or self._returned < until:
            nxt = t0 + (math.floor((self._returned - t0) / c + 1e-9) + 1) * c
            batch = self.advance_to(nxt if until is None else min(nxt, until))
            if batch:
                yield batch

    # ---- public: the truth and the catalog ----------------------------------------------------

    def true_ctr(
        self, user_id: int, item_ids: Sequence[Id], now: float | None = None,
        positions: int | Sequence[int] = 0, device: str = "android",
    ) -> np.ndarray:  # fmt: skip
        """Ground-truth P(click) of ``user_id`` for each item shown at ``positions`` (one for all,
        or one per item) at event time ``now`` (default :attr:`now`) on ``device``; 0 for an
        unknown item or one not live at ``now``. Uses the user's state as of their latest
        session start (the state their clicks are drawn from); reads no randomness."""
        u = self._user_index(user_id)
        items = self._item_indices(item_ids)
        t = self._returned if now is None else float(now)
        if device not in DEVICES:
            raise InputError(f"device must be one of {DEVICES}, got {device!r}")
        pos = np.broadcast_to(np.asarray(positions, np.int64), items.shape) if len(items) else items
        if len(items) and (pos < 0).any():
            raise InputError("positions must be >= 0")
        p = np.zeros(len(items))
        ok = items >= 0
        ok[ok] = self.world.live(items[ok], t)
        if ok.any():
            it = items[ok]
            logit = (
                self.world.bias
                + self.world.affinity(np.array([u]), it[None, :])[0]
                + self.world.position_logit(pos[ok])
                + self.world.context_logit(np.array([t]), np.array([DEVICES.index(device)]))
            )
            p[ok] = sigmoid(logit)
        return p

    def live_items(self, now: float | None = None) -> list[str]:
        """IDs of the items live at ``now`` (default :attr:`now`), in listing order."""
        t = self._returned if now is None else float(now)
        n = self.world.items.n
        live = np.flatnonzero(self.world.live(np.arange(n), t))
        return [self.world.item_ids[i] for i in live.tolist()]

    def preferred_category(self, user_ids: Sequence[int]) -> np.ndarray:
        """Each user's current top category (the ground truth, as of their latest session)."""
        users = np.array([self._user_index(u) for u in user_ids], np.int64)
        return self.world.users["interest"][users].argmax(1)

    def user_features(self, user_id: int) -> dict:
        return self.world.user_features[self._user_index(user_id)]

    def item_features(self, item_id: Id) -> dict:
        i = int(self._item_indices([item_id])[0])
        if i < 0:
            raise InputError(f"item_id {item_id!r} is not an item of this world")
        return self.world.item_features[i]

    # ---- one chunk ----------------------------------------------------------------------------

    def _step(self) -> None:
        cfg, world, stats = self.config, self.world, self.stats
        t0 = cfg.start_time + self._chunk_index * cfg.chunk_seconds
        t1 = cfg.start_time + (self._chunk_index + 1) * cfg.chunk_seconds
        self._chunk_index += 1
        dt = t1 - t0

        # 1. arrivals: users, then items (their end goes on the pending queue)
        n_users = int(world.rng_users.poisson(cfg.new_users_per_hour * dt / 3600.0))
        if n_users:
            new = world.add_users(n_users, t0)
            tail = self._activity_cum[-1] + np.cumsum(world.users["activity"][new])
            self._activity_cum = np.concatenate([self._activity_cum, tail])
        n_items = int(world.rng_items.poisson(cfg.items_per_hour * dt / 3600.0))
        listed_t = np.sort(t0 + world.rng_items.random(n_items) * dt)
        new_items = world.add_items(listed_t, world.draw_lifetimes(n_items))
        self._pending.push(
            time=world.items["ends"][new_items], kind=np.full(n_items, _ENDED), item=new_items,
            user=np.zeros(n_items), request=np.zeros(n_items),
        )  # fmt: skip
        self._pool = np.concatenate([self._pool, new_items])
        listed_items = np.concatenate([self._initial_listed, new_items])
        listed_times = np.concatenate([np.full(len(self._initial_listed), t0), listed_t])
        self._initial_listed = self._initial_listed[:0]

        # 2. sessions starting now queue their requests; take the requests due in this chunk
        self._start_sessions(t0, t1)
        req = self._requests.pop(t1)
        R = len(req["time"])
        serials = self._next_request + np.arange(R)
        self._next_request += R
        stats.requests += R

        # 3. slates: (R, k) item indices, -1 = nothing shown in that slot
        if self._policy is not None:
            self._policy.begin_chunk(t0, t1)
            slates = self._policy.select(req["user"], req["time"], cfg.slate_size, self._pool, t0, t1)
            logged = np.zeros(R, bool)
            versions: list[Id | None] | None = None
        else:
            slates, logged, versions = self._ask_recommender(req, serials)
        r_idx, pos = np.nonzero(slates >= 0)  # (M,) impressions, by request then position
        imp = {
            "item": slates[r_idx, pos], "pos": pos, "user": req["user"][r_idx], "time": req["time"][r_idx],
            "device": req["device"][r_idx], "serial": serials[r_idx], "row": r_idx,
        }  # fmt: skip
        stats.empty_slots += int((slates < 0).sum()) if self._policy is not None else 0
        stats.impressions += len(r_idx)

        # 4. outcomes of these impressions, delivered later through the pending queue
        self._draw_outcomes(imp)

        # 5. item ends, price updates and actions due in this chunk
        due = self._pending.pop(t1)
        values = self._action_values(due)
        if self._policy is not None:
            self._policy.observe(imp["item"], due["item"][due["kind"] == _CLICK])

        # 6. the chunk's events, in order
        own = ~logged[r_idx]  # impressions the simulator writes (not logged by a recommender)
        self._buffer.append(self._build(listed_items, listed_times, due, values, imp, own, versions))

        # 7. after the events are built: bids raise prices (announced at t1), ended items leave
        self._apply_bids(due, values, t1)
        self._pool = self._pool[world.items["ends"][self._pool] >= t1]
        self._forget_request_ids()
        self._generated = t1
        stats.chunks += 1
        stats.users = world.users.n

    def _start_sessions(self, t0: float, t1: float) -> None:
        cfg, world, rng = self.config, self.world, self._r_sessions
        dt = t1 - t0
        total = float(self._activity_cum[-1])
        rate = total * cfg.sessions_per_user_per_day / 86_400.0 * world.traffic_factor(0.5 * (t0 + t1))
        ns = int(rng.poisson(rate * dt))
        self.stats.sessions += ns
        if ns == 0:
            return
        start = np.sort(t0 + rng.random(ns) * dt)  # (S,)
        users = np.searchsorted(self._activity_cum, rng.random(ns) * total, side="right")
        users = np.minimum(users, world.users.n - 1)  # (S,) chosen by activity
        devices = world.session_devices(users, rng)
        n_req = rng.geometric(1.0 / cfg.requests_per_session, ns)  # (S,) >= 1
        sess = np.repeat(np.arange(ns), n_req)  # (Q,) session of each request
        first = np.cumsum(n_req) - n_req  # (S,) index of each session's first request
        gaps = rng.exponential(cfg.request_gap_seconds, len(sess))
        gaps[first] = 0.0
        cs = np.cumsum(gaps)
        times = start[sess] + (cs - cs[first][sess])
        self._requests.push(time=times, user=users[sess], device=devices[sess])
        uniq, at = np.unique(users, return_index=True)  # earliest session of each user (start sorted)
        world.advance_users(uniq, start[at])

    def _ask_recommender(
        self, req: dict[str, np.ndarray], serials: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[Id | None]]:
        k, R = self.config.slate_size, len(serials)
        slates = np.full((R, k), -1, np.int64)
        logged = np.zeros(R, bool)
        versions: list[Id | None] = [None] * R
        for r in range(R):
            t, dev = float(req["time"][r]), int(req["device"][r])
            context = dict(self._context(t, dev))  # a copy: the recommender may keep or change it
            rec = self._external(int(req["user"][r]), k, t, context)
            ids = _check_recommendation(rec, k)
            idx = self._item_indices(ids)
            slates[r, : len(idx)] = idx
            self.stats.shown_not_live += int((idx < 0).sum())
            rid = rec.request_id
            if rid is None:
                if rec.logged:
                    raise InputError("recommendation.request_id: required when logged=True")
                rid = int(serials[r])
            self._ext_ids[int(serials[r])] = rid
            logged[r] = rec.logged
            versions[r] = rec.model_version
        return slates, logged, versions

    def _draw_outcomes(self, imp: dict[str, np.ndarray]) -> None:
        cfg, world, rng, stats = self.config, self.world, self._r_outcomes, self.stats
        M = len(imp["item"])
        live = world.live(imp["item"], imp["time"])  # (M,)
        stats.shown_not_live += int((~live).sum())
        aff = np.zeros(M)
        aff[live] = world.affinity(imp["user"][live], imp["item"][live][:, None])[:, 0]
        logit = world.bias + aff + world.position_logit(imp["pos"]) + world.context_logit(imp["time"], imp["device"])
        p = np.where(live, sigmoid(logit), 0.0)
        c = np.flatnonzero(rng.random(M) < p)  # clicked impressions
        n = len(c)
        items, users, serial, t_imp = imp["item"][c], imp["user"][c], imp["serial"][c], imp["time"][c]
        horizon = t_imp + cfg.max_action_delay  # no action comes later than this after its impression
        t_click = t_imp + np.minimum(
            _lognormal(rng, cfg.click_delay_median, cfg.click_delay_sigma, n), cfg.max_action_delay
        )
        p_follow = sigmoid(math.log(cfg.followup_rate / (1 - cfg.followup_rate)) + 0.5 * aff[c])
        wants = rng.random(n) < p_follow
        t_follow = t_click + _lognormal(rng, cfg.followup_delay_median, cfg.followup_delay_sigma, n)
        ends = world.items["ends"][items]
        auction = world.items["auction"][items]
        follow = wants & (t_follow < ends) & (t_follow <= horizon)
        buys = rng.random(n) < cfg.purchase_given_cart
        t_buy = t_follow + _lognormal(rng, cfg.followup_delay_median, cfg.followup_delay_sigma, n)
        cart = follow & ~auction
        buy = cart & buys & (t_buy < ends) & (t_buy <= horizon)
        stats.followups_after_end += int((wants & ~follow).sum() + (cart & buys & ~buy).sum())
        f, b = np.flatnonzero(follow), np.flatnonzero(buy)
        self._pending.push(
            time=np.concatenate([t_click, t_follow[f], t_buy[b]]),
            kind=np.concatenate([np.full(n, _CLICK), np.where(auction[f], _BID, _CART), np.full(len(b), _PURCHASE)]),
            item=np.concatenate([items, items[f], items[b]]),
            user=np.concatenate([users, users[f], users[b]]),
            request=np.concatenate([serial, serial[f], serial[b]]),
        )

    def _action_values(self, due: dict[str, np.ndarray]) -> np.ndarray:
        """Money attached to each due action: the current price (a bid adds 1-10%); 0 for a click."""
        kind = due["kind"]
        price = self.world.items["price"][due["item"]]
        values = np.where((kind == _CART) | (kind == _PURCHASE), price, 0.0)
        bid = np.flatnonzero(kind == _BID)
        raise_by = self._r_outcomes.uniform(*_BID_STEP, len(bid))
        values[bid] = np.round(price[bid] * (1.0 + raise_by), 2)
        return values

    def _apply_bids(self, due: dict[str, np.ndarray], values: np.ndarray, t1: float) -> None:
        bid = due["kind"] == _BID
        if not bid.any():
            return
        items, amounts = due["item"][bid], values[bid]
        order = np.lexsort((amounts, items))
        last = np.r_[items[order][1:] != items[order][:-1], True]  # highest bid per item
        items, amounts = items[order][last], amounts[order][last]
        still = self.world.items["ends"][items] > t1
        items, amounts = items[still], amounts[still]
        for i, a in zip(items.tolist(), amounts.tolist(), strict=True):
            if a > self.world.items["price"][i]:
                self.world.set_price(i, a)
        n = len(items)
        self._pending.push(
            time=np.full(n, t1), kind=np.full(n, _UPDATED), item=items, user=np.zeros(n), request=np.zeros(n)
        )

    # ---- events -------------------------------------------------------------------------------

    def _build(
        self, listed_items: np.ndarray, listed_times: np.ndarray, due: dict[str, np.ndarray],
        values: np.ndarray, imp: dict[str, np.ndarray], own: np.ndarray, versions: list[Id | None] | None,
    ) -> tuple[list[Event], np.ndarray]:  # fmt: skip
        world, stats = self.world, self.stats
        item_ids, item_feats, user_feats = world.item_ids, world.item_features, world.user_features
        ii = {k: v[own] for k, v in imp.items()}  # impressions the simulator writes
        times = np.concatenate([listed_times, due["time"], ii["time"]])
        prio = np.concatenate(
            [
                np.full(len(listed_times), _PRIO[_LISTED]),
                _PRIO[due["kind"]],
                np.full(len(ii["time"]), _PRIO[_IMPRESSION]),
            ]
        )
        order = np.lexsort((np.arange(len(times)), prio, times))
        rank = np.empty(len(times), np.int64)
        rank[order] = np.arange(len(times))
        eids = (self._next_event_id + rank).tolist()
        self._next_event_id += len(times)
        nl, nd = len(listed_times), len(due["time"])

        events: list[Event] = [
            ItemLifecycle(event_id=e, event_time=t, item_id=item_ids[i], status="listed", features=item_feats[i])
            for e, t, i in zip(eids[:nl], listed_times.tolist(), listed_items.tolist(), strict=True)
        ]
        kinds = due["kind"]
        acts = np.flatnonzero((kinds >= _CLICK) & (kinds <= _PURCHASE))
        rids: list[Id | None] = [None] * nd  # item ends and updates belong to no request
        for j, rq in zip(acts.tolist(), self._request_ids(due["request"][acts]), strict=True):
            rids[j] = rq
        for e, t, kind, i, u, rq, v in zip(
            eids[nl : nl + nd], due["time"].tolist(), due["kind"].tolist(), due["item"].tolist(),
            due["user"].tolist(), rids, values.tolist(), strict=True,
        ):  # fmt: skip
            if kind in (_ENDED, _UPDATED):
                status = "ended" if kind == _ENDED else "updated"
                events.append(
                    ItemLifecycle(event_id=e, event_time=t, item_id=item_ids[i], status=status, features=item_feats[i])
                )
            else:
                events.append(
                    Action(
                        event_id=e,
                        request_id=rq,
                        event_time=t,
                        user_id=u,
                        item_id=item_ids[i],
                        type=_ACTION_NAME[kind],
                        value=v,
                    )
                )
        stats.items_listed += nl
        stats.items_ended += int((kinds == _ENDED).sum())
        stats.items_updated += int((kinds == _UPDATED).sum())
        stats.clicks += int((kinds == _CLICK).sum())
        stats.bids += int((kinds == _BID).sum())
        stats.add_to_carts += int((kinds == _CART).sum())
        stats.purchases += int((kinds == _PURCHASE).sum())

        ctx = self._contexts(ii["time"], ii["device"])
        if versions is None:
            mvs: list[Id | None] = [self._model_version] * len(ii["time"])
        else:
            mvs = [versions[r] for r in ii["row"].tolist()]
        events.extend(
            Impression(
                event_id=e, request_id=rq, event_time=t, user_id=u, item_id=item_ids[i], position=p,
                model_version=mv, user_features=user_feats[u], item_features=item_feats[i], context=cx,
            )
            for e, rq, t, u, i, p, mv, cx in zip(
                eids[nl + nd :], self._request_ids(ii["serial"]), ii["time"].tolist(), ii["user"].tolist(),
                ii["item"].tolist(), ii["pos"].tolist(), mvs, ctx, strict=True,
            )
        )  # fmt: skip
        return [events[j] for j in order.tolist()], times[order]

    def _request_ids(self, serials: np.ndarray) -> list[Id]:
        if self._external is None:
            return serials.tolist()
        ext = self._ext_ids
        return [ext.get(s, s) for s in serials.tolist()]  # requests before set_recommender keep theirs

    def _forget_request_ids(self) -> None:
        """Drop recommender request ids no pending action refers to any more."""
        if self._external is None:
            return
        p = self._pending.cols
        acts = p["kind"] != _ENDED
        acts &= p["kind"] != _UPDATED
        keep_from = int(p["request"][acts].min()) if acts.any() else self._next_request
        for s in range(self._ext_lo, keep_from):
            self._ext_ids.pop(s, None)
        self._ext_lo = max(self._ext_lo, keep_from)

    def _context(self, t: float, device: int) -> dict:
        return self._context_table[(int(t // 3600.0) % 24) * len(DEVICES) + device]

    def _contexts(self, times: np.ndarray, devices: np.ndarray) -> list[dict]:
        keys = (np.floor(times / 3600.0) % 24).astype(np.int64) * len(DEVICES) + devices
        table = self._context_table
        return [table[k] for k in keys.tolist()]

    # ---- ids ----------------------------------------------------------------------------------

    def _user_index(self, user_id: int) -> int:
        if isinstance(user_id, bool) or not isinstance(user_id, int | np.integer):
            raise InputError(f"user_id must be an int, got {type(user_id).__name__}")
        if not 0 <= int(user_id) < self.world.users.n:
            raise InputError(f"user_id {user_id} is not a user of this world (0..{self.world.users.n - 1})")
        return int(user_id)

    def _item_indices(self, item_ids: Sequence[Id]) -> np.ndarray:
        n = self.world.items.n
        out = np.full(len(item_ids), -1, np.int64)
        for j, x in enumerate(item_ids):
            if isinstance(x, str) and x.startswith("it") and x[2:].isdigit():
                i = int(x[2:])
                if i < n:
                    out[j] = i
        return out


def _check_recommendation(rec: object, k: int) -> list[Id]:
    if not isinstance(rec, Recommendation):
        raise InputError(f"recommender must return a Recommendation, got {type(rec).__name__}")
    ids = list(rec.item_ids)
    if len(ids) > k:
        raise InputError(f"recommendation.item_ids: {len(ids)} items for a slate of {k}")
    for x in ids:
        if isinstance(x, bool) or not isinstance(x, int | str):
            raise InputError(f"recommendation.item_ids: {x!r} is not an int or str id")
    if len(set(ids)) != len(ids):
        raise InputError("recommendation.item_ids: an item appears twice in one slate")
    if rec.request_id is not None and (isinstance(rec.request_id, bool) or not isinstance(rec.request_id, int | str)):
        raise InputError(f"recommendation.request_id: {rec.request_id!r} is not an int or str id")
    return ids


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return rng.lognormal(math.log(median), sigma, n)
