"""Metrics against their definitions computed the slow way."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.train import StreamingMetrics, calibration, logloss, weighted_auc


def _slow_auc(s, y, w):
    num = den = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if y[i] == 1 and y[j] == 0:
                pair = w[i] * w[j]
                den += pair
                num += pair * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return num / den


@pytest.mark.parametrize("seed", range(5))
def test_weighted_auc_matches_pair_counting_with_ties_and_weights(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 6, 80).astype(float)  # many ties
    y = (rng.random(80) < 0.4).astype(float)
    w = rng.uniform(0.1, 3, 80)
    assert weighted_auc(s, y, w) == pytest.approx(_slow_auc(s, y, w))
    assert weighted_auc(s, y) == pytest.approx(_slow_auc(s, y, np.ones(80)))


def test_auc_edge_cases():
    assert weighted_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert np.isnan(weighted_auc(np.array([0.1, 0.9]), np.array([1, 1])))


def test_logloss_and_calibration():
    p, y, w = np.array([0.2, 0.8, 0.5]), np.array([0, 1, 1]), np.array([1.0, 1.0, 2.0])
    want = -(np.log(0.8) + np.log(0.8) + 2 * np.log(0.5)) / 4
    assert logloss(p, y, w) == pytest.approx(want)
    assert calibration(p, y, w) == pytest.approx((0.2 + 0.8 + 1.0) / 3)


def test_streaming_window_keeps_the_most_recent_examples():
    m = StreamingMetrics(["a"], window=100)
    m.update(np.zeros((150, 1)), np.zeros((150, 1)), np.ones(150))  # old, all wrong-ish
    p = np.linspace(0, 1, 100)[:, None]
    m.update(p, (p > 0.5).astype(float), np.ones(100))  # the window now holds only these
    out = m.compute()
    assert out["a/auc"] == 1.0 and out["examples"] == 250


def test_a_restored_window_keeps_the_newest_examples_and_checks_shapes():
    rng = np.random.default_rng(0)
    m = StreamingMetrics(["a"], window=100)
    for _ in range(3):
        m.update(
            rng.random((70, 1), np.float32), (rng.random((70, 1)) < 0.3).astype(np.float32), np.ones(70, np.float32)
        )
    p, y, w = m.window_arrays()
    small = StreamingMetrics(["a"], window=40)
    small.restore(p, y, w, m.seen)
    p2, y2, _ = small.window_arrays()
    np.testing.assert_array_equal(p2, p[-40:])  # the newest 40, oldest first
    np.testing.assert_array_equal(y2, y[-40:])
    assert small.seen == 210
    with pytest.raises(ValueError, match="2 tasks"):
        StreamingMetrics(["a", "b"]).restore(p, y, w, 1)
