"""The parameter-server interface: everything the trainer, the sync publisher and serving need.

Arrays in, arrays out: IDs are int64 ``(n,)``, embeddings float32 ``(n, dim)``. Event times are
seconds. Methods taking ``{table: ids}`` mappings do all tables in one call, so an
implementation can work them in parallel (threads here, actors in a cluster).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freshrec.table import TableChanges, TableConfig, TableExport, TableStats

__all__ = ["PSChanges", "ParameterServer"]


@dataclass(frozen=True)
class PSChanges:
    """Rows touched and IDs removed in every table since the previous drain.

    ``version`` is the drain's marker: drains are numbered 1, 2, 3, ..., and the changes of
    version ``v`` are exactly those between marker ``v - 1`` and ``v``; nothing is ever dropped.
    """

    version: int
    tables: dict[str, TableChanges]

    @property
    def empty(self) -> bool:
        return all(len(c.upserts) == 0 and c.removed.size == 0 for c in self.tables.values())

    @property
    def num_rows(self) -> int:
        return sum(len(c.upserts) + int(c.removed.size) for c in self.tables.values())


class ParameterServer(ABC):
    """Collisionless sparse parameters, one named table per feature table."""

    @property
    @abstractmethod
    def tables(self) -> dict[str, TableConfig]:
        """The config of every table, by name."""

    def dim(self, table: str) -> int:
        return self.tables[table].dim

    # ---- training and serving ----------------------------------------------------------------
    @abstractmethod
    def pull(self, table: str, ids: np.ndarray, *, train: bool = False, now: float | None = None) -> np.ndarray:
        """Embeddings ``(n, dim)`` of ``ids``. ``train=True`` admits new IDs through the
        table's filter and refreshes last-seen times (``now`` required); inference never
        inserts. IDs without a row read the table's default vector."""

    @abstractmethod
    def push(self, table: str, ids: np.ndarray, grads: np.ndarray, *, now: float) -> int:
        """One optimizer step on the rows of ``ids`` (duplicates summed); returns rows updated.
        NaN/Inf gradients reject the whole push with NonFiniteError, changing nothing."""

    def pull_many(
        self,
        ids: Mapping[str, np.ndarray],
        *,
        train: bool = False,
        now: float | None = None,
        counts: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Pull several tables at once. ``counts[table][i]`` (training only) says ``ids[table][i]``
        stands for that many occurrences (a deduplicated batch): admission sees them all."""
        return {t: self.pull(t, i, train=train, now=now, counts=(counts or {}).get(t)) for t, i in ids.items()}

    def push_many(self, grads: Mapping[str, tuple[np.ndarray, np.ndarray]], *, now: float) -> int:
        """Push ``{table: (ids, grads)}``. Every table's gradients are checked before any table
        is touched, so a non-finite gradient anywhere changes nothing anywhere."""
        return sum(self.push(t, i, g, now=now) for t, (i, g) in grads.items())

    # ---- maintenance -------------------------------------------------------------------------
    @abstractmethod
    def expire(self, now: float) -> dict[str, np.ndarray]:
        """Remove rows unseen for longer than their table's ttl; the removed IDs per table."""

    @abstractmethod
    def assign(self, table: str, ids: np.ndarray, embeddings: np.ndarray, **kwargs: object) -> None:
        """Write rows verbatim (serving replicas, restore); see EmbeddingTable.assign."""

    @abstractmethod
    def remove(self, table: str, ids: np.ndarray) -> np.ndarray:
        """Delete rows; the IDs that had one."""

    @abstractmethod
    def export(self, table: str, ids: np.ndarray | None = None) -> TableExport:
        """Copy rows out: all, or those of ``ids`` that exist."""

    @abstractmethod
    def drain_changes(self) -> PSChanges:
        """Everything touched or removed since the previous drain (see :class:`PSChanges`)."""

    @abstractmethod
    def stats(self) -> dict[str, TableStats]:
        """Per-table statistics (shards summed)."""

    # ---- persistence and lifecycle -------------------------------------------------------------
    @abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write every table to a snapshot directory, atomically."""

    @abstractmethod
    def close(self) -> None:
        """Release threads and memory; later calls raise StateError."""

    def __enter__(self) -> ParameterServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
