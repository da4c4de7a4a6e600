"""The package imports cleanly, pins its public surface, passes ruff, and its CLI answers."""

from __future__ import annotations

import subprocess
import sys

import freshrec
from freshrec import errors

from .conftest import ROOT


def test_public_surface_is_pinned():
    assert sorted(freshrec.__all__) == sorted(["FreshrecError", "__version__"])


def test_error_tree():
    assert issubclass(errors.InputError, ValueError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.FreshrecError)


def test_every_package_folder_has_a_docstring():
    import importlib
    import pkgutil

    for mod in pkgutil.walk_packages(freshrec.__path__, "freshrec."):
        if mod.ispkg:
            m = importlib.import_module(mod.name)
            assert m.__doc__ and len(m.__doc__.strip()) > 40, f"{mod.name} lacks a docstring"


def test_ruff_is_clean():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests"], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_cli_help():
    res = subprocess.run([sys.executable, "-m", "freshrec.cli", "--help"], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "bench" in res.stdout


def test_python_dash_m_freshrec_is_the_cli():
    """`python -m freshrec` runs the same CLI as the `freshrec` script (a venv whose bin is not on PATH)."""
    res = subprocess.run([sys.executable, "-m", "freshrec", "train", "--help"], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "freshrec train" in res.stdout and "--format" in res.stdout


def test_bench_refuses_an_unwritable_json_path_before_running(tmp_path):
    """--json naming a directory (or a path under a file) is refused at once, not after the run."""
    (tmp_path / "a_file").write_text("x")
    for target in (tmp_path, tmp_path / "a_file" / "out.json"):
        r = subprocess.run([sys.executable, "-m", "freshrec.cli", "bench", "table", "--quick", "--json", str(target)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
        assert r.returncode == 2 and "--json" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "figures" not in r.stdout  # nothing ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
