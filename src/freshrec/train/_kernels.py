"""Kernels for the trainer's sparse bridge."""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec._numba import JIT


@njit(**JIT)
def unique_inverse(ids, uniq_out, inv_out):
    """Distinct IDs in first-seen order into ``uniq_out`` and each ID's index among them into
    ``inv_out``; returns how many are distinct. O(n) with a local open-addressing table."""
    n = ids.shape[0]
    cap = 16
    while cap < 2 * n:
        cap *= 2
    mask = cap - 1
    keys = np.empty(cap, np.int64)
    vals = np.full(cap, -1, np.int64)
    u = 0
    for i in range(n):
        k = ids[i]
        h = np.uint64(k) * np.uint64(0x9E3779B97F4A7C15)
        p = np.int64(h >> np.uint64(40)) & mask
        while vals[p] != -1 and keys[p] != k:
            p = (p + 1) & mask
        if vals[p] == -1:
            keys[p] = k
            vals[p] = u
            uniq_out[u] = k
            u += 1
        inv_out[i] = vals[p]
    return u


@njit(**JIT)
def scatter_add_rows(index, values, out):
    """``out[index[k]] += values[k]`` for every k: merges a sparse gradient's duplicate rows."""
    d = values.shape[1]
    for k in range(index.shape[0]):
        r = index[k]
        for j in range(d):
            out[r, j] += values[k, j]
