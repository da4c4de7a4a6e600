"""The demo's children never outlive it: a killed demo's trainer and server held the run's joiner
state, so ``--resume`` failed until someone found them by hand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

DEMO_STAND_IN = """
import sys, time
from pathlib import Path
from freshrec.demo.procs import Child, stop_on_hangup_or_term
child = Child("sleeper", ["-c", "import time; time.sleep(120)"], Path(sys.argv[1]))
try:
    with stop_on_hangup_or_term():
        print(child.proc.pid, flush=True)  # the handlers are in place once the test reads this
        time.sleep(120)
except KeyboardInterrupt:
    child.stop(5)
    print("stopped", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped by init) is gone too
        return f.read().split()[2] != "Z"


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_child_stops_when_the_demo_is_killed_or_hung_up(tmp_path, sig):
    demo = subprocess.Popen([sys.executable, "-c", DEMO_STAND_IN, str(tmp_path / "child.log")],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        child_pid = int(demo.stdout.readline())
        assert _alive(child_pid)
        demo.send_signal(sig)
        demo.wait(15)
        assert _wait_gone(child_pid), f"the child outlived a demo stopped by {sig.name}"
        if sig != signal.SIGKILL:  # the demo's own clean-up ran, as for Ctrl-C
            assert demo.stdout.read().strip() == "stopped"
    finally:
        demo.kill()
        demo.wait()
