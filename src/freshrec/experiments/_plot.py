"""Small matplotlib helpers: every experiment's figures are PNGs written without a display."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, the same pixels everywhere

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["band", "figure", "save"]


def figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    """A figure with ``ncols`` side-by-side axes (a list, even for one)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def band(
    ax: Any, x: Sequence[float], mean: Sequence[float], std: Sequence[float] | None, label: str, **style: Any
) -> None:
    """A line with a shaded ± std band (skipped where std is missing or zero)."""
    m = np.asarray([np.nan if v is None else v for v in mean], np.float64)
    (line,) = ax.plot(x, m, label=label, **style)
    if std is not None:
        s = np.asarray([np.nan if v is None else v for v in std], np.float64)
        if np.nanmax(np.abs(s), initial=0.0) > 0:
            ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15, linewidth=0)


def save(fig: Any, path: str | Path, title: str | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if title:
        fig.suptitle(title, fontsize=10)
    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return p


def finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]
