"""``freshrec train``: batch training from files, with baselines measured in the same run.

Loads a data set, splits it by time (held-out = the newest ``test_fraction``), trains the
configured model with progressive validation, evaluates it on the held-out split, and beside it,
on the same split: logistic regression (the same spec with every table at dim 1, i.e. LR on
one-hot IDs) and an item-popularity baseline (each item's smoothed positive rate in the
training split). Optionally writes the model directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from freshrec._io import check_replaceable
from freshrec.config import Config
from freshrec.data import (
    DEFAULT_DATASETS,
    ColumnMapping,
    Dataset,
    default_data,
    drop_repeats,
    load_criteo,
    load_movielens,
    load_open_bandit,
    load_table_file,
)
from freshrec.errors import ConfigError, DataError
from freshrec.features import Batch, FeatureSpec
from freshrec.models import DeepFMConfig, LRConfig, ModelConfig
from freshrec.ps import PSConfig
from freshrec.train.config import TrainConfig
from freshrec.train.metrics import calibration, logloss, weighted_auc
from freshrec.train.model_dir import FORMAT as MODEL_DIR_FORMAT
from freshrec.train.trainer import Trainer

__all__ = ["DataSource", "JobResult", "TrainJobConfig", "item_popularity", "load_dataset", "run_train_job"]


class DataSource(Config):
    """Where the examples come from.

    Args:
        format: ``movielens`` (u.data, ratings.dat, ratings.csv), ``criteo`` (TSV),
            ``open_bandit`` (CSV), or ``table`` (Parquet/CSV read through ``mapping``).
        path: the file (or, for MovieLens / Open Bandit, the folder holding it). None = the
            format's shared data set under ``$FRESHREC_DATA`` (else ``../shared/data``):
            ``ml-100k``, ``criteo-sample/train.txt`` or ``open-bandit/random/all``.
        mapping: for ``table``: the spec and column mapping.
        test_fraction: the newest share of examples held out for evaluation.
        dedupe: drop examples that repeat an earlier one exactly (features, label, time): a
            repeat on both sides of a time split leaks the label. The shared Criteo sample is 900
            distinct rows written 12 times; real logs lose nothing.
    """

    format: Literal["movielens", "criteo", "open_bandit", "table"] = "movielens"
    path: str | None = None
    mapping: ColumnMapping | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    dedupe: bool = True


class TrainJobConfig(Config):
    """One ``freshrec train`` run.

    Args:
        data: the data source.
        model: the model to train (DeepFM by default).
        train: trainer settings.
        ps: parameter-server settings.
        spec: the features; None = the loader's default spec for the format. Not for ``table``,
            whose features are ``data.mapping.spec`` (a spec here is then an error).
        baselines: also train LR and score item popularity on the same split.
        item_slot: the slot whose popularity is the baseline (skipped if absent).
        out: write the model directory here.
    """

    data: DataSource = Field(default_factory=DataSource)
    model: ModelConfig = Field(default_factory=DeepFMConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ps: PSConfig = Field(default_factory=PSConfig)
    spec: FeatureSpec | None = None
    baselines: bool = True
    item_slot: str = "item_id"
    out: str | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _default_model_type(cls, v: object) -> object:
        # `--set model.hidden=[64]` alone names no type: it refines the default model
        if isinstance(v, dict) and "type" not in v:
            return {"type": "deepfm", **v}
        return v


@dataclass
class JobResult:
    rows: list[dict[str, object]] = field(default_factory=list)  # one per model: name + metrics
    train_examples: int = 0
    test_examples: int = 0
    duplicates_dropped: int = 0
    out: Path | None = None
    warnings: list[str] = field(default_factory=list)


def load_dataset(source: DataSource, spec: FeatureSpec | None = None) -> Dataset:
    if source.format == "table":
        if spec is not None:  # the mapping's spec is what a table file is read with: never drop one silently
            raise ConfigError("data.format 'table' reads its features from data.mapping.spec; the top-level spec "
                              "would be ignored: move it under data.mapping (TOML: [data.mapping.spec])")  # fmt: skip
        if source.mapping is None:
            raise ConfigError("data.format 'table' needs data.mapping (a spec and its columns)")
        if source.path is None:
            raise ConfigError("data.format 'table' needs data.path (the Parquet or CSV file)")
        return load_table_file(source.path, source.mapping)
    path = source.path
    if path is None:
        path = default_data(DEFAULT_DATASETS[source.format])
        if not Path(path).exists():
            raise DataError(f"{path}: no such file or folder (the default data set: set FRESHREC_DATA to the "
                            "folder holding it, or pass --data)")  # fmt: skip
    if source.format == "movielens":
        return load_movielens(path, spec)
    if source.format == "criteo":
        return load_criteo(path, spec)
    return load_open_bandit(path, spec)


def with_table_dim(spec: FeatureSpec, dim: int) -> FeatureSpec:
    """The same spec with every table at ``dim`` (dim 1 makes any model linear in one-hot IDs)."""
    data = spec.model_dump()
    for s in data["sparse"]:
        s["dim"] = None
    for t in [*data["tables"], data["table_defaults"]]:
        t.update(dim=dim, default_value=0.0)
    return FeatureSpec.from_dict(data, source="spec with one table width")  # validated again


def item_popularity(train: Dataset, test: Dataset, item_slot: str, smoothing: float = 10.0) -> np.ndarray:
    """Each test example's item's positive rate in ``train`` (first label), shrunk toward the
    global rate with ``smoothing`` pseudo-examples; unseen items get the global rate."""
    tr, te = train.encode(), test.encode()
    ids, y, w = tr.sparse[item_slot].values, tr.labels[:, 0].astype(np.float64), tr.weights.astype(np.float64)
    if tr.sparse[item_slot].values.size != tr.size:
        raise ConfigError(f"popularity needs a single-valued item slot; {item_slot!r} is multi-valued")
    prior = float((w * y).sum() / w.sum())
    uniq, inv = np.unique(ids, return_inverse=True)
    pos = np.bincount(inv, weights=w * y, minlength=uniq.size)
    cnt = np.bincount(inv, weights=w, minlength=uniq.size)
    rate = (pos + smoothing * prior) / (cnt + smoothing)
    test_ids = te.sparse[item_slot].values
    at = np.clip(np.searchsorted(uniq, test_ids), 0, uniq.size - 1)
    known = uniq[at] == test_ids
    return np.where(known, rate[at], prior)


def metric_row(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """AUC, log loss and calibration (predicted over observed rate), weighted."""
    return {
        "auc": weighted_auc(probs, labels, weights),
        "logloss": logloss(probs, labels, weights),
        "calibration": calibration(probs, labels, weights),
    }


def load_examples(source: DataSource, spec: FeatureSpec | None = None) -> tuple[Dataset, int]:
    """:func:`load_dataset`, without exact repeats if ``source.dedupe``; (data, repeats dropped)."""
    data = load_dataset(source, spec)
    return drop_repeats(data) if source.dedupe else (data, 0)


def check_label_range(source: str, names: list[str], labels: np.ndarray, where: str) -> None:
    """Labels ``(B, T)`` must be in [0, 1]: the loss and the metrics are binary."""
    for j, name in enumerate(names):
        col = labels[:, j]
        if col.size and (col.min() < 0 or col.max() > 1):
            raise DataError(f"{source}: label {name!r} must be in [0, 1] (the loss is binary cross-entropy); "
                            f"{where} has values in [{col.min():g}, {col.max():g}]")  # fmt: skip


def _check_labels(train: Dataset, test_batch: Batch, source: str, result: JobResult) -> None:
    """Labels must be in [0, 1] on both sides of the split (the trainer checks only what it trains
    on, so a bad held-out label gave garbage metrics quietly); one class held out is a warning."""
    for part, y in (("training", train.encode().labels), ("held-out", test_batch.labels)):
        check_label_range(source, train.spec.labels, y, f"the {part} split")
    first = test_batch.labels[:, 0]
    if first.size and first.min() == first.max():
        result.warnings.append(f"every held-out example has label {train.spec.labels[0]!r} = {first[0]:g}: "
                               "AUC is undefined (reported as nan)")  # fmt: skip
    if test_batch.weights.size and not test_batch.weights.any():  # the whole set's are not all 0 (Dataset checks)
        result.warnings.append("every held-out example has sample weight 0: its metrics are undefined (reported as "
                               "nan); the newest examples of the data carry no weight")  # fmt: skip


def run_train_job(config: TrainJobConfig, *, on_step: Callable[[str, int, int], None] | None = None) -> JobResult:
    """Run the job; ``on_step(model_name, step, total_steps)`` reports progress."""
    if config.out is not None:  # before any work: a path the save would refuse fails now
        check_replaceable(Path(config.out), MODEL_DIR_FORMAT, "model directory")
    data, dropped = load_examples(config.data, config.spec)
    train, test = data.split_by_time(1 - config.data.test_fraction)
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(f"the split left {len(train)} training and {len(test)} test examples")
    train = train.fit()
    test = test.with_spec(train.spec)
    result = JobResult(train_examples=len(train), test_examples=len(test), duplicates_dropped=dropped)
    steps = config.train.epochs * -(-len(train) // config.train.batch_size)
    runs: list[tuple[str, FeatureSpec, ModelConfig]] = [(config.model.type, train.spec, config.model)]
    if config.baselines and config.model.type != "lr":
        runs.append(("lr", with_table_dim(train.spec, 1), LRConfig()))
    test_batch = test.encode()
    _check_labels(train, test_batch, data.source, result)
    labels, weights = test_batch.labels[:, 0], test_batch.weights
    for name, spec, model_config in runs:
        t0 = time.perf_counter()
        trainer = Trainer(spec, model_config, config.train, ps_config=config.ps)
        done = 0

        def progress(tr: Trainer, _res, name=name) -> None:
            nonlocal done
            done += 1
            if on_step is not None:
                on_step(name, done, steps)

        try:
            trainer.fit(train.with_spec(spec), on_step=progress)
            probs = trainer.predict(test_batch)[:, 0]  # same IDs; only table widths differ per spec
            row = {"model": name, **metric_row(probs, labels, weights), "seconds": time.perf_counter() - t0}
            result.rows.append(row)
            if name == config.model.type and config.out is not None:
                result.out = trainer.save(config.out, extra={"test_metrics": row})
        finally:
            trainer.close()
    if config.baselines and config.item_slot in train.spec.slot_names:
        t0 = time.perf_counter()
        probs = item_popularity(train, test, config.item_slot)
        result.rows.append({"model": "item_popularity", **metric_row(probs, labels, weights),
                            "seconds": time.perf_counter() - t0})  # fmt: skip
    return result
