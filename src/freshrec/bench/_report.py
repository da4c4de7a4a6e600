"""Benchmark reporting and timing helpers shared by every ``freshrec bench`` part."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from freshrec._io import atomic_write_bytes, json_safe

__all__ = ["BenchReport", "peak_rss_bytes", "reset_peak_rss", "rss_bytes", "time_each", "time_interleaved"]


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
        # strict JSON: a figure that could not be measured (NaN, e.g. freshness with no delta
        # applied) is null, not a NaN token other parsers reject
        text = json.dumps(json_safe(self.to_dict()), indent=2, sort_keys=True, allow_nan=False)
        atomic_write_bytes(p, (text + "\n").encode())
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
    """Peak resident set size of this process since it started or since :func:`reset_peak_rss`
    (Linux's VmHWM; elsewhere ru_maxrss, which cannot be reset)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Start :func:`peak_rss_bytes` again from the current RSS, so a phase reports its own peak
    and not an earlier phase's (Linux: ``5`` to /proc/self/clear_refs). False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def time_interleaved(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each function over ``rounds`` rounds, the functions taking turns within
    each round (:func:`time_each`): this VM's speed drifts by tens of percent over seconds (other
    tenants), and timing one side's repeats after the other's put that drift into the ratio."""
    times = time_each({name: (lambda _, fn=fn: fn()) for name, fn in fns.items()}, range(rounds))
    return {name: float(np.median(t)) for name, t in times.items()}


def time_each(sides: Mapping[str, Callable[[Any], object]], items: Sequence[Any]) -> dict[str, list[float]]:
    """Seconds each side spends on each item, the sides taking turns item by item with the order
    rotating (nobody always goes first), so the VM's drift falls on all of them alike. For work
    that cannot be repeated in rounds (inserting a batch of new IDs) or that is timed per step."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides.items())
    for i, item in enumerate(items):
        shift = i % len(order)
        for name, fn in order[shift:] + order[:shift]:
            t0 = time.perf_counter()
            fn(item)
            times[name].append(time.perf_counter() - t0)
    return times
