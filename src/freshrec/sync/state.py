"""What a serving replica holds, and how it reads a model directory.

A :class:`ServedModel` is one model as serving sees it: the dense torch module (eval mode), a
serving parameter server whose tables hold embeddings only (no optimizer state, no admission,
no expiry of their own: removals arrive as tombstones), the feature spec, the log-odds offset,
and the sparse/dense versions it reflects. Sync writes into it (:meth:`apply_sparse`,
:meth:`swap_dense`, :meth:`swap_ps`); serving reads from it (:meth:`predict`, :meth:`pull`) from
many threads.

Thread safety: sparse writes go through the tables' own readers-writer locks (a reader sees each
row before or after an update, never torn). A dense update builds a new module and swaps the
reference in one assignment, so a request runs entirely on the old weights or the new ones; a
whole serving PS (a sync bootstrap, a full delta) is swapped the same way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import TypeAdapter

from freshrec.errors import StateError
from freshrec.features import Batch, FeatureSpec
from freshrec.models import ModelConfig, RecModel, build_model
from freshrec.ps import LocalPS, ParameterServer, PSConfig
from freshrec.table import SGD, TableConfig
from freshrec.train.sparse import SparseBridge

__all__ = ["ServedModel", "ServingState", "serving_table_config"]

_MODEL_CONFIG = TypeAdapter(ModelConfig)


def serving_table_config(cfg: TableConfig) -> TableConfig:
    """The serving twin of a training table: same name, width, default vector and seed; no
    optimizer state, no admission filter, no ttl or cap (training decides what exists and sends
    tombstones), no change tracking."""
    data = cfg.model_dump()
    data.update(optimizer=SGD().model_dump(), ttl=None, max_rows=None, track_changes=False)
    data["admission"] = {"min_count": 1}
    return TableConfig.from_dict(data, source=f"serving config of table {cfg.name!r}")


class ServedModel:
    """One model on the serving side: dense module + serving PS + versions."""

    def __init__(
        self,
        name: str,
        spec: FeatureSpec,
        model_config: ModelConfig,
        module: RecModel,
        ps: ParameterServer,
        logit_offset: float = 0.0,
    ) -> None:
        self.name = name
        self.spec = spec
        self.model_config = model_config
        self.module = module.eval()
        self.ps = ps
        self.logit_offset = logit_offset
        self.tasks = list(spec.labels)
        self._bridge = SparseBridge(spec, ps)
        self._lock = threading.Lock()  # serialises writers (sync); readers need no lock
        self.sparse_version = 0
        self.dense_version = 0
        self.event_time = float("-inf")  # newest event time the parameters reflect
        self.applied_wall = time.time()  # wall clock of the last applied update

    @classmethod
    def from_model_dir(cls, path: str | Path, *, name: str = "rank", ps_config: PSConfig | None = None) -> ServedModel:
        """Load a model directory (``Trainer.save``) for serving: embeddings only."""
        from freshrec.train.model_dir import load_model_dir

        trainer = load_model_dir(path)
        try:
            tables = {t: serving_table_config(cfg) for t, cfg in trainer.ps.tables.items()}
            ps = LocalPS(tables, ps_config or PSConfig(num_shards=1))
            for t in tables:
                exp = trainer.ps.export(t)
                ps.assign(t, exp.ids, exp.embeddings, last_seen=exp.last_seen, counts=exp.counts)
            served = cls(name, trainer.spec, trainer.model_config, trainer.model, ps, trainer.logit_offset)
            if trainer.counters.last_event_time > float("-inf"):
                served.event_time = trainer.counters.last_event_time
            return served
        finally:
            trainer.close()

    @classmethod
    def from_snapshot(
        cls,
        path: str | Path,
        *,
        name: str | None = None,
        fp16: bool = False,
        ps_config: PSConfig | None = None,
    ) -> ServedModel:
        """Load a serving snapshot (``sync.snapshot``: a snapshot folder, or a model's snapshot
        directory for its newest good one) written by a publisher that knew the spec and model
        config. The versions are the snapshot's."""
        from freshrec.sync.snapshot import served_model_from_snapshot

        return served_model_from_snapshot(path, name=name, fp16=fp16, ps_config=ps_config)

    # ---- reads (any thread) ------------------------------------------------------------------
    def _pull(self, batch: Batch):
        """Pooled embeddings from the current serving PS. A full delta or a bootstrap may swap the
        PS and close the old one while this request reads it: then read again from the new one."""
        bridge = self._bridge  # one read of the bridge, hence of the PS
        try:
            return bridge.pull(batch, train=False)
        except StateError:
            if bridge is self._bridge:
                raise  # closed, and not because it was replaced
            return self._bridge.pull(batch, train=False)

    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        """Raw logits ``(B, T)`` (no log-odds correction); never changes the PS."""
        module = self.module  # one read: a concurrent swap cannot mix old and new weights
        pulled = self._pull(batch)
        return module(pulled.pooled, torch.from_numpy(batch.dense))

    def predict(self, batch: Batch) -> np.ndarray:
        """Probabilities ``(B, T)``, corrected for negative sampling (logit + log r)."""
        return torch.sigmoid(self.logits(batch) + self.logit_offset).numpy()

    @torch.no_grad()
    def pooled(self, batch: Batch) -> tuple[RecModel, dict[str, torch.Tensor]]:
        """The current module and the batch's pooled embeddings (for retrieval towers)."""
        module = self.module
        return module, self._pull(batch).pooled

    # ---- writes (the sync subscriber) ----------------------------------------------------------
    def apply_sparse(
        self,
        table: str,
        ids: np.ndarray,
        embeddings: np.ndarray,
        removed: np.ndarray | None = None,
    ) -> None:
        """Upsert rows and drop tombstoned IDs of one table (a delta's share for that table)."""
        with self._lock:
            if ids.size:
                self.ps.assign(table, ids, np.asarray(embeddings, dtype=np.float32))
            if removed is not None and removed.size:
                self.ps.remove(table, removed)

    def swap_ps(self, ps: ParameterServer) -> ParameterServer:
        """Serve from ``ps`` from now on (a bootstrap or a full delta built it aside); returns the
        old PS, which requests already running may still read: close it a little later."""
        bridge = SparseBridge(self.spec, ps)
        with self._lock:
            old, self.ps, self._bridge = self.ps, ps, bridge
        return old

    def swap_dense(self, state_dict: dict[str, torch.Tensor], *, logit_offset: float | None = None) -> None:
        """Replace the dense weights atomically (a new module, then one reference swap)."""
        fresh = build_model(self.model_config, self.spec)
        fresh.load_state_dict(state_dict)
        fresh.eval()
        with self._lock:
            self.module = fresh
            if logit_offset is not None:
                self.logit_offset = logit_offset

    def mark(self, *, sparse_version: int | None = None, dense_version: int | None = None,
             event_time: float | None = None) -> None:  # fmt: skip
        """Record what the parameters now reflect (after a delta is fully applied)."""
        with self._lock:
            if sparse_version is not None:
                self.sparse_version = sparse_version
            if dense_version is not None:
                self.dense_version = dense_version
            if event_time is not None:
                self.event_time = max(self.event_time, event_time)
            self.applied_wall = time.time()

    def warmup(self) -> None:
        """Compile kernels and run torch once, so no request pays for it."""
        self.ps.warmup()
        self.predict(_empty_batch(self.spec, 1))

    def close(self) -> None:
        self.ps.close()


@dataclass
class ServingState:
    """What one A/B arm serves: a ranking model and, for /recommend, a two-tower retriever."""

    rank: ServedModel
    retrieve: ServedModel | None = None

    def models(self) -> list[ServedModel]:
        return [m for m in (self.rank, self.retrieve) if m is not None]

    def close(self) -> None:
        for m in self.models():
            m.close()


def _empty_batch(spec: FeatureSpec, n: int) -> Batch:
    from freshrec.features import Jagged

    sparse = {s.name: Jagged.single(np.zeros(n, np.int64)) for s in spec.sparse}
    return Batch(
        sparse=sparse,
        dense=np.zeros((n, len(spec.dense)), np.float32),
        labels=np.zeros((n, 0), np.float32),
        weights=np.ones(n, np.float32),
        event_time=np.zeros(n),
    )
