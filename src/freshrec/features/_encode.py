"""Columns -> :class:`Batch`: the validation and coercion behind :meth:`FeatureSpec.encode`.

Every column is checked once, as a whole array: missing columns, row-count mismatches, nulls in
ID columns, non-numeric dense values, NaN/Inf and values outside a transform's domain each give
a :class:`DataError` that names the file (when known), the column and the first bad row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.errors import ConfigError, DataError, InputError
from freshrec.features.batch import Batch, Jagged
from freshrec.features.hashing import hash_ids
from freshrec.stream.events import MAX_EVENT_TIME  # the event schema's bound: one limit for events and data

if TYPE_CHECKING:
    from freshrec.features.spec import DenseFeature, FeatureSpec, SparseSlot

_NS_PER = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def column(columns: Any, name: str, what: str, source: str | None) -> Any:
    """``columns[name]``, or a DataError naming the column and who needed it."""
    if isinstance(columns, pa.Table | pa.RecordBatch):
        names = columns.schema.names
        if name in names:
            return columns.column(name)
    elif isinstance(columns, Mapping):
        if name in columns:
            return columns[name]
        names = list(columns)
    else:
        raise InputError(f"columns must be a mapping or an Arrow table, got {type(columns).__name__}")
    shown = ", ".join(repr(n) for n in names[:30]) + (", ..." if len(names) > 30 else "")
    raise DataError(f"{_where(source)}column {name!r} (needed by {what}) is missing; present: {shown}")


def _arrow(col: Any, what: str, source: str | None) -> pa.Array:
    """Any non-numpy column as one Arrow array."""
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if isinstance(col, pa.Array):
        return col
    try:
        return pa.array(col, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise DataError(f"{_where(source)}{what}: cannot read values as one type: {exc}") from exc


def _first_null(arr: pa.Array) -> int:
    return int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])


def _length(col: Any) -> int:
    return col.size if isinstance(col, Jagged) else len(col)


# ---- sparse -------------------------------------------------------------------------------------
def _ids(col: Any, seed: int, id_type: str, what: str, source: str | None) -> np.ndarray:
    """A single-valued column as (B,) int64 IDs."""
    if isinstance(col, np.ndarray) and col.dtype.kind in "iub":
        if col.ndim != 1:
            raise DataError(f"{_where(source)}{what}: expected a 1-D column, got shape {col.shape}")
        if id_type != "text":
            return hash_ids(col, seed)
    if isinstance(col, Jagged):
        raise DataError(f"{_where(source)}{what} is single-valued but got lists; declare it multi_valued")
    if isinstance(col, np.ndarray) and col.dtype.kind in "fc":
        raise DataError(f"{_where(source)}{what}: IDs must be integers or strings, got {col.dtype}")
    arr = _arrow_or_none(col)
    if arr is None:  # Python values Arrow cannot take as one type: integers among strings, or bad ones
        return _mixed_ids(_listed(col), seed, id_type, what, source)
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        raise DataError(f"{_where(source)}{what} is single-valued but got lists; declare it multi_valued")
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        raise DataError(f"{_where(source)}{what}: IDs must be integers or strings, got {t}{_float_example(arr)}")
    if arr.null_count:
        raise DataError(
            f"{_where(source)}{what} has {arr.null_count} missing values (first at row {_first_null(arr)}); "
            "fill them (a missing value may be an ID of its own) or declare the slot multi_valued"
        )
    return _hash(arr, seed, id_type, what, source)


def _float_example(arr: pa.Array) -> str:
    """Where a float column shows it is not IDs: its first non-integral value, else its first."""
    x = np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False))
    if x.size == 0:
        return ""
    odd = np.flatnonzero(~np.isfinite(x) | (x != np.round(x)))
    i = int(odd[0]) if odd.size else 0
    return f" (row {i}: {float(x[i])!r})"


def _hash(
    arr: pa.Array, seed: int, id_type: str, what: str, source: str | None,
    rows: list[int] | None = None, unit: str = "row",
) -> np.ndarray:  # fmt: skip
    """``hash_ids`` of IDs as the slot declares them. For error messages: ``rows`` are their
    positions in the column if ``arr`` is a part of it, ``unit`` what a position counts."""
    try:
        return hash_ids(_as_declared(arr, id_type, what, source, rows, unit), seed)
    except InputError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{_where(source)}{what}: {exc}") from exc


def _as_declared(
    arr: pa.Array, id_type: str, what: str, source: str | None, rows: list[int] | None, unit: str
) -> pa.Array:
    """IDs (no nulls) in the type the slot's ``id_type`` declares: ``int`` parses strings that
    hold integers, ``text`` turns integers into their decimal strings; ``auto`` keeps them."""
    t = arr.type
    if id_type == "auto":
        return arr
    if pa.types.is_dictionary(t):  # decoded, so an error names the row
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_boolean(t):
        arr, t = arr.cast(pa.int8()), pa.int8()
    if id_type == "text":
        return arr.cast(pa.string()) if pa.types.is_integer(t) else arr
    if pa.types.is_integer(t) or pa.types.is_null(t):
        return arr
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        raise DataError(f"{_where(source)}{what}: id_type is int, got {t}")
    text = pc.utf8_trim_whitespace(arr.cast(pa.large_string()) if pa.types.is_string_view(t) else arr)
    integral = pc.match_substring_regex(text, r"^[+-]?[0-9]+$").to_numpy(zero_copy_only=False)
    if not integral.all():
        i = int(np.flatnonzero(~integral)[0])
        row = i if rows is None else rows[i]
        raise DataError(f"{_where(source)}{what}: id_type is int, but {unit} {row} holds {arr[i].as_py()!r}")
    try:
        return pc.replace_substring_regex(text, r"^\+", "").cast(pa.int64())  # Arrow refuses a leading +
    except pa.ArrowInvalid as exc:
        raise DataError(f"{_where(source)}{what}: id_type is int, and an ID is past the int64 range ({exc})") from exc


def _arrow_or_none(col: Any) -> pa.Array | None:
    """:func:`_arrow`, or None for Python values (a list, a numpy object array) that are not of
    one type: the caller sorts them out value by value (and names a bad one)."""
    if isinstance(col, pa.ChunkedArray | pa.Array):
        return _arrow(col, "", None)
    try:
        return pa.array(col, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return None


def _listed(col: Any) -> list[Any]:
    return col.tolist() if isinstance(col, np.ndarray) else list(col)


def _id_kind(v: Any) -> str | None:
    if isinstance(v, int | np.integer):  # bool too: an integer, as everywhere in hash_ids
        return "int"
    if isinstance(v, str):
        return "str"
    if isinstance(v, bytes):
        return "bytes"
    return None


def _mixed_ids(
    values: list[Any], seed: int, id_type: str, what: str, source: str | None, unit: str = "row"
) -> np.ndarray:
    """IDs from Python values mixing integers and strings (events may send either): each value
    gets the ID it gets in a column of its own type, so a batch's mix does not change any ID."""
    by_kind: dict[str, list[int]] = {"int": [], "str": [], "bytes": []}
    for i, v in enumerate(values):
        kind = _id_kind(v)
        if kind is None:
            if v is None and unit == _ELEMENT:
                raise DataError(f"{_where(source)}{what} has null IDs inside its lists (first: {unit} {i})")
            if v is None:
                raise DataError(
                    f"{_where(source)}{what} has missing values (first at {unit} {i}); fill them (a missing value "
                    "may be an ID of its own) or declare the slot multi_valued"
                )
            raise DataError(f"{_where(source)}{what}: IDs must be integers or strings; {unit} {i} has "
                            f"{type(v).__name__} {v!r}")  # fmt: skip
        by_kind[kind].append(i)
    out = np.empty(len(values), np.int64)
    types = {"int": pa.int64(), "str": pa.string(), "bytes": pa.binary()}
    for kind, rows in by_kind.items():
        if rows:
            try:
                part = [int(values[i]) for i in rows] if kind == "int" else [values[i] for i in rows]  # bools as 0/1
                arr = pa.array(part, types[kind])
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise DataError(f"{_where(source)}{what}: {exc}") from exc
            out[rows] = _hash(arr, seed, id_type, what, source, rows, unit)
    return out


_ELEMENT = "ID (counting across the rows' lists)"


def _jagged(col: Any, seed: int, id_type: str, what: str, source: str | None) -> Jagged:
    """A multi-valued column as Jagged IDs; a null list is an empty row."""
    if isinstance(col, Jagged):
        return col
    arr = _arrow_or_none(col)
    if arr is None:  # lists mixing integers and strings, or a row that is not a list
        flat, lengths = _flatten(_listed(col), what, source)
        return Jagged.from_lengths(_mixed_ids(flat, seed, id_type, what, source, _ELEMENT), lengths)
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise DataError(f"{_where(source)}{what} is multi-valued and needs lists of IDs, got {t}")
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    flat = arr.flatten()  # honours slicing and skips the child data of null lists
    if flat.null_count:
        raise DataError(f"{_where(source)}{what} has {flat.null_count} null IDs inside its lists")
    if pa.types.is_floating(flat.type):
        raise DataError(f"{_where(source)}{what}: IDs must be integers or strings, got {flat.type}")
    return Jagged.from_lengths(_hash(flat, seed, id_type, what, source, unit=_ELEMENT), lengths.astype(np.int64))


def _flatten(rows: list[Any], what: str, source: str | None) -> tuple[list[Any], np.ndarray]:
    """The values and lengths of Python lists (None is an empty row)."""
    flat: list[Any] = []
    lengths = np.zeros(len(rows), np.int64)
    for i, row in enumerate(rows):
        if row is None:
            continue
        if not isinstance(row, list | tuple | np.ndarray):
            raise DataError(f"{_where(source)}{what} is multi-valued and needs lists of IDs; row {i} has "
                            f"{type(row).__name__} {row!r}")  # fmt: skip
        flat.extend(row)
        lengths[i] = len(row)
    return flat, lengths


def encode_slot(slot: SparseSlot, col: Any, seed: int, source: str | None = None) -> Jagged:
    what = f"sparse slot {slot.name!r}"
    if not slot.multi_valued:
        return Jagged.single(_ids(col, seed, slot.id_type, what, source))
    jag = _jagged(col, seed, slot.id_type, what, source)
    return jag.truncate(slot.max_len) if slot.max_len is not None else jag


# ---- numbers ------------------------------------------------------------------------------------
def numbers(col: Any, what: str, source: str | None) -> np.ndarray:
    """A numeric column as (B,) float64, nulls as NaN; strings and lists are a DataError."""
    if isinstance(col, np.ndarray) and col.dtype.kind in "iufb":
        if col.ndim != 1:
            raise DataError(f"{_where(source)}{what}: expected a 1-D column, got shape {col.shape}")
        return col.astype(np.float64)
    if isinstance(col, Jagged):
        raise DataError(f"{_where(source)}{what} needs numbers, got lists")
    arr = _arrow(col, what, source)
    t = arr.type
    if pa.types.is_timestamp(t):
        return seconds(arr, what, source)
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    if not (numeric or pa.types.is_null(t)):
        example = ""
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            valid = arr.drop_null()
            if len(valid):
                example = f" (e.g. {valid[0].as_py()!r})"
        raise DataError(f"{_where(source)}{what} needs numbers, got {t}{example}")
    # safe=False: an integer past 2**53 is rounded to the nearest float64 (as numpy's astype
    # does above) instead of raising ArrowInvalid
    return np.array(arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)  # writable


def check_event_seconds(time: np.ndarray, what: str, source: str | None) -> None:
    """Event times are seconds: one past ``MAX_EVENT_TIME`` is a Unix time in ms, us or ns,
    which windows, ttls and sync intervals (all in seconds) would read 1000x or more off."""
    if time.size:
        top = float(np.nanmax(np.abs(time)))
        if top > MAX_EVENT_TIME:
            raise DataError(
                f"{_where(source)}{what} reaches {top:.4g} in absolute value, past the year 5000 in seconds: event "
                "times are seconds (a Unix time in milliseconds, microseconds or nanoseconds must be divided by 1e3, "
                "1e6 or 1e9; Arrow timestamps are converted)"
            )


def seconds(col: Any, what: str, source: str | None) -> np.ndarray:
    """Event times as (B,) float64 seconds: numbers as they are (up to ``MAX_EVENT_TIME``),
    Arrow timestamps converted."""
    if isinstance(col, np.ndarray) and col.dtype.kind == "M":
        missing = int(np.isnat(col).sum())
        if missing:
            raise DataError(f"{_where(source)}{what} has {missing} missing timestamps (NaT)")
        return col.astype("datetime64[ns]").astype(np.int64) / 1e9
    if isinstance(col, pa.ChunkedArray | pa.Array) and pa.types.is_timestamp(col.type):
        ints = pc.cast(col, pa.int64())
        if isinstance(ints, pa.ChunkedArray):
            ints = ints.combine_chunks()
        if ints.null_count:
            raise DataError(f"{_where(source)}{what} has {ints.null_count} missing timestamps")
        return ints.to_numpy(zero_copy_only=False) / _NS_PER[col.type.unit]
    time = numbers(col, what, source)
    check_event_seconds(time, what, source)
    return time


def _finite(x: np.ndarray, what: str, source: str | None, hint: str = "") -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{_where(source)}{what} has {int(bad.sum())} missing or non-finite values "
            f"(first at row {first}: {x[first]}){hint}"
        )


def dense_raw(feat: DenseFeature, col: Any, source: str | None) -> np.ndarray:
    """The feature's values before its transform: (B,) float64, missing values filled."""
    what = f"dense feature {feat.name!r}"
    x = numbers(col, what, source)
    if feat.fill_missing is not None:
        x[np.isnan(x)] = feat.fill_missing
    _finite(x, what, source, "" if feat.fill_missing is not None else "; set fill_missing to fill them")
    if feat.transform in ("log1p", "log1p_standardize"):
        low = x <= -1
        if low.any():
            first = int(np.flatnonzero(low)[0])
            raise DataError(
                f"{_where(source)}{what}: transform {feat.transform} needs values > -1, got {x[first]} at row {first}"
            )
    return x


_F32_MAX = float(np.finfo(np.float32).max)


def dense_values(feat: DenseFeature, col: Any, source: str | None) -> np.ndarray:
    """The transformed feature, (B,) float64, each value within float32's range (the batch's
    dtype: a value past it would be Inf there, and NaN in every score and loss it touches)."""
    if feat.needs_fit:
        raise ConfigError(
            f"dense feature {feat.name!r} uses transform {feat.transform} but has no mean/std: "
            "call spec.fit(training columns) or set them in the spec"
        )
    x = dense_raw(feat, col, source)
    if feat.transform in ("log1p", "log1p_standardize"):
        x = np.log1p(x)
    if feat.standardizes:
        x = (x - feat.mean) / feat.std
    big = np.abs(x) > _F32_MAX
    if big.any():
        first = int(np.flatnonzero(big)[0])
        after = "" if feat.transform == "none" else f" after transform {feat.transform}"
        raise DataError(
            f"{_where(source)}dense feature {feat.name!r}: {float(x[first])!r}{after} at row {first} is past float32's "
            f"range (+-{_F32_MAX:.4g}), the dtype models read; scale it (e.g. transform log1p)"
        )
    return x


# ---- the batch ----------------------------------------------------------------------------------
def encode(
    spec: FeatureSpec,
    columns: Any,
    *,
    labels: bool,
    weights: Any,
    event_time: Any,
    source: str | None,
) -> Batch:
    wanted = [(f"sparse slot {s.name!r}", s.name) for s in spec.sparse]
    wanted += [(f"dense feature {d.name!r}", d.name) for d in spec.dense]
    wanted += [(f"label {lab!r}", lab) for lab in spec.labels] if labels else []
    used: list[tuple[str, Any]] = [(what, column(columns, name, what, source)) for what, name in wanted]
    if isinstance(weights, str):
        weights = column(columns, weights, "weights", source)
    if isinstance(event_time, str):
        event_time = column(columns, event_time, "event_time", source)
    for what, col in [("weights", weights), ("event_time", event_time)]:
        if col is not None:
            used.append((what, col))
    for what, col in used:  # a str is a sequence too: it would be read as one value per character
        if isinstance(col, str | bytes) or not (isinstance(col, Jagged) or hasattr(col, "__len__")):
            raise DataError(f"{_where(source)}{what}: a column is a sequence of values (a list, array or "
                            f"Arrow array), got {type(col).__name__}")  # fmt: skip
    b = _length(used[0][1])
    for what, col in used[1:]:
        if _length(col) != b:
            raise DataError(f"{_where(source)}{what} has {_length(col)} rows, {used[0][0]} has {b}")

    sparse = {
        s.name: encode_slot(s, col, spec.hash_seed, source) for s, (_, col) in zip(spec.sparse, used, strict=False)
    }
    n_sparse = len(spec.sparse)
    dense = np.empty((b, len(spec.dense)), np.float32)  # (B, F)
    for j, d in enumerate(spec.dense):
        dense[:, j] = dense_values(d, used[n_sparse + j][1], source)
    n_labels = len(spec.labels) if labels else 0
    label_arr = np.empty((b, n_labels), np.float32)  # (B, L)
    for j in range(n_labels):
        what, col = used[n_sparse + len(spec.dense) + j]
        y = numbers(col, what, source)
        _finite(y, what, source)
        label_arr[:, j] = y
    if weights is None:
        w = np.ones(b, np.float32)
    else:
        w64 = numbers(weights, "weights", source)
        _finite(w64, "weights", source)
        if (w64 < 0).any():
            raise DataError(f"{_where(source)}weights must be >= 0, got {w64.min()}")
        w = w64.astype(np.float32)
    if event_time is None:
        t = np.arange(b, dtype=np.float64)
    else:
        t = np.ascontiguousarray(seconds(event_time, "event_time", source), dtype=np.float64)
        _finite(t, "event_time", source)
    return Batch(sparse=sparse, dense=dense, labels=label_arr, weights=w, event_time=t)


# ---- finding the rows that encode -------------------------------------------------------------
def take_rows(columns: Mapping[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """``columns`` (numpy arrays or Python sequences) cut to ``rows``, in their order."""
    idx = rows.tolist()
    return {k: (v[rows] if isinstance(v, np.ndarray) else [v[i] for i in idx]) for k, v in columns.items()}


def encodable_rows(encode: Callable[[np.ndarray], object], n: int) -> tuple[np.ndarray, list[tuple[int, InputError]]]:
    """The rows of ``range(n)`` that ``encode(rows)`` accepts (it raises :class:`InputError`
    for a set holding a bad row), and each bad row with its error. Found by halving: ``k`` bad
    rows cost about ``2 k log2(n)`` encodes, so call it once a whole batch failed, not first."""
    good: list[np.ndarray] = []
    bad: list[tuple[int, InputError]] = []

    def search(rows: np.ndarray) -> None:
        try:
            encode(rows)
        except InputError as exc:
            if rows.size == 1:
                bad.append((int(rows[0]), exc))
            else:
                search(rows[: rows.size // 2])
                search(rows[rows.size // 2 :])
            return
        good.append(rows)

    if n:
        search(np.arange(n))
    return (np.concatenate(good) if good else np.zeros(0, np.int64)), bad
