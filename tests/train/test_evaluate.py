"""``freshrec evaluate``: a saved model scored on a file reproduces what ``freshrec train`` held
out, scores new files with the model's own spec, and refuses what it cannot score."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from freshrec.errors import ConfigError, DataError
from freshrec.train.evaluate import evaluate_model
from freshrec.train.job import DataSource, TrainJobConfig, load_dataset, run_train_job

from ..conftest import ROOT

MAPPING = {
    "spec": {"sparse": [{"name": "user"}, {"name": "item"}], "dense": [{"name": "price", "transform": "standardize"}],
             "labels": ["y"]},
    "event_time": "t",
}  # fmt: skip


def own_csv(path, n: int, seed: int) -> DataSource:
    """A log of one's own: clicks driven by the item and the price (string users, epoch seconds)."""
    rng = np.random.default_rng(seed)
    item, price = rng.integers(0, 30, n), rng.gamma(2.0, 20.0, n)
    y = (rng.random(n) < 0.15 + 0.5 * (item % 3 == 0) - 0.002 * price.clip(0, 100)).astype(int)
    rows = "".join(f"u{rng.integers(0, 50)},{i},{p:.2f},{c},{1_700_000_000 + k}\n"
                   for k, (i, p, c) in enumerate(zip(item, price, y, strict=True)))  # fmt: skip
    path.write_text("user,item,price,y,t\n" + rows)
    return DataSource(format="table", path=str(path), mapping=MAPPING)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = own_csv(root / "train.csv", 3000, seed=0)
    cfg = TrainJobConfig(data=data, model={"type": "deepfm", "hidden": [16]}, train={"batch_size": 128},
                         baselines=False, out=str(root / "model"))  # fmt: skip
    return root, data, run_train_job(cfg)


def test_the_held_out_split_scores_as_train_printed_it(trained):
    _root, data, res = trained
    got = evaluate_model(res.out, data, held_out=True)
    assert got.examples == res.test_examples == 600
    (row,) = got.rows
    for metric in ("auc", "logloss", "calibration"):
        assert row[metric] == pytest.approx(res.rows[0][metric], abs=1e-6), metric
    assert row["task"] == "y" and 0 < row["positive_rate"] < 1


def test_a_new_file_is_scored_whole_with_the_models_own_spec(trained):
    """A later log of the same kind: every row scored (no split), with the price standardised
    by the statistics the model was trained with (the file's own would shift every score)."""
    root, _data, res = trained
    new = own_csv(root / "new.csv", 1000, seed=1)
    got = evaluate_model(res.out, new)
    assert got.examples == 1000 and got.rows[0]["auc"] > 0.6
    assert evaluate_model(res.out, new).rows == got.rows  # deterministic
    # the mapping's own spec (unfitted) cannot encode the price at all: the model's was used
    with pytest.raises(ConfigError, match=r"call spec\.fit"):
        load_dataset(new).encode()


def test_what_cannot_be_scored_is_refused(trained, tmp_path):
    _root, _data, res = trained
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,price,y,t\nu1,3,5.0,2,1700000000\nu2,4,5.0,0,1700000001\n")
    with pytest.raises(DataError, match=r"label 'y' must be in \[0, 1\]"):
        evaluate_model(res.out, DataSource(format="table", path=str(bad), mapping=MAPPING))
    no_price = tmp_path / "no_price.csv"
    no_price.write_text("user,item,y,t\nu1,3,1,1700000000\n")
    other = {**MAPPING, "spec": {"sparse": [{"name": "user"}, {"name": "item"}], "labels": ["y"]}}
    with pytest.raises(DataError, match=r"no column for dense feature 'price'"):
        evaluate_model(res.out, DataSource(format="table", path=str(no_price), mapping=other))


def test_cli_evaluate_reads_the_train_config_and_writes_json(trained, tmp_path):
    _root, data, res = trained
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"data": data.model_dump(mode="json")}))
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "freshrec", "evaluate", str(res.out), "--config", str(config), "--held-out",
           "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["examples"] == 600 and report["tasks"][0]["auc"] == pytest.approx(res.rows[0]["auc"], abs=1e-6)
    missing = subprocess.run([sys.executable, "-m", "freshrec", "evaluate", str(tmp_path / "nope")],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
