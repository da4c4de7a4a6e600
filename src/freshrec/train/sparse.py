"""The bridge between the parameter server and torch: pull, pool, and push back gradients.

For each table, the IDs of every slot that reads it are deduplicated (``U`` distinct out of
``N``), pulled once, and become one leaf tensor ``(U, D)``; each slot pools its rows from it with
``embedding_bag`` (sum or mean). After ``backward`` the leaf's gradient is already merged per ID
(embedding_bag's backward sums duplicates), so exactly ``U`` rows are pushed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from freshrec.features import Batch, FeatureSpec
from freshrec.ps import ParameterServer

__all__ = ["PulledSparse", "SparseBridge"]


@dataclass
class PulledSparse:
    """One batch's sparse inputs: distinct IDs and leaf rows per table, pooled tensors per slot."""

    ids: dict[str, np.ndarray]  # table -> (U,) int64, distinct
    leaves: dict[str, torch.Tensor]  # table -> (U, D) float32 (requires_grad when training)
    pooled: dict[str, torch.Tensor]  # slot -> (B, D)


class SparseBridge:
    def __init__(self, spec: FeatureSpec, ps: ParameterServer) -> None:
        self.spec = spec
        self.ps = ps
        self.table_of = {s.name: s.table_name for s in spec.sparse}
        self.mode = {s.name: s.pooling for s in spec.sparse}
        self.max_len = {s.name: s.max_len for s in spec.sparse}
        self.slots_of: dict[str, list[str]] = {}
        for s in spec.sparse:
            self.slots_of.setdefault(s.table_name, []).append(s.name)

    def pull(self, batch: Batch, *, train: bool, now: float | None = None) -> PulledSparse:
        per_table: dict[str, np.ndarray] = {}
        inverse: dict[str, np.ndarray] = {}
        for table, slots in self.slots_of.items():
            jags = [batch.sparse[s] if self.max_len[s] is None else batch.sparse[s].truncate(self.max_len[s])
                    for s in slots]  # fmt: skip
            ids = jags[0].values if len(jags) == 1 else np.concatenate([j.values for j in jags])
            uniq, inv = np.unique(ids, return_inverse=True)  # (U,), (N,)
            per_table[table] = uniq
            start = 0
            for s, j in zip(slots, jags, strict=True):
                inverse[s] = inv[start : start + j.values.size]
                start += j.values.size
        rows = self.ps.pull_many(per_table, train=train, now=now)
        leaves = {t: torch.from_numpy(r).requires_grad_(train) for t, r in rows.items()}
        pooled = {}
        for slot in self.table_of:
            jag = (
                batch.sparse[slot]
                if self.max_len[slot] is None
                else batch.sparse[slot].truncate(self.max_len[slot])
            )
            pooled[slot] = F.embedding_bag(
                torch.from_numpy(inverse[slot]),
                leaves[self.table_of[slot]],
                torch.from_numpy(jag.offsets[:-1]),
                mode=self.mode[slot],
            )  # (B, D)
        return PulledSparse(per_table, leaves, pooled)

    def gradients(self, pulled: PulledSparse) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{table: (ids, grads)}`` after backward; tables the loss did not reach get zeros."""
        out = {}
        for table, leaf in pulled.leaves.items():
            g = leaf.grad
            grad = np.zeros(tuple(leaf.shape), np.float32) if g is None else g.numpy()
            out[table] = (pulled.ids[table], grad)
        return out
