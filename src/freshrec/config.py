"""Typed configuration: the base class every component config derives from, and file loading.

Every component takes exactly one config object (a pydantic model deriving from
:class:`Config`). Unknown keys are an error, never silently ignored; every default is the
embedded, single-machine one. Configs load from TOML or YAML, and command-line overrides are
dotted paths (``table.dim=64``) applied on top before validation, so a CLI option and a config
key are the same thing.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from freshrec.errors import ConfigError

__all__ = ["Config", "apply_overrides", "load_config", "read_config_file"]

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of all freshrec configs: unknown keys rejected, values validated on assignment, no
    infinite or NaN number anywhere (an ``lr`` of inf once trained every row to -inf). From a
    file or ``from_dict`` a problem is a :class:`ConfigError`; a config built or assigned in
    Python raises pydantic's ``ValidationError`` (both are ValueErrors). A custom ``__init__``
    cannot translate it: pydantic then calls it for every nested config too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _sections_onto_their_defaults(cls, data: Any) -> Any:
        """A nested section given in part (a file's ``[train]`` with one key, ``--set
        train.dense_lr=0.01``) is laid over this config's own default for it, not over the
        section class's defaults: ``OnlineConfig``'s train section defaults to batch 512, and
        setting its learning rate alone must not bring back ``TrainConfig``'s 1024. A section
        naming another ``type`` (another model) starts from that type's defaults."""
        if not isinstance(data, dict):
            return data
        merged = None
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if not isinstance(value, dict) or field.default_factory is None:
                continue
            default = field.default_factory()  # type: ignore[call-arg]
            if not isinstance(default, BaseModel):
                continue
            own = default.model_dump(exclude_unset=True)
            kind = getattr(default, "type", None)
            if kind is not None:
                if value.get("type", kind) != kind:
                    continue
                own["type"] = kind
            if own:
                merged = dict(data) if merged is None else merged
                merged[name] = {**own, **value}
        return data if merged is None else merged

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        """Validate ``data``; any problem becomes one :class:`ConfigError` naming the fields."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid {source}: {_describe(exc)}") from exc

    @classmethod
    def from_file(cls: type[C], path: str | Path, overrides: list[str] | None = None) -> C:
        return load_config(cls, path, overrides)


class FrozenConfig(Config):
    """A config an object takes as its own for life (a table's): read-only, so changing it later
    cannot leave the object and what it saves disagreeing. A changed one, validated:
    ``type(c).from_dict({**c.model_dump(), **changes})``."""

    model_config = ConfigDict(frozen=True)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte {exc.start}: {exc.reason}"
        raise ConfigError(f"config file {p} is not UTF-8 text ({where}); save it as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"config file {p}: cannot read it: {exc.strerror or exc}") from exc
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {p}: unknown format {p.suffix!r} (use .toml or .yaml)")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid {p.suffix[1:]}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    return data


def _parse_value(text: str) -> Any:
    """Parse an override value as a TOML/YAML scalar or list, falling back to the raw string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(
    data: dict[str, Any], overrides: list[str] | None, values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (copied); values parse as YAML scalars.
    ``values`` (dotted key -> value) are set after them as given, unparsed: what a CLI flag typed
    as a path or a number means is not for YAML to reinterpret (``--out "run #2"`` is not
    ``run``, ``--out null`` is a folder named null)."""
    out = json.loads(json.dumps(data))  # deep copy of plain data
    settings = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, _, raw = item.partition("=")
        settings.append((item, key, _parse_value(raw)))
    settings += [(f"{key}={value}", key, value) for key, value in (values or {}).items()]
    for item, key, value in settings:
        parts = [k for k in key.strip().split(".") if k]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        for k in parts[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> C:
    """Build a ``cls`` from an optional file plus dotted overrides (then ``values``, unparsed:
    see :func:`apply_overrides`); defaults fill the rest."""
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, overrides, values)
    return cls.from_dict(data, source=str(path) if path else "config")
