"""FeatureSpec: file round trips, table resolution and sharing, validation, dense fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from freshrec.errors import ConfigError, DataError
from freshrec.features import DenseFeature, FeatureSpec, SparseSlot
from freshrec.table import TableConfig

SPEC_TOML = """
hash_seed = 42
labels = ["click", "purchase"]
table_defaults = { dim = 16, ttl = 86400.0 }

[[sparse]]
name = "user_id"
admission = { min_count = 2 }

[[sparse]]
name = "item_id"
table = "item"

[[sparse]]
name = "clicked_items"
table = "item"
multi_valued = true
pooling = "mean"
max_len = 50

[[sparse]]
name = "seller"
dim = 8
optimizer = { type = "adam", lr = 0.001 }

[[dense]]
name = "price"
transform = "log1p_standardize"
fill_missing = 0.0

[[tables]]
name = "item"
dim = 32
initializer = { type = "zeros" }
"""


def make_spec(**fields) -> FeatureSpec:
    """Build through from_dict, the path files and the CLI take: errors are ConfigError."""
    return FeatureSpec.from_dict(fields)


def make_slot(**fields) -> SparseSlot:
    return SparseSlot.from_dict(fields)


def make_dense(**fields) -> DenseFeature:
    return DenseFeature.from_dict(fields)


@pytest.fixture
def spec_file(tmp_path):
    p = tmp_path / "spec.toml"
    p.write_text(SPEC_TOML)
    return p


def test_toml_load_resolves_tables(spec_file):
    spec = FeatureSpec.from_file(spec_file)
    tables = spec.table_configs()
    assert list(tables) == ["user_id", "item", "seller"]
    assert {name: t.name for name, t in tables.items()} == {n: n for n in tables}
    assert tables["user_id"].dim == 16 and tables["user_id"].ttl == 86400.0
    assert tables["user_id"].admission.min_count == 2
    assert tables["item"].dim == 32 and tables["item"].ttl is None  # declared table: its own settings
    assert tables["item"].initializer.type == "zeros"
    assert tables["seller"].dim == 8 and tables["seller"].optimizer.type == "adam"
    assert spec.slot_table("clicked_items") == spec.slot_table("item_id") == "item"
    assert spec.slot("clicked_items").pooling == "mean" and spec.slot("clicked_items").max_len == 50
    assert spec.hash_seed == 42 and spec.labels == ["click", "purchase"]


def test_round_trip_through_yaml_and_json(spec_file, tmp_path):
    spec = FeatureSpec.from_file(spec_file)
    data = spec.model_dump(mode="json", exclude_none=True)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "spec.json").write_text(json.dumps(data))
    assert FeatureSpec.from_file(tmp_path / "spec.yaml") == spec
    assert FeatureSpec.from_file(tmp_path / "spec.json") == spec
    assert FeatureSpec.from_file(tmp_path / "spec.yaml").table_configs() == spec.table_configs()


def test_cli_style_overrides(spec_file):
    spec = FeatureSpec.from_file(spec_file, overrides=["hash_seed=7", "table_defaults.dim=24"])
    assert spec.hash_seed == 7
    assert spec.table_configs()["user_id"].dim == 24


def test_shared_table_settings_must_agree():
    with pytest.raises(ConfigError, match=r"slots 'a' and 'b' share table 't' but disagree on dim: 8 vs 4"):
        make_spec(sparse=[make_slot(name="a", table="t", dim=8), make_slot(name="b", table="t", dim=4)])
    with pytest.raises(ValueError, match="disagree on dim"):  # built in Python: pydantic's ValidationError
        FeatureSpec(sparse=[SparseSlot(name="a", table="t", dim=8), SparseSlot(name="b", table="t", dim=4)])
    # one slot may set it and the other inherit
    spec = FeatureSpec(sparse=[SparseSlot(name="a", table="t", dim=8), SparseSlot(name="b", table="t")])
    assert spec.table_configs() == {"t": TableConfig(name="t", dim=8)}


def test_slot_settings_must_match_a_declared_table():
    with pytest.raises(ConfigError, match=r"slot 'a' sets dim=8 but its table 't' has dim=32"):
        make_spec(sparse=[make_slot(name="a", table="t", dim=8)], tables=[{"name": "t", "dim": 32}])
    with pytest.raises(ConfigError, match="ttl"):
        make_spec(sparse=[make_slot(name="a", table="t", ttl=5)], tables=[{"name": "t", "ttl": 6}])
    ok = FeatureSpec(sparse=[SparseSlot(name="a", table="t", dim=32)], tables=[{"name": "t", "dim": 32}])
    assert ok.table_configs()["t"].dim == 32


def test_declared_tables_must_be_used_and_unique():
    with pytest.raises(ConfigError, match=r"tables \['orphan'\] are declared but no sparse slot uses them"):
        make_spec(sparse=[make_slot(name="a")], tables=[{"name": "orphan"}])
    with pytest.raises(ConfigError, match="declared twice"):
        make_spec(sparse=[make_slot(name="a")], tables=[{"name": "a"}, {"name": "a"}])


def test_slot_settings_are_validated_against_table_defaults():
    # table_defaults carries a 16-wide default vector; a slot asking for dim 8 conflicts with it
    with pytest.raises(ConfigError, match=r"table 'a'.*default_value has 16 values"):
        make_spec(sparse=[make_slot(name="a", dim=8)], table_defaults={"default_value": [0.0] * 16})


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"sparse.0.dimension"):
        FeatureSpec.from_dict({"sparse": [{"name": "a", "dimension": 8}]})
    with pytest.raises(ConfigError, match="colour"):
        FeatureSpec.from_dict({"sparse": [{"name": "a"}], "colour": "red"})
    with pytest.raises(ConfigError, match="pooling"):
        make_slot(name="a", pooling="max")
    p = tmp_path / "bad.yaml"
    p.write_text("sparse:\n  - name: a\n    tabel: x\n")
    with pytest.raises(ConfigError, match="tabel"):
        FeatureSpec.from_file(p)


def test_unknown_feature_names_are_errors():
    spec = FeatureSpec(sparse=[SparseSlot(name="a")], dense=[DenseFeature(name="x")])
    with pytest.raises(ConfigError, match=r"unknown sparse slot 'b'; the spec has \['a'\]"):
        spec.slot_table("b")
    with pytest.raises(ConfigError, match="unknown dense feature 'y'"):
        spec.dense_feature("y")


def test_names_must_be_unique_and_labels_not_features():
    with pytest.raises(ConfigError, match=r"repeated: \['a'\]"):
        make_spec(sparse=[make_slot(name="a"), make_slot(name="a")])
    with pytest.raises(ConfigError, match="also features"):
        make_spec(sparse=[make_slot(name="a")], labels=["a"])
    with pytest.raises(ConfigError, match="labels"):
        make_spec(sparse=[make_slot(name="a")], labels=[])
    with pytest.raises(ConfigError, match="at least one"):
        make_spec(sparse=[])


def test_multi_valued_flags():
    s = SparseSlot(name="h", multi_valued=True, pooling="mean", max_len=3)
    assert (s.multi_valued, s.pooling, s.max_len) == (True, "mean", 3)
    assert SparseSlot(name="g").pooling == "sum"
    with pytest.raises(ConfigError, match="max_len applies only to multi_valued"):
        make_slot(name="h", max_len=3)
    with pytest.raises(ConfigError, match="max_len"):
        make_slot(name="h", multi_valued=True, max_len=0)


def test_dense_feature_validation():
    with pytest.raises(ConfigError, match="mean/std apply only"):
        make_dense(name="x", transform="log1p", mean=1.0)
    with pytest.raises(ConfigError, match="std"):
        make_dense(name="x", transform="standardize", std=0.0)
    with pytest.raises(ConfigError, match="finite"):
        make_dense(name="x", fill_missing=float("nan"))
    assert DenseFeature(name="x", transform="standardize").needs_fit
    assert not DenseFeature(name="x", transform="standardize", mean=0, std=1).needs_fit


def test_fit_matches_numpy():
    rng = np.random.default_rng(0)
    price = rng.lognormal(3, 1, 1000)
    age = rng.normal(40, 12, 1000)
    age[::7] = np.nan
    spec = FeatureSpec(
        sparse=[SparseSlot(name="u")],
        dense=[
            DenseFeature(name="price", transform="log1p_standardize"),
            DenseFeature(name="age", transform="standardize", fill_missing=30.0),
            DenseFeature(name="given", transform="standardize", mean=1.0, std=2.0),
            DenseFeature(name="const", transform="standardize"),
        ],
    )
    cols = {"price": price, "age": age, "given": rng.random(1000), "const": np.full(1000, 5.0)}
    fitted = spec.fit(cols)
    filled = np.where(np.isnan(age), 30.0, age)
    assert fitted.dense_feature("price").mean == pytest.approx(np.log1p(price).mean())
    assert fitted.dense_feature("price").std == pytest.approx(np.log1p(price).std())
    assert fitted.dense_feature("age").mean == pytest.approx(filled.mean())
    assert fitted.dense_feature("age").std == pytest.approx(filled.std())
    assert (fitted.dense_feature("given").mean, fitted.dense_feature("given").std) == (1.0, 2.0)
    assert fitted.dense_feature("const").std == 1.0  # constant: standardizes to 0, no division by 0
    assert spec.dense_feature("price").mean is None  # fit returns a copy
    with pytest.raises(DataError, match="dense feature 'price'"):
        spec.fit({**cols, "price": np.array([1.0, np.nan])})
