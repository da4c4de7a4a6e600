"""DeepFM (Guo et al., IJCAI 2017): an FM and an MLP sharing embeddings, summed per task.

Multi-task (e.g. click and purchase): FM terms and the MLP trunk are shared, each task has its
own first-order weights, interaction weights and output unit.
"""

from __future__ import annotations

import torch
from torch import nn

from freshrec.errors import ConfigError
from freshrec.models.base import DeepFMConfig, RecModel, mlp
from freshrec.models.linear import fm_interaction

__all__ = ["DeepFM"]


class DeepFM(RecModel):
    def __init__(self, slot_dims: dict[str, int], n_dense: int, tasks: list[str], config: DeepFMConfig) -> None:
        super().__init__(slot_dims, n_dense, tasks)
        dims = set(slot_dims.values())
        if len(dims) > 1:
            raise ConfigError(f"DeepFM's FM part needs one embedding width for every slot, got {sorted(dims)}")
        dim = dims.pop() if dims else 0
        n_in = sum(slot_dims.values()) + n_dense
        self.first_order = nn.Linear(n_in, len(tasks))
        self.pair = nn.Linear(dim, len(tasks), bias=False)
        nn.init.constant_(self.pair.weight, 1.0)
        self.deep, width = mlp(n_in, config.hidden, config.dropout)
        self.head = nn.Linear(width, len(tasks))

    def output_biases(self) -> list[torch.Tensor]:
        return [self.head.bias, self.first_order.bias]

    def forward(self, sparse: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        x = self.concat_inputs(sparse, dense)  # (B, S*D + F)
        stacked = torch.stack([sparse[s] for s in self.slots], dim=1)  # (B, S, D)
        fm = self.first_order(x) + self.pair(fm_interaction(stacked))  # (B, T)
        return fm + self.head(self.deep(x))  # (B, T)
