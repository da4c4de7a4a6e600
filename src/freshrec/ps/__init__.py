"""Parameter servers: the one interface through which trainer, sync and serving reach sparse rows.

Owns: the :class:`ParameterServer` interface (``base.py``: pull, push, expire, assign, remove,
change draining for train->serve sync, save/load, stats); what every sharded server shares
(``sharded.py``: shard ownership, input checks, the snapshot format); :class:`LocalPS`
(``local.py``), which keeps each logical table as N shards of
:class:`~freshrec.table.EmbeddingTable` in this process and works shards and tables in parallel
threads (the table kernels release the GIL); and :class:`RayPS` (``ray_ps.py``), the same shards
as Ray actors across a cluster. ``make_ps`` / ``load_ps`` pick one by ``PSConfig.backend``.
Imports ``freshrec.table`` and base modules only (Ray on first use of RayPS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from freshrec.ps.base import ParameterServer, PSChanges
from freshrec.ps.config import PSConfig
from freshrec.ps.local import LocalPS
from freshrec.ps.ray_ps import RayPS
from freshrec.ps.sharded import shard_of
from freshrec.table import TableConfig

__all__ = ["LocalPS", "PSChanges", "PSConfig", "ParameterServer", "RayPS", "load_ps", "make_ps", "shard_of"]


def make_ps(
    tables: Mapping[str, TableConfig] | Iterable[TableConfig], config: PSConfig | None = None
) -> LocalPS | RayPS:
    """A new, empty parameter server of the backend ``config`` names (local by default)."""
    config = config or PSConfig()
    return RayPS(tables, config) if config.backend == "ray" else LocalPS(tables, config)


def load_ps(path: str | Path, config: PSConfig | None = None) -> LocalPS | RayPS:
    """A saved parameter server (either backend's snapshot) into the backend ``config`` names
    (local when unset, with the snapshot's shard count)."""
    if config is not None and config.backend == "ray":
        return RayPS.load(path, config)
    return LocalPS.load(path, config)
