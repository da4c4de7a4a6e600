"""Fp16PS: a serving parameter server that stores embeddings as float16 (the paper's serving
compression), without touching the table kernels.

Each table of width ``D`` is held by an inner :class:`LocalPS` table of width ``H = ceil(D / 2)``
whose float32 words each carry two float16 values: a row is packed with
``x.astype(np.float16).view(np.float32)`` (a zero pads odd ``D``) and unpacked on every pull. The
kernels only copy words, so the bits survive; a packed word is never NaN or Inf, because its high
half is a finite float16 (a float32 is non-finite only when its exponent bits, all in the high
half, are all ones, which makes that half an Inf or NaN float16 itself).

Cost and error: a row's embedding takes ``4 H`` bytes instead of ``4 D`` (rows also carry 12 bytes
of metadata and the index ~16-32 bytes per row, unchanged); a value ``x`` reads back as the
nearest float16, within ``|x| * 2**-11`` for ``|x| >= 2**-14`` and ``2**-25`` below. Values beyond
float16's range (65504) are refused.

Inference only: :meth:`push` and :meth:`drain_changes` raise :class:`StateError`; serving tables
never train, and removals arrive as tombstones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.errors import InputError, StateError
from freshrec.ps import LocalPS, ParameterServer, PSChanges, PSConfig
from freshrec.table import TableConfig, TableExport, TableStats

__all__ = ["Fp16PS", "pack_fp16", "unpack_fp16"]

_FP16_MAX = float(np.finfo(np.float16).max)


def pack_fp16(x: np.ndarray) -> np.ndarray:
    """``(n, D)`` float32 -> ``(n, ceil(D / 2))`` float32 words holding float16 pairs."""
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape
    half = np.zeros((n, d + (d & 1)), np.float16)  # (n, 2H)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        half[:, :d] = x
    if n and not np.isfinite(half).all():
        worst = float(np.abs(x[np.isfinite(x)]).max(initial=0.0))
        raise InputError(f"embeddings must be finite and within float16 range (+-{_FP16_MAX:g}) to be "
                         f"stored as float16; got NaN/Inf or values up to {worst:g}")  # fmt: skip
    return half.view(np.float32)  # (n, H)


def unpack_fp16(words: np.ndarray, dim: int) -> np.ndarray:
    """``(n, H)`` packed words -> ``(n, dim)`` float32."""
    return np.ascontiguousarray(words).view(np.float16)[:, :dim].astype(np.float32)


def _packed_config(cfg: TableConfig) -> TableConfig:
    data = cfg.model_dump()
    data["dim"] = (cfg.dim + 1) // 2
    data["default_value"] = [float(v) for v in pack_fp16(cfg.default_vector()[None, :])[0]]
    return TableConfig.from_dict(data, source=f"float16 config of table {cfg.name!r}")


class Fp16PS(ParameterServer):
    """A :class:`LocalPS` whose tables (``tables``: the logical float32 configs) store float16."""

    def __init__(
        self, tables: Mapping[str, TableConfig] | Iterable[TableConfig], config: PSConfig | None = None
    ) -> None:
        cfgs = dict(tables) if isinstance(tables, Mapping) else {t.name: t for t in tables}
        self._configs = {name: cfg.model_copy(update={"name": name}) for name, cfg in cfgs.items()}
        self._inner = LocalPS({n: _packed_config(c) for n, c in self._configs.items()}, config)

    @property
    def config(self) -> PSConfig:
        return self._inner.config

    @property
    def tables(self) -> dict[str, TableConfig]:
        return dict(self._configs)

    @property
    def inner(self) -> LocalPS:
        """The packed tables (for memory accounting)."""
        return self._inner

    def _dim(self, table: str) -> int:
        if table not in self._configs:
            raise InputError(f"unknown table {table!r}; the parameter server has {sorted(self._configs)}")
        return self._configs[table].dim

    # ---- reads -------------------------------------------------------------------------------
    def pull(
        self, table: str, ids: Any, *, train: bool = False, now: float | None = None, counts: Any | None = None
    ) -> np.ndarray:
        return self.pull_many({table: ids}, train=train, now=now)[table]

    def pull_many(
        self,
        ids: Mapping[str, Any],
        *,
        train: bool = False,
        now: float | None = None,
        counts: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if train:
            raise StateError("cannot pull for training: a float16 serving PS is inference-only")
        words = self._inner.pull_many(ids)
        return {t: unpack_fp16(w, self._dim(t)) for t, w in words.items()}

    def export(self, table: str, ids: Any | None = None) -> TableExport:
        exp = self._inner.export(table, ids)
        emb = unpack_fp16(exp.embeddings, self._dim(table))
        return TableExport(exp.ids, emb, exp.state, exp.last_seen, exp.counts)

    def stats(self) -> dict[str, TableStats]:
        return self._inner.stats()

    # ---- writes (sync) ---------------------------------------------------------------------
    def assign(self, table: str, ids: Any, embeddings: Any, **kwargs: Any) -> None:
        if kwargs.get("state") is not None:
            raise InputError("a float16 serving PS keeps no optimizer state; assign embeddings only")
        emb = np.asarray(embeddings, dtype=np.float32)
        dim = self._dim(table)
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise InputError(f"table {table!r}: embeddings must have shape (n, {dim}), got {emb.shape}")
        self._inner.assign(table, ids, pack_fp16(emb), **kwargs)

    def remove(self, table: str, ids: Any) -> np.ndarray:
        return self._inner.remove(table, ids)

    def expire(self, now: float) -> dict[str, np.ndarray]:
        return self._inner.expire(now)

    def push(self, table: str, ids: Any, grads: Any, *, now: float) -> int:
        raise StateError("cannot push: a float16 serving PS is inference-only")

    def drain_changes(self) -> PSChanges:
        raise StateError("cannot drain changes: a float16 serving PS tracks none")

    # ---- lifecycle -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the packed tables (a :class:`LocalPS` snapshot of width ``ceil(D / 2)``)."""
        return self._inner.save(path)

    def warmup(self) -> None:
        self._inner.warmup()

    def close(self) -> None:
        self._inner.close()
