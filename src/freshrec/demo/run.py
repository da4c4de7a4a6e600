"""The demo's orchestration: warm start, children up, the closed loop with its dashboard, the report.

1. A simulated world (seeded) writes ``warmup_s`` of random-policy traffic straight into the
   embedded event log: the batch stage the online stage starts from.
2. The online trainer starts as a child process (joiner, two models, publishers, checkpoints) and
   writes the first serving snapshots.
3. The serving replica starts as a child process with two A/B arms following the sync log: arm A
   applies deltas as they come (seconds), arm B every ``stale_apply_interval_s`` (the "batch"
   baseline).
4. The loop closes: the simulator's users ask ``/v1/recommend`` (the server logs the impressions),
   react, and their actions (and the catalog's lifecycle events) go to ``/v1/events``; event time
   advances with the wall clock at ``speed``. A dashboard shows the three monitoring levels.
5. After ``duration_s`` everything stops (the trainer checkpoints) and the report is written.

``--resume RUN_DIR`` restarts on an existing run: the trainer restores its newest good checkpoint
and replays the log after it; the simulator fast-forwards its world (same seed: same users, items
and sessions) to where the run stopped.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from freshrec._io import atomic_write_bytes
from freshrec.config import apply_overrides
from freshrec.demo.client import EventPoster, HttpRecommender
from freshrec.demo.config import DemoConfig
from freshrec.demo.procs import Child, stop_on_hangup_or_term, wait_for, wait_for_port
from freshrec.errors import ConfigError, StateError
from freshrec.online import OnlineConfig, live_commerce_spec
from freshrec.serve import ServeConfig
from freshrec.sim import LiveClock, Simulator, live_batches
from freshrec.stream import Action, Impression, ItemLifecycle, encode, open_log

__all__ = ["online_config", "run_demo", "serve_config"]

TOPICS = ("impressions", "actions", "items")
ARMS = ("A", "B")


def online_config(demo: DemoConfig, run_dir: Path) -> OnlineConfig:
    base = {
        "run_dir": str(run_dir),
        "spec": live_commerce_spec().model_dump(mode="json"),
        # most actions come within minutes (clicks in seconds): a 10-minute window closes negatives
        # 10 wall seconds after their impression at 60x; keep a quarter of the negatives
        "joiner": {"labels": ["click", "purchase"], "window_s": 600.0, "allowed_lateness_s": 30.0,
                   "negative_rate": 0.25, "checkpoint_interval_s": 15.0},
        "rank_model": {"type": "deepfm", "hidden": [128, 64]},
        "train": {"batch_size": 256, "metrics_window": 20_000, "dense_lr": 0.002},
        # dense weights every 20 s and a serving snapshot every minute: a 3-minute run shows both
        "sync": {"sparse_sync_interval": 1.0, "dense_sync_interval": 20.0, "snapshot_interval": 60.0},
        "checkpoint_interval_s": 30.0,
        "max_batch_wait_s": 1.0,
        "expire_every_s": 300.0,
    }  # fmt: skip
    return OnlineConfig.from_dict(apply_overrides(base, demo.online), source="demo online config")


def serve_config(demo: DemoConfig, run_dir: Path, online: OnlineConfig) -> ServeConfig:
    sync = {"snapshot_dir": str(online.sync.snapshot_dir), "topic_prefix": online.sync.topic_prefix}
    base = {
        "host": "127.0.0.1",
        "port": demo.port,
        "port_file": str(run_dir / "server.port"),  # the port it bound (port 0: any free one)
        "api_key": None,  # loopback only: the config refuses a keyless server on any other address
        "log": online.log.model_dump(mode="json"),
        "arms": [
            {"name": "A", "weight": 1 - demo.arm_b_weight, "sync": sync},
            {"name": "B", "weight": demo.arm_b_weight,
             "sync": {**sync, "apply_interval": demo.stale_apply_interval_s}},
        ],
        "retrieve_k": 200,
        "log_level": "warning",
    }  # fmt: skip
    serve = ServeConfig.from_dict(apply_overrides(base, demo.serve), source="demo serve config")
    if serve.port_file is None:
        raise ConfigError("demo serve config: port_file is required (the demo reads its server's port there)")
    return serve


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=1, default=str).encode())


def _append(log, events) -> None:  # type: ignore[no-untyped-def]
    kinds = {"impressions": Impression, "actions": Action, "items": ItemLifecycle}
    for topic, kind in kinds.items():
        part = [e for e in events if isinstance(e, kind)]
        if part:
            log.append(topic, encode(part))


def _check_port_free(host: str, port: int) -> None:
    """The replica's port must be free now: finding out after the warm start wastes it and
    leaves a run directory behind. (Another process may still take it in between: the
    replica's own start then fails as before.)"""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            raise StateError(f"port {port} is in use ({exc.strerror}): stop what holds it, or pass --port "
                             "(0 = any free port)") from None  # fmt: skip


def _caught_up(run_dir: Path, batch_size: int) -> bool:
    try:
        st = json.loads((run_dir / "status.json").read_bytes())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return st.get("joiner", {}).get("lag_records", 1) == 0 and st.get("examples_lag", batch_size) < batch_size


def run_demo(config: DemoConfig, *, resume: Path | None = None, console: Any = None) -> Path:
    """Run the demo; returns the run directory (with ``report.html`` and ``metrics.json``)."""
    from rich.console import Console

    from freshrec.demo.dashboard import Dashboard
    from freshrec.demo.report import Recorder, write_report

    console = console or Console()
    if resume is not None:
        run_dir = Path(resume)
        saved = run_dir / "demo.json"
        if not saved.is_file():
            raise ConfigError(f"{run_dir} is not a demo run directory (no demo.json)")
        duration, dashboard = config.duration_s, config.dashboard
        config = DemoConfig.from_file(saved)  # the run's own world and settings
        config.duration_s, config.dashboard = duration, dashboard
    else:
        run_dir = config.runs_dir / datetime.now().strftime("%Y%m%d-%H%M%S")
    # everything that can refuse the run does so before anything is written
    online = online_config(config, run_dir)
    serve = serve_config(config, run_dir, online)
    _check_port_free(serve.host, serve.port)  # as the server will bind, after any serve override
    if resume is None:
        run_dir.mkdir(parents=True, exist_ok=False)
        _write_json(run_dir / "demo.json", config.model_dump(mode="json"))
    _write_json(run_dir / "online.json", online.model_dump(mode="json"))
    _write_json(run_dir / "serve.json", {**serve.model_dump(mode="json"), "api_key": None})

    sim = Simulator(config.sim.model_copy(update={"seed": config.seed}))
    state_file = run_dir / "demo_state.json"
    log = open_log(online.log)
    try:
        for t in TOPICS:
            log.create_topic(t, 1)
        if resume is not None and state_file.is_file():
            reached = json.loads(state_file.read_text())["event_time"]
            console.print(f"resuming {run_dir}: fast-forwarding the world to event time {reached:,.0f} s")
            sim.run(reached)  # same seed: the same users, items and sessions; the events are dropped
        elif resume is None:
            console.print(f"warm start: {config.warmup_s:,.0f} s of random-policy traffic into the log")
            _append(log, sim.run(config.warmup_s))
    finally:
        log.close()

    children: list[Child] = []
    rec = HttpRecommender(httpx.Client(), sim)  # replaced below; keeps the names defined for finally
    recorder = Recorder(run_dir)
    with stop_on_hangup_or_term():  # a kill or a closed terminal stops the children as Ctrl-C does
        try:
            trainer = Child("trainer", ["-m", "freshrec.demo.trainer", str(run_dir / "online.json")],
                            run_dir / "trainer.log")  # fmt: skip
            children.append(trainer)
            snaps = [online.sync.snapshot_dir / m / "LATEST" for m in ("rank", "retrieve")]
            wait_for("the trainer's first serving snapshots", lambda: all(p.is_file() for p in snaps), 180, children)
            # the batch stage ends before the online one starts: live actions must not queue behind
            # the warm-up backlog (freshness is measured from their arrival)
            wait_for("the trainer to catch up with the warm-up traffic",
                     lambda: _caught_up(run_dir, online.train.batch_size), 600, children)  # fmt: skip
            serve.port_file.unlink(missing_ok=True)  # a resumed run's: this server may bind another port
            server = Child("server", ["-m", "freshrec.cli", "serve", "--config", str(run_dir / "serve.json")],
                           run_dir / "server.log")  # fmt: skip
            children.append(server)
            base = f"http://127.0.0.1:{wait_for_port(serve.port_file, 180, children)}"
            client = httpx.Client(base_url=base, timeout=30.0)
            wait_for(f"the server at {base}", lambda: client.get("/v1/healthz").status_code == 200, 180, children)
            console.print(f"serving at {base}/docs | run directory {run_dir}")

            rec = HttpRecommender(client, sim)
            poster = EventPoster(client)
            sim.set_recommender(rec)
            clock = LiveClock(config.speed, start_event_time=sim.now)
            board = Dashboard(console, enabled=config.dashboard)
            started = time.monotonic()
            last_sample = 0.0
            with board:
                for batch in live_batches(sim, clock, poll_seconds=0.2):
                    poster.post(batch)
                    now = time.monotonic()
                    if now - last_sample >= 1.0:
                        for c in children:
                            c.check()
                        sample = recorder.sample(client, rec, poster, sim.now, now - started)
                        board.update(sample)
                        _write_json(state_file, {"event_time": sim.now})
                        last_sample = now
                    if now - started >= config.duration_s:
                        break
                final = recorder.sample(client, rec, poster, sim.now, time.monotonic() - started)
                board.update(final)  # the last frame shows what metrics.json reports
            _write_json(state_file, {"event_time": sim.now})
            client.close()
        finally:
            for c in reversed(children):  # the server first, then the trainer (its final checkpoint)
                c.stop()
    metrics = write_report(run_dir, recorder, final, config)
    console.print(f"report: {run_dir / 'report.html'}")
    console.print(f"metrics: {json.dumps(metrics['checks'])}")
    sys.stdout.flush()
    return run_dir
