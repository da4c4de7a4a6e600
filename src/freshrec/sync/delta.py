"""The sync record: one part of a sparse delta or of a dense publication, as bytes on the sync log.

Each record is a plain safetensors blob (no pickle: a replica never executes what it reads).
Its ``__metadata__`` holds one key, ``freshrec.sync``, whose value is the JSON header
(:class:`DeltaHeader`): model, kind, version, part ``i`` of ``n``, whether the delta is full, the
newest event time it reflects, ``newest_arrival_ms`` (wall clock, for freshness), the publish time,
and per kind:

* **sparse**: ``tables``, the ``[name, rows, removed]`` of each table share in this part, in
  order; share ``i`` is the tensors ``{i}.ids`` (rows,) int64, ``{i}.emb`` (rows, D) float32 and
  ``{i}.removed`` (removed,) int64 (tombstones). A big delta is cut into parts of at most
  ``max_record_bytes``, a table's rows spread over consecutive parts if needed. A delta with no
  rows (a heartbeat) is one part with no tables.
* **dense**: the model's ``state_dict`` saved as one safetensors blob, cut into byte ranges: part
  ``i`` holds range ``i`` as the uint8 tensor ``chunk``. The header carries the blob's size and
  xxh3-128, checked when the parts are joined, and the logit offset.

A replica applies a version only when all ``n`` parts are there. Records are checksummed by the
transport (Kafka's CRC, the embedded log's chunk checksums); a record that does not parse raises
:class:`SchemaError`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import msgspec
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save
from safetensors.torch import load as torch_load
from safetensors.torch import save as torch_save

from freshrec._io import checksum_bytes
from freshrec.errors import CorruptionError, SchemaError

__all__ = [
    "DeltaHeader",
    "SparseShare",
    "decode_sparse",
    "encode_dense",
    "encode_sparse",
    "join_dense",
    "load_dense",
    "read_header",
    "record_key",
]

FORMAT = "freshrec.sync"
FORMAT_VERSION = 1
_META_KEY = "freshrec.sync"
_HEADER_ROOM = 4096  # bytes kept free in a part for the JSON headers (safetensors' and ours)
_SHARE_ROOM = 256  # and per table share (three tensor entries and its line in ``tables``)

Kind = Literal["sparse", "dense"]


@dataclass(frozen=True)
class DeltaHeader:
    """What a record says about itself; identical in every part of a version but ``part`` and
    ``tables``."""

    model: str
    kind: Kind
    version: int  # 1, 2, 3, ... per (model, kind)
    part: int  # 0 .. parts - 1
    parts: int
    published_ms: int  # wall clock when the publisher built it
    full: bool = False  # sparse: the delta holds every row; the replica drops rows not in it
    event_time: float | None = None  # newest event time (seconds) the parameters reflect
    newest_arrival_ms: int | None = None  # wall clock when that newest action reached freshrec
    logit_offset: float | None = None  # dense: log of the negative sampling rate
    tables: list[tuple[str, int, int]] = field(default_factory=list)  # sparse: this part's shares
    dense_bytes: int | None = None  # dense: size of the joined state blob
    dense_xxh3: str | None = None  # dense: its xxh3-128

    def to_json(self) -> str:
        data = asdict(self)
        data["format"] = FORMAT
        data["format_version"] = FORMAT_VERSION
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DeltaHeader:
        """The header, every field of its declared type (a version that is a string would
        otherwise fail later, on every poll, where a bad record is not recognised as one)."""
        try:
            data = json.loads(text)
            if data.pop("format") != FORMAT or data.pop("format_version") != FORMAT_VERSION:
                raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} record")
            unknown = set(data) - set(_FIELDS)
            if unknown:
                raise ValueError(f"unknown fields {sorted(unknown)}")
            h = msgspec.convert(data, cls)
        except (ValueError, TypeError, KeyError, AttributeError, msgspec.ValidationError) as exc:
            raise SchemaError(f"bad sync record header: {exc}") from exc
        if h.kind not in ("sparse", "dense") or h.version < 1 or not 0 <= h.part < h.parts:
            raise SchemaError(f"bad sync record header: kind {h.kind!r}, version {h.version}, "
                              f"part {h.part} of {h.parts}")  # fmt: skip
        return h

    def describe(self) -> str:
        return f"{self.kind} delta v{self.version} of model {self.model!r} (part {self.part + 1}/{self.parts})"


_FIELDS = tuple(f.name for f in fields(DeltaHeader))


@dataclass(frozen=True)
class SparseShare:
    """One table's rows in one part: upserts and tombstones."""

    table: str
    ids: np.ndarray  # (n,) int64
    embeddings: np.ndarray  # (n, D) float32
    removed: np.ndarray  # (m,) int64


def record_key(h: DeltaHeader) -> bytes:
    """A readable Kafka key (``rank/sparse/42/0``); replicas do not need it."""
    return f"{h.model}/{h.kind}/{h.version}/{h.part}".encode()


def read_header(blob: bytes) -> DeltaHeader:
    """The header of a record, without decoding its tensors."""
    if len(blob) < 8:
        raise SchemaError(f"a sync record is a safetensors blob; got {len(blob)} bytes")
    (n,) = struct.unpack_from("<Q", blob)
    if n > len(blob) - 8:
        raise SchemaError(f"sync record header says {n} bytes, the record has {len(blob) - 8}")
    try:
        meta = json.loads(blob[8 : 8 + n])["__metadata__"][_META_KEY]
    except (ValueError, KeyError, TypeError) as exc:
        raise SchemaError(f"not a freshrec sync record (no {_META_KEY!r} metadata): {exc}") from exc
    return DeltaHeader.from_json(meta)


def _save(tensors: dict[str, np.ndarray], header: DeltaHeader) -> bytes:
    return np_save(tensors, metadata={_META_KEY: header.to_json()})


def _load(blob: bytes, h: DeltaHeader) -> dict[str, np.ndarray]:
    try:
        return np_load(blob)
    except (SafetensorError, ValueError) as exc:
        raise SchemaError(f"{h.describe()}: tensors do not parse: {exc}") from exc


# ---- sparse --------------------------------------------------------------------------------------


def encode_sparse(
    shares: list[SparseShare],
    *,
    model: str,
    version: int,
    published_ms: int,
    max_bytes: int,
    full: bool = False,
    event_time: float | None = None,
    newest_arrival_ms: int | None = None,
) -> list[bytes]:
    """The records of one sparse delta: ``shares`` (one per table, any size) cut into parts of
    at most about ``max_bytes``. Deterministic: the same shares give the same bytes."""
    budget = max_bytes - _HEADER_ROOM
    parts: list[list[SparseShare]] = [[]]
    room = budget
    for s in shares:
        n, m = s.ids.shape[0], s.removed.shape[0]
        row_bytes = 8 + 4 * s.embeddings.shape[1]
        i = j = 0  # next upsert row, next tombstone
        while i < n or j < m:
            if room < _SHARE_ROOM + row_bytes:  # not even one more row fits: a new part
                parts.append([])
                room = budget
            room -= _SHARE_ROOM
            take = min(n - i, room // row_bytes)
            room -= take * row_bytes
            drop = min(m - j, room // 8) if i + take == n else 0  # tombstones after the rows
            room -= drop * 8
            parts[-1].append(SparseShare(s.table, s.ids[i : i + take], s.embeddings[i : i + take],
                                         s.removed[j : j + drop]))  # fmt: skip
            i, j = i + take, j + drop
    out = []
    for k, part in enumerate(parts):
        h = DeltaHeader(
            model=model, kind="sparse", version=version, part=k, parts=len(parts), published_ms=published_ms,
            full=full, event_time=event_time, newest_arrival_ms=newest_arrival_ms,
            tables=[(s.table, int(s.ids.size), int(s.removed.size)) for s in part],
        )  # fmt: skip
        tensors: dict[str, np.ndarray] = {}
        for i, s in enumerate(part):
            tensors[f"{i}.ids"] = np.ascontiguousarray(s.ids, np.int64)
            tensors[f"{i}.emb"] = np.ascontiguousarray(s.embeddings, np.float32)
            tensors[f"{i}.removed"] = np.ascontiguousarray(s.removed, np.int64)
        out.append(_save(tensors, h))
    return out


def decode_sparse(blob: bytes, h: DeltaHeader | None = None) -> list[SparseShare]:
    """The table shares of one sparse record, shapes and dtypes checked."""
    h = h or read_header(blob)
    if h.kind != "sparse":
        raise SchemaError(f"{h.describe()} is not a sparse record")
    tensors = _load(blob, h)
    out = []
    for i, (table, rows, removed) in enumerate(h.tables):
        try:
            ids, emb, rem = tensors[f"{i}.ids"], tensors[f"{i}.emb"], tensors[f"{i}.removed"]
        except KeyError as exc:
            raise SchemaError(f"{h.describe()}: table {table!r} lacks tensor {exc}") from exc
        if (ids.dtype != np.int64 or ids.shape != (rows,) or emb.dtype != np.float32 or emb.ndim != 2
                or emb.shape[0] != rows or rem.dtype != np.int64 or rem.shape != (removed,)):  # fmt: skip
            raise SchemaError(f"{h.describe()}: table {table!r} has tensors of the wrong shape or dtype")
        out.append(SparseShare(table, ids, emb, rem))
    return out


# ---- dense ---------------------------------------------------------------------------------------


def encode_dense(
    state_dict: dict[str, torch.Tensor],
    *,
    model: str,
    version: int,
    published_ms: int,
    max_bytes: int,
    logit_offset: float,
    event_time: float | None = None,
    newest_arrival_ms: int | None = None,
) -> tuple[bytes, list[bytes]]:
    """The dense state as one safetensors blob and the records carrying it in byte ranges."""
    blob = torch_save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
    return blob, _dense_records(blob, model=model, version=version, published_ms=published_ms,
                                max_bytes=max_bytes, logit_offset=logit_offset, event_time=event_time,
                                newest_arrival_ms=newest_arrival_ms)  # fmt: skip


def _dense_records(blob: bytes, *, model: str, version: int, published_ms: int, max_bytes: int,
                   logit_offset: float, event_time: float | None = None,
                   newest_arrival_ms: int | None = None) -> list[bytes]:  # fmt: skip
    step = max_bytes - _HEADER_ROOM
    n = max(1, -(-len(blob) // step))
    raw = np.frombuffer(blob, np.uint8)
    digest = checksum_bytes(blob)
    out = []
    for k in range(n):
        h = DeltaHeader(
            model=model, kind="dense", version=version, part=k, parts=n, published_ms=published_ms,
            event_time=event_time, newest_arrival_ms=newest_arrival_ms, logit_offset=logit_offset,
            dense_bytes=len(blob), dense_xxh3=digest,
        )  # fmt: skip
        out.append(_save({"chunk": raw[k * step : (k + 1) * step]}, h))
    return out


def join_dense(blobs: list[bytes]) -> tuple[DeltaHeader, bytes]:
    """The first part's header and the dense state blob of a complete version (parts in order)."""
    headers = [read_header(b) for b in blobs]
    h = headers[0]
    if [x.part for x in headers] != list(range(h.parts)) or any(x.version != h.version for x in headers):
        raise SchemaError(f"{h.describe()}: parts do not form one complete version")
    joined = b"".join(_chunk(b, x) for b, x in zip(blobs, headers, strict=True))
    if len(joined) != h.dense_bytes or checksum_bytes(joined) != h.dense_xxh3:
        raise CorruptionError(f"{h.describe()}: joined dense state fails its size or checksum")
    return h, joined


def _chunk(blob: bytes, h: DeltaHeader) -> bytes:
    chunk = _load(blob, h).get("chunk")
    if chunk is None:
        raise SchemaError(f"{h.describe()}: no 'chunk' tensor")
    return chunk.tobytes()


def load_dense(blob: bytes, what: str) -> dict[str, torch.Tensor]:
    """A dense state blob back into a ``state_dict``."""
    try:
        return torch_load(blob)
    except (SafetensorError, ValueError) as exc:
        raise CorruptionError(f"{what}: dense state does not parse: {exc}") from exc
