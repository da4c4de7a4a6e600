"""FeatureSpec.encode: columns in, Batch out; transforms against numpy formulas; clear errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from freshrec.errors import ConfigError, DataError
from freshrec.features import DenseFeature, FeatureSpec, Jagged, SparseSlot, encodable_rows, hash_ids, take_rows


def rows_of(j: Jagged) -> list[list[int]]:
    return [j.values[j.offsets[i] : j.offsets[i + 1]].tolist() for i in range(j.size)]


@pytest.fixture
def spec():
    return FeatureSpec(
        sparse=[
            SparseSlot(name="user"),
            SparseSlot(name="item", table="items"),
            SparseSlot(name="history", table="items", multi_valued=True, pooling="mean", max_len=2),
        ],
        dense=[DenseFeature(name="price", transform="log1p", fill_missing=0.0)],
        labels=["click"],
        hash_seed=9,
    )


def columns():
    return {
        "user": ["alice", "bob", "alice"],
        "item": pa.array(["i1", "i2", "i3"]),
        "history": [["i3", "i2", "i1"], [], None],
        "price": np.array([1.0, np.nan, 99.0]),
        "click": np.array([1, 0, 1]),
        "ignored": ["whatever", 1, None],
    }


def test_encode_shapes_ids_and_order(spec):
    b = spec.encode(columns())
    assert list(b.sparse) == ["user", "item", "history"]
    assert b.size == 3
    np.testing.assert_array_equal(b.sparse["user"].values, hash_ids(["alice", "bob", "alice"], 9))
    assert b.sparse["user"].is_single
    # slots sharing a table map the same string to the same ID
    hist = rows_of(b.sparse["history"])
    assert hist == [hash_ids(["i3", "i2"], 9).tolist(), [], []]  # max_len=2 keeps the first two
    assert hist[0][0] == b.sparse["item"].values[2]
    np.testing.assert_allclose(b.dense[:, 0], np.log1p([1.0, 0.0, 99.0]).astype(np.float32))
    assert b.dense.dtype == np.float32 and b.labels.dtype == np.float32
    np.testing.assert_array_equal(b.labels, [[1], [0], [1]])
    np.testing.assert_array_equal(b.weights, [1, 1, 1])
    np.testing.assert_array_equal(b.event_time, [0, 1, 2])


def test_integer_ids_and_jagged_input_pass_through():
    spec = FeatureSpec(sparse=[SparseSlot(name="u"), SparseSlot(name="g", multi_valued=True)], labels=["y"])
    g = Jagged.from_lengths(np.array([5, 6, 7]), np.array([2, 0, 1]))
    b = spec.encode({"u": np.array([10, -3, 2**62]), "g": g, "y": [0, 1, 0]})
    np.testing.assert_array_equal(b.sparse["u"].values, [10, -3, 2**62])
    assert b.sparse["g"] == g
    b2 = spec.encode({"u": [1, 2, 3], "g": pa.array([[5, 6], [], [7]]), "y": [0, 1, 0]})
    assert b2.sparse["g"] == g


def test_labels_weights_and_event_time_options(spec):
    cols = {**columns(), "w": [0.5, 1.0, 2.0], "ts": pa.array([3, 1, 2], pa.timestamp("s"))}
    b = spec.encode(cols, weights="w", event_time="ts")
    np.testing.assert_array_equal(b.weights, [0.5, 1.0, 2.0])
    np.testing.assert_array_equal(b.event_time, [3.0, 1.0, 2.0])
    cols.pop("click")
    served = spec.encode(cols, labels=False, event_time=np.array([1.5, 2.5, 3.5]))
    assert served.labels.shape == (3, 0)
    np.testing.assert_array_equal(served.event_time, [1.5, 2.5, 3.5])


@pytest.mark.parametrize(
    "transform, formula",
    [
        ("none", lambda x, m, s: x),
        ("log1p", lambda x, m, s: np.log1p(x)),
        ("standardize", lambda x, m, s: (x - m) / s),
        ("log1p_standardize", lambda x, m, s: (np.log1p(x) - m) / s),
    ],
)
def test_dense_transforms_match_numpy(transform, formula):
    x = np.random.default_rng(3).exponential(10.0, 500)
    spec = FeatureSpec(sparse=[SparseSlot(name="u")], dense=[DenseFeature(name="x", transform=transform)])
    fitted = spec.fit({"x": x})
    feat = fitted.dense_feature("x")
    b = fitted.encode({"u": np.arange(500), "x": x, "label": np.zeros(500)})
    expected = formula(x, feat.mean, feat.std).astype(np.float32)
    np.testing.assert_allclose(b.dense[:, 0], expected, rtol=1e-6, atol=1e-6)
    if feat.standardizes:
        assert abs(b.dense[:, 0].mean()) < 1e-5 and b.dense[:, 0].std() == pytest.approx(1.0, rel=1e-4)


def test_nan_in_dense_names_the_feature(spec):
    spec2 = FeatureSpec(sparse=[SparseSlot(name="user")], dense=[DenseFeature(name="price")], labels=["click"])
    with pytest.raises(DataError, match=r"dense feature 'price' has 1 missing or non-finite values \(first at row 1"):
        spec2.encode(columns(), source="f.csv")
    with pytest.raises(DataError, match=r"^f.csv: dense feature 'price'.*set fill_missing"):
        spec2.encode(columns(), source="f.csv")
    inf = {**columns(), "price": [1.0, np.inf, 2.0]}
    with pytest.raises(DataError, match=r"dense feature 'price'.*non-finite"):
        spec.encode(inf)  # Inf is not "missing": fill_missing does not hide it


def test_a_dense_value_past_float32_is_refused_naming_the_feature(spec):
    """The batch holds float32: 1e300 (finite as float64) became Inf there, so the model's outputs
    went NaN. The trainer then skipped the whole batch as non-finite and serving answered null
    scores; a DataError lets the trainer leave out the one example and serving answer 422."""
    spec2 = FeatureSpec(sparse=[SparseSlot(name="user")], dense=[DenseFeature(name="discount")], labels=["click"])
    cols = {**columns(), "discount": [0.5, -1e300, 0.1]}
    with pytest.raises(DataError, match=r"^f.csv: dense feature 'discount': -1e\+300 at row 1 is past float32's range"):
        spec2.encode(cols, source="f.csv")
    std = FeatureSpec(sparse=[SparseSlot(name="user")], labels=["click"],
                      dense=[DenseFeature(name="discount", transform="standardize", mean=0.0, std=1e-300)])  # fmt: skip
    with pytest.raises(DataError, match=r"'discount': [0-9.e+]+ after transform standardize at row 0 is past"):
        std.encode({**cols, "discount": [0.5, 0.0, 0.1]})
    b = spec.encode({**columns(), "price": [1.7e308, 1.0, 2.0]})  # log1p brings it in range: fine
    assert np.isfinite(b.dense).all()
    keep, bad = encodable_rows(lambda rows: spec2.encode(take_rows(cols, rows)), 3)
    assert keep.tolist() == [0, 2] and [row for row, _ in bad] == [1]


def test_transform_domain_and_wrong_types(spec):
    with pytest.raises(DataError, match=r"dense feature 'price': transform log1p needs values > -1, got -2.0 at row 2"):
        spec.encode({**columns(), "price": [1.0, 2.0, -2.0]})
    with pytest.raises(DataError, match=r"dense feature 'price' needs numbers, got string \(e.g. 'cheap'\)"):
        spec.encode({**columns(), "price": ["cheap", "dear", "free"]})
    with pytest.raises(DataError, match="sparse slot 'user': IDs must be integers or strings, got double"):
        spec.encode({**columns(), "user": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match=r"sparse slot 'user' has 1 missing values \(first at row 1\)"):
        spec.encode({**columns(), "user": ["a", None, "c"]})
    with pytest.raises(DataError, match="sparse slot 'user' is single-valued but got lists"):
        spec.encode({**columns(), "user": [[1], [2], [3]]})
    with pytest.raises(DataError, match="sparse slot 'history' is multi-valued and needs lists"):
        spec.encode({**columns(), "history": [1, 2, 3]})
    with pytest.raises(DataError, match="label 'click'"):
        spec.encode({**columns(), "click": [1, None, 0]})


def test_missing_columns_and_row_mismatch(spec):
    cols = columns()
    del cols["price"]
    with pytest.raises(DataError, match=r"^data.csv: column 'price' \(needed by dense feature 'price'\) is missing"):
        spec.encode(cols, source="data.csv")
    with pytest.raises(DataError, match=r"column 'w' \(needed by weights\)"):
        spec.encode(columns(), weights="w")
    with pytest.raises(DataError, match="dense feature 'price' has 2 rows, sparse slot 'user' has 3"):
        spec.encode({**columns(), "price": [1.0, 2.0]})
    with pytest.raises(DataError, match="weights must be >= 0"):
        spec.encode(columns(), weights=np.array([1.0, -1.0, 1.0]))
    # a str is a sequence: it was read as one ID per character; a scalar raised a raw TypeError
    with pytest.raises(DataError, match=r"sparse slot 'user': a column is a sequence of values.*got str"):
        spec.encode({**columns(), "user": "abc"})
    with pytest.raises(DataError, match=r"event_time: a column is a sequence of values.*got float"):
        spec.encode(columns(), event_time=5.0)
    # a missing timestamp became a time in 1677
    times = np.array(["2026-01-01T00:00", "NaT", "2026-01-01T00:01"], dtype="datetime64[s]")
    with pytest.raises(DataError, match=r"event_time has 1 missing timestamps \(NaT\)"):
        spec.encode(columns(), event_time=times)


def test_unfitted_standardize_is_a_config_error():
    spec = FeatureSpec(sparse=[SparseSlot(name="u")], dense=[DenseFeature(name="x", transform="standardize")])
    with pytest.raises(ConfigError, match=r"call spec.fit"):
        spec.encode({"u": [1], "x": [1.0], "label": [0]})


def test_encode_is_deterministic(spec):
    a, b = spec.encode(columns()), spec.encode(columns())
    for k in a.sparse:
        assert a.sparse[k] == b.sparse[k]
    np.testing.assert_array_equal(a.dense, b.dense)


def test_a_column_mixing_integer_and_string_ids_is_encoded_value_by_value():
    """Events may send an ID as 5 or as "5": a batch that mixes them raised DataError, and the
    online trainer stopped on it. Each value now gets the ID a column of its own type gives."""
    spec = FeatureSpec(sparse=[SparseSlot(name="u"), SparseSlot(name="h", multi_valued=True)], hash_seed=3)
    b = spec.encode({"u": [5, "5", "x"], "h": [[1, "a"], None, ("b",)], "label": [0, 1, 0]})
    assert b.sparse["u"].values.tolist() == [5, *hash_ids(["5", "x"], 3).tolist()]
    assert rows_of(b.sparse["h"]) == [[1, hash_ids(["a"], 3)[0]], [], [hash_ids(["b"], 3)[0]]]
    with pytest.raises(DataError, match=r"sparse slot 'u': IDs must be integers or strings; row 2 has float 1.5"):
        spec.encode({"u": [5, "x", 1.5], "h": [[]] * 3, "label": [0] * 3})
    with pytest.raises(DataError, match=r"sparse slot 'u' has missing values \(first at row 1\)"):
        spec.encode({"u": [5, None, "x"], "h": [[]] * 3, "label": [0] * 3})
    with pytest.raises(DataError, match=r"sparse slot 'h' is multi-valued and needs lists of IDs; row 1 has str 'a'"):
        spec.encode({"u": [1, 2], "h": [[1, "b"], "a"], "label": [0] * 2})


def test_declared_id_types_make_one_id_whatever_the_source_sends():
    text = FeatureSpec(sparse=[SparseSlot(name="u", id_type="text"), SparseSlot(name="h", id_type="text",
                                                                                multi_valued=True)], hash_seed=3)  # fmt: skip
    want = hash_ids(["5", "7", "007"], 3).tolist()
    for col in ([5, "7", "007"], np.array([5, 7]), pa.array([5, 7]), pa.array(["5", "7"]).dictionary_encode()):
        b = text.encode({"u": col, "h": [[5, "7"]] * len(col), "label": [0] * len(col)})
        assert b.sparse["u"].values.tolist() == want[: len(col)]
        assert b.sparse["h"].values.tolist() == want[:2] * len(col)
    ints = FeatureSpec(sparse=[SparseSlot(name="u", id_type="int"), SparseSlot(name="h", id_type="int",
                                                                               multi_valued=True)])  # fmt: skip
    b = ints.encode({"u": ["5", " +7 ", 9, "-3"], "h": [["1", 2], [], None, ["007"]], "label": [0] * 4})
    assert b.sparse["u"].values.tolist() == [5, 7, 9, -3]
    assert rows_of(b.sparse["h"]) == [[1, 2], [], [], [7]]
    with pytest.raises(DataError, match=r"sparse slot 'u': id_type is int, but row 2 holds 'guest'"):
        ints.encode({"u": [1, "2", "guest"], "h": [[]] * 3, "label": [0] * 3})
    with pytest.raises(
        DataError, match=r"sparse slot 'h': id_type is int, but ID \(counting across the rows' lists\) 2"
    ):
        ints.encode({"u": [1, 2], "h": [["1"], ["2", "x"]], "label": [0] * 2})
    with pytest.raises(DataError, match=r"sparse slot 'u': id_type is int, and an ID is past the int64 range"):
        ints.encode({"u": ["99999999999999999999"], "h": [[]], "label": [0]})
    with pytest.raises(ValueError, match=r"slots sharing table 'items' must agree on id_type: 'a' int, 'b' auto"):
        FeatureSpec(sparse=[SparseSlot(name="a", table="items", id_type="int"), SparseSlot(name="b", table="items")])
