"""hash_ids: bit-exact XXH64 against the xxhash package; integers pass through unchanged."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import InputError
from freshrec.features import hash_ids, hash_strings


def reference(strings, seed=0):
    """The obvious version: one xxhash call per string, viewed as int64."""
    raw = [s if isinstance(s, bytes) else s.encode("utf-8") for s in strings]
    return np.array([xxhash.xxh64_intdigest(b, seed) for b in raw], dtype=np.uint64).view(np.int64)


def random_unicode(rng, n):
    # lengths 0..100 bytes+ cover every branch of XXH64: <4, 4-7, 8-31 and >=32 byte inputs
    alphabet = [chr(c) for c in (*range(32, 127), *range(0xA0, 0x800), 0x4E2D, 0x1F600, 0x10FFFF)]
    return ["".join(rng.choice(alphabet, size=rng.integers(0, 70))) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63 + 11, 2**64 - 1])
def test_bit_exact_against_xxhash_on_random_unicode(seed):
    strings = ["", *random_unicode(np.random.default_rng(seed % 1000), 1000)]
    np.testing.assert_array_equal(hash_ids(strings, seed), reference(strings, seed))


def test_every_length_from_0_to_100_bytes():
    strings = ["x" * n for n in range(101)]
    np.testing.assert_array_equal(hash_ids(strings, 7), reference(strings, 7))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=20), st.integers(0, 2**64 - 1))
def test_property_matches_xxhash(strings, seed):
    np.testing.assert_array_equal(hash_ids(strings, seed), reference(strings, seed))


def test_bytes_are_hashed_as_they_are():
    values = [b"", b"\x00\xff\x10", bytes(range(200))]
    np.testing.assert_array_equal(hash_ids(values, 3), reference(values, 3))
    np.testing.assert_array_equal(hash_ids(np.array(values, dtype=object), 3), reference(values, 3))


def test_seeds_give_different_ids():
    strings = [f"item-{i}" for i in range(1000)]
    a, b = hash_ids(strings, 0), hash_ids(strings, 1)
    assert not np.any(a == b)
    assert np.unique(a).size == 1000


def test_integers_pass_through_unchanged():
    ints = np.array([0, -1, 7, np.iinfo(np.int64).min, np.iinfo(np.int64).max], np.int64)
    out = hash_ids(ints, seed=99)
    np.testing.assert_array_equal(out, ints)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(hash_ids(np.array([1, 2], np.int32)), [1, 2])
    np.testing.assert_array_equal(hash_ids([5, -5]), [5, -5])
    np.testing.assert_array_equal(hash_ids(pa.array([3, 4], pa.int16())), [3, 4])
    big = np.array([2**64 - 1, 2**63], np.uint64)  # wraps to negative int64, bit for bit
    np.testing.assert_array_equal(hash_ids(big), big.view(np.int64))


def test_arrow_layouts_agree_with_the_reference():
    strings = random_unicode(np.random.default_rng(5), 500)
    ref = reference(strings, 11)
    arr = pa.array(strings)
    np.testing.assert_array_equal(hash_ids(arr, 11), ref)
    np.testing.assert_array_equal(hash_ids(pa.array(strings, pa.large_string()), 11), ref)
    np.testing.assert_array_equal(hash_ids(arr.slice(100, 50), 11), ref[100:150])  # slice offset honoured
    chunked = pa.chunked_array([strings[:200], strings[200:]])
    np.testing.assert_array_equal(hash_ids(chunked, 11), ref)
    np.testing.assert_array_equal(hash_ids(arr.dictionary_encode(), 11), ref)
    np.testing.assert_array_equal(hash_ids(np.array(strings), 11), ref)  # numpy unicode
    np.testing.assert_array_equal(hash_strings(arr, 11), ref)


def test_a_million_strings_hash_without_a_python_loop():
    arr = pa.array([f"user-{i}" for i in range(1_000_000)])
    out = hash_ids(arr, 0)
    assert out.shape == (1_000_000,)
    idx = [0, 123_456, 999_999]
    np.testing.assert_array_equal(out[idx], reference([f"user-{i}" for i in idx]))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([1.5, 2.0]), "floats"),
        ([1.0, 2.0], "floats"),
        (["a", None], "null"),
        (pa.array([1, None]), "null"),
        (["a", 1], "all integers or all strings"),
        (np.zeros((2, 2), np.int64), "1-D"),
        ("abc", "not a single string"),
    ],
)
def test_bad_ids_are_rejected(bad, match):
    with pytest.raises(InputError, match=match):
        hash_ids(bad)


def test_seed_out_of_range():
    with pytest.raises(InputError, match="seed"):
        hash_ids(["a"], seed=2**64)
