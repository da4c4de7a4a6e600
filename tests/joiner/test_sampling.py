"""Negative down-sampling: the decision against a scalar reference, its rate, its determinism, and
the log-odds correction that undoes it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xxhash

from freshrec.errors import InputError
from freshrec.joiner import correct_logits, keep_negatives
from freshrec.joiner.sampling import sampling_uniforms

M64 = (1 << 64) - 1


def splitmix64_ref(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def uniform_ref(event_id, seed: int) -> float:
    if isinstance(event_id, int):
        h = splitmix64_ref((event_id & M64) ^ splitmix64_ref(seed))
    else:
        h = xxhash.xxh64_intdigest(event_id.encode(), seed)
    return (h >> 11) / 2**53


@pytest.mark.parametrize("seed", [0, 1, 2**64 - 1])
def test_uniforms_match_the_scalar_reference(seed):
    ids = [0, 1, -1, 2**63 - 1, -(2**63), 12345, "a", "ü", "imp-7"]
    got = sampling_uniforms(ids, seed)
    assert got.tolist() == [uniform_ref(e, seed) for e in ids]
    ints = ids[:6]  # the all-int fast path gives the same numbers
    assert sampling_uniforms(ints, seed).tolist() == [uniform_ref(e, seed) for e in ints]


def test_rate_is_kept_statistically_and_decisions_are_seeded():
    ids = list(range(200_000))
    for rate in (0.01, 0.1, 0.5):
        kept = keep_negatives(ids, rate, seed=3)
        sd = math.sqrt(len(ids) * rate * (1 - rate))
        assert abs(kept.sum() - rate * len(ids)) < 5 * sd
    a, b = keep_negatives(ids, 0.3, seed=3), keep_negatives(ids, 0.3, seed=3)
    assert (a == b).all()  # deterministic per seed
    c = keep_negatives(ids, 0.3, seed=4)
    assert 0.3 < (a != c).mean() < 0.5  # another seed: independent decisions (2 r (1 - r) = 0.42 differ)
    assert keep_negatives(ids[:10], 1.0, seed=3).all()
    low, high = keep_negatives(ids, 0.2, seed=3), keep_negatives(ids, 0.4, seed=3)
    assert not (low & ~high).any()  # nested: raising the rate only adds negatives


def test_bad_arguments():
    with pytest.raises(InputError, match="rate must be in"):
        keep_negatives([1], 0.0, 0)
    with pytest.raises(InputError, match="seed must be in"):
        sampling_uniforms([1], -1)
    with pytest.raises(InputError, match="sampling_rate must be in"):
        correct_logits(np.zeros(2), 0.0)


def test_log_odds_correction_recovers_the_true_rate():
    """With negatives kept at rate r and no reweighting, the sample's odds are p / ((1 - p) r);
    logit + log r brings them back to p / (1 - p)."""
    rng = np.random.default_rng(0)
    p, r, n = 0.03, 0.1, 400_000
    y = rng.random(n) < p
    kept = y | keep_negatives(list(range(n)), r, seed=9)
    p_sample = y[kept].mean()  # what a model trained unweighted on the sample would predict
    logit = math.log(p_sample / (1 - p_sample))
    corrected = 1 / (1 + math.exp(-correct_logits(np.array([logit]), r)[0]))
    assert abs(corrected - p) < 0.002
    assert p_sample > 5 * p  # without the correction the rate is far off
