"""Benchmark reporting and timing helpers shared by every ``freshrec bench`` part."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from freshrec._io import atomic_write_bytes

__all__ = ["BenchReport", "peak_rss_bytes", "rss_bytes", "time_interleaved"]


@dataclass
class BenchReport:
    """Figures (raw, unit in the name), ratios (figure / baseline, same run) and parameters."""

    bench: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def figure(self, name: str, value: float) -> None:
        self.figures[name] = float(value)

    def ratio(self, name: str, value: float) -> None:
        self.ratios[name] = float(value)

    def to_dict(self) -> dict[str, Any]:
        params = dict(self.params)
        params.setdefault("machine", _machine())
        return {
            "bench": self.bench,
            "figures": self.figures,
            "ratios": self.ratios,
            "params": params,
        }

    def write_json(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(p, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())
        return p

    def print(self, console: Console | None = None) -> None:
        console = console or Console()
        fig = Table(title=f"freshrec bench {self.bench}: figures", title_justify="left")
        fig.add_column("figure")
        fig.add_column("value", justify="right")
        for name, value in self.figures.items():
            fig.add_row(escape(name), _fmt(value))
        console.print(fig)
        if self.ratios:
            rat = Table(title="ratios (same run)", title_justify="left")
            rat.add_column("ratio")
            rat.add_column("value", justify="right")
            for name, value in self.ratios.items():
                rat.add_row(escape(name), f"{value:.2f}")
            console.print(rat)
        for note in self.notes:
            console.print(f"[dim]{escape(note)}[/dim]")


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "nan"
    if abs(value) >= 1e5:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_interleaved(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each function over ``rounds`` rounds, the functions taking turns within
    each round: this VM's speed drifts by tens of percent over seconds (other tenants), and
    timing one side's repeats after the other's put that drift into the ratio."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for r in range(rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:  # nobody always goes first
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}
