"""The subscriber's Prometheus collectors, created once per registry and labelled by model.

A replica may run several subscribers (ranking and retrieval models, A/B arms) against one
registry, and tests create many: collectors are made the first time a registry is used and
shared after that, so nothing is registered twice.
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SyncMetrics", "sync_metrics"]

# freshness runs from ~0.1 s (sparse, seconds cadence) to minutes (dense, 5 min cadence)
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)


class SyncMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        kw = {"registry": registry}
        self.freshness = Histogram(
            "freshrec_sync_freshness_seconds",
            "Wall-clock seconds from the arrival of the newest action a delta reflects to its "
            "application on this replica",
            ["model", "kind"], buckets=FRESHNESS_BUCKETS, **kw,
        )  # fmt: skip
        self.applied = Counter("freshrec_sync_deltas_applied", "Deltas applied", ["model", "kind"], **kw)
        self.rows = Counter("freshrec_sync_rows_applied", "Sparse rows applied", ["model", "op"], **kw)
        self.bootstraps = Counter("freshrec_sync_bootstraps", "Bootstraps from a snapshot",
                                  ["model", "reason"], **kw)  # fmt: skip
        self.gaps = Counter("freshrec_sync_gaps", "Missing sparse versions detected", ["model"], **kw)
        self.errors = Counter("freshrec_sync_errors", "Failed polls and bootstraps", ["model"], **kw)
        self.stale = Gauge("freshrec_sync_stale", "1 while the served parameters have stopped following the sync "
                           "log (a bootstrap or an apply failed; retrying), else 0", ["model"], **kw)  # fmt: skip
        self.version = Gauge("freshrec_sync_version", "Version applied", ["model", "kind"], **kw)
        self.lag = Gauge("freshrec_sync_lag_records", "Sync-log records not yet read", ["model", "kind"], **kw)
        self.event_time = Gauge(
            "freshrec_sync_event_time_seconds",
            "Newest event time the served parameters reflect",
            ["model"],
            **kw,
        )


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, SyncMetrics] = weakref.WeakKeyDictionary()


def sync_metrics(registry: CollectorRegistry | None = None) -> SyncMetrics:
    """The collectors on ``registry`` (default: prometheus_client's global one)."""
    reg = REGISTRY if registry is None else registry
    with _lock:
        m = _by_registry.get(reg)
        if m is None:
            m = _by_registry[reg] = SyncMetrics(reg)
        return m
