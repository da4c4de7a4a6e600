"""The joiner's counters and gauges, and their Prometheus exposition.

Counters are cumulative since the joiner's first start: they are part of the checkpoint, so a
restart neither loses nor double-counts them (events processed again after a crash are
counted once, as their examples are written once). Gauges describe the state now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["COUNTERS", "JoinerMetrics", "prometheus_collector"]

COUNTERS: tuple[str, ...] = (
    "events_in",  # input records processed, bad ones included
    "impressions_in",
    "actions_in",
    "other_events_in",  # item lifecycle events: valid, not the joiner's business
    "bad_records",  # records that failed to decode (also dead letters)
    "rejected_events",  # valid events refused by a join rule (also dead letters)
    "dead_letters",  # records sent to the dead-letter topic (bad_records + rejected_events)
    "duplicates",  # events dropped because an event with their event id was already joined
    "duplicate_actions",  # of which actions (the rest: impressions)
    "late_impressions",  # impressions older than the watermark when they arrived: dropped
    "late_actions",  # actions older than the watermark whose impression was gone: dropped
    "unmatched_actions",  # actions held for an impression that never came: dropped at the watermark
    "out_of_window_actions",  # actions outside [impression time, + window_s]: dropped
    "ignored_actions",  # actions of a type that is not a label
    "actions_joined",
    "late_label_updates",  # first_action: a new label type after the example was emitted
    "examples_out",
    "positives_out",
    "negatives_out",
    "negatives_dropped",  # down-sampled away
    "examples_suppressed",  # already in the examples topic from before a crash: not written again
    "examples_too_large",  # larger than max_output_bytes: left out
    "dead_letters_suppressed",
    "checkpoints",
)


@dataclass
class JoinerMetrics:
    """A snapshot of the joiner's counters (see :data:`COUNTERS`) and gauges."""

    events_in: int = 0
    impressions_in: int = 0
    actions_in: int = 0
    other_events_in: int = 0
    bad_records: int = 0
    rejected_events: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    duplicate_actions: int = 0
    late_impressions: int = 0
    late_actions: int = 0
    unmatched_actions: int = 0
    out_of_window_actions: int = 0
    ignored_actions: int = 0
    actions_joined: int = 0
    late_label_updates: int = 0
    examples_out: int = 0
    positives_out: int = 0
    negatives_out: int = 0
    negatives_dropped: int = 0
    examples_suppressed: int = 0
    examples_too_large: int = 0
    dead_letters_suppressed: int = 0
    checkpoints: int = 0
    # gauges
    open_impressions: int = 0  # windows open now, in memory + on disk
    open_impressions_on_disk: int = 0
    held_actions: int = 0  # actions waiting for their impression
    watermark: float = float("-inf")  # newest event time seen - allowed_lateness_s
    event_time: float = float("-inf")  # newest event time seen (the joiner's clock)
    lag_records: int = -1  # input records behind the log's head; -1 if not measured

    @property
    def join_rate(self) -> float:
        """Share of the label-type actions (duplicates aside) that joined an impression. (It
        subtracted every duplicate, impressions too: resent batches took it past 1.)"""
        considered = self.actions_in - self.ignored_actions - self.duplicate_actions
        return self.actions_joined / considered if considered > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "join_rate": self.join_rate}


def prometheus_collector(snapshot: Callable[[], JoinerMetrics], prefix: str = "freshrec_joiner") -> Any:
    """A prometheus-client collector that reads ``snapshot()`` at each scrape::

    from prometheus_client import REGISTRY
    REGISTRY.register(prometheus_collector(joiner.metrics))
    """
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    class _JoinerCollector(Collector):
        def collect(self) -> Iterator[Any]:
            m = snapshot()
            for f in fields(m):
                value = getattr(m, f.name)
                if f.name in COUNTERS:
                    yield CounterMetricFamily(f"{prefix}_{f.name}", f"joiner counter {f.name}", value=value)
                else:
                    yield GaugeMetricFamily(f"{prefix}_{f.name}", f"joiner gauge {f.name}", value=value)
            yield GaugeMetricFamily(f"{prefix}_join_rate", "share of label actions joined", value=m.join_rate)

    return _JoinerCollector()
