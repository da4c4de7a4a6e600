"""``freshrec bench joiner`` without the kafka extra: the embedded figures stand, the Kafka part is
skipped with a note (it failed the whole run after the embedded part had been measured)."""

from __future__ import annotations

import sys

import pytest

from freshrec.bench import joiner as bench_joiner
from freshrec.bench._report import BenchReport
from freshrec.errors import BackendError
from freshrec.stream import broker


def test_kafka_part_is_skipped_with_a_note_when_no_broker_binary(monkeypatch, tmp_path):
    def missing():
        raise BackendError("no tansu broker binary found: install the kafka extra")

    monkeypatch.setattr(broker, "find_tansu", missing)
    report = BenchReport("joiner", params={})
    bench_joiner._kafka(report, [], 0, tmp_path)
    assert report.notes == ["kafka: skipped (no tansu broker binary found: install the kafka extra)"]
    assert not report.figures


def test_a_broker_failure_past_the_binary_check_is_not_hidden(monkeypatch, tmp_path):
    class Failing:
        def __init__(self, *a, **kw):
            raise BackendError("broker did not start")

    monkeypatch.setattr(broker, "find_tansu", lambda: tmp_path)
    monkeypatch.setattr(broker, "LocalBroker", Failing)
    with pytest.raises(BackendError, match="did not start"):
        bench_joiner._kafka(BenchReport("joiner", params={}), [], 0, tmp_path)


def test_kafka_part_is_skipped_without_the_kafka_client(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import fails as when not installed
    monkeypatch.setattr(broker, "find_tansu", lambda: tmp_path)
    report = BenchReport("joiner", params={})
    bench_joiner._kafka(report, [], 0, tmp_path)
    assert len(report.notes) == 1 and report.notes[0].startswith("kafka: skipped") and not report.figures
