"""SyncConfig: defaults, topic names, file loading, and clear errors for bad values."""

from __future__ import annotations

import pytest

from freshrec.errors import ConfigError, InputError
from freshrec.ps import LocalPS
from freshrec.sync import Publisher, SyncConfig
from freshrec.sync.state import serving_table_config
from freshrec.table import TableConfig


def test_defaults_and_topics():
    c = SyncConfig()
    assert (c.sparse_sync_interval, c.dense_sync_interval, c.fp16) == (1.0, 300.0, False)
    assert c.topics("rank") == ("sync.rank.sparse", "sync.rank.dense")
    assert SyncConfig(topic_prefix="prod.sync").topics("rank") == ("prod.sync.rank.sparse", "prod.sync.rank.dense")
    assert c.model_snapshot_dir("rank") == c.snapshot_dir / "rank"
    with pytest.raises(InputError, match="model name"):
        c.topics("no spaces")


def test_file_and_overrides(tmp_path):
    f = tmp_path / "sync.toml"
    f.write_text('sparse_sync_interval = 0.5\nfp16 = true\nsnapshot_dir = "snaps"\n')
    c = SyncConfig.from_file(f, ["keep_snapshots=5"])
    assert (c.sparse_sync_interval, c.fp16, c.keep_snapshots, str(c.snapshot_dir)) == (0.5, True, 5, "snaps")


@pytest.mark.parametrize(
    "bad",
    [{"sparse_sync_interval": 0}, {"max_record_bytes": 1000}, {"keep_snapshots": 0}, {"topic_prefix": "a b"},
     {"sparse_interval": 1.0}],
)  # fmt: skip
def test_bad_values_name_the_field(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        SyncConfig.from_dict(bad)


def test_a_publisher_needs_tables_that_track_changes(tmp_path):
    from freshrec.stream import open_log

    ps = LocalPS({"t": serving_table_config(TableConfig(name="t"))})
    with open_log(path=tmp_path / "log") as log, pytest.raises(ConfigError, match="track changes"):
        Publisher("m", ps, lambda: None, log)
