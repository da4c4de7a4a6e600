"""Negative down-sampling and the log-odds correction that undoes it at serving time.

Most impressions get no action, and a model learns little from the millionth negative. The
joiner keeps each negative with probability ``r`` (``JoinerConfig.negative_rate``), by a
decision that is a pure function of the impression's event id and a seed, so a replay, a
restart or another joiner decides the same. Each example records ``sampling_rate = r``
(1 for positives). Then either

* train with ``sample_weight = 1/r`` on the kept negatives (what the joiner writes by default,
  used by the loss with ``TrainConfig.weighted_loss``): the loss is unbiased and the model's
  scores need no correction; or
* train unweighted (the trainer's default, or ``reweight_negatives = False``): the model sees
  negatives ``r`` times too rarely, its odds are ``1/r`` times too high, and serving corrects
  with ``logit + log(r)`` (:func:`correct_logits`). Do one or the other, never both.

The decision: ``u = (h >> 11) / 2**53`` with ``h`` a seeded 64-bit hash of the event id, keep iff
``u < r``. Integer ids: ``h = splitmix64(id ^ splitmix64(seed))`` (two's complement for negative
ids); string ids: ``h = xxh64(utf-8 bytes, seed)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash

from freshrec.errors import InputError
from freshrec.stream.events import Id

__all__ = ["correct_logits", "keep_negatives", "sampling_uniforms", "splitmix64"]

_M64 = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of each element of a uint64 array (wrapping arithmetic)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sampling_uniforms(event_ids: Sequence[Id], seed: int) -> np.ndarray:
    """The ``u`` in [0, 1) of each event id (see the module docstring): ``(n,)`` float64."""
    if not 0 <= int(seed) < 2**64:
        raise InputError(f"seed must be in [0, 2**64), got {seed}")
    n = len(event_ids)
    mixed_seed = splitmix64(np.array([seed], np.uint64))[0]
    ints = np.array(event_ids) if n else np.empty(0, np.int64)  # int64 iff every id is an int
    if ints.dtype == np.int64:
        h = splitmix64(ints.view(np.uint64) ^ mixed_seed)  # two's complement, as ``id & (2**64 - 1)``
    else:
        h = np.empty(n, np.uint64)
        is_int = np.fromiter((type(e) is int for e in event_ids), bool, n)
        if is_int.any():
            vals = [e & _M64 for e, i in zip(event_ids, is_int.tolist(), strict=True) if i]
            h[is_int] = splitmix64(np.array(vals, np.uint64) ^ mixed_seed)
        strs = [e for e, i in zip(event_ids, is_int.tolist(), strict=True) if not i]
        for e in strs:
            if not isinstance(e, str):
                raise InputError(f"event ids must be int or str, got {type(e).__name__}")
        digest = xxhash.xxh64_intdigest
        h[~is_int] = np.array([digest(e.encode(), int(seed)) for e in strs], np.uint64)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keep_negatives(event_ids: Sequence[Id], rate: float, seed: int) -> np.ndarray:
    """Whether each impression, if it ends up a negative, is kept: ``(n,)`` bool."""
    if not 0.0 < rate <= 1.0:
        raise InputError(f"rate must be in (0, 1], got {rate}")
    if rate == 1.0:
        return np.ones(len(event_ids), bool)
    return sampling_uniforms(event_ids, seed) < rate


def correct_logits(logits: np.ndarray, sampling_rate: float | np.ndarray) -> np.ndarray:
    """Serving's log-odds correction for a model trained unweighted on negatives kept at rate
    ``r``: ``logit + log(r)``. Not for models trained with ``sample_weight = 1/r``."""
    r = np.asarray(sampling_rate, dtype=np.float64)
    if np.any(~(r > 0)) or np.any(r > 1):
        raise InputError("sampling_rate must be in (0, 1]")
    return np.asarray(logits, dtype=np.float64) + np.log(r)
