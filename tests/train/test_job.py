"""``freshrec train`` on real data: the model beside LR and item popularity, and its CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from freshrec.errors import ConfigError, DataError
from freshrec.train.job import DataSource, TrainJobConfig, load_dataset, run_train_job
from freshrec.train.trainer import Trainer

from ..conftest import ROOT


def test_movielens_job_reports_model_and_baselines(data_dir, tmp_path):
    cfg = TrainJobConfig.from_dict({
        "data": {"format": "movielens", "path": str(data_dir / "ml-100k")},
        "model": {"type": "deepfm", "hidden": [32]},
        "train": {"batch_size": 2048},
        "out": str(tmp_path / "model"),
    })  # fmt: skip
    res = run_train_job(cfg)
    assert [r["model"] for r in res.rows] == ["deepfm", "lr", "item_popularity"]
    assert res.train_examples == 80_000 and res.test_examples == 20_000
    for row in res.rows:
        assert 0.6 < row["auc"] < 0.8 and 0.5 < row["logloss"] < 0.7, row
    assert Trainer.load(res.out).counters.examples == 80_000


def test_criteo_job_without_item_slot_reads_the_shared_set_by_default(data_dir, tmp_path, monkeypatch):
    # no path: the format's set under $FRESHREC_DATA, read when the job runs (from anywhere)
    monkeypatch.setenv("FRESHREC_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    cfg = TrainJobConfig(data=DataSource(format="criteo"), model={"type": "dcn", "hidden": [32]},
                         train={"batch_size": 1024})  # fmt: skip
    res = run_train_job(cfg)
    assert [r["model"] for r in res.rows] == ["dcn", "lr"]
    assert res.train_examples + res.test_examples > 0
    assert res.rows[0]["auc"] > 0.6


def test_a_missing_default_data_set_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FRESHREC_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere.*ml-100k.*set FRESHREC_DATA"):
        load_dataset(DataSource())


def test_table_format_needs_a_path_and_a_mapping():
    with pytest.raises(ConfigError, match=r"data\.mapping"):
        load_dataset(DataSource(format="table", path="x.parquet"))
    mapping = {"spec": {"sparse": [{"name": "user"}], "labels": ["y"]}}
    with pytest.raises(ConfigError, match=r"data\.path"):
        load_dataset(DataSource(format="table", mapping=mapping))


def test_table_format_refuses_a_top_level_spec_it_would_ignore():
    # the table's features are data.mapping.spec; a top-level [spec] was silently dropped
    mapping = {"spec": {"sparse": [{"name": "user"}], "labels": ["y"]}}
    cfg = TrainJobConfig.from_dict({"data": {"format": "table", "path": "x.csv", "mapping": mapping},
                                    "spec": {"sparse": [{"name": "item"}], "labels": ["y"]}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.mapping\.spec.*top-level spec"):
        run_train_job(cfg)
    no_mapping = TrainJobConfig.from_dict({"data": {"format": "table", "path": "x.csv"},
                                           "spec": {"sparse": [{"name": "item"}], "labels": ["y"]}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"move it under data\.mapping"):
        run_train_job(no_mapping)


def test_cli_train_runs_and_bad_config_exits_with_one_line(data_dir, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "train", "--data", str(data_dir / "ml-100k"),
         "--set", "model.hidden=[16]", "--no-baselines", "--out", str(tmp_path / "m")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "held-out metrics" in ok.stdout and "deepfm" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "freshrec.cli", "train", "--set", "train.batch_sise=5"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "batch_sise" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "freshrec.cli", "train", "--data", str(tmp_path / "nope")],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    taken = subprocess.run([sys.executable, "-m", "freshrec.cli", "train", "--data", str(data_dir / "ml-100k"),
                            "--out", str(tmp_path / "notes")], capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert taken.returncode == 2 and "not a model directory" in taken.stderr and "Traceback" not in taken.stderr
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def _own_csv(path, labels) -> TrainJobConfig:
    """A user's own log as CSV (string users, int items, epoch seconds) and its job config."""
    rows = "".join(f"u{i % 7},{i % 11},{y},{1_700_000_000 + i}\n" for i, y in enumerate(labels))
    path.write_text("user,item,y,t\n" + rows)
    mapping = {"spec": {"sparse": [{"name": "user"}, {"name": "item"}], "labels": ["y"]}, "event_time": "t"}
    return TrainJobConfig(data=DataSource(format="table", path=str(path), mapping=mapping, dedupe=False),
                          model={"type": "lr"}, train={"batch_size": 64}, baselines=False)  # fmt: skip


def test_labels_outside_0_1_anywhere_in_the_data_are_refused(tmp_path):
    """Only the training split was checked (by the trainer): a bad held-out label gave garbage
    metrics and a model directory, quietly."""
    labels = [i % 2 for i in range(400)]
    labels[-5] = 2  # in the newest 20%: the held-out split
    with pytest.raises(
        DataError, match=r"own.csv: label 'y' must be in \[0, 1\].*held-out split has values in \[0, 2\]"
    ):
        run_train_job(_own_csv(tmp_path / "own.csv", labels).model_copy(update={"out": str(tmp_path / "m")}))
    assert not (tmp_path / "m").exists()


def test_one_class_held_out_is_a_warning_and_the_manifest_stays_strict_json(tmp_path):
    import json

    labels = [i % 2 for i in range(320)] + [0] * 80  # the newest 80 (held out) are all 0
    cfg = _own_csv(tmp_path / "own.csv", labels).model_copy(update={"out": str(tmp_path / "m")})
    res = run_train_job(cfg)
    assert res.warnings and "AUC is undefined" in res.warnings[0]
    text = (tmp_path / "m" / "manifest.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))  # no NaN tokens
    assert json.loads(text)["extra"]["test_metrics"]["auc"] is None


def test_a_held_out_split_with_no_weight_is_a_warning(tmp_path):
    """Weights of 0 on the newest rows only passed every check and every metric came out NaN."""
    path = tmp_path / "own.csv"
    rows = "".join(f"u{i % 7},{i % 11},{i % 2},{1_700_000_000 + i},{0 if i >= 320 else 1}\n" for i in range(400))
    path.write_text("user,item,y,t,w\n" + rows)
    mapping = {"spec": {"sparse": [{"name": "user"}, {"name": "item"}], "labels": ["y"]}, "event_time": "t",
               "weights": "w"}  # fmt: skip
    cfg = TrainJobConfig(data=DataSource(format="table", path=str(path), mapping=mapping, dedupe=False),
                         model={"type": "lr"}, train={"batch_size": 64}, baselines=False)  # fmt: skip
    res = run_train_job(cfg)
    assert any("every held-out example has sample weight 0" in w for w in res.warnings), res.warnings
