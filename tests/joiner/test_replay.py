"""The Open Bandit replay: real impressions and clicks through the log and the joiner reproduce the
file's labels exactly, and the examples encode to the batch the data loader builds from the file."""

from __future__ import annotations

import csv
from datetime import datetime

import numpy as np
import pytest

from freshrec.data import load_open_bandit
from freshrec.data.open_bandit import open_bandit_spec
from freshrec.joiner import Joiner, JoinerConfig, append_events, examples_to_columns, open_bandit_events
from freshrec.stream import Action, Impression, open_log

from .helpers import read_examples

CAMPAIGN = "open-bandit/random/all"


@pytest.fixture(scope="module")
def obd(data_dir):
    path = data_dir / CAMPAIGN
    with open(path / "all.csv", newline="") as f:
        rows = list(csv.DictReader(f))  # the reference, read without freshrec
    return path, rows, open_bandit_events(path)


def replay(tmp_path, events, **cfg):
    with open_log(path=tmp_path / "log") as log:
        log.create_topic("impressions", 2)
        log.create_topic("actions", 1)
        append_events(log, events)
        config = JoinerConfig(state_dir=tmp_path / "state", labels=["click"], window_s=60, allowed_lateness_s=5, **cfg)
        with Joiner(log, config) as j:
            m = j.run(until_idle=True, drain=True)
        return read_examples(log), m


def test_events_follow_the_file(obd):
    _, rows, events = obd
    imps = [e for e in events if isinstance(e, Impression)]
    clicks = [e for e in events if isinstance(e, Action)]
    assert len(imps) == len(rows) == 10_000
    assert len(clicks) == sum(int(r["click"]) for r in rows) > 0
    assert [e.event_time for e in events] == sorted(e.event_time for e in events)
    for e in imps[:50]:
        r = rows[e.event_id]
        assert int(r[""]) == e.event_id  # the file's own row index
        assert e.event_time == pytest.approx(datetime.fromisoformat(r["timestamp"]).timestamp(), abs=1e-6)
        assert (e.item_id, e.position) == (int(r["item_id"]), int(r["position"]) - 1)
        assert e.user_features == {f"user_feature_{k}": r[f"user_feature_{k}"] for k in range(4)}


def test_examples_reproduce_the_files_labels(tmp_path, obd):
    _, rows, events = obd
    examples, m = replay(tmp_path, events)
    assert len(examples) == len(rows)
    got = {e.example_id: e for e in examples}
    for i, r in enumerate(rows):
        e = got[i]
        assert e.labels == {"click": int(r["click"])}
        assert (e.item_id, e.position) == (int(r["item_id"]), int(r["position"]) - 1)
    assert m.positives_out == sum(int(r["click"]) for r in rows) == m.actions_joined
    assert m.late_actions == m.unmatched_actions == m.dead_letters == 0


def test_examples_encode_to_the_loaders_batch(tmp_path, obd):
    path, _, events = obd
    examples, _ = replay(tmp_path, events)
    examples.sort(key=lambda e: e.example_id)
    spec = open_bandit_spec()
    cols = examples_to_columns(examples)
    ours = spec.encode(cols, event_time="event_time")
    theirs = load_open_bandit(path).encode()
    for slot in spec.slot_names:
        want = theirs.sparse[slot].values - (1 if slot == "position" else 0)  # ours counts from 0
        np.testing.assert_array_equal(ours.sparse[slot].values, want, err_msg=slot)
    np.testing.assert_array_equal(ours.dense, theirs.dense)
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    np.testing.assert_allclose(ours.event_time, theirs.event_time)


def test_down_sampled_replay_keeps_every_click(tmp_path, obd):
    _, rows, events = obd
    examples, m = replay(tmp_path, events, negative_rate=0.1)
    clicks = {i for i, r in enumerate(rows) if r["click"] == "1"}
    pos = {e.example_id for e in examples if e.labels["click"]}
    assert pos == clicks
    neg = [e for e in examples if not e.labels["click"]]
    assert {(e.sample_weight, e.sampling_rate) for e in neg} == {(10.0, 0.1)}
    n_neg = len(rows) - len(clicks)
    assert abs(len(neg) - 0.1 * n_neg) < 5 * np.sqrt(n_neg * 0.1 * 0.9)
    assert m.negatives_dropped == n_neg - len(neg)
