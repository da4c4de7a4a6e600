"""Prometheus metrics of a serving replica, in one registry per app (tests build many apps).

System: request latency (histogram per endpoint and arm), requests and errors by status, QPS
over a sliding window, events ingested. Sync: each served model's versions, the newest event
time it reflects, and seconds since it last applied an update; rows per table. Business:
impressions and actions per arm (actions credited by request id) and click-through per arm.
Gauges that mirror state (versions, rows, CTR) are computed when /metrics is scraped, not kept
up to date on the request path.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from freshrec.errors import StateError

if TYPE_CHECKING:
    from freshrec.serve.engine import ArmEngine
    from freshrec.serve.items import ItemTailer, LiveItems
    from freshrec.serve.writer import EventWriter

__all__ = ["LATENCY_BUCKETS", "RateMeter", "ServeMetrics"]

# seconds; dense around the 10 ms target so p50/p99 can be read off the histogram
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class RateMeter:
    """Events per second over the last ``window_s`` seconds (one-second buckets)."""

    def __init__(self, window_s: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        sec = int(self._clock())
        with self._lock:
            if self._buckets and self._buckets[-1][0] == sec:
                self._buckets[-1][1] += n
            else:
                self._buckets.append([sec, n])
                while self._buckets and self._buckets[0][0] <= sec - self.window_s:
                    self._buckets.popleft()

    def rate(self) -> float:
        """Mean rate over the last ``window_s`` complete seconds (the current one excluded)."""
        now = int(self._clock())
        with self._lock:
            total = sum(c for s, c in self._buckets if now - self.window_s <= s < now)
        return total / self.window_s


class ServeMetrics:
    """Counters and histograms updated by the app; a collector for state read at scrape time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "freshrec_serve_request_seconds",
            "Request latency, from first byte in to last byte out.",
            ["endpoint", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "freshrec_serve_requests",
            "Requests answered, by status code.",
            ["endpoint", "arm", "status"],
            registry=r,
        )
        self.errors = Counter(
            "freshrec_serve_errors",
            "Requests answered with 4xx or 5xx, by error type.",
            ["endpoint", "status", "error"],
            registry=r,
        )
        self.events = Counter(
            "freshrec_serve_events",
            "Events appended to the event log, by kind and source.",
            ["kind", "source"],
            registry=r,
        )
        self.impressions = Counter("freshrec_serve_impressions", "Impressions by arm.", ["arm"], registry=r)
        self.explored = Counter("freshrec_serve_explored", "Impressions that were exploration picks, by arm.",
                                ["arm"], registry=r)  # fmt: skip
        self.actions = Counter(
            "freshrec_serve_actions",
            "Actions by the arm that served their request ('unknown': a request "
            "this replica did not serve or no longer remembers).",
            ["arm", "type"],
            registry=r,
        )
        self.rates: dict[str, RateMeter] = {}
        self._rates_lock = threading.Lock()

    def rate(self, endpoint: str) -> RateMeter:
        meter = self.rates.get(endpoint)
        if meter is None:
            with self._rates_lock:
                meter = self.rates.setdefault(endpoint, RateMeter())
        return meter

    def watch(
        self,
        engines: dict[str, ArmEngine],
        items: LiveItems,
        tailer: Callable[[], ItemTailer | None],
        writer: Callable[[], EventWriter | None] = lambda: None,
    ) -> None:
        """Register the scrape-time collector over the served state."""
        self.registry.register(_StateCollector(self, engines, items, tailer, writer))


class _StateCollector(Collector):
    def __init__(
        self,
        metrics: ServeMetrics,
        engines: dict[str, ArmEngine],
        items: LiveItems,
        tailer: Callable[[], ItemTailer | None],
        writer: Callable[[], EventWriter | None],
    ) -> None:
        self.metrics = metrics
        self.engines = engines
        self.items = items
        self.tailer = tailer
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        qps = GaugeMetricFamily("freshrec_serve_qps", "Requests per second over the last 10 s.", labels=["endpoint"])
        for endpoint, meter in sorted(self.metrics.rates.items()):
            qps.add_metric([endpoint], meter.rate())
        yield qps

        now = time.time()
        version = GaugeMetricFamily(
            "freshrec_serve_model_version",
            "Sync version the served model reflects.",
            labels=["arm", "model", "kind"],
        )
        event_time = GaugeMetricFamily(
            "freshrec_serve_model_event_time_seconds",
            "Newest event time the served model reflects.",
            labels=["arm", "model"],
        )
        lag = GaugeMetricFamily(
            "freshrec_serve_sync_lag_seconds",
            "Wall seconds since the served model last applied an update.",
            labels=["arm", "model"],
        )
        rows = GaugeMetricFamily(
            "freshrec_serve_table_rows", "Rows in each serving table.", labels=["arm", "model", "table"]
        )
        for arm, engine in self.engines.items():
            for m in engine.state.models():
                version.add_metric([arm, m.name, "sparse"], m.sparse_version)
                version.add_metric([arm, m.name, "dense"], m.dense_version)
                if m.event_time > float("-inf"):
                    event_time.add_metric([arm, m.name], m.event_time)
                lag.add_metric([arm, m.name], max(0.0, now - m.applied_wall))
                try:
                    stats = m.ps.stats()
                except StateError:  # closed: the replica is stopping
                    continue
                for table, st in stats.items():
                    rows.add_metric([arm, m.name, table], st.rows)
        yield from (version, event_time, lag, rows)

        ctr = GaugeMetricFamily("freshrec_serve_ctr", "Clicks / impressions per arm since start.", labels=["arm"])
        shown = {s.labels["arm"]: s.value for s in _samples(self.metrics.impressions, "_total")}
        clicks = {
            s.labels["arm"]: s.value for s in _samples(self.metrics.actions, "_total") if s.labels["type"] == "click"
        }
        for arm in self.engines:
            if shown.get(arm):
                ctr.add_metric([arm], clicks.get(arm, 0.0) / shown[arm])
        yield ctr

        live = GaugeMetricFamily("freshrec_serve_live_items", "Items in the live catalog.")
        live.add_metric([], len(self.items))
        yield live
        vec = GaugeMetricFamily(
            "freshrec_serve_item_vectors", "Live items with a retrieval vector, per arm.", labels=["arm"]
        )
        for arm, engine in self.engines.items():
            if engine.vectors is not None:
                vec.add_metric([arm], len(engine.vectors.view().ids))
        yield vec
        t = self.tailer()
        if t is not None:
            tail = GaugeMetricFamily(
                "freshrec_serve_item_tailer_records",
                "Records the item tailer read, by outcome.",
                labels=["outcome"],
            )
            tail.add_metric(["read"], t.counters.records)
            tail.add_metric(["bad"], t.counters.bad_records)
            tail.add_metric(["error"], t.counters.errors)
            yield tail
        w = self.writer()
        if w is not None:  # the impressions /v1/recommend logs: a backlog that only grows is a log that refuses them
            pending = GaugeMetricFamily("freshrec_serve_event_log_pending", "Events waiting to be appended to the log.")
            pending.add_metric([], w.pending)
            yield pending
            done = CounterMetricFamily(
                "freshrec_serve_event_log_records",
                "Events handed to the log writer, by outcome (appended; dropped when the writer closed with them "
                "unwritten, or when the log refuses them as too large).",
                labels=["outcome"],
            )
            done.add_metric(["appended"], w.appended)
            done.add_metric(["dropped"], w.dropped)
            yield done
            failures = CounterMetricFamily(
                "freshrec_serve_event_log_failures",
                "Failed appends (each is retried, or split to find a record too large).",
            )
            failures.add_metric([], w.failures)
            yield failures


def _samples(metric: Counter, suffix: str) -> list:
    return [s for fam in metric.collect() for s in fam.samples if s.name.endswith(suffix)]
