"""Sharding kernels: which shard owns an ID, and a batch grouped by shard (counting sort)."""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec._numba import JIT

# The table's index uses the top bits of splitmix64(id); sharding must not correlate with them,
# or each shard's index would see only a slice of its home positions. A different mixer (the
# Murmur3 finalizer of the salted ID) picks the shard.
_SALT = np.uint64(0x2545F4914F6CDD1D)


@njit(inline="always", **JIT)
def _fmix64(x):
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


@njit(**JIT)
def shard_ids(ids, n_shards, out):
    """``out[i]`` = shard of ``ids[i]``: fast range reduction of 32 mixed bits."""
    n = np.uint64(n_shards)
    for i in range(ids.shape[0]):
        h = _fmix64(np.uint64(ids[i]) ^ _SALT) >> np.uint64(32)
        out[i] = np.int64((h * n) >> np.uint64(32))


@njit(**JIT)
def group_by_shard(ids, n_shards, order, starts):
    """Positions of ``ids`` grouped by shard, stable: shard ``s`` owns
    ``order[starts[s]:starts[s + 1]]``."""
    n = ids.shape[0]
    shard = np.empty(n, np.int64)
    shard_ids(ids, n_shards, shard)
    counts = np.zeros(n_shards + 1, np.int64)
    for i in range(n):
        counts[shard[i] + 1] += 1
    for s in range(n_shards):
        counts[s + 1] += counts[s]
    for s in range(n_shards + 1):
        starts[s] = counts[s]
    for i in range(n):
        s = shard[i]
        order[counts[s]] = i
        counts[s] += 1
