"""LocalPS: every table as N in-process shards, worked in parallel threads.

Sharding is by a hash of the ID (``shard_of``), independent of the hash each table uses for its
own index. Every call that spans shards or tables fans out to a thread pool; the table kernels
release the GIL, so shards really run in parallel. A push is checked for NaN/Inf across all its
tables before any shard is touched, so a bad gradient changes nothing anywhere.

The snapshot directory holds ``manifest.json`` and one table snapshot per (table, shard); it is
written under a temporary name and swapped in whole. Loading into a different shard count
re-shards the rows (the admission sketches then start empty). The format is ``sharded.py``'s,
shared with :class:`~freshrec.ps.ray_ps.RayPS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from freshrec._io import check_replaceable, replace_dir, temp_dir_beside
from freshrec.ps.base import PSChanges
from freshrec.ps.config import PSConfig
from freshrec.ps.sharded import (
    FORMAT,
    PSState,
    ShardedPS,
    concat_exports,
    load_shard,
    read_snapshot,
    reshard_into,
    shard_layout,
    shard_of,
    sum_stats,
    write_snapshot_manifest,
)
from freshrec.table import EmbeddingTable, TableChanges, TableConfig, TableExport, TableStats
from freshrec.table.table import check_ids

__all__ = ["LocalPS"]

T = TypeVar("T")
# A pull or push of fewer keys than this runs on the caller's thread: a future and the GIL
# hand-offs around it cost tens of microseconds, more than looking up a serving request's
# few hundred keys (a 100-candidate /v1/rank spent ~20% of its time waiting on the pool).
INLINE_KEYS = 4096


class LocalPS(ShardedPS):
    """In-process parameter server: ``tables`` (configs, by name) split into ``num_shards``."""

    def __init__(
        self, tables: Mapping[str, TableConfig] | Iterable[TableConfig], config: PSConfig | None = None
    ) -> None:
        self._setup(tables, config)
        self._shards: dict[str, list[EmbeddingTable]] = {
            name: [EmbeddingTable(cfg) for _ in range(self.num_shards)] for name, cfg in self.shard_configs().items()
        }

    def _setup(self, tables: Mapping[str, TableConfig] | Iterable[TableConfig], config: PSConfig | None) -> None:
        super()._setup(tables, config)
        workers = self.config.worker_threads
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="freshrec-ps") if workers > 1 else None

    def shard_tables(self, table: str) -> list[EmbeddingTable]:
        """The shards of ``table`` (for tools and experiments; not needed for normal use)."""
        return self._shards[self._table(table, "read")]

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

    def pull_many(
        self,
        ids: Mapping[str, Any],
        *,
        train: bool = False,
        now: float | None = None,
        counts: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        prepared, outs = self._prepare_pull(ids, train, now, counts)
        jobs = []
        for table, keys, occ in prepared:
            jobs += self._pull_jobs(table, keys, train, now, outs[table], occ)
        self._run(jobs, sum(o.shape[0] for o in outs.values()))
        return outs

    def push_many(self, grads: Mapping[str, tuple[Any, Any]], *, now: float) -> int:
        prepared = self._prepare_push(grads)
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
        shards[0].check_assign(keys, np.asarray(embeddings), **kwargs)  # all of it, before any shard writes
        for s, k, e, part in self._split_assign(keys, embeddings, kwargs):
            shards[s].assign(k, e, evict=evict, **part)

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
        return concat_exports(parts)

    def drain_changes(self) -> PSChanges:
        parts = self._each_shard("drain changes", lambda t, s, table: table.drain_changes())
        version = self._next_version()
        tables = {
            t: TableChanges(concat_exports([c.upserts for c in p]), np.concatenate([c.removed for c in p]))
            for t, p in parts.items()
        }
        return PSChanges(version, tables)

    def stats(self) -> dict[str, TableStats]:
        parts = self._each_shard("read stats", lambda t, s, table: table.stats())
        return self._with_refused({t: sum_stats(p) for t, p in parts.items()})

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
            layout = shard_layout(self._configs, self.num_shards)
            jobs = [
                lambda t=t, s=s, rel=rel: self._shards[t][s].save(tmp / rel)
                for t, rels in layout.items()
                for s, rel in enumerate(rels)
            ]
            for t in layout:
                (tmp / t).mkdir(parents=True, exist_ok=True)
            self._run(jobs)
            write_snapshot_manifest(tmp, self._configs, self.num_shards)
            replace_dir(tmp, path)
        return path

    @classmethod
    def from_tables(
        cls, configs: Mapping[str, TableConfig], shards: Mapping[str, list[EmbeddingTable]], config: PSConfig
    ) -> LocalPS:
        """A parameter server over tables already built (loaded), ``config.num_shards`` per name."""
        ps = cls.__new__(cls)
        ps._setup(configs, config)
        ps._shards = dict(shards)
        return ps

    @classmethod
    def load(cls, path: str | Path, config: PSConfig | None = None) -> LocalPS:
        """Restore a snapshot; with a different ``num_shards`` the rows are re-sharded."""
        snap = read_snapshot(path)
        config = config or PSConfig(num_shards=snap.num_shards)
        shards = {t: [EmbeddingTable.load(p) for p in paths] for t, paths in snap.layout.items()}
        if config.num_shards == snap.num_shards:  # no empty shards to build (pre-sized, they hold memory)
            return cls.from_tables(snap.tables, shards, config)
        ps = cls(snap.tables, config)
        reshard_into(ps, shards)
        return ps

    def restore_shard(self, shard: int, path: str | Path) -> None:
        """Replace shard ``shard`` of every table with its copy in the snapshot at ``path``
        (a failed PS shard restarting from its last snapshot while the others keep going)."""
        self._check_open("restore a shard")
        for t, table in load_shard(path, shard, self._configs, self.num_shards).items():
            self._shards[t][shard] = table

    def close(self) -> None:
        if self._state is PSState.CLOSED:
            return
        self._state = PSState.CLOSED
        if self._pool is not None:
            self._pool.shutdown(wait=True)
