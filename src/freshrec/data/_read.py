"""Reading delimited files with pyarrow, with every failure turned into a DataError that names
the file, the column and (for a bad value or a row of the wrong width) the line.

pyarrow's CSV reader is multi-threaded C++ and yields typed Arrow columns; its errors carry a
column number but no name or line, so this module adds both, only on the error path: the name
from the header, the data row by re-reading that one column as text, and the line of the file by
counting its lines (pyarrow skips empty lines without counting them, so the data row alone
misplaces every line after a blank one).
"""

from __future__ import annotations

import csv
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from freshrec.errors import DataError

_COLUMN_NO = re.compile(r"CSV column #(\d+)")
_WIDTH = re.compile(r"Expected (\d+) columns, got (\d+)")
_SHOWN = 100  # characters of a bad line quoted in an error


@dataclass(frozen=True)
class CsvFormat:
    """How a delimited file is laid out.

    Args:
        delimiter: one character, or one character twice (MovieLens 1M's ``::``): pyarrow splits
            at each single one and the field between a pair must stay empty, so a lone ``:`` in
            a line is an error, not a shifted field. A doubled delimiter needs ``names``.
        names: column names when the file has no header row; None = the first row is a header.
        encoding: text encoding (MovieLens 100K side files are latin-1).
        quoting: honour double quotes (off for files whose text fields contain stray quotes).
    """

    delimiter: str = ","
    names: Sequence[str] | None = None
    encoding: str = "utf8"
    quoting: bool = True
    # only an empty cell is missing: "NA" or "null" may be real IDs (a country, a username)
    null_values: Sequence[str] = field(default_factory=lambda: [""])

    def __post_init__(self) -> None:
        d = self.delimiter
        if not (len(d) == 1 or (len(d) == 2 and d[0] == d[1] and self.names is not None)):
            raise ValueError(f"delimiter {d!r}: one character, or one doubled with names given")

    @property
    def doubled(self) -> bool:
        return len(self.delimiter) == 2

    def gaps(self) -> list[str]:
        """The empty field inside each doubled delimiter, as a column (named as no file's is)."""
        return [f"{self.delimiter} #{k}" for k in range(1, len(self.names))] if self.doubled else []

    def arrow_names(self) -> list[str] | None:
        """The column names pyarrow reads: ``names``, with the gaps between them when doubled."""
        if self.names is None or not self.doubled:
            return None if self.names is None else list(self.names)
        gaps = self.gaps()
        return [self.names[0], *(c for k, name in enumerate(self.names[1:]) for c in (gaps[k], name))]


def check_file(path: Path) -> None:
    try:
        if path.is_dir():
            raise DataError(f"{path}: is a directory, not a file")
        if not path.exists():
            raise DataError(f"{path}: no such file" + (" (a broken link)" if path.is_symlink() else ""))
        if not path.is_file():
            raise DataError(f"{path}: not a regular file")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty")
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def side_file(path: Path) -> bool:
    """Whether the optional side file ``path`` is there to be read: False when nothing is at
    that path, True for a non-empty file; anything else there (a directory, a broken link, an
    empty file) is a DataError rather than a side file skipped in silence."""
    if not os.path.lexists(path):
        return False
    check_file(path)
    return True


def _unreadable(path: Path, exc: OSError) -> DataError:
    return DataError(f"{path}: cannot read it: {exc.strerror or exc}")


def header(path: Path, fmt: CsvFormat) -> list[str]:
    """The file's column names: ``fmt.names``, or its first row."""
    check_file(path)
    if fmt.names is not None:
        return list(fmt.names)
    # a UTF-8 file may start with a byte-order mark (Excel's "CSV UTF-8" writes one): not part
    # of the first name (pyarrow drops it too, so both readers see the same names)
    encoding = "utf-8-sig" if fmt.encoding.lower().replace("-", "").replace("_", "") == "utf8" else fmt.encoding
    try:
        with open(path, encoding=encoding, errors="replace", newline="") as f:
            first = f.readline()
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    quote = {} if fmt.quoting else {"quoting": csv.QUOTE_NONE}
    row = next(csv.reader([first], delimiter=fmt.delimiter, **quote), [])
    if not row or row == [""]:
        raise DataError(f"{path}: the header row is empty")
    return row


def require(path: Path, present: Sequence[str], needed: dict[str, str]) -> None:
    """``needed`` maps a file column to who needs it; a missing one is a DataError naming both."""
    missing = [f"{col!r} (for {who})" for col, who in needed.items() if col not in present]
    if missing:
        shown = ", ".join(repr(c) for c in list(present)[:40])
        raise DataError(f"{path}: missing column {', '.join(missing)}; the file has {shown}")
    names = list(present)
    repeated = sorted(col for col in needed if names.count(col) > 1)
    if repeated:  # which one a reader takes is arbitrary: one of them would be read silently
        raise DataError(f"{path}: the header names column(s) {repeated} more than once")


def _options(
    fmt: CsvFormat,
    types: dict[str, pa.DataType] | None,
    include: Sequence[str] | None,
    block_size: int | None,
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    read = pacsv.ReadOptions(
        column_names=fmt.arrow_names(),
        encoding=fmt.encoding,
        **({"block_size": block_size} if block_size else {}),
    )
    parse = pacsv.ParseOptions(delimiter=fmt.delimiter[0], quote_char='"' if fmt.quoting else False)
    gaps = fmt.gaps()  # typed null, so a value in one fails the read; included, so it is checked at all
    if gaps:
        types = {**{g: pa.null() for g in gaps}, **(types or {})}
        include = [*(include if include is not None else fmt.names), *gaps]
    convert = pacsv.ConvertOptions(
        column_types=types or {},
        include_columns=list(include) if include is not None else None,
        null_values=list(fmt.null_values),
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    return read, parse, convert


def _translate(path: Path, fmt: CsvFormat, exc: Exception, types: dict[str, pa.DataType] | None) -> DataError:
    msg = str(exc)
    if "Empty CSV file" in msg:
        return DataError(f"{path}: file is empty")
    m = _COLUMN_NO.search(msg)
    if m:
        names = fmt.arrow_names() or header(path, fmt)
        k = int(m.group(1))
        name = names[k] if k < len(names) else f"#{k}"
        if name in fmt.gaps():  # '1:9:2::3::4': a value where a doubled delimiter's empty field belongs
            found = _first_bad_value(path, fmt, name, pa.null())
            line = _data_line(path, fmt, found[0]) if found else None
            if line:
                return DataError(f"{path}: line {line[0]} (data row {found[0] + 1}): fields must be separated by "
                                 f"{fmt.delimiter!r}, not a lone {fmt.delimiter[0]!r}: {_shown(line[1])}")  # fmt: skip
            return DataError(f"{path}: fields must be separated by {fmt.delimiter!r}: {msg}")
        typ = (types or {}).get(name)
        found = _first_bad_value(path, fmt, name, typ) if typ is not None else None
        detail = f" {locate(path, fmt, found[0])} value {found[1]!r} is not {typ}" if found else ""
        return DataError(f"{path}: column {name!r}{detail}: {msg}")
    m = _WIDTH.search(msg)
    if m:  # pyarrow quotes the row (cut at ~100 characters) but not its line
        expected = int(m.group(1))
        found = _first_line_not_of_width(path, fmt, expected)
        if found:
            line, text, width = found
            # with a doubled delimiter pyarrow counts the gaps too: say what the file should hold
            want, got = (len(fmt.names), "") if fmt.doubled else (expected, f", got {width}")
            return DataError(f"{path}: cannot parse line {line}: expected {want} fields separated by "
                             f"{fmt.delimiter!r}{got}: {_shown(text)}")  # fmt: skip
    return DataError(f"{path}: cannot parse: {msg}")


def _first_bad_value(path: Path, fmt: CsvFormat, name: str, typ: pa.DataType) -> tuple[int, str] | None:
    """(data row from 0, value) of the first value of ``name`` that does not convert to ``typ``."""
    try:
        read, parse, convert = _options(fmt, {name: pa.string()}, [name], None)
        convert.include_columns = [name]  # not the gaps: one of them may be what failed
        text = pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowException:
        return None
    for row, value in enumerate(text.column(0).to_pylist()):
        if value is not None and not _converts(value, typ):
            return row, value
    return None


def _data_lines(path: Path, fmt: CsvFormat) -> Iterator[tuple[int, list[str], str]]:
    """(first line number from 1, fields, text) of each data row, as pyarrow's reader sees them:
    empty lines and the header are skipped, a quoted value may span lines."""
    quote = {} if fmt.quoting else {"quoting": csv.QUOTE_NONE}
    with open(path, encoding=fmt.encoding, errors="replace", newline="") as f:
        raw: list[str] = []

        def lines() -> Iterator[str]:  # \n, \r\n and \r each end a line, as in pyarrow
            for line in f:
                raw.append(line)
                yield line

        reader = csv.reader(lines(), delimiter=fmt.delimiter[0], **quote)
        seen_header = fmt.names is not None
        start = 1
        for fields in reader:
            number, start = start, reader.line_num + 1
            text = "".join(raw).rstrip("\r\n")
            raw.clear()
            if not fields:  # an empty line
                continue
            if not seen_header:
                seen_header = True
                continue
            yield number, fields, text


def _data_line(path: Path, fmt: CsvFormat, row: int) -> tuple[int, str] | None:
    """(line number, text) of data row ``row`` (from 0); None if the file cannot be re-read."""
    try:
        found = next(itertools.islice(_data_lines(path, fmt), row, None), None)
    except (OSError, csv.Error):
        return None
    return (found[0], found[2]) if found else None


def locate(path: Path, fmt: CsvFormat, row: int) -> str:
    """``line N (data row M)`` for data row ``row`` (from 0) of ``path``: the line counts the
    header and empty lines, which pyarrow skips; it re-reads the file up to there (error paths
    only)."""
    line = _data_line(path, fmt, row)
    return f"line {line[0]} (data row {row + 1})" if line else f"data row {row + 1}"


def _first_line_not_of_width(path: Path, fmt: CsvFormat, width: int) -> tuple[int, str, int] | None:
    """(line number, text, fields) of the first data row not split into ``width`` fields."""
    try:
        for number, fields, text in _data_lines(path, fmt):
            if len(fields) != width:
                return number, text, len(fields)
    except (OSError, csv.Error):
        pass
    return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _converts(value: str, typ: pa.DataType) -> bool:
    try:  # as pyarrow converts the text (Python's int() would take "1_000" and out-of-range values)
        pa.array([value], pa.string()).cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def read_csv(
    path: Path,
    fmt: CsvFormat,
    *,
    types: dict[str, pa.DataType] | None = None,
    include: Sequence[str] | None = None,
) -> pa.Table:
    """The whole file (or the ``include`` columns) as an Arrow table with at least one row."""
    check_file(path)
    read, parse, convert = _options(fmt, types, include, None)
    try:
        table = pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise _translate(path, fmt, exc, types) from exc
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    return table.drop_columns(fmt.gaps())  # all null by now: checked, then dropped


def stream_csv(
    path: Path,
    fmt: CsvFormat,
    *,
    types: dict[str, pa.DataType] | None = None,
    include: Sequence[str] | None = None,
    block_size: int = 1 << 24,
) -> Iterator[pa.RecordBatch]:
    """The file as record batches of about ``block_size`` bytes each, read as they are needed."""
    check_file(path)
    read, parse, convert = _options(fmt, types, include, block_size)
    try:
        reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            if batch.num_rows:
                yield batch.drop_columns(fmt.gaps())  # all null by now: checked, then dropped
    except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise _translate(path, fmt, exc, types) from exc
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def join_index(path: Path, side: Path, keys: np.ndarray, side_keys: np.ndarray, what: str) -> np.ndarray:
    """For each of ``path``'s ``keys``, its row in the side file ``side`` whose keys are
    ``side_keys``, by sorting (a table indexed by key would be sized by the largest one: one
    stray ID of 9e12 asked for 72 TB). A key listed twice there, or absent, is a DataError."""
    if side_keys.size == 0:
        raise DataError(f"{side}: no {what}s listed")
    order = np.argsort(side_keys, kind="stable")
    ordered = side_keys[order]
    twice = np.flatnonzero(ordered[1:] == ordered[:-1])
    if twice.size:  # which row the join takes would be arbitrary
        raise DataError(f"{side}: {what} {ordered[twice[0]]} is listed more than once")
    rows = order[np.minimum(np.searchsorted(ordered, keys), side_keys.size - 1)]
    absent = np.flatnonzero(side_keys[rows] != keys)
    if absent.size:
        raise DataError(f"{path}: {what} {keys[absent[0]]} is not in {side}")
    return rows


def arrays(table: pa.Table | pa.RecordBatch) -> dict[str, pa.Array]:
    """Each column as one contiguous Arrow array."""
    out = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        out[name] = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return out
