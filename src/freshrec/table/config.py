"""Typed configuration of one embedding table: optimizer, initializer, admission, expiry, cap.

A config file section looks like::

    [table]
    name = "item_id"
    dim = 16
    ttl = 86400                       # seconds of event time
    optimizer = { type = "rowwise_adagrad", lr = 0.05 }
    initializer = { type = "normal", std = 0.01 }
    admission = { min_count = 2 }
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from freshrec.config import FrozenConfig
from freshrec.table import _kernels as K

__all__ = [
    "FTRL",
    "SGD",
    "Adagrad",
    "Adam",
    "AdmissionConfig",
    "InitializerConfig",
    "OptimizerConfig",
    "RowwiseAdagrad",
    "TableConfig",
]


class SGD(FrozenConfig):
    """Plain SGD, with optional (lazy, per-row) momentum, as ``torch.optim.SGD``.

    Args:
        lr: learning rate.
        momentum: momentum factor (0 = none; > 0 keeps ``dim`` floats of state per row).
        weight_decay: L2 penalty added to the gradient.
        nesterov: Nesterov momentum.
    """

    type: Literal["sgd"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    nesterov: bool = False

    def state_width(self, dim: int) -> int:
        return dim if self.momentum > 0 else 0

    def kernel_params(self) -> tuple[int, np.ndarray]:
        return K.OPT_SGD, _hp(self.lr, self.momentum, self.weight_decay, float(self.nesterov))

    def state_init(self) -> float:
        return 0.0


class Adagrad(FrozenConfig):
    """Per-coordinate Adagrad, as ``torch.optim.Adagrad`` (lr_decay fixed at 0).

    Args:
        lr: learning rate.
        eps: added to the root of the accumulator.
        weight_decay: L2 penalty added to the gradient.
        initial_accumulator_value: a new row's accumulator.
    """

    type: Literal["adagrad"] = "adagrad"
    lr: float = Field(0.05, gt=0)
    eps: float = Field(1e-10, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    initial_accumulator_value: float = Field(0.0, ge=0)

    def state_width(self, dim: int) -> int:
        return dim

    def kernel_params(self) -> tuple[int, np.ndarray]:
        return K.OPT_ADAGRAD, _hp(self.lr, self.eps, self.weight_decay)

    def state_init(self) -> float:
        return self.initial_accumulator_value


class RowwiseAdagrad(FrozenConfig):
    """Row-wise Adagrad (one accumulator per row: mean of g^2), as FBGEMM/TorchRec use for large
    tables: one float of state per row instead of ``dim``.

    Args:
        lr: learning rate.
        eps: added to the root of the accumulator.
        weight_decay: L2 penalty added to the gradient.
        initial_accumulator_value: a new row's accumulator.
    """

    type: Literal["rowwise_adagrad"] = "rowwise_adagrad"
    lr: float = Field(0.05, gt=0)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    initial_accumulator_value: float = Field(0.0, ge=0)

    def state_width(self, dim: int) -> int:
        return 1

    def kernel_params(self) -> tuple[int, np.ndarray]:
        return K.OPT_ROWWISE_ADAGRAD, _hp(self.lr, self.eps, self.weight_decay)

    def state_init(self) -> float:
        return self.initial_accumulator_value


class Adam(FrozenConfig):
    """Adam, as ``torch.optim.Adam``; bias correction counts this row's own steps (lazy Adam),
    which equals torch's global step when every row is updated every step.

    Args:
        lr: learning rate.
        beta1, beta2: decay rates of the first and second moment estimates.
        eps: added to the root of the second moment.
        weight_decay: L2 penalty added to the gradient.
    """

    type: Literal["adam"] = "adam"
    lr: float = Field(0.001, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)

    def state_width(self, dim: int) -> int:
        return 2 * dim + 1  # m, v, and this row's step count

    def kernel_params(self) -> tuple[int, np.ndarray]:
        return K.OPT_ADAM, _hp(self.lr, self.beta1, self.beta2, self.eps, self.weight_decay)

    def state_init(self) -> float:
        return 0.0


class FTRL(FrozenConfig):
    """FTRL-Proximal (McMahan et al. 2013), per coordinate. The embedding is the closed-form
    weight of the accumulators ``z`` and ``n``; as in TensorFlow's FTRL, the first update
    replaces the initial value.

    Args:
        alpha: learning rate.
        beta: smoothing of the per-coordinate learning rate.
        l1: L1 regularisation (drives coordinates to exactly 0).
        l2: L2 regularisation.
    """

    type: Literal["ftrl"] = "ftrl"
    alpha: float = Field(0.05, gt=0)
    beta: float = Field(1.0, ge=0)
    l1: float = Field(0.0, ge=0)
    l2: float = Field(0.0, ge=0)

    def state_width(self, dim: int) -> int:
        return 2 * dim  # z, n

    def kernel_params(self) -> tuple[int, np.ndarray]:
        return K.OPT_FTRL, _hp(self.alpha, self.beta, self.l1, self.l2)

    def state_init(self) -> float:
        return 0.0


OptimizerConfig = Annotated[SGD | Adagrad | RowwiseAdagrad | Adam | FTRL, Field(discriminator="type")]


def state_problem(opt: SGD | Adagrad | RowwiseAdagrad | Adam | FTRL, state: np.ndarray, dim: int) -> str | None:
    """Why rows of optimizer state ``(n, state_width)`` given to ``assign`` cannot be stepped
    from, or None: accumulators of squares (Adagrad's, Adam's v, FTRL's n) below 0, or an Adam
    step count that is not a whole number >= 0 (the next step would make the row NaN)."""
    if isinstance(opt, Adagrad | RowwiseAdagrad):
        squares, what = state, "accumulators"
    elif isinstance(opt, Adam):
        squares, what = state[:, dim:], "second moments and step counts"
        steps = state[:, 2 * dim]
        if steps.size and not (steps == np.floor(steps)).all():
            return "Adam step counts (the last state column) must be whole numbers"
    elif isinstance(opt, FTRL):
        squares, what = state[:, dim:], "n accumulators"
    else:
        return None
    if squares.size and squares.min() < 0:
        return f"{type(opt).__name__} {what} must be >= 0, got {float(squares.min()):g}"
    return None


def _hp(*values: float) -> np.ndarray:
    hp = np.zeros(8, np.float64)
    hp[: len(values)] = values
    return hp


class InitializerConfig(FrozenConfig):
    """How a new row's embedding starts. Deterministic per (table seed, ID), so a re-admitted
    or rebuilt row is reproducible.

    Args:
        low, high: the range of ``uniform``.
        mean, std: the centre and spread of ``normal`` and ``truncated_normal``.
        type: ``zeros``; ``uniform`` in [low, high); ``normal`` (mean, std); or
            ``truncated_normal`` (mean, std, redrawn beyond 2 std: TensorFlow's and BERT's usual
            embedding initializer). Truncated normal is the default: it needs no log, and a row
            of 64 values starts in ~90 ns, against ~190 ns for exact normal (a log per ~20
            values) and ~35 ns for uniform.
    """

    type: Literal["zeros", "uniform", "normal", "truncated_normal"] = "truncated_normal"
    low: float = -0.05
    high: float = 0.05
    mean: float = 0.0
    std: float = Field(0.01, ge=0)  # small, as DLRM/DeepCTR do: FM interactions start near 0

    @model_validator(mode="after")
    def _check_range(self) -> InitializerConfig:
        if self.type == "uniform" and not self.low < self.high:
            raise ValueError(f"uniform initializer needs low < high, got {self.low}, {self.high}")
        return self

    def kernel_params(self) -> tuple[int, float, float]:
        if self.type == "zeros":
            return K.INIT_ZEROS, 0.0, 0.0
        if self.type == "uniform":
            return K.INIT_UNIFORM, self.low, self.high
        if self.type == "normal":
            return K.INIT_NORMAL, self.mean, self.std
        return K.INIT_TRUNCATED_NORMAL, self.mean, self.std


class AdmissionConfig(FrozenConfig):
    """The frequency filter: which unseen IDs get a row (the paper's "feature filtering").

    Args:
        min_count: an ID gets a row at its ``min_count``-th occurrence (1 = at once), provided
            those occurrences fall within one window of ``sketch_decay_every`` unadmitted
            occurrences (all history with decay off). Counts live in a count-min sketch
            (conservative update), so memory is bounded; the sketch may over-count, admitting
            an ID early, never late within the window. With ``n`` distinct unadmitted IDs in a
            generation, a first occurrence is admitted early with probability about
            ``(1 - exp(-n / sketch_width)) ** sketch_depth`` per generation (docs/table.md).
        admit_probability: each occurrence that passes ``min_count`` is admitted with this
            probability (the paper's probabilistic filter); 1 = always.
        sketch_width: counters per sketch row (a power of two). Memory: 2 generations x
            ``sketch_depth`` x ``sketch_width`` x 4 bytes (16 MiB by default), only when
            ``min_count`` > 1.
        sketch_depth: sketch rows (independent hashes).
        sketch_decay_every: the window, in unadmitted occurrences (sketch increments): counts
            are kept in two generations, and after this many increments the current one
            becomes the previous and the previous is dropped. So occurrences are counted in
            full for at least this many increments and forgotten after twice as many, and the
            sketch never fills up. 0 = never forget (all history; early admissions grow with
            the number of distinct IDs ever seen). Default ``sketch_width // 4`` (or
            ``min_count`` if larger): at most ``sketch_width // 4`` distinct IDs per generation,
            an early admission below ~0.5%. In a sharded PS each shard keeps its share of the
            window, counted in its own unadmitted occurrences, and the guarantee holds per shard.
    """

    min_count: int = Field(1, ge=1, le=2**32 - 2)
    admit_probability: float = Field(1.0, gt=0, le=1)
    sketch_width: int = Field(1 << 19, ge=16)
    sketch_depth: int = Field(4, ge=1, le=16)
    sketch_decay_every: int | None = Field(None, ge=0)

    @field_validator("sketch_width")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"sketch_width must be a power of two, got {v}")
        return v

    @property
    def decay_every(self) -> int:
        if self.sketch_decay_every is None:
            return max(self.sketch_width // 4, self.min_count)
        return self.sketch_decay_every

    @model_validator(mode="after")
    def _reachable(self) -> AdmissionConfig:
        if self.min_count > 1 and 0 < self.decay_every < self.min_count:
            raise ValueError(
                f"min_count {self.min_count} can never be reached: the admission sketch forgets "
                f"occurrences after a window of {self.decay_every} (sketch_decay_every); raise "
                "sketch_decay_every to at least min_count, or set it 0"
            )
        return self


class TableConfig(FrozenConfig):
    """One collisionless embedding table.

    Args:
        name: the table's name (a feature slot, or a table shared by several slots).
        dim: embedding width.
        optimizer: per-row optimizer; its state lives in the row.
        initializer: how new rows start.
        admission: the frequency filter for unseen IDs.
        ttl: seconds of event time a row may go unseen before :meth:`expire` removes it;
            None = rows never expire.
        max_rows: optional memory cap; when full, ``eviction`` frees ``evict_fraction`` of it.
        eviction: ``lru`` (oldest last-seen first) or ``lfu`` (fewest occurrences first, then
            oldest).
        evict_fraction: share of ``max_rows`` freed per eviction round (one scan frees many rows).
        default_value: what a filtered or unknown ID reads (a scalar or ``dim`` values).
        seed: seeds the initializer, the sketch hashes and the admission RNG.
        track_changes: record touched and removed IDs for train->serve sync; serving tables
            turn it off.
        huge_pages: transparent huge pages for rows and index. ``"auto"`` (the default):
            for the index, and for rows past a table's first 32 MiB, so a small table keeps
            4 KiB pages (a touched huge page holds 2 MiB; with the OS's THP mode ``always``
            the OS decides alone). Measured on our VMs: random lookups 1-19% faster, memory
            made resident 6-8x faster. False: 4 KiB pages only (a host that stalls compacting
            memory for them); True: everywhere. A kernel without THP just gets 4 KiB pages.
        expected_rows: pre-size the table at creation for this many live rows: the index gets
            its slots and the rows' memory (embedding, optimizer state, 12 bytes of metadata)
            is made resident at once, so admissions up to that size pay no growth and no page
            faults (as HierarchicalKV's ``init_capacity``; at most ``max_rows`` of them).
            Growth past it stays automatic.
            An overestimate costs that memory all the same (the index alone 16-24 bytes per
            expected row). None = start small and grow.
    """

    name: str = "table"
    dim: int = Field(16, ge=1, le=4096)
    optimizer: OptimizerConfig = Field(default_factory=RowwiseAdagrad)
    initializer: InitializerConfig = Field(default_factory=InitializerConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    ttl: float | None = Field(None, gt=0)
    max_rows: int | None = Field(None, ge=1)
    eviction: Literal["lru", "lfu"] = "lru"
    evict_fraction: float = Field(0.01, gt=0, le=1)  # batch evictions: one scan frees many rows
    default_value: float | tuple[float, ...] = 0.0  # a tuple: a frozen config's list could still change
    seed: int = Field(0, ge=0, lt=2**63)
    track_changes: bool = True
    huge_pages: bool | Literal["auto"] = "auto"
    expected_rows: int | None = Field(None, ge=1, le=2**31 - 2)

    @model_validator(mode="after")
    def _check_default(self) -> TableConfig:
        if isinstance(self.default_value, tuple) and len(self.default_value) != self.dim:
            raise ValueError(f"default_value has {len(self.default_value)} values, the table's dim is {self.dim}")
        return self

    @property
    def state_width(self) -> int:
        return self.optimizer.state_width(self.dim)

    def default_vector(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.default_value, np.float32), (self.dim,)).copy()
