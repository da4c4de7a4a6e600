"""SIGKILL the online trainer at named points (mid training, mid checkpoint, mid serving snapshot,
mid sync), restart it: it resumes, loads no corrupt state, neither loses nor duplicates examples,
reports progressive AUC again, and ends bit-identical to a run that was never killed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from freshrec.online import OnlinePipeline
from freshrec.sync import ServedModel
from freshrec.train import Trainer

from ..conftest import ROOT
from .test_pipeline import _predictions, config, examples_in_topic, fill_log, run_until_caught_up

pytestmark = pytest.mark.slow

CRASH_POINTS = ["train.step:8", "checkpoint.mid:2", "snapshot.mid:2", "sync.before_append:6", "sync.after_append:6"]


def recovery_config(run):
    # checkpoints, snapshots and deltas every few rounds, so each crash point is hit mid-stream
    return config(run, checkpoint_interval_s=0.3,
                  sync={"snapshot_interval": 0.3, "sparse_sync_interval": 0.1, "dense_sync_interval": 0.5})  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    stream = tmp_path_factory.mktemp("recovery") / "log"
    fill_log(stream)
    run = stream.parent / "reference"
    shutil.copytree(stream, run / "log")
    p = OnlinePipeline(recovery_config(run))
    run_until_caught_up(p)
    want = {"predictions": _predictions(p), "trained": p.status()["examples_trained"],
            "examples": examples_in_topic(run)}  # fmt: skip
    p.close(checkpoint=False)
    return stream, want


def trainer(run, crash_at: str | None) -> subprocess.CompletedProcess:
    cfg = run / "online.json"
    cfg.write_text(json.dumps(recovery_config(run).model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "FRESHREC_CRASH_AT"}
    if crash_at:
        env["FRESHREC_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "freshrec.demo.trainer", str(cfg), "1.0"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_sigkill_and_restart(tmp_path, reference, crash_at):
    stream, want = reference
    run = tmp_path / "run"
    shutil.copytree(stream, run / "log")
    died = trainer(run, crash_at)
    assert died.returncode == -9, died.stderr[-2000:]  # killed where asked, not earlier or later
    again = trainer(run, None)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr or "checkpoint" not in crash_at  # a checkpoint existed to resume from
    status = json.loads((run / "status.json").read_text())
    assert status["examples_trained"] == want["trained"]  # nothing lost, nothing trained twice
    assert status["model"]["rank"]["click/auc"] > 0.5  # progressive validation carries on
    assert examples_in_topic(run) == want["examples"]  # every example written exactly once
    # the newest checkpoint is whole and equals the never-killed run
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    rank = Trainer.load(run / "checkpoints" / latest / "rank")
    pipeline_like = type("P", (), {"config": recovery_config(run), "spec": rank.spec, "trainers": {"rank": rank}})
    np.testing.assert_array_equal(_predictions(pipeline_like), want["predictions"])
    # a torn serving snapshot is never loaded: the newest good one is
    served = ServedModel.from_snapshot(run / "snapshots" / "rank", name="rank")
    assert served.sparse_version > 0
