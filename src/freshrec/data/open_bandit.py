"""The Open Bandit Dataset (ZOZOTOWN, Saito et al. 2020): real impressions with click labels.

A log file (e.g. ``random/all/all.csv``) has one row per impression: an unnamed row index,
``timestamp`` (ISO 8601, UTC), ``item_id`` (0..n_items-1), ``position`` (1-3), ``click``,
``propensity_score`` (the logging policy's probability of this item at this position),
``user_feature_0..3`` (hashed categorical strings) and ``user-item_affinity_0..n_items-1``.
``item_context.csv`` beside it holds ``item_id``, ``item_feature_0`` (numeric) and
``item_feature_1..3`` (categorical); without one the item features are left out (a directory
or anything else of that name is an error, not a file skipped).

Features of the default spec:

* sparse: ``item_id``, ``position``, ``user_feature_0..3`` and, with item_context.csv,
  ``item_feature_1..3``;
* dense: ``affinity``, the user's affinity to the shown item (the ``user-item_affinity_<item_id>``
  column of the row; 0-2, almost always 0), and ``item_feature_0`` (already standardized in the
  file, so no transform);
* label: ``click``. ``propensity_score`` stays as a column for off-policy estimators;
  event time is the timestamp in unix seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from freshrec.data._read import CsvFormat, arrays, header, join_index, read_csv, require, side_file
from freshrec.data.dataset import Dataset
from freshrec.errors import DataError
from freshrec.features import DenseFeature, FeatureSpec, SparseSlot
from freshrec.features._encode import seconds

__all__ = ["load_open_bandit", "open_bandit_spec"]

USER_FEATURES = [f"user_feature_{k}" for k in range(4)]
ITEM_SPARSE = [f"item_feature_{k}" for k in (1, 2, 3)]
_AFFINITY = re.compile(r"^user-item_affinity_(\d+)$")
_TYPES = {
    "timestamp": pa.timestamp("us", tz="UTC"),
    "item_id": pa.int64(),
    "position": pa.int64(),
    "click": pa.int64(),
    "propensity_score": pa.float64(),
    **{u: pa.string() for u in USER_FEATURES},
}


def open_bandit_spec(item_context: bool = True) -> FeatureSpec:
    """The default spec (see the module docstring); ``item_context`` adds the item features."""
    sparse = [SparseSlot(name="item_id"), SparseSlot(name="position")]
    sparse += [SparseSlot(name=u) for u in USER_FEATURES]
    dense = [DenseFeature(name="affinity")]
    if item_context:
        sparse += [SparseSlot(name=f) for f in ITEM_SPARSE]
        dense.append(DenseFeature(name="item_feature_0"))
    return FeatureSpec(sparse=sparse, dense=dense, labels=["click"])


def _log_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    logs = sorted(p for p in path.glob("*.csv") if p.name != "item_context.csv")
    if len(logs) != 1:
        raise DataError(f"{path}: expected one Open Bandit log CSV besides item_context.csv, found {logs}")
    return logs[0]


def _item_columns(log_file: Path, side: Path, item_ids: np.ndarray) -> dict[str, object]:
    fmt = CsvFormat()
    needed = ["item_id", "item_feature_0", *ITEM_SPARSE]
    require(side, header(side, fmt), {c: "item context" for c in needed})
    types = {"item_id": pa.int64(), "item_feature_0": pa.float64(), **{f: pa.string() for f in ITEM_SPARSE}}
    items = arrays(read_csv(side, fmt, types=types, include=needed))
    ids = items["item_id"].to_numpy(zero_copy_only=False)
    if items["item_id"].null_count or (ids.size and ids.min() < 0):
        raise DataError(f"{side}: column 'item_id' must hold non-negative integers")
    rows = join_index(log_file, side, item_ids, ids, "item")
    out: dict[str, object] = {"item_feature_0": items["item_feature_0"].to_numpy(zero_copy_only=False)[rows]}
    for f in ITEM_SPARSE:
        out[f] = pa.DictionaryArray.from_arrays(pa.array(rows.astype(np.int32)), items[f])
    return out


def load_open_bandit(path: str | Path, spec: FeatureSpec | None = None) -> Dataset:
    """Load an Open Bandit log (a CSV file, or a directory such as ``random/all`` holding one
    log CSV and ``item_context.csv``) as a time-ordered Dataset.

    Columns: ``item_id``, ``position``, ``click``, ``propensity_score``, ``user_feature_0..3``,
    ``affinity`` and, with item_context.csv, ``item_feature_0..3``.
    """
    file = _log_file(Path(path))
    fmt = CsvFormat()
    names = header(file, fmt)
    require(file, names, {c: "Open Bandit log" for c in _TYPES})
    affinity = {int(m.group(1)): n for n in names if (m := _AFFINITY.match(n))}
    n_items = len(affinity)
    if sorted(affinity) != list(range(n_items)):
        raise DataError(f"{file}: affinity columns must be user-item_affinity_0..N-1, got {sorted(affinity)}")
    aff_cols = [affinity[k] for k in range(n_items)]
    types = {**_TYPES, **{a: pa.float64() for a in aff_cols}}
    cols = arrays(read_csv(file, fmt, types=types, include=[*_TYPES, *aff_cols]))
    for name in _TYPES:
        if cols[name].null_count:
            raise DataError(f"{file}: column {name!r} has {cols[name].null_count} empty values")
    item_ids = cols["item_id"].to_numpy()
    if item_ids.size and (item_ids.min() < 0 or item_ids.max() >= n_items):
        raise DataError(f"{file}: column 'item_id' must be in 0..{n_items - 1} (one affinity column each)")
    click, propensity = cols["click"].to_numpy(), cols["propensity_score"].to_numpy()
    for name, bad, want in (("click", (click != 0) & (click != 1), "0 or 1"),
                            ("propensity_score", ~((propensity > 0) & (propensity <= 1)), "in (0, 1]")):  # fmt: skip
        where = np.flatnonzero(bad)
        if where.size:
            value = (click if name == "click" else propensity)[where[0]].item()
            raise DataError(f"{file}: column {name!r} must be {want}; {where.size:,} values are not, the first in "
                            f"data row {where[0] + 1} ({value!r})")  # fmt: skip
    aff = np.stack([cols[a].to_numpy(zero_copy_only=False) for a in aff_cols], axis=1)  # (B, n_items)
    out: dict[str, object] = {
        "item_id": item_ids,
        "position": cols["position"].to_numpy(),
        "click": cols["click"].to_numpy().astype(np.float32),
        "propensity_score": cols["propensity_score"].to_numpy(),
        "affinity": aff[np.arange(item_ids.size), item_ids],
        **{u: cols[u] for u in USER_FEATURES},
    }
    side = file.parent / "item_context.csv"
    has_items = side_file(side)
    if has_items:
        out.update(_item_columns(file, side, item_ids))
    event_time = seconds(cols["timestamp"], "column 'timestamp'", str(file))
    ds = Dataset(spec or open_bandit_spec(has_items), out, event_time=event_time, source=str(file))
    if not any(d.needs_fit for d in ds.spec.dense):
        ds.encode()  # validate every value now, at load
    return ds
