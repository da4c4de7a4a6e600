"""LocalPS: every table as N in-process shards, worked in parallel threads.

Sharding is by a hash of the ID (``shard_of``), independent of the hash each table uses for its
own index. Every call that spans shards or tables fans out to a thread pool; the table kernels
release the GIL, so shards really run in parallel. A push is checked for NaN/Inf across all its
tables before any shard is touched, so a bad gradient changes nothing anywhere.

The snapshot directory holds ``manifest.json`` and one table snapshot per (table, shard); it is
written under a temporary name and swapped in whole. Loading into a different shard count
re-shards the rows (the admission sketches then start empty).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from freshrec._io import (
    check_replaceable,
    malformed_manifest,
    read_manifest,
    recover_dir,
    replace_dir,
    temp_dir_beside,
    write_durable,
)
from freshrec.errors import ConfigError, CorruptionError, InputError, NonFiniteError, StateError
from freshrec.ps import _kernels as K
from freshrec.ps.base import ParameterServer, PSChanges
from freshrec.ps.config import PSConfig
from freshrec.table import EmbeddingTable, TableChanges, TableConfig, TableExport, TableStats
from freshrec.table.table import check_counts, check_ids, gradient_problem, to_ms

__all__ = ["LocalPS", "shard_of"]

T = TypeVar("T")
FORMAT = "freshrec.ps"
FORMAT_VERSION = 1
# A pull or push of fewer keys than this runs on the caller's thread: a future and the GIL
# hand-offs around it cost tens of microseconds, more than looking up a serving request's
# few hundred keys (a 100-candidate /v1/rank spent ~20% of its time waiting on the pool).
INLINE_KEYS = 4096


class PSState(enum.Enum):
    OPEN = "open"  # serving pulls and pushes
    CLOSED = "closed"  # threads stopped; every call raises StateError


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard (0..num_shards-1) that owns each ID."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    out = np.empty(ids.shape[0], np.int64)
    K.shard_ids(ids, num_shards, out)
    return out


def _shard_config(cfg: TableConfig, num_shards: int) -> TableConfig:
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


class LocalPS(ParameterServer):
    """In-process parameter server: ``tables`` (configs, by name) split into ``num_shards``."""

    def __init__(
        self, tables: Mapping[str, TableConfig] | Iterable[TableConfig], config: PSConfig | None = None
    ) -> None:
        self._setup(tables, config)
        n = self.config.num_shards
        self._shards: dict[str, list[EmbeddingTable]] = {
            name: [EmbeddingTable(_shard_config(cfg, n)) for _ in range(n)] for name, cfg in self._configs.items()
        }

    def _setup(self, tables: Mapping[str, TableConfig] | Iterable[TableConfig], config: PSConfig | None) -> None:
        """Everything but the shards (which :meth:`load` brings from a snapshot)."""
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
        workers = self.config.worker_threads
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="freshrec-ps") if workers > 1 else None
        self._state = PSState.OPEN
        self._version = 0
        self._version_lock = threading.Lock()
        self.nonfinite_rejected = 0  # pushes refused for NaN/Inf gradients, before any shard saw them
        self._nonfinite_by_table: dict[str, int] = {}  # the same per table, added to its stats()

    # ---- plumbing ----------------------------------------------------------------------------
    @property
    def tables(self) -> dict[str, TableConfig]:
        return dict(self._configs)

    @property
    def num_shards(self) -> int:
        return self.config.num_shards

    def shard_tables(self, table: str) -> list[EmbeddingTable]:
        """The shards of ``table`` (for tools and experiments; not needed for normal use)."""
        return self._shards[self._table(table, "read")]

    def _check_open(self, what: str) -> None:
        if self._state is not PSState.OPEN:
            raise StateError(f"cannot {what}: the parameter server is {self._state.value}")

    def _table(self, table: str, what: str) -> str:
        self._check_open(what)
        if table not in self._shards:
            raise InputError(f"unknown table {table!r}; the parameter server has {sorted(self._shards)}")
        return table

    def _run(self, jobs: list[Callable[[], T]], n_keys: int | None = None) -> list[T]:
        """Run jobs on the pool, batched into one composite job per worker (a future costs
        ~20 us; a step of 26 tables would otherwise pay it 52 times). Jobs over fewer than
        ``INLINE_KEYS`` keys in all run here."""
        workers = self.config.worker_threads
        if self._pool is None or len(jobs) <= 1 or (n_keys is not None and n_keys < INLINE_KEYS):
            return [job() for job in jobs]
        chunks = [jobs[w::workers] for w in range(min(workers, len(jobs)))]
        futures = [self._pool.submit(lambda c=c: [job() for job in c]) for c in chunks]
        results: list[T] = [None] * len(jobs)  # type: ignore[list-item]
        for w, f in enumerate(futures):
            results[w::workers] = f.result()
        return results

    def _groups(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.empty(ids.shape[0], np.int64)
        starts = np.empty(self.num_shards + 1, np.int64)
        K.group_by_shard(ids, self.num_shards, order, starts)
        return order, starts

    # ---- pull / push -------------------------------------------------------------------------
    def _pull_jobs(self, table: str, ids: np.ndarray, train: bool, now: float | None, out: np.ndarray,
                   counts: np.ndarray | None):  # fmt: skip
        shards = self._shards[table]
        if len(shards) == 1:
            return [lambda: out.__setitem__(slice(None), shards[0].lookup(ids, train=train, now=now, counts=counts))]
        order, starts = self._groups(ids)
        jobs = []
        for s, shard in enumerate(shards):
            pos = order[starts[s] : starts[s + 1]]
            if pos.size:

                def job(shard=shard, pos=pos) -> None:
                    c = None if counts is None else counts[pos]
                    out[pos] = shard.lookup(ids[pos], train=train, now=now, counts=c)

                jobs.append(job)
        return jobs

    def pull(
        self, table: str, ids: Any, *, train: bool = False, now: float | None = None, counts: Any | None = None
    ) -> np.ndarray:
        return self.pull_many({table: ids}, train=train, now=now, counts=None if counts is None else {table: counts})[
            table
        ]

    def pull_many(
        self,
        ids: Mapping[str, Any],
        *,
        train: bool = False,
        now: float | None = None,
        counts: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if train:
            if now is None:
                raise InputError("a training pull needs the event time: pull(..., train=True, now=t)")
            to_ms(now)  # refused here, before any shard of any table admits a row
        elif counts is not None:
            raise InputError("counts go with a training pull: pull(..., train=True, now=t, counts=c)")
        outs: dict[str, np.ndarray] = {}
        prepared = []
        for table, raw in ids.items():  # every table's input checked before any is touched
            keys = check_ids(raw, scalar=False)
            outs[table] = np.empty((keys.shape[0], self._configs[self._table(table, "pull")].dim), np.float32)
            occ = None
            if counts is not None and counts.get(table) is not None:
                try:
                    occ = check_counts(counts[table], keys)
                except InputError as exc:
                    raise InputError(f"table {table!r}: {exc}; nothing was pulled") from None
            prepared.append((table, keys, occ))
        jobs = []
        for table, keys, occ in prepared:
            jobs += self._pull_jobs(table, keys, train, now, outs[table], occ)
        self._run(jobs, sum(o.shape[0] for o in outs.values()))
        return outs

    def push(self, table: str, ids: Any, grads: Any, *, now: float) -> int:
        return self.push_many({table: (ids, grads)}, now=now)

    def push_many(self, grads: Mapping[str, tuple[Any, Any]], *, now: float) -> int:
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
        jobs = []
        for table, keys, g in prepared:
            shards = self._shards[table]
            if len(shards) == 1:
                jobs.append(lambda s=shards[0], k=keys, g=g: s.apply_gradients(k, g, now=now))
                continue
            order, starts = self._groups(keys)
            for s, shard in enumerate(shards):
                pos = order[starts[s] : starts[s + 1]]
                if pos.size:
                    jobs.append(lambda sh=shard, k=keys[pos], gg=g[pos]: sh.apply_gradients(k, gg, now=now))
        return int(sum(self._run(jobs, sum(k.shape[0] for _, k, _ in prepared))))

    # ---- maintenance -------------------------------------------------------------------------
    def _each_shard(self, what: str, fn: Callable[[str, int, EmbeddingTable], T]) -> dict[str, list[T]]:
        self._check_open(what)
        keys = [(t, s) for t, shards in self._shards.items() for s in range(len(shards))]
        results = self._run([lambda t=t, s=s: fn(t, s, self._shards[t][s]) for t, s in keys])
        out: dict[str, list[T]] = {t: [] for t in self._shards}
        for (t, _), r in zip(keys, results, strict=True):
            out[t].append(r)
        return out

    def expire(self, now: float) -> dict[str, np.ndarray]:
        parts = self._each_shard("expire", lambda t, s, table: table.expire(now))
        return {t: np.concatenate(p) if p else np.zeros(0, np.int64) for t, p in parts.items()}

    def assign(self, table: str, ids: Any, embeddings: Any, *, evict: bool = True, **kwargs: Any) -> None:
        keys = check_ids(ids, scalar=False)
        shards = self._shards[self._table(table, "assign")]
        if len(shards) == 1:
            shards[0].assign(keys, embeddings, evict=evict, **kwargs)
            return
        emb = np.asarray(embeddings)
        shards[0].check_assign(keys, emb, **kwargs)  # all of it, before any shard writes its part
        order, starts = self._groups(keys)
        for s, shard in enumerate(shards):
            pos = order[starts[s] : starts[s + 1]]
            if pos.size:
                part = {k: (np.asarray(v)[pos] if v is not None and np.ndim(v) > 0 else v)
                        for k, v in kwargs.items()}  # fmt: skip
                shard.assign(keys[pos], emb[pos], evict=evict, **part)

    def remove(self, table: str, ids: Any) -> np.ndarray:
        keys = check_ids(ids, scalar=False)
        shards = self._shards[self._table(table, "remove")]
        return np.concatenate([shard.remove(keys) for shard in shards]) if keys.size else keys

    def export(self, table: str, ids: Any | None = None) -> TableExport:
        shards = self._shards[self._table(table, "export")]
        if ids is not None and len(shards) > 1:
            keys = check_ids(ids, scalar=False)
            owner = shard_of(keys, len(shards))
            parts = [shards[s].export(keys[owner == s]) for s in range(len(shards))]
        else:
            parts = [shard.export(ids) for shard in shards]
        return _concat_exports(parts)

    def drain_changes(self) -> PSChanges:
        parts = self._each_shard("drain changes", lambda t, s, table: table.drain_changes())
        with self._version_lock:
            self._version += 1
            version = self._version
        tables = {
            t: TableChanges(_concat_exports([c.upserts for c in p]), np.concatenate([c.removed for c in p]))
            for t, p in parts.items()
        }
        return PSChanges(version, tables)

    def stats(self) -> dict[str, TableStats]:
        parts = self._each_shard("read stats", lambda t, s, table: table.stats())
        out = {t: _sum_stats(p) for t, p in parts.items()}
        # refused here, so no shard counted them (a copy: a concurrent push may add a table)
        for t, n in list(self._nonfinite_by_table.items()):
            out[t] = dataclasses.replace(out[t], nonfinite_rejected=out[t].nonfinite_rejected + n)
        return out

    def warmup(self) -> None:
        """Compile every kernel now, so the first request or step does not."""
        EmbeddingTable.warmup()
        self._groups(np.arange(8, dtype=np.int64))

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        self._check_open("save")
        path = Path(path)
        check_replaceable(path, FORMAT, "parameter-server snapshot")
        with temp_dir_beside(path) as tmp:
            layout = {t: [f"{t}/shard-{s:04d}" for s in range(len(sh))] for t, sh in self._shards.items()}
            jobs = [
                lambda t=t, s=s, rel=rel: self._shards[t][s].save(tmp / rel)
                for t, rels in layout.items()
                for s, rel in enumerate(rels)
            ]
            for t in layout:
                (tmp / t).mkdir(parents=True, exist_ok=True)
            self._run(jobs)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "num_shards": self.num_shards,
                "tables": {
                    t: {"config": self._configs[t].model_dump(mode="json"), "shards": rels}
                    for t, rels in layout.items()
                },
            }
            write_durable(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
            replace_dir(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, config: PSConfig | None = None) -> LocalPS:
        """Restore a snapshot; with a different ``num_shards`` the rows are re-sharded."""
        folder = recover_dir(Path(path))
        manifest = _read_manifest(folder)
        with malformed_manifest(folder):
            try:  # a config the code refuses is as corrupt as a torn file (the table's load says so too)
                saved = manifest["tables"].items()
                tables = {t: TableConfig.from_dict(v["config"], source=str(folder)) for t, v in saved}
            except ConfigError as exc:
                raise CorruptionError(str(exc)) from exc
            config = config or PSConfig(num_shards=manifest["num_shards"])
            layout = {t: [folder / rel for rel in v["shards"]] for t, v in manifest["tables"].items()}
        shards = {t: [EmbeddingTable.load(p) for p in paths] for t, paths in layout.items()}
        if config.num_shards == manifest["num_shards"]:  # no empty shards to build (pre-sized, they hold memory)
            ps = cls.__new__(cls)
            ps._setup(tables, config)
            ps._shards = shards
            return ps
        ps = cls(tables, config)
        for t, parts in shards.items():  # re-shard: every row to its new owner
            for old in parts:
                exp = old.export()
                ps.assign(
                    t, exp.ids, exp.embeddings, state=exp.state, last_seen=exp.last_seen, counts=exp.counts, evict=False
                )  # a re-shard restores what was saved; admissions evict later
        ps.drain_changes()
        return ps

    def restore_shard(self, shard: int, path: str | Path) -> None:
        """Replace shard ``shard`` of every table with its copy in the snapshot at ``path``
        (a failed PS shard restarting from its last snapshot while the others keep going)."""
        self._check_open("restore a shard")
        if isinstance(shard, bool) or not isinstance(shard, int | np.integer):
            raise InputError(f"shard must be an int, got {type(shard).__name__}")
        folder = recover_dir(Path(path))
        manifest = _read_manifest(folder)
        with malformed_manifest(folder):
            n_saved, saved_tables = int(manifest["num_shards"]), manifest["tables"]
            if n_saved != self.num_shards or not 0 <= shard < self.num_shards:
                raise InputError(f"snapshot has {n_saved} shards; cannot restore shard {shard} "
                                 f"of a {self.num_shards}-shard PS")  # fmt: skip
            if set(saved_tables) != set(self._configs):
                raise InputError(f"snapshot holds tables {sorted(saved_tables)}; this PS serves "
                                 f"{sorted(self._configs)}")  # fmt: skip
            paths = {t: folder / v["shards"][shard] for t, v in saved_tables.items()}
        fresh = {t: EmbeddingTable.load(p) for t, p in paths.items()}
        for t, table in fresh.items():  # a shard must run as its siblings do: same rows, same optimizer
            diff = _config_diff(table.config, _shard_config(self._configs[t], self.num_shards))
            if diff:
                raise InputError(f"table {t!r}: the snapshot's shard {shard} was saved with another config "
                                 f"({diff}); restore refused, nothing changed")  # fmt: skip
        for t, table in fresh.items():
            self._shards[t][shard] = table

    def close(self) -> None:
        if self._state is PSState.CLOSED:
            return
        self._state = PSState.CLOSED
        if self._pool is not None:
            self._pool.shutdown(wait=True)


# how a shard holds its memory, not how it trains: a snapshot may differ from its siblings there
_MEMORY_FIELDS = {"huge_pages", "expected_rows"}


def _config_diff(got: TableConfig, want: TableConfig) -> str:
    """The fields that differ, memory settings and the admission sketch's window aside (""
    when none do). The window only ages pending counts, and shards written before 2026-11-29
    hold the table's whole window (or none) where a shard now gets its share."""
    g, w = got.model_dump(exclude=_MEMORY_FIELDS), want.model_dump(exclude=_MEMORY_FIELDS)
    for d in (g, w):
        d["admission"].pop("sketch_decay_every", None)
    return ", ".join(f"{k}: {g[k]!r} here {w[k]!r}" for k in w if g.get(k) != w[k])


def _read_manifest(folder: Path) -> dict[str, Any]:
    return read_manifest(folder, FORMAT, FORMAT_VERSION, "parameter-server snapshot")


def _concat_exports(parts: list[TableExport]) -> TableExport:
    if len(parts) == 1:
        return parts[0]
    return TableExport(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("ids", "embeddings", "state", "last_seen", "counts")))  # fmt: skip


def _sum_stats(parts: list[TableStats]) -> TableStats:
    if len(parts) == 1:
        return parts[0]
    fields = {k: sum(getattr(p, k) for p in parts) for k in parts[0].as_dict()}
    rows = fields["rows"]
    fields["bytes_per_row_overhead"] = sum(p.bytes_per_row_overhead * p.rows for p in parts) / rows if rows else 0.0
    return TableStats(**fields)
