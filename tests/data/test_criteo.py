"""load_criteo / stream_criteo on the real 10.8k-row sample, against a plain line parser."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.data import criteo_spec, load_criteo, stream_criteo
from freshrec.errors import DataError
from freshrec.features import Batch, hash_ids


@pytest.fixture(scope="module")
def criteo(data_dir):
    return load_criteo(data_dir / "criteo-sample")


@pytest.fixture(scope="module")
def lines(data_dir):
    return (data_dir / "criteo-sample" / "train.txt").read_text().splitlines()


def test_rows_and_label_rate(criteo, lines):
    assert len(criteo) == len(lines) == 10_800
    direct = sum(line.split("\t")[0] == "1" for line in lines)
    assert int(criteo.encode().labels.sum(dtype=np.float64)) == direct == 2112
    assert not criteo.has_time
    np.testing.assert_array_equal(criteo.event_time, np.arange(10_800))  # log order: row number


def test_values_match_a_plain_parser(criteo, lines):
    b = criteo.encode()
    assert b.dense.shape == (10_800, 13) and list(b.sparse) == [f"C{i}" for i in range(1, 27)]
    for row in [0, 1, 17, 5000, 10_799]:
        fields = lines[row].split("\t")
        ints = [max(float(v), 0.0) if v else 0.0 for v in fields[1:14]]  # missing -> 0, negatives -> 0
        np.testing.assert_allclose(b.dense[row], np.log1p(ints).astype(np.float32), rtol=1e-6)
        ids = hash_ids(fields[14:40])  # "" (missing) hashes to an ID of its own
        np.testing.assert_array_equal([b.sparse[f"C{i}"].values[row] for i in range(1, 27)], ids)


def test_missing_and_negative_values_are_present_in_the_sample(criteo):
    assert np.isnan(criteo.columns["I1"]).sum() == 4956  # handled by fill_missing, not dropped
    assert all(f.fill_missing == 0.0 and f.transform == "log1p" for f in criteo.spec.dense)
    assert (criteo.columns["I2"] >= 0).all()  # clipped at load (raw minimum is -2)
    missing_c = hash_ids([""])[0]
    assert any((criteo.encode().sparse[f"C{i}"].values == missing_c).any() for i in range(1, 27))


def test_stream_equals_load(criteo, data_dir):
    full = criteo.encode()
    batches = list(stream_criteo(data_dir / "criteo-sample" / "train.txt", 1000, block_size=1 << 16))
    assert [b.size for b in batches] == [1000] * 10 + [800]
    streamed = Batch.concat(batches)
    for k in full.sparse:
        assert streamed.sparse[k] == full.sparse[k]
    np.testing.assert_array_equal(streamed.dense, full.dense)
    np.testing.assert_array_equal(streamed.labels, full.labels)
    np.testing.assert_array_equal(streamed.event_time, full.event_time)


def test_split_keeps_row_order(criteo):
    a, b = criteo.split_by_time(0.9)
    assert (len(a), len(b)) == (9720, 1080)
    assert a.event_time[-1] + 1 == b.event_time[0]


def _row(label="0", i3="5", n_fields=40):
    fields = [label, "1", "2", i3] + ["4"] * 10 + ["abcd1234"] * 26
    return "\t".join(fields[:n_fields]) + "\n"


def test_bad_files(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text("")
    with pytest.raises(DataError, match=r"train.txt: file is empty"):
        load_criteo(p)
    p.write_text(_row() + _row(i3="lots"))
    with pytest.raises(DataError, match=r"train.txt: column 'I3' line \S+ \(data row 2\) value 'lots' is not int64"):
        load_criteo(tmp_path)
    p.write_text(_row() + _row(n_fields=20))
    with pytest.raises(
        DataError, match=r"train.txt: cannot parse line 2: expected 40 fields separated by '\\t', got 20"
    ):
        load_criteo(p)
    p.write_text(_row() + _row(label="2"))
    with pytest.raises(DataError, match=r"train.txt: column 'label' must be 0 or 1, got 2 at row 1"):
        load_criteo(p)
    with pytest.raises(DataError, match=r"column 'label' must be 0 or 1, got 2 at row 1"):
        list(stream_criteo(p, 10))
    p.write_text(_row())
    assert load_criteo(p, criteo_spec()).encode().size == 1
