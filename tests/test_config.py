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


def test_a_spec_of_ones_own_needs_a_retriever_that_fits_it():
    """The default retriever names the live-commerce slots: with another spec `freshrec online`
    created its topics and then stopped on "two_tower slots: unknown [...]"."""
    spec = {"labels": ["click"], "sparse": [{"name": "user_id"}, {"name": "item_id"}, {"name": "category"}],
            "dense": [{"name": "price", "fill_missing": 0.0}]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"retrieval_model is not set.*set retrieval_model\.user_slots"):
        OnlineConfig.from_dict({"spec": spec, "joiner": {"labels": ["click"]}})
    fits = {"user_slots": ["user_id"], "item_slots": ["item_id", "category"], "item_dense": ["price"]}
    one = {"spec": spec, "joiner": {"labels": ["click"]}}
    assert OnlineConfig.from_dict({**one, "retrieval_model": fits}).retrieval_model.user_slots == ["user_id"]
    assert OnlineConfig.from_dict({**one, "retrieval": False}).retrieval_model is None
    from freshrec.online import live_commerce_spec

    OnlineConfig.from_dict({**one, "spec": live_commerce_spec(labels=("click",))})  # the default spec still fits


def test_a_spec_of_ones_own_must_have_the_joiners_labels():
    """A spec whose labels are not the joiner's was refused only when the pipeline started, after
    it had made its topics."""
    spec = {"labels": ["click"], "sparse": [{"name": "user_id"}]}
    with pytest.raises(ConfigError, match=r"spec.labels \['click'\] must equal joiner.labels \['click', 'purchase'\]"):
        OnlineConfig.from_dict({"spec": spec, "retrieval": False})
    assert OnlineConfig.from_dict({"spec": spec, "retrieval": False, "joiner": {"labels": ["click"]}}).spec


def test_flag_values_are_set_as_given_not_parsed_as_yaml():
    """`--out "run #2"` wrote the model to `run` (YAML took ` #2` for a comment), `--out null`
    wrote none and `--data null` trained on the default set: typed flag values are not --set."""
    from freshrec.config import apply_overrides

    out = apply_overrides({}, ["a.b=[1, 2]", "c=run #2"], {"out": "run #2", "data.path": "null", "n": 3})
    assert out == {"a": {"b": [1, 2]}, "c": "run", "out": "run #2", "data": {"path": "null"}, "n": 3}
    assert apply_overrides({}, ["out=a"], {"out": "b"})["out"] == "b"  # a flag wins over --set


def test_cli_train_takes_out_and_data_paths_literally(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import freshrec.train.job as job
    from freshrec.cli import app

    seen = {}

    def capture(config, **_):
        seen["job"] = config
        raise SystemExit(0)

    monkeypatch.setattr(job, "run_train_job", capture)
    for out, data in (("run #2", "ml #2"), ("null", "~"), ("2024-06-01", "yes")):
        result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / data), "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
        assert seen["job"].out == str(tmp_path / out) and seen["job"].data.path == str(tmp_path / data)
    for out in ("null", "run #2", "0123"):  # relative, as typed on a command line
        result = CliRunner().invoke(app, ["train", "--out", out])
        assert result.exit_code == 0, result.output
        assert str(seen["job"].out) == out


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    from freshrec.config import read_config_file

    p = tmp_path / "c.toml"
    p.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c.toml is not UTF-8 text \(byte 11"):
        read_config_file(p)


def test_cli_boolean_flags_left_out_keep_the_config_and_set(monkeypatch):
    """--baselines (default on) overrode `--set baselines=false` and a config file's value."""
    from typer.testing import CliRunner

    import freshrec.train.job as job
    from freshrec.cli import app

    seen = {}

    def capture(config, **_):
        seen["job"] = config
        raise SystemExit(0)

    monkeypatch.setattr(job, "run_train_job", capture)
    for args, want in ((["--set", "baselines=false"], False), ([], True), (["--no-baselines"], False),
                       (["--set", "baselines=false", "--baselines"], True)):  # fmt: skip
        assert CliRunner().invoke(app, ["train", *args]).exit_code == 0
        assert seen["job"].baselines is want, args
