"""Models: output shapes per task, gradients reach every slot, and the FM / DCN formulas match
their definitions computed the slow way."""

from __future__ import annotations

import pytest
import torch

from freshrec.errors import ConfigError
from freshrec.features import DenseFeature, FeatureSpec, SparseSlot
from freshrec.models import DCNConfig, DeepFMConfig, FMConfig, LRConfig, TwoTowerConfig, build_model
from freshrec.models.linear import fm_interaction

SPEC = FeatureSpec(
    sparse=[SparseSlot(name="user"), SparseSlot(name="item"), SparseSlot(name="seller")],
    dense=[DenseFeature(name="price"), DenseFeature(name="hour")],
    labels=["click", "purchase"],
    table_defaults={"dim": 8},
)


def _inputs(b: int = 16, dim: int = 8):
    g = torch.Generator().manual_seed(0)
    sparse = {s: torch.randn(b, dim, generator=g, requires_grad=True) for s in ("user", "item", "seller")}
    return sparse, torch.randn(b, 2, generator=g)


@pytest.mark.parametrize("config", [LRConfig(), FMConfig(), DeepFMConfig(hidden=[32, 16]), DCNConfig(hidden=[32])],
                         ids=lambda c: c.type)  # fmt: skip
def test_ranking_models_give_one_logit_per_task_and_gradients_to_every_slot(config):
    model = build_model(config, SPEC)
    sparse, dense = _inputs()
    out = model(sparse, dense)
    assert out.shape == (16, 2)
    out.sum().backward()
    for s, t in sparse.items():
        assert t.grad is not None and t.grad.abs().sum() > 0, s


def test_fm_interaction_is_the_sum_of_pairwise_products():
    x = torch.randn(5, 4, 3)  # (B, S, D)
    slow = sum(x[:, i] * x[:, j] for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(fm_interaction(x), slow)


def test_dcn_cross_layer_formula():
    model = build_model(DCNConfig(cross_layers=1, hidden=[4]), SPEC)
    layer = model.cross[0]
    x0 = torch.randn(3, layer.linear.in_features)
    want = x0 * (x0 @ layer.linear.weight.T + layer.linear.bias) + x0
    torch.testing.assert_close(layer(x0, x0), want)


def test_two_tower_scores_by_dot_product():
    spec = SPEC.model_copy(update={"labels": ["click"]})
    cfg = TwoTowerConfig(user_slots=["user"], item_slots=["item", "seller"], item_dense=["price"], out_dim=4)
    model = build_model(cfg, spec)
    sparse, dense = _inputs()
    u, v = model.user_vectors(sparse, dense), model.item_vectors(sparse, dense)
    assert u.shape == v.shape == (16, 4)
    torch.testing.assert_close(model(sparse, dense), model.scale * (u * v).sum(1, keepdim=True) + model.bias)


def test_bad_model_configs():
    with pytest.raises(ConfigError, match=r"needs user_slots and item_slots.*model\.user_slots"):  # where to set them
        build_model(TwoTowerConfig(), SPEC.model_copy(update={"labels": ["c"]}))
    with pytest.raises(ConfigError, match="in neither"):
        build_model(
            TwoTowerConfig(user_slots=["user"], item_slots=["item"]),
            SPEC.model_copy(update={"labels": ["c"]}),
        )
    with pytest.raises(ConfigError, match="one task"):
        build_model(TwoTowerConfig(user_slots=["user"], item_slots=["item", "seller"]), SPEC)
    mixed = SPEC.model_copy(update={"sparse": [SparseSlot(name="user", dim=4), SparseSlot(name="item")]})
    with pytest.raises(ConfigError, match="one embedding width"):
        build_model(DeepFMConfig(), mixed)
