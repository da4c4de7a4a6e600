"""Plain, obviously-correct references for the table: pure-Python hashing and initializers, and a
dict-based table with SGD. Slow on purpose; the tests compare the compiled table against them."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
SEED_SALT = 0xD1B54A32D192ED03


def mix64(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def hash_key(key: int) -> int:
    return mix64(((key & M64) + GOLDEN) & M64)


def init_row(key: int, seed: int, kind: str, dim: int, a: float = 0.0, b: float = 0.01) -> np.ndarray:
    """The initializer of row ``key``: zeros, uniform(a, b), normal or truncated normal (mean=a,
    std=b), from two
    32-bit uniforms per hash of (seed, key, pair), normal through the exact inverse CDF."""
    out = np.zeros(dim, np.float64)
    if kind == "zeros":
        return out.astype(np.float32)
    base = hash_key(key) ^ mix64((seed ^ SEED_SALT) & M64)
    for j in range(dim):
        h = mix64((base + (j // 2 + 1) * GOLDEN) & M64)
        u = (((h >> (32 * (j % 2))) & 0xFFFFFFFF) + 0.5) / 2**32
        if kind == "uniform":
            out[j] = a + (b - a) * u
        elif kind == "normal":
            out[j] = a + b * NormalDist().inv_cdf(u)
        else:  # truncated at 2 std: u spread over [Phi(-2), Phi(2)]
            lo, hi = NormalDist().cdf(-2.0), NormalDist().cdf(2.0)
            out[j] = a + b * NormalDist().inv_cdf(lo + (hi - lo) * u)
    return out.astype(np.float32)


class NaiveTable:
    """Dict reference: exact occurrence counting for admission, SGD, ttl expiry, change tracking."""

    def __init__(self, dim: int, min_count: int, lr: float, ttl_ms: int | None, seed: int, std: float):
        self.dim, self.k, self.lr, self.ttl_ms, self.seed, self.std = dim, min_count, lr, ttl_ms, seed, std
        self.rows: dict[int, dict] = {}
        self.seen: dict[int, int] = {}  # occurrences while not admitted (the sketch, without error)
        self.dirty: set[int] = set()
        self.removed: set[int] = set()

    def _new(self, key: int, now_ms: int, count: int) -> None:
        emb = init_row(key, self.seed, "normal", self.dim, 0.0, self.std)
        self.rows[key] = {"emb": emb, "ts": now_ms, "count": count}
        self.dirty.add(key)

    def lookup(self, ids: list[int], now_ms: int | None, train: bool) -> np.ndarray:
        out = np.zeros((len(ids), self.dim), np.float32)
        for i, key in enumerate(ids):
            if train and key not in self.rows:
                self.seen[key] = self.seen.get(key, 0) + 1
                if self.seen[key] >= self.k:
                    self._new(key, now_ms, self.seen[key] if self.k > 1 else 1)
                    out[i] = self.rows[key]["emb"]
                continue
            if key in self.rows:
                row = self.rows[key]
                if train:
                    row["count"] += 1
                    row["ts"] = max(row["ts"], now_ms)
                out[i] = row["emb"]
        return out

    def apply(self, ids: list[int], grads: np.ndarray, now_ms: int) -> None:
        acc: dict[int, np.ndarray] = {}
        for key, g in zip(ids, grads, strict=True):
            if key in self.rows:
                acc[key] = acc[key] + g if key in acc else g.astype(np.float32).copy()
        for key, g in acc.items():
            row = self.rows[key]
            row["emb"] = (row["emb"].astype(np.float64) - self.lr * g.astype(np.float64)).astype(np.float32)
            row["ts"] = max(row["ts"], now_ms)
            self.dirty.add(key)

    def remove(self, ids: list[int]) -> list[int]:
        gone = sorted({k for k in ids if k in self.rows})
        for k in gone:
            del self.rows[k]
            self.removed.add(k)
        return gone

    def expire(self, now_ms: int) -> list[int]:
        if self.ttl_ms is None:
            return []
        return self.remove([k for k, r in self.rows.items() if r["ts"] < now_ms - self.ttl_ms])

    def drain(self) -> tuple[list[int], list[int]]:
        ups = sorted(k for k in self.dirty if k in self.rows)
        tomb = sorted(k for k in self.removed if k not in self.rows)
        self.dirty, self.removed = set(), set()
        return ups, tomb
