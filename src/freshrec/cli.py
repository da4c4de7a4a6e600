"""The ``freshrec`` command: one typer app, a sub-command per job (see ``../shared/DESIGN.md``).

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


def _json_target(path: Path | None) -> Path | None:
    """Refuse a --json path that cannot be written before the benchmark runs, not after."""
    if path is None:
        return None
    from freshrec._io import check_writable_parent

    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory; give a file name, e.g. {path / 'bench.json'}")
    try:
        check_writable_parent(path)
    except FreshrecError as exc:
        raise typer.BadParameter(str(exc)) from None
    return path


JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write the results to this JSON file.", callback=_json_target)
]


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


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


@bench_app.command("train")
@_friendly
def bench_train(quick: QuickOpt = False, json_path: JsonOpt = None) -> None:
    """Trainer: DeepFM on 26 collisionless slots vs the same model on torch EmbeddingBag."""
    from freshrec.bench.train import run

    _finish(run(quick=quick), json_path)


@bench_app.command("joiner")
@_friendly
def bench_joiner(quick: QuickOpt = False, json_path: JsonOpt = None) -> None:
    """Online joiner: simulated impressions and actions through the event log and the joiner,
    vs appending and reading the same events (embedded log, then Kafka on a local broker)."""
    from freshrec.bench.joiner import run

    _finish(run(quick=quick), json_path)


@bench_app.command("serve")
@_friendly
def bench_serve(
    quick: QuickOpt = False,
    json_path: JsonOpt = None,
    rate: Annotated[float, typer.Option(help="Requests per second the load generator sends.")] = 200.0,
    client: Annotated[str, typer.Option(help="Load generator client: raw (asyncio streams) or httpx.")] = "raw",
    gil_switch_ms: Annotated[
        float | None, typer.Option(help="The server's gil_switch_interval_ms (default: ServeConfig's).")
    ] = None,
    runs: Annotated[
        int | None,
        typer.Option(help="Load runs against one server; the headline is the worst (default 1 with --quick, else 3)."),
    ] = None,
) -> None:
    """Serving: /v1/rank p50/p99 at a fixed rate while deltas land every second; freshness."""
    from freshrec.bench.serve import run

    _finish(run(quick=quick, rate=rate, client=client, gil_switch_ms=gil_switch_ms, runs=runs), json_path)


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config field: --set train.dense_lr=0.01 (repeatable)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="A TOML or YAML config file.")]


@app.command("train")
@_friendly
def train(
    data: Annotated[
        str | None,
        typer.Option(help="Data file or folder (default: the format's set under $FRESHREC_DATA or ../shared/data)."),
    ] = None,
    format: Annotated[str | None, typer.Option("--format", help="movielens | criteo | open_bandit | table.")] = None,
    model: Annotated[str | None, typer.Option(help="deepfm | dcn | fm | lr | two_tower.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training split.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the model directory here.")] = None,
    baselines: Annotated[
        bool | None,
        typer.Option("--baselines/--no-baselines", help="Also train LR and score item popularity (default: yes)."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Batch training from files: the model beside LR and item popularity, on a time split."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from freshrec.config import load_config
    from freshrec.train.job import TrainJobConfig, run_train_job

    flags = {"data.path": _text(data), "data.format": format, "train.epochs": epochs, "train.batch_size": batch_size,
             "out": _text(out), "model.type": model, "baselines": baselines}  # fmt: skip
    values = {key: value for key, value in flags.items() if value is not None}  # a flag not given leaves --set's
    job = load_config(TrainJobConfig, config, list(set_ or []), values)
    console = Console()
    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:  # fmt: skip

        def on_step(name: str, step: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"training {name}", total=total)
            progress.update(tasks[name], completed=step)

        result = run_train_job(job, on_step=on_step)
    dropped = f"; {result.duplicates_dropped:,} exact repeats dropped" if result.duplicates_dropped else ""
    table = Table(title=f"held-out metrics ({result.test_examples:,} newest examples; "
                        f"trained on {result.train_examples:,}{dropped})", title_justify="left")  # fmt: skip
    for col in ("model", "AUC", "logloss", "calibration", "seconds"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in result.rows:
        table.add_row(str(row["model"]), f"{row['auc']:.4f}", f"{row['logloss']:.4f}",
                      f"{row['calibration']:.3f}", f"{row['seconds']:.1f}")  # fmt: skip
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    if result.out is not None:
        console.print(f"model directory: {result.out}")


@app.command("evaluate")
@_friendly
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="A model directory written by freshrec train (--out).")],
    data: Annotated[
        str | None,
        typer.Option(help="Data file or folder (default: the format's set under $FRESHREC_DATA or ../shared/data)."),
    ] = None,
    format: Annotated[str | None, typer.Option("--format", help="movielens | criteo | open_bandit | table.")] = None,
    held_out: Annotated[
        bool,
        typer.Option("--held-out", help="Only the newest data.test_fraction: the split freshrec train held out."),
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="The train config (TOML or YAML): its data section is read.")
    ] = None,
    set_: SetOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Score a saved model on a data file, per task: AUC, log loss, calibration."""
    import json

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from freshrec._io import atomic_write_bytes, json_safe
    from freshrec.config import load_config
    from freshrec.train.evaluate import evaluate_model
    from freshrec.train.job import TrainJobConfig

    flags = {"data.path": _text(data), "data.format": format}
    job = load_config(TrainJobConfig, config, list(set_ or []), {k: v for k, v in flags.items() if v is not None})
    result = evaluate_model(model_dir, job.data, spec=job.spec, held_out=held_out)
    console = Console()
    what = "the newest " + f"{job.data.test_fraction:g} of it (held out)" if held_out else "all of it"
    table = Table(title=f"{result.model_dir} on {result.source}, {what}: {result.examples:,} examples",
                  title_justify="left")  # fmt: skip
    for col in ("task", "AUC", "logloss", "calibration", "positive rate"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for row in result.rows:
        table.add_row(str(row["task"]), f"{row['auc']:.4f}", f"{row['logloss']:.4f}", f"{row['calibration']:.3f}",
                      f"{100 * float(row['positive_rate']):.2f}%")  # fmt: skip
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    if json_path is not None:
        out = {"model_dir": str(result.model_dir), "data": result.source, "held_out": held_out,
               "examples": result.examples, "tasks": result.rows, "warnings": result.warnings,
               "seconds": result.seconds}  # fmt: skip
        atomic_write_bytes(json_path, json.dumps(json_safe(out), indent=2).encode())
        console.print(f"wrote {json_path}")


@app.command("serve")
@_friendly
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8000; 0 = any free port).")] = None,
    model_dir: Annotated[
        Path | None,
        typer.Option(help="Serve this model directory as the only arm (instead of the arms in --config)."),
    ] = None,
    retrieval_dir: Annotated[
        Path | None, typer.Option(help="With --model-dir: the two-tower retriever for /v1/recommend.")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """A serving replica: /v1/rank, /v1/recommend, /v1/events, /metrics, OpenAPI at /docs."""
    from freshrec.config import apply_overrides, read_config_file
    from freshrec.serve import ServeConfig
    from freshrec.serve import serve as run_server

    values = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    data = apply_overrides(read_config_file(config) if config is not None else {}, list(set_ or []), values)
    if model_dir is not None:
        arm = {"name": "main", "model_dir": str(model_dir)}
        if retrieval_dir is not None:
            arm["retrieval_dir"] = str(retrieval_dir)
        data["arms"] = [arm]
    cfg = ServeConfig.from_dict(data, source=str(config) if config else "config")
    where = f"port {cfg.port}" if cfg.port else "a free port"
    log = cfg.log
    into = f"Kafka at {log.bootstrap_servers}" if log.backend == "kafka" else f"the embedded log {log.path.absolute()}"
    typer.echo(f"freshrec serve: arms {[a.name for a in cfg.arms]}, starting on {cfg.host}, {where}; "
               f"impressions and events go to {into} (set log.*)", err=True)  # fmt: skip
    run_server(cfg)


@app.command("demo")
@_friendly
def demo(
    duration: Annotated[float | None, typer.Option(help="Wall seconds of closed loop (default 180).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulated world.")] = None,
    port: Annotated[int | None, typer.Option(help="Serving port (default 8000; 0 = any free port).")] = None,
    speed: Annotated[float | None, typer.Option(help="Event seconds per wall second (default 60).")] = None,
    users: Annotated[int | None, typer.Option(help="Simulated users (default 10,000).")] = None,
    items_per_hour: Annotated[int | None, typer.Option(help="New listings per event hour (default 3,000).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Resume the run in this directory (runs/<id>).")] = None,
    dashboard: Annotated[
        bool | None, typer.Option("--dashboard/--no-dashboard", help="Live terminal dashboard (default: yes).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The main job: simulator, event log, joiner, online trainer, sync and a serving replica, in a closed loop."""
    from freshrec.config import load_config
    from freshrec.demo import DemoConfig, run_demo

    flags = {"duration_s": duration, "seed": seed, "port": port, "speed": speed, "sim.n_users": users,
             "sim.items_per_hour": items_per_hour, "dashboard": dashboard}  # fmt: skip
    values = {key: value for key, value in flags.items() if value is not None}
    run_demo(load_config(DemoConfig, config, list(set_ or []), values), resume=resume)


@app.command("online")
@_friendly
def online(
    run_dir: Annotated[Path | None, typer.Option(help="Where the log, state, checkpoints and snapshots live.")] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: run until Ctrl-C).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Joiner + online trainers + sync publisher, reading the event log (resumes from its checkpoints).
    Ctrl-C or SIGTERM (how systemd, Docker and Kubernetes stop a process) ends it with a final
    checkpoint."""
    import contextlib
    import os
    import signal
    import threading
    import time

    from rich.console import Console
    from rich.live import Live

    from freshrec.config import load_config
    from freshrec.online import OnlineConfig, OnlinePipeline

    values = {"run_dir": str(run_dir)} if run_dir is not None else None
    cfg = load_config(OnlineConfig, config, list(set_ or []), values)
    console = Console(stderr=True)
    console.soft_wrap = not console.is_terminal  # a log line is not cut at 80 columns
    pipeline = OnlinePipeline(cfg)
    if pipeline.restored_from is not None:
        console.print(f"resumed from {pipeline.restored_from}")
    stop, closed = threading.Event(), threading.Event()
    stopped_by: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        """SIGTERM (a redeploy) and Ctrl-C stop between rounds, so the final checkpoint holds whole
        rounds; a second Ctrl-C stops at once (no final checkpoint if mid-round: the last stands).
        Once the pipeline is closed there is nothing left to stop: raising then would only put a
        traceback into the interpreter's exit hooks."""
        if closed.is_set():
            return
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        stopped_by.append(name)
        stop.set()
        # said at once: the round in progress may take a while (a log outage: up to log.timeout_s),
        # and a user who sees nothing presses Ctrl-C again (raw write: no lock a handler could meet)
        again = " (Ctrl-C again: stop at once, without it)" if signum == signal.SIGINT else ""
        os.write(2, f"\n{name}: stopping after the current round, then a final checkpoint{again}\n".encode())

    # after the pipeline started: ray.init (a PS on Ray) installs a SIGTERM handler of its own
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # a terminal gets one live status line; a log (systemd, Docker) a plain line every 10 s
    live = Live(console=console, refresh_per_second=2) if console.is_terminal else None
    last_line = float("-inf")
    try:
        with live or contextlib.nullcontext():
            end = None if duration is None else pipeline.clock() + duration
            while (end is None or pipeline.clock() < end) and not stop.is_set():
                pipeline.run(stop=stop, duration_s=1.0)
                if live is not None:
                    live.update(_online_line(pipeline.status()))
                elif time.monotonic() - last_line >= 10.0:
                    console.print(_online_line(pipeline.status()))
                    last_line = time.monotonic()
        if live is None:  # the log's last word on progress, not up to 10 s old
            console.print(_online_line(pipeline.status()))
        if stop.is_set():
            console.print(f"stopping ({stopped_by[0]}): final checkpoint")
    except KeyboardInterrupt:
        console.print("stopping at once (a second Ctrl-C)")
    finally:
        try:
            pipeline.close()
        finally:
            closed.set()
    console.print(f"checkpoints in {cfg.checkpoint_dir}, serving snapshots in {cfg.sync.snapshot_dir}")


def _online_line(st: dict) -> str:
    rank = st["model"].get("rank", {})
    label = next((k.split("/")[0] for k in rank if k.endswith("/auc")), "click")
    auc = rank.get(f"{label}/auc")
    auc_s = f"{auc:.3f}" if isinstance(auc, float) and auc == auc else "-"
    versions = ", ".join(f"{n} v{v['sparse_version']}" for n, v in st["sync"].items())
    events = st["joiner"].get("events_in", 0)
    warming = " | warming up: clicks only until the first windows close" if st.get("warming_up") else ""
    return (
        f"trained {st['examples_trained']:,} examples ({st['examples_per_s']:,.0f}/s) | "
        f"progressive {label} AUC {auc_s} | joiner in {events:,} | sync {versions}{warming}"
    )


experiment_app = typer.Typer(
    help="The paper's experiments and ours: each writes results (CSV, JSON) and plots to --out.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")

ExpOutOpt = Annotated[Path | None, typer.Option("--out", help="Output folder (default: runs/experiments/NAME).")]
ExpDataOpt = Annotated[
    str | None,
    typer.Option("--data", help="Data file or folder (MovieLens ratings or Criteo TSV), or 'sim' (the simulator)."),
]
SeedsOpt = Annotated[int | None, typer.Option("--seeds", help="Number of seeds (mean ± std over them).")]


def _experiment(
    name: str,
    quick: bool,
    out: Path | None,
    data: str | None,
    seeds: int | None,
    config: Path | None,
    set_: list[str] | None,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from freshrec.experiments import build_config, run_experiment

    cfg = build_config(name, quick=quick, data=data, seeds=seeds, config_file=config, overrides=list(set_ or []))
    folder = out if out is not None else Path("runs") / "experiments" / name
    console = Console(width=max(Console().width, 150))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(name, total=None)

        def on_progress(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, description=f"{name}: {what}")

        result = run_experiment(name, cfg, folder, on_progress)
    result.print(console)
    files = ["results.csv", "runs.csv", "results.json", "results.md", *result.plots]
    console.print(f"wrote {', '.join(files)} to {folder} in {result.seconds:.0f} s")


@experiment_app.command("collisions")
@_friendly
def experiment_collisions(
    quick: QuickOpt = False,
    out: ExpOutOpt = None,
    data: ExpDataOpt = None,
    seeds: SeedsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Collisionless vs hashed ID tables, test AUC per epoch (paper Table 1, Fig. 7; MovieLens)."""
    _experiment("collisions", quick, out, data, seeds, config, set_)


@experiment_app.command("sync-interval")
@_friendly
def experiment_sync_interval(
    quick: QuickOpt = False,
    out: ExpOutOpt = None,
    data: ExpDataOpt = None,
    seeds: SeedsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Batch model, then online training synced to serving every k shards (paper Algorithm 1, Table 2)."""
    _experiment("sync-interval", quick, out, data, seeds, config, set_)


@experiment_app.command("ps-failure")
@_friendly
def experiment_ps_failure(
    quick: QuickOpt = False,
    out: ExpOutOpt = None,
    data: ExpDataOpt = None,
    seeds: SeedsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """One PS shard restored from a T-step-old snapshot mid-stream: AUC dip and time to recover."""
    _experiment("ps-failure", quick, out, data, seeds, config, set_)


@experiment_app.command("filter-expiry")
@_friendly
def experiment_filter_expiry(
    quick: QuickOpt = False,
    out: ExpOutOpt = None,
    data: ExpDataOpt = None,
    seeds: SeedsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Sweep admission min_count and expiry ttl: rows held vs progressive AUC, and the knee."""
    _experiment("filter-expiry", quick, out, data, seeds, config, set_)


@experiment_app.command("ab")
@_friendly
def experiment_ab(
    quick: QuickOpt = False,
    out: ExpOutOpt = None,
    seeds: SeedsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """A/B arms in the closed-loop simulator (fresh sync, stale sync, batch-only): CTR per arm with 95% CIs."""
    _experiment("ab", quick, out, None, seeds, config, set_)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
