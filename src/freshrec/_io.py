"""Crash-safe file primitives: atomic writes, directory swaps and checksums.

Everything freshrec persists (table snapshots, model directories, checkpoints) is written to a
temporary name, fsynced, then renamed into place, so a crash leaves either the old version or
the new one, never a torn mix. Checksums are xxh3-128 (fast enough to verify every load).
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from freshrec.errors import BackendError, CorruptionError, FreshrecError, InputError

__all__ = [
    "atomic_write_bytes",
    "check_replaceable",
    "check_writable_parent",
    "checksum_bytes",
    "checksum_file",
    "fsync_dir",
    "json_safe",
    "malformed_manifest",
    "read_manifest",
    "recover_dir",
    "remove_temps",
    "replace_dir",
    "sqlite_errors",
    "temp_dir_beside",
    "write_durable",
]


def json_safe(x: Any) -> Any:
    """Strict-JSON values: NaN and infinities become null (``json.dumps`` would write ``NaN``
    tokens other parsers reject), numpy scalars and arrays Python values, keys strings, anything
    else its ``str``."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        return json_safe(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


def checksum_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def checksum_file(path: Path, chunk: int = 1 << 24) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes | memoryview) -> None:
    """Write and fsync a file (not atomic by itself: use inside a temp directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, fsync the folder."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write_durable(tmp, data)
        os.replace(tmp, p)
        fsync_dir(p.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BackendError(f"cannot write {p}: {exc}") from exc


@contextlib.contextmanager
def temp_dir_beside(path: Path) -> Iterator[Path]:
    """A fresh hidden directory next to ``path`` (same file system, so rename is atomic);
    removed if the block raises."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temps(root: Path, name_glob: str) -> list[Path]:
    """Remove what :func:`temp_dir_beside` (a whole unfinished copy) or :func:`atomic_write_bytes`
    (a file) left under ``root`` for names matching ``name_glob`` when a writer died mid-write.
    Only for a root with one writer, called before it writes: another writer's work in progress
    would go too."""
    gone = []
    for p in root.glob(f".{name_glob}.tmp-*"):
        _remove(p)
        gone.append(p)
    return gone


def _remove(p: Path) -> None:
    """A folder with what it holds; a file or a link (not its target)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


_ID_CHARS = 8
_OLD_SUFFIX = re.compile(rf"\.old-[0-9a-f]{{{_ID_CHARS}}}")


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished directory ``tmp`` to ``path``, replacing what is there.

    A directory cannot be swapped atomically, so an existing ``path`` is first renamed aside to
    ``.<name>.old-<id>``; a crash between the two renames leaves that complete copy, which
    :func:`recover_dir` finds. Once ``path`` is in place, such copies that earlier saves of it
    left when they died are older than it and go: one would otherwise be loaded as current if
    ``path`` were deleted. (Unfinished ``.<name>.tmp-*`` folders stay: another save of the same
    path may still be writing one.)
    """
    fsync_dir(tmp)
    if os.path.lexists(path):  # a dangling link too: rename() cannot replace a link with a folder
        os.rename(path, path.parent / f".{path.name}.old-{uuid.uuid4().hex[:_ID_CHARS]}")
    os.rename(tmp, path)
    fsync_dir(path.parent)
    # the copy just set aside, and any a crashed save left (a link that pointed at the old
    # version: the link goes, its target stays)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.old-*"):
        if _set_aside_for(stale, path):  # not another name's copy
            _remove(stale)


def check_writable_parent(path: Path) -> None:
    """:class:`InputError` unless ``path`` can be created: its nearest existing ancestor must be a
    directory this process may write (missing folders below it are created when writing)."""
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: {parent} is not a writable directory")


def check_replaceable(path: Path, fmt: str, what: str) -> None:
    """Refuse (:class:`InputError`) to let a save replace ``path`` unless it is absent (and can be
    created), an empty directory, or an earlier ``fmt`` directory: :func:`replace_dir` swaps the
    whole folder, so a mistyped path must not cost anyone their files. Our saves never leave a
    torn manifest in place (the folder is renamed in whole), so an unreadable one is refused too;
    a link to an earlier ``fmt`` directory is replaced by the new directory (its target is kept).
    Its folder must be writable (the new copy is made beside it), and ``.`` or ``..`` are
    refused: a folder is swapped by renaming it, which they cannot be."""
    import json

    if path.name in ("", ".", ".."):
        raise InputError(f"cannot save a {what} as {str(path)!r}: a save renames its folder, which '.', '..' and "
                         "'/' cannot be; name a folder of its own (e.g. ./model)")  # fmt: skip
    check_writable_parent(path)  # before anything is computed: the save would fail only at its end
    if not path.exists():
        return  # a dangling link too: nothing behind it to lose (replace_dir sets it aside)
    if not path.is_dir():
        raise InputError(f"{path} exists and is not a {what}: refusing to replace it (choose another path)")
    try:
        manifest = json.loads((path / "manifest.json").read_bytes())
    except FileNotFoundError:
        if next(path.iterdir(), None) is None:
            return
        raise InputError(
            f"{path} is a folder that is not a {what} (no manifest.json): refusing to replace it "
            "(choose another path, or empty it)"
        ) from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}/manifest.json is unreadable ({exc}): not replacing {path}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(f"{path} holds a {found or 'foreign'} directory, not a {what}: refusing to replace it")


def recover_dir(path: Path) -> Path:
    """``path`` if it exists; else the newest complete copy a crashed :func:`replace_dir` set
    aside (if any); else ``path`` unchanged."""
    if path.exists():
        return path
    aside = [p for p in path.parent.glob(f".{glob.escape(path.name)}.old-*") if _set_aside_for(p, path)]
    aside.sort(key=lambda p: p.stat().st_mtime)
    return aside[-1] if aside else path


def _set_aside_for(copy: Path, path: Path) -> bool:
    """Whether ``copy`` is what :func:`replace_dir` set aside for ``path`` (".m.old-<id>" is
    for "m"; ".m.old-v1.old-<id>" is for "m.old-v1")."""
    return bool(_OLD_SUFFIX.fullmatch(copy.name[len(path.name) + 1 :]))


@contextlib.contextmanager
def malformed_manifest(folder: Path) -> Iterator[None]:
    """Inside, a manifest that parsed but lacks a field or holds one of the wrong type (a
    hand-edited one, another tool's) is a :class:`CorruptionError` naming it; freshrec's own
    errors pass unchanged."""
    try:
        yield
    except FreshrecError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise CorruptionError(f"{folder}/manifest.json is malformed ({type(exc).__name__}: {exc})") from exc


def read_manifest(folder: Path, fmt: str, version: int, what: str) -> dict:
    """``folder/manifest.json``, parsed and checked to be format ``fmt`` at ``version``; any
    problem (missing, torn, foreign, another version) is a :class:`CorruptionError` naming it."""
    import json

    from freshrec.errors import CorruptionError

    try:
        manifest = json.loads((folder / "manifest.json").read_bytes())
    except FileNotFoundError as exc:
        raise CorruptionError(f"{folder} is not a {what} (no manifest.json)") from exc
    except NotADirectoryError as exc:
        raise CorruptionError(f"{folder} is not a {what} (not a directory)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptionError(f"{folder}/manifest.json is not valid JSON (torn write?): {exc}") from exc
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != fmt
        or type(manifest.get("format_version")) is not int  # True == 1, but is not a version
        or manifest["format_version"] != version
    ):
        raise CorruptionError(f"{folder}: not a {fmt} v{version} {what}")
    return manifest


@contextlib.contextmanager
def sqlite_errors(
    name: str, what: str, *, locked: type[FreshrecError] = BackendError, locked_hint: str = ""
) -> Iterator[None]:
    """Translate the sqlite3 errors raised while doing ``what`` to the database ``name`` (e.g.
    ``"event log /x/log.sqlite"``) into ours: a damaged file is a :class:`CorruptionError`, a lock
    held by another process is ``locked`` (the message ends with ``locked_hint``), anything else
    a :class:`BackendError`."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "malformed" in text or "not a database" in text:
            raise CorruptionError(f"{name}: cannot {what}: {text}") from exc
        if "locked" in text or "busy" in text:
            raise locked(f"{name}: cannot {what}: {text}{locked_hint}") from exc
        raise BackendError(f"{name}: cannot {what}: {text}") from exc
    except sqlite3.Error as exc:
        raise BackendError(f"{name}: cannot {what}: {exc}") from exc
