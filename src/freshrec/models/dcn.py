"""DCN-v2 (Wang et al., WWW 2021), parallel structure: full-rank cross network beside an MLP.

Cross layer: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, with W_l a full (d x d) matrix.
"""

from __future__ import annotations

import torch
from torch import nn

from freshrec.models.base import DCNConfig, RecModel, mlp

__all__ = ["DCN"]


class CrossLayer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B, d) each
        return x0 * self.linear(x) + x


class DCN(RecModel):
    def __init__(self, slot_dims: dict[str, int], n_dense: int, tasks: list[str], config: DCNConfig) -> None:
        super().__init__(slot_dims, n_dense, tasks)
        width = sum(slot_dims.values()) + n_dense
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(config.cross_layers))
        self.deep, deep_width = mlp(width, config.hidden, config.dropout)
        self.head = nn.Linear(width + deep_width, len(tasks))

    def output_biases(self) -> list[torch.Tensor]:
        return [self.head.bias]

    def forward(self, sparse: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        x0 = self.concat_inputs(sparse, dense)  # (B, d)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(torch.cat([x, self.deep(x0)], dim=1))  # (B, T)
