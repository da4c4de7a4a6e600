"""Arm assignment is a stable, seeded hash of the user id, split by weight; the ledger is bounded."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from freshrec.errors import InputError
from freshrec.serve import ArmRouter, RequestLedger


def reference_arm(user_id, arms, seed):
    """The rule written out plainly: the user's point in [0, 1) against cumulative weights."""
    point = xxhash.xxh64_intdigest(str(user_id).encode(), seed) / 2**64
    total = sum(w for _, w in arms)
    edge = 0.0
    for name, w in arms:
        edge += w / total
        if point < edge:
            return name
    return arms[-1][0]


ARMS = [("control", 0.7), ("deep", 0.2), ("fresh", 0.1)]


def test_matches_the_reference_and_is_stable_across_instances():
    a, b = ArmRouter(ARMS, seed=3), ArmRouter(ARMS, seed=3)
    users = list(range(2000)) + [f"u{i}" for i in range(2000)]
    got = [a.assign(u) for u in users]
    assert got == [b.assign(u) for u in users] == [a.assign(u) for u in users]
    assert got == [reference_arm(u, ARMS, 3) for u in users]


def test_shares_follow_the_weights():
    router = ArmRouter(ARMS, seed=0)
    names = [router.assign(u) for u in range(50_000)]
    shares = {n: names.count(n) / len(names) for n, _ in ARMS}
    for name, w in ARMS:
        assert shares[name] == pytest.approx(w, abs=0.01)


def test_the_seed_reshuffles_users_and_int_equals_str():
    a, b = ArmRouter([("x", 1), ("y", 1)], seed=0), ArmRouter([("x", 1), ("y", 1)], seed=1)
    same = np.mean([a.assign(u) == b.assign(u) for u in range(5000)])
    assert 0.4 < same < 0.6  # independent halves agree about half the time
    assert all(a.assign(u) == a.assign(str(u)) for u in range(100))


def test_growing_an_arm_moves_only_users_into_it():
    before = ArmRouter([("a", 0.9), ("b", 0.1)])
    after = ArmRouter([("a", 0.8), ("b", 0.2)])
    moved = [(before.assign(u), after.assign(u)) for u in range(20_000)]
    assert all(x == y or (x, y) == ("a", "b") for x, y in moved)


def test_single_arm_and_bad_weights():
    assert ArmRouter([("only", 5.0)]).assign("anyone") == "only"
    with pytest.raises(InputError):
        ArmRouter([])
    with pytest.raises(InputError, match="weights"):
        ArmRouter([("a", 1.0), ("b", 0.0)])


def test_ledger_forgets_the_oldest_first():
    ledger = RequestLedger(3)
    for i in range(5):
        ledger.remember(f"r{i}", f"arm{i}")
    assert [ledger.arm_of(f"r{i}") for i in range(5)] == [None, None, "arm2", "arm3", "arm4"]
    assert len(ledger) == 3
