"""Request features -> model columns: the same batch as encoding the joiner's flat examples."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.errors import InputError
from freshrec.features import FeatureSpec, SparseSlot, hash_ids
from freshrec.serve.features import ColumnBuilder, merge_features

from .conftest import SPEC

RESERVED = {"user_id", "item_id", "position", "request_id", "click"}


def naive_columns(user_id, user, context, item_ids, items):
    """The joiner's flattening done the obvious way: one merged dict per candidate."""
    rows = []
    for iid, feats in zip(item_ids, items, strict=True):
        names = list(user) + list(feats) + list(context)
        clash = {n for n in names if names.count(n) > 1 or n in RESERVED}
        row = {"user_id": user_id, "item_id": iid, "position": 0}
        for prefix, d in (("user_", user), ("item_", feats), ("context_", context)):
            for k, v in d.items():
                row[prefix + k if k in clash else k] = v
        rows.append(row)
    return {k: [r.get(k) for r in rows] for k in {k for r in rows for k in r}}


def assert_same_batch(a, b):
    assert set(a.sparse) == set(b.sparse)
    for slot in a.sparse:
        assert a.sparse[slot] == b.sparse[slot], slot
    np.testing.assert_array_equal(a.dense, b.dense)


USER = {"segment": 2}
CONTEXT = {"hour": 21, "device": "ios"}
ITEMS = [
    {"category": i % 10, "seller_id": f"s{i}", "tags": [f"t{i}", "t0"], "price": 10.0 + i, "discount": 0.5}
    for i in range(6)
]


def test_broadcast_path_equals_the_naive_flattening():
    b = ColumnBuilder(SPEC)
    ids = [f"it{i}" for i in range(6)]
    cols, missing = b.raw(7, USER, CONTEXT, ids, ITEMS)
    assert missing == []
    want = SPEC.encode(naive_columns(7, USER, CONTEXT, ids, ITEMS), labels=False, event_time=np.zeros(6))
    assert_same_batch(b.encode(cols, 6), want)


def test_clashing_names_are_prefixed_like_the_joiner():
    spec = FeatureSpec(
        sparse=[SparseSlot(name=n) for n in ("user_id", "user_color", "item_color", "hour")], labels=["click"]
    )
    b = ColumnBuilder(spec)
    items = [{"color": "red"}, {"color": "blue"}]
    cols, missing = b.raw(1, {"color": "green"}, {"hour": 3}, [10, 11], items)
    assert missing == []
    naive = naive_columns(1, {"color": "green"}, {"hour": 3}, [10, 11], items)
    assert naive["user_color"] == ["green", "green"] and naive["item_color"] == ["red", "blue"]
    assert_same_batch(b.encode(cols, 2), spec.encode(naive, labels=False, event_time=np.zeros(2)))


def test_merge_refuses_a_name_that_becomes_ambiguous():
    with pytest.raises(InputError, match="both end up as 'user_color'"):
        merge_features({"color": 1, "user_color": 2}, {"color": 3}, {}, frozenset())


def test_missing_features_are_reported_per_row():
    b = ColumnBuilder(SPEC)
    items = [dict(f) for f in ITEMS[:3]]
    del items[1]["category"]  # single-valued slot: missing in one row
    del items[2]["tags"]  # multi-valued: an empty list, not missing
    for f in items:
        del f["discount"]  # dense with fill_missing: filled, not missing
    _cols, missing = b.raw(1, USER, CONTEXT, ["a", "b", "c"], items)
    assert [(m.name, m.rows.tolist()) for m in missing] == [("category", [1])]
    del items[0]["price"]  # dense without fill_missing
    _, missing = b.raw(1, USER, CONTEXT, ["a", "b", "c"], items)
    assert {m.name: m.rows.tolist() for m in missing} == {"category": [1], "price": [0]}


def test_id_columns_hash_like_training_even_when_mixed():
    """A request whose candidates mix integer and string IDs gets, for each, the ID a column of
    its own type gives (as training does); a float is refused, naming the slot and the row."""
    b = ColumnBuilder(SPEC)
    mixed = [3, "x", 7, "y"]
    items = [{"category": 1, "seller_id": 9, "price": 2.0, "tags": [1, "t"]}] * 4
    cols, missing = b.raw(1, USER, CONTEXT, mixed, items)
    assert not missing
    got = b.encode(cols, 4).sparse["item_id"].values
    seed = SPEC.hash_seed
    np.testing.assert_array_equal(got[[0, 2]], hash_ids(np.array([3, 7]), seed))
    np.testing.assert_array_equal(got[[1, 3]], hash_ids(["x", "y"], seed))
    tags = b.encode(cols, 4).sparse["tags"].values
    np.testing.assert_array_equal(tags[:2], [1, hash_ids(["t"], seed)[0]])
    cols, _ = b.raw(1, USER, CONTEXT, [1, 2.5], items[:2])
    with pytest.raises(InputError, match=r"'item_id': IDs must be integers or strings, got double \(row 1: 2\.5\)"):
        b.encode(cols, 2)


def test_only_keeps_one_tower_and_fills_the_rest():
    b = ColumnBuilder(SPEC, only=["category", "price"])
    cols, missing = b.raw(0, {}, {}, ["a"], [{"category": 3, "price": 1.0}])
    assert missing == []
    batch = b.encode(cols, 1)
    assert batch.sparse["user_id"].values.tolist() == [0]  # a placeholder, never read
    assert batch.sparse["tags"].values.size == 0
    assert batch.sparse["category"].values.tolist() == [3]
