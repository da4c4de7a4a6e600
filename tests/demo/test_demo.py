"""`freshrec demo --duration 60` on this machine: the report and the checks the issue lists; then
`--resume` on the same run directory restores the training side and carries on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.slow


def _demo(*args: str, dashboard: bool = False) -> subprocess.CompletedProcess:
    flags = [] if dashboard else ["--no-dashboard"]
    return subprocess.run([sys.executable, "-m", "freshrec.cli", "demo", *flags, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def test_demo_60s_then_resume(tmp_path):
    port = "0"  # any free port: the demo reads the one its server bound
    first = _demo("--duration", "60", "--port", port, "--set", f"runs_dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    (run,) = tmp_path.iterdir()
    m = json.loads((run / "metrics.json").read_text())
    assert all(m["checks"].values()), m["checks"]
    assert m["examples_trained"] > 0 and m["progressive_auc"] > 0.5
    assert m["freshness_p99_s"] <= 5.0 and m["serving"]["error_rate"] == 0
    assert m["rows_expired"] > 0 and m["ids_filtered"] > 0
    assert m["arms"]["A"]["ctr"] is not None and m["arms"]["B"]["ctr"] is not None
    html = (run / "report.html").read_text()
    for png in ("auc.png", "freshness.png", "tables.png", "ctr.png"):
        assert (run / png).stat().st_size > 1000 and png in html
    trained = m["examples_trained"]
    # with the dashboard on: piped, it prints one frame at the end, which must be metrics.json's
    second = _demo("--duration", "20", "--port", port, "--resume", str(run), dashboard=True)
    assert second.returncode == 0, second.stderr[-3000:] + second.stdout[-3000:]
    assert "resuming" in second.stdout
    assert "resumed from" in (run / "trainer.log").read_text()
    m2 = json.loads((run / "metrics.json").read_text())
    assert m2["examples_trained"] > trained  # carried on from the checkpoint, not from zero
    frame = second.stdout[second.stdout.index("examples trained") :].splitlines()[0]
    assert f"{m2['examples_trained']:,} (" in frame, frame
    assert m2["progressive_auc"] > 0.5
