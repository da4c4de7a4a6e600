"""SimStream: the simulator's examples through the log and the joiner are the clicks and sampled
negatives of its impressions (checked against the simulator's own events), in emission order,
repeatable per seed; the ground truth's probabilities match the clicks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from freshrec.experiments.sim_stream import SimSource, SimStream, experiment_world, is_sim
from freshrec.experiments.stream import ExampleStream
from freshrec.joiner import keep_negatives
from freshrec.online import live_commerce_spec
from freshrec.sim import Simulator
from freshrec.stream import Action, Impression

# a small world at its evening peak: ~5k impressions in 20 event minutes
SOURCE = SimSource.from_dict(
    {"world": {"n_users": 2000, "new_users_per_hour": 40.0, "items_per_hour": 200.0, "start_time": 72_000.0},
     "hours": 1 / 3, "window_s": 120.0, "negative_rate": 0.2}
)  # fmt: skip


@pytest.fixture(scope="module")
def stream() -> SimStream:
    s = SimStream(SOURCE, seed=5)
    s.examples()
    return s


def test_examples_are_the_joined_clicks_and_sampled_negatives(stream):
    batch, emitted = stream.examples()
    assert isinstance(stream, ExampleStream) and stream.has_time
    # the reference: the same world's events, joined by hand
    sim = Simulator(SOURCE.world.model_copy(update={"seed": 5}))
    events = sim.run(stream.end_time + SOURCE.window_s + 60)
    imps = {(e.request_id, e.item_id): e for e in events if type(e) is Impression and e.event_time < stream.end_time}
    clicked = {
        (e.request_id, e.item_id)
        for e in events
        if type(e) is Action
        and e.type == "click"
        and e.event_time - imps.get((e.request_id, e.item_id), e).event_time <= SOURCE.window_s
    } & set(imps)
    negatives = [e for k, e in imps.items() if k not in clicked]
    kept = keep_negatives(np.array([e.event_id for e in negatives]), SOURCE.negative_rate, 5)
    y = batch.labels[:, 0]
    assert int(y.sum()) == len(clicked) > 20
    assert int((y == 0).sum()) == int(kept.sum())
    np.testing.assert_allclose(batch.weights[y == 0], 1 / SOURCE.negative_rate)
    assert np.all(np.diff(emitted) >= 0)  # the order of the examples topic
    assert np.all(emitted >= batch.event_time) and np.all(batch.event_time < stream.end_time)
    lag = emitted - batch.event_time
    assert np.all(lag[y == 0] >= SOURCE.window_s)  # a negative waits for its window to close
    assert np.median(lag[y == 1]) < 30  # a click comes seconds after its impression
    assert stream.stats["positives"] == len(clicked) and stream.stats["examples"] == batch.size


def test_true_probabilities_explain_the_clicks(stream):
    batch, _ = stream.examples()
    p = stream.true_probs()
    y, w = batch.labels[:, 0], batch.weights
    expected, observed = float((w * p).sum()), float((w * y).sum())  # clicks over all impressions
    assert abs(observed - expected) < 4 * math.sqrt(expected / SOURCE.negative_rate)
    assert p[y == 1].mean() > p[y == 0].mean()


def test_same_seed_same_examples(stream):
    again, emitted = SimStream(SOURCE, seed=5).examples()
    batch, emitted0 = stream.examples()
    np.testing.assert_array_equal(again.labels, batch.labels)
    np.testing.assert_array_equal(emitted, emitted0)
    for name in batch.sparse:
        np.testing.assert_array_equal(again.sparse[name].values, batch.sparse[name].values)
    other, _ = SimStream(SOURCE, seed=6).examples()
    assert other.size != batch.size or not np.array_equal(other.event_time, batch.event_time)


def test_partial_world_goes_onto_the_experiment_world():
    assert is_sim("sim") and not is_sim("../shared/data/ml-100k")
    merged = SimSource.from_dict({"world": {"n_users": 10}}).world
    assert merged.n_users == 10 and merged.random_ctr == experiment_world().random_ctr
    whole = {**experiment_world().model_dump(), "n_users": 7}  # every field given: nothing merged in
    assert SimSource.from_dict({"world": whole}).world == experiment_world().model_copy(update={"n_users": 7})
    with pytest.raises(ValueError, match="click"):
        SimStream(SOURCE, 0, spec=live_commerce_spec())  # two labels


def test_window_close_emits_clicks_with_their_negatives(stream):
    late = SimStream(SOURCE.model_copy(update={"emit": "window_close"}), seed=5)
    batch, emitted = late.examples()
    first, _ = stream.examples()
    assert batch.size == first.size and int(batch.labels[:, 0].sum()) == int(first.labels[:, 0].sum())
    lag = emitted - batch.event_time
    assert np.all(lag >= SOURCE.window_s)  # nothing leaves before its window closes, clicks included
    assert "window close" in late.describe()
