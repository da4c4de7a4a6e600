"""load_open_bandit on the three real logs, against the csv module."""

from __future__ import annotations

import csv
from datetime import datetime

import numpy as np
import pytest

from freshrec.data import load_open_bandit
from freshrec.errors import DataError
from freshrec.features import hash_ids

CAMPAIGNS = ["all", "men", "women"]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("campaign", CAMPAIGNS)
def test_rows_clicks_and_time(data_dir, campaign):
    folder = data_dir / "open-bandit" / "random" / campaign
    ds = load_open_bandit(folder)
    rows = read_rows(folder / f"{campaign}.csv")
    assert len(ds) == len(rows) == 10_000
    clicks = sum(r["click"] == "1" for r in rows)
    assert int(ds.encode().labels.sum(dtype=np.float64)) == clicks
    assert 0.002 < clicks / len(rows) < 0.006  # CTR about 0.4% (data README)
    assert ds.has_time and np.all(np.diff(ds.event_time) >= 0)
    first = datetime.fromisoformat(rows[0]["timestamp"]).timestamp()
    assert ds.event_time[0] == pytest.approx(first, abs=1e-6)
    train, test = ds.split_by_time(0.5)
    assert train.event_time.max() <= test.event_time.min()


def test_features_match_the_file(data_dir):
    folder = data_dir / "open-bandit" / "random" / "all"
    ds = load_open_bandit(folder)
    rows = read_rows(folder / "all.csv")
    items = {int(r["item_id"]): r for r in read_rows(folder / "item_context.csv")}
    b = ds.encode()
    assert ds.spec.dense_names == ["affinity", "item_feature_0"]
    assert ds.spec.labels == ["click"]
    for i in [0, 1, 4321, 9999]:
        r = rows[i]  # the file is already in time order, so row i stays row i
        item = int(r["item_id"])
        assert b.sparse["item_id"].values[i] == item
        assert b.sparse["position"].values[i] == int(r["position"])
        assert b.sparse["user_feature_2"].values[i] == hash_ids([r["user_feature_2"]])[0]
        assert b.sparse["item_feature_3"].values[i] == hash_ids([items[item]["item_feature_3"]])[0]
        assert b.dense[i, 0] == float(r[f"user-item_affinity_{item}"])
        assert b.dense[i, 1] == np.float32(float(items[item]["item_feature_0"]))
        assert ds.columns["propensity_score"][i] == float(r["propensity_score"])
    nonzero = np.array([float(r[f"user-item_affinity_{r['item_id']}"]) for r in rows])
    np.testing.assert_array_equal(b.dense[:, 0], nonzero)


def _copy_without(src, dst, drop):
    with open(src, newline="") as f:
        rows = list(csv.reader(f))[:50]
    k = rows[0].index(drop)
    with open(dst, "w", newline="") as f:
        csv.writer(f).writerows([r[:k] + r[k + 1 :] for r in rows])


def test_missing_column_and_empty_file(tmp_path, data_dir):
    src = data_dir / "open-bandit" / "random" / "men" / "men.csv"
    _copy_without(src, tmp_path / "log.csv", "click")
    with pytest.raises(DataError, match=r"log.csv: missing column 'click' \(for Open Bandit log\)"):
        load_open_bandit(tmp_path / "log.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv: file is empty"):
        load_open_bandit(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="expected one Open Bandit log CSV"):
        load_open_bandit(tmp_path)  # two candidate logs in one folder


def test_non_numeric_value_names_column_and_row(tmp_path, data_dir):
    src = data_dir / "open-bandit" / "random" / "men" / "men.csv"
    text = src.read_text().splitlines()[:20]
    fields = text[5].split(",")
    fields[5] = "high"  # propensity_score of data row 4
    text[5] = ",".join(fields)
    (tmp_path / "men.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(
        DataError, match=r"men.csv: column 'propensity_score' line \S+ \(data row 5\) value 'high' is not double"
    ):
        load_open_bandit(tmp_path)


def _log_with(tmp_path, data_dir, field: int, value: str, row: int = 5) -> None:
    src = data_dir / "open-bandit" / "random" / "men" / "men.csv"
    text = src.read_text().splitlines()[:20]
    fields = text[row].split(",")
    fields[field] = value
    text[row] = ",".join(fields)
    (tmp_path / "men.csv").write_text("\n".join(text) + "\n")


@pytest.mark.parametrize(("field", "value", "match"), [
    (4, "2", r"column 'click' must be 0 or 1; 1 values are not, the first in data row 5"),
    (4, "-1", r"column 'click' must be 0 or 1"),
    (5, "nan", r"column 'propensity_score' must be in \(0, 1\]; 1 values are not, the first in data row 5"),
    (5, "-0.5", r"column 'propensity_score' must be in \(0, 1\]"),
    (5, "0", r"column 'propensity_score' must be in \(0, 1\]"),
])  # fmt: skip
def test_clicks_and_propensities_out_of_range_are_refused(tmp_path, data_dir, field, value, match):
    """A click of 2 or a NaN propensity loaded silently (off-policy estimators divide by it)."""
    _log_with(tmp_path, data_dir, field, value)
    with pytest.raises(DataError, match=match):
        load_open_bandit(tmp_path)


def test_item_context_is_joined_by_sorting_and_refuses_repeats(tmp_path, data_dir):
    """A stray item ID of 9e12 in item_context.csv sized a lookup table at 72 TB; a repeated
    item's row was taken arbitrarily."""
    src = data_dir / "open-bandit" / "random" / "men"
    (tmp_path / "men.csv").write_text("\n".join(src.joinpath("men.csv").read_text().splitlines()[:200]) + "\n")
    items = src.joinpath("item_context.csv").read_text().splitlines()
    (tmp_path / "item_context.csv").write_text("\n".join([*items, "80,9000000000000,0.1,a,b,c"]) + "\n")
    ds = load_open_bandit(tmp_path)
    rows = {int(line.split(",")[1]): float(line.split(",")[2]) for line in items[1:]}
    got = ds.columns["item_feature_0"]
    assert np.allclose(got, [rows[int(i)] for i in ds.columns["item_id"]])
    (tmp_path / "item_context.csv").write_text("\n".join([*items, items[1]]) + "\n")
    with pytest.raises(DataError, match=r"item_context.csv: item 0 is listed more than once"):
        load_open_bandit(tmp_path)


def test_an_item_context_that_is_a_directory_is_an_error(tmp_path, data_dir):
    """An item_context.csv that was a directory was skipped as if absent: the item features were
    silently left out of the spec. An absent one still is (the module docstring's rule)."""
    _log_with(tmp_path, data_dir, 4, "0")
    assert "item_feature_1" not in load_open_bandit(tmp_path).spec.slot_names
    (tmp_path / "item_context.csv").mkdir()
    with pytest.raises(DataError, match=r"item_context.csv: is a directory, not a file"):
        load_open_bandit(tmp_path)
    with pytest.raises(DataError, match=r"item_context.csv: is a directory, not a file"):
        load_open_bandit(tmp_path / "men.csv")
