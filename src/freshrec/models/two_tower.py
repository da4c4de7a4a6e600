"""The two-tower retrieval model: a user tower and an item tower, scored by a dot product.

Serving embeds every live item once with :meth:`TwoTower.item_vectors` and ranks them against
:meth:`TwoTower.user_vectors` of the request (maximum inner product search); training scores
(user, item) pairs with ``forward`` like any other model, so it learns from the same examples.
"""

from __future__ import annotations

import torch
from torch import nn

from freshrec.errors import ConfigError
from freshrec.models.base import RecModel, TwoTowerConfig, mlp

__all__ = ["TwoTower"]


class TwoTower(RecModel):
    def __init__(self, slot_dims: dict[str, int], dense_names: list[str], tasks: list[str],
                 config: TwoTowerConfig) -> None:  # fmt: skip
        super().__init__(slot_dims, len(dense_names), tasks)
        if len(tasks) != 1:
            raise ConfigError(f"the two-tower model scores one task, got {tasks}")
        user, item = list(config.user_slots), list(config.item_slots)
        if not user or not item:
            raise ConfigError(
                "two_tower needs user_slots and item_slots: the slots of each tower, every slot in "
                "one (in a config: model.user_slots / model.item_slots, or --set "
                "'model.user_slots=[user_id]' --set 'model.item_slots=[item_id]')"
            )
        unknown = sorted(set(user + item) - set(slot_dims))
        both = sorted(set(user) & set(item))
        missing = sorted(set(slot_dims) - set(user) - set(item))
        if unknown or both or missing:
            raise ConfigError(f"two_tower slots: unknown {unknown}, in both towers {both}, in neither {missing}")
        for name in config.user_dense + config.item_dense:
            if name not in dense_names:
                raise ConfigError(f"two_tower: unknown dense feature {name!r}; the spec has {dense_names}")
        self.user_slots, self.item_slots = user, item
        self.user_dense_idx = [dense_names.index(n) for n in config.user_dense]
        self.item_dense_idx = [dense_names.index(n) for n in config.item_dense]
        self.user_tower = self._tower(sum(slot_dims[s] for s in user) + len(self.user_dense_idx), config)
        self.item_tower = self._tower(sum(slot_dims[s] for s in item) + len(self.item_dense_idx), config)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.zeros(1))

    def output_biases(self) -> list[torch.Tensor]:
        return [self.bias]

    @staticmethod
    def _tower(n_in: int, config: TwoTowerConfig) -> nn.Sequential:
        body, width = mlp(n_in, config.hidden, 0.0)
        return nn.Sequential(body, nn.Linear(width, config.out_dim))

    def user_vectors(self, sparse: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:  # (B, K)
        x = torch.cat([sparse[s] for s in self.user_slots] + [dense[:, self.user_dense_idx]], dim=1)
        return self.user_tower(x)

    def item_vectors(self, sparse: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:  # (B, K)
        x = torch.cat([sparse[s] for s in self.item_slots] + [dense[:, self.item_dense_idx]], dim=1)
        return self.item_tower(x)

    def forward(self, sparse: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        u, v = self.user_vectors(sparse, dense), self.item_vectors(sparse, dense)
        return (self.scale * (u * v).sum(dim=1, keepdim=True)) + self.bias  # (B, 1)
