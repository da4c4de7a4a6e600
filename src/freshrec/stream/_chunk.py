"""The embedded log's storage unit: a chunk of consecutive records of one partition, packed in
one blob (as Kafka packs record batches), so an append of 10k records writes a few rows.

Layout of a chunk of ``n`` records (little-endian)::

    timestamps   int64[n]      milliseconds
    key_lengths  int32[n]      -1 for a record without a key
    value_lengths int32[n]
    keys         the keys, concatenated (absent keys take no bytes)
    values       the values, concatenated

Offsets are not stored: record ``i`` has offset ``base_offset + i``. The checksum (xxh3-64,
seeded with the base offset so a chunk moved to another position fails too) is stored beside
the blob and checked on every read.
"""

from __future__ import annotations

import numpy as np
import xxhash

from freshrec.errors import CorruptionError, TooLargeError

__all__ = ["MAX_RECORD_BYTES", "checksum", "pack", "spans", "unpack"]

MAX_RECORD_BYTES = (1 << 31) - 1  # lengths are int32
_MASK63 = (1 << 63) - 1  # SQLite integers are signed 64-bit


def checksum(data: bytes, base_offset: int) -> int:
    return xxhash.xxh3_64_intdigest(data, base_offset & ((1 << 64) - 1)) & _MASK63


def spans(sizes: np.ndarray, max_records: int, max_bytes: int) -> list[tuple[int, int]]:
    """Cut records of ``sizes`` bytes (in order) into [start, stop) chunks of at most
    ``max_records`` records and about ``max_bytes`` bytes; a chunk holds at least one record."""
    n = sizes.shape[0]
    ends = np.cumsum(sizes)  # (N,) bytes up to and including record i
    out = []
    start = 0
    while start < n:
        before = int(ends[start - 1]) if start else 0
        stop = int(np.searchsorted(ends, before + max_bytes, side="right"))
        stop = min(max(stop, start + 1), start + max_records, n)
        out.append((start, stop))
        start = stop
    return out


def record_sizes(values: list[bytes], keys: list[bytes | None] | None) -> tuple[np.ndarray, np.ndarray]:
    """(value lengths, key lengths with -1 for None), each (n,) int64; checks the int32 limit."""
    n = len(values)
    vlen = np.fromiter(map(len, values), np.int64, n)
    if keys is None:
        klen = np.full(n, -1, np.int64)
    else:
        klen = np.fromiter((-1 if k is None else len(k) for k in keys), np.int64, n)
    if n and max(int(vlen.max()), int(klen.max())) > MAX_RECORD_BYTES:
        raise TooLargeError(f"a record's key or value is longer than {MAX_RECORD_BYTES} bytes")
    return vlen, klen


def pack(
    values: list[bytes], keys: list[bytes | None] | None, ts: np.ndarray, vlen: np.ndarray, klen: np.ndarray
) -> bytes:
    """One chunk's blob. ``vlen``/``klen`` are :func:`record_sizes` of the same records."""
    key_blob = b"" if keys is None else b"".join(filter(None, keys))
    return b"".join(
        (
            ts.astype("<i8").tobytes(),
            klen.astype("<i4").tobytes(),
            vlen.astype("<i4").tobytes(),
            key_blob,
            *values,
        )
    )


def unpack(
    data: bytes, count: int, start: int, stop: int, where: str
) -> tuple[list[bytes | None], list[bytes], list[int]]:
    """Keys, values and timestamps of records ``start..stop-1`` of a chunk of ``count``.
    ``where`` names the chunk in the :class:`CorruptionError` a malformed blob raises."""
    head = 16 * count
    if len(data) < head:
        raise CorruptionError(f"{where}: chunk of {count} records is {len(data)} bytes, too short")
    ts = np.frombuffer(data, "<i8", count, 0)
    klen = np.frombuffer(data, "<i4", count, 8 * count).astype(np.int64)
    vlen = np.frombuffer(data, "<i4", count, 12 * count).astype(np.int64)
    if count and (int(vlen.min()) < 0 or int(klen.min()) < -1):
        raise CorruptionError(f"{where}: chunk holds a negative record length")
    kpos = np.empty(count + 1, np.int64)  # (n+1,) where each key starts; the last: keys' end
    kpos[0] = head
    np.cumsum(np.maximum(klen, 0), out=kpos[1:])
    kpos[1:] += head
    vpos = np.empty(count + 1, np.int64)  # (n+1,) where each value starts; the last: the end
    vpos[0] = kpos[-1]
    np.cumsum(vlen, out=vpos[1:])
    vpos[1:] += kpos[-1]
    if int(vpos[-1]) != len(data):
        raise CorruptionError(f"{where}: chunk is {len(data)} bytes, its lengths add up to {int(vpos[-1])}")
    v0, v1 = vpos[start:stop].tolist(), vpos[start + 1 : stop + 1].tolist()
    values = [data[a:b] for a, b in zip(v0, v1, strict=True)]
    kl = klen[start:stop]
    if not kl.size or int(kl.max()) < 0:
        keys: list[bytes | None] = [None] * (stop - start)
    else:
        k0, k1 = kpos[start:stop].tolist(), kpos[start + 1 : stop + 1].tolist()
        keys = [None if n < 0 else data[a:b] for a, b, n in zip(k0, k1, kl.tolist(), strict=True)]
    return keys, values, ts[start:stop].tolist()
