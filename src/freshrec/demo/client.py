"""The simulated users' side of the closed loop, over HTTP like any client.

:class:`HttpRecommender` is the simulator's recommender: each request becomes a POST to
``/v1/recommend`` (the server logs the impressions itself, so the simulator only draws the
users' reactions to what was shown). :class:`EventPoster` sends the users' actions and the
catalog's lifecycle events to ``/v1/events``. Both count latency and errors exactly; a failed
request shows nothing and is counted, never retried into a duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx
import numpy as np

from freshrec.sim import Simulator
from freshrec.sim.policies import Recommendation
from freshrec.stream import Action, ItemLifecycle, encode_json

__all__ = ["EventPoster", "HttpRecommender", "ServerMetrics"]


class HttpRecommender:
    def __init__(self, client: httpx.Client, sim: Simulator) -> None:
        self.client = client
        self.sim = sim
        self.latencies_ms: list[float] = []
        self.requests = 0
        self.errors = 0
        self.last_error = ""

    def recommend(self, user_id, k, now, context) -> Recommendation:  # type: ignore[no-untyped-def]
        body = {"user_id": user_id, "user_features": self.sim.user_features(user_id), "context": context,
                "k": k, "event_time": now}  # fmt: skip
        self.requests += 1
        t0 = time.perf_counter()
        try:
            r = self.client.post("/v1/recommend", json=body)
            ok = r.status_code == 200
            if not ok:
                self.last_error = f"{r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            ok, self.last_error = False, f"{type(exc).__name__}: {exc}"
        self.latencies_ms.append((time.perf_counter() - t0) * 1000)
        if not ok:
            self.errors += 1
            return Recommendation(request_id=None, item_ids=[], logged=False, model_version="error")
        data = r.json()
        return Recommendation(request_id=data["request_id"], item_ids=[i["item_id"] for i in data["items"]],
                              logged=True, model_version=data["model"]["version"])  # fmt: skip

    def latency_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class EventPoster:
    """Posts actions and item lifecycle events in batches (the simulator's impressions were
    logged by the server)."""

    def __init__(self, client: httpx.Client, max_events: int = 5_000) -> None:
        self.client = client
        self.max_events = max_events
        self.posted = 0
        self.errors = 0
        self.last_error = ""

    def post(self, events: Sequence[object]) -> None:
        mine = [e for e in events if isinstance(e, (Action, ItemLifecycle))]
        for lo in range(0, len(mine), self.max_events):
            part = mine[lo : lo + self.max_events]
            try:
                r = self.client.post("/v1/events", content=encode_json(part),
                                     headers={"content-type": "application/json"})  # fmt: skip
                ok = r.status_code == 200
                if not ok:
                    self.last_error = f"{r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as exc:
                ok, self.last_error = False, f"{type(exc).__name__}: {exc}"
            if ok:
                self.posted += len(part)
            else:
                self.errors += 1


class ServerMetrics:
    """A scrape of the server's ``/metrics``: counters summed over the labels asked for."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.samples: list[tuple[str, dict[str, str], float]] = []
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                self.samples.append((s.name, s.labels, s.value))

    def total(self, name: str, **labels: str) -> float:
        return sum(v for n, lab, v in self.samples if n == name and all(lab.get(k) == x for k, x in labels.items()))

    def quantile(self, name: str, q: float, **labels: str) -> float:
        """``histogram_quantile`` (linear within a bucket) of a histogram, labels matched."""
        buckets: dict[float, float] = {}
        for n, lab, v in self.samples:
            if n == f"{name}_bucket" and all(lab.get(k) == x for k, x in labels.items()):
                le = float(lab["le"])
                buckets[le] = buckets.get(le, 0.0) + v
        if not buckets:
            return float("nan")
        edges = sorted(buckets)
        total = buckets[edges[-1]]
        if total <= 0:
            return float("nan")
        rank, lo, prev = q * total, 0.0, 0.0
        for le in edges:
            if buckets[le] >= rank:
                if le == float("inf"):
                    return lo
                return lo + (le - lo) * (rank - prev) / max(buckets[le] - prev, 1e-12)
            lo, prev = le, buckets[le]
        return edges[-2] if len(edges) > 1 else float("nan")
