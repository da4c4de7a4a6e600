"""``freshrec experiment``: the commands exist, run, write their files, and fail in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..conftest import ROOT


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # this checkout's src first: an editable install elsewhere must not answer for it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "experiment", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
    )


def test_help_lists_every_experiment():
    res = _cli("--help")
    assert res.returncode == 0, res.stderr
    for name in ("collisions", "sync-interval", "ps-failure", "filter-expiry", "ab"):
        assert name in res.stdout


def test_quick_run_writes_table_json_and_plot(data_dir, tmp_path):
    res = _cli(
        "sync-interval",
        "--quick",
        "--data",
        str(data_dir / "criteo-sample"),
        "--out",
        str(tmp_path),
        "--seeds",
        "2",
    )
    assert res.returncode == 0, res.stderr
    assert "batch-only" in res.stdout and "sync every 3 shards" in res.stdout
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["config"]["seeds"] == 2 and doc["plots"] == ["sync_interval.png"]
    assert len(doc["runs"]) == 2 * 3


def test_bad_input_exits_with_one_line(tmp_path):
    bad = _cli("collisions", "--quick", "--set", "epoks=2", "--out", str(tmp_path))
    assert bad.returncode == 2 and "epoks" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli("ps-failure", "--quick", "--data", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
