"""What every sharded parameter server shares, wherever its shards live (threads or Ray actors).

* which shard owns an ID (``shard_of``) and the config a shard runs (``shard_config``: 1/N of
  the table's rows, sketch and window);
* :class:`ShardedPS`, the front half of a parameter server: table registry, lifecycle, the checks
  every pull and push passes before any shard sees it (so a NaN gradient in one table changes
  nothing anywhere), change-drain versions and the count of refused pushes;
* the snapshot format (``manifest.json`` and one table snapshot per (table, shard)), written and
  read here for both backends, so either loads what the other saved.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from freshrec._io import malformed_manifest, read_manifest, recover_dir, write_durable
from freshrec.errors import ConfigError, CorruptionError, InputError, NonFiniteError, StateError
from freshrec.ps import _kernels as K
from freshrec.ps.base import ParameterServer
from freshrec.ps.config import PSConfig
from freshrec.table import EmbeddingTable, TableConfig, TableExport, TableStats
from freshrec.table.table import check_counts, check_ids, gradient_problem, to_ms

__all__ = [
    "PSState",
    "ShardedPS",
    "Snapshot",
    "load_shard",
    "read_snapshot",
    "reshard_into",
    "shard_config",
    "shard_layout",
    "shard_of",
    "write_snapshot_manifest",
]

FORMAT = "freshrec.ps"
FORMAT_VERSION = 1


class PSState(enum.Enum):
    OPEN = "open"  # serving pulls and pushes
    CLOSED = "closed"  # shards released; every call raises StateError


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard (0..num_shards-1) that owns each ID."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    out = np.empty(ids.shape[0], np.int64)
    K.shard_ids(ids, num_shards, out)
    return out


def group_by_shard(ids: np.ndarray, num_shards: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` ordered by owning shard, and where each shard's run starts: shard
    ``s`` owns ``ids[order[starts[s]:starts[s + 1]]]``."""
    order = np.empty(ids.shape[0], np.int64)
    starts = np.empty(num_shards + 1, np.int64)
    K.group_by_shard(ids, num_shards, order, starts)
    return order, starts


def shard_config(cfg: TableConfig, num_shards: int) -> TableConfig:
    """A shard holds 1/N of the table: its row cap, expected rows, admission sketch and the
    sketch's window shrink alike."""
    if num_shards == 1:
        return cfg
    data = cfg.model_dump()
    width = max(1024, cfg.admission.sketch_width // num_shards)
    data["admission"]["sketch_width"] = 1 << (width.bit_length() - 1)  # a power of two
    window = cfg.admission.decay_every
    if window and cfg.admission.min_count > 1:  # the table's window, in its unadmitted occurrences:
        # a shard sees ~1/N of them (explicit: a quarter of the rounded width would be shorter)
        data["admission"]["sketch_decay_every"] = max(cfg.admission.min_count, window // num_shards)
    if cfg.max_rows is not None:
        data["max_rows"] = max(1, cfg.max_rows // num_shards)
    if cfg.expected_rows is not None:
        data["expected_rows"] = -(-cfg.expected_rows // num_shards)
    return TableConfig.from_dict(data, source=f"shard config of table {cfg.name!r}")  # validated


class ShardedPS(ParameterServer):
    """The part of a sharded parameter server that does not depend on where shards live."""

    config: PSConfig

    def _setup(self, tables: Mapping[str, TableConfig] | Iterable[TableConfig], config: PSConfig | None) -> None:
        """Check and keep the table configs; everything but the shards themselves."""
        self.config = config or PSConfig()
        pairs = list(tables.items()) if isinstance(tables, Mapping) else [(getattr(t, "name", None), t) for t in tables]
        for name, cfg in pairs:
            if not isinstance(cfg, TableConfig):
                raise ConfigError(f"table {name!r}: expected a TableConfig, got {type(cfg).__name__} "
                                  "(TableConfig.from_dict builds one from a dict)")  # fmt: skip
        cfgs = dict(pairs)
        if len(cfgs) < len(pairs):
            names = [n for n, _ in pairs]
            raise ConfigError(f"two tables share a name: {sorted({n for n in names if names.count(n) > 1})}")
        if not cfgs:
            raise ConfigError("a parameter server needs at least one table")
        self._configs = {name: cfg.model_copy(update={"name": name}) for name, cfg in cfgs.items()}
        self._shard_configs: dict[str, TableConfig] | None = None
        self._state = PSState.OPEN
        self._version = 0
        self._version_lock = threading.Lock()
        self.nonfinite_rejected = 0  # pushes refused for NaN/Inf gradients, before any shard saw them
        self._nonfinite_by_table: dict[str, int] = {}  # the same per table, added to its stats()

    @property
    def tables(self) -> dict[str, TableConfig]:
        return dict(self._configs)

    @property
    def num_shards(self) -> int:
        return self.config.num_shards

    def shard_configs(self) -> dict[str, TableConfig]:
        """The config each shard of each table runs (made once: configs are frozen)."""
        if self._shard_configs is None:
            self._shard_configs = {t: shard_config(cfg, self.num_shards) for t, cfg in self._configs.items()}
        return dict(self._shard_configs)

    def _check_open(self, what: str) -> None:
        if self._state is not PSState.OPEN:
            raise StateError(f"cannot {what}: the parameter server is {self._state.value}")

    def _table(self, table: str, what: str) -> str:
        self._check_open(what)
        if table not in self._configs:
            raise InputError(f"unknown table {table!r}; the parameter server has {sorted(self._configs)}")
        return table

    def _groups(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return group_by_shard(ids, self.num_shards)

    def pull(
        self, table: str, ids: Any, *, train: bool = False, now: float | None = None, counts: Any | None = None
    ) -> np.ndarray:
        return self.pull_many({table: ids}, train=train, now=now, counts=None if counts is None else {table: counts})[
            table
        ]

    def push(self, table: str, ids: Any, grads: Any, *, now: float) -> int:
        return self.push_many({table: (ids, grads)}, now=now)

    def _prepare_pull(
        self, ids: Mapping[str, Any], train: bool, now: float | None, counts: Mapping[str, Any] | None
    ) -> tuple[list[tuple[str, np.ndarray, np.ndarray | None]], dict[str, np.ndarray]]:
        """``(table, keys, counts)`` of a pull, every table's input checked before any is touched,
        and the ``(n, dim)`` output array of each table."""
        if train:
            if now is None:
                raise InputError("a training pull needs the event time: pull(..., train=True, now=t)")
            to_ms(now)  # refused here, before any shard of any table admits a row
        elif counts is not None:
            raise InputError("counts go with a training pull: pull(..., train=True, now=t, counts=c)")
        prepared = []
        for table, raw in ids.items():
            keys = check_ids(raw, scalar=False)
            self._table(table, "pull")
            occ = None
            if counts is not None and counts.get(table) is not None:
                try:
                    occ = check_counts(counts[table], keys)
                except InputError as exc:
                    raise InputError(f"table {table!r}: {exc}; nothing was pulled") from None
            prepared.append((table, keys, occ))
        outs = {t: np.empty((k.shape[0], self._configs[t].dim), np.float32) for t, k, _ in prepared}
        return prepared, outs

    def _prepare_push(self, grads: Mapping[str, tuple[Any, Any]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``(table, keys, float32 grads)`` of a push; a bad shape or a NaN/Inf anywhere refuses
        the whole push (counted) before any shard sees it."""
        prepared = []
        for table, (raw_ids, raw_g) in grads.items():
            keys = check_ids(raw_ids, scalar=False)
            dim = self._configs[self._table(table, "push")].dim
            g = np.asarray(raw_g)
            if g.shape != (keys.shape[0], dim) or g.dtype.kind != "f":
                raise InputError(f"table {table!r}: grads must be floats of shape ({keys.shape[0]}, {dim}), "
                                 f"got {g.dtype} {g.shape}")  # fmt: skip
            g = np.ascontiguousarray(g, dtype=np.float32)
            problem = gradient_problem(g)
            if problem:
                self.nonfinite_rejected += 1
                self._nonfinite_by_table[table] = self._nonfinite_by_table.get(table, 0) + 1
                raise NonFiniteError(f"table {table!r}: {problem}; nothing was pushed")
            prepared.append((table, keys, g))
        return prepared

    def _next_version(self) -> int:
        with self._version_lock:
            self._version += 1
            return self._version

    def _with_refused(self, stats: dict[str, TableStats]) -> dict[str, TableStats]:
        """Per-table stats with the pushes refused here, which no shard counted (a copy: a
        concurrent push may add a table)."""
        for t, n in list(self._nonfinite_by_table.items()):
            stats[t] = dataclasses.replace(stats[t], nonfinite_rejected=stats[t].nonfinite_rejected + n)
        return stats

    def _split_assign(
        self, keys: np.ndarray, embeddings: Any, kwargs: Mapping[str, Any]
    ) -> list[tuple[int, np.ndarray, np.ndarray, dict[str, Any]]]:
        """``(shard, ids, embeddings, per-row kwargs)`` of an assign spanning shards."""
        emb = np.asarray(embeddings)
        order, starts = self._groups(keys)
        parts = []
        for s in range(self.num_shards):
            pos = order[starts[s] : starts[s + 1]]
            if pos.size:
                part = {k: (np.asarray(v)[pos] if v is not None and np.ndim(v) > 0 else v) for k, v in kwargs.items()}
                parts.append((s, keys[pos], emb[pos], part))
        return parts


# ---- snapshot format -------------------------------------------------------------------------
def shard_layout(configs: Mapping[str, TableConfig], num_shards: int) -> dict[str, list[str]]:
    """Where each (table, shard) snapshot goes inside a parameter-server snapshot."""
    return {t: [f"{t}/shard-{s:04d}" for s in range(num_shards)] for t in configs}


def write_snapshot_manifest(folder: Path, configs: Mapping[str, TableConfig], num_shards: int) -> None:
    """The manifest of a parameter-server snapshot whose shards are already in ``folder``."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_shards": num_shards,
        "tables": {
            t: {"config": configs[t].model_dump(mode="json"), "shards": rels}
            for t, rels in shard_layout(configs, num_shards).items()
        },
    }
    write_durable(folder / "manifest.json", json.dumps(manifest, indent=1).encode())


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A parameter-server snapshot's manifest, checked: its tables' configs and shard folders."""

    folder: Path
    num_shards: int
    tables: dict[str, TableConfig]
    layout: dict[str, list[Path]]  # table -> the folder of each shard's table snapshot


def read_snapshot(path: str | Path) -> Snapshot:
    folder = recover_dir(Path(path))
    manifest = read_manifest(folder, FORMAT, FORMAT_VERSION, "parameter-server snapshot")
    with malformed_manifest(folder):
        try:  # a config the code refuses is as corrupt as a torn file (the table's load says so too)
            saved = manifest["tables"].items()
            tables = {t: TableConfig.from_dict(v["config"], source=str(folder)) for t, v in saved}
        except ConfigError as exc:
            raise CorruptionError(str(exc)) from exc
        layout = {t: [folder / rel for rel in v["shards"]] for t, v in manifest["tables"].items()}
        return Snapshot(folder, int(manifest["num_shards"]), tables, layout)


def reshard_into(ps: ParameterServer, shards: Mapping[str, list[EmbeddingTable]]) -> None:
    """Assign every row of the loaded ``shards`` to its owner in ``ps`` (a snapshot loaded into
    another shard count; the admission sketches start empty), then drain the changes this made."""
    for t, parts in shards.items():
        for old in parts:
            exp = old.export()
            ps.assign(
                t, exp.ids, exp.embeddings, state=exp.state, last_seen=exp.last_seen, counts=exp.counts, evict=False
            )  # a re-shard restores what was saved; admissions evict later
    ps.drain_changes()


def load_shard(
    path: str | Path, shard: int, configs: Mapping[str, TableConfig], num_shards: int
) -> dict[str, EmbeddingTable]:
    """Shard ``shard`` of every table from the snapshot at ``path``, checked against the
    parameter server it is to rejoin (``configs``, ``num_shards``): the same shard count and
    tables, each shard saved with the config its siblings run."""
    if isinstance(shard, bool) or not isinstance(shard, int | np.integer):
        raise InputError(f"shard must be an int, got {type(shard).__name__}")
    snap = read_snapshot(path)
    if snap.num_shards != num_shards or not 0 <= shard < num_shards:
        raise InputError(f"snapshot has {snap.num_shards} shards; cannot restore shard {shard} "
                         f"of a {num_shards}-shard PS")  # fmt: skip
    if set(snap.tables) != set(configs):
        raise InputError(f"snapshot holds tables {sorted(snap.tables)}; this PS serves {sorted(configs)}")
    fresh = {t: EmbeddingTable.load(paths[shard]) for t, paths in snap.layout.items()}
    for t, table in fresh.items():  # a shard must run as its siblings do: same rows, same optimizer
        diff = config_diff(table.config, shard_config(configs[t], num_shards))
        if diff:
            raise InputError(f"table {t!r}: the snapshot's shard {shard} was saved with another config "
                             f"({diff}); restore refused, nothing changed")  # fmt: skip
    return fresh


# how a shard holds its memory, not how it trains: a snapshot may differ from its siblings there
_MEMORY_FIELDS = {"huge_pages", "expected_rows"}


def config_diff(got: TableConfig, want: TableConfig) -> str:
    """The fields that differ, memory settings and the admission sketch's window aside (""
    when none do). The window only ages pending counts, and shards written before 2026-11-29
    hold the table's whole window (or none) where a shard now gets its share."""
    g, w = got.model_dump(exclude=_MEMORY_FIELDS), want.model_dump(exclude=_MEMORY_FIELDS)
    for d in (g, w):
        d["admission"].pop("sketch_decay_every", None)
    return ", ".join(f"{k}: {g[k]!r} here {w[k]!r}" for k in w if g.get(k) != w[k])


def concat_exports(parts: list[TableExport]) -> TableExport:
    if len(parts) == 1:
        return parts[0]
    return TableExport(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("ids", "embeddings", "state", "last_seen", "counts")))  # fmt: skip


def sum_stats(parts: list[TableStats]) -> TableStats:
    if len(parts) == 1:
        return parts[0]
    fields = {k: sum(getattr(p, k) for p in parts) for k in parts[0].as_dict()}
    rows = fields["rows"]
    fields["bytes_per_row_overhead"] = sum(p.bytes_per_row_overhead * p.rows for p in parts) / rows if rows else 0.0
    return TableStats(**fields)
