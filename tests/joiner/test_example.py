"""The Example record: its codec, its validation, and its columns through a FeatureSpec into a Batch."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from freshrec.errors import InputError, SchemaError
from freshrec.features import DenseFeature, FeatureSpec, SparseSlot, hash_ids
from freshrec.joiner import Example, decode_example, decode_examples, encode_examples, examples_to_columns
from freshrec.joiner.example import RESERVED_COLUMNS, merge_features


def ex(i: int, **kw) -> Example:
    base = dict(
        example_id=i, request_id=100 + i, event_time=10.0 + i, emitted_at=20.0 + i, user_id=i % 3,
        item_id=f"it{i}", position=i % 4, model_version="m1",
        features={"category": i % 5, "price": 1.5 * i, "device": "ios" if i % 2 else "web"},
        labels={"click": i % 2, "purchase": int(i == 3)}, sample_weight=1.0 if i % 2 else 4.0,
        sampling_rate=1.0 if i % 2 else 0.25,
    )  # fmt: skip
    base.update(kw)
    return Example(**base)


def test_round_trip_and_version():
    examples = [ex(i) for i in range(5)]
    blobs = encode_examples(examples)
    assert decode_examples(blobs) == examples
    assert decode_example(blobs[1]) == examples[1]
    assert msgspec.msgpack.decode(blobs[0])["kind"] == "example"
    assert msgspec.msgpack.decode(blobs[0])["schema_version"] == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"position": -1}, "example.position"),
        ({"position": 2**63}, "example.position"),  # examples_to_columns' int64 column cannot hold it
        ({"labels": {"click": 2}}, "example.labels"),
        ({"sample_weight": 0.0}, "example.sample_weight"),
        ({"sampling_rate": 1.5}, "example.sampling_rate"),
        ({"schema_version": 9}, "example.schema_version"),
        ({"event_time": float("nan")}, "example.event_time"),
        ({"surprise": 1}, "example.surprise"),
    ],
)
def test_bad_records_name_the_field(change, field):
    record = msgspec.msgpack.decode(encode_examples([ex(1)])[0])
    record.update(change)
    blob = msgspec.msgpack.encode(record)
    with pytest.raises(SchemaError, match=rf"^{field}"):
        decode_example(blob)
    with pytest.raises(SchemaError, match=rf"^examples\[1\]: {field}"):
        decode_examples([encode_examples([ex(0)])[0], blob])


def test_columns_have_the_documented_shapes():
    examples = [ex(i) for i in range(4)]
    cols = examples_to_columns(examples)
    assert sorted(cols) == sorted([*RESERVED_COLUMNS, "click", "purchase", "category", "price", "device"])
    assert cols["example_id"].dtype == np.int64 and cols["example_id"].tolist() == [0, 1, 2, 3]
    assert cols["item_id"] == ["it0", "it1", "it2", "it3"]
    assert cols["position"].tolist() == [0, 1, 2, 3]
    assert cols["click"].dtype == np.int8 and cols["click"].tolist() == [0, 1, 0, 1]
    assert cols["purchase"].tolist() == [0, 0, 0, 1]
    assert cols["sample_weight"].tolist() == [4.0, 1.0, 4.0, 1.0]
    assert cols["sampling_rate"].tolist() == [0.25, 1.0, 0.25, 1.0]
    assert cols["category"].dtype == np.int64 and cols["price"].dtype == np.float64
    assert cols["device"] == ["web", "ios", "web", "ios"]
    assert examples_to_columns([])["position"].shape == (0,)


def test_missing_features_are_none_and_mixed_numbers_are_floats():
    a = ex(1, features={"x": 1, "only_a": "s"})
    b = ex(2, features={"x": 2.5})
    cols = examples_to_columns([a, b])
    assert cols["x"].dtype == np.float64 and cols["x"].tolist() == [1.0, 2.5]
    assert cols["only_a"] == ["s", None]


def test_columns_refuse_bad_input():
    with pytest.raises(InputError, match="sequence of Example"):
        examples_to_columns(ex(1))
    with pytest.raises(InputError, match=r"examples\[1\] must be an Example"):
        examples_to_columns([ex(1), {"example_id": 2}])
    with pytest.raises(InputError, match=r"examples\[1\] has labels"):
        examples_to_columns([ex(1), ex(2, labels={"click": 1})])
    with pytest.raises(InputError, match="feature 'position' has the name of a column"):
        examples_to_columns([ex(1, features={"position": 3})])


def test_columns_encode_into_a_batch():
    """The trainer's one call: examples -> columns -> FeatureSpec.encode -> Batch."""
    examples = [ex(i) for i in range(6)]
    spec = FeatureSpec(
        sparse=[SparseSlot(name="user_id"), SparseSlot(name="item_id"), SparseSlot(name="device"),
                SparseSlot(name="category")],
        dense=[DenseFeature(name="price", transform="log1p")],
        labels=["click", "purchase"],
    )  # fmt: skip
    cols = examples_to_columns(examples)
    batch = spec.encode(cols, weights=cols["sample_weight"], event_time="event_time")
    assert batch.size == 6
    assert batch.sparse["user_id"].values.tolist() == [e.user_id for e in examples]
    assert batch.sparse["category"].values.tolist() == [e.features["category"] for e in examples]
    np.testing.assert_array_equal(batch.sparse["item_id"].values, hash_ids(np.array([f"it{i}" for i in range(6)]), 0))
    np.testing.assert_allclose(batch.dense[:, 0], np.log1p([1.5 * i for i in range(6)]), rtol=1e-6)
    np.testing.assert_array_equal(batch.labels, [[e.labels["click"], e.labels["purchase"]] for e in examples])
    np.testing.assert_array_equal(batch.weights, [e.sample_weight for e in examples])
    np.testing.assert_array_equal(batch.event_time, [e.event_time for e in examples])


def test_merge_features_rule():
    reserved = frozenset(RESERVED_COLUMNS) | {"click"}
    assert merge_features({"a": 1}, {"b": 2}, {"c": 3}, reserved) == {"a": 1, "b": 2, "c": 3}
    assert merge_features({"a": 1}, {"a": 2}, {}, reserved) == {"user_a": 1, "item_a": 2}
    assert merge_features({}, {"item_id": 5}, {"click": 1}, reserved) == {
        "item_item_id": 5,
        "context_click": 1,
    }
    with pytest.raises(SchemaError, match="both end up as 'user_a'"):
        merge_features({"a": 1, "user_a": 0}, {"a": 2}, {}, reserved)
