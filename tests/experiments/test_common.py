"""The experiment framework: statistics, data detection, deduplication, results on disk, and how a
config is layered from defaults, --quick, a file and overrides."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from freshrec.data import Dataset
from freshrec.errors import ConfigError, DataError
from freshrec.experiments import EXPERIMENTS, build_config
from freshrec.experiments._common import (
    Column,
    ExperimentConfig,
    ExperimentResult,
    detect_format,
    drop_repeats,
    duration,
    mean_ci,
    mean_std,
    open_dataset,
    summarize,
    wilson,
)
from freshrec.features import FeatureSpec, Jagged, SparseSlot


def test_mean_std_is_sample_std_over_finite_values():
    m, s = mean_std([1.0, 2.0, 4.0, float("nan")])
    assert m == pytest.approx(7 / 3)
    assert s == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([float("nan")]))


def test_summarize_groups_in_first_appearance_order():
    runs = [{"k": "b", "seed": 0, "x": 1.0}, {"k": "a", "seed": 0, "x": 3.0}, {"k": "b", "seed": 1, "x": 2.0}]
    out = summarize(runs, ["k"], ["x"])
    assert [r["k"] for r in out] == ["b", "a"]
    assert out[0]["seeds"] == 2 and out[0]["x_mean"] == 1.5 and out[0]["x_std"] == pytest.approx(0.5**0.5)
    assert out[1]["x_std"] == 0.0


def test_confidence_intervals_match_textbook_values():
    m, h = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0, float("nan")])  # t(0.975, 4) = 2.7764
    assert m == 3.0 and h == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), abs=1e-3)
    assert mean_ci([2.0])[0] == 2.0 and math.isnan(mean_ci([2.0])[1])
    assert mean_ci(np.ones(50))[1] == 0.0
    lo, hi = wilson(0, 10)  # the Wilson interval of 0/10 and 5/10 (Agresti & Coull 1998)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))
    out = summarize([{"k": 1, "x": 1.0}, {"k": 1, "x": 3.0}], ["k"], ["x"], ci=True)
    assert out[0]["x_ci95"] == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))
    row = {"ctr_mean": 0.03, "ctr_ci95": 0.002}
    assert Column("ctr", "CTR", "cipct", 3).show(row) == "3.000% ± 0.200%"
    assert Column("ctr", "CTR", "ci", 3).show(row) == "0.030 ± 0.002"


def test_column_and_duration_formatting():
    row = {"auc_mean": 0.71234, "auc_std": 0.00121, "rate_mean": 0.0773, "rate_std": 0.0, "n": 1234.0}
    assert Column("auc", "AUC", "pm").show(row) == "0.7123 ± 0.0012"
    assert Column("rate", "r", "pct", 2).show(row) == "7.73% ± 0.00%"
    assert Column("n", "n", "int").show(row) == "1,234"
    assert Column("missing", "m", "pm").show(row) == "-"
    assert duration(30) == "30 s" and duration(90) == "1.5 min" and duration(7200) == "2 h"
    assert duration(86400 * 7) == "7 d"


def test_detect_format(data_dir, tmp_path):
    assert detect_format(data_dir / "ml-100k") == "movielens"
    assert detect_format(data_dir / "ml-100k" / "u.data") == "movielens"
    assert detect_format(data_dir / "criteo-sample") == "criteo"
    assert detect_format(data_dir / "criteo-sample" / "train.txt") == "criteo"
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,10\n")
    assert detect_format(tmp_path / "ratings.csv") == "movielens"
    (tmp_path / "odd.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"odd\.bin"):
        detect_format(tmp_path / "odd.bin")
    with pytest.raises(DataError, match="nope"):
        detect_format(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither"):
        detect_format(tmp_path / "empty")


def test_open_dataset_reads_the_1m_and_25m_layouts(tmp_path):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ratings.dat").write_text("1::10::5::100\n2::10::3::50\n1::11::4::200\n")
    (tmp_path / "ml-25m").mkdir()
    (tmp_path / "ml-25m" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,5.0,100\n2,10,3.0,50\n")
    one, _ = open_dataset(tmp_path / "ml-1m")
    assert len(one) == 3 and one.event_time.tolist() == [50.0, 100.0, 200.0]
    assert one.spec.slot_names == ["user_id", "item_id"]
    assert one.encode().labels[:, 0].tolist() == [0.0, 1.0, 1.0]
    big, _ = open_dataset(tmp_path / "ml-25m" / "ratings.csv")
    assert len(big) == 2


def test_drop_repeats_finds_the_tiled_criteo_sample(data_dir):
    data, dropped = open_dataset(data_dir / "criteo-sample" / "train.txt", dedupe=True)
    raw = (data_dir / "criteo-sample" / "train.txt").read_text().splitlines()
    assert len(data) == len(set(raw)) and dropped == len(raw) - len(set(raw))
    # first occurrences are kept, in file order (event time = the original row number)
    first = sorted({line: i for i, line in reversed(list(enumerate(raw)))}.values())
    assert data.event_time.tolist() == [float(i) for i in first]


def test_drop_repeats_compares_multi_valued_slots_and_time():
    spec = FeatureSpec(sparse=[SparseSlot(name="u"), SparseSlot(name="tags", multi_valued=True)], labels=["y"])
    tags = Jagged.from_lengths(np.array([1, 2, 2, 1, 1, 2, 7], np.int64), np.array([2, 2, 1, 2, 0]))
    cols = {"u": np.array([5, 5, 5, 5, 5]), "tags": tags, "y": np.ones(5, np.float32)}
    # rows: [1,2] [2,1] [1] [2,7] [] ; none repeats (order within a row matters)
    data = Dataset(spec, cols, event_time=np.zeros(5))
    assert drop_repeats(data)[1] == 0
    dup = data.take(np.array([0, 1, 0, 4, 4]))
    kept, dropped = drop_repeats(dup)
    assert dropped == 2 and len(kept) == 3
    # the same example at another time is a different event when the data has time
    timed = Dataset(
        spec,
        {k: (v.take(np.array([0, 0])) if isinstance(v, Jagged) else v[[0, 0]]) for k, v in cols.items()},
        event_time=np.array([1.0, 2.0]),
    )
    assert drop_repeats(timed)[1] == 0


def _result(tmp_path) -> ExperimentResult:
    cfg = ExperimentConfig(data=str(tmp_path))
    return ExperimentResult(
        name="demo",
        config=cfg,
        title="demo",
        columns=[Column("k", "k"), Column("x", "x", "pm")],
        summary=[{"k": "a", "x_mean": 1.0, "x_std": float("nan")}],
        runs=[{"k": "a", "seed": 0, "x": 1.0}, {"k": "a", "seed": 1, "x": float("nan"), "extra": 3}],
        series={"curve": np.array([1.0, np.inf])},
    )


def test_result_files_are_strict_json_and_csv(tmp_path):
    res = _result(tmp_path)
    paths = res.write(tmp_path / "out")
    assert [p.name for p in paths] == ["results.csv", "runs.csv", "results.json", "results.md"]
    md = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert md[2:5] == ["| k | x |", "|---|---:|", "| a | 1.0000 |"]
    doc = json.loads((tmp_path / "out" / "results.json").read_text())  # strict: NaN/Inf written as null
    assert doc["experiment"] == "demo" and doc["summary"][0]["x_std"] is None
    assert doc["series"]["curve"] == [1.0, None] and doc["config"]["data"] == str(tmp_path)
    rows = list(csv.DictReader((tmp_path / "out" / "runs.csv").open()))
    assert rows[1]["x"] == "nan" and rows[1]["extra"] == "3" and rows[0]["extra"] == ""
    assert res.columns[1].show(res.summary[0]) == "1.0000"  # an undefined std is left out, not printed as nan


def test_every_experiment_has_a_quick_form_that_validates():
    for name, exp in EXPERIMENTS.items():
        quick = build_config(name, quick=True)
        full = build_config(name)
        assert quick.quick and not full.quick
        assert quick.seeds <= full.seeds, name
        assert set(exp.config.QUICK) <= set(exp.config.model_fields), name


def test_config_layers(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("seeds = 4\nepochs = 3\n[model]\nhidden = [8]\n")
    cfg = build_config("collisions", quick=True, config_file=f, data="/x", overrides=["epochs=5"])
    assert cfg.seeds == 4  # the file beats --quick
    assert cfg.epochs == 5  # --set beats the file
    assert cfg.data == "/x" and cfg.model.hidden == [8] and cfg.quick
    assert build_config("collisions", seeds=2, config_file=f).seeds == 2  # --seeds beats the file
    with pytest.raises(ConfigError, match="epoks"):
        build_config("collisions", overrides=["epoks=3"])
    with pytest.raises(ConfigError, match="unknown experiment"):
        build_config("nope")


def test_drop_repeats_needs_no_fitted_statistics():
    """`freshrec train` drops repeats before it fits the standardize transforms on the training
    split: with one in the spec it failed ("has no mean/std: call spec.fit")."""
    from freshrec.features import DenseFeature

    spec = FeatureSpec(sparse=[SparseSlot(name="u")], labels=["y"],
                       dense=[DenseFeature(name="p", transform="log1p_standardize", fill_missing=0.0),
                              DenseFeature(name="q", transform="standardize")])  # fmt: skip
    cols = {"u": np.array([1, 1, 2, 1]), "p": np.array([3.0, 3.0, 3.0, 4.0]), "q": np.array([0.5, 0.5, 0.5, 0.5]),
            "y": np.ones(4, np.float32)}  # fmt: skip
    kept, dropped = drop_repeats(Dataset(spec, cols))
    assert dropped == 1 and len(kept) == 3 and kept.spec == spec  # the spec is unchanged, still to be fitted
