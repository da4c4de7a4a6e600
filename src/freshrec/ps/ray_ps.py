"""RayPS: each shard of the parameter server a Ray actor, holding that shard of every table.

For a trainer whose tables outgrow one machine's memory, or whose pulls and pushes should run on
other machines' cores. The caller's side (:class:`RayPS`) checks every input exactly as
:class:`~freshrec.ps.local.LocalPS` does, before any actor sees it, splits each batch by owning
shard (the same ``shard_of``, the same per-shard configs), and sends each actor one call per
pull or push covering all tables. Inside an actor the shard is a one-shard LocalPS, so the
tables' kernels, admission, expiry, optimizers and change tracking are the ones that run locally.

* **Same results as LocalPS.** With the same tables and shard count, every pull, push, expiry,
  drain and export gives what LocalPS gives (tested operation by operation).
* **Same snapshots.** ``save`` has each actor write its shards into the snapshot folder (which
  must be on storage every actor's machine reaches), then writes the manifest and swaps the
  folder in; LocalPS loads it and vice versa, so a model trained on Ray is served locally.
* **Failures are errors, not silent loss.** An actor that dies (its machine lost, killed) makes
  the next call raise :class:`~freshrec.errors.BackendError` naming the shard; its rows exist only
  in snapshots, so ``restore_shard`` brings it back from one (or the trainer restarts from its
  checkpoint, as after any crash). A push or expiry that fails on one shard may have been applied
  on the others: the caller treats it as a crash.
* **Ray's own transport.** Arguments and results travel as Ray objects (numpy arrays out of band);
  freshrec adds no protocol of its own.

Ray is optional (``pip install 'freshrec[ray]'``); this module imports it on first use.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from freshrec._io import check_replaceable, replace_dir, temp_dir_beside
from freshrec.errors import BackendError, ConfigError, FreshrecError, InputError
from freshrec.ps.base import PSChanges
from freshrec.ps.config import PSConfig
from freshrec.ps.local import LocalPS
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
from freshrec.table.table import check_assign, check_ids

__all__ = ["RayPS"]

_lock = threading.Lock()
_users = 0  # open RayPS instances in this process
_started_here = False  # Ray was started (not joined) by the first of them: the last one stops it
_actor_class: Any = None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        if exc.name == "ray":  # not installed
            raise ConfigError("ps.backend = 'ray' needs Ray: pip install 'freshrec[ray]'") from None
        # installed, but it does not import (a missing dependency, a build for another Python)
        raise ConfigError(f"ps.backend = 'ray': Ray is installed but does not import: {exc}") from exc
    return ray


def _connect(config: PSConfig) -> Any:
    """Ray, joined or started for one more RayPS of this process."""
    global _users, _started_here, _actor_class
    ray = _import_ray()
    with _lock:
        if _users == 0:  # whatever Ray runs now, no RayPS of ours started it (the last would have stopped it)
            _started_here = False
        if not ray.is_initialized():
            try:
                ray.init(address=config.ray_address, include_dashboard=False, logging_level="warning")
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError: Ray's own choice
                where = config.ray_address or "a local instance"
                raise BackendError(f"cannot start or join Ray ({where}): {exc}") from exc
            _started_here = True
        if _actor_class is None:
            _actor_class = ray.remote(_ShardServer)
        _users += 1
    return ray


def _disconnect(ray: Any) -> None:
    global _users, _started_here
    with _lock:
        _users -= 1
        if _users == 0 and _started_here and ray.is_initialized():
            ray.shutdown()
            _started_here = False


class _ShardServer:
    """Shard ``s`` of every table, in a Ray actor's process: a one-shard LocalPS over the shard
    configs. Built by ``create`` or ``load`` after the actor starts, so that their errors reach
    the caller as themselves (an error in an actor's constructor only kills it)."""

    def __init__(self, threads: int) -> None:
        self.config = PSConfig(num_shards=1, threads=threads)
        self.ps: LocalPS | None = None

    def ready(self) -> int:
        return os.getpid()

    def _swap(self, ps: LocalPS) -> None:
        old, self.ps = self.ps, ps
        if old is not None:
            old.close()

    def create(self, configs: dict[str, TableConfig]) -> None:
        self._swap(LocalPS(configs, self.config))

    def load(self, folders: dict[str, str]) -> None:
        tables = {t: [EmbeddingTable.load(Path(f))] for t, f in folders.items()}
        self._swap(LocalPS.from_tables({t: s[0].config for t, s in tables.items()}, tables, self.config))

    def restore(self, path: str, shard: int, configs: dict[str, TableConfig], num_shards: int) -> None:
        fresh = load_shard(Path(path), shard, configs, num_shards)
        self._swap(LocalPS.from_tables({t: tb.config for t, tb in fresh.items()}, {t: [tb] for t, tb in fresh.items()},
                                       self.config))  # fmt: skip

    def pull(self, ids: dict, train: bool, now: float | None, counts: dict | None) -> dict[str, np.ndarray]:
        return self.ps.pull_many(ids, train=train, now=now, counts=counts)

    def push(self, grads: dict, now: float) -> int:
        return self.ps.push_many(grads, now=now)

    def expire(self, now: float) -> dict[str, np.ndarray]:
        return self.ps.expire(now)

    def assign(self, table: str, ids: np.ndarray, embeddings: np.ndarray, evict: bool, kwargs: dict) -> None:
        self.ps.assign(table, ids, embeddings, evict=evict, **kwargs)

    def remove(self, table: str, ids: np.ndarray) -> np.ndarray:
        return self.ps.remove(table, ids)

    def export(self, table: str, ids: np.ndarray | None) -> TableExport:
        return self.ps.export(table, ids)

    def drain(self) -> dict[str, TableChanges]:
        return self.ps.drain_changes().tables

    def stats(self) -> dict[str, TableStats]:
        return self.ps.stats()

    def save(self, folders: dict[str, str]) -> None:
        for t, folder in folders.items():
            self.ps.shard_tables(t)[0].save(Path(folder))

    def warmup(self) -> None:
        self.ps.warmup()

    def close(self) -> None:
        if self.ps is not None:
            self.ps.close()


def _own(x: Any) -> Any:
    """Arrays that Ray handed over read-only, in the shared object store, as ordinary copies."""
    if isinstance(x, np.ndarray):
        return np.array(x)
    if isinstance(x, TableExport | TableChanges):
        return type(x)(*(_own(getattr(x, f)) for f in x.__dataclass_fields__))
    return x


def _merge_changes(old: TableChanges, new: TableChanges) -> TableChanges:
    """One shard's changes of two drains as one: the later wins for an ID in both."""
    newer = np.concatenate([new.upserts.ids, new.removed])
    keep = ~np.isin(old.upserts.ids, newer)
    upserts = concat_exports([TableExport(*(getattr(old.upserts, f)[keep] for f in old.upserts.__dataclass_fields__)),
                              new.upserts])  # fmt: skip
    removed = old.removed[~np.isin(old.removed, newer)]
    return TableChanges(upserts, np.concatenate([removed, new.removed]))


class RayPS(ShardedPS):
    """A parameter server whose ``num_shards`` shards are Ray actors (``config.backend = "ray"``)."""

    def __init__(
        self, tables: Mapping[str, TableConfig] | Iterable[TableConfig], config: PSConfig | None = None
    ) -> None:
        self._start(tables, config or PSConfig(backend="ray"))
        try:
            configs = self.shard_configs()
            self._call("create tables", [a.create.remote(configs) for a in self._actors])
        except BaseException:
            self.close()
            raise

    def _start(self, tables: Mapping[str, TableConfig] | Iterable[TableConfig], config: PSConfig) -> None:
        """Join Ray and start one empty actor per shard."""
        self._setup(tables, config)
        self._actors: list[Any] = []
        self._undelivered: dict[int, dict[str, TableChanges]] = {}  # drained from a shard, not yet returned
        self._ray = _connect(self.config)
        try:
            self._actors = [self._new_actor() for _ in range(self.num_shards)]
            refs = [a.ready.remote() for a in self._actors]
            _, pending = self._ray.wait(refs, num_returns=len(refs), timeout=self.config.ray_start_timeout_s)
            if pending:  # Ray keeps an actor it cannot place pending for ever
                raise BackendError(self._unplaced(len(pending)))
            self._call("start the shard actors", refs)
        except BaseException:
            self.close()
            raise

    def _new_actor(self) -> Any:
        # SPREAD: shards go to different machines where the cluster has them (their memory adds up)
        return _actor_class.options(num_cpus=self.config.ray_actor_cpus, scheduling_strategy="SPREAD").remote(
            self.config.threads
        )

    def _unplaced(self, pending: int) -> str:
        c = self.config
        try:  # the cluster's view, if it answers: the timeout is the message either way
            total = self._ray.cluster_resources().get("CPU", 0.0)
            free = self._ray.available_resources().get("CPU", 0.0)
            cpus = f"the cluster has {free:g} of {total:g} CPUs free"
        except Exception as exc:  # Ray's own errors, whatever their type
            cpus = f"the cluster's free CPUs are unknown ({type(exc).__name__})"
        return (
            f"{pending} of {self.num_shards} PS shard actors did not start within {c.ray_start_timeout_s:g} s "
            f"(ps.ray_start_timeout_s); each reserves ps.ray_actor_cpus = {c.ray_actor_cpus:g} CPU and {cpus}: "
            "lower ray_actor_cpus or num_shards, add machines, or raise ray_start_timeout_s for a cluster still "
            "adding them (or a machine is unreachable)"
        )

    @property
    def shard_actors(self) -> list[Any]:
        """The actor of each shard (for tools and tests; not needed for normal use)."""
        return list(self._actors)

    def _call(self, what: str, refs: list[Any]) -> list[Any]:
        """Results of one call per shard (``refs[s]`` from shard ``s``'s actor), in shard order.
        freshrec's own errors raised in an actor are raised here as themselves."""
        return list(self._call_shards(what, dict(enumerate(refs))).values())

    def _call_shards(self, what: str, calls: dict[int, Any]) -> dict[int, Any]:
        """Like ``_call`` for calls to some shards: ``{shard: ref}`` -> ``{shard: result}``."""
        results, error = self._gather(what, calls)
        if error is not None:
            raise error
        return results

    def _gather(self, what: str, calls: dict[int, Any]) -> tuple[dict[int, Any], FreshrecError | None]:
        """The results of the calls that succeeded and the error of the first that failed (by
        shard), once every call has ended: nothing the caller does next (remove a folder, retry,
        restore) races a shard still working on this one."""
        ray = self._ray
        results: dict[int, Any] = {}
        error: FreshrecError | None = None
        for s, ref in calls.items():
            try:
                results[s] = ray.get(ref)
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, FreshrecError):
                    failure = cause.with_traceback(None)
                else:
                    failure = BackendError(f"cannot {what}: shard {s}'s actor failed: {exc}")
                    failure.__cause__ = exc
            except ray.exceptions.RayError as exc:  # the actor died or cannot be reached
                failure = BackendError(
                    f"cannot {what}: shard {s}'s actor is gone ({type(exc).__name__}); its rows live on only in "
                    "snapshots: restore_shard(shard, snapshot) or restart from the last checkpoint"
                )
                failure.__cause__ = exc
            error = error or failure
        return results, error

    # ---- pull / push -------------------------------------------------------------------------
    def _split(self, keys: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
        """``(shard, positions)`` of the shards ``keys`` touch (positions None: all of them)."""
        if self.num_shards == 1:
            return [(0, None)]
        order, starts = self._groups(keys)
        return [(s, order[starts[s] : starts[s + 1]]) for s in range(self.num_shards) if starts[s + 1] > starts[s]]

    def pull_many(
        self,
        ids: Mapping[str, Any],
        *,
        train: bool = False,
        now: float | None = None,
        counts: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        prepared, outs = self._prepare_pull(ids, train, now, counts)
        requests: dict[int, tuple[dict, dict]] = {}
        where: dict[int, dict[str, np.ndarray | None]] = {}
        for table, keys, occ in prepared:
            for s, pos in self._split(keys):
                req_ids, req_counts = requests.setdefault(s, ({}, {}))
                req_ids[table] = keys if pos is None else keys[pos]
                if occ is not None:
                    req_counts[table] = occ if pos is None else occ[pos]
                where.setdefault(s, {})[table] = pos
        calls = {
            s: self._actors[s].pull.remote(i, train, now, c if counts is not None else None)
            for s, (i, c) in requests.items()
        }
        for s, result in self._call_shards("pull", calls).items():
            for table, emb in result.items():
                pos = where[s][table]
                if pos is None:
                    outs[table][:] = emb
                else:
                    outs[table][pos] = emb
        return outs

    def push_many(self, grads: Mapping[str, tuple[Any, Any]], *, now: float) -> int:
        prepared = self._prepare_push(grads)
        requests: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for table, keys, g in prepared:
            for s, pos in self._split(keys):
                requests.setdefault(s, {})[table] = (keys, g) if pos is None else (keys[pos], g[pos])
        calls = {s: self._actors[s].push.remote(req, now) for s, req in requests.items()}
        return int(sum(self._call_shards("push", calls).values()))

    # ---- maintenance -------------------------------------------------------------------------
    def _each(self, what: str, method: str, *args: Any) -> list[Any]:
        self._check_open(what)
        return self._call(what, [getattr(a, method).remote(*args) for a in self._actors])

    def expire(self, now: float) -> dict[str, np.ndarray]:
        parts = [_own(p) for p in self._each("expire", "expire", now)]
        return {t: np.concatenate([p[t] for p in parts]) for t in self._configs}

    def assign(self, table: str, ids: Any, embeddings: Any, *, evict: bool = True, **kwargs: Any) -> None:
        keys = check_ids(ids, scalar=False)
        cfg = self.shard_configs()[self._table(table, "assign")]
        check_assign(cfg, keys, np.asarray(embeddings), **kwargs)  # all of it, before any shard writes
        if self.num_shards == 1:
            parts = [(0, keys, np.asarray(embeddings), kwargs)]
        else:
            parts = self._split_assign(keys, embeddings, kwargs)
        calls = {s: self._actors[s].assign.remote(table, k, e, evict, dict(kw)) for s, k, e, kw in parts}
        self._call_shards("assign", calls)

    def remove(self, table: str, ids: Any) -> np.ndarray:
        keys = check_ids(ids, scalar=False)
        self._table(table, "remove")
        if not keys.size:
            return keys
        return np.concatenate(self._call("remove", [a.remove.remote(table, keys) for a in self._actors]))

    def export(self, table: str, ids: Any | None = None) -> TableExport:
        self._table(table, "export")
        if ids is None:
            parts = self._call("export", [a.export.remote(table, None) for a in self._actors])
        else:
            keys = check_ids(ids, scalar=False)
            owner = shard_of(keys, self.num_shards)
            parts = self._call("export", [a.export.remote(table, keys[owner == s]) for s, a in enumerate(self._actors)])
        return _own(concat_exports(parts))

    def drain_changes(self) -> PSChanges:
        """As LocalPS's; a drain that fails on a shard (its actor gone) keeps what the other
        shards handed over, and the next drain that succeeds sends it, merged with what changed
        since: a drained shard's changes exist nowhere else."""
        self._check_open("drain changes")
        got, error = self._gather("drain changes", {s: a.drain.remote() for s, a in enumerate(self._actors)})
        for s, part in got.items():
            held = self._undelivered.get(s)
            self._undelivered[s] = part if held is None else {t: _merge_changes(held[t], part[t]) for t in part}
        if error is not None:
            raise error
        parts = [self._undelivered.pop(s) for s in range(self.num_shards)]
        version = self._next_version()
        tables = {
            t: _own(TableChanges(concat_exports([p[t].upserts for p in parts]),
                                 np.concatenate([p[t].removed for p in parts])))
            for t in self._configs
        }  # fmt: skip
        return PSChanges(version, tables)

    def stats(self) -> dict[str, TableStats]:
        parts = self._each("read stats", "stats")
        return self._with_refused({t: sum_stats([p[t] for p in parts]) for t in self._configs})

    def warmup(self) -> None:
        """Compile every kernel in every actor now, so the first step does not."""
        self._each("warm up", "warmup")

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Each actor writes its shards into the new snapshot, then the manifest is written and
        the folder swapped in whole. ``path`` must be reachable by every actor's machine."""
        self._check_open("save")
        path = Path(path).absolute()  # actors do not share this process's working directory
        check_replaceable(path, FORMAT, "parameter-server snapshot")
        with temp_dir_beside(path) as tmp:
            layout = shard_layout(self._configs, self.num_shards)
            for t in layout:
                (tmp / t).mkdir(parents=True, exist_ok=True)
            folders = [{t: str(tmp / rels[s]) for t, rels in layout.items()} for s in range(self.num_shards)]
            self._call("save", [a.save.remote(f) for a, f in zip(self._actors, folders, strict=True)])
            write_snapshot_manifest(tmp, self._configs, self.num_shards)
            replace_dir(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, config: PSConfig | None = None) -> RayPS:
        """Restore a snapshot (LocalPS's or RayPS's); with a different ``num_shards`` the rows
        are re-sharded (through this process) and the admission sketches start empty."""
        snap = read_snapshot(Path(path).absolute())
        config = config or PSConfig(backend="ray", num_shards=snap.num_shards)
        if config.num_shards != snap.num_shards:
            ps = cls(snap.tables, config)
            try:
                reshard_into(ps, {t: [EmbeddingTable.load(p) for p in paths] for t, paths in snap.layout.items()})
            except BaseException:
                ps.close()
                raise
            return ps
        ps = cls.__new__(cls)
        ps._start(snap.tables, config)
        try:
            folders = [{t: str(paths[s]) for t, paths in snap.layout.items()} for s in range(snap.num_shards)]
            ps._call("load the snapshot", [a.load.remote(f) for a, f in zip(ps._actors, folders, strict=True)])
        except BaseException:
            ps.close()
            raise
        return ps

    def restore_shard(self, shard: int, path: str | Path) -> None:
        """Replace shard ``shard`` of every table with its copy in the snapshot at ``path``; an
        actor that died is replaced by a new one first. On failure the shard is as it was."""
        self._check_open("restore a shard")
        if isinstance(shard, bool) or not isinstance(shard, int | np.integer) or not 0 <= shard < self.num_shards:
            raise InputError(f"shard must be an int in 0..{self.num_shards - 1}, got {shard!r}")
        actor, fresh = self._actors[shard], None
        try:
            self._ray.get(actor.ready.remote(), timeout=30)
        except Exception:  # gone or unreachable: a new actor takes its place once it has the rows
            fresh = actor = self._new_actor()
        args = (str(Path(path).absolute()), int(shard), self._configs, self.num_shards)
        try:
            self._call_shards("restore a shard", {shard: actor.restore.remote(*args)})
        except BaseException:
            if fresh is not None:
                self._ray.kill(fresh, no_restart=True)
            raise
        if fresh is not None:  # the old actor, if it is alive at all (busy, unreachable), holds rows for nothing
            with contextlib.suppress(Exception):
                self._ray.kill(self._actors[shard], no_restart=True)
        self._actors[shard] = actor

    def close(self) -> None:
        if getattr(self, "_state", None) is PSState.CLOSED or not hasattr(self, "_ray"):
            return
        self._state = PSState.CLOSED
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone
                self._ray.kill(actor, no_restart=True)
        self._actors = []
        _disconnect(self._ray)
