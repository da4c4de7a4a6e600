"""Model-quality metrics: weighted AUC, log loss, calibration, and their progressive (sliding
window) form for streams, where every example is scored before it is trained on."""

from __future__ import annotations

import numpy as np

__all__ = ["StreamingMetrics", "calibration", "logloss", "weighted_auc"]

_EPS = 1e-7


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve: the weighted probability that a positive outscores a negative,
    ties counting one half. NaN when either class is absent."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, np.float64) > 0.5
    w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64)
    order = np.argsort(s, kind="stable")
    s, y, w = s[order], y[order], w[order]
    wpos, wneg = np.where(y, w, 0.0), np.where(y, 0.0, w)
    total_pos, total_neg = wpos.sum(), wneg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie group
    pos_g = np.add.reduceat(wpos, starts)
    neg_g = np.add.reduceat(wneg, starts)
    neg_below = np.cumsum(neg_g) - neg_g
    return float((pos_g * (neg_below + 0.5 * neg_g)).sum() / (total_pos * total_neg))


def logloss(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    p = np.clip(np.asarray(probs, np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, np.float64)
    if w.sum() <= 0:
        return float("nan")
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())


def calibration(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean prediction / mean label (1 = calibrated, > 1 = over-predicting)."""
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, np.float64)
    label_mean = (w * np.asarray(labels, np.float64)).sum()
    return float((w * np.asarray(probs, np.float64)).sum() / label_mean) if label_mean > 0 else float("nan")


class StreamingMetrics:
    """Metrics over the most recent ``window`` examples, per task (a ring buffer)."""

    def __init__(self, tasks: list[str], window: int = 100_000) -> None:
        self.tasks = list(tasks)
        self.window = window
        t = len(tasks)
        self._p = np.zeros((window, t), np.float32)
        self._y = np.zeros((window, t), np.float32)
        self._w = np.zeros(window, np.float32)
        self._next = 0
        self._filled = 0
        self.seen = 0

    def update(self, probs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> None:
        """Add a batch: probabilities and labels ``(B, T)``, weights ``(B,)``."""
        n = probs.shape[0]
        self.seen += int(n)
        if n >= self.window:
            probs, labels, weights = probs[-self.window :], labels[-self.window :], weights[-self.window :]
            n = self.window
        idx = (self._next + np.arange(n)) % self.window
        self._p[idx], self._y[idx], self._w[idx] = probs, labels, weights
        self._next = (self._next + n) % self.window
        self._filled = min(self.window, self._filled + n)

    def window_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The examples in the window, oldest first: probabilities, labels ``(n, T)``, weights."""
        n = self._filled
        idx = (self._next - n + np.arange(n)) % self.window
        return self._p[idx], self._y[idx], self._w[idx]

    def restore(self, probs: np.ndarray, labels: np.ndarray, weights: np.ndarray, seen: int) -> None:
        """Start again from a saved window (oldest first, as :meth:`window_arrays` gives it; a
        smaller window keeps the newest) and count of examples seen."""
        if probs.ndim != 2 or probs.shape[1] != len(self.tasks) or labels.shape != probs.shape \
                or weights.shape != (probs.shape[0],):  # fmt: skip
            raise ValueError(
                f"a metrics window for {len(self.tasks)} tasks needs (n, T) probabilities "
                f"and labels and (n,) weights; got {probs.shape}, {labels.shape}, {weights.shape}"
            )
        self._next = self._filled = 0
        self.update(probs, labels, weights)
        self.seen = max(int(seen), self._filled)

    def compute(self) -> dict[str, float]:
        """``{task}/auc``, ``{task}/logloss``, ``{task}/calibration``, ``{task}/ctr`` and ``examples``."""
        out: dict[str, float] = {"examples": float(self.seen)}
        n = self._filled
        for j, task in enumerate(self.tasks):
            p, y, w = self._p[:n, j], self._y[:n, j], self._w[:n]
            out[f"{task}/auc"] = weighted_auc(p, y, w) if n else float("nan")
            out[f"{task}/logloss"] = logloss(p, y, w) if n else float("nan")
            out[f"{task}/calibration"] = calibration(p, y, w) if n else float("nan")
            out[f"{task}/ctr"] = float((w * y).sum() / w.sum()) if n and w.sum() > 0 else float("nan")
        return out
