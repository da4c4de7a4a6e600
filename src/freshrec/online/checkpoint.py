"""Checkpoints of the training side: versioned folders, an atomic pointer, the last K kept.

::

    checkpoints/
      LATEST               "ckpt-000042\\n", replaced atomically after the folder is complete
      ckpt-000041/
      ckpt-000042/
        manifest.json      sequence, wall time, examples-topic offsets, schedules, counters,
                           the joiner's input offsets when it checkpointed alongside
        rank/  retrieve/   model directories (PS with optimizer state, dense weights and optimizer)

A folder is written under a temporary name and renamed into place (``_io.replace_dir``); every file
in it is checksummed. A crash mid-write leaves the previous checkpoint intact. Loading tries the
newest first and falls back to older ones when a checkpoint fails its checks, so a corrupt or
torn checkpoint is never loaded, not even in part.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freshrec._faults import crash_point
from freshrec._io import atomic_write_bytes, remove_temps, replace_dir, temp_dir_beside, write_durable
from freshrec.errors import CorruptionError

__all__ = ["CheckpointStore"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"ckpt-(\d{6,})")
MANIFEST = "manifest.json"


class CheckpointStore:
    def __init__(self, root: str | Path, keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)
        # one pipeline per run directory (its joiner's lock refuses a second, before this runs), so
        # an unfinished checkpoint here is a crash's
        for p in remove_temps(self.root, "ckpt-*"):
            log.warning("removed %s, a checkpoint a crash left unfinished", p)
        remove_temps(self.root, "LATEST")  # the pointer's temp files: the pointer itself is whole

    def _all(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.root.iterdir():
            m = _NAME.fullmatch(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def next_seq(self) -> int:
        existing = self._all()
        return existing[-1][0] + 1 if existing else 1

    def write(self, write_models: Callable[[Path], None], manifest: dict[str, Any]) -> Path:
        """Write a checkpoint: ``write_models(folder)`` fills the folder, then the manifest; the
        folder is swapped in whole and LATEST points at it."""
        seq = self.next_seq()
        path = self.root / f"ckpt-{seq:06d}"
        with temp_dir_beside(path) as tmp:
            write_models(tmp)
            crash_point("checkpoint.mid")  # models written, no manifest, not in place yet
            body = {**manifest, "sequence": seq, "written_at": time.time()}
            write_durable(tmp / MANIFEST, json.dumps(body, indent=1, default=float).encode())
            replace_dir(tmp, path)
        atomic_write_bytes(self.root / "LATEST", f"{path.name}\n".encode())
        for _, old in self._all()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def candidates(self) -> list[Path]:
        """Checkpoints to try, newest first (LATEST's target first when it names one)."""
        paths = [p for _, p in reversed(self._all())]
        latest = self.root / "LATEST"
        if latest.is_file():
            name = latest.read_text().strip()
            named = [p for p in paths if p.name == name]
            paths = named + [p for p in paths if p.name != name]
        return paths

    @staticmethod
    def manifest(path: Path) -> dict[str, Any]:
        try:
            return json.loads((path / MANIFEST).read_bytes())
        except FileNotFoundError as exc:
            raise CorruptionError(f"{path} has no {MANIFEST} (torn checkpoint)") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptionError(f"{path}/{MANIFEST} is not valid JSON: {exc}") from exc
