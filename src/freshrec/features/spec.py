"""The feature spec: a typed declaration of what a model reads, loadable from TOML or YAML.

A spec names the sparse slots (ID features, each backed by a collisionless embedding table),
the dense numeric features (with the transform applied before the model sees them) and the
labels. It is the one place that decides which table a slot uses, so the parameter server
builds its tables from :meth:`FeatureSpec.table_configs` and the trainer encodes data with
:meth:`FeatureSpec.encode`. A TOML file looks like::

    hash_seed = 0
    labels = ["click"]
    table_defaults = { dim = 16, ttl = 86400 }

    [[sparse]]
    name = "user_id"
    admission = { min_count = 2 }          # per-slot table setting: overrides table_defaults

    [[sparse]]
    name = "item_id"
    table = "item"                         # shares table "item" with "clicked_items"

    [[sparse]]
    name = "clicked_items"
    table = "item"
    multi_valued = true
    pooling = "mean"
    max_len = 50                           # keeps the first 50 IDs of a row

    [[dense]]
    name = "price"
    transform = "log1p_standardize"
    fill_missing = 0.0

Table resolution: a slot uses the table named by ``table`` (default: its own name). If
``tables`` declares that name, the slot uses that config and any table setting the slot gives
(``dim``, ``ttl``, ``admission``, ``optimizer``, ``initializer``) must equal it. Otherwise the
table is ``table_defaults`` overlaid with the settings of the slots that use it, which must
agree with each other. A disagreement names both sides: a :class:`ConfigError` from
``from_file``/``from_dict``, pydantic's ``ValidationError`` (a ``ValueError``) when the spec is
built in Python, as for every :class:`~freshrec.config.Config`. A slot
setting of ``None`` means "inherit"; a slot cannot turn off a default ``ttl`` (declare the
table in ``tables`` for that).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from freshrec.config import Config, _describe
from freshrec.errors import ConfigError, DataError
from freshrec.table.config import AdmissionConfig, InitializerConfig, OptimizerConfig, TableConfig

if TYPE_CHECKING:
    from freshrec.features.batch import Batch

__all__ = ["DenseFeature", "FeatureSpec", "SparseSlot"]

# Slot fields that configure the slot's table rather than the slot itself.
TABLE_SETTINGS = ("dim", "ttl", "admission", "optimizer", "initializer")


class SparseSlot(Config):
    """One ID feature: its column in the data is ``name``; its IDs index an embedding table.

    Args:
        name: slot name, also the name of the data column it reads.
        table: the table it uses; default its own name. Slots naming one table share it.
        dim, ttl, admission, optimizer, initializer: this slot's table settings; None inherits
            from the declared table or ``FeatureSpec.table_defaults``.
        multi_valued: each row holds a list of IDs (e.g. genres, recent clicks).
        pooling: how the model reduces a row's embeddings: ``sum`` or ``mean`` (an empty row
            pools to zeros either way).
        max_len: keep at most the first ``max_len`` IDs of a row. Lists are expected with the
            most relevant (for histories: the most recent) first, so truncation drops the tail.
        id_type: what the IDs are, whatever type a source happens to send them as. ``auto``:
            integers are IDs as they are and strings are hashed, so the integer 5 and the string
            ``"5"`` are two IDs. ``int``: every ID is an integer; a string holding one (``"5"``,
            ``" 007"``) is parsed, any other string is an error. ``text``: every ID is text; an
            integer is hashed as its decimal string, so 5 and ``"5"`` are one ID, and CSV files
            keep zero-padded codes (``"00123"``) as written. Declare it when sources disagree
            (a CSV column that pyarrow infers as integers, events sending strings).
    """

    name: str = Field(min_length=1)
    table: str | None = Field(None, min_length=1)
    dim: int | None = Field(None, ge=1, le=4096)
    ttl: float | None = Field(None, gt=0)
    admission: AdmissionConfig | None = None
    optimizer: OptimizerConfig | None = None
    initializer: InitializerConfig | None = None
    multi_valued: bool = False
    pooling: Literal["sum", "mean"] = "sum"
    max_len: int | None = Field(None, ge=1)
    id_type: Literal["auto", "int", "text"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> SparseSlot:
        if self.max_len is not None and not self.multi_valued:
            raise ValueError(f"slot {self.name!r}: max_len applies only to multi_valued slots")
        return self

    @property
    def table_name(self) -> str:
        return self.table or self.name


class DenseFeature(Config):
    """One numeric feature, read from the data column ``name``, transformed to float32.

    Transforms (``x`` after missing values are filled):

    * ``none``: ``x``
    * ``log1p``: ``log(1 + x)``; needs ``x > -1`` (a value <= -1 is a :class:`DataError`)
    * ``standardize``: ``(x - mean) / std``
    * ``log1p_standardize``: ``(log1p(x) - mean) / std``, mean and std of ``log1p(x)``

    Args:
        name: the feature, and the data column it is read from.
        transform: one of the transforms above.
        fill_missing: value for missing (null/NaN) entries; None makes a missing value a
            :class:`DataError` naming the feature.
        mean, std: standardization statistics; given here, or fitted by
            :meth:`FeatureSpec.fit` on training data (only for the standardize transforms).
    """

    name: str = Field(min_length=1)
    transform: Literal["none", "log1p", "standardize", "log1p_standardize"] = "none"
    fill_missing: float | None = None
    mean: float | None = None
    std: float | None = Field(None, gt=0)

    @field_validator("fill_missing", "mean", "std")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not np.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> DenseFeature:
        if not self.standardizes and (self.mean is not None or self.std is not None):
            raise ValueError(f"dense {self.name!r}: mean/std apply only to the standardize transforms")
        return self

    @property
    def standardizes(self) -> bool:
        return self.transform in ("standardize", "log1p_standardize")

    @property
    def needs_fit(self) -> bool:
        return self.standardizes and (self.mean is None or self.std is None)


class FeatureSpec(Config):
    """Everything a model reads: sparse slots, dense features, labels, and their tables.

    Args:
        sparse: the ID slots, in the order batches and models see them.
        dense: the numeric features, in column order of ``Batch.dense``.
        labels: label columns, in column order of ``Batch.labels`` (one or more).
        tables: explicitly declared tables (e.g. one shared by several slots).
        table_defaults: settings for every table not declared in ``tables``; its ``name`` is
            ignored (each table is named after its slot or its ``table``).
        hash_seed: seed of the 64-bit xxhash applied to string IDs (one seed for all slots,
            so a string means the same ID in every slot that shares a table).
    """

    sparse: list[SparseSlot]
    dense: list[DenseFeature] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=lambda: ["label"], min_length=1)
    tables: list[TableConfig] = Field(default_factory=list)
    table_defaults: TableConfig = Field(default_factory=TableConfig)
    hash_seed: int = Field(0, ge=0, lt=2**64)

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if not self.sparse and not self.dense:
            raise ValueError("a feature spec needs at least one sparse slot or dense feature")
        _unique("sparse slot", [s.name for s in self.sparse])
        _unique("dense feature", [d.name for d in self.dense])
        _unique("label", self.labels)
        features = {s.name for s in self.sparse} | {d.name for d in self.dense}
        leaked = [lab for lab in self.labels if lab in features]
        if leaked:
            raise ValueError(f"labels {leaked} are also features (the model would read its own label)")
        self._resolve_tables()
        return self

    # ---- names --------------------------------------------------------------------------------
    @property
    def slot_names(self) -> list[str]:
        return [s.name for s in self.sparse]

    @property
    def dense_names(self) -> list[str]:
        return [d.name for d in self.dense]

    def slot(self, name: str) -> SparseSlot:
        """The slot called ``name``; :class:`ConfigError` naming the known slots if none."""
        for s in self.sparse:
            if s.name == name:
                return s
        raise ConfigError(f"unknown sparse slot {name!r}; the spec has {self.slot_names}")

    def dense_feature(self, name: str) -> DenseFeature:
        for d in self.dense:
            if d.name == name:
                return d
        raise ConfigError(f"unknown dense feature {name!r}; the spec has {self.dense_names}")

    def slot_table(self, slot: str) -> str:
        """The name of the table that ``slot`` reads and writes."""
        return self.slot(slot).table_name

    # ---- tables -------------------------------------------------------------------------------
    def table_configs(self) -> dict[str, TableConfig]:
        """One config per table, named, in order of first use by a slot (fresh copies)."""
        try:
            return self._resolve_tables()
        except ValueError as exc:  # only if a nested config was mutated after validation
            raise ConfigError(str(exc)) from exc

    def _resolve_tables(self) -> dict[str, TableConfig]:
        # Raises ValueError: inside the model validator pydantic reports it as a validation
        # error (ConfigError through from_dict/from_file); table_configs converts it directly.
        declared: dict[str, TableConfig] = {}
        for t in self.tables:
            if t.name in declared:
                raise ValueError(f"table {t.name!r} is declared twice in tables")
            declared[t.name] = t
        users: dict[str, list[SparseSlot]] = {}
        for s in self.sparse:
            users.setdefault(s.table_name, []).append(s)
        unused = [name for name in declared if name not in users]
        if unused:
            raise ValueError(f"tables {unused} are declared but no sparse slot uses them")
        out: dict[str, TableConfig] = {}
        for name, slots in users.items():
            types = {s.id_type for s in slots}
            if len(types) > 1:  # one ID would key two rows of the table: as an integer and as text
                shown = ", ".join(f"{s.name!r} {s.id_type}" for s in slots)
                raise ValueError(f"slots sharing table {name!r} must agree on id_type: {shown}")
            if name in declared:
                out[name] = _declared_table(declared[name], slots)
            else:
                out[name] = self._implied(name, slots)
        return out

    def _implied(self, name: str, slots: list[SparseSlot]) -> TableConfig:
        given: dict[str, tuple[str, Any]] = {}  # setting -> (slot that set it, value)
        for s in slots:
            for key in TABLE_SETTINGS:
                value = getattr(s, key)
                if value is None:
                    continue
                if key in given and given[key][1] != value:
                    other, theirs = given[key]
                    raise ValueError(
                        f"slots {other!r} and {s.name!r} share table {name!r} but disagree on {key}: "
                        f"{_show(theirs)} vs {_show(value)}"
                    )
                given[key] = (s.name, value)
        data = self.table_defaults.model_dump()
        data.update({k: _plain(v) for k, (_, v) in given.items()})
        data["name"] = name
        try:
            return TableConfig.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"table {name!r}: {_describe(exc)}") from exc

    # ---- data -------------------------------------------------------------------------------
    def fit(self, columns: Mapping[str, Any]) -> FeatureSpec:
        """A copy whose standardize features get ``mean``/``std`` from ``columns`` (training
        data). Statistics already given are kept. A constant feature gets ``std = 1`` (it then
        standardizes to 0 instead of dividing by zero)."""
        from freshrec.features._encode import column, dense_raw

        fitted = []
        for feat in self.dense:
            if not feat.needs_fit:
                fitted.append(feat)
                continue
            x = dense_raw(feat, column(columns, feat.name, f"dense feature {feat.name!r}", None), None)
            if x.size == 0:
                raise DataError(f"cannot fit dense feature {feat.name!r} on 0 rows")
            if feat.transform == "log1p_standardize":
                x = np.log1p(x)
            mean = feat.mean if feat.mean is not None else float(x.mean())
            std = feat.std if feat.std is not None else float(x.std())
            fitted.append(feat.model_copy(update={"mean": mean, "std": std if std > 0 else 1.0}))
        out = self.model_copy(deep=True)
        out.dense = fitted
        return out

    def encode(
        self,
        columns: Mapping[str, Any],
        *,
        labels: bool = True,
        weights: Any = None,
        event_time: Any = None,
        source: str | None = None,
    ) -> Batch:
        """Turn data columns into a :class:`Batch`.

        Args:
            columns: a mapping (or Arrow table) from column name to values. Each slot and dense
                feature reads the column of its name; other columns are ignored. Single-valued
                slots take integers or strings (numpy, Python lists, Arrow arrays); multi-valued
                slots take Arrow list arrays, lists of lists, or :class:`Jagged`.
            labels: read the label columns; False (serving) gives ``Batch.labels`` of shape
                ``(B, 0)``.
            weights: sample weights: an array, a column name, or None for 1.0.
            event_time: seconds: an array, a column name (numbers or Arrow timestamps), or
                None for the row number.
            source: a file name to prefix error messages with.

        Raises:
            DataError: a missing column, wrong type, row-count mismatch, null ID, NaN/Inf in a
                dense feature without ``fill_missing``, or a value outside a transform's domain.
            ConfigError: a standardize feature without ``mean``/``std`` (call :meth:`fit`).
        """
        from freshrec.features._encode import encode

        return encode(self, columns, labels=labels, weights=weights, event_time=event_time, source=source)


def _declared_table(table: TableConfig, slots: list[SparseSlot]) -> TableConfig:
    for s in slots:
        for key in TABLE_SETTINGS:
            value = getattr(s, key)
            if value is not None and value != getattr(table, key):
                raise ValueError(
                    f"slot {s.name!r} sets {key}={_show(value)} but its table {table.name!r} has "
                    f"{key}={_show(getattr(table, key))}"
                )
    return table.model_copy(deep=True)


def _unique(what: str, names: list[str]) -> None:
    dupes = sorted(n for n, count in Counter(names).items() if count > 1)
    if dupes:
        raise ValueError(f"{what} names must be unique; repeated: {dupes}")


def _plain(v: Any) -> Any:
    return v.model_dump() if isinstance(v, BaseModel) else v


def _show(v: Any) -> str:
    return repr(v.model_dump()) if isinstance(v, BaseModel) else repr(v)
