"""Any Parquet or CSV file, with a mapping from its columns to the features of a spec.

A mapping file (TOML) looks like::

    event_time = "ts"                  # optional: seconds (numbers) or timestamps
    weights = "w"                      # optional
    [columns]                          # feature or label -> file column; others read their own name
    user_id = "uid"
    item_id = "sku"
    [spec]
    labels = ["clicked"]
    [[spec.sparse]]
    name = "user_id"
    [[spec.sparse]]
    name = "item_id"

Column types: single-valued slots take integer columns (IDs as they are) or string columns
(hashed); multi-valued slots take Parquet list columns, or CSV cells holding IDs separated by
``list_separator`` (``"3|17|42"``; integers if every element parses as one, else strings).
Dense features, labels and weights must be numeric. In CSV only an empty cell is missing: a
missing dense value needs ``fill_missing``, a missing single-valued ID is an error, a missing
list is an empty row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from freshrec.config import Config
from freshrec.data._read import CsvFormat, arrays, header, read_csv, require, stream_csv
from freshrec.data.dataset import Dataset, rebatch
from freshrec.errors import ConfigError, DataError
from freshrec.features import Batch, FeatureSpec
from freshrec.features._encode import numbers, seconds

__all__ = ["ColumnMapping", "load_table_file", "stream_table_file"]

log = logging.getLogger(__name__)


class ColumnMapping(Config):
    """How a table file's columns feed a :class:`FeatureSpec`.

    Args:
        spec: the features and labels to build.
        columns: feature or label name -> file column; unlisted ones read the column of their name.
        event_time: the column of event times (seconds or timestamps); None = row order.
        weights: the column of sample weights; None = 1.0. The metrics always weigh by it; the
            loss does with ``train.weighted_loss``.
        format: ``auto`` picks by suffix (``.parquet``/``.pq`` is Parquet, anything else CSV).
        delimiter: CSV field delimiter (one character).
        list_separator: separator inside a CSV cell of a multi-valued slot.
    """

    spec: FeatureSpec
    columns: dict[str, str] = Field(default_factory=dict)
    event_time: str | None = None
    weights: str | None = None
    format: Literal["auto", "csv", "parquet"] = "auto"
    delimiter: str = Field(",", min_length=1, max_length=1)
    list_separator: str = Field("|", min_length=1)

    @model_validator(mode="after")
    def _known_names(self) -> ColumnMapping:
        known = set(self.spec.slot_names) | set(self.spec.dense_names) | set(self.spec.labels)
        unknown = sorted(set(self.columns) - known)
        if unknown:
            raise ValueError(
                f"columns maps unknown features {unknown}; the spec has slots {self.spec.slot_names}, "
                f"dense {self.spec.dense_names}, labels {self.spec.labels}"
            )
        # a label's column read as anything else leaks the answer (as a feature, the time that
        # splits train from test, or a weight); other columns may serve several roles
        roles: dict[str, list[str]] = {}
        for name in self.spec.slot_names + self.spec.dense_names:
            roles.setdefault(self.file_column(name), []).append(f"feature {name!r}")
        for lab in self.spec.labels:
            roles.setdefault(self.file_column(lab), []).append(f"label {lab!r}")
        for col, role in ((self.event_time, "event_time"), (self.weights, "weights")):
            if col is not None:
                roles.setdefault(col, []).append(role)
        for col, users in roles.items():
            if any(u.startswith("label") for u in users) and not all(u.startswith("label") for u in users):
                raise ValueError(f"file column {col!r} is read as {' and as '.join(users)}: a label's column "
                                 "read as anything else leaks the answer")  # fmt: skip
        return self

    def file_column(self, name: str) -> str:
        return self.columns.get(name, name)

    def needed(self) -> dict[str, str]:
        """File column -> who needs it (first user), in spec order."""
        out: dict[str, str] = {}
        users = [(s.name, f"sparse slot {s.name!r}") for s in self.spec.sparse]
        users += [(d.name, f"dense feature {d.name!r}") for d in self.spec.dense]
        users += [(lab, f"label {lab!r}") for lab in self.spec.labels]
        for name, who in users:
            out.setdefault(self.file_column(name), who)
        for col, who in ((self.event_time, "event_time"), (self.weights, "weights")):
            if col is not None:
                out.setdefault(col, who)
        return out


def _mapping(mapping: ColumnMapping | dict[str, Any]) -> ColumnMapping:
    if isinstance(mapping, ColumnMapping):
        return mapping
    if isinstance(mapping, dict):
        return ColumnMapping.from_dict(mapping, source="column mapping")
    raise ConfigError(f"mapping must be a ColumnMapping or a dict, got {type(mapping).__name__}")


def _is_parquet(path: Path, m: ColumnMapping) -> bool:
    return m.format == "parquet" or (m.format == "auto" and path.suffix.lower() in (".parquet", ".pq"))


def _csv_types(m: ColumnMapping) -> dict[str, pa.DataType]:
    """Numbers where numbers are needed (so a stray string fails in the reader, which names
    the column), text for list cells and for ID columns whose slot declares an ``id_type`` (the
    encoder parses or hashes them; zero-padded codes stay as written); other single-valued ID
    columns are left to type inference."""
    types: dict[str, pa.DataType] = {}
    for d in m.spec.dense:
        types[m.file_column(d.name)] = pa.float64()
    for lab in m.spec.labels:
        types[m.file_column(lab)] = pa.float64()
    if m.weights is not None:
        types[m.weights] = pa.float64()
    for s in m.spec.sparse:
        if s.multi_valued or s.id_type != "auto":
            types[m.file_column(s.name)] = pa.string()
    return types


def _split_lists(text: pa.Array, sep: str) -> pa.Array:
    """``"3|17|42"`` cells -> list<int64> (or list<string> if some element is not an integer)."""
    lists = pc.split_pattern(text, sep)  # a null cell stays a null list: an empty row
    try:
        return pc.cast(lists, pa.list_(pa.int64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return lists


def _columns(path: Path, m: ColumnMapping, table: pa.Table | pa.RecordBatch) -> tuple[dict, Any, Any]:
    """The spec's columns (renamed to feature names), event times and weights of one table."""
    cols = arrays(table)
    out: dict[str, Any] = {}
    for s in m.spec.sparse:
        col = cols[m.file_column(s.name)]
        if s.multi_valued and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            col = _split_lists(col, m.list_separator)
        out[s.name] = col
    for name in [*m.spec.dense_names, *m.spec.labels]:
        out[name] = cols[m.file_column(name)]
    time = None
    if m.event_time is not None:
        time = seconds(cols[m.event_time], f"column {m.event_time!r} (event_time)", str(path))
    weights = cols[m.weights] if m.weights is not None else None
    return out, time, weights


def _parquet_columns(path: Path, m: ColumnMapping) -> list[str]:
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    needed = m.needed()
    require(path, names, needed)
    return list(needed)


def _warn_mixed_ids(path: Path, m: ColumnMapping, table: pa.Table) -> None:
    """A CSV ID column is read as integers only if every cell is one; a single text ID makes the
    whole column text, hashed, so its "5" is no longer the ID 5 that an all-integer file, or an
    event sending the integer 5, gives. That skew is silent: say so."""
    for s in m.spec.sparse:
        name = m.file_column(s.name)
        col = table.column(name)
        text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        if s.multi_valued or s.id_type != "auto" or not text:
            continue
        numeric = pc.sum(pc.cast(pc.match_substring_regex(col, r"^\s*[+-]?[0-9]+\s*$"), pa.int64())).as_py() or 0
        if numeric:
            log.warning("%s: column %r holds %d integer IDs among text ones: all are hashed as text, so the integer "
                        "IDs here differ from the same integers in an all-integer file or in events that send them "
                        "as numbers; declare the slot's id_type (int or text)", path, name, numeric)  # fmt: skip


def load_table_file(path: str | Path, mapping: ColumnMapping | dict[str, Any]) -> Dataset:
    """Load a Parquet or CSV file into memory as a Dataset under ``mapping.spec``
    (time-ordered if ``mapping.event_time`` is set)."""
    m = _mapping(mapping)
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    if file.stat().st_size == 0:
        raise DataError(f"{file}: file is empty")
    if _is_parquet(file, m):
        include = _parquet_columns(file, m)
        try:
            table = pq.read_table(file, columns=include)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: cannot read Parquet: {exc}") from exc
        if table.num_rows == 0:
            raise DataError(f"{file}: no data rows")
    else:
        fmt = CsvFormat(delimiter=m.delimiter)
        require(file, header(file, fmt), m.needed())
        table = read_csv(file, fmt, types=_csv_types(m), include=list(m.needed()))
        _warn_mixed_ids(file, m, table)
    cols, time, weights = _columns(file, m, table)
    if weights is not None:
        weights = numbers(weights, f"column {m.weights!r} (weights)", str(file))
    ds = Dataset(m.spec, cols, event_time=time, weights=weights, source=str(file))
    if not any(d.needs_fit for d in m.spec.dense):
        ds.encode()  # validate every value now, at load
    return ds


def stream_table_file(
    path: str | Path, mapping: ColumnMapping | dict[str, Any], batch_size: int, block_size: int = 1 << 24
) -> Iterator[Batch]:
    """Batches of ``batch_size`` rows, in file order, read chunk by chunk (CSV ``block_size``
    bytes, Parquet one row group's batches at a time). Event time is ``mapping.event_time`` or
    the row number in the file. Dense statistics must already be in the spec."""
    m = _mapping(mapping)
    file = Path(path)

    def record_batches() -> Iterator[pa.RecordBatch]:
        if _is_parquet(file, m):
            if not file.is_file():
                raise DataError(f"{file}: no such file")
            include = _parquet_columns(file, m)
            try:
                reader = pq.ParquetFile(file)
                yield from reader.iter_batches(batch_size=max(batch_size, 1 << 14), columns=include)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{file}: cannot read Parquet: {exc}") from exc
        else:
            fmt = CsvFormat(delimiter=m.delimiter)
            require(file, header(file, fmt), m.needed())
            types = _csv_types(m)
            yield from stream_csv(file, fmt, types=types, include=list(m.needed()), block_size=block_size)

    def chunks() -> Iterator[Batch]:
        row = 0
        for rb in record_batches():
            cols, time, weights = _columns(file, m, rb)
            if time is None:
                time = np.arange(row, row + rb.num_rows, dtype=np.float64)
            yield m.spec.encode(cols, weights=weights, event_time=time, source=str(file))
            row += rb.num_rows

    return rebatch(chunks(), batch_size)
