"""The hidden world: users, sellers and items with their true parameters, and the click model.

Ground truth (all in logit units; ``sigmoid`` turns a logit into a probability)::

    affinity(u, i)  = interest[u, category[i]]          # drifts, sometimes jumps
                    + <latent[u], latent[i]>            # taste beyond categories
                    + quality[i] + seller_quality[seller[i]]
    P(click)        = sigmoid(bias + affinity - position_decay * log1p(position)
                              + hour_effect * cos(2 pi (hour - 21) / 24) + device_effect[device])
    P(followup | click) = sigmoid(logit(followup_rate) + affinity / 2)

``bias`` is solved at start so a uniformly random slate clicks at ``random_ctr``. Interests
follow an Ornstein-Uhlenbeck process whose stationary law is the initial one, and a jump swaps
the user's top category with a random other one (a permutation, so the law is unchanged): the
random-policy CTR stays calibrated however long the world runs. A user's state advances only
when one of their sessions starts (lazily, in bulk), so reading the truth never consumes
randomness. Item lifetimes of the initial catalog are drawn length-biased with a uniform age,
so the catalog starts in its steady state rather than empty.

Imports numpy and the sim config only.
"""

from __future__ import annotations

import math

import numpy as np

from freshrec.sim.config import SimConfig

__all__ = ["DEVICES", "World"]

DEVICES: tuple[str, ...] = ("android", "ios", "web")
_DEVICE_P = np.array([0.40, 0.45, 0.15])  # primary device shares of a mobile-first shop
_DEVICE_SIGN = np.array([0.0, 1.0, -1.0])  # ios +effect, web -effect, android 0
_AGE_P = np.array([0.08, 0.22, 0.25, 0.20, 0.13, 0.08, 0.04])  # 7 age buckets
_N_SEGMENTS = 8
_STAY_ON_DEVICE = 0.85  # a session uses the user's primary device this often
_CALIBRATION_SAMPLES = 200_000


class _Columns:
    """Parallel numpy columns that grow by doubling; ``n`` rows are valid."""

    def __init__(self, specs: dict[str, tuple[np.dtype | type, tuple[int, ...]]], capacity: int) -> None:
        self.n = 0
        self._specs = specs
        self._cols = {k: np.zeros((max(capacity, 16), *shape), dt) for k, (dt, shape) in specs.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._cols[name]  # full buffer: index it with valid rows only

    def append(self, n: int, **values: np.ndarray) -> np.ndarray:
        """Add ``n`` rows (every column given); returns their indices."""
        if self.n + n > len(next(iter(self._cols.values()))):
            cap = max(2 * (self.n + n), 16)
            for k, col in self._cols.items():
                grown = np.zeros((cap, *col.shape[1:]), col.dtype)
                grown[: self.n] = col[: self.n]
                self._cols[k] = grown
        for k in self._specs:
            self._cols[k][self.n : self.n + n] = values[k]
        idx = np.arange(self.n, self.n + n)
        self.n += n
        return idx


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class World:
    """Users, sellers and items with their hidden parameters. Index = position in the columns."""

    def __init__(self, cfg: SimConfig, rng_users: np.random.Generator, rng_items: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng_users = rng_users
        self.rng_items = rng_items
        C, D, S = cfg.n_categories, cfg.latent_dim, cfg.n_sellers
        self.cat_weights = _zipf(C, 0.8)  # a few big categories, a long tail
        self.cat_price = rng_items.normal(0.0, 0.5, C)  # some categories are pricier
        self.seller_weights = _zipf(S, 1.0)  # a few power sellers list most items
        self.seller_quality = rng_items.normal(0.0, cfg.seller_quality_sigma, S)
        self.seller_ids = [f"s{j}" for j in range(S)]
        self.users = _Columns(
            {
                "interest": (np.float64, (C,)),  # (U, C)
                "latent": (np.float64, (D,)),  # (U, D)
                "activity": (np.float64, ()),
                "updated": (np.float64, ()),  # event time the state was last advanced to
                "device": (np.int8, ()),
                "segment": (np.int16, ()),
                "age": (np.int8, ()),
            },
            cfg.n_users,
        )
        self.items = _Columns(
            {
                "category": (np.int32, ()),
                "seller": (np.int32, ()),
                "latent": (np.float64, (D,)),  # (I, D)
                "quality": (np.float64, ()),
                "price": (np.float64, ()),
                "listed": (np.float64, ()),
                "ends": (np.float64, ()),
                "auction": (np.bool_, ()),
            },
            1024,
        )
        self.user_features: list[dict] = []
        self.item_ids: list[str] = []
        self.item_features: list[dict] = []
        self.activity_total = 0.0
        self.bias = 0.0

    # ---- population -------------------------------------------------------------------------

    def add_users(self, n: int, now: float) -> np.ndarray:
        cfg, rng = self.cfg, self.rng_users
        C, D = cfg.n_categories, cfg.latent_dim
        interest = rng.normal(0.0, cfg.interest_sigma, (n, C))  # (n, C) stationary law
        latent = rng.normal(0.0, 1.0 / math.sqrt(D), (n, D))  # (n, D)
        s = cfg.user_activity_sigma
        activity = rng.lognormal(-s * s / 2, s, n)  # mean 1
        device = rng.choice(len(DEVICES), size=n, p=_DEVICE_P).astype(np.int8)
        age = rng.choice(len(_AGE_P), size=n, p=_AGE_P).astype(np.int8)
        segment = (interest.argmax(1) * _N_SEGMENTS // C).astype(np.int16)  # home-category cluster
        idx = self.users.append(
            n, interest=interest, latent=latent, activity=activity, updated=now, device=device,
            segment=segment, age=age,
        )  # fmt: skip
        self.user_features.extend(
            {"segment": sg, "age_bucket": a} for sg, a in zip(segment.tolist(), age.tolist(), strict=True)
        )
        self.activity_total += float(activity.sum())
        return idx

    def add_items(self, listed: np.ndarray, lifetime: np.ndarray) -> np.ndarray:
        """New items listed at ``listed`` (sorted) living ``lifetime`` seconds; returns indices."""
        cfg, rng = self.cfg, self.rng_items
        n = len(listed)
        cat = rng.choice(cfg.n_categories, size=n, p=self.cat_weights).astype(np.int32)
        seller = rng.choice(cfg.n_sellers, size=n, p=self.seller_weights).astype(np.int32)
        latent = rng.normal(0.0, cfg.latent_sigma, (n, cfg.latent_dim))  # (n, D)
        quality = rng.normal(0.0, cfg.item_quality_sigma, n)
        price = np.round(np.exp(np.log(cfg.price_median) + self.cat_price[cat] + rng.normal(0, cfg.price_sigma, n)), 2)
        price = np.maximum(price, 0.01)
        auction = rng.random(n) < cfg.auction_share
        idx = self.items.append(
            n, category=cat, seller=seller, latent=latent, quality=quality, price=price, listed=listed,
            ends=listed + lifetime, auction=auction,
        )  # fmt: skip
        self.item_ids.extend(f"it{i}" for i in idx.tolist())
        self.item_features.extend(
            self._item_feature_dict(c, s, p, a)
            for c, s, p, a in zip(cat.tolist(), seller.tolist(), price.tolist(), auction.tolist(), strict=True)
        )
        return idx

    def set_price(self, item: int, price: float) -> None:
        self.items["price"][item] = price
        i = self.items
        self.item_features[item] = self._item_feature_dict(
            int(i["category"][item]), int(i["seller"][item]), price, bool(i["auction"][item])
        )

    def _item_feature_dict(self, cat: int, seller: int, price: float, auction: bool) -> dict:
        bucket = min(max(int(math.log2(price)) if price >= 1 else 0, 0), 15)
        return {
            "category": cat,
            "seller_id": self.seller_ids[seller],
            "price_bucket": bucket,
            "format": "auction" if auction else "fixed",
            "price": price,
        }

    def draw_lifetimes(self, n: int, length_biased: bool = False) -> np.ndarray:
        cfg = self.cfg
        mu, s = math.log(cfg.item_lifetime_median), cfg.item_lifetime_sigma
        if length_biased:  # the lifetimes of items alive at a random instant
            mu += s * s
        return np.maximum(self.rng_items.lognormal(mu, s, n), 1.0)  # at least a second

    # ---- drift ------------------------------------------------------------------------------

    def advance_users(self, users: np.ndarray, now: np.ndarray) -> None:
        """Advance each (unique) user's interest to event time ``now``: OU drift, then jumps."""
        cfg, rng, U = self.cfg, self.rng_users, self.users
        dt = np.maximum(now - U["updated"][users], 0.0)  # (R,)
        tau = cfg.interest_timescale_days * 86_400.0
        a = np.exp(-dt / tau)[:, None]  # (R, 1)
        x = U["interest"][users]  # (R, C)
        noise = rng.normal(0.0, 1.0, x.shape)
        x = x * a + cfg.interest_sigma * np.sqrt(1.0 - a * a) * noise
        jumps = rng.poisson(cfg.jumps_per_user_per_day * dt / 86_400.0) > 0  # (R,)
        C = cfg.n_categories
        top = x.argmax(1)
        other = (top + 1 + rng.integers(0, C - 1, len(users))) % C  # a category other than top
        r = np.flatnonzero(jumps)
        x[r, top[r]], x[r, other[r]] = x[r, other[r]], x[r, top[r]]  # swap: keeps the law
        U["interest"][users] = x
        U["updated"][users] = now

    # ---- truth ------------------------------------------------------------------------------

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(R, K) affinity of user ``users[r]`` for item ``items[r, k]``."""
        U, it = self.users, self.items
        cat = it["category"][items]  # (R, K)
        inter = np.take_along_axis(U["interest"][users], cat, axis=1)  # (R, K)
        lat = np.einsum("rd,rkd->rk", U["latent"][users], it["latent"][items])  # (R, K)
        return inter + lat + it["quality"][items] + self.seller_quality[it["seller"][items]]

    def affinity_all(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(R, N) affinity of every user in ``users`` (R,) for every item in ``items`` (N,)."""
        U, it = self.users, self.items
        inter = U["interest"][users][:, it["category"][items]]  # (R, N)
        lat = U["latent"][users] @ it["latent"][items].T  # (R, N)
        static = it["quality"][items] + self.seller_quality[it["seller"][items]]  # (N,)
        return inter + lat + static

    def context_logit(self, times: np.ndarray, devices: np.ndarray) -> np.ndarray:
        hour = np.floor(times / 3600.0) % 24
        cfg = self.cfg
        return cfg.hour_effect * np.cos(2 * np.pi * (hour - 21) / 24) + cfg.device_effect * _DEVICE_SIGN[devices]

    def position_logit(self, positions: np.ndarray) -> np.ndarray:
        return -self.cfg.position_decay * np.log1p(positions)

    def live(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Mask: item ``items[...]`` is live at ``times[...]`` (listed <= t < ends)."""
        it = self.items
        return (it["listed"][items] <= times) & (times < it["ends"][items])

    def traffic_factor(self, t: float) -> float:
        hour = (t / 3600.0) % 24
        return 1.0 + self.cfg.diurnal_amplitude * math.cos(2 * math.pi * (hour - 21) / 24)

    def calibrate(self, rng: np.random.Generator, live_items: np.ndarray) -> float:
        """Solve the click bias so a random slate from ``live_items`` clicks at ``random_ctr``."""
        cfg, M = self.cfg, _CALIBRATION_SAMPLES
        n_users = self.users.n
        p_user = self.users["activity"][:n_users] / self.users["activity"][:n_users].sum()
        users = rng.choice(n_users, size=M, p=p_user)
        items = live_items[rng.integers(0, len(live_items), M)]
        pos = rng.integers(0, cfg.slate_size, M)
        hours = np.arange(24)  # request hours weighted by the diurnal traffic curve
        w = 1.0 + cfg.diurnal_amplitude * np.cos(2 * np.pi * (hours - 21) / 24)
        t = (rng.choice(24, size=M, p=w / w.sum()) + 0.5) * 3600.0
        devices = self.session_devices(users, rng)
        z = (
            self.affinity(users, items[:, None])[:, 0] + self.position_logit(pos) + self.context_logit(t, devices)
        )  # (M,)
        lo, hi = -40.0, 20.0
        for _ in range(80):  # bisection on a monotone mean: exact to float precision
            mid = 0.5 * (lo + hi)
            if sigmoid(mid + z).mean() < cfg.random_ctr:
                lo = mid
            else:
                hi = mid
        self.bias = 0.5 * (lo + hi)
        return self.bias

    def session_devices(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        stay = rng.random(len(users)) < _STAY_ON_DEVICE
        other = rng.integers(0, len(DEVICES), len(users))
        return np.where(stay, self.users["device"][users], other).astype(np.int8)


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()
