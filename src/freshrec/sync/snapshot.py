"""Serving snapshots: a model's embeddings and dense weights at known sync versions, so a replica
can start (or recover from a gap) by loading one and replaying the deltas after it.

::

    <snapshot_dir>/<model>/
      LATEST                      {"snapshot": "snapshot-000000000042"}, replaced atomically
      snapshot-000000000042/      named by its sparse version (12 digits: sorts as text)
        manifest.json             versions, sync-log offsets, event time, logit offset, serving
                                  table configs, spec and model config (if known), checksums
        dense.safetensors         the dense state_dict of the dense version named in the manifest
        tables/0000.safetensors   ``ids`` (n,) int64 and ``emb`` (n, D) float32 of table 0, ...

Embeddings only, not a model directory: serving needs no optimizer state (as large as the
embeddings, or twice that for Adam), no admission sketches and no dense optimizer, so a snapshot
is half the size or less and quicker to write; training keeps its own checkpoints
(``Trainer.save``). A snapshot directory is written under a temporary name and renamed into
place, then LATEST is replaced; the newest ``keep`` are kept. Every file is checksummed and
verified when read: a torn or corrupted snapshot raises :class:`CorruptionError` and a replica
falls back to the next older one.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from freshrec._faults import crash_point
from freshrec._io import (
    atomic_write_bytes,
    checksum_bytes,
    read_manifest,
    recover_dir,
    replace_dir,
    temp_dir_beside,
    write_durable,
)
from freshrec.errors import ConfigError, CorruptionError, SyncError
from freshrec.ps import LocalPS, ParameterServer, PSConfig
from freshrec.table import TableConfig

if TYPE_CHECKING:
    from freshrec.sync.state import ServedModel

__all__ = [
    "SnapshotInfo",
    "list_snapshots",
    "load_tables",
    "new_serving_ps",
    "newest_good_snapshot",
    "read_snapshot",
    "served_model_from_snapshot",
    "snapshot_candidates",
    "write_snapshot",
]

FORMAT = "freshrec.sync.snapshot"
FORMAT_VERSION = 1
POINTER = "LATEST"
_NAME = re.compile(r"snapshot-(\d{12})")


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot's manifest: what it reflects and where replay resumes."""

    path: Path
    model: str
    sparse_version: int  # deltas 1..sparse_version are in it
    dense_version: int  # its dense weights are this dense publication (0: none published)
    sparse_offset: int  # next offset of the sparse topic after ``sparse_version``
    dense_offset: int  # next offset of the dense topic after ``dense_version``
    event_time: float | None
    newest_arrival_ms: int | None
    logit_offset: float
    created_ms: int
    tables: dict[str, dict[str, Any]]  # name -> {"config", "rows", "file", "bytes", "xxh3_128"}
    dense: dict[str, Any] | None  # {"bytes", "xxh3_128"} of dense.safetensors
    spec: dict[str, Any] | None  # FeatureSpec, if the publisher knew it
    model_config: dict[str, Any] | None

    def table_configs(self) -> dict[str, TableConfig]:
        return {t: TableConfig.from_dict(v["config"], source=f"{self.path}/manifest.json")
                for t, v in self.tables.items()}  # fmt: skip

    def read_tables(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """``(table, ids, embeddings)`` of every table, each file verified before it is parsed."""
        for t, entry in self.tables.items():
            blob = _verified(self.path, entry["file"], entry)
            try:
                arrays = np_load(blob)
                ids, emb = arrays["ids"], arrays["emb"]
            except (SafetensorError, KeyError, ValueError) as exc:
                raise CorruptionError(f"{self.path}/{entry['file']} does not parse: {exc}") from exc
            if ids.dtype != np.int64 or emb.dtype != np.float32 or ids.shape != (entry["rows"],) \
                    or emb.shape != (entry["rows"], entry["config"]["dim"]):  # fmt: skip
                raise CorruptionError(f"{self.path}/{entry['file']}: table {t!r} has the wrong shapes")
            yield t, ids, emb

    def read_dense(self) -> bytes | None:
        """The dense state blob (safetensors), verified; None if the snapshot has none."""
        return None if self.dense is None else _verified(self.path, "dense.safetensors", self.dense)


def _verified(folder: Path, name: str, entry: dict[str, Any]) -> bytes:
    f = folder / name
    try:
        blob = f.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptionError(f"{f} is missing") from exc
    if len(blob) != entry["bytes"] or checksum_bytes(blob) != entry["xxh3_128"]:
        raise CorruptionError(f"{f} is truncated or fails its checksum")
    return blob


def write_snapshot(
    root: str | Path,
    *,
    model: str,
    tables: dict[str, tuple[np.ndarray, np.ndarray]],
    table_configs: dict[str, TableConfig],
    dense: bytes | None,
    sparse_version: int,
    dense_version: int,
    sparse_offset: int,
    dense_offset: int,
    logit_offset: float,
    event_time: float | None = None,
    newest_arrival_ms: int | None = None,
    spec: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Write ``snapshot-<sparse_version>`` under ``root``, point LATEST at it, keep the newest
    ``keep``. ``tables`` maps each table to ``(ids, embeddings)``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"snapshot-{sparse_version:012d}"
    path = root / name
    with temp_dir_beside(path) as tmp:
        (tmp / "tables").mkdir()
        entries: dict[str, dict[str, Any]] = {}
        for i, (t, (ids, emb)) in enumerate(sorted(tables.items())):
            rel = f"tables/{i:04d}.safetensors"
            blob = np_save({"ids": np.ascontiguousarray(ids, np.int64),
                            "emb": np.ascontiguousarray(emb, np.float32)})  # fmt: skip
            write_durable(tmp / rel, blob)
            entries[t] = {"config": table_configs[t].model_dump(mode="json"), "rows": len(ids),
                          "file": rel, "bytes": len(blob), "xxh3_128": checksum_bytes(blob)}  # fmt: skip
        dense_entry = None
        if dense is not None:
            write_durable(tmp / "dense.safetensors", dense)
            dense_entry = {"bytes": len(dense), "xxh3_128": checksum_bytes(dense)}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model,
            "sparse_version": sparse_version,
            "dense_version": dense_version,
            "sparse_offset": sparse_offset,
            "dense_offset": dense_offset,
            "event_time": event_time,
            "newest_arrival_ms": newest_arrival_ms,
            "logit_offset": logit_offset,
            "created_ms": int(time.time() * 1000),
            "tables": entries,
            "dense": dense_entry,
            "spec": spec,
            "model_config": model_config,
        }
        crash_point("snapshot.mid")  # tables and dense state written, no manifest yet
        write_durable(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        replace_dir(tmp, path)
    atomic_write_bytes(root / POINTER, json.dumps({"snapshot": name}).encode())
    for old in list_snapshots(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_snapshots(root: str | Path) -> list[Path]:
    """Snapshot folders under ``root``, newest (highest sparse version) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def snapshot_candidates(root: str | Path) -> list[Path]:
    """Where to look for the newest good snapshot, in order: LATEST's target, then every other
    snapshot folder, newest first (a crash may have left LATEST behind, or its target torn)."""
    root = Path(root)
    out: list[Path] = []
    try:
        name = json.loads((root / POINTER).read_bytes())["snapshot"]
        if isinstance(name, str) and _NAME.fullmatch(name):
            out.append(recover_dir(root / name))
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError):
        pass  # no pointer, or a torn one: the folder listing still finds every snapshot
    return out + [p for p in list_snapshots(root) if p not in out]


def read_snapshot(path: str | Path) -> SnapshotInfo:
    """A snapshot's manifest, checked; the files are verified as they are read."""
    folder = Path(path)
    m = read_manifest(folder, FORMAT, FORMAT_VERSION, "sync snapshot")
    try:
        return SnapshotInfo(
            path=folder, model=m["model"], sparse_version=int(m["sparse_version"]),
            dense_version=int(m["dense_version"]), sparse_offset=int(m["sparse_offset"]),
            dense_offset=int(m["dense_offset"]), event_time=m["event_time"],
            newest_arrival_ms=m["newest_arrival_ms"], logit_offset=float(m["logit_offset"]),
            created_ms=int(m["created_ms"]), tables=dict(m["tables"]), dense=m["dense"], spec=m["spec"],
            model_config=m["model_config"],
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptionError(f"{folder}/manifest.json lacks or garbles {exc}") from exc


def newest_good_snapshot(root: str | Path) -> SnapshotInfo | None:
    """The newest snapshot under ``root`` whose manifest reads (files are verified on use)."""
    for path in snapshot_candidates(root):
        try:
            return read_snapshot(path)
        except CorruptionError:
            continue
    return None


def new_serving_ps(tables: dict[str, TableConfig], *, fp16: bool, config: PSConfig | None = None) -> ParameterServer:
    """An empty serving PS over the serving twins of ``tables`` (float16 storage if ``fp16``)."""
    from freshrec.sync.fp16 import Fp16PS
    from freshrec.sync.state import serving_table_config

    cfgs = {t: serving_table_config(c) for t, c in tables.items()}
    config = config or PSConfig(num_shards=1)
    return Fp16PS(cfgs, config) if fp16 else LocalPS(cfgs, config)


def load_tables(info: SnapshotInfo, ps: ParameterServer) -> int:
    """Write every table of the snapshot into ``ps`` (which must serve the same tables, same
    widths); returns the rows loaded. A corrupted file raises CorruptionError part-way: load
    into a PS that is not serving yet."""
    rows = 0
    have = ps.tables
    for t, entry in info.tables.items():
        if t not in have or have[t].dim != entry["config"]["dim"]:
            raise SyncError(f"snapshot {info.path} has table {t!r} (dim {entry['config']['dim']}) which the "
                            f"serving model does not have with that width")  # fmt: skip
    for t, ids, emb in info.read_tables():
        ps.assign(t, ids, emb)
        rows += len(ids)
    return rows


def served_model_from_snapshot(
    path: str | Path, *, name: str | None = None, fp16: bool = False, ps_config: PSConfig | None = None
) -> ServedModel:
    """A :class:`ServedModel` built from a snapshot alone (see ``ServedModel.from_snapshot``): the
    folder ``path``, or the newest good snapshot under ``path`` (torn ones are skipped)."""
    path = Path(path)
    candidates = [path] if (path / "manifest.json").exists() else snapshot_candidates(path)
    if not candidates:
        raise SyncError(
            f"no snapshot under {path} yet: a replica starts from one, and `freshrec online` (the "
            "publisher) writes the first as it starts: start it first, with the same snapshot_dir "
            "(or check the path)"
        )
    failure: CorruptionError | None = None
    for candidate in candidates:
        try:
            return _served_model(read_snapshot(candidate), name, fp16, ps_config)
        except CorruptionError as exc:
            failure = exc
    raise SyncError(f"no good snapshot under {path}" + (f" (last: {failure})" if failure else "")) from failure


def _served_model(info: SnapshotInfo, name: str | None, fp16: bool, ps_config: PSConfig | None) -> ServedModel:
    from freshrec.features import FeatureSpec
    from freshrec.models import build_model
    from freshrec.sync.delta import load_dense
    from freshrec.sync.state import _MODEL_CONFIG, ServedModel

    if info.spec is None or info.model_config is None:
        raise SyncError(f"snapshot {info.path} lacks the feature spec or model config (its publisher was "
                        f"not given them): build the ServedModel from a model directory instead")  # fmt: skip
    try:
        spec = FeatureSpec.from_dict(info.spec, source=f"{info.path}/manifest.json")
        model_config = _MODEL_CONFIG.validate_python(info.model_config)
    except (ConfigError, ValueError) as exc:  # the spec's ConfigError, pydantic's ValidationError
        raise CorruptionError(f"{info.path}/manifest.json holds an invalid config: {exc}") from exc
    module = build_model(model_config, spec)
    dense = info.read_dense()
    if dense is not None:
        try:
            module.load_state_dict(load_dense(dense, str(info.path)))
        except RuntimeError as exc:
            raise CorruptionError(f"{info.path}: dense weights do not fit the model: {exc}") from exc
    ps = new_serving_ps(info.table_configs(), fp16=fp16, config=ps_config)
    try:
        load_tables(info, ps)
    except BaseException:
        ps.close()
        raise
    served = ServedModel(name or info.model, spec, model_config, module, ps, info.logit_offset)
    served.mark(sparse_version=info.sparse_version, dense_version=info.dense_version, event_time=info.event_time)
    return served
