"""Config loading: a section given in part is laid over its config's own default for it."""

from __future__ import annotations

import pytest

from freshrec.config import load_config
from freshrec.errors import ConfigError
from freshrec.online import OnlineConfig


def test_a_partial_section_keeps_the_configs_own_defaults_for_it(tmp_path):
    """`--set train.dense_lr=0.01` brought back TrainConfig's batch of 1024 (online's is 512), and
    any [joiner] section without labels switched the models from 2 labels to 4."""
    base = OnlineConfig()
    f = tmp_path / "online.toml"
    f.write_text("[joiner]\nnegative_rate = 0.1\n[ps]\n")
    c = load_config(OnlineConfig, f, ["train.dense_lr=0.01", "rank_model.dropout=0.1"])
    assert c.train.dense_lr == 0.01 and c.train.batch_size == base.train.batch_size == 512
    assert c.train.metrics_window == base.train.metrics_window
    assert c.joiner.negative_rate == 0.1 and c.joiner.labels == base.joiner.labels == ["click", "purchase"]
    assert c.ps.threads == base.ps.threads == 2
    assert c.rank_model.type == "deepfm" and c.rank_model.hidden == [256, 128] and c.rank_model.dropout == 0.1
    assert c.joiner.state_dir == c.run_dir / "joiner"  # derived paths still derived


def test_a_section_naming_another_type_or_its_own_values_wins():
    c = OnlineConfig.from_dict({"rank_model": {"type": "dcn"}, "joiner": {"labels": ["click"]},
                                "train": {"batch_size": 64}})  # fmt: skip
    assert c.rank_model.type == "dcn" and c.rank_model.hidden == [256, 256]  # DCN's own defaults
    assert c.joiner.labels == ["click"] and c.train.batch_size == 64
    with pytest.raises(ConfigError, match=r"train\.batch_sise"):
        OnlineConfig.from_dict({"train": {"batch_sise": 64}})
