"""`freshrec online` as a service: SIGTERM (how systemd, Docker and Kubernetes stop a process) and
Ctrl-C end it between rounds with a final checkpoint; SIGTERM used to kill it at once (every
redeploy was a crash), and Ctrl-C raised wherever the loop was."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import ROOT
from .test_pipeline import config, fill_log

pytestmark = pytest.mark.slow


def _start_online(tmp_path: Path, seconds: float, **kw) -> tuple[Path, subprocess.Popen]:
    """`freshrec online` on ``seconds`` of simulated stream, once its first status is written."""
    stream = tmp_path / "stream"
    fill_log(stream, seconds=seconds)
    run = tmp_path / "run"
    shutil.copytree(stream, run / "log")
    cfg = run / "online.yaml"
    cfg.write_text(json.dumps(config(run, status_interval_s=0.2, **kw).model_dump(mode="json")))  # JSON is YAML
    proc = subprocess.Popen([sys.executable, "-m", "freshrec.cli", "online", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (run / "status.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is not None or not (run / "status.json").exists():
        proc.kill()
        pytest.fail(f"freshrec online did not start: {proc.communicate()[1][-2000:]}")
    return run, proc


# with the PS on Ray too: ray.init installs its own SIGTERM handler, which must not replace ours
RAY_PS = {"backend": "ray", "num_shards": 2, "threads": 1, "ray_address": "local"}


@pytest.mark.parametrize(("sig", "ps"), [(signal.SIGTERM, {}), (signal.SIGINT, {}), (signal.SIGTERM, RAY_PS)],
                         ids=["sigterm", "sigint", "sigterm-ray"])  # fmt: skip
def test_sigterm_and_ctrl_c_stop_between_rounds_with_a_final_checkpoint(tmp_path, sig, ps):
    run, proc = _start_online(tmp_path, seconds=300.0, ps={"threads": 1, **ps})
    try:
        assert not (run / "checkpoints" / "LATEST").exists()  # checkpoint_interval_s is an hour: none yet
        proc.send_signal(sig)  # Ctrl-C used to raise mid-round, where a final checkpoint saves half of it
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    # piped (a service's log): plain status lines, each on its own line (the live line's last
    # frame ran into the next message: "... retrieve v203stopping (SIGTERM)")
    lines = err.splitlines()
    assert f"stopping ({sig.name}): final checkpoint" in lines, err[-2000:]
    # said when the signal came, not only once the round in progress ended
    assert any(line.startswith(f"{sig.name}: stopping after the current round") for line in lines), err[-2000:]
    assert any(line.startswith("trained ") and "| sync rank v" in line for line in lines), err[-2000:]
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    assert (run / "checkpoints" / latest / "manifest.json").is_file()


def test_a_ctrl_c_after_the_pipeline_closed_does_not_raise_in_the_exit_hooks(tmp_path):
    """The handler stayed installed after the final checkpoint: a second Ctrl-C while the process
    was exiting raised KeyboardInterrupt inside an atexit hook (torch's), and the user got a
    traceback after the last line ("Exception ignored in atexit callback ... on_signal")."""
    _, proc = _start_online(tmp_path, seconds=120.0)
    try:
        proc.send_signal(signal.SIGINT)
        seen = []
        for line in proc.stderr:  # up to the command's last line: the pipeline is closed
            seen.append(line)
            if line.startswith("checkpoints in "):
                break
        proc.send_signal(signal.SIGINT)  # while the interpreter runs its exit hooks
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen) + err
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
