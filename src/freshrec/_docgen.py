"""The configuration reference (docs/configuration.md), generated from the typed configs.

Every field with its type and default, and the explanation from the class docstring's ``Args:``
block, so the reference cannot drift from the code: ``tests/test_docs.py`` fails when the file
differs from what :func:`render` produces. Regenerate with ``python -m freshrec._docgen``.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

__all__ = ["SECTIONS", "render"]


def _sections() -> list[tuple[str, str, list[type[BaseModel]]]]:
    from freshrec.data import ColumnMapping
    from freshrec.demo import DemoConfig
    from freshrec.features import DenseFeature, FeatureSpec, SparseSlot
    from freshrec.joiner import JoinerConfig
    from freshrec.models import DCNConfig, DeepFMConfig, FMConfig, LRConfig, TwoTowerConfig
    from freshrec.online import OnlineConfig
    from freshrec.ps import PSConfig
    from freshrec.serve import ServeConfig
    from freshrec.serve.config import ArmConfig, ArmSyncConfig, TopicsConfig
    from freshrec.sim import SimConfig
    from freshrec.stream import LogConfig
    from freshrec.sync import SyncConfig
    from freshrec.table import FTRL, SGD, Adagrad, Adam, AdmissionConfig, InitializerConfig, RowwiseAdagrad, TableConfig
    from freshrec.train import TrainConfig
    from freshrec.train.job import DataSource, TrainJobConfig

    return [
        ("freshrec demo", "`freshrec demo --config FILE --set key=value`", [DemoConfig]),
        ("freshrec online", "`freshrec online --config FILE --set key=value`", [OnlineConfig]),
        ("freshrec serve", "`freshrec serve --config FILE --set key=value`",
         [ServeConfig, ArmConfig, ArmSyncConfig, TopicsConfig]),
        ("freshrec train", "`freshrec train --config FILE --set key=value`",
         [TrainJobConfig, DataSource, ColumnMapping]),
        ("Features", "the `spec` section of the configs above", [FeatureSpec, SparseSlot, DenseFeature]),
        ("Tables", "`tables` / `table_defaults` of a feature spec",
         [TableConfig, AdmissionConfig, InitializerConfig, SGD, Adagrad, RowwiseAdagrad, Adam, FTRL]),
        ("Models", "`model` / `rank_model` / `retrieval_model`",
         [DeepFMConfig, DCNConfig, FMConfig, LRConfig, TwoTowerConfig]),
        ("Trainer and parameter server", "`train`, `ps`", [TrainConfig, PSConfig]),
        ("Event log", "`log`", [LogConfig]),
        ("Joiner", "`joiner`", [JoinerConfig]),
        ("Sync", "`sync`", [SyncConfig]),
        ("Simulator", "`sim` (demo) or `SimConfig.from_file`", [SimConfig]),
    ]  # fmt: skip


SECTIONS = _sections


def _args(cls: type) -> dict[str, str]:
    """Field -> explanation, from the ``Args:`` block of the class docstring (``a / b:`` and
    ``a, b:`` name several fields at once)."""
    doc = inspect.getdoc(cls) or ""
    parts = re.split(r"^Args\b[^:\n]*:\s*$", doc, maxsplit=1, flags=re.M)
    if len(parts) < 2:
        return {}
    block = parts[1]
    out: dict[str, str] = {}
    current: list[str] = []
    for line in block.splitlines():
        m = re.match(r"^\s{0,8}([A-Za-z_][\w ,/]*?):\s*(.*)$", line)
        if m and not line.startswith(" " * 12):
            names = [n.strip() for n in re.split(r"[,/]", m.group(1)) if n.strip()]
            current = names
            for n in names:
                out[n] = m.group(2).strip()
        elif line.strip() and current:
            for n in current:
                out[n] = (out[n] + " " + line.strip()).strip()
        elif not line.strip():
            continue
    return out


def _type(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None)
    text = str(annotation) if name is None or typing.get_args(annotation) else name  # keep the arguments
    text = re.sub(r"typing\.|pathlib\.|freshrec\.[\w.]+\.", "", text)
    text = text.replace("NoneType", "None").replace("PosixPath", "Path")
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(derived)"
    else:
        return "**required**"
    if isinstance(value, BaseModel):  # and what this config sets differently (a part given keeps it)
        own = ", ".join(f"{k}={v!r}" for k, v in value.model_dump(exclude_unset=True).items())
        text = f"`{type(value).__name__}` defaults" + (f", `{own}`" if own else "")
        return text.replace("|", "\\|")
    text = repr(value) if not isinstance(value, Path) else f"'{value}'"
    text = text if len(text) < 60 else f"{text[:57]}..."
    return f"`{text}`".replace("|", "\\|")  # a bare | would end the table cell


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the typed configs (`python -m freshrec._docgen`); a test keeps it current.",
        "Every config loads from TOML or YAML (`--config FILE`); any field can be overridden on the",
        "command line with a dotted path (`--set train.dense_lr=0.003`). Unknown keys are errors.",
        "A section given in part in a file or with `--set` keeps its config's own defaults for the",
        "rest (`--set train.dense_lr=0.003` on `freshrec online` keeps its batch size of 512); a",
        "section whose default is None (`retrieval_model`) starts from its class's defaults.",
        "Relative paths (`run_dir`, `log.path`, `model_dir`, ...) are taken from the working",
        "directory of the process, not from the config file's folder: write absolute paths in files",
        "that services run from anywhere.",
        "",
    ]
    for title, how, classes in _sections():
        lines += [f"## {title}", "", f"Set through {how}.", ""]
        for cls in classes:
            args = _args(cls)
            lines += [f"### `{cls.__name__}`", ""]
            summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
            if summary:
                lines += [summary, ""]
            lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
            for name, field in cls.model_fields.items():
                meaning = args.get(name, field.description or "")
                if not meaning and name == "type":
                    meaning = f"selects this class (`{field.default}`)"
                meaning = meaning.replace("|", "\\|")
                lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {meaning} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/configuration.md")
    target.write_text(render())
    print(f"wrote {target}")
