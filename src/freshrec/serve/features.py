"""Request features -> the columns a model's :class:`FeatureSpec` reads, named as in training.

A request carries the user's id and features, the context (hour, device, ...) and, per
candidate, an item id and the item's features. Training examples come from the joiner, which
flattens an impression's three feature dicts into one (``joiner/example.py``); serving must
build the same names or a model reads the wrong columns. The rule, per candidate:

* ``user_id`` and ``item_id`` are columns of their own (the ids), and ``position`` is 0 (a
  model that learned a position bias scores every candidate as if shown on top);
* the user, item and context features are merged as they are; a name that appears in more than
  one of the three dicts, or that is a reserved column or a label, is prefixed with its source
  (``user_``, ``item_``, ``context_``) in every dict that has it.

Columns are built once per request, not per candidate where it can be helped: a user or context
feature is broadcast and only the candidates' own features are gathered row by row. IDs are
hashed by ``FeatureSpec.encode``, as in training (a column mixing integers and strings value by
value, under each slot's ``id_type``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from freshrec.errors import InputError, SchemaError
from freshrec.features import Batch, FeatureSpec
from freshrec.joiner.example import RESERVED_COLUMNS as _JOINER_RESERVED
from freshrec.joiner.example import merge_features
from freshrec.stream.events import ACTION_TYPES

__all__ = ["RESERVED_COLUMNS", "ColumnBuilder", "Missing", "merge_features"]

# The joiner's naming rule is the contract between training and serving: use it, don't restate it.
RESERVED_COLUMNS: frozenset[str] = frozenset(_JOINER_RESERVED)
_IDS = ("user_id", "item_id", "position")


@dataclass(frozen=True)
class Missing:
    """A feature the model reads that some rows lack: its name, what reads it, the rows."""

    name: str
    what: str  # "sparse slot 'category'" / "dense feature 'price'"
    rows: np.ndarray  # (m,) int64 row indices (candidates)


class ColumnBuilder:
    """Builds a spec's columns for one user and N candidates (see the module docstring).

    Args:
        spec: the model's feature spec.
        only: the feature names that matter (e.g. one tower of a two-tower model); the others
            get placeholder values (ID 0, empty lists, 0.0) so ``encode`` has every column.
    """

    def __init__(self, spec: FeatureSpec, only: Sequence[str] | None = None) -> None:
        self.spec = spec
        self.reserved = RESERVED_COLUMNS | frozenset(ACTION_TYPES) | frozenset(spec.labels)
        keep = set(spec.slot_names) | set(spec.dense_names) if only is None else set(only)
        self.single = [s.name for s in spec.sparse if not s.multi_valued and s.name in keep]
        self.multi = [s.name for s in spec.sparse if s.multi_valued and s.name in keep]
        self.dense = [d.name for d in spec.dense if d.name in keep]
        self.fill = {d.name: d.fill_missing for d in spec.dense}
        self.placeholders = {
            "single": [s.name for s in spec.sparse if not s.multi_valued and s.name not in keep],
            "multi": [s.name for s in spec.sparse if s.multi_valued and s.name not in keep],
            "dense": [d.name for d in spec.dense if d.name not in keep],
        }

    @property
    def names(self) -> list[str]:
        return self.single + self.multi + self.dense

    def raw(
        self,
        user_id: Any,
        user: Mapping[str, Any],
        context: Mapping[str, Any],
        item_ids: Sequence[Any],
        items: Sequence[Mapping[str, Any]],
    ) -> tuple[dict[str, list[Any] | np.ndarray], list[Missing]]:
        """Raw columns (values as sent, ``None`` where a row lacks a feature) and what is missing.

        A missing multi-valued slot is an empty list and a missing dense feature with
        ``fill_missing`` is filled, so neither is reported."""
        n = len(item_ids)
        item_keys = set(chain.from_iterable(items))
        cols: dict[str, list[Any] | np.ndarray] = {}
        if not self._clash(user, context, item_keys):  # the common case: broadcast user and context, gather the rest
            for name in self.names:
                if name in user:
                    cols[name] = [user[name]] * n
                elif name in context:
                    cols[name] = [context[name]] * n
                elif name in item_keys:
                    cols[name] = [f.get(name) for f in items]
                elif name not in _IDS:
                    cols[name] = [None] * n
        else:
            merged = [merge_features(user, f, context, self.reserved) for f in items]
            cols.update({name: [m.get(name) for m in merged] for name in self.names if name not in _IDS})
        ids = {"user_id": [user_id] * n, "item_id": list(item_ids), "position": [0] * n}
        cols.update({name: values for name, values in ids.items() if name in self.names})
        missing: list[Missing] = []
        for name in self.single:
            rows = _none_rows(cols[name])
            if rows.size:
                missing.append(Missing(name, f"sparse slot {name!r}", rows))
        for name in self.dense:
            rows = _none_rows(cols[name])
            if rows.size and self.fill[name] is None:
                missing.append(Missing(name, f"dense feature {name!r}", rows))
        return cols, missing

    def _clash(self, user: Mapping[str, Any], context: Mapping[str, Any], item_keys: set[str]) -> bool:
        """Some name needs a prefix (it is in two of the dicts, or reserved)."""
        u, c = user.keys(), context.keys()
        return bool((u & c) or (u & item_keys) or (c & item_keys) or not self.reserved.isdisjoint(u | c | item_keys))

    def ambiguous(
        self, user: Mapping[str, Any], context: Mapping[str, Any], items: Sequence[Mapping[str, Any]]
    ) -> list[tuple[int, SchemaError]]:
        """The rows whose names are still ambiguous after prefixing (e.g. an item with both
        ``segment`` and ``user_segment`` beside a user's ``segment``), each with the error
        :meth:`raw` would raise for it. Catalog items are left out rather than fail a request."""
        if not self._clash(user, context, set(chain.from_iterable(items))):
            return []
        bad = []
        for i, f in enumerate(items):
            try:
                merge_features(user, f, context, self.reserved)
            except SchemaError as exc:
                bad.append((i, exc))
        return bad

    def encode(self, cols: Mapping[str, list[Any] | np.ndarray], n: int) -> Batch:
        """The batch of rows whose columns are ``cols`` (raw, as :meth:`raw` made them, with no
        missing single-valued slot left). Bad values raise :class:`InputError` naming the feature."""
        out: dict[str, Any] = {}
        for name in self.single:
            out[name] = cols[name]
        for name in self.multi:
            out[name] = [v if v is not None else [] for v in cols[name]]
        for name in self.dense:
            out[name] = dense_column(cols[name], name)
        for name in self.placeholders["single"]:
            out[name] = np.zeros(n, np.int64)
        for name in self.placeholders["multi"]:
            out[name] = [[]] * n
        for name in self.placeholders["dense"]:
            out[name] = np.zeros(n, np.float64)
        return self.spec.encode(out, labels=False, event_time=np.zeros(n))


def _none_rows(values: list[Any] | np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return np.zeros(0, np.int64)
    return np.fromiter((i for i, v in enumerate(values) if v is None), np.int64)


def dense_column(values: list[Any] | np.ndarray, name: str) -> np.ndarray:
    """Numbers as float64, ``None`` as NaN (``encode`` fills it or names it). A string is refused
    even if it reads as a number (``"12.5"``): training refuses it, so serving must not score it."""
    if isinstance(values, np.ndarray):
        return values
    bad = next((i for i, v in enumerate(values) if v is not None and type(v) not in (int, float, bool)), None)
    if bad is None:
        return np.array(values, np.float64)
    raise InputError(
        f"feature {name!r} is a dense feature and needs numbers; row {bad} has {type(values[bad]).__name__} "
        f"{values[bad]!r}"
    )
