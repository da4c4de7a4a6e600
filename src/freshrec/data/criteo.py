"""Criteo display-advertising logs (the Kaggle challenge's ``train.txt`` format).

Each line is tab-separated: ``label``, 13 integer features ``I1..I13``, 26 categorical features
``C1..C26`` (32-bit hashes written as 8 hex characters). An empty field is a missing value.
There is no time column: the event time is the row number (the file is in log order).

* ``I1..I13`` are dense features with transform ``log1p`` and ``fill_missing = 0``: counts are
  heavy-tailed (I5 reaches 10**5-10**6) and log1p tames them without fitted statistics. A few
  values are negative (I2 down to -3); they are clipped to 0 at load, as DLRM's Criteo
  preprocessing does, so log1p stays defined.
* ``C1..C26`` are sparse slots; the hex strings are hashed like any string ID. A missing value is
  the empty string, which hashes to an ID of its own (distinct from every 8-character value).

:func:`load_criteo` reads a whole file into memory; :func:`stream_criteo` reads a large file
(a full 45M-row day) chunk by chunk with ``pyarrow.csv.open_csv`` and yields batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.data._read import CsvFormat, arrays, read_csv, stream_csv
from freshrec.data.dataset import Dataset, rebatch
from freshrec.errors import DataError
from freshrec.features import Batch, DenseFeature, FeatureSpec, SparseSlot

__all__ = ["CATEGORICAL", "INTEGER", "criteo_spec", "load_criteo", "stream_criteo"]

INTEGER = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
_FORMAT = CsvFormat(delimiter="\t", names=["label", *INTEGER, *CATEGORICAL], quoting=False)
_TYPES = {"label": pa.int64(), **{c: pa.int64() for c in INTEGER}, **{c: pa.string() for c in CATEGORICAL}}


def criteo_spec() -> FeatureSpec:
    """26 sparse slots, 13 log1p dense features (missing -> 0), label ``label``."""
    return FeatureSpec(
        sparse=[SparseSlot(name=c) for c in CATEGORICAL],
        dense=[DenseFeature(name=c, transform="log1p", fill_missing=0.0) for c in INTEGER],
        labels=["label"],
    )


def _file(path: Path) -> Path:
    if path.is_dir():
        if (path / "train.txt").is_file():
            return path / "train.txt"
        raise DataError(f"{path}: no Criteo train.txt here")
    return path


def _columns(path: Path, table: pa.Table | pa.RecordBatch, first_row: int) -> dict[str, object]:
    cols = arrays(table)
    out: dict[str, object] = {}
    label = cols["label"]
    if label.null_count:
        raise DataError(f"{path}: column 'label' has {label.null_count} empty values")
    y = label.to_numpy()
    bad = (y != 0) & (y != 1)
    if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column 'label' must be 0 or 1, got {y[bad][0]} at row {row}")
    out["label"] = y.astype(np.float32)
    for c in INTEGER:
        x = cols[c].cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # missing -> NaN; past 2**53 rounded
        out[c] = np.maximum(x, 0.0)  # NaN stays NaN (filled by the spec); negatives -> 0
    for c in CATEGORICAL:
        out[c] = pc.fill_null(cols[c], "")  # missing -> "" -> an ID of its own
    return out


def load_criteo(path: str | Path, spec: FeatureSpec | None = None) -> Dataset:
    """Load a Criteo TSV file (or a directory holding ``train.txt``) into memory.

    Columns: ``label``, ``I1..I13`` (float64, NaN = missing, negatives clipped to 0),
    ``C1..C26`` (strings, "" = missing). ``spec`` defaults to :func:`criteo_spec`.
    """
    file = _file(Path(path))
    table = read_csv(file, _FORMAT, types=_TYPES)
    ds = Dataset(spec or criteo_spec(), _columns(file, table, 0), source=str(file))
    if not any(d.needs_fit for d in ds.spec.dense):
        ds.encode()  # validate every value now, at load
    return ds


def stream_criteo(
    path: str | Path, batch_size: int, spec: FeatureSpec | None = None, block_size: int = 1 << 24
) -> Iterator[Batch]:
    """Batches of ``batch_size`` rows from a Criteo file of any size, reading ``block_size``
    bytes at a time; event time is the row number in the file. Memory stays at a few blocks."""
    file = _file(Path(path))
    spec = spec or criteo_spec()

    def chunks() -> Iterator[Batch]:
        row = 0
        for record_batch in stream_csv(file, _FORMAT, types=_TYPES, block_size=block_size):
            n = record_batch.num_rows
            cols = _columns(file, record_batch, row)
            event_time = np.arange(row, row + n, dtype=np.float64)
            yield spec.encode(cols, event_time=event_time, source=str(file))
            row += n

    return rebatch(chunks(), batch_size)
