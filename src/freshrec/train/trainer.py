"""The trainer: one step for both stages of the paper, batch training over files and online
training over a stream that never ends.

A step pulls the batch's sparse rows from the PS (admitting new IDs), runs the model, and, if the
loss and every gradient are finite, steps the dense optimizer and pushes the sparse gradients.
Non-finite inputs (dense features, labels, weights) skip the step before the pull: the PS is not
touched at all. A NaN/Inf loss or gradient arising in the model skips the step after the pull:
no embedding, optimizer state or dense weight changes, while the batch's IDs keep the occurrence
counts and last-seen times that the pull recorded (they were seen). Every skip is counted.

With ``progressive=True`` each batch's predictions from that same forward pass (made before the
batch is trained on) feed the sliding-window metrics: progressive validation.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from freshrec.errors import ConfigError, InputError, StateError
from freshrec.features import Batch, FeatureSpec
from freshrec.models import Dropout, ModelConfig, RecModel, build_model
from freshrec.ps import ParameterServer, PSConfig, make_ps
from freshrec.table.table import gradient_problem
from freshrec.train.config import TrainConfig
from freshrec.train.metrics import StreamingMetrics, calibration, logloss, weighted_auc
from freshrec.train.sparse import SparseBridge

__all__ = ["StepResult", "Trainer", "TrainerState"]


class TrainerState(enum.Enum):
    READY = "ready"  # may step, predict, save
    CLOSED = "closed"  # its PS is closed; every call raises StateError


@dataclass
class StepResult:
    loss: float  # mean loss of the batch (NaN if skipped)
    probs: np.ndarray  # (B, T) predictions made before this step's update (log-odds corrected)
    skipped: bool = False  # True when a non-finite loss/gradient stopped the step


@dataclass
class TrainerCounters:
    steps: int = 0
    examples: int = 0
    skipped_nonfinite: int = 0
    pull_push_seconds: float = 0.0
    step_seconds: float = 0.0
    last_event_time: float = field(default=float("-inf"))


class Trainer:
    """Trains ``model_config`` on ``spec`` with sparse rows in ``ps`` (when not given, a new
    parameter server over the spec's tables, of the backend ``ps_config`` names: in this process
    by default, Ray actors with ``backend = "ray"``) and dense weights in a torch optimizer."""

    def __init__(
        self,
        spec: FeatureSpec,
        model_config: ModelConfig,
        config: TrainConfig | None = None,
        ps: ParameterServer | None = None,
        ps_config: PSConfig | None = None,
    ) -> None:
        self.spec = spec
        self.model_config = model_config
        self.config = config or TrainConfig()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.ps = ps if ps is not None else make_ps(spec.table_configs(), ps_config)
        missing = sorted(set(spec.table_configs()) - set(self.ps.tables))
        if missing:
            raise ConfigError(f"the parameter server lacks tables {missing} that the spec reads")
        with torch.random.fork_rng(devices=[]):  # the seed decides the weights; the caller's RNG stays
            torch.manual_seed(self.config.seed)
            self.model: RecModel = build_model(model_config, spec)
        # dropout's random stream, the trainer's own: saved in the model directory, so a restored
        # trainer draws what an uninterrupted one would have, and apart from torch's global
        # generator, so other trainers, threads or the caller never shift its draws
        self.generator = torch.Generator().manual_seed(self.config.seed)
        for module in self.model.modules():
            if isinstance(module, Dropout):
                module.generator = self.generator
        self.optimizer = self._make_optimizer()
        self.sparse = SparseBridge(spec, self.ps)
        self.tasks = list(spec.labels)
        self.metrics = StreamingMetrics(self.tasks, self.config.metrics_window)
        self.counters = TrainerCounters()
        self.logit_offset = math.log(self.config.negative_sampling_rate)
        # True until the output bias is set from data (init_bias_from_data); a loaded model has its own
        self.bias_pending = self.config.init_bias_from_data
        self.state = TrainerState.READY

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = list(self.model.parameters())
        if c.dense_optimizer == "adam":
            return torch.optim.Adam(params, lr=c.dense_lr, weight_decay=c.weight_decay)
        if c.dense_optimizer == "adagrad":
            return torch.optim.Adagrad(params, lr=c.dense_lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.dense_lr, weight_decay=c.weight_decay)

    def _check(self, what: str) -> None:
        if self.state is not TrainerState.READY:
            raise StateError(f"cannot {what}: the trainer is {self.state.value}")

    def _check_batch(self, batch: Any, what: str) -> None:
        """A batch of another spec is refused before the PS sees it (its pull would admit IDs)."""
        if not isinstance(batch, Batch):
            raise InputError(f"cannot {what}: expected a Batch (FeatureSpec.encode), got {type(batch).__name__}")
        missing = [s for s in self.spec.slot_names if s not in batch.sparse]
        if missing:
            raise InputError(f"cannot {what}: the batch lacks slots {missing} of the trainer's spec")
        # a single-valued slot's model input is its one row; several IDs would be pooled silently
        multi = [s.name for s in self.spec.sparse if not s.multi_valued and not batch.sparse[s.name].is_single]
        if multi:
            raise InputError(f"cannot {what}: single-valued slots {multi} hold other than one ID per row in the batch "
                             "(declare them multi_valued, or encode the batch with the trainer's spec)")  # fmt: skip
        if batch.dense.shape[1] != len(self.spec.dense):
            raise InputError(f"cannot {what}: the batch has {batch.dense.shape[1]} dense columns, the trainer's spec "
                             f"{len(self.spec.dense)} ({self.spec.dense_names})")  # fmt: skip

    # ---- one step ------------------------------------------------------------------------------
    def step(self, batch: Batch, *, progressive: bool = False) -> StepResult:
        """Train on one batch (event time = its newest example)."""
        self._check("step")
        self._check_batch(batch, "step")
        if batch.labels.shape[1] != len(self.tasks):
            raise ConfigError(f"batch has {batch.labels.shape[1]} label columns, the model has tasks {self.tasks}")
        if batch.size == 0:  # nothing to learn from, and no event time to pull at: a no-op
            return StepResult(float("nan"), np.zeros((0, len(self.tasks)), np.float32))
        finite_labels = batch.labels[np.isfinite(batch.labels)]
        if finite_labels.size and (finite_labels.min() < 0 or finite_labels.max() > 1):
            raise InputError("labels must be in [0, 1] (the loss is binary cross-entropy), got values in "
                             f"[{finite_labels.min():g}, {finite_labels.max():g}]")  # fmt: skip
        t0 = time.perf_counter()
        now = float(batch.event_time.max())
        if not (
            np.isfinite(batch.dense).all() and np.isfinite(batch.labels).all() and np.isfinite(batch.weights).all()
        ):
            # the usual cause of a NaN loss: refuse before the training pull admits any ID
            self.counters.skipped_nonfinite += 1
            return StepResult(float("nan"), np.full((batch.size, len(self.tasks)), np.nan, np.float32), True)
        if self.bias_pending:
            self._init_bias(batch)
        self.model.train()
        pulled = self.sparse.pull(batch, train=True, now=now)
        t_pull = time.perf_counter() - t0
        dense = torch.from_numpy(batch.dense)
        labels = torch.from_numpy(batch.labels)
        logits = self.model(pulled.pooled, dense)  # (B, T)
        if self.config.weighted_loss:
            w = torch.from_numpy(batch.weights)[:, None]  # (B, 1)
            per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (B, T)
            loss = (per * w).sum() / (w.sum().clamp_min(1e-12) * per.shape[1])
        else:
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        probs = torch.sigmoid(logits.detach() + self.logit_offset).numpy()
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return self._skip(probs)
        loss.backward()
        grads = self.sparse.gradients(pulled)
        dense_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.model.parameters())
        # the PS would refuse these too, but only after the dense step below: check first
        if not dense_ok or any(gradient_problem(g) for _, g in grads.values()):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip(probs)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        t1 = time.perf_counter()
        self.ps.push_many(grads, now=now)
        t_push = time.perf_counter() - t1
        c = self.counters
        c.steps += 1
        c.examples += batch.size
        c.pull_push_seconds += t_pull + t_push
        c.step_seconds += time.perf_counter() - t0
        c.last_event_time = max(c.last_event_time, now)
        if progressive:
            self.metrics.update(probs, batch.labels, batch.weights)
        return StepResult(float(loss.detach()), probs)

    def _init_bias(self, batch: Batch) -> None:
        """Set the output bias to the batch's label log-odds, at the first batch that holds a
        negative. A stream joined with ``emit = first_action`` starts with clicks only (their
        negatives come when the window closes): a bias taken from those would start the model
        near p = 1, and it would spend its first hours unlearning it."""
        y = batch.labels  # (B, T)
        if not batch.size or not (y.max(axis=1) == 0).any():
            return
        # the rate the loss sees (weighted or not); predictions add log(r) on top, which recovers
        # the true rate of a sampled stream
        if self.config.weighted_loss:
            w = batch.weights.astype(np.float64)[:, None]
            rate = np.clip((w * y).sum(axis=0) / max(float(w.sum()), 1e-12), 1e-4, 1 - 1e-4)
        else:
            rate = np.clip(y.mean(axis=0), 1e-4, 1 - 1e-4)
        self.model.init_output_bias(torch.from_numpy(np.log(rate / (1 - rate))).float())
        self.bias_pending = False

    def _skip(self, probs: np.ndarray) -> StepResult:
        self.counters.skipped_nonfinite += 1
        return StepResult(float("nan"), probs, skipped=True)

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> np.ndarray:
        """Probabilities ``(B, T)``, log-odds corrected; reads the PS without changing it."""
        self._check("predict")
        self._check_batch(batch, "predict")
        self.model.eval()
        pulled = self.sparse.pull(batch, train=False)
        logits = self.model(pulled.pooled, torch.from_numpy(batch.dense))
        return torch.sigmoid(logits + self.logit_offset).numpy()

    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """AUC, log loss and calibration per task over held-out batches (weighted)."""
        probs, labels, weights = [], [], []
        for b in batches:
            probs.append(self.predict(b))
            labels.append(b.labels)
            weights.append(b.weights)
        if not probs:
            return {}
        p, y, w = np.concatenate(probs), np.concatenate(labels), np.concatenate(weights)
        out: dict[str, float] = {"examples": float(len(w))}
        for j, task in enumerate(self.tasks):
            out[f"{task}/auc"] = weighted_auc(p[:, j], y[:, j], w)
            out[f"{task}/logloss"] = logloss(p[:, j], y[:, j], w)
            out[f"{task}/calibration"] = calibration(p[:, j], y[:, j], w)
        return out

    # ---- loops ---------------------------------------------------------------------------------
    def run(
        self,
        batches: Iterable[Batch],
        *,
        progressive: bool = True,
        on_step: Callable[[Trainer, StepResult], None] | None = None,
        max_steps: int | None = None,
    ) -> Iterator[StepResult]:
        """Train on a stream of batches (finite or not), one step each; yields every step's
        result. The online and the batch stage both use this loop."""
        for i, batch in enumerate(batches):
            if max_steps is not None and i >= max_steps:
                return
            result = self.step(batch, progressive=progressive)
            if on_step is not None:
                on_step(self, result)
            yield result

    def fit(self, dataset, *, epochs: int | None = None, on_step=None) -> None:
        """Batch stage: ``epochs`` passes over a :class:`~freshrec.data.Dataset` (shuffled per the
        config), progressive metrics on."""
        for epoch in range(epochs or self.config.epochs):
            batches = dataset.batches(self.config.batch_size, shuffle=self.config.shuffle,
                                      seed=self.config.seed + epoch)  # fmt: skip
            for _ in self.run(batches, progressive=True, on_step=on_step):
                pass

    def expire(self, now: float) -> dict[str, np.ndarray]:
        self._check("expire")
        return self.ps.expire(now)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path, *, extra: dict | None = None):
        """Write a model directory (PS snapshot, dense weights and optimizer, spec, configs)."""
        from freshrec.train.model_dir import save_model_dir

        self._check("save")
        return save_model_dir(self, path, extra=extra)

    @classmethod
    def load(cls, path, *, ps_config: PSConfig | None = None) -> Trainer:
        """Rebuild a trainer from a model directory, to serve or to continue training."""
        from freshrec.train.model_dir import load_model_dir

        return load_model_dir(path, ps_config=ps_config)

    def close(self) -> None:
        if self.state is TrainerState.CLOSED:
            return
        self.state = TrainerState.CLOSED
        self.ps.close()
