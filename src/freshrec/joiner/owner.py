"""Which pipeline owns a set of topics: the first claim on ``<examples_topic>.owner`` wins.

A fresh joiner refuses an examples topic that already holds records (another pipeline writes
it), but two joiners started at the same moment on empty topics (a trainer Deployment scaled to
two, a start script run twice) both find it empty, and both would write every example: the
trainers downstream would count each twice and replicas would mix two publishers' deltas. So a
joiner claims the topics before it writes anything: it appends a :class:`Claim` to the owner
topic (one partition: the log orders the claims) unless a claim is there already, then reads the
first record back. Only the run whose claim is first goes on; the others are refused, naming it.

A run's id is kept in ``state_dir/owner.json`` (written before its claim is appended), so a
restarted run recognises its own claim, also after a crash between the two. A state_dir written
before claims existed gets an id and claims the topics at its next start, if nobody else did.
The owner topic must keep its first record: give it no retention limit on Kafka.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
import uuid
from pathlib import Path

import msgspec

from freshrec._io import atomic_write_bytes
from freshrec.errors import CorruptionError, StateError
from freshrec.stream.log import EventLog

__all__ = ["Claim", "claim_topics", "owner_topic"]

OWNER_FILE = "owner.json"


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """One run's claim on a set of topics, as appended to the owner topic."""

    run_id: str
    host: str
    pid: int
    claimed_at: float  # wall clock, seconds
    state_dir: str

    def describe(self) -> str:
        when = datetime.datetime.fromtimestamp(self.claimed_at, datetime.UTC).isoformat(timespec="seconds")
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, state_dir {self.state_dir}, claimed {when})"


def owner_topic(examples_topic: str) -> str:
    return f"{examples_topic}.owner"


def claim_topics(log: EventLog, examples_topic: str, state_dir: Path) -> str:
    """Claim the topics of ``examples_topic`` for the run of ``state_dir`` (see the module
    docstring); returns the run id. :class:`StateError` if another run claimed them first. A
    refused fresh start leaves no ``state_dir`` behind (if it had none before)."""
    state_dir = Path(state_dir)
    existed = state_dir.exists()
    run_id, written = _run_id(state_dir)
    topic = owner_topic(examples_topic)
    try:
        log.ensure_topic(topic, 1)
        first = _first_claim(log, topic)
        if first is None:
            mine = Claim(run_id=run_id, host=socket.gethostname(), pid=os.getpid(), claimed_at=time.time(),
                         state_dir=str(state_dir.resolve()))  # fmt: skip
            log.append(topic, [msgspec.json.encode(mine)])
            first = _first_claim(log, topic)
        if first is None or first.run_id != run_id:
            shown = "nobody (the owner topic is empty after the claim)" if first is None else first.describe()
            raise StateError(
                f"topics of examples topic {examples_topic!r} belong to another pipeline: {shown} claimed them "
                f"first (owner topic {topic!r}). Run one `freshrec online` per set of topics: stop this one, or give "
                "it its own joiner.examples_topic and sync.topic_prefix"
            )
    except BaseException:
        if written:
            (state_dir / OWNER_FILE).unlink(missing_ok=True)
            if not existed:
                _remove_empty(state_dir)
        raise
    return run_id


def _run_id(state_dir: Path) -> tuple[str, bool]:
    """(this state_dir's run id, whether this call created it)."""
    path = state_dir / OWNER_FILE
    try:
        data = msgspec.json.decode(path.read_bytes())
    except FileNotFoundError:
        run_id = uuid.uuid4().hex
        state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, msgspec.json.encode({"run_id": run_id}))
        return run_id, True
    except (OSError, msgspec.DecodeError) as exc:
        raise CorruptionError(f"{path}: unreadable run id ({exc}); restore it, or move the state_dir aside") from exc
    run_id = data.get("run_id") if isinstance(data, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise CorruptionError(f"{path}: no run id in it; restore it, or move the state_dir aside")
    return run_id, False


def _first_claim(log: EventLog, topic: str) -> Claim | None:
    if log.end_offset(topic, 0) == 0:
        return None
    records = log.read(topic, 0, 0, max_records=1)
    if not records:
        return None
    try:
        return msgspec.json.decode(records[0].value, type=Claim)
    except msgspec.DecodeError as exc:
        raise StateError(f"owner topic {topic!r}: its first record is not a claim ({exc}); something else "
                         "writes that topic") from exc  # fmt: skip


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: something else is there now
        folder.rmdir()
