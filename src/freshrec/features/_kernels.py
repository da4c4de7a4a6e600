"""Compiled kernels behind :mod:`freshrec.features.hashing`. They trust their input.

``xxh64_strings`` is XXH64 (Yann Collet's xxHash, 64-bit variant, spec v0.1.1), applied to
each string of an Arrow-style string column: ``data`` holds the UTF-8 bytes of all strings
back to back and string ``i`` is ``data[offsets[i]:offsets[i + 1]]``. The result is bit-exact
with ``xxhash.xxh64_intdigest(s, seed)`` (a test checks it on random unicode strings).

All arithmetic is on ``uint64`` and wraps modulo 2**64; every constant is a ``np.uint64`` so
numba never promotes a mix of signed and unsigned integers to float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec._numba import JIT

P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
P4 = np.uint64(0x85EBCA77C2B2AE63)
P5 = np.uint64(0x27D4EB2F165667C5)


@njit(inline="always", **JIT)
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(inline="always", **JIT)
def _read64(data, p):
    # little-endian load of 8 bytes at any alignment
    v = np.uint64(0)
    for k in range(8):
        v |= np.uint64(data[p + k]) << np.uint64(8 * k)
    return v


@njit(inline="always", **JIT)
def _read32(data, p):
    v = np.uint64(0)
    for k in range(4):
        v |= np.uint64(data[p + k]) << np.uint64(8 * k)
    return v


@njit(inline="always", **JIT)
def _round(acc, lane):
    acc = acc + lane * P2
    acc = _rotl(acc, 31)
    return acc * P1


@njit(inline="always", **JIT)
def _merge_round(acc, v):
    acc = acc ^ _round(np.uint64(0), v)
    return acc * P1 + P4


@njit(**JIT)
def _xxh64(data, start, end, seed):
    p = start
    n = end - start
    if n >= 32:
        v1 = seed + P1 + P2
        v2 = seed + P2
        v3 = seed
        v4 = seed - P1
        limit = end - 32
        while p <= limit:
            v1 = _round(v1, _read64(data, p))
            v2 = _round(v2, _read64(data, p + 8))
            v3 = _round(v3, _read64(data, p + 16))
            v4 = _round(v4, _read64(data, p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge_round(h, v1)
        h = _merge_round(h, v2)
        h = _merge_round(h, v3)
        h = _merge_round(h, v4)
    else:
        h = seed + P5
    h = h + np.uint64(n)
    while p + 8 <= end:
        h = h ^ _round(np.uint64(0), _read64(data, p))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        h = h ^ (_read32(data, p) * P1)
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h = h ^ (np.uint64(data[p]) * P5)
        h = _rotl(h, 11) * P1
        p += 1
    # avalanche
    h = h ^ (h >> np.uint64(33))
    h = h * P2
    h = h ^ (h >> np.uint64(29))
    h = h * P3
    return h ^ (h >> np.uint64(32))


@njit(**JIT)
def xxh64_strings(data, offsets, seed, out):
    """``out[i] = XXH64(data[offsets[i]:offsets[i+1]], seed)`` for every string.

    data: uint8[N]; offsets: int64[B + 1] (non-decreasing, within ``data``); seed: uint64;
    out: uint64[B].
    """
    for i in range(out.shape[0]):
        out[i] = _xxh64(data, offsets[i], offsets[i + 1], seed)
