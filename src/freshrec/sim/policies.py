"""Who picks the slate: the :class:`Recommender` protocol and the built-in vectorized policies.

A closed loop plugs any recommender in (later the serving API)::

    class MyRecommender:
        def recommend(self, user_id, k, now, context) -> Recommendation: ...

    sim = Simulator(SimConfig(), recommender=MyRecommender())

If it answers ``logged=True`` it has written the impressions itself (with its own request id)
and the simulator emits only the actions that refer to that request id; with ``logged=False``
the simulator writes the impressions. A plain callable with the same signature works too.

The built-in policies (``random``, ``popularity``, ``oracle``) choose whole chunks of requests at
once with numpy and never call back into Python per request:

* ``random``: k distinct items, uniformly from the items live at the request's time.
* ``popularity``: the k live items with the highest smoothed recent click-through rate
  ``(clicks + a) / (impressions + n)``, counts halved every ``popularity_halflife`` seconds;
  the prior ``a / n`` is twice ``random_ctr``, so a fresh item is tried before it is judged.
* ``oracle``: the k live items of highest true affinity for this user (the ground truth);
  an upper bound for experiments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from freshrec.sim.world import World
from freshrec.stream.events import Id

__all__ = ["Recommendation", "Recommender"]

_ORACLE_BLOCK = 4_000_000  # (requests x live items) scores per block: ~32 MB of float64


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A recommender's answer to one request.

    Args:
        request_id: the id the impressions carry; None lets the simulator assign one (only with
            ``logged=False``).
        item_ids: the slate, best first; position = index. At most ``k``, no repeats.
        logged: True if the recommender wrote the impression events itself.
        model_version: stamped on the impressions the simulator writes (``logged=False``).
    """

    request_id: Id | None
    item_ids: Sequence[Id] = field(default_factory=tuple)
    logged: bool = False
    model_version: Id | None = None


@runtime_checkable
class Recommender(Protocol):
    """Anything that answers one recommendation request (the serving API, a test double)."""

    def recommend(self, user_id: Id, k: int, now: float, context: dict[str, Any]) -> Recommendation: ...


RecommenderLike = Recommender | Callable[[Id, int, float, dict[str, Any]], Recommendation]


class BuiltinPolicy:
    """A policy that picks slates for a whole chunk of requests at once."""

    name = "builtin"

    def begin_chunk(self, t0: float, t1: float) -> None:
        """Called once per chunk before :meth:`select`."""

    def select(
        self, users: np.ndarray, times: np.ndarray, k: int, pool: np.ndarray, t0: float, t1: float
    ) -> np.ndarray:
        """(R, k) item indices for requests of ``users`` (R,) at ``times`` (R,); -1 = empty slot.
        ``pool`` holds every item live at some instant of [t0, t1); each chosen item must be live
        at its request's time."""
        raise NotImplementedError

    def observe(self, shown: np.ndarray, clicked: np.ndarray) -> None:
        """Items shown (impressions emitted) and clicked (clicks emitted) in the last chunk."""


class RandomPolicy(BuiltinPolicy):
    name = "random"

    def __init__(self, world: World, rng: np.random.Generator) -> None:
        self.world, self.rng = world, rng

    def select(self, users, times, k, pool, t0, t1):
        R, N, rng = len(users), len(pool), self.rng
        out = pool[rng.integers(0, N, (R, k))] if N else np.full((R, k), -1, np.int64)  # (R, k)
        tt = np.broadcast_to(times[:, None], out.shape)
        for _ in range(64):  # redraw the few slots that repeat or are not live yet / any more
            bad = (~self.world.live(out, tt)) | _repeats(out)
            if not bad.any() or N == 0:
                break
            out[bad] = pool[rng.integers(0, N, int(bad.sum()))]
        else:  # fewer live items than k (a tiny world): leave the rest empty
            out[bad] = -1
        return out


class PopularityPolicy(BuiltinPolicy):
    name = "popularity"

    def __init__(self, world: World, halflife: float, prior_ctr: float, prior_n: float) -> None:
        self.world = world
        self.halflife = halflife
        self.prior_clicks, self.prior_n = prior_ctr * prior_n, prior_n
        self.clicks = np.zeros(0)
        self.shows = np.zeros(0)
        self._t: float | None = None

    def begin_chunk(self, t0, t1):
        n = self.world.items.n
        if len(self.clicks) < n:  # new items start at zero counts
            self.clicks = np.concatenate([self.clicks, np.zeros(n - len(self.clicks))])
            self.shows = np.concatenate([self.shows, np.zeros(n - len(self.shows))])
        if self._t is not None:
            f = 0.5 ** ((t0 - self._t) / self.halflife)
            self.clicks *= f
            self.shows *= f
        self._t = t0

    def select(self, users, times, k, pool, t0, t1):
        it = self.world.items
        score = (self.clicks[pool] + self.prior_clicks) / (self.shows[pool] + self.prior_n)
        ranked = pool[np.lexsort((pool, -score))]  # best first, ties by index
        changing = int(((it["listed"][pool] > t0) | (it["ends"][pool] < t1)).sum())
        cand = ranked[: k + changing]  # (K',) enough to fill k even if every changing item is out
        valid = self.world.live(cand[None, :], times[:, None])  # (R, K')
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # first k valid per row
        out = cand[order]
        out[~np.take_along_axis(valid, order, axis=1)] = -1
        return out

    def observe(self, shown, clicked):
        np.add.at(self.shows, shown, 1.0)
        np.add.at(self.clicks, clicked, 1.0)


class OraclePolicy(BuiltinPolicy):
    name = "oracle"

    def __init__(self, world: World) -> None:
        self.world = world

    def select(self, users, times, k, pool, t0, t1):
        R, N = len(users), len(pool)
        out = np.full((R, k), -1, np.int64)
        if N == 0:
            return out
        step = max(1, _ORACLE_BLOCK // N)
        kk = min(k, N)
        for lo in range(0, R, step):
            u, t = users[lo : lo + step], times[lo : lo + step]
            s = self.world.affinity_all(u, pool)  # (r, N)
            live = self.world.live(pool[None, :], t[:, None])  # (r, N)
            s[~live] = -np.inf
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]  # (r, kk) unordered
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), 1, kind="stable"), 1)
            ok = np.isfinite(np.take_along_axis(s, top, 1))
            out[lo : lo + step, :kk] = np.where(ok, pool[top], -1)
        return out


def _repeats(out: np.ndarray) -> np.ndarray:
    """Mask of slots whose item already appears earlier in the same row."""
    order = np.argsort(out, axis=1, kind="stable")
    s = np.take_along_axis(out, order, 1)
    dup_sorted = np.zeros(out.shape, bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, 1)
    return dup
