"""``freshrec evaluate``: a saved model directory scored on a data file, per task.

The data is read as ``freshrec train`` reads it (the same ``data`` section: format, path,
mapping, the exact-repeat filter) and encoded with the model's own spec, whose dense statistics
were fitted on its training split, so a file is scored as the model would see it served.
``held_out`` scores only the newest ``data.test_fraction`` of it: on the file the model was
trained on, that is the split ``freshrec train`` held out, and the figures are the ones it
printed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from freshrec.errors import ConfigError, DataError
from freshrec.features import FeatureSpec
from freshrec.train.job import DataSource, check_label_range, load_examples, metric_row
from freshrec.train.trainer import Trainer

__all__ = ["EvalResult", "evaluate_model"]

PREDICT_ROWS = 65_536  # rows per predict call: bounds the pulled embeddings held at once


@dataclass
class EvalResult:
    model_dir: Path
    source: str
    examples: int
    rows: list[dict[str, float | str]] = field(default_factory=list)  # one per task
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def evaluate_model(
    model_dir: str | Path, data: DataSource, *, spec: FeatureSpec | None = None, held_out: bool = False
) -> EvalResult:
    """Score the model in ``model_dir`` on ``data`` (``spec``: the spec the data is loaded with,
    as in the train config; the model's own spec encodes it)."""
    t0 = time.perf_counter()
    trainer = Trainer.load(model_dir)
    try:
        dataset, _ = load_examples(data, spec)
        if held_out:
            _, dataset = dataset.split_by_time(1 - data.test_fraction)
        if len(dataset) == 0:
            raise ConfigError(f"{dataset.source}: no examples to evaluate")
        batch = dataset.with_spec(trainer.spec).encode()
        probs = np.concatenate([trainer.predict(batch.slice(lo, min(lo + PREDICT_ROWS, batch.size)))
                                for lo in range(0, batch.size, PREDICT_ROWS)])  # fmt: skip  # (B, T)
        result = EvalResult(Path(model_dir), dataset.source, batch.size)
        weights = batch.weights
        if not weights.any():
            raise DataError(f"{dataset.source}: every example to evaluate has sample weight 0")
        check_label_range(dataset.source, trainer.spec.labels, batch.labels, "the data scored")
        for j, task in enumerate(trainer.spec.labels):
            labels = batch.labels[:, j]
            if labels.min() == labels.max():
                result.warnings.append(f"every example has label {task!r} = {labels[0]:g}: its AUC is undefined (nan)")
            row = metric_row(probs[:, j], labels, weights)
            result.rows.append({"task": task, **row, "positive_rate": float(np.average(labels, weights=weights))})
    finally:
        trainer.close()
    result.seconds = time.perf_counter() - t0
    return result
