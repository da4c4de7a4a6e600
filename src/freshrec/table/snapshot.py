"""The table snapshot format: a directory with a manifest and safetensors chunks. No pickle.

::

    <path>/
      manifest.json            format, version, table config, row count, counters, and for
                               every file its name, size and xxh3-128 checksum
      rows-00000.safetensors   ids (m,) int64 | values (m, dim+S) float32 (embedding, then
      rows-00001.safetensors   optimizer state) | last_seen (m,) int64 ms | counts (m,) int64
      sketch.safetensors       the admission sketch (only when min_count > 1)

Rows are chunked (~64 MB a file) so neither saving nor loading needs a second copy of a large
table in memory. The directory is written under a temporary name, every file fsynced, then
renamed into place. Loading verifies every checksum before it builds anything and checks
every array's dtype and shape, so a truncated or corrupted snapshot raises
:class:`~freshrec.errors.CorruptionError` and is never half-loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from freshrec._io import (
    check_replaceable,
    checksum_bytes,
    checksum_file,
    malformed_manifest,
    recover_dir,
    replace_dir,
    temp_dir_beside,
    write_durable,
)
from freshrec.errors import ConfigError, CorruptionError, InputError
from freshrec.table import _kernels as K
from freshrec.table.config import TableConfig

if TYPE_CHECKING:
    from freshrec.table.table import EmbeddingTable

__all__ = ["FORMAT", "FORMAT_VERSION", "load_table", "save_table"]

FORMAT = "freshrec.table"
FORMAT_VERSION = 1
CHUNK_BYTES = 64 << 20
MANIFEST = "manifest.json"
# counters that describe history (statistics, RNG); structure is rebuilt on load
_PERSISTED_COUNTERS = {
    "lookups": K.C_LOOKUPS, "hits": K.C_HITS, "admitted": K.C_ADMITTED,
    "filtered": K.C_FILTERED, "expired": K.C_EXPIRED, "evicted": K.C_EVICTED,
    "removed": K.C_REMOVED, "assigned": K.C_ASSIGNED, "grad_rows": K.C_GRAD_ROWS,
    "grad_missing": K.C_GRAD_MISSING, "nonfinite": K.C_NONFINITE,
    "sketch_incs": K.C_SKETCH_INCS, "sketch_decays": K.C_SKETCH_DECAYS, "rng": K.C_RNG,
}  # fmt: skip


def save_table(table: EmbeddingTable, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``table`` to the directory ``path`` atomically; returns the path.

    Holds the table's read lock while rows are copied out and written (a consistent snapshot;
    lookups continue, writers wait).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; pass overwrite=True to replace it")
    check_replaceable(path, FORMAT, "table snapshot")  # overwrite replaces an earlier snapshot, nothing else
    files: list[dict[str, Any]] = []
    with temp_dir_beside(path) as tmp, table._lock.read():
        live = int(table._ctr[K.C_LIVE])
        keys, rows, ts, counts = (np.empty(live, np.int64) for _ in range(4))
        K.live_rows(table._slots, table._meta, table._mo, keys, rows, ts, counts)
        row_bytes = (table.dim + table.state_width) * 4 + 24
        per_chunk = max(1, CHUNK_BYTES // row_bytes)
        for c, lo in enumerate(range(0, max(live, 1), per_chunk)):
            part = table._gather(keys[lo : lo + per_chunk], rows[lo : lo + per_chunk])
            values = np.concatenate([part.embeddings, part.state], axis=1)
            blob = st_save({"ids": part.ids, "values": values, "last_seen": part.last_seen,
                            "counts": part.counts})  # fmt: skip
            files.append(_write(tmp, f"rows-{c:05d}.safetensors", blob, rows=len(part)))
        sketch = None
        if table._min_count > 1:
            blob = st_save({"sketch": table._sketch, "seeds": table._sk_seeds.view(np.int64)})
            sketch = _write(tmp, "sketch.safetensors", blob)
        counters = {name: int(table._ctr[i]) for name, i in _PERSISTED_COUNTERS.items()}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": table.config.model_dump(mode="json"),
            "rows": live,
            "dim": table.dim,
            "state_width": table.state_width,
            "files": files,
            "sketch": sketch,
            "counters": counters,
        }
        write_durable(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        replace_dir(tmp, path)
    return path


def _write(folder: Path, name: str, blob: bytes, **extra: Any) -> dict[str, Any]:
    write_durable(folder / name, blob)
    return {"name": name, "bytes": len(blob), "xxh3_128": checksum_bytes(blob), **extra}


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed and checked manifest of the snapshot at ``path``."""
    path = recover_dir(Path(path))
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CorruptionError(f"{path} is not a table snapshot: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptionError(f"{mpath} is not valid JSON (torn write?): {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptionError(f"{mpath}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version != FORMAT_VERSION:
        raise CorruptionError(
            f"{mpath}: format version {manifest.get('format_version')} is not supported "
            f"(this freshrec reads version {FORMAT_VERSION})"
        )
    for key in ("config", "rows", "files", "counters"):
        if key not in manifest:
            raise CorruptionError(f"{mpath}: missing field {key!r}")
    return manifest


def _verified(folder: Path, entry: dict[str, Any]) -> bytes:
    f = folder / entry["name"]
    if not f.is_file():
        raise CorruptionError(f"{f} is missing")
    blob = f.read_bytes()
    if len(blob) != entry["bytes"]:
        raise CorruptionError(f"{f} has {len(blob)} bytes, the manifest says {entry['bytes']} (truncated?)")
    if checksum_bytes(blob) != entry["xxh3_128"]:
        raise CorruptionError(f"{f} fails its checksum (corrupted)")
    return blob


def _arrays(name: str, blob: bytes, spec: dict[str, tuple[Any, tuple[int | None, ...]]]) -> dict[str, np.ndarray]:
    try:
        arrays = st_load(blob)
    except (SafetensorError, ValueError) as exc:
        raise CorruptionError(f"{name} is not a valid safetensors file: {exc}") from exc
    for key, (dtype, shape) in spec.items():
        a = arrays.get(key)
        if (
            a is None
            or a.dtype != dtype
            or a.ndim != len(shape)
            or any(s is not None and s != t for s, t in zip(shape, a.shape, strict=True))
        ):
            raise CorruptionError(f"{name}: array {key!r} is missing or has the wrong dtype/shape")
    return arrays


def load_table(path: str | Path) -> EmbeddingTable:
    """Rebuild a table from a snapshot directory (checksums verified before anything is built)."""
    from freshrec.table.table import EmbeddingTable

    folder = recover_dir(Path(path))
    manifest = read_manifest(folder)
    with malformed_manifest(folder):  # every field read below, of the type it is read as
        entries = list(manifest["files"]) + ([manifest["sketch"]] if manifest.get("sketch") else [])
        for entry in entries:
            if not (isinstance(entry["name"], str) and isinstance(entry["xxh3_128"], str)):
                raise TypeError(f"a file entry's name and checksum must be strings: {entry!r}")
            int(entry["bytes"])
        if not isinstance(manifest["counters"], dict):
            raise TypeError(f"counters must be a map, got {type(manifest['counters']).__name__}")
        for name in _PERSISTED_COUNTERS:
            v = manifest["counters"].get(name, 0)
            if not isinstance(v, int) or isinstance(v, bool) or not -(2**63) <= v < 2**63:
                raise TypeError(f"counter {name!r} must be an int64, got {v!r}")
        manifest["config"], manifest["rows"]  # present (their types are checked where they are used)
    try:
        config = TableConfig.from_dict(manifest["config"], source=f"{folder}/{MANIFEST}")
    except ConfigError as exc:
        raise CorruptionError(str(exc)) from exc
    # pass 1: every file present, of the right size and checksum, before building anything
    for entry in entries:
        f = folder / entry["name"]
        if not f.is_file() or f.stat().st_size != entry["bytes"]:
            raise CorruptionError(f"{f} is missing or truncated")
        if checksum_file(f) != entry["xxh3_128"]:
            raise CorruptionError(f"{f} fails its checksum (corrupted)")
    table = EmbeddingTable(config)
    width = table.dim + table.state_width
    rows = manifest["rows"]
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise CorruptionError(f"{folder}/{MANIFEST}: rows must be a count, got {rows!r}")
    # a row takes 4 * width + 24 bytes in the files (id, values, last-seen, count): the verified
    # files bound what is worth reserving, whatever the manifest claims (checked after loading)
    table.reserve(min(rows, sum(int(e["bytes"]) for e in manifest["files"]) // (4 * width + 24)))
    # pass 2: parse and assign; the table is returned only if every chunk loads
    total = 0
    for entry in manifest["files"]:
        a = _arrays(entry["name"], _verified(folder, entry), {
            "ids": (np.int64, (None,)), "values": (np.float32, (None, width)),
            "last_seen": (np.int64, (None,)), "counts": (np.int64, (None,)),
        })  # fmt: skip
        n = a["ids"].shape[0]
        if not (a["values"].shape[0] == a["last_seen"].shape[0] == a["counts"].shape[0] == n):
            raise CorruptionError(f"{entry['name']}: arrays disagree on the number of rows")
        table.assign(a["ids"], a["values"][:, : table.dim], state=a["values"][:, table.dim :],
                     last_seen=a["last_seen"], counts=a["counts"], evict=False)  # fmt: skip
        total += n
    if total != manifest["rows"] or len(table) != total:
        raise CorruptionError(f"{folder}: manifest says {manifest['rows']} rows, files hold {total}")
    if bool(manifest.get("sketch")) != (config.admission.min_count > 1):
        raise CorruptionError(
            f"{folder}/{MANIFEST}: min_count is {config.admission.min_count} but the snapshot "
            f"{'has' if manifest.get('sketch') else 'lacks'} an admission sketch"
        )
    if manifest.get("sketch"):
        entry = manifest["sketch"]
        blob = _verified(folder, entry)
        seeds = (np.int64, table._sk_seeds.shape)
        try:
            a = _arrays(entry["name"], blob, {"sketch": (np.uint32, table._sketch.shape), "seeds": seeds})
            table._sketch[...] = a["sketch"]
        except CorruptionError:  # written before 2026-11-29: one generation, now the current one
            a = _arrays(entry["name"], blob, {"sketch": (np.uint32, table._sketch.shape[1:]), "seeds": seeds})
            table._sketch[0] = a["sketch"]
        table._sk_seeds[...] = a["seeds"].view(np.uint64)
    table.drain_changes()  # a restored table has no pending changes: replicas bootstrap from it
    for name, i in _PERSISTED_COUNTERS.items():
        table._ctr[i] = int(manifest["counters"].get(name, 0))
    return table
