"""The frequency filter: the k-th occurrence gets the row; the sketch's false-admission rate is what
docs/table.md says; the probabilistic filter admits at rate p, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.table import AdmissionConfig, EmbeddingTable


@pytest.mark.parametrize("k", [1, 2, 3, 10, 1000, 70_000])
def test_kth_occurrence_gets_the_row(k):
    t = EmbeddingTable(dim=2, admission=AdmissionConfig(min_count=k, sketch_decay_every=0))
    rows = t.find_or_insert(np.full(k + 2, 123, np.int64), now=0)  # k occurrences in one batch
    assert (rows[: k - 1] == -1).all() and (rows[k - 1 :] >= 0).all()
    assert t.export([123]).counts.tolist() == [k + 2]
    assert t.stats().filtered == k - 1


def test_occurrences_add_up_across_batches_and_times():
    t = EmbeddingTable(dim=2, admission=AdmissionConfig(min_count=4, sketch_decay_every=0))
    for i in range(3):
        t.lookup([7, 8], train=True, now=i)
        assert len(t) == 0
    assert t.sketch_estimate([7, 8, 9]).tolist() == [3, 3, 0]
    t.lookup([8], train=True, now=3)
    assert 8 in t and 7 not in t
    assert t.lookup([8]).any()


def test_inference_lookups_do_not_count():
    t = EmbeddingTable(dim=2, admission=AdmissionConfig(min_count=2))
    for _ in range(5):
        t.lookup([1])
    t.lookup([1], train=True, now=0)
    assert len(t) == 0


def _loaded_table(width: int, depth: int, n_loaded: int) -> tuple[EmbeddingTable, np.ndarray]:
    adm = AdmissionConfig(min_count=2, sketch_width=width, sketch_depth=depth, sketch_decay_every=0)
    t = EmbeddingTable(dim=1, admission=adm)
    ids = np.random.default_rng(3).choice(2**62, size=n_loaded + 40_000, replace=False).astype(np.int64)
    t.lookup(ids[:n_loaded], train=True, now=0)  # each seen once (a few already admitted falsely)
    return t, ids[n_loaded:]


@pytest.mark.parametrize(
    ("width", "depth", "n_loaded"), [(1 << 14, 4, 16_000), (1 << 14, 2, 8_000), (1 << 12, 3, 4_000)]
)
def test_false_admission_rate_matches_the_documented_formula(width, depth, n_loaded):
    """docs/table.md: with n distinct IDs in the sketch, a first occurrence is admitted early (k=2)
    with probability about (1 - exp(-n/w))**d. Conservative update can only do better."""
    formula = (1 - np.exp(-n_loaded / width)) ** depth
    t, fresh = _loaded_table(width, depth, n_loaded)
    rate = float((t.sketch_estimate(fresh[:20_000]) >= 1).mean())  # would be admitted at first sight
    assert formula * 0.5 <= rate <= formula * 1.1 + 0.002, (rate, formula)
    # the training path agrees: few probes (so n barely moves) are admitted at about that rate
    m = n_loaded // 20
    loaded = len(t)
    t.lookup(fresh[20_000 : 20_000 + m], train=True, now=1)
    admitted = (len(t) - loaded) / m
    assert abs(admitted - rate) < 4 * np.sqrt(rate * (1 - rate) / m) + 0.1 * rate, (admitted, rate)


def test_occurrences_count_in_full_for_a_window_and_are_forgotten_after_two():
    adm = AdmissionConfig(min_count=3, sketch_width=1 << 10, sketch_decay_every=100)
    t = EmbeddingTable(dim=1, admission=adm)
    t.lookup([5, 5, 6, 6], train=True, now=0)  # two occurrences each: count 2
    t.lookup(np.arange(1000, 1096), train=True, now=1)  # 96 more increments: the 100th turns
    assert t.stats().sketch_decays == 1
    assert t.sketch_estimate([5, 6]).tolist() == [2, 2]  # kept whole in the previous generation
    t.lookup([5], train=True, now=2)
    assert 5 in t  # the 3rd occurrence, 97 increments after the 1st: within the window of 100
    t.lookup(np.arange(2000, 2100), train=True, now=3)  # another turn: 6's generation is dropped
    assert t.sketch_estimate([6]).tolist() == [0]
    t.lookup([6], train=True, now=4)
    assert 6 not in t  # its first two occurrences are 200+ increments old: forgotten


def test_the_kth_occurrence_gets_the_row_across_a_turn_of_the_sketch():
    """Halving every counter (the decay before 2026-11-29) took an ID seen once back to 0: with
    a halving between its two occurrences, min_count=2 admitted none of these IDs."""
    adm = AdmissionConfig(min_count=2, sketch_width=1 << 14, sketch_decay_every=2000)
    t = EmbeddingTable(dim=1, admission=adm)
    rng = np.random.default_rng(0)
    t.lookup(rng.integers(10**12, 2 * 10**12, 1500), train=True, now=0)  # earlier traffic
    ids = np.arange(500, dtype=np.int64)
    t.lookup(ids, train=True, now=1)  # 1st occurrences; the 2000th increment turns the sketch
    assert t.stats().sketch_decays == 1
    t.lookup(rng.integers(10**12, 2 * 10**12, 700), train=True, now=2)
    t.lookup(ids, train=True, now=3)  # 2nd occurrences, at most 1,700 increments later
    assert t.contains(ids).all()


def test_a_min_count_the_window_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="can never be reached"):
        AdmissionConfig(min_count=3, sketch_decay_every=2)
    AdmissionConfig(min_count=600_000, sketch_decay_every=0)  # all history: any count is reachable
    assert AdmissionConfig(min_count=300, sketch_width=1024).decay_every == 300  # the default stretches
    assert AdmissionConfig(min_count=2, sketch_width=1024).decay_every == 256


def test_admit_probability_rate_and_reproducibility():
    adm = AdmissionConfig(admit_probability=0.3)
    a = EmbeddingTable(dim=1, admission=adm, seed=5)
    b = EmbeddingTable(dim=1, admission=adm, seed=5)
    ids = np.arange(50_000)
    ra = a.find_or_insert(ids, now=0)
    rb = b.find_or_insert(ids, now=0)
    np.testing.assert_array_equal(ra, rb)
    assert abs(len(a) / 50_000 - 0.3) < 0.01
    c = EmbeddingTable(dim=1, admission=adm, seed=6)
    assert not np.array_equal(c.find_or_insert(ids, now=0), ra)


def test_count_and_probability_combine():
    t = EmbeddingTable(dim=1, admission=AdmissionConfig(min_count=2, admit_probability=0.5))
    ids = np.arange(20_000)
    t.lookup(ids, train=True, now=0)
    assert len(t) == 0
    t.lookup(ids, train=True, now=1)
    assert abs(len(t) / 20_000 - 0.5) < 0.02


@pytest.mark.parametrize("min_count", [1, 2])
def test_a_new_id_with_a_huge_count_saturates_as_a_known_one_does(min_count):
    """counts= of 2**31 and more used to wrap (2**31 -> 0, 2**32 + 3 -> 3) on admission, while a
    known row's count saturated at 2**31 - 1."""
    t = EmbeddingTable(dim=2, admission=AdmissionConfig(min_count=min_count, sketch_width=1024))
    big = [2**31 - 1, 2**31, 2**31 + 5, 2**32 + 3]
    for c in big:
        t.lookup([c], train=True, now=0, counts=[c])
    e = t.export()
    assert sorted(e.ids.tolist()) == sorted(big)
    assert e.counts.tolist() == [2**31 - 1] * len(big)


def test_an_admission_paused_for_growth_keeps_the_count_it_decided():
    """The kernel hands back to Python to grow (or evict) after deciding to admit, then resumes.
    It used to re-read the sketch then; a halving caused by that same ID's increment gave a
    smaller count than a table that needed no growth."""
    mismatches = 0
    for decay_every in range(2, 40):
        cfg = dict(dim=2, admission=AdmissionConfig(min_count=2, sketch_width=1 << 12, sketch_decay_every=decay_every))
        grows, roomy = EmbeddingTable(**cfg), EmbeddingTable(**cfg)
        roomy.reserve(10_000)
        ids = np.repeat(np.arange(40, dtype=np.int64), 2)  # each admitted at its 2nd occurrence
        for t in (grows, roomy):
            t.lookup(ids, train=True, now=0)
        a, b = grows.export(ids), roomy.export(ids)
        assert a.ids.tolist() == b.ids.tolist()
        mismatches += int((a.counts != b.counts).sum())
    assert mismatches == 0
