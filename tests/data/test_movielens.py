"""load_movielens on the real ml-100k files, the 1M/25M layouts (written from them), and bad files."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.data import load_movielens, movielens_spec
from freshrec.errors import DataError
from freshrec.features import FeatureSpec, SparseSlot, hash_ids


@pytest.fixture(scope="module")
def ml100k(data_dir):
    return load_movielens(data_dir / "ml-100k")


@pytest.fixture(scope="module")
def raw(data_dir):
    """u.data parsed the obvious way: (user, item, rating, ts) per line."""
    lines = (data_dir / "ml-100k" / "u.data").read_text().splitlines()
    return np.array([[int(v) for v in line.split("\t")] for line in lines], dtype=np.int64)


def test_counts_match_the_readme(ml100k):
    assert len(ml100k) == 100_000
    assert np.unique(ml100k.columns["user_id"]).size == 943
    assert np.unique(ml100k.columns["item_id"]).size == 1682
    assert ml100k.encode().size == 100_000


def test_label_rate_matches_a_direct_count(ml100k, raw):
    direct = int((raw[:, 2] >= 3.5).sum())  # ratings 4 and 5
    assert int(ml100k.encode().labels[:, 0].sum(dtype=np.float64)) == direct == 55_375
    assert ml100k.spec.labels == ["label"]


def test_rows_are_time_ordered_and_complete(ml100k, raw):
    t = ml100k.event_time
    assert ml100k.has_time and np.all(np.diff(t) >= 0)
    assert t[0] == raw[:, 3].min() and t[-1] == raw[:, 3].max()
    got = np.stack([ml100k.columns["user_id"], ml100k.columns["item_id"], t.astype(np.int64)], 1)
    want = raw[np.argsort(raw[:, 3], kind="stable")][:, [0, 1, 3]]
    np.testing.assert_array_equal(got, want)  # a stable sort of the file: ties keep file order


def test_time_split_is_time_ordered(ml100k):
    train, test = ml100k.split_by_time(0.8)
    assert (len(train), len(test)) == (80_000, 20_000)
    assert train.event_time.max() <= test.event_time.min()
    b_train, b_test = train.encode(), test.encode()
    assert b_train.size == 80_000 and b_test.event_time[0] >= b_train.event_time[-1]
    # re-encoding the sliced raw columns (Arrow dictionary slices, Jagged genres) gives the same rows
    again = ml100k.with_spec(ml100k.spec).slice(80_000, 100_000).encode()
    for k in b_test.sparse:
        assert again.sparse[k] == b_test.sparse[k], k


def test_side_features_are_joined(ml100k, data_dir):
    assert ml100k.spec.slot_names == [
        "user_id", "item_id", "age_bucket", "gender", "occupation", "zip_prefix", "genres", "release_year",
    ]  # fmt: skip
    users = {}
    for line in (data_dir / "ml-100k" / "u.user").read_text(encoding="latin-1").splitlines():
        uid, age, gender, occupation, zipcode = line.split("|")
        users[int(uid)] = (int(age), gender, occupation, zipcode[:3])
    items = {}
    for line in (data_dir / "ml-100k" / "u.item").read_text(encoding="latin-1").splitlines():
        f = line.split("|")
        items[int(f[0])] = ([k for k, flag in enumerate(f[5:]) if flag == "1"], int(f[2][-4:]) if f[2] else 0)
    b = ml100k.encode()
    buckets = [1, 18, 25, 35, 45, 50, 56]
    for row in np.random.default_rng(0).integers(0, len(ml100k), 200):
        age, gender, occupation, zip3 = users[int(ml100k.columns["user_id"][row])]
        assert b.sparse["age_bucket"].values[row] == max(x for x in buckets if x <= age)
        assert b.sparse["gender"].values[row] == hash_ids([gender])[0]
        assert b.sparse["occupation"].values[row] == hash_ids([occupation])[0]
        assert b.sparse["zip_prefix"].values[row] == hash_ids([zip3])[0]
        genres, year = items[int(ml100k.columns["item_id"][row])]
        g = b.sparse["genres"]
        assert g.values[g.offsets[row] : g.offsets[row + 1]].tolist() == genres
        assert b.sparse["release_year"].values[row] == year
    assert ml100k.spec.slot("genres").multi_valued and ml100k.spec.slot("genres").pooling == "mean"


def test_custom_spec_and_unknown_feature(data_dir):
    spec = FeatureSpec(sparse=[SparseSlot(name="user_id"), SparseSlot(name="item_id")], labels=["rating"])
    ds = load_movielens(data_dir / "ml-100k" / "u.data", spec)
    assert ds.encode().labels.max() == 5.0
    bad = FeatureSpec(sparse=[SparseSlot(name="user_id"), SparseSlot(name="director")])
    with pytest.raises(DataError, match=r"u.data: no column for sparse slot 'director'"):
        load_movielens(data_dir / "ml-100k", bad)


def _first_lines(raw, n=500):
    return raw[:n]


def test_ratings_dat_and_csv_layouts_match_u_data(tmp_path, raw):
    rows = _first_lines(raw)
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    (tmp_path / "ml-25m").mkdir()
    csv_text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r - 0.5},{t}\n" for u, i, r, t in rows)
    (tmp_path / "ml-25m" / "ratings.csv").write_text(csv_text)
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    tab = load_movielens(tmp_path / "u.data")  # no side files beside it: ids only
    dat = load_movielens(tmp_path / "ml-1m")
    csv = load_movielens(tmp_path / "ml-25m")
    assert tab.spec == dat.spec == csv.spec == movielens_spec()
    for ds in (dat, csv):
        assert len(ds) == 500
        np.testing.assert_array_equal(ds.columns["user_id"], tab.columns["user_id"])
        np.testing.assert_array_equal(ds.event_time, tab.event_time)
    np.testing.assert_array_equal(dat.columns["label"], tab.columns["label"])
    # half-star ratings: 3.5 is the first positive
    np.testing.assert_array_equal(csv.columns["label"], csv.columns["rating"] >= 3.5)
    assert (csv.columns["rating"] == 3.5).any()


def test_bad_files_name_file_and_column(tmp_path):
    empty = tmp_path / "u.data"
    empty.write_text("")
    with pytest.raises(DataError, match=r"u.data: file is empty"):
        load_movielens(empty)
    d = tmp_path / "csv"
    d.mkdir()
    (d / "ratings.csv").write_text("userId,movieId,timestamp\n1,2,3\n")
    with pytest.raises(DataError, match=r"ratings.csv: missing column 'rating' \(for MovieLens ratings\)"):
        load_movielens(d)
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,3\n1,3,good,4\n")
    with pytest.raises(
        DataError, match=r"ratings.csv: column 'rating' line \S+ \(data row 2\) value 'good' is not double"
    ):
        load_movielens(d)
    for value in ("nan", "inf", "-3", "6"):  # each became a label silently (0, 1, 0, 1)
        (d / "ratings.csv").write_text(f"userId,movieId,rating,timestamp\n1,2,4.0,3\n1,3,{value},4\n")
        with pytest.raises(DataError, match=r"ratings.csv: 1 ratings outside 0-5 stars, the first in data row 2"):
            load_movielens(d)
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match=r"ratings.csv: no data rows"):
        load_movielens(d)
    (tmp_path / "bad.data").write_text("1\t2\t3\n")
    with pytest.raises(DataError, match=r"bad.data: cannot parse line 1: expected 4 fields separated by '\\t', got 3"):
        load_movielens(tmp_path / "bad.data")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="nothing: no MovieLens ratings file here"):
        load_movielens(tmp_path / "nothing")


def test_ratings_missing_from_side_files(tmp_path, data_dir):
    (tmp_path / "u.data").write_text("99999\t1\t5\t881250949\n")
    (tmp_path / "u.user").write_text((data_dir / "ml-100k" / "u.user").read_text(encoding="latin-1"))
    with pytest.raises(DataError, match=r"user 99999 is not in .*u.user"):
        load_movielens(tmp_path)


def test_a_side_file_listing_a_user_twice_is_refused(tmp_path, data_dir):
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n")
    users = (data_dir / "ml-100k" / "u.user").read_text(encoding="latin-1").splitlines()
    (tmp_path / "u.user").write_text("\n".join([*users, users[0]]) + "\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"u.user: user 1 is listed more than once"):
        load_movielens(tmp_path)


@pytest.mark.parametrize(("name", "bad", "match"), [
    ("ratings.dat", "1:9:2::3::4", r"line 3 \(data row 2\): fields must be separated by '::', not a lone ':': "
                                   r"'1:9:2::3::4'"),
    ("ratings.dat", "1::2::5::978300760::extra", r"cannot parse line 3: expected 4 fields separated by '::': '1::2"),
    ("ratings.dat", "1::2::5", r"cannot parse line 3: expected 4 fields separated by '::': '1::2::5'"),
    ("ratings.dat", "1::2::5::", r"column 'timestamp' has 1 empty values, the first in line 3 \(data row 2\)"),
    ("u.data", "1\t2\t5\t978300760\t9", r"cannot parse line 3: expected 4 fields separated by '\\t', got 5"),
])  # fmt: skip
def test_a_ratings_line_of_another_shape_is_refused_with_its_line(tmp_path, name, bad, match):
    """'1:9:2::3::4' loaded as user 1, item 2, rating 3 at time 4 (the lone ':' fields were
    never read); a line with too many or too few fields, or an empty field, was refused without
    its line, or at a row counted from 0. The blank line 2 is skipped, and counted."""
    good = "1::2::5::978300760" if name == "ratings.dat" else "1\t2\t5\t978300760"
    (tmp_path / name).write_text(f"{good}\n\n{bad}\n{good}\n")
    with pytest.raises(DataError, match=rf"{name}: {match}"):
        load_movielens(tmp_path)


def test_a_bad_value_after_blank_lines_names_its_line_in_the_file(tmp_path):
    """pyarrow skips empty lines without counting them: 'good' on line 6 was reported at line 3."""
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\r\n1,2,4.0,3\r\n\r\n\r\n\r\n1,3,good,4\r\n")
    with pytest.raises(
        DataError, match=r"ratings.csv: column 'rating' line 6 \(data row 2\) value 'good' is not double"
    ):
        load_movielens(tmp_path)


@pytest.mark.parametrize("side", ["u.user", "u.item"])
def test_a_side_file_that_is_a_directory_is_an_error(tmp_path, side):
    """A u.user or u.item that was a directory was skipped as if absent: the side features were
    silently left out. An absent side file is still skipped (the module docstring's rule)."""
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n")
    assert load_movielens(tmp_path).spec == movielens_spec()
    (tmp_path / side).mkdir()
    with pytest.raises(DataError, match=rf"{side}: is a directory, not a file"):
        load_movielens(tmp_path)


def test_a_csv_of_ones_own_read_as_movielens_points_at_the_table_format(tmp_path):
    """`freshrec train --data my.csv` (format movielens by default) listed four missing MovieLens
    columns and no way forward; a file with none of them is a file of one's own."""
    p = tmp_path / "my.csv"
    p.write_text("user,sku,clicked,ts\nu1,A-1,1,1700000000\n")
    with pytest.raises(DataError, match=r"not a MovieLens ratings file .*'user', 'sku'.*--format table"):
        load_movielens(p)
    p.write_text("userId,movieId,rating\n1,2,4.0\n")  # a MovieLens file missing a column: named as before
    with pytest.raises(DataError, match=r"missing column 'timestamp' \(for MovieLens ratings\)"):
        load_movielens(p)
