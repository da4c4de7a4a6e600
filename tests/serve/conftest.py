"""Small trained models for the serving tests: a DeepFM ranker and a two-tower retriever over
the simulator's feature names, saved as model directories once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from freshrec.features import DenseFeature, FeatureSpec, SparseSlot
from freshrec.models import DeepFMConfig, TwoTowerConfig
from freshrec.train import TrainConfig, Trainer

USER_SLOTS = ["user_id", "segment", "hour", "device"]
ITEM_SLOTS = ["item_id", "category", "seller_id", "tags"]
SPEC = FeatureSpec(
    sparse=[SparseSlot(name=s) for s in USER_SLOTS + ITEM_SLOTS[:3]]
    + [SparseSlot(name="tags", multi_valued=True, pooling="mean", max_len=4)],
    dense=[DenseFeature(name="price", transform="log1p"), DenseFeature(name="discount", fill_missing=0.0)],
    labels=["click"],
    table_defaults={"dim": 8, "admission": {"min_count": 1}},
)


def columns(n: int, seed: int) -> dict:
    """Training columns: clicks driven by the category (even categories are liked)."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 10, n)
    logit = np.where(cat % 2 == 0, 1.5, -1.5)
    return {
        "user_id": rng.integers(0, 200, n),
        "segment": rng.integers(0, 4, n),
        "hour": rng.integers(0, 24, n),
        "device": rng.choice(["ios", "android", "web"], n).tolist(),
        "item_id": [f"it{i}" for i in rng.integers(0, 300, n)],
        "category": cat,
        "seller_id": [f"s{i}" for i in rng.integers(0, 30, n)],
        "tags": [[f"t{j}" for j in rng.integers(0, 20, k)] for k in rng.integers(0, 4, n)],
        "price": rng.gamma(2.0, 20.0, n),
        "discount": rng.random(n),
        "click": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32),
    }


def train_and_save(path: Path, model, steps: int = 30, sampling_rate: float = 0.5) -> Path:
    tr = Trainer(SPEC, model, TrainConfig(dense_lr=0.01, negative_sampling_rate=sampling_rate, threads=1))
    for i in range(steps):
        tr.step(SPEC.encode(columns(256, i), event_time=np.full(256, 1000.0 + i)))
    tr.save(path)
    tr.close()
    return path


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "rank": train_and_save(root / "rank", DeepFMConfig(hidden=[16, 16])),
        "retrieve": train_and_save(
            root / "retrieve",
            TwoTowerConfig(
                user_slots=USER_SLOTS,
                item_slots=ITEM_SLOTS,
                item_dense=["price", "discount"],
                hidden=[16],
                out_dim=8,
            ),
            sampling_rate=1.0,
        ),
    }
