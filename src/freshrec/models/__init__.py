"""Ranking and retrieval models: plain ``torch.nn.Module``s on one input interface.

Every model takes ``forward(sparse, dense)``: ``sparse`` maps each slot name to its pooled
embeddings ``(B, D_slot)`` (pulled from the parameter server and pooled by the trainer), ``dense``
is ``(B, F)`` float32; it returns logits ``(B, T)``, one column per task (label). Owns logistic
regression and FM (``linear.py``), DeepFM (``deepfm.py``), DCN-v2 (``dcn.py``) and the two-tower
retrieval model (``two_tower.py``), their configs and the factory (``base.py``). Imports torch,
``freshrec.features`` (the spec, for slot dims) and base modules; knows nothing of the PS.
"""

from freshrec.models.base import (
    DCNConfig,
    DeepFMConfig,
    Dropout,
    FMConfig,
    LRConfig,
    ModelConfig,
    RecModel,
    TwoTowerConfig,
    build_model,
)

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
]
