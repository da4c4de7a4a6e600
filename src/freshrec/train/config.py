"""Configuration of the trainer (the dense side; sparse tables are configured in the spec)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from freshrec.config import Config

__all__ = ["TrainConfig"]


class TrainConfig(Config):
    """How the trainer steps.

    Args:
        batch_size: examples per step.
        epochs: passes over a finite data set (batch mode); streams ignore it.
        shuffle: shuffle examples each epoch (batch mode); streams keep event-time order.
        dense_optimizer: torch optimizer for the dense parameters.
        dense_lr: its learning rate (Adam's usual 1e-3).
        weight_decay: L2 on dense parameters.
        grad_clip: clip the dense gradient norm (None = off).
        negative_sampling_rate: the rate r at which the joiner kept negatives. Training sees the
            sampled stream unweighted; predictions are corrected by logit + log(r), so reported
            and served probabilities estimate the true rate (He et al., 2014).
        weighted_loss: weigh each example's loss by its sample weight (a table file's
            ``weights`` column, the joiner's ``sample_weight``). Off by default: the loss is the
            plain mean and weights count in the metrics only. With the joiner's reweighted
            negatives (weight 1/r) a weighted loss is already unbiased, so leave
            ``negative_sampling_rate`` at 1 then (``freshrec online`` does this by itself).
        init_bias_from_data: set the model's output bias to the label log-odds per task (the
            base rate) of the first batch that holds a negative, so predictions start calibrated
            (a stream joined at first action starts with clicks only).
        metrics_window: examples in the progressive-validation window.
        threads: torch intra-op threads (0 = torch's default).
        seed: dense initialisation and shuffling.
    """

    batch_size: int = Field(1024, ge=1)
    epochs: int = Field(1, ge=1)
    shuffle: bool = True
    dense_optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    dense_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    negative_sampling_rate: float = Field(1.0, gt=0, le=1)
    weighted_loss: bool = False
    init_bias_from_data: bool = True
    metrics_window: int = Field(100_000, ge=100)
    threads: int = Field(0, ge=0)
    seed: int = 0
