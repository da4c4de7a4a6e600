"""What every experiment shares: its base config, data loading, seeds, and how results are kept.

An experiment is a function ``run(config, progress) -> ExperimentResult``. The result holds a
*summary* (one row per setting, metrics as mean and sample std over seeds: what the table shows
and ``results.csv`` holds), the *runs* (one row per setting and seed, and per epoch or shard
where the experiment has them: ``runs.csv``), curves for the plots (*series*) and notes.
:meth:`ExperimentResult.write` puts all of it, with the config, into ``results.json``.

Determinism: every run is seeded (dense init, shuffling, embedding init, hashing) and torch and
the parameter server use ``threads`` threads (default 1), so the same config gives the same
numbers, bit for bit. Wall-clock seconds are kept apart from the results, under ``timing``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from freshrec._io import atomic_write_bytes, json_safe
from freshrec.config import Config
from freshrec.data import Dataset, default_data, drop_repeats, load_criteo, load_movielens, movielens_spec
from freshrec.errors import ConfigError, DataError
from freshrec.features import FeatureSpec
from freshrec.models import ModelConfig
from freshrec.ps import PSConfig
from freshrec.train import TrainConfig, Trainer

__all__ = [
    "Column",
    "ExperimentConfig",
    "ExperimentResult",
    "ProgressFn",
    "default_data",
    "detect_format",
    "drop_repeats",
    "duration",
    "id_spec",
    "load_data",
    "make_trainer",
    "mean_ci",
    "mean_std",
    "open_dataset",
    "seeded_spec",
    "summarize",
    "wilson",
]

ProgressFn = Callable[[int, int, str], None]  # (units done, units in total, what is running)
DataFormat = Literal["auto", "movielens", "criteo"]
_MOVIELENS_FILES = ("u.data", "ratings.dat", "ratings.csv")


class ExperimentConfig(Config):
    """Fields every experiment has. Subclasses add their own and a ``QUICK`` dict: the fields
    ``--quick`` changes (fewer seeds, epochs or settings; never a different experiment).

    Args:
        data: the data file, or the folder holding it.
        format: ``movielens`` (u.data, ratings.dat, ratings.csv), ``criteo`` (TSV), or ``auto``
            (from the file name).
        seeds: how many seeds; metrics are reported as mean ± sample std over them.
        first_seed: seeds are ``first_seed, first_seed + 1, ...``.
        threads: torch and parameter-server threads.
        dedupe: drop examples that repeat an earlier one exactly (features, label, and time if
            the data has it): on both sides of a time split they leak the label.
        quick: set by ``--quick``; recorded in the results.
    """

    QUICK: ClassVar[dict[str, Any]] = {}

    data: str = Field(default_factory=lambda: default_data("ml-100k"))
    format: DataFormat = "auto"
    seeds: int = Field(3, ge=1, le=100)
    first_seed: int = Field(0, ge=0)
    threads: int = Field(1, ge=0)  # 1: bit-for-bit repeatable, and fair to others on a shared machine
    dedupe: bool = True  # the shared Criteo sample is 900 rows written 12 times: a split would leak
    quick: bool = False

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


# ---- data ------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> Literal["movielens", "criteo"]:
    """The data format of ``path`` from its name: a MovieLens ratings file (or a folder with
    one), or a Criteo TSV (``*.txt``/``*.tsv``, or a folder with ``train.txt``)."""
    p = Path(path)
    if p.is_dir():
        if any((p / n).is_file() for n in _MOVIELENS_FILES):
            return "movielens"
        if (p / "train.txt").is_file():
            return "criteo"
        raise DataError(
            f"{p}: holds neither a MovieLens ratings file ({', '.join(_MOVIELENS_FILES)}) nor a Criteo train.txt"
        )
    if not p.is_file():
        raise DataError(f"{p}: no such file or folder (set --data, or FRESHREC_DATA for the default)")
    if p.name in _MOVIELENS_FILES or p.suffix in (".data", ".dat", ".csv"):
        return "movielens"
    if p.suffix in (".txt", ".tsv"):
        return "criteo"
    raise ConfigError(f"{p}: cannot tell the data format from the name; set format=movielens or criteo")


def open_dataset(
    path: str | Path, format: DataFormat = "auto", spec: FeatureSpec | None = None, *, dedupe: bool = False
) -> tuple[Dataset, int]:
    """Load ``path`` as a time-ordered :class:`Dataset` (Criteo: file order, event time = row);
    with ``dedupe``, without the examples that repeat an earlier one (:func:`drop_repeats`).
    Returns the data set and the number of examples dropped."""
    fmt = detect_format(path) if format == "auto" else format
    if not Path(path).exists():
        raise DataError(f"{path}: no such file or folder (set --data, or FRESHREC_DATA for the default)")
    data = load_movielens(path, spec) if fmt == "movielens" else load_criteo(path, spec)
    return drop_repeats(data) if dedupe else (data, 0)


def id_spec(cfg: ExperimentConfig, side_features: bool) -> FeatureSpec | None:
    """For MovieLens, the ``user_id`` and ``item_id`` slots alone unless ``side_features`` (the
    experiments are about ID embeddings, and the 1M/25M files have no side features); for other
    formats None: the loader's default spec."""
    fmt = detect_format(cfg.data) if cfg.format == "auto" else cfg.format
    return movielens_spec() if fmt == "movielens" and not side_features else None


def load_data(cfg: ExperimentConfig, spec: FeatureSpec | None = None) -> tuple[Dataset, list[str]]:
    """The config's data set (deduplicated if ``cfg.dedupe``) and notes for the results."""
    data, dropped = open_dataset(cfg.data, cfg.format, spec, dedupe=cfg.dedupe)
    notes = [f"data: {data.source}, {len(data):,} examples"]
    if dropped:
        notes[0] += f" after dropping {dropped:,} exact repeats of earlier examples (dedupe=true)"
    return data, notes


# ---- models --------------------------------------------------------------------------------


def seeded_spec(spec: FeatureSpec, seed: int, **table: Any) -> FeatureSpec:
    """``spec`` with every table's initialisation (and admission RNG) seeded by ``seed``, and the
    table settings in ``table`` (``dim=16``, ``ttl=3600``, ``admission={...}``) set on every table;
    slots then inherit them."""
    data = spec.model_dump()
    settings = {k: v.model_dump() if isinstance(v, Config) else v for k, v in table.items()}
    for t in [*data["tables"], data["table_defaults"]]:
        t["seed"] = seed
        t.update(settings)
    for s in data["sparse"]:
        for key in settings:
            if key in s:
                s[key] = None
    return FeatureSpec.model_validate(data)


def make_trainer(
    spec: FeatureSpec,
    model: ModelConfig,
    *,
    seed: int,
    threads: int,
    batch_size: int,
    metrics_window: int = 100_000,
    num_shards: int = 1,
    negative_sampling_rate: float = 1.0,
) -> Trainer:
    """A trainer seeded by ``seed`` on a new :class:`LocalPS` of ``num_shards`` shards; torch and
    the PS use ``threads`` threads (1: no PS thread pool at all). ``negative_sampling_rate``: the
    share of negatives the examples kept (the simulator's joiner samples them); predictions add
    its log, so metrics weighted back to the full stream see calibrated probabilities."""
    train = TrainConfig(
        batch_size=batch_size, seed=seed, threads=threads, metrics_window=metrics_window,
        negative_sampling_rate=negative_sampling_rate,
    )  # fmt: skip
    return Trainer(spec, model, train, ps_config=PSConfig(num_shards=num_shards, threads=threads))


# ---- statistics ------------------------------------------------------------------------------


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of the finite values;
    NaN, NaN when none is finite."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (then 1.96 is within 4%)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (Student's t over the finite values;
    NaN half-width for fewer than two values)."""
    if level != 0.95:
        raise ConfigError(f"only 95% intervals are tabulated, got level={level}")
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    t = _T975[x.size - 2] if x.size - 1 <= len(_T975) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def wilson(successes: float, trials: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a binomial proportion; (NaN, NaN) for no trials."""
    if trials <= 0:
        return float("nan"), float("nan")
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return centre - half, centre + half


def summarize(
    runs: Sequence[dict[str, Any]], by: Sequence[str], metrics: Sequence[str], *, ci: bool = False
) -> list[dict[str, Any]]:
    """Group ``runs`` by the ``by`` keys (first-appearance order) and give each metric as
    ``{metric}_mean`` and ``{metric}_std`` over the group, plus ``seeds`` (the group's size);
    with ``ci``, also ``{metric}_ci95``, the half-width of the 95% interval of the mean."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rows in groups.items():
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["seeds"] = len(rows)
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std(r[m] for r in rows)
            if ci:
                row[f"{m}_ci95"] = mean_ci(r[m] for r in rows)[1]
        out.append(row)
    return out


def duration(seconds: float) -> str:
    """A span of event time for people: ``45 s``, ``12 min``, ``3 h``, ``2.5 d``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if abs(seconds) >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of the printed table: ``kind`` says how to show ``key`` of a summary row.

    ``pm``: ``{key}_mean ± {key}_std``; ``pct``: the same in percent; ``ci``, ``cipct``:
    ``{key}_mean ± {key}_ci95`` (the 95% interval of the mean), plain or in percent; ``float``,
    ``int``, ``str``: the value itself.
    """

    key: str
    header: str
    kind: Literal["pm", "pct", "ci", "cipct", "float", "int", "str"] = "str"
    digits: int = 4

    def show(self, row: dict[str, Any]) -> str:
        if self.kind in ("pm", "pct", "ci", "cipct"):
            scale, unit = (100.0, "%") if self.kind in ("pct", "cipct") else (1.0, "")
            spread = "ci95" if self.kind in ("ci", "cipct") else "std"
            m, s = row.get(f"{self.key}_mean"), row.get(f"{self.key}_{spread}")
            if m is None or not math.isfinite(m):
                return "-"
            text = f"{m * scale:.{self.digits}f}{unit}"
            return text + (f" ± {s * scale:.{self.digits}f}{unit}" if s is not None and math.isfinite(s) else "")
        v = row.get(self.key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        if self.kind == "float":
            return f"{v:.{self.digits}f}"
        if self.kind == "int":
            return f"{int(v):,}"
        return str(v)


@dataclass
class ExperimentResult:
    """Everything one experiment measured (see the module docstring)."""

    name: str
    config: ExperimentConfig
    title: str
    columns: list[Column]
    summary: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    series: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.name,
            "config": self.config.model_dump(mode="json"),
            "summary": self.summary,
            "runs": self.runs,
            "series": self.series,
            "notes": self.notes,
            "plots": self.plots,
            "timing": {"seconds": self.seconds, "machine": _machine()},
        }

    def write(self, out: str | Path) -> list[Path]:
        """Write ``results.csv`` (summary), ``runs.csv`` (per seed), ``results.json`` (all of it)
        and ``results.md`` (the printed table and notes, for docs) to ``out``."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / n for n in ("results.csv", "runs.csv", "results.json", "results.md")]
        atomic_write_bytes(paths[0], _csv(self.summary))
        atomic_write_bytes(paths[1], _csv(self.runs))
        text = json.dumps(json_safe(self.to_dict()), indent=1, allow_nan=False)
        atomic_write_bytes(paths[2], (text + "\n").encode())
        atomic_write_bytes(paths[3], self.markdown().encode())
        return paths

    def markdown(self) -> str:
        """The table as GitHub markdown, then the notes as a list."""
        lines = [f"*{self.title}*", "", "| " + " | ".join(c.header for c in self.columns) + " |"]
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|")
        lines += ["| " + " | ".join(c.show(r).replace("|", "\\|") for c in self.columns) + " |" for r in self.summary]
        lines += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"

    def table(self) -> Table:
        table = Table(title=escape(self.title), title_justify="left")
        for i, col in enumerate(self.columns):
            table.add_column(escape(col.header), justify="left" if i == 0 else "right")
        for row in self.summary:
            table.add_row(*(escape(c.show(row)) for c in self.columns))
        return table

    def print(self, console: Console | None = None) -> None:
        console = console or Console(width=max(Console().width, 150))  # wide tables stay readable in logs
        console.print(self.table())
        for note in self.notes:
            console.print(f"[dim]{escape(note)}[/dim]")


def _csv(rows: Sequence[dict[str, Any]]) -> bytes:
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(keys), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue().encode()


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
