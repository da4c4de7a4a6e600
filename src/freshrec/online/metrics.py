"""Prometheus metrics of the online pipeline: the training side's model and system figures.

Read at scrape time from the pipeline's latest status record (refreshed every
``status_interval_s``), so a scrape never touches the training loop's objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["PipelineCollector"]


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


class PipelineCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any] | None]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        st = self.status()
        if not st:
            return
        quality = GaugeMetricFamily("freshrec_train_progressive", "Progressive validation over the sliding window",
                                    labels=["model", "task", "metric"])  # fmt: skip
        for model, figures in st["model"].items():
            for key, value in figures.items():
                if "/" in key and _ok(value):
                    task, metric = key.split("/", 1)
                    quality.add_metric([model, task, metric], float(value))
        yield quality
        yield CounterMetricFamily("freshrec_train_examples", "Examples trained on", value=st["examples_trained"])
        yield GaugeMetricFamily("freshrec_train_examples_per_second", "Training throughput",
                                value=st["examples_per_s"])  # fmt: skip
        yield CounterMetricFamily("freshrec_train_skipped_nonfinite", "Steps skipped for NaN/Inf",
                                  value=st["skipped_nonfinite"])  # fmt: skip
        yield GaugeMetricFamily("freshrec_train_warming_up", "1 while the trainer has seen clicks but no negative yet "
                                "(first_action: negatives come when the first windows close); scores are then near 1",
                                value=float(bool(st.get("warming_up"))))  # fmt: skip
        yield CounterMetricFamily("freshrec_train_examples_rejected", "Examples left out because the trainer cannot "
                                  "read them (a record that is not a valid example, a float for an ID, text for a "
                                  "number), since the process started",
                                  value=st["counters"].get("examples_rejected", 0))  # fmt: skip
        if _ok(st.get("examples_lag")):
            yield GaugeMetricFamily("freshrec_train_examples_lag", "Examples in the log not yet trained on",
                                    value=st["examples_lag"])  # fmt: skip
        if _ok(st.get("event_time")):
            yield GaugeMetricFamily("freshrec_train_event_time_seconds", "Newest event time trained on",
                                    value=st["event_time"])  # fmt: skip
        tables = GaugeMetricFamily("freshrec_table", "Rows held and IDs admitted / filtered / expired / evicted "
                                   "(rank model's tables)", labels=["table", "what"])  # fmt: skip
        for table, figures in st["tables"].items():
            for what, value in figures.items():
                tables.add_metric([table, what], float(value))
        yield tables
        versions = GaugeMetricFamily("freshrec_sync_published_version", "Versions published",
                                     labels=["model", "kind"])  # fmt: skip
        for model, v in st["sync"].items():
            versions.add_metric([model, "sparse"], v["sparse_version"])
            versions.add_metric([model, "dense"], v["dense_version"])
        yield versions
