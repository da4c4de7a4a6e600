"""Feature IDs as int64: integers pass through, strings are hashed with seeded 64-bit xxhash.

Every embedding table is keyed by int64 (``freshrec.table``). Integer IDs are used exactly as
they are, so an integer slot is collisionless. A string or bytes ID becomes
``xxh64(utf-8 bytes, seed)`` reinterpreted as int64: two distinct strings share a row only if
their 64-bit hashes collide, which for n distinct strings happens with probability about
``n**2 / 2**65`` (the birthday bound; < 1e-7 for a billion strings: docs/features.md).

Hashing is vectorised: a column of strings is laid out as an Arrow string array (one buffer of
bytes plus offsets) and hashed by a compiled XXH64 kernel, so a million strings cost a few tens
of milliseconds and no Python loop. Dictionary-encoded columns hash only their dictionary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from freshrec.errors import InputError
from freshrec.features import _kernels as K

__all__ = ["hash_ids", "hash_strings", "warmup"]

_U64 = 2**64


def _seed(seed: int) -> np.uint64:
    seed = int(seed)
    if not 0 <= seed < _U64:
        raise InputError(f"hash seed must be in [0, 2**64), got {seed}")
    return np.uint64(seed)


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The (bytes, int64 offsets) of a string/binary array, honouring its slice offset."""
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        off_dtype = np.int64
    else:
        off_dtype = np.int32
    _, off_buf, data_buf = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(off_buf, dtype=off_dtype)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offsets.astype(np.int64)


def hash_strings(arr: pa.Array, seed: int = 0) -> np.ndarray:
    """XXH64 of each element of an Arrow string or binary array, as int64. ``(B,)`` in, ``(B,)`` out."""
    if arr.null_count:
        raise InputError(f"cannot hash {arr.null_count} null values; fill them first")
    if pa.types.is_string_view(arr.type) or pa.types.is_binary_view(arr.type):
        arr = arr.cast(pa.large_string() if pa.types.is_string_view(arr.type) else pa.large_binary())
    data, offsets = _string_buffers(arr)
    out = np.empty(len(arr), np.uint64)
    K.xxh64_strings(data, offsets, _seed(seed), out)
    return out.view(np.int64)


def _is_stringlike(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary_view(t)
    )


def _hash_arrow(arr: pa.Array, seed: int) -> np.ndarray:
    t = arr.type
    if arr.null_count:
        raise InputError(f"cannot use {arr.null_count} null IDs; fill them first")
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return _ints(arr.to_numpy(zero_copy_only=False))
    if _is_stringlike(t):
        return hash_strings(arr, seed)
    if pa.types.is_dictionary(t):
        codes = arr.indices.to_numpy(zero_copy_only=False)
        return _hash_arrow(arr.dictionary, seed)[codes]  # (B,): each distinct value hashed once
    if pa.types.is_null(t) and len(arr) == 0:
        return np.zeros(0, np.int64)
    raise InputError(f"IDs must be integers, strings or bytes, got Arrow type {t}")


def _ints(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint64:
        return values.view(np.int64)  # IDs >= 2**63 wrap to negative int64: still one ID each
    return np.ascontiguousarray(values, dtype=np.int64)


def hash_ids(values: np.ndarray | pa.Array | pa.ChunkedArray | Sequence, seed: int = 0) -> np.ndarray:
    """Turn a column of feature values into int64 IDs. ``(B,)`` in, ``(B,)`` int64 out.

    Integer (and bool) values pass through unchanged; uint64 values are reinterpreted as int64
    (bit for bit, so still distinct). Strings are hashed as ``xxh64(s.encode("utf-8"), seed)``
    and bytes as ``xxh64(b, seed)``, both viewed as int64. Accepts numpy arrays, Python
    sequences and Arrow arrays (string, binary, integer, dictionary, chunked).

    Raises:
        InputError: floats, nulls, or a mix of strings and integers.
    """
    seed_u = int(_seed(seed))
    if isinstance(values, pa.ChunkedArray):
        parts = [_hash_arrow(c, seed_u) for c in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if isinstance(values, pa.Array):
        return _hash_arrow(values, seed_u)
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise InputError(f"IDs must be 1-D, got shape {values.shape}")
        kind = values.dtype.kind
        if kind in "iu":
            return _ints(values)
        if kind == "b":
            return values.astype(np.int64)
        if kind == "f" or kind == "c":
            raise InputError(f"IDs must be integers or strings, got {values.dtype} (floats are not IDs)")
        if kind not in "USO":
            raise InputError(f"IDs must be integers or strings, got dtype {values.dtype}")
    elif isinstance(values, str | bytes):
        raise InputError("hash_ids takes a column of IDs, not a single string")
    try:
        arr = pa.array(values, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"IDs must be all integers or all strings: {exc}") from exc
    if pa.types.is_floating(arr.type):
        raise InputError(f"IDs must be integers or strings, got {arr.type} (floats are not IDs)")
    return _hash_arrow(arr, seed_u)


def warmup() -> None:
    """Compile (or load from numba's cache) the hashing kernel, so no request pays for it."""
    hash_strings(pa.array(["warmup"]), 0)
