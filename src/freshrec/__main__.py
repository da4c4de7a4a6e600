"""``python -m freshrec``: the ``freshrec`` command, for an environment whose scripts are not on PATH."""

from freshrec.cli import app

if __name__ == "__main__":  # pragma: no cover - run as python -m freshrec
    app(prog_name="freshrec")
