"""The ``freshrec`` command: one typer app, a sub-command per job (see DESIGN.md).

Nothing imports this module. Each command imports its machinery lazily so ``--help`` is fast,
and turns our errors into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from freshrec.errors import FreshrecError

app = typer.Typer(
    name="freshrec",
    help="Real-time recommendation with collisionless embedding tables (the Monolith design).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: print a table and write JSON (--json PATH).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

QuickOpt = Annotated[bool, typer.Option("--quick", help="A short run (under a minute).")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the results to this JSON file.")]


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a FreshrecError into a one-line message on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FreshrecError as exc:
            typer.secho(f"freshrec: {type(exc).__name__}: {exc}", err=True, fg="red")
            sys.exit(2)

    return wrapper


def _finish(report: Any, json_path: Path | None) -> None:
    report.print()
    if json_path is not None:
        written = report.write_json(json_path)
        typer.echo(f"wrote {written}")


@bench_app.command("table")
@_friendly
def bench_table(quick: QuickOpt = False, json_path: JsonOpt = None) -> None:
    """Embedding table: find-or-insert, lookup and sparse step vs dict, numpy.take and torch."""
    from freshrec.bench.table import run

    _finish(run(quick=quick), json_path)


@bench_app.command("joiner")
@_friendly
def bench_joiner(quick: QuickOpt = False, json_path: JsonOpt = None) -> None:
    """Online joiner: simulated impressions and actions through the event log and the joiner,
    vs appending and reading the same events (embedded log, then Kafka on a local broker)."""
    from freshrec.bench.joiner import run

    _finish(run(quick=quick), json_path)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
