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
The owner topic must keep its first record: it is created with no retention limit (Kafka).
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

from freshrec._io import fsync_dir, write_durable
from freshrec.errors import CorruptionError, InputError, StateError
from freshrec.stream.log import EventLog

__all__ = ["Claim", "claim_topics", "owner_topic"]

OWNER_FILE = "owner.json"
CONFIRM_S = 10.0  # how long a claim appended may take to become readable


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
    docstring); returns the run id. :class:`StateError` if another run claimed them first (a
    fresh start refused so leaves no ``state_dir`` behind), or if the claim could not be
    confirmed (the run id is kept: a retry finds out whether the claim made it)."""
    state_dir = Path(state_dir)
    made = _missing_folders(state_dir)
    run_id, written = _run_id(state_dir)
    topic = owner_topic(examples_topic)
    log.ensure_topic(topic, 1, keep_forever=True)
    first = _first_claim(log, topic)
    if first is None:
        mine = Claim(run_id=run_id, host=socket.gethostname(), pid=os.getpid(), claimed_at=time.time(),
                     state_dir=str(state_dir.resolve()))  # fmt: skip
        log.append(topic, [msgspec.json.encode(mine)])  # a failure keeps the run id: the claim may have landed
        deadline = time.monotonic() + CONFIRM_S
        while (first := _first_claim(log, topic)) is None and time.monotonic() < deadline:
            time.sleep(0.05)  # acks short of all replicas: visible a little after the append
        if first is None:
            raise StateError(f"owner topic {topic!r}: the claim of run {run_id} was appended but is not "
                             f"readable after {CONFIRM_S:g} s; start again (if it made it, it is ours)")  # fmt: skip
    if first.run_id != run_id:
        if written:  # refused: what this call made goes (a run id another process wrote stays)
            (state_dir / OWNER_FILE).unlink(missing_ok=True)
            for folder in reversed(made):
                _remove_empty(folder)
        raise StateError(
            f"topics of examples topic {examples_topic!r} belong to another pipeline: {first.describe()} claimed "
            f"them first (owner topic {topic!r}). Run one `freshrec online` per set of topics: stop this one, or give "
            "it its own joiner.examples_topic and sync.topic_prefix"
        )
    return run_id


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, outermost first."""
    out: list[Path] = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        out.append(p)
    return out[::-1]


def _run_id(state_dir: Path) -> tuple[str, bool]:
    """(this state_dir's run id, whether this call created it). Created exclusively: of two
    processes starting on one fresh state_dir, the second reads the first's id (and then the
    state store's lock refuses it), rather than replacing it. Durable (file and folder synced)
    before the claim is appended: a run id lost after its claim landed would lock the run out."""
    path = state_dir / OWNER_FILE
    try:
        if not path.exists():
            state_dir.mkdir(parents=True, exist_ok=True)
            for stale in state_dir.glob(f".{OWNER_FILE}.tmp-*"):  # a crash between write and link
                stale.unlink(missing_ok=True)
            run_id = uuid.uuid4().hex
            if _create_exclusive(path, msgspec.json.encode({"run_id": run_id})):
                fsync_dir(state_dir)
                return run_id, True
        data = msgspec.json.decode(path.read_bytes())
    except msgspec.DecodeError as exc:
        raise CorruptionError(f"{path}: unreadable run id ({exc}); restore it, or move the state_dir aside") from exc
    except OSError as exc:
        raise StateError(f"{path}: cannot read or write the run id: {exc.strerror or exc}") from exc
    run_id = data.get("run_id") if isinstance(data, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise CorruptionError(f"{path}: no run id in it; restore it, or move the state_dir aside")
    return run_id, False


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Write ``path`` unless it exists (False then): a synced temp file linked into place, so the
    file never shows half-written; where the filesystem has no hard links (some network and FUSE
    mounts), an exclusive create instead."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write_durable(tmp, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            pass
        try:
            with open(path, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


def _first_claim(log: EventLog, topic: str) -> Claim | None:
    if log.end_offset(topic, 0) == 0:
        return None
    try:
        records = log.read(topic, 0, 0, max_records=1)
    except InputError as exc:  # Kafka: offset 0 deleted by a retention limit
        raise StateError(
            f"owner topic {topic!r}: its first claim is gone ({exc}); it must keep its records (no "
            "retention limit: freshrec creates it so); to start over, delete the topic"
        ) from exc
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
