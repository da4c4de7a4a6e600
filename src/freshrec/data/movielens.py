"""MovieLens ratings (GroupLens) as a time-ordered implicit-feedback data set.

Three layouts are detected from the file name (or found in a directory, in this order):

* ``u.data`` (MovieLens 100K): ``user \\t item \\t rating \\t unix_time``, no header; any other
  name that is not ``.dat``/``.csv`` (e.g. ``u1.base``) is read the same way;
* ``ratings.dat`` (1M, 10M): ``user::item::rating::unix_time`` (a line with a lone ``:`` or
  another number of fields is refused with its line number, not read shifted);
* ``ratings.csv`` (20M, 25M, latest): header ``userId,movieId,rating,timestamp``.

The label is ``rating >= 3.5`` (the Monolith paper's positives on MovieLens-25M); the raw
``rating`` stays available as a column. Event time is the unix timestamp.

For the 100K layout the user and item side files are joined when they sit beside the ratings
(when absent they are skipped; something else of that name, such as a directory, is an error):
``u.user`` gives ``age_bucket`` (the 1M release's buckets: 1, 18, 25, 35, 45, 50, 56),
``gender``, ``occupation`` and ``zip_prefix`` (first three characters); ``u.item`` gives
``genres`` (a multi-valued slot of genre indices 0..18, mean-pooled) and ``release_year``
(0 when the date is unknown). String side features are dictionary-encoded, so hashing costs
one hash per distinct value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.data._read import CsvFormat, arrays, header, join_index, locate, read_csv, require, side_file
from freshrec.data.dataset import Dataset
from freshrec.errors import DataError
from freshrec.features import FeatureSpec, Jagged, SparseSlot

__all__ = ["load_movielens", "movielens_spec"]

POSITIVE_RATING = 3.5  # Monolith (section 4.1): ratings >= 3.5 are positives
MAX_RATING = 5.0  # MovieLens rates on 5 stars (0.5 to 5 in half stars, or 1 to 5)
AGE_BUCKETS = np.array([1, 18, 25, 35, 45, 50, 56])  # MovieLens 1M's age codes: lower bound of each bucket
N_GENRES = 19  # u.genre of the 100K release: unknown, Action, ..., Western
USER_SLOTS = ["age_bucket", "gender", "occupation", "zip_prefix"]
ITEM_SLOTS = ["genres", "release_year"]
_RATINGS = ["user_id", "item_id", "rating", "timestamp"]
_TYPES = {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}


def movielens_spec(user_features: bool = False, item_features: bool = False) -> FeatureSpec:
    """The default spec: ``user_id`` and ``item_id`` slots, plus the 100K side features when
    asked for; label ``label`` (rating >= 3.5)."""
    slots = [SparseSlot(name="user_id"), SparseSlot(name="item_id")]
    if user_features:
        slots += [SparseSlot(name=n) for n in USER_SLOTS]
    if item_features:
        slots += [
            SparseSlot(name="genres", multi_valued=True, pooling="mean"),
            SparseSlot(name="release_year"),
        ]
    return FeatureSpec(sparse=slots, labels=["label"])


def _ratings_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("u.data", "ratings.dat", "ratings.csv"):
            if (path / name).is_file():
                return path / name
        raise DataError(f"{path}: no MovieLens ratings file here (u.data, ratings.dat or ratings.csv)")
    return path


def _read_ratings(path: Path) -> dict[str, pa.Array]:
    if path.suffix == ".csv":
        fmt = CsvFormat(delimiter=",")
        file_cols = ["userId", "movieId", "rating", "timestamp"]
        names = header(path, fmt)
        if not set(file_cols) & set(names):  # not MovieLens at all: most likely a file of one's own
            raise DataError(f"{path}: not a MovieLens ratings file (no userId, movieId, rating or timestamp column; "
                            f"it has {', '.join(map(repr, names[:10]))}); a file of your own is read with "
                            "data.format = 'table' (--format table) and a data.mapping: docs/features.md")  # fmt: skip
        require(path, names, {c: "MovieLens ratings" for c in file_cols})
        types = dict(zip(file_cols, _TYPES.values(), strict=True))
        table = read_csv(path, fmt, types=types, include=file_cols).rename_columns(_RATINGS)
    elif path.suffix == ".dat":
        fmt = CsvFormat(delimiter="::", names=_RATINGS, quoting=False)  # a lone ':' is refused
        table = read_csv(path, fmt, types=_TYPES)
    else:
        fmt = CsvFormat(delimiter="\t", names=_RATINGS, quoting=False)
        table = read_csv(path, fmt, types=_TYPES)
    cols = arrays(table)
    for name, arr in cols.items():
        if arr.null_count:
            row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: column {name!r} has {arr.null_count} empty values, the first in "
                            f"{locate(path, fmt, row)}")  # fmt: skip
    return cols


def _dictionary(rows: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    """Per-rating values of a side column, stored once per side row."""
    return pa.DictionaryArray.from_arrays(pa.array(rows.astype(np.int32)), values)


def _user_columns(path: Path, side: Path, user_ids: np.ndarray) -> dict[str, object]:
    fmt = CsvFormat(delimiter="|", names=["user_id", "age", "gender", "occupation", "zip"], encoding="latin1",
                    quoting=False)  # fmt: skip
    types = {"user_id": pa.int64(), "age": pa.int64(), "gender": pa.string(), "occupation": pa.string(),
             "zip": pa.string()}  # fmt: skip
    users = arrays(read_csv(side, fmt, types=types))
    for name, arr in users.items():
        if arr.null_count:
            raise DataError(f"{side}: column {name!r} has {arr.null_count} empty values")
    rows = join_index(path, side, user_ids, users["user_id"].to_numpy(), "user")
    ages = users["age"].to_numpy()
    bucket = AGE_BUCKETS[np.searchsorted(AGE_BUCKETS[1:], ages, side="right")]  # (U,)
    return {
        "age_bucket": bucket[rows],
        "gender": _dictionary(rows, users["gender"]),
        "occupation": _dictionary(rows, users["occupation"]),
        "zip_prefix": _dictionary(rows, pc.utf8_slice_codeunits(users["zip"], 0, 3)),
    }


def _item_columns(path: Path, side: Path, item_ids: np.ndarray) -> dict[str, object]:
    genre_cols = [f"g{k}" for k in range(N_GENRES)]
    names = ["item_id", "title", "release_date", "video_release_date", "url", *genre_cols]
    fmt = CsvFormat(delimiter="|", names=names, encoding="latin1", quoting=False)
    types = {"item_id": pa.int64(), "release_date": pa.string(), **{g: pa.int8() for g in genre_cols}}
    items = arrays(read_csv(side, fmt, types=types, include=["item_id", "release_date", *genre_cols]))
    rows = join_index(path, side, item_ids, items["item_id"].to_numpy(), "item")
    flags = np.stack([items[g].to_numpy(zero_copy_only=False) for g in genre_cols], axis=1)  # (I, 19)
    if np.isnan(flags.astype(np.float64)).any() or not np.isin(flags, (0, 1)).all():
        raise DataError(f"{side}: genre flags must be 0 or 1")
    item_rows, genre = np.nonzero(flags)  # row-major: genres of each item, ascending
    item_genres = Jagged.from_lengths(genre.astype(np.int64), np.bincount(item_rows, minlength=len(flags)))
    date = pc.fill_null(items["release_date"], "")
    year_text = pc.if_else(pc.equal(pc.utf8_length(date), 0), "0", pc.utf8_slice_codeunits(date, -4))
    try:
        years = pc.cast(year_text, pa.int64()).to_numpy()
    except pa.ArrowInvalid as exc:
        raise DataError(f"{side}: column 'release_date' has a date not ending in a year: {exc}") from exc
    return {"genres": item_genres.take(rows), "release_year": years[rows]}


def load_movielens(path: str | Path, spec: FeatureSpec | None = None) -> Dataset:
    """Load MovieLens ratings (a file, or a directory holding one) as a time-ordered Dataset.

    Args:
        path: ``u.data``, ``ratings.dat``, ``ratings.csv``, or the directory that holds one.
        spec: the features to encode; default :func:`movielens_spec` with every side feature
            found. Columns: ``user_id``, ``item_id``, ``rating``, ``label`` (+ side features).
    """
    file = _ratings_file(Path(path))
    cols: dict[str, object] = dict(_read_ratings(file))
    user_ids = cols["user_id"].to_numpy()
    item_ids = cols["item_id"].to_numpy()
    cols["user_id"], cols["item_id"] = user_ids, item_ids
    rating = cols["rating"].to_numpy()
    bad = np.flatnonzero(~((rating >= 0.0) & (rating <= MAX_RATING)))  # NaN fails both
    if bad.size:  # a NaN, inf or -3 became a label silently (0, 1, 0)
        raise DataError(f"{file}: {bad.size:,} ratings outside 0-{MAX_RATING:g} stars, the first in data row "
                        f"{bad[0] + 1} ({float(rating[bad[0]])!r})")  # fmt: skip
    cols["rating"] = rating
    cols["label"] = (rating >= POSITIVE_RATING).astype(np.float32)
    event_time = cols.pop("timestamp").to_numpy().astype(np.float64)
    tab_layout = file.suffix not in (".csv", ".dat")
    has_users = tab_layout and side_file(file.parent / "u.user")
    has_items = tab_layout and side_file(file.parent / "u.item")
    if has_users:
        cols.update(_user_columns(file, file.parent / "u.user", user_ids))
    if has_items:
        cols.update(_item_columns(file, file.parent / "u.item", item_ids))
    ds = Dataset(spec or movielens_spec(has_users, has_items), cols, event_time=event_time, source=str(file))
    if not any(d.needs_fit for d in ds.spec.dense):
        ds.encode()  # validate every value now, at load, rather than at the first batch
    return ds
