"""The model interface, the configs of every model, an MLP block, and ``build_model``."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from freshrec.config import Config
from freshrec.errors import ConfigError
from freshrec.features import FeatureSpec

__all__ = [
    "DCNConfig",
    "DeepFMConfig",
    "Dropout",
    "FMConfig",
    "LRConfig",
    "ModelConfig",
    "RecModel",
    "TwoTowerConfig",
    "build_model",
    "mlp",
]


class RecModel(nn.Module):
    """Base of every model: knows its slots (with embedding widths), dense width and tasks."""

    def __init__(self, slot_dims: dict[str, int], n_dense: int, tasks: list[str]) -> None:
        super().__init__()
        if not tasks:
            raise ConfigError("a model needs at least one task (label)")
        self.slot_dims = dict(slot_dims)
        self.slots = list(slot_dims)
        self.n_dense = n_dense
        self.tasks = list(tasks)

    def concat_inputs(self, sparse: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        """``(B, sum(D_slot) + F)``: every slot's pooled embedding, then the dense features."""
        return torch.cat([sparse[s] for s in self.slots] + [dense], dim=1)

    def forward(self, sparse: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:  # (B, T)
        raise NotImplementedError

    def output_biases(self) -> list[torch.Tensor]:
        """The bias parameters added to the logits, ``(T,)`` each (the first carries the prior)."""
        raise NotImplementedError

    @torch.no_grad()
    def init_output_bias(self, logits: torch.Tensor) -> None:
        """Start the model at the base rate: the output bias = the prior log-odds per task ``(T,)``,
        so the first predictions are calibrated instead of 0.5 (a CTR of 1% starts 50x off)."""
        first, *rest = self.output_biases()
        first.copy_(logits.to(first.dtype).expand_as(first))
        for b in rest:
            b.zero_()


class Dropout(nn.Module):
    """``nn.Dropout`` drawing its masks from ``generator`` (the trainer sets its own: saved with
    the model directory, so a restored trainer draws the masks an uninterrupted one would, and
    never shared with another trainer, thread or the caller); torch's global generator if None."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty_like(x).bernoulli_(keep, generator=self.generator)
        return x * mask.div_(keep)  # as nn.Dropout scales: the same values, bit for bit

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mlp(n_in: int, hidden: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear-ReLU(-Dropout) layers; returns the block and its output width."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        if dropout > 0:
            layers.append(Dropout(dropout))
        n_in = width
    return nn.Sequential(*layers), n_in


class LRConfig(Config):
    """Logistic regression: a linear function of every pooled embedding and dense feature.
    With dim-1 tables (``build_model`` sets them when asked) it is exactly LR on one-hot IDs."""

    type: Literal["lr"] = "lr"


class FMConfig(Config):
    """Factorization machine: bias + first-order terms + pairwise slot interactions
    (all slots must share one embedding width)."""

    type: Literal["fm"] = "fm"


class DeepFMConfig(Config):
    """DeepFM (Guo et al. 2017): FM and an MLP on the same embeddings, summed per task.

    Args:
        hidden: MLP widths; the issue's benchmark uses 400-400-400, DeepFM's paper 400-400-400.
        dropout: between MLP layers.
    """

    type: Literal["deepfm"] = "deepfm"
    hidden: list[int] = Field(default_factory=lambda: [400, 400, 400])
    dropout: float = Field(0.0, ge=0, lt=1)


class DCNConfig(Config):
    """DCN-v2 (Wang et al. 2021): full-rank cross layers on the concatenated input, in parallel
    with an MLP, then one linear head per task.

    Args:
        cross_layers: number of cross layers (the paper's ablation peaks at 2-3).
        hidden: MLP widths.
        dropout: between MLP layers.
    """

    type: Literal["dcn"] = "dcn"
    cross_layers: int = Field(3, ge=1, le=8)
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    dropout: float = Field(0.0, ge=0, lt=1)


class TwoTowerConfig(Config):
    """Two towers scored by a dot product: the retrieval model.

    Args:
        user_slots / item_slots: which slots feed which tower (all slots must be assigned).
        user_dense / item_dense: which dense features feed which tower (by name).
        hidden: tower widths before the output layer.
        out_dim: width of the tower outputs (the retrieval vector).
    """

    type: Literal["two_tower"] = "two_tower"
    user_slots: list[str] = Field(default_factory=list)
    item_slots: list[str] = Field(default_factory=list)
    user_dense: list[str] = Field(default_factory=list)
    item_dense: list[str] = Field(default_factory=list)
    hidden: list[int] = Field(default_factory=lambda: [128])
    out_dim: int = Field(32, ge=1)


ModelConfig = Annotated[LRConfig | FMConfig | DeepFMConfig | DCNConfig | TwoTowerConfig, Field(discriminator="type")]


def build_model(config: ModelConfig, spec: FeatureSpec) -> RecModel:
    """The model ``config`` describes, sized for ``spec`` (slot widths from its tables, dense
    width, one task per label)."""
    from freshrec.models.dcn import DCN
    from freshrec.models.deepfm import DeepFM
    from freshrec.models.linear import FM, LogisticRegression
    from freshrec.models.two_tower import TwoTower

    tables = spec.table_configs()
    slot_dims = {s.name: tables[s.table_name].dim for s in spec.sparse}
    n_dense, tasks = len(spec.dense), list(spec.labels)
    if isinstance(config, LRConfig):
        return LogisticRegression(slot_dims, n_dense, tasks)
    if isinstance(config, FMConfig):
        return FM(slot_dims, n_dense, tasks)
    if isinstance(config, DeepFMConfig):
        return DeepFM(slot_dims, n_dense, tasks, config)
    if isinstance(config, DCNConfig):
        return DCN(slot_dims, n_dense, tasks, config)
    if isinstance(config, TwoTowerConfig):
        return TwoTower(slot_dims, spec.dense_names, tasks, config)
    raise ConfigError(f"unknown model config {type(config).__name__}")
