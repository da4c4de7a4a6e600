"""Examples as Parquet files for batch training: one file per checkpoint, written atomically.

The joiner writes the examples emitted since the last checkpoint to
``examples-<seq>.parquet`` just before it commits the checkpoint that records ``seq + 1``. A
crash between the two leaves a file the checkpoint does not know; the restarted joiner deletes
it and writes the same examples again, so every example is in exactly one file. Columns are
those of :func:`~freshrec.joiner.examples_to_columns`; a feature whose values do not share one
Arrow type (say ints in one example, strings in another) is stored as JSON text, and the file's
metadata names it under ``freshrec.json_columns``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from freshrec._io import atomic_write_bytes
from freshrec.errors import BackendError, CorruptionError
from freshrec.joiner.example import Example, examples_to_columns

__all__ = ["ParquetSink", "examples_table", "read_examples_parquet"]

_NAME = re.compile(r"^examples-(\d{8,})\.parquet$")


def examples_table(examples: Sequence[Example]) -> pa.Table:
    """The examples as an Arrow table (see the module docstring for mixed-type features)."""
    arrays, json_cols = {}, []
    for name, col in examples_to_columns(examples).items():
        try:
            arrays[name] = pa.array(col)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            arrays[name] = pa.array([None if v is None else msgspec.json.encode(v).decode() for v in col])
            json_cols.append(name)
    table = pa.table(arrays)
    return table.replace_schema_metadata({"freshrec.json_columns": json.dumps(json_cols)})


class ParquetSink:
    """The Parquet files of one joiner in ``directory``, numbered by checkpoint."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create the Parquet directory {self.directory}: {exc}") from exc

    def files(self) -> list[tuple[int, Path]]:
        """(seq, path) of every example file here, in order."""
        out = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def remove_from(self, seq: int) -> int:
        """Delete the files numbered ``seq`` or higher (written after the last checkpoint)."""
        gone = 0
        for s, p in self.files():
            if s >= seq:
                p.unlink()
                gone += 1
        return gone

    def write(self, seq: int, examples: Sequence[Example]) -> Path:
        path = self.directory / f"examples-{seq:08d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(examples_table(examples), sink, compression="zstd")
        atomic_write_bytes(path, sink.getvalue())
        return path


def read_examples_parquet(directory: str | Path) -> pa.Table:
    """Every example file of a joiner's Parquet directory, in order, as one table (columns a
    file lacks are null there)."""
    sink = ParquetSink(directory)
    tables = []
    for _, path in sink.files():
        try:
            tables.append(pq.read_table(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptionError(f"cannot read the example file {path}: {exc}") from exc
    if not tables:
        return pa.table({})
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")
