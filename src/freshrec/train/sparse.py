"""The bridge between the parameter server and torch: pull, pool, and push back gradients.

For each table, the IDs of every slot that reads it are deduplicated (``U`` distinct out of
``N``, an O(N) hash kernel) and pulled once. Tables of one embedding width are stacked into one
leaf tensor, and all slots of one (width, pooling) are pooled by a single ``embedding_bag`` call
(26 slots cost one call, not 26). After ``backward`` the leaf's gradient is already merged per ID
(embedding_bag's backward sums duplicates), so exactly ``U`` rows per table are pushed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from freshrec.features import Batch, FeatureSpec
from freshrec.ps import ParameterServer
from freshrec.train._kernels import scatter_add_rows, unique_inverse

__all__ = ["PulledSparse", "SparseBridge"]


@dataclass
class PulledSparse:
    """One batch's sparse inputs: distinct IDs per table, the leaf tensors that hold their rows
    (one leaf per embedding width, tables stacked in it), and pooled tensors per slot."""

    ids: dict[str, np.ndarray]  # table -> (U_t,) int64, distinct
    rows: dict[str, tuple[int, int, int]]  # table -> (dim, first row in its leaf, U_t)
    leaves: dict[int, torch.Tensor]  # dim -> (sum of U_t over tables of that width, dim)
    pooled: dict[str, torch.Tensor]  # slot -> (B, D)


def _unique(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq = np.empty(ids.shape[0], np.int64)
    inv = np.empty(ids.shape[0], np.int64)
    u = unique_inverse(np.ascontiguousarray(ids, dtype=np.int64), uniq, inv)
    return uniq[:u], inv


class SparseBridge:
    def __init__(self, spec: FeatureSpec, ps: ParameterServer) -> None:
        self.spec = spec
        self.ps = ps
        tables = spec.table_configs()
        self.table_of = {s.name: s.table_name for s in spec.sparse}
        self.dim_of = {t: cfg.dim for t, cfg in tables.items()}
        self.mode = {s.name: s.pooling for s in spec.sparse}
        self.max_len = {s.name: s.max_len for s in spec.sparse}
        self.slots_of: dict[str, list[str]] = {}
        for s in spec.sparse:
            self.slots_of.setdefault(s.table_name, []).append(s.name)
        # one embedding_bag call per (width, pooling): slots sharing both are pooled together
        self.groups: dict[tuple[int, str], list[str]] = {}
        for s in spec.sparse:
            self.groups.setdefault((self.dim_of[s.table_name], s.pooling), []).append(s.name)

    def _jagged(self, batch: Batch, slot: str):
        jag = batch.sparse[slot]
        return jag if self.max_len[slot] is None else jag.truncate(self.max_len[slot])

    def pull(self, batch: Batch, *, train: bool, now: float | None = None) -> PulledSparse:
        jags = {s: self._jagged(batch, s) for s in self.table_of}
        per_table: dict[str, np.ndarray] = {}
        occurrences: dict[str, np.ndarray] = {}  # table -> (U,) how often each distinct ID occurs
        local: dict[str, np.ndarray] = {}  # slot -> (N_s,) row of each ID within its table
        for table, slots in self.slots_of.items():
            ids = jags[slots[0]].values if len(slots) == 1 else np.concatenate([jags[s].values for s in slots])
            per_table[table], inv = _unique(ids)  # (U,), (N,)
            occurrences[table] = np.bincount(inv, minlength=per_table[table].size)
            start = 0
            for s in slots:
                local[s] = inv[start : start + jags[s].values.size]
                start += jags[s].values.size
        # the frequency filter counts occurrences, not distinct IDs per batch: pass the counts
        pulled = self.ps.pull_many(per_table, train=train, now=now, counts=occurrences if train else None)
        # stack the tables of each width into one leaf
        rows: dict[str, tuple[int, int, int]] = {}
        parts: dict[int, list[np.ndarray]] = {}
        for table, r in pulled.items():
            dim = self.dim_of[table]
            first = sum(p.shape[0] for p in parts.get(dim, []))
            parts.setdefault(dim, []).append(r)
            rows[table] = (dim, first, r.shape[0])
        leaves = {
            dim: torch.from_numpy(p[0] if len(p) == 1 else np.concatenate(p)).requires_grad_(train)
            for dim, p in parts.items()
        }
        pooled: dict[str, torch.Tensor] = {}
        b = batch.size
        for (dim, mode), slots in self.groups.items():
            index = np.concatenate([local[s] + rows[self.table_of[s]][1] for s in slots])
            shifts = np.cumsum([0] + [jags[s].values.size for s in slots[:-1]])
            offsets = np.concatenate([jags[s].offsets[:-1] + sh for s, sh in zip(slots, shifts, strict=True)])
            # sparse=True: torch's dense embedding_bag backward costs ~4x more on CPU than
            # handing back per-position gradients, which gradients() merges in one pass
            out = F.embedding_bag(torch.from_numpy(index), leaves[dim], torch.from_numpy(offsets), mode=mode,
                                  sparse=True)  # fmt: skip
            for i, s in enumerate(slots):  # (S*B, D) -> (B, D) views
                pooled[s] = out[i * b : (i + 1) * b]
        return PulledSparse(per_table, rows, leaves, pooled)

    def gradients(self, pulled: PulledSparse) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{table: (ids, grads)}`` after backward; tables the loss did not reach get zeros."""
        merged: dict[int, np.ndarray] = {}
        for dim, leaf in pulled.leaves.items():
            dense = np.zeros(tuple(leaf.shape), np.float32)  # (sum U_t, dim)
            g = leaf.grad
            if g is not None:
                if g.is_sparse:  # uncoalesced: one row per pooled position
                    scatter_add_rows(g._indices()[0].numpy(), g._values().numpy(), dense)
                else:
                    dense += g.numpy()
            merged[dim] = dense
        return {t: (pulled.ids[t], merged[dim][first : first + n]) for t, (dim, first, n) in pulled.rows.items()}
