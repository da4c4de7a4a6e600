"""Logistic regression and the factorization machine (Rendle 2010)."""

from __future__ import annotations

import torch
from torch import nn

from freshrec.errors import ConfigError
from freshrec.models.base import RecModel

__all__ = ["FM", "LogisticRegression", "fm_interaction"]


class LogisticRegression(RecModel):
    """logit = w . [embeddings, dense] + b, per task."""

    def __init__(self, slot_dims: dict[str, int], n_dense: int, tasks: list[str]) -> None:
        super().__init__(slot_dims, n_dense, tasks)
        self.linear = nn.Linear(sum(slot_dims.values()) + n_dense, len(tasks))

    def output_biases(self) -> list[torch.Tensor]:
        return [self.linear.bias]

    def forward(self, sparse: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        return self.linear(self.concat_inputs(sparse, dense))  # (B, T)


def fm_interaction(stacked: torch.Tensor) -> torch.Tensor:
    """Rendle's O(kS) pairwise term: 0.5 * ((sum_s e_s)^2 - sum_s e_s^2). ``(B, S, D) -> (B, D)``."""
    total = stacked.sum(dim=1)  # (B, D)
    return 0.5 * (total * total - (stacked * stacked).sum(dim=1))


class FM(RecModel):
    """bias + first-order terms (a learned projection of each slot's embedding, and the dense
    features) + the sum of pairwise slot interactions, per task."""

    def __init__(self, slot_dims: dict[str, int], n_dense: int, tasks: list[str]) -> None:
        super().__init__(slot_dims, n_dense, tasks)
        dims = set(slot_dims.values())
        if len(dims) > 1:
            raise ConfigError(f"FM needs one embedding width for every slot, got {sorted(dims)}")
        self.dim = dims.pop() if dims else 0
        self.first_order = nn.Linear(sum(slot_dims.values()) + n_dense, len(tasks))
        self.pair = nn.Linear(self.dim, len(tasks), bias=False)
        nn.init.constant_(self.pair.weight, 1.0)  # starts as the classic FM sum over factors

    def output_biases(self) -> list[torch.Tensor]:
        return [self.first_order.bias]

    def forward(self, sparse: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([sparse[s] for s in self.slots], dim=1)  # (B, S, D)
        return self.first_order(self.concat_inputs(sparse, dense)) + self.pair(fm_interaction(stacked))
